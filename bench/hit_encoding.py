"""What compression and CORS cost a cache hit: the proxy's CPU per answer, by request kind.

    .venv/bin/python bench/hit_encoding.py [--requests 20000] [--concurrency 16] [--rounds 3]

Starts the bundled fake and three proxies from a snapshot (as bench/run.py does): ``off``
with ``config.yaml`` as shipped, ``on`` with ``server.compression`` and ``server.cors``
enabled, ``on64`` the same with ``min_size: 64``. Each request is warmed first, so every
measured one is a fresh cache hit, driven by a minimal keep-alive HTTP/1.1 client in this
process (an ``asyncio.Protocol``; ``--concurrency`` connections):

- ``small``: ``GET /v1/users/156``, answered by the fast path (185 bytes: under the shipped
  ``min_size``, so ``on`` sends it as it is and ``on64`` compresses it);
- ``large``: passthrough ``GET /thumbnails/v1/users/avatar-headshot?…&userIds=1000000,…``
  (4 KB of JSON), a hit assembled by the pipeline from 30 per-id entries (the fake has no
  large single answer), so slower and noisier; ``--requests`` / 4 of them;

each with no ``Accept-Encoding``, with ``gzip``, with ``br``, and (``on`` only) with an
allowed ``Origin`` on top of ``br``. Prints the proxy process's CPU microseconds per answer
(``/proc/PID/stat`` around each run: user + system, its workers included), the bytes of
each answer's body and the client's requests per second, the median of ``--rounds``
interleaved rounds; and, in this process, what compressing the large body once costs
(what a miss, or the first hit per encoding, pays).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import run  # bench/run.py: processes, snapshot, readiness checks and cleanup

sys.path.insert(0, str(run.ROOT))

from bloxproxy.config import CompressionConfig
from bloxproxy.encoding import Compression

DASH = "https://dash.example.com"
SMALL = "/v1/users/156"
LARGE = "/thumbnails/v1/users/avatar-headshot?size=150x150&format=Png&userIds=" + ",".join(
    str(i) for i in range(1_000_000, 1_000_030)
)
ON = {
    "BLOXPROXY_SERVER_COMPRESSION_ENABLED": "true",
    "BLOXPROXY_SERVER_CORS_ENABLED": "true",
    "BLOXPROXY_SERVER_CORS_ORIGINS": DASH,
}
# The same, but small enough a body is compressed: the small hit then shows what serving a
# compressed cached answer costs on the fast path.
ON64 = {**ON, "BLOXPROXY_SERVER_COMPRESSION_MIN_SIZE": "64"}
ASKS = {
    "none": "",
    "gzip": "Accept-Encoding: gzip, deflate\r\n",
    "br": "Accept-Encoding: gzip, deflate, br\r\n",
    "br+origin": f"Accept-Encoding: gzip, deflate, br\r\nOrigin: {DASH}\r\n",
}


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time; ``Content-Length`` bodies."""

    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, str, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        if len(buf) < end + 4 + length:
            return
        body = bytes(buf[end + 4 : end + 4 + length])
        del buf[: end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((int(head[9:12]), head, body))

    async def send(self, message: bytes) -> tuple[int, str, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(message)
        return await self.waiter


def proc_cpu(pid: int) -> float:
    total = 0.0
    for p in run.descendants(pid):
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(f[11]) + int(f[12])) / run.CLK_TCK
    return total


async def drive(port: int, message: bytes, n: int, concurrency: int) -> tuple[float, bytes, str]:
    """``n`` requests of ``message``; requests per second, the last body and head."""
    loop = asyncio.get_running_loop()
    conns = [(await loop.create_connection(_Conn, run.HOST, port))[1] for _ in range(concurrency)]
    left = n
    last: tuple[int, str, bytes] = (0, "", b"")

    async def worker(conn: _Conn) -> None:
        nonlocal left, last
        while left > 0:
            left -= 1
            last = await conn.send(message)
            if last[0] != 200:
                raise run.BenchError(f"status {last[0]}: {last[1]}")

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - start
    for c in conns:
        assert c.transport is not None
        c.transport.close()
    return n / elapsed, last[2], last[1]


async def measure(
    pid: int, port: int, path: str, ask: str, n: int, concurrency: int
) -> tuple[float, float, bytes, str]:
    message = f"GET {path} HTTP/1.1\r\nHost: bench\r\n{ask}\r\n".encode()
    await drive(port, message, 200, 4)  # warm: the entry, the fast path's answer, encodings
    cpu = proc_cpu(pid)
    rps, body, head = await drive(port, message, n, concurrency)
    us = (proc_cpu(pid) - cpu) / n * 1e6
    if "X-Cache: HIT" not in head:
        raise run.BenchError(f"not a hit: {head}")
    return us, rps, body, head


def compress_once(body: bytes) -> dict[str, float]:
    """µs to compress ``body`` once per encoding, shipped levels, in this process."""
    comp = Compression(CompressionConfig(enabled=True))
    out = {}
    for coding in ("gzip", "br"):
        start = time.perf_counter()
        for _ in range(200):
            comp.compress(body, coding)
        out[coding] = (time.perf_counter() - start) / 200 * 1e6
    out["bytes"] = len(body)
    return out


async def main_async(args: argparse.Namespace, procs: dict[str, tuple[int, int]]) -> None:
    cases = [
        (name, size, path, ask)
        for name in procs
        for size, path in (("small", SMALL), ("large", LARGE))
        for ask in ASKS
        if not (name == "off" and ask == "br+origin") and not (name == "on64" and size == "large")
    ]
    results: dict[tuple[str, str, str], list[tuple[float, float, int]]] = {}
    large = b""
    heads: dict[tuple[str, str, str], str] = {}
    for _ in range(args.rounds):
        for name, size, path, ask in cases:
            pid, port = procs[name]
            n = args.requests if size == "small" else args.requests // 4  # (a slower hit)
            us, rps, body, head = await measure(pid, port, path, ASKS[ask], n, args.concurrency)
            results.setdefault((name, size, ask), []).append((us, rps, len(body)))
            if (name, size, ask) == ("on", "large", "none"):
                large = body
            heads[(name, size, ask)] = head
    print(
        f"{'proxy':5} {'body':6} {'asks':10} {'encoding':9} {'CPU us/answer':>13} "
        f"{'body bytes':>10} {'rps':>8}   (median of {args.rounds}; {args.requests} hits, "
        f"{args.concurrency} connections)"
    )
    for (name, size, ask), rows in results.items():
        head = heads[(name, size, ask)]
        encoding = "identity"
        for line in head.split("\r\n"):
            if line.lower().startswith("content-encoding:"):
                encoding = line.split(":", 1)[1].strip()
        us = statistics.median(r[0] for r in rows)
        rps = statistics.median(r[1] for r in rows)
        print(f"{name:5} {size:6} {ask:10} {encoding:9} {us:13.1f} {rows[0][2]:10} {rps:8,.0f}")
    once = compress_once(large)
    print(
        f"compressing a {once['bytes']:.0f}-byte JSON body once (shipped levels): "
        f"gzip {once['gzip']:.0f} us, br {once['br']:.0f} us"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bloxproxy-hit-encoding-"))
    ctx = run.Ctx(runs=1, duration=1, quick=False, workdir=tmp, logdir=tmp, quiet_wait=0)
    try:
        run.snapshot(tmp / "src")
        fake = run.Fake(ctx).start()
        off, off_port = run.proxy(ctx, fake, name="off")
        on, on_port = run.proxy(ctx, fake, ON, name="on")
        on64, on64_port = run.proxy(ctx, fake, ON64, name="on64")
        with run.running(fake.proc, off, on, on64):
            procs = {
                "off": (off.pid, off_port),
                "on": (on.pid, on_port),
                "on64": (on64.pid, on64_port),
            }
            try:
                import uvloop
            except ImportError:
                asyncio.run(main_async(args, procs))
            else:
                uvloop.run(main_async(args, procs))
    finally:
        run.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
