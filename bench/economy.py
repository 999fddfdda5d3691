"""The economy benchmark: bots against a Roblox-like upstream that limits each client IP.

    .venv/bin/python bench/economy.py [--limits 40,80,20] [--fronts none,nginx,bloxproxy]
        [--requests 3000] [--users 20000] [--clients 32] [--seed 20261204]
        [--clean-share 0] [--missing-share 0.01] [--fake-latency 0.02] [--timeout 10]
        [--runs 1] [--wall-target 48] [--out bench/out/economy.json]

The workload is what a Discord or trading bot does: single-id lookups of user records,
avatar headshots, presence and usernames, the way ro.py and noblox.js send them (through
passthrough, so nginx can serve the very same URLs), for a Zipf(1.1) population of 20,000
synthetic users, from 32 concurrent clients (each its own connection pool, all on
127.0.0.1), 3,000 requests in all (deterministic, seeded). The upstream is the bundled fake
Roblox with ``--ip-limit N/s``: a token bucket per client IP with legacy 429s and no
``Retry-After``, as Roblox's legacy hosts do; the proxy in front is not told the limit.

Front ends, each on a fresh fake (and a cold cache) per run: ``none`` (clients straight at
the fake), ``nginx`` (``proxy_cache`` with a lock, stale on 429/5xx, POST reads keyed by
their body; skipped when nginx is not installed) and ``bloxproxy`` (``python -m bloxproxy
serve`` with the repository's ``config.yaml``, upstream = the fake).

A request is *answered* when the client got what a direct call to an unlimited Roblox gives:
the status and JSON body the fake computes in-process for it (``bloxproxy.fake.answer``;
a 404 for a missing id counts). 429, 503, 504, a wrong body, an error or the client timeout
do not. Upstream calls and 429s are the fake's own counters (``/_fake/stats``).

``bench/run.py --cases 9`` runs this as case 9 (servers from its snapshot); alone it runs
the checkout's package. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HOST = "127.0.0.1"
SYNTHETIC_MIN, SYNTHETIC_MAX = 1_000_000, 9_999_999
ZIPF_S = 1.1
# share of each kind of bot request (users, headshots, presence, usernames)
KINDS = (("user", 0.40), ("headshot", 0.25), ("presence", 0.20), ("username", 0.15))
FRONTS = ("none", "nginx", "bloxproxy")
# bloxproxy's targets (the issue), checked on the rows of the first --limits value
TARGET_ANSWERED, TARGET_429_SHARE, TARGET_PER_CALL = 0.99, 0.01, 4.0


# -- the workload ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Req:
    """One bot request and what a direct, unlimited call answers."""

    kind: str
    method: str
    service: str
    path: str  # without the service, e.g. /v1/users/1234567
    query: tuple[tuple[str, str], ...]
    body: bytes | None
    clean: str | None  # the clean-route URL when the request goes to bloxproxy's clean route
    uid: int
    status: int = 0  # expected
    expected: Any = None  # expected JSON

    @property
    def url(self) -> str:
        qs = "&".join(f"{k}={v}" for k, v in self.query)
        return f"/{self.service}{self.path}" + (f"?{qs}" if qs else "")


def _compact(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _req(kind: str, uid: int, clean: bool) -> Req:
    """The request a bot library sends for one lookup (and its clean-route twin)."""
    if kind == "user":
        method, service, path, query, body = "GET", "users", f"/v1/users/{uid}", (), None
        twin = f"/v1/users/{uid}"
    elif kind == "headshot":
        method, service, path, body = "GET", "thumbnails", "/v1/users/avatar-headshot", None
        query = (("userIds", str(uid)), ("size", "150x150"), ("format", "Png"))
        query += (("isCircular", "false"),)
        twin = f"/v1/thumbnails/users/headshots?ids={uid}&size=150x150"
    elif kind == "presence":
        method, service, path, query = "POST", "presence", "/v1/presence/users", ()
        body = _compact({"userIds": [uid]})
        twin = f"/v1/presence?ids={uid}"
    else:
        method, service, path, query = "POST", "users", "/v1/usernames/users", ()
        body = _compact({"usernames": [f"User{uid}"], "excludeBannedUsers": False})
        twin = f"/v1/users/by-username/User{uid}"
    return Req(kind, method, service, path, query, body, twin if clean else None, uid)


def workload(
    n: int, users: int, seed: int, clean_share: float = 0.0, missing_share: float = 0.01
) -> list[Req]:
    """``n`` deterministic bot requests: Zipf(1.1) over ``users`` synthetic user ids; a
    ``missing_share`` of lookups for ids that do not exist; ``clean_share`` of the requests
    marked for bloxproxy's clean routes (the other front ends send their passthrough twin)."""
    rng = random.Random(seed)
    population = [
        SYNTHETIC_MIN + x for x in rng.sample(range(SYNTHETIC_MAX - SYNTHETIC_MIN), users)
    ]
    weights = [k**-ZIPF_S for k in range(1, users + 1)]
    picks = rng.choices(population, weights=weights, k=n)
    kinds = rng.choices([k for k, _ in KINDS], weights=[w for _, w in KINDS], k=n)
    out = []
    for uid, kind in zip(picks, kinds, strict=True):
        if rng.random() < missing_share:
            uid = SYNTHETIC_MAX + 1 + rng.randrange(100)  # no such user
        out.append(_req(kind, uid, rng.random() < clean_share))
    return out


