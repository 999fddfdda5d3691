"""L2 read throughput: redis-py's client (as the app builds it) vs PipelinedGet.

Starts a throw-away redis-server (tests/redis_server.py), stores one value and lets
``--tasks`` asyncio tasks GET it in a loop for ``--duration`` seconds per side, under uvloop
when installed. Prints ops/s and the proxy process's CPU per GET (redis-server excluded).

    .venv/bin/python bench/redis_get.py [--duration 3] [--tasks 64] [--size 600] [--cluster]

``--cluster`` adds a 3-primary Cluster: redis-py's ``RedisCluster`` GET and ``ClusterGet``
(a PipelinedGet per node, the hit path's GET there).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redis.asyncio.cluster import RedisCluster

from bloxproxy.cache.resp import ClusterGet, PipelinedGet
from bloxproxy.redis_url import parse
from bloxproxy.redisconn import connect
from tests.redis_server import RedisServer
from tests.redis_topology import ClusterSetup

KEY = "bench:value"


async def drive(
    get: Callable[[str], Awaitable[bytes | str | None]], tasks: int, seconds: float
) -> tuple[float, float]:
    """(ops/s, CPU µs per op) of ``tasks`` loops calling ``get`` for ``seconds``."""
    loop = asyncio.get_running_loop()
    for _ in range(100):  # connect and warm up
        await get(KEY)
    done = 0
    stop = loop.time() + seconds

    async def worker() -> None:
        nonlocal done
        while loop.time() < stop:
            await get(KEY)
            done += 1

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return done / wall, cpu / done * 1e6


async def main(args: argparse.Namespace, url: str, cluster_url: str = "") -> None:
    conns = connect(parse(url), 64, 0.25)  # the app's client
    client = conns.client
    await client.set(KEY, b"v" * args.size)
    getter = PipelinedGet(url, 0.25)
    cluster = connect(parse(cluster_url), 64, 0.25) if cluster_url else None
    cluster_get = None
    try:
        sides = [("redis-py", client.get), ("PipelinedGet", getter.get)]
        if cluster is not None:
            await cluster.client.set(KEY, b"v" * args.size)
            assert isinstance(cluster.client, RedisCluster)
            cluster_get = ClusterGet(cluster.client, 0.25)
            sides += [("RedisCluster", cluster.client.get), ("ClusterGet", cluster_get.get)]
        for name, get in sides:
            ops, cpu = await drive(get, args.tasks, args.duration)
            print(f"{name:>12}: {ops:10,.0f} GET/s  {cpu:6.1f} µs CPU per GET")
    finally:
        await getter.aclose()
        await conns.aclose()
        if cluster_get is not None:
            await cluster_get.aclose()
        if cluster is not None:
            await cluster.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--size", type=int, default=600)
    parser.add_argument("--cluster", action="store_true", help="and RedisCluster's GET")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        runner: Callable[..., None] = asyncio.run
        print("(uvloop not installed: asyncio's loop)")
    else:
        runner = uvloop.run
    with RedisServer() as server:
        if args.cluster:  # a 3-primary Cluster too, its GET through redis-py's RedisCluster
            with ClusterSetup() as cluster:
                runner(main(args, server.url, cluster.url))
        else:
            runner(main(args, server.url))
