"""Bounded soak: steady load with faults injected, watching the proxy for leaks.

    .venv/bin/python bench/soak.py [--minutes 3] [--rps 200] [--fault-every 8]
                                   [--idle 20] [--no-redis] [--out bench/out/soak.json]

Starts the fake Roblox (``python -m bloxproxy fake-roblox``), a real ``redis-server``
(``tests/redis_server.py``) and the proxy (``python -m bloxproxy serve``, the shipped rules
plus a per-credential rule) as subprocesses on 127.0.0.1, each in its own process group,
always stopped at the end. Then, for ``--minutes``:

- an asyncio aiohttp client sends ``--rps`` requests per second on a fixed schedule: clean
  routes (hits over a bounded key space), passthrough (2 s TTL, so misses keep coming),
  cookie-authenticated passthrough and a per-credential route (bypass/private entries),
  batches, games/groups/thumbnails (cached, and cookie-authenticated so that some of it
  always reaches the upstream and meets the faults), and a share of bad input (400/404
  expected);
- every ``--fault-every`` seconds a scripted fault goes to the fake over its HTTP control
  API (``POST /_fake/faults``) for a path of the *faulted* services (games, groups): 5xx
  bursts, 429 with and without Retry-After, slow answers past the 1 s upstream timeout,
  dropped connections, bodies cut mid-way, malformed JSON, HTML, oversized bodies,
  redirects to another host;
- Redis is SIGKILLed at 40 % of the run and restarted (empty, same port) at 55 %;
- every 5 s: the proxy's RSS (``/proc/<pid>/status``), open fds (``/proc/<pid>/fd``) and
  established TCP connections by peer (socket inodes matched in ``/proc/<pid>/net/tcp``).

Then load stops, the client closes its connections, and after ``--idle`` seconds fds and
connections are counted again. The proxy's asyncio tasks cannot be counted from outside;
fds and connections are the honest stand-in for task and connection leaks (a leaked
request task holds its sockets). Verdicts:

- RSS slope after warm-up (the first third, at least 30 s: the key space is bounded, so
  the caches are full by then) within ±1 MiB/min;
- after idle: no client connection left, upstream and Redis connections within their pool
  bounds, non-socket fds as before the load;
- zero 500s from the proxy, zero client-side timeouts or transport errors, zero errors on
  the services no fault was injected into (users, thumbnails: Redis's outage included),
  and every error on the faulted services one the faults explain.

Exit status 0 when every verdict passes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from run import Proc, free_port  # noqa: E402  # bench/run.py: server processes, ports

from tests.conftest import VIEWER_RULES  # noqa: E402  # the per-credential /v1/as-viewer route
from tests.redis_server import RedisServer  # noqa: E402

PY = sys.executable
HOST = "127.0.0.1"
SAMPLE_EVERY = 5.0
TCP_STATES = {
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0B": "CLOSING",
}
FAULTED = ("games", "groups")
COOKIES = [f"SOAK-COOKIE-{i:02d}-" + "x" * 20 for i in range(20)]
# (weight, kind, service, expected 4xx). Key spaces are bounded so the caches fill early.
MIX = [
    (24, "clean", "users", False),
    (18, "passthrough", "users", False),
    (10, "cookie-passthrough", "users", False),
    (8, "per-credential", "users", False),
    (5, "batch", "users", False),
    (5, "thumbnails", "thumbnails", False),
    (5, "games", "games", False),
    (4, "games-passthrough", "games", False),
    (6, "games-cookie", "games", False),  # credentialed: bypasses the cache, meets the faults
    (4, "groups", "groups", False),
    (3, "groups-passthrough", "groups", False),
    (6, "groups-cookie", "groups", False),
    (5, "bad-input", "users", True),
]
FAULT_TARGETS = [
    ("games", "/v1/games"),
    ("groups", "/v1/groups/7"),
    ("groups", "/v1/groups/7/roles"),
]
FAULTS: dict[str, list[dict[str, Any]]] = {
    "503 burst": [{"status": 503}] * 6,
    "500 burst": [{"status": 500}] * 4,
    "429 Retry-After": [{"status": 429, "retry_after": "2"}] * 2,
    "429 bare": [{"status": 429}] * 3,
    "slow past timeout": [{"delay": 2.5}] * 2,
    "dropped": [{"drop": True}] * 2,
    "reset mid-body": [{"reset_mid_body": True}] * 2,
    "malformed JSON": [{"malformed_json": True}] * 2,
    "HTML": [{"body": "<html>down</html>", "content_type": "text/html"}],
    "too large": [{"body_size": 200_000}],
    "redirect": [{"status": 302, "redirect_to": "http://127.0.0.1:9/elsewhere"}],
}


async def wait_ready(url: str, proc: Proc, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while True:
            if not proc.alive():
                raise SystemExit(f"{proc.name} exited:\n{proc.log_path.read_text()[-3000:]}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            if time.monotonic() > deadline:
                raise SystemExit(f"{proc.name} not ready at {url}")
            await asyncio.sleep(0.1)


# -- /proc sampling ----------------------------------------------------------------------------


def _tcp_table(pid: int) -> dict[int, tuple[int, int, str]]:
    """socket inode -> (local port, remote port, state) for the process's network view."""
    out: dict[int, tuple[int, int, str]] = {}
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{name}") as f:
            next(f)
            for line in f:
                parts = line.split()
                local, remote, state, inode = parts[1], parts[2], parts[3], int(parts[9])
                out[inode] = (
                    int(local.rsplit(":", 1)[1], 16),
                    int(remote.rsplit(":", 1)[1], 16),
                    state,
                )
    return out


