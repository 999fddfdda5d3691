# ruff: noqa: RUF001  (the report uses en dashes and times signs on purpose)
"""One replica's throughput on a Sentinel and on a Cluster backend, relative to one Redis.

    .venv/bin/python bench/redis_topology.py [--runs 3] [--duration 6] [--conns 64]

Starts, from the one redis-server binary the tests use: a single Redis; a primary, its
replica and a Sentinel (``redis+sentinel://``); a 3-primary Cluster (``redis+cluster://``)
(tests/redis_topology.py). Then one ``bloxproxy serve`` per backend and side, against the
fake Roblox, and measures with wrk (bench/run.py's helpers, the same rounds: every side
once per round):

- ``hit``: a hit read from Redis on every request (``cache.max_entries: 0``, no L1): the
  hit path's GET — the pipelined one on one Redis and on Sentinel (to the primary the
  Sentinel names), redis-py's slot-aware ``RedisCluster`` GET on the Cluster;
- ``miss``: a new user id per request (wrk's ``unique.lua``), L1 on: each one an L2 GET
  that misses, the upstream call and the L2 SET (limiter raised to 1e6/s).

Prints rps per backend (median and spread of ``--runs`` rounds) and the ratio to one Redis.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import run  # bench/run.py: servers, wrk, rounds, cleanup

sys.path.insert(0, str(run.ROOT))

from tests.redis_server import RedisServer
from tests.redis_topology import ClusterSetup, SentinelSetup

BACKENDS = ("single", "sentinel", "cluster")


def measure_all(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bloxproxy-redis-topology-"))
    ctx = run.Ctx(runs=args.runs, duration=args.duration, quick=False, workdir=tmp, logdir=tmp)
    out: dict[str, Any] = {"machine": run.machine(), "args": vars(args), "groups": {}}
    single, sentinel, cluster = RedisServer(), SentinelSetup(), ClusterSetup()
    try:
        single.start()
        sentinel.start()
        cluster.start()
        urls = {"single": single.url, "sentinel": sentinel.url, "cluster": cluster.url}
        fake = run.Fake(ctx).start()
        procs = [fake.proc]
        hit_ports: dict[str, int] = {}
        miss_ports: dict[str, int] = {}
        for name in BACKENDS:
            env = {"BLOXPROXY_CACHE_REDIS_URL": urls[name], **run.FAST_LIMIT}
            p, hit_ports[name] = run.proxy(
                ctx, fake, {**env, "BLOXPROXY_CACHE_MAX_ENTRIES": "0"}, name=f"hit-{name}"
            )
            procs.append(p)
            p, miss_ports[name] = run.proxy(ctx, fake, env, name=f"miss-{name}")
            procs.append(p)
        ids = run.Ids(3_000_000)
        with run.running(*procs):
            for port in hit_ports.values():
                run.warm_hit(port, run.CLEAN_HIT)

            def hit(side: str, duration: float) -> dict[str, Any]:
                port = hit_ports[side]
                pre = run.check_hit(port, run.CLEAN_HIT)
                r = run.wrk(ctx, port, run.CLEAN_HIT, conns=args.conns, duration=duration)
                r["pre_x_cache"] = pre
                return r

            def miss(side: str, duration: float) -> dict[str, Any]:
                start = ids.next  # every side gets new ids: the cached ones must miss
                r = run.wrk(
                    ctx,
                    miss_ports[side],
                    "/",
                    conns=args.conns,
                    duration=duration,
                    script="unique.lua",
                    args=["/v1/users/{id}", str(start)],
                )
                ids.advance(start + r["requests"] + args.conns + 100)
                return r

            for group, one in (("hit", hit), ("miss", miss)):
                for side in BACKENDS:  # warm-up, not recorded
                    one(side, 2)

                def measure(
                    i: int, side: str, one: Any = one, group: str = group
                ) -> dict[str, Any]:
                    r = one(side, ctx.duration)
                    ctx.say(f"  {group} run {i} {side:9} {run.wrk_line(r)}")
                    return r

                kept, _ = run.rounds(ctx, list(BACKENDS), measure, f"{group} ")
                out["groups"][group] = kept
    finally:
        run.stop_all()
        cluster.stop()
        sentinel.stop()
        single.stop()
    return out


def report(out: dict[str, Any]) -> str:
    lines = []
    for group, kept in out["groups"].items():
        lines.append(
            f"\n{group}, c{out['args']['conns']}: rps (median, spread), ratio to one Redis"
        )
        for side, runs in kept.items():
            rps = [r["rps"] for r in runs]
            ratios = [r["rps"] / s["rps"] for r, s in zip(runs, kept["single"], strict=True)]
            p99 = run.med([r["p99_ms"] for r in runs])
            lines.append(
                f"  {side:9} {run.med(rps):8,.0f}  ({min(rps):,.0f}–{max(rps):,.0f})"
                f"  × {run.med(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
                f"  p99 {p99:.2f} ms"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=6)
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--out", type=Path, default=None, help="write the raw numbers as JSON")
    args = p.parse_args(argv)
    out = measure_all(args)
    text = report(out)
    print(text)
    if args.out is not None:
        args.out.write_text(json.dumps({**out, "report": text}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
