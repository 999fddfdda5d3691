"""The economy workload through two replicas on one Redis, against one replica alone.

    .venv/bin/python bench/replicas.py [--limit 40] [--requests 3000] [--clients 32]
        [--fronts one,two,workers] [--out bench/out/replicas.json] [--calls-out DIR]

The workload, the fake and the scoring are ``bench/economy.py``'s (3,000 bot lookups over a
Zipf population, a fake allowing ``--limit`` requests/s per client IP that nobody tells the
proxy). Every front end here runs with a real ``redis-server`` (found as the tests find it,
``tests/redis_server.py``; a fresh one per run) as L2 and with ``limits.upstream.shared:
true`` (one learned budget per scope in Redis for the replicas of one egress):

- ``one``: one ``bloxproxy serve`` process;
- ``two``: two ``bloxproxy serve`` processes on their own ports, the clients alternating
  between them (client i talks to replica i mod 2);
- ``workers``: one ``bloxproxy serve --workers 2`` (two processes on one port).

Reported per front end: answered, upstream calls, 429s, answers per call, wall; the highest
upstream rate over any 1 s (sampled from the fake's counters every 100 ms), per scope and in
all, against the scope's learned rate at that moment (``bloxproxy_upstream_budget_rate``, read
from a replica in the same sampling loop), and the most calls within any 1 s by the fake's
own arrival times; and Redis commands per client request
(``INFO commandstats``) for the misses of the run, then for a second, all-hit pass of the same
requests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import economy  # noqa: E402
from economy import HOST, Server, child_env, free_port, http  # noqa: E402

FRONTS = ("one", "two", "workers")
_RATE = re.compile(r'^bloxproxy_upstream_budget_rate\{scope="([^"]+)"\} ([0-9.e+-]+)$', re.M)


def redis_calls(url: str) -> int:
    import redis as redis_py

    client = redis_py.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
        return sum(int(v.get("calls", 0)) for v in stats.values())
    finally:
        client.close()


class Sampler(threading.Thread):
    """Every 100 ms: the fake's upstream counts per service, and a replica's learned rates."""

    def __init__(self, fake_port: int, proxy_port: int) -> None:
        super().__init__(daemon=True)
        self.fake_port, self.proxy_port = fake_port, proxy_port
        self.samples: list[tuple[float, dict[str, int], dict[str, float]]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.1):
            with contextlib.suppress(OSError, ValueError):
                asked = time.monotonic()
                counts = json.loads(http("GET", self.fake_port, "/_fake/stats", timeout=2)[1])
                # when the fake counted: between asking and its answer (not after the
                # proxy's metrics below, which a busy replica may take long to give)
                at = (asked + time.monotonic()) / 2
                per: dict[str, int] = {}
                for key, n in counts["counts"].items():
                    service = key.split(" ", 2)[1]
                    per[service] = per.get(service, 0) + int(n)
                text = http("GET", self.proxy_port, "/_bloxproxy/metrics", timeout=2)[1]
                rates = {m[0]: float(m[1]) for m in _RATE.findall(text.decode())}
                self.samples.append((at, per, rates))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def peaks(self) -> dict[str, dict[str, float]]:
        """Per scope (and ``all``): the highest rate of calls over any window of at least
        1 s between two samples (the shortest such window ending at each sample), and the
        learned rate at its end."""
        out: dict[str, dict[str, float]] = {}
        s = self.samples
        scopes = sorted({k for _, per, _ in s for k in per})
        for scope in [*scopes, "all"]:
            best, rate_then = 0.0, 0.0
            j = 0
            for i in range(len(s)):
                # the shortest window ending at sample i that spans at least 1 s
                while j + 1 < i and s[i][0] - s[j + 1][0] >= 1.0:
                    j += 1
                if s[i][0] - s[j][0] < 1.0:
                    continue

                def n(k: int, scope: str = scope) -> int:
                    per = s[k][1]
                    return sum(per.values()) if scope == "all" else per.get(scope, 0)

                calls = (n(i) - n(j)) / (s[i][0] - s[j][0])
                if calls > best:
                    best = calls
                    rates = s[i][2]
                    rate_then = sum(rates.values()) if scope == "all" else rates.get(scope, 0.0)
            out[scope] = {"peak_calls_per_s": best, "learned_rate_then": rate_then}
        return out


def one_run(front: str, opts: argparse.Namespace, reqs: Sequence[Any], tmp: Path) -> dict[str, Any]:
    from tests.redis_server import RedisServer

    redis = RedisServer()
    redis.start()
    fport = free_port()
    fake = economy.fake_server(fport, 0.02, opts.limit, tmp, ROOT)
    proxies: list[Server] = []
    try:
        fake.start().wait_ready(fport, "/_fake/stats")
        env = child_env(
            ROOT,
            {
                "BLOXPROXY_UPSTREAM_BASE_URL": f"http://{HOST}:{fport}/{{service}}",
                "BLOXPROXY_CACHE_REDIS_URL": redis.url,
                "BLOXPROXY_LIMITS_UPSTREAM_SHARED": "true",
            },
        )
        count = 2 if front == "two" else 1
        ports = [free_port() for _ in range(count)]
        for port in ports:
            argv = economy.proxy_argv(ROOT, port)
            if front == "workers":
                argv += ["--workers", "2"]
            proxies.append(Server(f"bloxproxy-{port}", argv, tmp, env, ROOT).start())
        for server, port in zip(proxies, ports, strict=True):
            server.wait_ready(port, "/_bloxproxy/healthz")
        http("POST", fport, "/_fake/reset", b"{}")
        sampler = Sampler(fport, ports[0])
        sampler.start()
        r0 = redis_calls(redis.url)
        miss = asyncio.run(drive_many(ports, reqs, opts.clients, opts.timeout))
        r1 = redis_calls(redis.url)
        sampler.stop()
        stats = json.loads(http("GET", fport, "/_fake/stats")[1])
        log = http("GET", fport, "/_fake/requests?limit=20000")[1]  # the first pass's calls
        if opts.calls_out is not None:  # kept, to study
            opts.calls_out.mkdir(parents=True, exist_ok=True)
            (opts.calls_out / f"{front}.json").write_bytes(log)
        hit = asyncio.run(drive_many(ports, reqs, opts.clients, opts.timeout))
        r2 = redis_calls(redis.url)
        calls = int(stats["total"])
        n = len(reqs)
        return {
            "front": front,
            "answered_share": miss.answered / n,
            "upstream_calls": calls,
            "upstream_429": int(stats["statuses"].get("429", 0)),
            "answers_per_upstream_call": miss.answered / calls if calls else float("inf"),
            "wall_s": miss.wall,
            "peaks": sampler.peaks(),
            "calls_in_any_1s": busiest_second(json.loads(log)),
            "redis_commands_per_request_first_pass": (r1 - r0) / n,
            "redis_commands_per_request_all_hits": (r2 - r1) / n,
            "second_pass_answered_share": hit.answered / n,
            "upstream_calls_by_endpoint": economy.by_endpoint(stats["counts"]),
        }
    finally:
        for server in proxies:
            server.stop()
        fake.stop()
        redis.stop()


def busiest_second(calls: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Per service (and ``all``): the most calls the fake received within any 1 s, from
    its own arrival times (``at``), not sampled."""
    times: dict[str, list[float]] = {"all": []}
    for call in calls:
        times.setdefault(call["service"], []).append(call["at"])
        times["all"].append(call["at"])
    out = {}
    for service, ts in times.items():
        ts.sort()
        best, j = 0, 0
        for i, t in enumerate(ts):
            while ts[j] <= t - 1.0:
                j += 1
            best = max(best, i - j + 1)
        out[service] = best
    return out