def sample(pid: int, ports: dict[str, int]) -> dict[str, Any]:
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    fd_dir = f"/proc/{pid}/fd"
    inodes, other = [], 0
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            target = os.readlink(f"{fd_dir}/{fd}")
            m = re.fullmatch(r"socket:\[(\d+)\]", target)
            if m:
                inodes.append(int(m.group(1)))
            else:
                other += 1
    table = _tcp_table(pid)
    conns: Counter[str] = Counter()
    for inode in inodes:
        found = table.get(inode)
        if found is None:
            conns["non-tcp sockets"] += 1
            continue
        local, remote, state = found
        if state == "0A":
            conns["listening"] += 1
        elif state != "01":
            conns[f"tcp state {TCP_STATES.get(state, state)}"] += 1
        elif local == ports["proxy"]:
            conns["clients"] += 1
        elif remote == ports["fake"]:
            conns["upstream"] += 1
        elif remote == ports.get("redis"):
            conns["redis"] += 1
        else:
            conns["established other"] += 1
    return {
        "rss_kib": rss,
        "fds": len(inodes) + other,
        "non_socket_fds": other,
        "sockets": len(inodes),
        "conns": dict(conns),
    }


# -- load ----------------------------------------------------------------------------------------


@dataclass
class Stats:
    sent: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # "service kind status code"
    unexplained: Counter[str] = field(default_factory=Counter)
    transport: Counter[str] = field(default_factory=Counter)
    proxy_500s: int = 0
    latencies: list[float] = field(default_factory=list)
    inflight_max: int = 0
    start: float = field(default_factory=time.perf_counter)
    # (seconds since start, kind, service, status or 0 for a transport error, latency s)
    records: list[tuple[float, str, str, int, float]] = field(default_factory=list)


def make_request(rng: random.Random) -> tuple[str, str, bool, str, dict[str, str]]:
    weights = [w for w, *_ in MIX]
    _, kind, service, bad = rng.choices(MIX, weights)[0]
    uid = 1_000_000 + rng.randrange(300)
    headers: dict[str, str] = {}
    if kind == "clean":
        path = f"/v1/users/{uid}"
    elif kind == "passthrough":
        path = f"/users/v1/users/{uid}"
    elif kind == "cookie-passthrough":
        path = f"/users/v1/users/{uid}"
        headers["Cookie"] = f".ROBLOSECURITY={rng.choice(COOKIES)}"
    elif kind == "per-credential":
        path = f"/v1/as-viewer/{1_000_000 + rng.randrange(10)}"
        headers["Cookie"] = f".ROBLOSECURITY={rng.choice(COOKIES)}"
    elif kind == "batch":
        a, b = sorted(rng.sample(range(1_000_000, 1_000_020), 2))
        path = f"/v1/users?ids={a},{b}"
    elif kind == "thumbnails":
        path = f"/v1/thumbnails/users/headshots?ids={uid}"
    elif kind == "games":
        path = "/v1/universes?ids=1685831367"
    elif kind == "games-passthrough":
        path = "/games/v1/games?universeIds=1685831367"
    elif kind == "groups":
        path = rng.choice(["/v1/groups/7", "/v1/groups/7/roles"])
    elif kind == "groups-passthrough":
        path = "/groups/v1/groups/7"
    elif kind == "games-cookie":
        path = "/games/v1/games?universeIds=1685831367"
        headers["Cookie"] = f".ROBLOSECURITY={rng.choice(COOKIES)}"
    elif kind == "groups-cookie":
        path = rng.choice(["/groups/v1/groups/7", "/groups/v1/groups/7/roles"])
        headers["Cookie"] = f".ROBLOSECURITY={rng.choice(COOKIES)}"
    else:
        path = rng.choice(["/v1/users/abc", "/nosuch/v1/x", "/v1/users/0"])
    return kind, service, bad, path, headers