def with_expected(reqs: Sequence[Req], src: Path) -> list[Req]:
    """The requests with the answers the fake computes for them in-process."""
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    import orjson

    from bloxproxy.fake import FakeRoblox, answer

    state = FakeRoblox()
    memo: dict[tuple[str, str, bytes | None], tuple[int, Any]] = {}
    out = []
    for r in reqs:
        key = (r.method, r.url, r.body)
        if key not in memo:
            reply = answer(state, r.method, r.service, r.path, r.query, r.body or b"")
            memo[key] = (reply.status, orjson.loads(reply.body))
        status, body = memo[key]
        out.append(dataclasses.replace(r, status=status, expected=body))
    return out


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def _keys(obj: Any, names: Sequence[str]) -> dict[str, Any]:
    return {_snake(k): obj.get(k) for k in names}


def clean_answered(r: Req, status: int, body: Any) -> bool:
    """Whether a clean route's answer says what the direct upstream call does (the fields a
    bot reads, in the clean routes' snake_case)."""
    exp = r.expected
    if r.kind == "user":
        if r.status == 404:
            return status == 404
        want = _keys(exp, ("id", "name", "displayName", "isBanned"))
        return status == 200 and {k: body.get(k) for k in want} == want
    if r.kind == "username":
        if not exp["data"]:
            return status == 404
        want = _keys(exp["data"][0], ("id", "name", "displayName"))
        return status == 200 and {k: body.get(k) for k in want} == want
    items = exp["data"] if r.kind == "headshot" else exp["userPresences"]
    names = (
        ("targetId", "state", "imageUrl")
        if r.kind == "headshot"
        else ("userId", "userPresenceType", "lastLocation")
    )
    want_list = [_keys(item, names) for item in items]
    if status != 200 or not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return False
    got = body["data"]
    if len(got) != len(want_list):
        return False
    return all({k: g.get(k) for k in w} == w for g, w in zip(got, want_list, strict=True))


# -- processes ---------------------------------------------------------------------------