async def drive_many(
    ports: Sequence[int], reqs: Sequence[Any], clients: int, request_timeout: float
) -> economy.Outcome:
    """``economy.drive`` with client i talking to ``ports[i % len(ports)]``."""
    if len(ports) == 1:
        return await economy.drive(ports[0], reqs, clients, request_timeout, True)
    parts = [
        [r for i, r in enumerate(reqs) if (i % clients) % len(ports) == k]
        for k in range(len(ports))
    ]
    shares = [clients // len(ports) + (k < clients % len(ports)) for k in range(len(ports))]
    t0 = time.perf_counter()
    outs = await asyncio.gather(
        *(
            economy.drive(p, part, c, request_timeout, True)
            for p, part, c in zip(ports, parts, shares, strict=True)
        )
    )
    total = economy.Outcome()
    for out in outs:
        total.answered += out.answered
        total.latencies += out.latencies
        for k, v in out.by_status.items():
            total.by_status[k] = total.by_status.get(k, 0) + v
    total.wall = time.perf_counter() - t0
    return total


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=float, default=40.0)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seed", type=int, default=20261204)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--fronts", default=",".join(FRONTS))
    p.add_argument("--out", type=Path, default=BENCH / "out" / "replicas.json")
    p.add_argument("--calls-out", type=Path, default=None, help="dir: fake's calls per front")
    opts = p.parse_args(argv)
    reqs = economy.with_expected(economy.workload(opts.requests, opts.users, opts.seed), ROOT)
    results = []
    with tempfile.TemporaryDirectory(prefix="bloxproxy-replicas-") as tmp:
        for front in opts.fronts.split(","):
            r = one_run(front, opts, reqs, Path(tmp))
            results.append(r)
            peak = r["peaks"]["all"]
            print(
                f"  {front:8} answered {r['answered_share']:6.1%}  calls {r['upstream_calls']:5,}"
                f"  429s {r['upstream_429']:4}  answers/call {r['answers_per_upstream_call']:5.2f}"
                f"  wall {r['wall_s']:5.1f} s  peak {peak['peak_calls_per_s']:5.1f}/s"
                f"  Redis cmds/request {r['redis_commands_per_request_first_pass']:.2f} (misses)"
                f" {r['redis_commands_per_request_all_hits']:.2f} (hits)",
                flush=True,
            )
            for scope, v in r["peaks"].items():
                if scope != "all":
                    print(
                        f"           {scope:10} peak {v['peak_calls_per_s']:5.1f}/s"
                        f"  learned rate then {v['learned_rate_then']:5.1f}/s"
                        f"  most calls in any 1 s {r['calls_in_any_1s'].get(scope, 0)}"
                    )
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps({"limit_per_s": opts.limit, "results": results}, indent=1))
    print(f"results: {opts.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