async def one(session: aiohttp.ClientSession, base: str, stats: Stats, rng: random.Random) -> None:
    kind, service, bad, path, headers = make_request(rng)
    start = time.perf_counter()
    try:
        async with session.get(base + path, headers=headers, allow_redirects=False) as resp:
            body = await resp.read()
            status = resp.status
            problem = resp.headers.get("Content-Type") == "application/problem+json"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        stats.transport[f"{kind}: {type(exc).__name__}"] += 1
        stats.records.append((start - stats.start, kind, service, 0, 0.0))
        return
    latency = time.perf_counter() - start
    stats.latencies.append(latency)
    stats.records.append((start - stats.start, kind, service, status, latency))
    stats.statuses[str(status)] += 1
    if status < 400 or (bad and status in (400, 404)):
        return
    code = "roblox"
    if problem:
        with contextlib.suppress(ValueError):
            code = json.loads(body).get("code", "?")
        if status == 500:
            stats.proxy_500s += 1
    label = f"{service} {kind} {status} {code}"
    stats.errors[label] += 1
    if service not in FAULTED or code == "internal_error":
        stats.unexplained[label] += 1


async def drive(base: str, rps: float, seconds: float, stats: Stats, seed: int = 1) -> None:
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=15)
    connector = aiohttp.TCPConnector(limit=512)
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        loop = asyncio.get_running_loop()
        start = loop.time()
        i = 0
        while (now := loop.time()) - start < seconds:
            due = start + i / rps
            if due > now:
                await asyncio.sleep(due - now)
            task = asyncio.create_task(one(session, base, stats, rng))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            stats.sent += 1
            stats.inflight_max = max(stats.inflight_max, len(tasks))
            i += 1
        await asyncio.gather(*tasks)
    # the session is closed here: every client connection to the proxy is gone


async def inject_faults(
    fake: str, every: float, seconds: float, log: list[dict[str, Any]], seed: int = 2
) -> None:
    rng = random.Random(seed)
    names = sorted(FAULTS)
    async with aiohttp.ClientSession() as session:
        start = time.monotonic()
        await asyncio.sleep(every)
        while time.monotonic() - start < seconds - every:
            name = rng.choice(names)
            service, path = rng.choice(FAULT_TARGETS)
            body = {"service": service, "path": path, "faults": FAULTS[name]}
            async with session.post(f"{fake}/_fake/faults", json=body) as resp:
                resp.raise_for_status()
            log.append(
                {
                    "t": round(time.monotonic() - start, 1),
                    "fault": name,
                    "service": service,
                    "path": path,
                    "count": len(FAULTS[name]),
                }
            )
            await asyncio.sleep(every)


async def redis_outage(
    redis: RedisServer | None, seconds: float, events: list[dict[str, Any]]
) -> None:
    if redis is None:
        return
    start = time.monotonic()
    await asyncio.sleep(seconds * 0.40)
    redis.kill()
    events.append({"t": round(time.monotonic() - start, 1), "redis": "killed"})
    await asyncio.sleep(seconds * 0.15)
    await asyncio.to_thread(redis.restart)
    events.append({"t": round(time.monotonic() - start, 1), "redis": "restarted"})