class Server:
    """A server subprocess in its own process group, logging to a file, always stopped."""

    def __init__(
        self, name: str, argv: Sequence[str], logdir: Path, env: dict[str, str], cwd: Path
    ) -> None:
        self.name, self.argv, self.env, self.cwd = name, list(argv), env, cwd
        self.log = logdir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    def wait_ready(self, port: int, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is None or self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited while starting:\n{self.tail()}")
            with contextlib.suppress(OSError):
                if http("GET", port, path, timeout=2)[0] < 300:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready on port {port}:\n{self.tail()}")

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_bytes()[-2000:].decode(errors="replace")
        return ""

    def stop(self) -> None:
        p, self.popen = self.popen, None
        if p is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http(
    method: str, port: int, path: str, body: bytes | None = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://{HOST}:{port}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def child_env(src: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOXPROXY_")}
    env["PYTHONPATH"] = str(src)
    env.update(extra or {})
    return env


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    proxy_cache_path {prefix}/cache levels=1:2 keys_zone=roblox:16m max_size=256m
                     inactive=10m use_temp_path=off;
    upstream roblox {{ server {upstream}; keepalive 64; }}
    server {{
        listen {host}:{port};
        location = /_nginx_ready {{ return 204; }}
        location / {{
            proxy_pass http://roblox;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache roblox;
            proxy_cache_methods GET HEAD POST;
            # POST reads (presence, usernames) differ only by their body
            client_body_buffer_size 64k;
            proxy_cache_key "$request_method $request_uri $request_body";
            proxy_cache_valid 200 404 30s;
            proxy_cache_lock on;
            proxy_cache_use_stale error timeout updating http_429 http_500 http_502
                                  http_503 http_504;
            proxy_ignore_headers Cache-Control Expires Set-Cookie;
        }}
    }}
}}
"""


def start_nginx(binary: str, workdir: Path, upstream_port: int, logdir: Path) -> tuple[Server, int]:
    prefix = workdir / f"nginx-{upstream_port}"
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir(parents=True)
    port = free_port()
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach the temp dir
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            user=user, prefix=prefix, upstream=f"{HOST}:{upstream_port}", host=HOST, port=port
        )
    )
    server = Server(
        f"nginx-{port}",
        [binary, "-p", str(prefix), "-c", str(conf)],
        logdir,
        dict(os.environ),
        prefix,
    ).start()
    server.wait_ready(port, "/_nginx_ready")
    return server, port


# -- the load ----------------------------------------------------------------------------


@dataclass
class Outcome:
    answered: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0


async def drive(
    port: int, reqs: Sequence[Req], clients: int, request_timeout: float, use_clean: bool
) -> Outcome:
    """Send ``reqs`` from ``clients`` concurrent clients (request i goes to client i mod N;
    each client waits for an answer before its next request) and score every answer."""
    import aiohttp
    import orjson

    out = Outcome()
    base = f"http://{HOST}:{port}"
    json_ct = {"Content-Type": "application/json"}

    def note(key: str) -> None:
        out.by_status[key] = out.by_status.get(key, 0) + 1

    async def client(mine: Sequence[Req], gate: asyncio.Event) -> None:
        connector = aiohttp.TCPConnector(limit=4)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=request_timeout)
        ) as session:
            await gate.wait()
            for r in mine:
                clean = use_clean and r.clean is not None
                url = base + (r.clean if clean and r.clean else r.url)
                method = "GET" if clean else r.method
                t0 = time.perf_counter()
                try:
                    async with session.request(
                        method,
                        url,
                        data=None if clean else r.body,
                        headers=json_ct if r.body is not None and not clean else None,
                    ) as resp:
                        raw = await resp.read()
                        status = resp.status
                except (TimeoutError, aiohttp.ClientError) as exc:
                    out.latencies.append(time.perf_counter() - t0)
                    note("timeout" if isinstance(exc, TimeoutError) else "error")
                    continue
                out.latencies.append(time.perf_counter() - t0)
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    body = None
                if clean:
                    ok = clean_answered(r, status, body)
                else:
                    ok = status == r.status and body == r.expected
                if ok:
                    out.answered += 1
                note(str(status) if ok or status != r.status else f"{status} wrong body")

    gate = asyncio.Event()
    tasks = [asyncio.create_task(client(reqs[i::clients], gate)) for i in range(clients)]
    await asyncio.sleep(0.2)  # every session built before the clock starts
    t0 = time.perf_counter()
    gate.set()
    await asyncio.gather(*tasks)
    out.wall = time.perf_counter() - t0
    return out


def percentile(xs: Sequence[float], q: float) -> float:
    if not xs:
        return float("nan")
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# -- one run -----------------------------------------------------------------------------


@dataclass
class Options:
    limits: list[float]
    fronts: list[str]
    requests: int = 3000
    users: int = 20_000
    clients: int = 32
    seed: int = 20261204
    clean_share: float = 0.0
    missing_share: float = 0.01
    fake_latency: float = 0.02
    timeout: float = 10.0
    runs: int = 1
    wall_target: float = 48.0
    src: Path = ROOT
    logdir: Path | None = None


def fake_server(port: int, latency: float, limit: float, logdir: Path, src: Path) -> Server:
    """The bundled fake on ``port`` (not started): ``latency`` s per answer, ``limit``
    requests/s per client IP (legacy 429s, no ``Retry-After``)."""
    argv = [sys.executable, "-m", "bloxproxy.fake", "--host", HOST, "--port", str(port)]
    argv += ["--latency", str(latency), "--ip-limit", f"{limit:g}/s"]
    return Server(f"fake-{port}", argv, logdir, child_env(src), src)


def proxy_argv(src: Path, port: int) -> list[str]:
    """``bloxproxy serve`` with ``src``'s shipped config.yaml on ``port``."""
    argv = [sys.executable, "-m", "bloxproxy", "serve", "--config", str(src / "config.yaml")]
    return [*argv, "--host", HOST, "--port", str(port)]


