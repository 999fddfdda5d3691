"""Memory under a burst of large concurrent misses, and after it.

    .venv/bin/python bench/inflight_burst.py [--requests 120] [--size-mib 7]
                                             [--budget 64MiB] [--cache]

Starts an upstream that answers every path with ``--size-mib`` MiB of JSON, sent in 256 KiB
pieces a few milliseconds apart (so that reads overlap, as over a real network), and the
proxy (``python -m bloxproxy serve`` with the shipped config) in front of it, each in its
own process. Then ``--requests`` concurrent clients each ask for a *distinct* passthrough
path (every one a miss), and the proxy's RSS (``/proc/<pid>/status``) is sampled every
20 ms: before, at the peak, right after the burst, and after 5 s idle. Without ``--cache``
passthrough answers are not stored (``cache.passthrough_ttl: 0``), so whatever the process
still holds afterwards is not the cache's. ``--budget`` is ``upstream.max_inflight_bytes``
(``unbounded`` sets it to 1 TiB, the behaviour before the budget existed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
PIECE = 256 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def serve_upstream(port: int, size: int) -> None:
    payload = b'"' + b"x" * (size - 2) + b'"'

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = size
        await resp.prepare(request)
        for start in range(0, size, PIECE):
            await resp.write(payload[start : start + PIECE])
            await asyncio.sleep(0.005)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def wait_up(port: int, path: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                    await resp.read()
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise SystemExit(f"nothing answers on port {port}")


async def metric(port: int, name: str) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/_bloxproxy/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    return float("nan")


async def burst(port: int, pid: int, n: int) -> dict[str, object]:
    samples: list[float] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            samples.append(rss_mib(pid))
            await asyncio.sleep(0.02)

    statuses: dict[int, int] = {}
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one(i: int) -> None:
            url = f"http://127.0.0.1:{port}/users/v1/burst/{i}"
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=120)) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

        sampler = asyncio.create_task(sample())
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - start
        done.set()
        await sampler
    return {"peak_mib": max(samples), "wall_s": round(wall, 2), "statuses": statuses}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=120)
    ap.add_argument("--size-mib", type=float, default=7.0)
    ap.add_argument("--budget", default="64MiB")
    ap.add_argument("--cache", action="store_true")
    ap.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = int(args.size_mib * 1024 * 1024)
    if args.upstream_port:
        serve_upstream(args.upstream_port, size)
        return 0
    up_port, proxy_port = free_port(), free_port()
    budget = "1024GiB" if args.budget == "unbounded" else args.budget
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BLOXPROXY_UPSTREAM_BASE_URL": f"http://127.0.0.1:{up_port}/{{service}}",
        "BLOXPROXY_UPSTREAM_MAX_INFLIGHT_BYTES": budget,
        "BLOXPROXY_LIMITS_UPSTREAM_RATE": "10000",
        "BLOXPROXY_LIMITS_UPSTREAM_MAX_WAIT": "60s",
        "BLOXPROXY_LOGGING_ACCESS_LOG": "false",
    }
    if not args.cache:
        env["BLOXPROXY_CACHE_PASSTHROUGH_TTL"] = "0"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--upstream-port",
                str(up_port),
                "--size-mib",
                str(args.size_mib),
            ],
            env=env,
            start_new_session=True,
        ),
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bloxproxy",
                "serve",
                "--config",
                str(ROOT / "config.yaml"),
                "--port",
                str(proxy_port),
            ],
            env=env,
            start_new_session=True,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        asyncio.run(wait_up(proxy_port, "/_bloxproxy/healthz"))
        pid = procs[1].pid
        before = rss_mib(pid)
        result = asyncio.run(burst(proxy_port, pid, args.requests))
        right_after = rss_mib(pid)
        time.sleep(5)
        idle = rss_mib(pid)
        peak_reserved = asyncio.run(metric(proxy_port, "bloxproxy_upstream_inflight_bytes_peak"))
        out = {
            "requests": args.requests,
            "size_mib": args.size_mib,
            "budget": args.budget,
            "cache": args.cache,
            "rss_before_mib": round(before, 1),
            "rss_peak_mib": round(float(result["peak_mib"]), 1),  # type: ignore[arg-type]
            "rss_after_mib": round(right_after, 1),
            "rss_idle_5s_mib": round(idle, 1),
            "budget_peak_mib": round(peak_reserved / 2**20, 1),
            "wall_s": result["wall_s"],
            "statuses": result["statuses"],
        }
        print(json.dumps(out))
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