async def sampler(
    pid: int, ports: dict[str, int], seconds: float, stats: Stats, out: list[dict[str, Any]]
) -> None:
    start = time.monotonic()
    while (t := time.monotonic() - start) < seconds:
        snap = sample(pid, ports)
        snap.update(t=round(t, 1), sent=stats.sent)
        out.append(snap)
        print(
            f"  t={t:6.1f}s  rss={snap['rss_kib'] / 1024:7.1f} MiB  fds={snap['fds']:4d}  "
            f"conns={snap['conns']}  sent={stats.sent}",
            flush=True,
        )
        await asyncio.sleep(SAMPLE_EVERY)


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    cov = sum((x - mx) * (y - my) for x, y in points)
    return (cov / var) * 60 if var else 0.0


def parse_metrics(text: str) -> dict[str, Any]:
    out: dict[str, Counter[str]] = {
        "requests_by_status": Counter(),
        "upstream": Counter(),
        "retries": Counter(),
    }
    gauges: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        labels = dict(re.findall(r'(\w+)="([^"]*)"', name))
        if name.startswith("bloxproxy_requests_total"):
            out["requests_by_status"][labels.get("status", "?")] += int(float(value))
        elif name.startswith("bloxproxy_upstream_requests_total"):
            out["upstream"][f"{labels.get('service')} {labels.get('status')}"] += int(float(value))
        elif name.startswith("bloxproxy_upstream_retries_total"):
            out["retries"][labels.get("service", "?")] += int(float(value))
        elif name.startswith(
            ("bloxproxy_cache_l1_", "bloxproxy_breaker_state", "bloxproxy_asyncio_tasks")
        ):
            gauges[name] = float(value)
    return {**{k: dict(v) for k, v in out.items()}, "gauges": gauges}