def one_run(
    opts: Options, front: str, limit: float, reqs: Sequence[Req], workdir: Path, nginx: str | None
) -> dict[str, Any]:
    logdir = opts.logdir or workdir
    fport = free_port()
    fake = fake_server(fport, opts.fake_latency, limit, logdir, opts.src)
    front_server: Server | None = None
    try:
        fake.start().wait_ready(fport, "/_fake/stats")
        port = fport
        if front == "nginx":
            assert nginx is not None
            front_server, port = start_nginx(nginx, workdir, fport, logdir)
        elif front == "bloxproxy":
            port = free_port()
            argv = proxy_argv(opts.src, port)
            env = child_env(
                opts.src, {"BLOXPROXY_UPSTREAM_BASE_URL": f"http://{HOST}:{fport}/{{service}}"}
            )
            front_server = Server(f"bloxproxy-{port}", argv, logdir, env, opts.src).start()
            front_server.wait_ready(port, "/_bloxproxy/healthz")
        http("POST", fport, "/_fake/reset", b"{}")  # zero the counters, fill the buckets
        outcome = asyncio.run(drive(port, reqs, opts.clients, opts.timeout, front == "bloxproxy"))
        stats = json.loads(http("GET", fport, "/_fake/stats")[1])
    finally:
        if front_server is not None:
            front_server.stop()
        fake.stop()
    calls = int(stats["total"])
    upstream_429 = int(stats["statuses"].get("429", 0))
    n = len(reqs)
    lat = outcome.latencies
    return {
        "front": front,
        "limit_per_s": limit,
        "requests": n,
        "answered": outcome.answered,
        "answered_share": outcome.answered / n,
        "upstream_calls": calls,
        "upstream_429": upstream_429,
        "upstream_429_share": upstream_429 / calls if calls else 0.0,
        "answers_per_upstream_call": outcome.answered / calls if calls else float("inf"),
        "wall_s": outcome.wall,
        "p50_ms": 1000 * percentile(lat, 0.50),
        "p99_ms": 1000 * percentile(lat, 0.99),
        "mean_ms": 1000 * statistics.fmean(lat) if lat else float("nan"),
        "client_statuses": dict(sorted(outcome.by_status.items())),
        "fake_statuses": stats["statuses"],
        "upstream_calls_by_endpoint": by_endpoint(stats["counts"]),
    }


def by_endpoint(counts: dict[str, int]) -> dict[str, int]:
    """The fake's per-path counters summed per endpoint (``GET users /v1/users/{id}``)."""
    out: dict[str, int] = {}
    for key, n in counts.items():
        method, service, path = key.split(" ", 2)
        shape = "/".join("{id}" if seg.isdigit() else seg for seg in path.split("/"))
        name = f"{method} {service} {shape}"
        out[name] = out.get(name, 0) + n
    return dict(sorted(out.items()))


