"""What one upstream call costs the proxy's CPU, by client: the miss path's biggest shared part.

    .venv/bin/python bench/client_cost.py [--calls 20000] [--concurrency 8] [--rounds 3]

Starts the bundled fake (0 ms latency) in its own process and, in this process (uvloop when
installed, like ``bloxproxy serve``), makes ``--calls`` GETs of ``/users/v1/users/{id}``
with ``--concurrency`` callers, through:

- ``aiohttp``: one plain ``ClientSession`` (what bench/naive_proxy.py uses);
- ``upstream``: the proxy's own :class:`~bloxproxy.upstream.Upstream` without the client
  middlewares (its session: timeouts, no cookie jar, User-Agent, body limit);
- ``upstream+guard``: the same with the guard middlewares (retries, CSRF, pause, breaker,
  limiter, metrics), as the proxy sends;
- ``raw``: a minimal keep-alive HTTP/1.1 client on an ``asyncio.Protocol`` (``Content-Length``
  bodies only): a floor for what any Python client on this loop costs, not a usable client.

Prints CPU microseconds of this process per call (``time.process_time``; the fake's CPU is
not counted) and calls per second, the median of ``--rounds`` rounds per client, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import run  # bench/run.py: the fake's process, readiness checks and cleanup

sys.path.insert(0, str(run.ROOT))

from bloxproxy import config as config_mod
from bloxproxy.observe import Metrics
from bloxproxy.upstream.client import Upstream, UpstreamRequest, create_session
from bloxproxy.upstream.guard import Guard

Call = Callable[[int], Awaitable[int]]


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's is no subclass)

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
        status = int(head[9:12])
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))

    async def get(self, target: str) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(f"GET {target} HTTP/1.1\r\nHost: fake\r\n\r\n".encode())
        return await self.waiter


async def measure(
    make: Callable[[], Awaitable[tuple[Call, Callable[[], Awaitable[None]]]]],
    calls: int,
    concurrency: int,
    first_id: int,
) -> tuple[float, float]:
    call, close = await make()
    try:
        await call(first_id)  # warm: the connection, lazily built state
        ids = iter(range(first_id + 1, first_id + 1 + calls))

        async def worker() -> None:
            for uid in ids:
                status = await call(uid)
                if status != 200:
                    raise RuntimeError(f"status {status}")

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await close()
    return cpu / calls * 1e6, calls / wall


def clients(fake_port: int) -> dict[str, Callable[[], Awaitable[tuple[Call, Any]]]]:
    base = f"http://{run.HOST}:{fake_port}"
    cfg = config_mod.load(
        None,
        env={
            "BLOXPROXY_UPSTREAM_BASE_URL": base + "/{service}",
            "BLOXPROXY_LIMITS_UPSTREAM_RATE": "1000000",
        },
    )

    async def plain() -> tuple[Call, Any]:
        session = aiohttp.ClientSession(auto_decompress=False)

        async def call(uid: int) -> int:
            async with session.get(f"{base}/users/v1/users/{uid}") as resp:
                await resp.read()
                return resp.status

        return call, session.close

    def ours(guarded: bool) -> Callable[[], Awaitable[tuple[Call, Any]]]:
        async def make() -> tuple[Call, Any]:
            middleware = Guard(cfg, metrics=Metrics()).middleware if guarded else None
            upstream = Upstream(cfg, create_session(cfg), middleware)

            async def call(uid: int) -> int:
                resp = await upstream.send(UpstreamRequest("users", "GET", f"/v1/users/{uid}"))
                return resp.status

            return call, upstream._session.close

        return make

    async def raw() -> tuple[Call, Any]:
        loop = asyncio.get_running_loop()
        pool: list[_Conn] = []

        async def call(uid: int) -> int:
            conn = (
                pool.pop()
                if pool
                else (await loop.create_connection(_Conn, run.HOST, fake_port))[1]
            )
            status, _ = await conn.get(f"/users/v1/users/{uid}")
            pool.append(conn)
            return status

        async def close() -> None:
            for conn in pool:
                assert conn.transport is not None
                conn.transport.close()

        return call, close

    return {"aiohttp": plain, "upstream": ours(False), "upstream+guard": ours(True), "raw": raw}


async def main_async(args: argparse.Namespace, fake_port: int) -> None:
    makers = clients(fake_port)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in makers}
    first = run.SYNTHETIC_MIN  # ids the fake knows (the calls need not be unique: no cache)
    for _ in range(args.rounds):
        for name, make in makers.items():
            results[name].append(await measure(make, args.calls, args.concurrency, first))
            first += args.calls + 1
    print(
        f"{'client':16} {'CPU us/call':>12} {'calls/s':>9}   (median of {args.rounds}; "
        f"{args.calls} calls, {args.concurrency} at a time)"
    )
    for name, rows in results.items():
        cpu = statistics.median(r[0] for r in rows)
        rate = statistics.median(r[1] for r in rows)
        print(f"{name:16} {cpu:12.1f} {rate:9,.0f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bloxproxy-client-cost-"))
    ctx = run.Ctx(runs=1, duration=1, quick=False, workdir=tmp, logdir=tmp, quiet_wait=0)
    try:
        run.snapshot(tmp / "src")  # the fake runs from a copy, as in bench/run.py
        fake = run.Fake(ctx).start()
        with run.running(fake.proc):
            try:
                import uvloop
            except ImportError:
                asyncio.run(main_async(args, fake.port))
            else:
                uvloop.run(main_async(args, fake.port))
    finally:
        run.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
