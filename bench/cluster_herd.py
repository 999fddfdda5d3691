"""Cluster-wide coalescing: a herd of cold requests for one key split across two replicas.

    .venv/bin/python bench/cluster_herd.py [--requests 1000] [--rounds 5] [--latency 0.2]
        [--pairs 50] [--singles 0] [--off] [--out bench/out/cluster_herd.json]

Starts a throw-away ``redis-server`` (found like the tests find it, ``tests/redis_server.py``),
the fake Roblox (``python -m bloxproxy.fake --latency S``) and two proxy processes
(``python -m bloxproxy serve`` with the shipped ``config.yaml``) on that one Redis. Every
round asks a new cold key (``/v1/users/<id>``, a synthetic user) ``--requests`` times at
once, half through each replica, over connections opened and warmed beforehand, and reads:

- upstream calls for the key (the fake's ``/_fake/stats``): the target is exactly 1;
- each answer's completion time (client side, when its headers arrived) relative to the
  leader's (the one answer with ``X-Cache: MISS``), for the leader's replica's own
  followers and for the other replica's waiters. The other replica's waiters pay what
  cluster coalescing adds (the word on pub/sub, one L2 ``GET``) on top of what every
  follower pays (writing hundreds of answers on shared cores); the difference of the two
  groups' medians is that added cost;
- ``--pairs`` rounds of the smallest herd (one request per replica, a new key each): the
  other replica's answer after the leader's, without the hundreds of answers around it.

``--singles N`` then times N lone misses one after the other on one replica (what the lease
costs a miss nobody shares: the claim, and the entry's write with the word awaited; best
with ``--latency 0``). ``--off`` runs the same with ``cache.redis.cluster_coalescing:
false`` (one call per replica).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer  # noqa: E402  (the tests' helper finds redis-server)

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start(args: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    out = subprocess.DEVNULL if log is None else log.open("wb")
    try:
        return subprocess.Popen(
            args,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def wait_up(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(300):
        try:
            async with session.get(url) as resp:
                await resp.read()
                if resp.status < 500:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise SystemExit(f"nothing answers at {url}")


async def upstream_calls(session: aiohttp.ClientSession, fake: str, path: str) -> int:
    async with session.get(f"{fake}/_fake/stats") as resp:
        stats = await resp.json()
    return int(stats["counts"].get(f"GET users {path}", 0))


async def one(session: aiohttp.ClientSession, url: str, began: float) -> dict[str, Any]:
    async with session.get(url) as resp:
        done = time.perf_counter() - began
        await resp.read()
        return {"status": resp.status, "cache": resp.headers.get("X-Cache", ""), "t": done}


async def herd(
    sessions: list[aiohttp.ClientSession], bases: list[str], path: str, n: int
) -> list[dict[str, Any]]:
    began = time.perf_counter()
    answers = await asyncio.gather(
        *(one(sessions[i % 2], bases[i % 2] + path, began) for i in range(n))
    )
    for i, answer in enumerate(answers):
        answer["replica"] = i % 2
    return answers


def ms(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2)


def spread(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """A herd of hits (the control): each answer's completion after the first one's, per
    replica, the same measure as a cold herd's "after the leader" without any coalescing:
    what writing that many answers at once costs on this machine."""
    out: dict[str, Any] = {"hits": sum(a["cache"] != "MISS" for a in answers)}
    for replica in (0, 1):
        times = sorted(a["t"] for a in answers if a["replica"] == replica)
        after = [t - times[0] for t in times[1:]]
        out[f"replica{replica}_after_first_ms"] = {"p50": ms(after, 0.5), "p99": ms(after, 0.99)}
    return out


def judge(answers: list[dict[str, Any]]) -> dict[str, Any]:
    leaders = [a for a in answers if a["cache"] == "MISS"]
    out: dict[str, Any] = {
        "statuses": sorted({a["status"] for a in answers}),
        "misses": len(leaders),
    }
    if len(leaders) != 1:
        return out
    leader = leaders[0]
    same = [
        a["t"] - leader["t"]
        for a in answers
        if a is not leader and a["replica"] == leader["replica"]
    ]
    other = [a["t"] - leader["t"] for a in answers if a["replica"] != leader["replica"]]
    out.update(
        {
            "leader_ms": round(leader["t"] * 1000, 2),
            "same_replica_after_leader_ms": {"p50": ms(same, 0.5), "p99": ms(same, 0.99)},
            "other_replica_after_leader_ms": {"p50": ms(other, 0.5), "p99": ms(other, 0.99)},
            "added_p50_ms": round((statistics.median(other) - statistics.median(same)) * 1000, 2)
            if same and other
            else float("nan"),
        }
    )
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server = RedisServer()
    server.start()
    fake_port, ports = free_port(), [free_port(), free_port()]
    procs = [
        start(
            [sys.executable, "-m", "bloxproxy.fake", "--port", str(fake_port), "--latency",
             str(args.latency)],
            {},
        )
    ]  # fmt: skip
    env = {
        "BLOXPROXY_UPSTREAM_BASE_URL": f"http://{HOST}:{fake_port}/{{service}}",
        "BLOXPROXY_CACHE_REDIS_URL": server.url,
        "BLOXPROXY_CACHE_REDIS_CLUSTER_COALESCING": "false" if args.off else "true",
        "BLOXPROXY_LOGGING_ACCESS_LOG": "true",  # its "time" (ms) is when an answer was done
        "BLOXPROXY_LOGGING_FORMAT": "json",
        "BLOXPROXY_LIMITS_UPSTREAM_RATE": "10000",
    }
    logs = Path(tempfile.mkdtemp(prefix="bloxproxy-herd-"))
    for i, port in enumerate(ports):
        procs.append(
            start(
                [sys.executable, "-m", "bloxproxy", "serve", "--config", str(ROOT / "config.yaml"),
                 "--port", str(port)],
                env,
                logs / f"replica{i}.log",
            )
        )  # fmt: skip
    fake = f"http://{HOST}:{fake_port}"
    bases = [f"http://{HOST}:{port}" for port in ports]
    result: dict[str, Any] = {"requests": args.requests, "latency_s": args.latency, "off": args.off}
    try:
        timeout = aiohttp.ClientTimeout(total=60)
        sessions = [
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout)
            for _ in bases
        ]
        try:
            await wait_up(sessions[0], f"{fake}/_fake/stats")
            for s, base in zip(sessions, bases, strict=True):
                await wait_up(s, f"{base}/_bloxproxy/readyz")
            # open and warm every connection the herd will use (a hit, answered by each)
            warm = "/v1/users/1"
            await herd(sessions, bases, warm, args.requests)
            await herd(sessions, bases, warm, args.requests)
            rounds = []
            for r in range(args.rounds):
                path = f"/v1/users/{2_000_000 + r}"
                answers = await herd(sessions, bases, path, args.requests)
                verdict = judge(answers)
                verdict["upstream_calls"] = await upstream_calls(sessions[0], fake, path)
                # the control: the same herd again, now all hits (no coalescing at all)
                verdict["hits"] = spread(await herd(sessions, bases, path, args.requests))
                rounds.append(verdict)
                print(json.dumps(verdict), flush=True)
            result["rounds"] = rounds
            pairs = []
            for r in range(args.pairs):
                path = f"/v1/users/{3_000_000 + r}"
                answers = await herd(sessions, bases, path, 2)
                leader = [a for a in answers if a["cache"] == "MISS"]
                calls = await upstream_calls(sessions[0], fake, path)
                if len(leader) == 1 and calls == 1:
                    other = next(a for a in answers if a is not leader[0])
                    pairs.append(other["t"] - leader[0]["t"])
                else:
                    pairs.append(float("nan"))
            good = [p for p in pairs if p == p]
            result["pairs"] = {
                "rounds": args.pairs,
                "one_call": len(good),
                "other_after_leader_ms": {
                    "p50": ms(good, 0.5),
                    "p99": ms(good, 0.99),
                    "max": ms(good, 1.0),
                },
            }
            print(json.dumps(result["pairs"]), flush=True)
            singles = []
            for r in range(args.singles):
                path = f"/v1/users/{4_000_000 + r}"
                began = time.perf_counter()
                async with sessions[0].get(bases[0] + path) as resp:
                    await resp.read()
                singles.append(time.perf_counter() - began)
            if singles:
                result["single_miss_ms"] = {"p50": ms(singles, 0.5), "p90": ms(singles, 0.9)}
                print(json.dumps({"single_miss_ms": result["single_miss_ms"]}), flush=True)
        finally:
            for s in sessions:
                await s.close()
    finally:
        for proc in procs:
            stop(proc)
        server.stop()
    lines = access_lines([logs / "replica0.log", logs / "replica1.log"])
    for r, verdict in enumerate(result.get("rounds", [])):
        verdict["server_side"] = server_side(lines, f"/v1/users/{2_000_000 + r}", args.requests)
    print(json.dumps([v["server_side"] for v in result.get("rounds", [])]), flush=True)
    result["server_side_pairs_other_after_leader_ms"] = pair_gaps(lines, args.pairs)
    print(json.dumps(result["server_side_pairs_other_after_leader_ms"]), flush=True)
    shutil.rmtree(logs, ignore_errors=True)
    return result


def access_lines(paths: list[Path]) -> list[tuple[int, str, str, float]]:
    """(replica, path, X-Cache, time in ms since the epoch) of every access line."""
    out = []
    for replica, path in enumerate(paths):
        for raw in path.read_text(errors="replace").splitlines():
            if '"type":"access"' not in raw:
                continue
            line = json.loads(raw)
            stamp = datetime.datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
            stamp = stamp.replace(tzinfo=datetime.UTC)
            out.append((replica, line["path"], line["cache"], stamp.timestamp() * 1000))
    return out


def server_side(lines: list[tuple[int, str, str, float]], path: str, n: int) -> dict[str, Any]:
    """When each replica's answers were done, in ms after the leader's (access-line
    "time", ms resolution): the leader's own followers and the other replica's waiters; and
    for the control herd of hits that followed (the path's next ``n`` lines), each replica's
    answers after its first one."""
    mine = sorted((x for x in lines if x[1] == path), key=lambda x: x[3])
    cold, warm = mine[:n], mine[n:]
    leaders = [x for x in cold if x[2] == "MISS"]
    if len(leaders) == 2 and leaders[0][0] != leaders[1][0]:  # --off: a leader per replica
        return {
            f"replica{lead[0]}_after_its_leader_ms": {
                "p50": statistics.median(
                    x[3] - lead[3] for x in cold if x is not lead and x[0] == lead[0]
                ),
                "last": max(x[3] - lead[3] for x in cold if x[0] == lead[0]),
            }
            for lead in leaders
        }
    if len(leaders) != 1:
        return {"misses": len(leaders)}
    leader = leaders[0]
    same = [x[3] - leader[3] for x in cold if x is not leader and x[0] == leader[0]]
    other = [x[3] - leader[3] for x in cold if x[0] != leader[0]]
    out: dict[str, Any] = {
        "same_replica_ms": {"first": min(same), "p50": statistics.median(same), "last": max(same)},
        "other_replica_ms": {
            "first": min(other),
            "p50": statistics.median(other),
            "last": max(other),
        },
    }
    for replica in (0, 1):
        times = [x[3] for x in warm if x[0] == replica]
        if len(times) > 1:
            after = [t - times[0] for t in times[1:]]
            out[f"hits_replica{replica}_ms"] = {"p50": statistics.median(after), "last": after[-1]}
    return out


def pair_gaps(lines: list[tuple[int, str, str, float]], pairs: int) -> dict[str, float]:
    gaps = []
    for r in range(pairs):
        mine = [x for x in lines if x[1] == f"/v1/users/{3_000_000 + r}"]
        leaders = [x for x in mine if x[2] == "MISS"]
        if len(leaders) == 1 and len(mine) == 2:
            other = next(x for x in mine if x is not leaders[0])
            gaps.append(other[3] - leaders[0][3])
    gaps.sort()
    if not gaps:
        return {}
    return {
        "p50": statistics.median(gaps),
        "p99": gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))],
        "max": gaps[-1],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--latency", type=float, default=0.2, help="the fake's latency, seconds")
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--singles", type=int, default=0, help="sequential lone misses to time")
    ap.add_argument("--off", action="store_true", help="cluster_coalescing: false")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "cluster_herd.json"))
    args = ap.parse_args()
    result = asyncio.run(run(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