def run(opts: Options, say: Any = print) -> dict[str, Any]:
    """Every front end at every limit (``opts.runs`` times); the results and table rows."""
    reqs = with_expected(
        workload(opts.requests, opts.users, opts.seed, opts.clean_share, opts.missing_share),
        opts.src,
    )
    digest = hashlib.sha256(
        "\n".join(f"{r.method} {r.url} {r.body!r} {r.clean}" for r in reqs).encode()
    ).hexdigest()
    distinct = len({(r.method, r.url, r.body) for r in reqs})
    nginx = find_nginx()
    fronts = [f for f in opts.fronts if f != "nginx" or nginx is not None]
    if "nginx" in opts.fronts and nginx is None:
        say("  nginx is not installed (apt-get install -y nginx): its rows are skipped")
    nginx_version = None
    if nginx is not None:
        done = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
        nginx_version = (done.stderr or done.stdout).strip()
    say(
        f"  {len(reqs):,} requests ({distinct:,} distinct upstream requests), "
        f"{opts.users:,} users Zipf({ZIPF_S}), {opts.clients} clients, fake latency "
        f"{opts.fake_latency * 1000:.0f} ms; limits {', '.join(f'{x:g}/s' for x in opts.limits)}"
        f" per client IP"
    )
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bloxproxy-economy-") as tmp:
        for limit in opts.limits:
            for front in fronts:
                for i in range(opts.runs):
                    r = one_run(opts, front, limit, reqs, Path(tmp), nginx)
                    r["run"] = i + 1
                    results.append(r)
                    say(
                        f"  {front:9} {limit:>4g}/s  answered {r['answered_share']:6.1%}  "
                        f"upstream calls {r['upstream_calls']:5,}  429s {r['upstream_429']:5,}  "
                        f"answers/call {r['answers_per_upstream_call']:6.2f}  "
                        f"wall {r['wall_s']:6.1f} s  p50 {r['p50_ms']:7.1f} ms  "
                        f"p99 {r['p99_ms']:7.1f} ms  {r['client_statuses']}"
                    )
    return {
        "workload": {
            "requests": opts.requests,
            "users": opts.users,
            "zipf_s": ZIPF_S,
            "clients": opts.clients,
            "seed": opts.seed,
            "kinds": dict(KINDS),
            "clean_share": opts.clean_share,
            "missing_share": opts.missing_share,
            "distinct_upstream_requests": distinct,
            "sequence_sha256": digest,
            "timeout_s": opts.timeout,
        },
        "fake": {
            "latency_s": opts.fake_latency,
            "ip_limits_per_s": opts.limits,
            "burst": "the rate per second",
        },
        "nginx": nginx_version,
        "targets": {
            "answered": TARGET_ANSWERED,
            "upstream_429_share": TARGET_429_SHARE,
            "answers_per_upstream_call": TARGET_PER_CALL,
            "wall_s": opts.wall_target,
            "checked_at_limit": opts.limits[0],
        },
        "results": results,
        "rows": rows(results, opts),
    }