async def tasks_of(base: str) -> float:
    """The proxy's live asyncio tasks, from its own metrics (the scrape itself is one)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/_bloxproxy/metrics") as resp:
            gauges = parse_metrics(await resp.text())["gauges"]
    return float(gauges.get("bloxproxy_asyncio_tasks", -1))


async def soak(args: argparse.Namespace) -> int:
    seconds = args.minutes * 60
    warmup = max(30.0, seconds / 3)
    logdir = Path(tempfile.mkdtemp(prefix="bloxproxy-soak-"))
    rules = logdir / "viewer.yaml"
    rules.write_text(VIEWER_RULES)
    redis = None if args.no_redis else RedisServer()
    fake_port, proxy_port = free_port(), free_port()
    fake = Proc("fake", [PY, "-m", "bloxproxy", "fake-roblox", "--port", str(fake_port)], logdir)
    env = {
        **os.environ,
        "BLOXPROXY_SERVER_PORT": str(proxy_port),
        "BLOXPROXY_UPSTREAM_BASE_URL": f"http://{HOST}:{fake_port}/{{service}}",
        "BLOXPROXY_RULES_PATHS": f"[{ROOT / 'rules'}, {rules}]",
        "BLOXPROXY_CACHE_PASSTHROUGH_TTL": "2s",
        "BLOXPROXY_UPSTREAM_TIMEOUT": "1s",
        "BLOXPROXY_UPSTREAM_MAX_RESPONSE_SIZE": "64KiB",
        "BLOXPROXY_LIMITS_UPSTREAM_RATE": "1000",
        "BLOXPROXY_LOGGING_ACCESS_LOG": "true",
    }
    proxy = Proc("proxy", [PY, "-m", "bloxproxy", "serve"], logdir, env)
    ports = {"proxy": proxy_port, "fake": fake_port}
    result: dict[str, Any] = {"minutes": args.minutes, "rps": args.rps, "warmup_s": warmup}
    try:
        if redis is not None:
            redis.start()
            env["BLOXPROXY_CACHE_REDIS_URL"] = redis.url
            ports["redis"] = redis.port
        fake.start()
        await wait_ready(f"http://{HOST}:{fake_port}/_fake/stats", fake)
        proxy.start()
        base = f"http://{HOST}:{proxy_port}"
        await wait_ready(f"{base}/_bloxproxy/healthz", proxy)
        await asyncio.sleep(1.0)
        before = sample(proxy.pid, ports)
        tasks_before = await tasks_of(base)
        print(f"proxy pid {proxy.pid}; before load: {before}; logs in {logdir}", flush=True)

        stats = Stats()
        samples: list[dict[str, Any]] = []
        faults: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        await asyncio.gather(
            drive(base, args.rps, seconds, stats),
            inject_faults(f"http://{HOST}:{fake_port}", args.fault_every, seconds, faults),
            redis_outage(redis, seconds, events),
            sampler(proxy.pid, ports, seconds, stats, samples),
        )
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/_bloxproxy/metrics") as resp:
                metrics = parse_metrics(await resp.text())
            async with session.get(f"http://{HOST}:{fake_port}/_fake/faults") as resp:
                pending = (await resp.json())["pending"]
        end_of_load = sample(proxy.pid, ports)
        print(f"load done; idling {args.idle:g}s with no client connected", flush=True)
        await asyncio.sleep(args.idle)
        after = sample(proxy.pid, ports)
        tasks_after = await tasks_of(base)
        alive = proxy.alive()
    finally:
        proxy.stop()
        fake.stop()
        if redis is not None:
            redis.stop()

    log_text = proxy.log_path.read_text(errors="replace")
    cookies_in_log = sum(log_text.count(c) for c in COOKIES)
    steady = [(s["t"], s["rss_kib"] / 1024) for s in samples if s["t"] >= warmup]
    slope = slope_per_minute(steady)
    rss_after_warmup = [y for _, y in steady]
    lat = sorted(stats.latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else 0.0

    by_service: dict[str, list[float]] = {}
    buckets: dict[int, list[tuple[str, int, float]]] = {}
    for t, _kind, service, status, latency in stats.records:
        by_service.setdefault(service, []).append(latency)
        buckets.setdefault(int(t // SAMPLE_EVERY), []).append((service, status, latency))
    latency_by_service = {
        svc: {
            "n": len(v),
            "p50_ms": round(sorted(v)[len(v) // 2] * 1000, 1),
            "p99_ms": round(sorted(v)[int(len(v) * 0.99)] * 1000, 1),
            "max_ms": round(max(v) * 1000, 1),
        }
        for svc, v in sorted(by_service.items())
    }
    timeline = [
        {
            "t": b * SAMPLE_EVERY,
            "n": len(rows),
            "errors": sum(1 for _, st, _ in rows if st == 0 or st >= 500 or st == 429),
            "max_ms_unfaulted": round(
                max((lat for svc, _, lat in rows if svc not in FAULTED), default=0.0) * 1000, 1
            ),
            "max_ms": round(max(lat for _, _, lat in rows) * 1000, 1),
        }
        for b, rows in sorted(buckets.items())
    ]
    answered = sum(stats.statuses.values())
    errors = sum(stats.errors.values())
    injected = sum(f["count"] for f in faults)
    conns_after = after["conns"]
    pool_redis = 64  # cache.redis.max_connections (+2 for the pub/sub listener)
    verdicts = {
        "proxy alive at the end": alive,
        "RSS flat after warm-up (|slope| <= 1 MiB/min)": abs(slope) <= 1.0,
        "no client connection left after idle": conns_after.get("clients", 0) == 0,
        "upstream connections after idle within the pool (<= 256)": conns_after.get("upstream", 0)
        <= 256,
        "redis connections after idle within the pool": conns_after.get("redis", 0)
        <= pool_redis + 2,
        "non-socket fds as before": after["non_socket_fds"] <= before["non_socket_fds"] + 2,
        "asyncio tasks as before (bloxproxy_asyncio_tasks)": tasks_after <= tasks_before + 2,
        "zero 500s from the proxy": stats.proxy_500s == 0,
        "zero client timeouts / transport errors": not stats.transport,
        "zero errors on unfaulted services": not stats.unexplained,
        "no test cookie in the proxy's log": cookies_in_log == 0,
    }
    result.update(
        {
            "sent": stats.sent,
            "answered": answered,
            "achieved_rps": round(answered / seconds, 1),
            "inflight_max": stats.inflight_max,
            "statuses": dict(stats.statuses),
            "errors": dict(stats.errors),
            "error_rate": round(errors / max(answered, 1), 4),
            "unexplained_errors": dict(stats.unexplained),
            "transport_errors": dict(stats.transport),
            "proxy_500s": stats.proxy_500s,
            "latency_ms": {
                "p50": round(pct(0.5), 1),
                "p99": round(pct(0.99), 1),
                "max": round(pct(1.0), 1),
            },
            "latency_by_service": latency_by_service,
            "timeline": timeline,
            "faults_injected": injected,
            "fault_scripts": len(faults),
            "faults_pending_at_end": pending,
            "fault_log": faults,
            "redis_events": events,
            "rss_mib": {
                "before": round(before["rss_kib"] / 1024, 1),
                "end_of_warmup": round(rss_after_warmup[0], 1) if rss_after_warmup else None,
                "end_of_load": round(end_of_load["rss_kib"] / 1024, 1),
                "after_idle": round(after["rss_kib"] / 1024, 1),
                "max": round(max(s["rss_kib"] for s in samples) / 1024, 1),
                "slope_after_warmup_mib_per_min": round(slope, 3),
            },
            "fds": {"before": before, "end_of_load": end_of_load, "after_idle": after},
            "metrics": metrics,
            "cookies_in_proxy_log": cookies_in_log,
            "samples": samples,
            "tasks": {"before": tasks_before, "after_idle": tasks_after},
            "verdicts": verdicts,
        }
    )
    report(result)
    if args.out:
        out = Path(args.out)
        await asyncio.to_thread(out.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(out.write_text, json.dumps(result, indent=2, default=str))
        print(f"\nwritten to {args.out}")
    return 0 if all(verdicts.values()) else 1


def report(r: dict[str, Any]) -> None:
    rss = r["rss_mib"]
    print("\n== soak report ==")
    print(
        f"duration {r['minutes']:g} min at {r['rps']:g} rps target: sent {r['sent']}, answered "
        f"{r['answered']} ({r['achieved_rps']} rps), max in flight {r['inflight_max']}"
    )
    print(
        f"latency p50 {r['latency_ms']['p50']} ms, p99 {r['latency_ms']['p99']} ms, "
        f"max {r['latency_ms']['max']} ms"
    )
    print(f"statuses {r['statuses']}")
    for svc, lat in r["latency_by_service"].items():
        print(
            f"  {svc:11s} n={lat['n']:6d}  p50 {lat['p50_ms']:7.1f} ms  p99 "
            f"{lat['p99_ms']:7.1f} ms  max {lat['max_ms']:7.1f} ms"
        )
    print("timeline (5 s buckets: requests, 5xx/429/transport errors, slowest unfaulted, slowest):")
    for row in r["timeline"]:
        print(
            f"  t={row['t']:5.0f}s  n={row['n']:5d}  errors={row['errors']:4d}  "
            f"max unfaulted {row['max_ms_unfaulted']:7.1f} ms  max {row['max_ms']:7.1f} ms"
        )
    print(
        f"faults injected: {r['faults_injected']} scripted answers in {r['fault_scripts']} "
        f"scripts ({r['faults_pending_at_end']} unconsumed at the end); redis: "
        f"{r['redis_events']}"
    )
    print(f"errors (non-2xx/3xx, expected 4xx excluded): rate {r['error_rate']:.2%}")
    for label, n in sorted(r["errors"].items(), key=lambda kv: -kv[1]):
        print(f"  {n:6d}  {label}")
    print(
        f"unexplained: {r['unexplained_errors'] or 'none'}; transport: "
        f"{r['transport_errors'] or 'none'}; proxy 500s: {r['proxy_500s']}"
    )
    print(
        f"RSS MiB: before {rss['before']}, end of warm-up {rss['end_of_warmup']}, end of "
        f"load {rss['end_of_load']}, after idle {rss['after_idle']}, max {rss['max']}; "
        f"slope after warm-up {rss['slope_after_warmup_mib_per_min']:+.3f} MiB/min"
    )
    for when in ("before", "end_of_load", "after_idle"):
        f = r["fds"][when]
        print(
            f"fds {when:12s} {f['fds']:4d} (sockets {f['sockets']}, other "
            f"{f['non_socket_fds']})  conns {f['conns']}"
        )
    m = r["metrics"]
    print(f"proxy metrics: requests by status {m['requests_by_status']}")
    print(f"  upstream attempts {m['upstream']}")
    print(f"  retries {m['retries']}  gauges {m['gauges']}")
    print("verdicts:")
    for name, passed in r["verdicts"].items():
        print(f"  {'PASS' if passed else 'FAIL'}  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--rps", type=float, default=200.0)
    parser.add_argument("--fault-every", type=float, default=8.0, metavar="SECONDS")
    parser.add_argument(
        "--idle",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="wait this long after the load before counting again (the "
        "upstream pool's keep-alive is 15 s)",
    )
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "soak.json"))
    return asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