def rows(results: Sequence[dict[str, Any]], opts: Options) -> list[dict[str, Any]]:
    """Table rows (``bench/run.py`` turns them into its own): one per front end and limit
    (median over runs), with bloxproxy's verdicts at the first limit."""
    out = []
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["front"], r["limit_per_s"]), []).append(r)
    for (front, limit), rs in groups.items():

        def m(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return statistics.median(r[key] for r in rs)

        text = (
            f"{m('answered_share'):.1%} | {m('upstream_calls'):,.0f} | "
            f"{m('upstream_429'):,.0f} | {m('answers_per_upstream_call'):.2f} | "
            f"{m('wall_s'):.1f} s | {m('p50_ms'):.0f} / {m('p99_ms'):.0f} ms"
        )
        checked = front == "bloxproxy" and limit == opts.limits[0]
        verdict = None
        target = ""
        if checked:
            verdict = (
                m("answered_share") >= TARGET_ANSWERED
                and m("upstream_429_share") <= TARGET_429_SHARE
                and m("answers_per_upstream_call") >= TARGET_PER_CALL
                and m("wall_s") <= opts.wall_target
            )
            target = f"≥ 99% | 429s ≤ 1% of calls | ≥ 4/call | ≤ {opts.wall_target:g} s"
        out.append(
            {
                "what": f"[{front}, {limit:g}/s] answered | calls | 429s | answers/call | wall | "
                "p50 / p99",
                "values": [m("answered_share")],
                "text": text,
                "target": target,
                "ok": verdict,
            }
        )
    return out


def table(result: dict[str, Any]) -> str:
    head = (
        "front",
        "limit",
        "answered",
        "upstream calls",
        "429s",
        "answers/call",
        "wall s",
        "p50 ms",
        "p99 ms",
    )
    lines = [head]
    for r in result["results"]:
        lines.append(
            (
                r["front"],
                f"{r['limit_per_s']:g}/s",
                f"{r['answered_share']:.1%}",
                f"{r['upstream_calls']:,}",
                f"{r['upstream_429']:,}",
                f"{r['answers_per_upstream_call']:.2f}",
                f"{r['wall_s']:.1f}",
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    text = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limits", default="40,80,20", help="fake's limits per client IP, per s")
    p.add_argument("--fronts", default=",".join(FRONTS), help="none,nginx,bloxproxy")
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seed", type=int, default=20261204)
    p.add_argument(
        "--clean-share",
        type=float,
        default=0.0,
        help="share of requests bloxproxy gets on its clean routes (0-1)",
    )
    p.add_argument(
        "--missing-share",
        type=float,
        default=0.01,
        help="share of lookups for users that do not exist",
    )
    p.add_argument("--fake-latency", type=float, default=0.02, help="seconds per fake answer")
    p.add_argument("--timeout", type=float, default=10.0, help="client timeout per request, s")
    p.add_argument("--runs", type=int, default=1, help="runs per front end and limit")
    p.add_argument(
        "--wall-target",
        type=float,
        default=48.0,
        help="bloxproxy's wall-time target, s (today's 80/s run)",
    )
    p.add_argument("--src", type=Path, default=ROOT, help="where the servers import bloxproxy")
    p.add_argument("--logdir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=BENCH / "out" / "economy.json")
    args = p.parse_args(argv)
    fronts = [f.strip() for f in args.fronts.split(",") if f.strip()]
    bad = sorted(set(fronts) - set(FRONTS))
    if bad:
        p.error(f"--fronts: unknown {bad}; choose from {', '.join(FRONTS)}")
    args.fronts = fronts
    try:
        args.limits = [float(x) for x in args.limits.split(",") if x.strip()]
    except ValueError:
        p.error(f"--limits: expected numbers like 40,80,20, got {args.limits!r}")
    if not args.limits or min(args.limits) <= 0:
        p.error("--limits: expected positive numbers")
    return args


def main(
    argv: Sequence[str] | None = None,
    *,
    src: Path | None = None,
    logdir: Path | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Run the benchmark; print a table; write the JSON to ``--out`` when ``write``.
    ``bench/run.py`` passes its snapshot as ``src`` and its log directory."""
    args = parse(argv)
    opts = Options(
        limits=args.limits,
        fronts=args.fronts,
        requests=args.requests,
        users=args.users,
        clients=args.clients,
        seed=args.seed,
        clean_share=args.clean_share,
        missing_share=args.missing_share,
        fake_latency=args.fake_latency,
        timeout=args.timeout,
        runs=args.runs,
        wall_target=args.wall_target,
        src=src or args.src,
        logdir=logdir or args.logdir,
    )
    started = time.monotonic()
    result = run(opts, lambda msg: print(msg, flush=True))
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    print("\n" + table(result), flush=True)
    if write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"results: {args.out}", flush=True)
    return result


if __name__ == "__main__":
    main()
