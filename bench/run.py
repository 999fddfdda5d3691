# ruff: noqa: RUF001, RUF002  (the table uses en dashes and times signs on purpose)
"""bloxproxy benchmarks: one command that starts everything, drives load, stops everything.

    .venv/bin/python bench/run.py [--quick] [--cases 1,3] [--runs 3] [--duration 10]
                                  [--out bench/out/results.json] [--keep-logs]

Everything runs on 127.0.0.1: the bundled fake Roblox (``python -m bloxproxy.fake``), the
proxy (``python -m bloxproxy serve --config config.yaml``), the baselines (``bench/bare.py``,
``bench/naive_proxy.py``) and, for case 7, a real ``redis-server`` (found like the tests find
it, ``tests/redis_server.py``). Load comes from ``wrk`` (``apt-get install -y wrk``), one wrk
thread. Each server is its own process group, started on a free port, polled until ready and
always stopped (SIGTERM, then SIGKILL to the group). Every case is run ``--runs`` times; the
sides a ratio compares are measured alternately in the same round (A, B, A, B, ...), and a
ratio is computed per round, so drift hits both sides. The table shows the median over the
rounds and the spread (min–max); the verdict compares the median with the target.

See bench/README.md for what each case measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import http.client
import importlib.metadata
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LUA = BENCH / "lua"
PY = sys.executable
HOST = "127.0.0.1"

# What the hit-path cases ask for: a clean route and a passthrough route, different users
# so each has an entry of its own (the passthrough one with the passthrough TTL, 30 s).
CLEAN_HIT = "/v1/users/156"
PASS_HIT = "/users/v1/users/1"
# Raised upstream limit for cases whose misses measure the proxy, not the limiter (the
# default is 20/s per service); the table and the JSON say where it was used.
FAST_LIMIT = {"BLOXPROXY_LIMITS_UPSTREAM_RATE": "1000000"}
SYNTHETIC_MIN, SYNTHETIC_MAX = 1_000_000, 9_999_999


# -- processes -----------------------------------------------------------------------------


class BenchError(RuntimeError):
    pass


_LIVE: list[Proc] = []


class Proc:
    """A server subprocess in a process group of its own, logging to a file."""

    def __init__(
        self, name: str, argv: Sequence[str], logdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = logdir / f"{name}.log"
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> Proc:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=SRC,
                start_new_session=True,
            )
        _LIVE.append(self)
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        p = self.popen
        if p is None:
            return
        pgid = p.pid  # start_new_session: the group id is the leader's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        # the leader is gone (or stuck): make sure nothing of the group stays behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)
        self.popen = None
        with contextlib.suppress(ValueError):
            _LIVE.remove(self)


def stop_all() -> None:
    for proc in list(reversed(_LIVE)):
        proc.stop()


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for p in reversed(procs):
            p.stop()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# Where the servers import bloxproxy from: a snapshot taken at start (see snapshot()).
SRC: Path = ROOT


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server: ours without any BLOXPROXY_* setting, plus ``extra``,
    importing bloxproxy from the snapshot."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOXPROXY_")}
    env["PYTHONPATH"] = str(SRC)
    env.update(extra or {})
    return env


def snapshot(dest: Path, attempts: int = 6) -> dict[str, Any]:
    """Copy the package, the shipped rules and config.yaml to ``dest`` and run every server
    from there, so one bench run measures one tree even while the checkout is being edited.
    Retries while the copy does not import (a file caught mid-edit). Returns its digest."""
    global SRC
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for attempt in range(attempts):
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(ROOT / "bloxproxy", dest / "bloxproxy", ignore=ignore)
        shutil.copytree(ROOT / "rules", dest / "rules", ignore=ignore)
        shutil.copy2(ROOT / "config.yaml", dest / "config.yaml")
        check = subprocess.run(
            [PY, "-c", "import bloxproxy.app, bloxproxy.cli, bloxproxy.fake, bloxproxy.serve"],
            cwd=dest,
            env=dict(os.environ, PYTHONPATH=str(dest)),
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode == 0:
            break
        print(
            f"snapshot of bloxproxy does not import (attempt {attempt + 1}):\n"
            f"{check.stderr[-600:]}",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(10)
    else:
        raise BenchError("the bloxproxy package in the checkout does not import")
    digest = hashlib.sha256()
    files = sorted(p for p in dest.rglob("*") if p.is_file())
    for f in files:
        digest.update(str(f.relative_to(dest)).encode() + b"\0" + f.read_bytes() + b"\0")
    SRC = dest
    return {
        "sha256": digest.hexdigest(),
        "files": len(files),
        "note": "servers ran from a copy of bloxproxy/, rules/ and config.yaml taken at "
        "start; sha256 over their paths and contents",
    }


# -- HTTP and /proc helpers ---------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def call(
    method: str, port: int, path: str, body: bytes | None = None, timeout: float = 10.0
) -> Answer:
    """One request on a new connection (so SO_REUSEPORT spreads them over workers)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def wait_ready(proc: Proc, port: int, path: str, timeout: float = 30.0, listeners: int = 1) -> None:
    """Poll ``GET path`` until 200 and ``listeners`` sockets listen on the port."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited while starting:\n{proc.log_tail()}")
        try:
            if (
                call("GET", port, path, timeout=2).status == 200
                and count_listeners(port) >= listeners
            ):
                return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise BenchError(
        f"{proc.name} not ready on port {port} after {timeout:g}s ({last}):\n{proc.log_tail()}"
    )


def count_listeners(port: int) -> int:
    """LISTEN sockets on 127.0.0.1:port (one per SO_REUSEPORT process)."""
    want = f":{port:04X}"
    n = 0
    with contextlib.suppress(OSError), open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[1].endswith(want) and parts[3] == "0A":
                n += 1
    return n


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def uses_uvloop(pid: int) -> bool:
    """Whether the process (or a worker under it) has uvloop's extension mapped."""
    for p in descendants(pid):
        with contextlib.suppress(OSError):
            if "uvloop" in Path(f"/proc/{p}/maps").read_text():
                return True
    return False


def proc_status(pid: int, key: str) -> int:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no {key} for pid {pid}")


CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def cpu_busy() -> float:
    """CPU seconds the machine's processes used so far (all cores, /proc/stat): user, nice,
    system, plus steal (another guest on the host). Not irq/softirq: loopback networking runs
    there, so our own load would count as someone else's."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (f[0] + f[1] + f[2] + (f[7] if len(f) > 7 else 0)) / CLK_TCK


def own_cpu() -> float:
    """CPU seconds used by this script, its reaped children (wrk) and its live descendants
    (the servers and their workers)."""
    total = sum(
        resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
        for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    for pid in descendants(os.getpid())[1:]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / CLK_TCK
    return total


class CpuWatch:
    """CPU used by processes that are not ours (other jobs on the machine), in cores."""

    def __enter__(self) -> CpuWatch:
        self.t0, self.busy0, self.own0 = time.monotonic(), cpu_busy(), own_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        secs = max(1e-6, time.monotonic() - self.t0)
        self.foreign = max(0.0, (cpu_busy() - self.busy0) - (own_cpu() - self.own0)) / secs


def wait_quiet(limit: float, threshold: float = 0.25, window: float = 1.0) -> tuple[float, float]:
    """Wait (at most ``limit`` s) until other processes use < ``threshold`` cores over a
    ``window``; (seconds waited, foreign cores in the last window)."""
    t0 = time.monotonic()
    while True:
        with CpuWatch() as w:
            time.sleep(window)
        waited = time.monotonic() - t0
        if w.foreign < threshold or waited >= limit:
            return waited, w.foreign


def metric(port: int, name: str) -> float:
    text = call("GET", port, "/_bloxproxy/metrics").body.decode()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    if m is None:
        raise BenchError(f"metric {name} not found")
    return float(m.group(1))


# -- servers ------------------------------------------------------------------------------


class Fake:
    def __init__(self, ctx: Ctx, latency: float = 0.0) -> None:
        self.port = free_port()
        self.proc = Proc(
            f"fake-{self.port}",
            [
                PY,
                "-m",
                "bloxproxy.fake",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--latency",
                str(latency),
            ],
            ctx.logdir,
            child_env(),
        )

    def start(self) -> Fake:
        self.proc.start()
        wait_ready(self.proc, self.port, "/_fake/stats")
        return self

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/{{service}}"

    def total(self) -> int:
        return int(json.loads(call("GET", self.port, "/_fake/stats", timeout=60).body)["total"])

    def reset(self) -> None:
        call("POST", self.port, "/_fake/reset", b"{}")

    def latency(self, seconds: float) -> None:
        call("POST", self.port, "/_fake/latency", json.dumps({"seconds": seconds}).encode())


def proxy(
    ctx: Ctx, fake: Fake, env: dict[str, str] | None = None, workers: int = 1, name: str = "proxy"
) -> tuple[Proc, int]:
    port = free_port()
    argv = [
        PY,
        "-m",
        "bloxproxy",
        "serve",
        "--config",
        str(SRC / "config.yaml"),
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    if workers > 1:
        argv += ["--workers", str(workers)]
    e = child_env({"BLOXPROXY_UPSTREAM_BASE_URL": fake.base_url, **(env or {})})
    proc = Proc(f"{name}-{port}", argv, ctx.logdir, e).start()
    wait_ready(proc, port, "/_bloxproxy/healthz", listeners=workers)
    return proc, port


def bare(
    ctx: Ctx, bodies: dict[str, bytes], workers: int = 1, raw: bool = False
) -> tuple[Proc, int]:
    port = free_port()
    argv = [PY, str(BENCH / "bare.py"), "--port", str(port), "--workers", str(workers)]
    if raw:
        argv.append("--raw")
    for i, (path, body) in enumerate(bodies.items()):
        f = ctx.workdir / f"bare-body-{port}-{i}"
        f.write_bytes(body)
        argv += ["--body", f"{path}={f}"]
    proc = Proc(f"bare-{port}", argv, ctx.logdir, child_env()).start()
    wait_ready(proc, port, next(iter(bodies)), listeners=workers)
    return proc, port


def naive(ctx: Ctx, fake: Fake) -> tuple[Proc, int]:
    port = free_port()
    proc = Proc(
        f"naive-{port}",
        [
            PY,
            str(BENCH / "naive_proxy.py"),
            "--port",
            str(port),
            "--upstream",
            f"http://{HOST}:{fake.port}",
        ],
        ctx.logdir,
        child_env(),
    ).start()
    wait_ready(proc, port, "/users/v1/users/1")
    return proc, port


# -- wrk ----------------------------------------------------------------------------------


def wrk(
    ctx: Ctx,
    port: int,
    path: str,
    *,
    conns: int = 64,
    duration: float | None = None,
    script: str = "static.lua",
    args: Sequence[str] = (),
    max_seconds: float = 0,
    done_file: Path | None = None,
) -> dict[str, Any]:
    """Run wrk (one thread) and return its BENCH_JSON numbers plus rps and ms latencies."""
    seconds = max_seconds or (duration if duration is not None else ctx.duration)
    cmd = [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{round(seconds)}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA / script),
        f"http://{HOST}:{port}{path}",
    ]
    if args:
        cmd += ["--", *args]
    env = dict(os.environ, BENCH_LUA_DIR=str(LUA))
    if done_file is not None:
        done_file.unlink(missing_ok=True)
    waited, before = wait_quiet(ctx.quiet_wait) if ctx.quiet_wait > 0 else (0.0, 0.0)
    with CpuWatch() as watch:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        try:
            if done_file is not None:
                # the script made it when its sequence was answered: stop wrk now
                deadline = time.monotonic() + seconds + 60
                while proc.poll() is None and time.monotonic() < deadline:
                    if done_file.exists():
                        proc.send_signal(signal.SIGINT)
                        break
                    time.sleep(0.005)
            stdout, stderr = proc.communicate(timeout=seconds + 120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    line = next((x for x in stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(
            f"wrk failed ({proc.returncode}): {' '.join(cmd)}\n{stdout[-2000:]}\n{stderr[-2000:]}"
        )
    r: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    secs = r["duration_us"] / 1e6
    r["seconds"] = secs
    r["rps"] = r["requests"] / secs if secs else 0.0
    for k in ("p50", "p90", "p99", "p999"):
        r[f"{k}_ms"] = r[f"{k}_us"] / 1000
    r["errors"] = sum(
        r[k] for k in ("errors_connect", "errors_read", "errors_write", "errors_timeout")
    )
    r["conns"] = conns
    r["cmd"] = " ".join(cmd)
    r["foreign_cpu_cores"] = watch.foreign
    r["quiet_wait_s"] = waited
    r["foreign_cpu_before"] = before
    ctx.foreign.append(watch.foreign)
    return r


def wrk_line(r: dict[str, Any]) -> str:
    extra = f"  other jobs {r['foreign_cpu_cores']:.2f} cores"
    if r["quiet_wait_s"] > 1.5:
        extra += f" (waited {r['quiet_wait_s']:.0f}s for quiet)"
    if r.get("errors") or r.get("errors_status"):
        extra = f"  errors={r['errors']} non2xx={r['errors_status']}"
    return f"{r['rps']:>9,.0f} rps  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms{extra}"


# -- results ------------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    what: str
    values: list[float]
    fmt: str = "{:,.0f}"
    target: str = ""
    ok: bool | None = None
    text: str = ""  # shown instead of the median when the row is several numbers

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def cells(self) -> list[str]:
        if self.text:
            med, spread = self.text, "—"
        else:
            med = self.fmt.format(self.median)
            spread = (
                f"{self.fmt.format(min(self.values))}–{self.fmt.format(max(self.values))}"
                if len(self.values) > 1
                else "—"
            )
        verdict = "—" if self.ok is None else ("✓" if self.ok else "✗")
        return [self.case, self.what, med, spread, self.target or "info", verdict]

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "what": self.what,
            "values": self.values,
            "median": None if self.text else self.median,
            "min": min(self.values) if self.values and not self.text else None,
            "max": max(self.values) if self.values and not self.text else None,
            "text": self.text or None,
            "target": self.target or None,
            "ok": self.ok,
        }


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def table(rows: Sequence[Row]) -> str:
    head = ["case", "what", "median", "spread (min–max)", "target", "verdict"]
    cells = [head] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    out = []
    for i, c in enumerate(cells):
        out.append("  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


@dataclass
class Ctx:
    runs: int
    duration: float
    quick: bool
    workdir: Path
    logdir: Path
    rows: list[Row] = field(default_factory=list)
    cases: dict[str, Any] = field(default_factory=dict)
    uvloop: dict[str, bool] = field(default_factory=dict)
    quiet_wait: float = 10.0
    noisy: float = 0.3
    foreign: list[float] = field(default_factory=list)

    def say(self, msg: str) -> None:
        print(msg, flush=True)


def pct_rows(case: str, label: str, runs: Sequence[dict[str, Any]]) -> Row:
    p50 = [r["p50_ms"] for r in runs]
    p99 = [r["p99_ms"] for r in runs]
    return Row(
        case,
        f"{label} p50 / p99 ms",
        p50 + p99,
        text=f"{med(p50):.2f} / {med(p99):.2f}  ({min(p50):.2f}–{max(p50):.2f} / "
        f"{min(p99):.2f}–{max(p99):.2f})",
    )


# -- case helpers -------------------------------------------------------------------------


def rounds(
    ctx: Ctx, sides: Sequence[str], measure: Callable[[int, str], dict[str, Any]], label: str = ""
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """``ctx.runs`` rounds, each measuring every side once in order (A, B, A, B, ...).

    A round during which other processes on the machine used more than ``ctx.noisy`` cores
    is set aside and measured again (at most ``ctx.runs`` extra rounds); set-aside rounds are
    returned too, for the JSON. If retries run out, a noisy round is kept, flagged."""
    kept: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    discarded: list[dict[str, Any]] = []
    attempts = 0
    while len(kept[sides[0]]) < ctx.runs:
        attempts += 1
        rnd = {side: measure(len(kept[sides[0]]) + 1, side) for side in sides}
        worst = max(r.get("foreign_cpu_cores", 0.0) for r in rnd.values())
        retries_left = 2 * ctx.runs - attempts > ctx.runs - len(kept[sides[0]]) - 1
        if worst > ctx.noisy and retries_left:
            ctx.say(f"  {label}round set aside: other jobs used {worst:.2f} cores; again")
            discarded.append(rnd)
            continue
        for side, r in rnd.items():
            r["noisy"] = worst > ctx.noisy
            kept[side].append(r)
    return kept, discarded


def warm_hit(port: int, path: str, fresh_connections: int = 1) -> Answer:
    """Request ``path`` until the answer is a HIT on ``fresh_connections`` new connections
    in a row (with workers, each has its own L1); the last answer."""
    streak, last = 0, None
    for _ in range(50 + 20 * fresh_connections):
        last = call("GET", port, path)
        if last.status != 200:
            raise BenchError(f"GET {path} -> {last.status}: {last.body[:300]!r}")
        streak = streak + 1 if last.headers.get("x-cache") == "HIT" else 0
        if streak >= fresh_connections:
            return last
        time.sleep(0.02)  # an L2 store is a background task: give it a moment
    raise BenchError(f"GET {path} never became an X-Cache: HIT")


def check_hit(port: int, path: str) -> str:
    """One request before a measured run: its X-Cache (re-warmed if it was not a HIT)."""
    x = call("GET", port, path).headers.get("x-cache", "")
    if x != "HIT":
        warm_hit(port, path)
    return x


# -- case 1 & 2: hit path vs bare aiohttp -------------------------------------------------


def case_hit(ctx: Ctx, workers: int) -> None:
    case = "1" if workers == 1 else "2"
    ctx.say(f"\n== case {case}: hit path, {workers} process(es), default config ==")
    fake = Fake(ctx).start()
    pproc, pport = proxy(ctx, fake, workers=workers)
    with running(fake.proc, pproc):
        fresh = 1 if workers == 1 else 20
        clean = warm_hit(pport, CLEAN_HIT, fresh)
        passed = warm_hit(pport, PASS_HIT, fresh)
        bproc, bport = bare(ctx, {CLEAN_HIT: clean.body, PASS_HIT: passed.body}, workers)
        # A reference, not the baseline: bare.py --raw writes prepared bytes without router
        # or web.Response, the technique of the proxy's fast path.
        rproc, rport = bare(ctx, {CLEAN_HIT: clean.body}, workers, raw=True)
        with running(bproc, rproc):
            ctx.uvloop[f"case{case}_proxy"] = uses_uvloop(pproc.pid)
            ctx.uvloop[f"case{case}_bare"] = uses_uvloop(bproc.pid)
            sides = {
                "bare_clean": (bport, CLEAN_HIT),
                "proxy_clean": (pport, CLEAN_HIT),
                "bare_pass": (bport, PASS_HIT),
                "proxy_pass": (pport, PASS_HIT),
                "raw_clean": (rport, CLEAN_HIT),
            }
            for port, path in sides.values():  # warm-up, not recorded
                wrk(ctx, port, path, duration=2)
            upstream_before = fake.total()

            def measure(i: int, side: str) -> dict[str, Any]:
                port, path = sides[side]
                pre = check_hit(port, path) if side.startswith("proxy") else ""
                r = wrk(ctx, port, path)
                r["pre_x_cache"] = pre
                ctx.say(f"  run {i} {side:12} {wrk_line(r)}")
                return r

            runs, discarded = rounds(ctx, list(sides), measure)
            upstream_calls = fake.total() - upstream_before
    ratios = {
        k: [p["rps"] / b["rps"] for p, b in zip(runs[f"proxy_{k}"], runs[f"bare_{k}"], strict=True)]
        for k in ("clean", "pass")
    }
    label = "1 proc" if workers == 1 else "2 procs"
    rows = [
        Row(
            case, f"bare aiohttp rps ({label}, clean bytes)", [r["rps"] for r in runs["bare_clean"]]
        ),
        Row(case, f"proxy clean hit rps {CLEAN_HIT}", [r["rps"] for r in runs["proxy_clean"]]),
        Row(
            case,
            "clean hit rps / bare",
            ratios["clean"],
            "{:.2f}",
            "≥ 0.80",
            med(ratios["clean"]) >= 0.80,
        ),
        Row(
            case,
            f"bare aiohttp rps ({label}, passthrough bytes)",
            [r["rps"] for r in runs["bare_pass"]],
        ),
        Row(case, f"proxy passthrough hit rps {PASS_HIT}", [r["rps"] for r in runs["proxy_pass"]]),
        Row(
            case,
            "passthrough hit rps / bare",
            ratios["pass"],
            "{:.2f}",
            "≥ 0.80",
            med(ratios["pass"]) >= 0.80,
        ),
        Row(
            case,
            f"reference: bare.py --raw rps ({label}, clean bytes, prepared)",
            [r["rps"] for r in runs["raw_clean"]],
        ),
        Row(
            case,
            "reference: clean hit rps / bare.py --raw",
            [
                p["rps"] / b["rps"]
                for p, b in zip(runs["proxy_clean"], runs["raw_clean"], strict=True)
            ],
            "{:.2f}",
        ),
        pct_rows(case, "bare (clean bytes)", runs["bare_clean"]),
        pct_rows(case, "proxy clean hit", runs["proxy_clean"]),
        pct_rows(case, "bare (passthrough bytes)", runs["bare_pass"]),
        pct_rows(case, "proxy passthrough hit", runs["proxy_pass"]),
    ]
    ctx.rows.extend(rows)
    ctx.cases[case] = {
        "workers": workers,
        "conns": 64,
        "runs": runs,
        "ratios": ratios,
        "discarded_rounds": discarded,
        "upstream_calls_during_runs": upstream_calls,
        "config": "config.yaml as shipped (access log on, to a file; metrics "
        "on), upstream = the fake",
    }


# -- case 3: miss path vs naive proxy -----------------------------------------------------


class Ids:
    """Never-repeating synthetic user ids for the proxy (its cache must never hit)."""

    def __init__(self, start: int) -> None:
        self.next = start

    def advance(self, to: int) -> None:
        self.next = to
        if self.next > SYNTHETIC_MAX - 1_000_000:
            raise BenchError("ran out of unique synthetic user ids; use a shorter --duration")


def case_miss(ctx: Ctx) -> None:
    ctx.say(
        "\n== case 3: miss path (unique keys) vs naive proxy; upstream limit raised to 1e6/s =="
    )
    fake = Fake(ctx).start()
    nproc, nport = naive(ctx, fake)
    pproc, pport = proxy(ctx, fake, FAST_LIMIT)
    ids = Ids(2_000_000)
    with running(fake.proc, nproc, pproc):
        ctx.uvloop["case3_proxy"] = uses_uvloop(pproc.pid)
        ctx.uvloop["case3_naive"] = uses_uvloop(nproc.pid)
        sides = {
            "direct": (fake.port, "/users/v1/users/{id}"),
            "naive": (nport, "/users/v1/users/{id}"),
            "proxy_pass": (pport, "/users/v1/users/{id}"),
            "proxy_clean": (pport, "/v1/users/{id}"),
        }

        def one(side: str, conns: int, duration: float) -> dict[str, Any]:
            port, template = sides[side]
            # the baselines cache nothing, so they may reuse ids; the proxy never may
            start = ids.next if side.startswith("proxy") else SYNTHETIC_MIN
            fake.reset()
            r = wrk(
                ctx,
                port,
                "/",
                conns=conns,
                duration=duration,
                script="unique.lua",
                args=[template, str(start)],
            )
            if side.startswith("proxy"):
                # answered + what was still in flight when wrk stopped, plus a margin
                ids.advance(start + r["requests"] + conns + 100)
            r["upstream_calls"] = fake.total()
            r["first_id"] = start
            return r

        for side in sides:  # warm-up, not recorded
            one(side, 64, 2)
        groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
        discarded: dict[str, list[dict[str, Any]]] = {}
        # One connection at 20 ms (info): the hop's own latency, without the bursts in
        # which wrk's connections fall into step at 8 and 64 (see RESULTS.md).
        for latency, conn_counts in ((0.0, (8, 64)), (0.02, (1, 8, 64))):
            fake.latency(latency)
            for conns in conn_counts:
                g = f"{int(latency * 1000)}ms_c{conns}"

                def measure(i: int, side: str, g: str = g, conns: int = conns) -> dict[str, Any]:
                    r = one(side, conns, ctx.duration)
                    # every answer a miss: one upstream call each, plus at most one per
                    # connection for requests still in flight when wrk stopped
                    r["all_misses"] = r["requests"] <= r["upstream_calls"] <= r["requests"] + conns
                    calls = (
                        f"  upstream calls {r['upstream_calls']:,} for {r['requests']:,} answers"
                        if side.startswith("proxy")
                        else ""
                    )
                    ctx.say(f"  {g:9} run {i} {side:12} {wrk_line(r)}{calls}")
                    return r

                groups[g], discarded[g] = rounds(ctx, list(sides), measure, f"{g} ")
    for g, runs in groups.items():

        def ratio(side: str, runs: dict[str, list[dict[str, Any]]] = runs) -> list[float]:
            return [a["rps"] / b["rps"] for a, b in zip(runs[side], runs["naive"], strict=True)]

        def added(side: str, p: str, runs: dict[str, list[dict[str, Any]]] = runs) -> list[float]:
            return [a[p] - d[p] for a, d in zip(runs[side], runs["direct"], strict=True)]

        rps = {s: med([r["rps"] for r in runs[s]]) for s in sides}
        c64 = g.endswith("c64")
        lat = g.split("_")[0]
        tag = f"[fake {lat}, c{g.split('_c')[1]}]"
        pass50, pass99 = added("proxy_pass", "p50_ms"), added("proxy_pass", "p99_ms")
        naive50, naive99 = added("naive", "p50_ms"), added("naive", "p99_ms")
        clean50, clean99 = added("proxy_clean", "p50_ms"), added("proxy_clean", "p99_ms")
        if g.endswith("_c1"):  # info only: the targets are about 8 and 64 connections
            ctx.rows += [
                Row(
                    "3",
                    f"{tag} rps direct | naive | passthrough | clean",
                    [],
                    text=" | ".join(f"{rps[s]:,.0f}" for s in sides),
                ),
                Row(
                    "3",
                    f"{tag} added p50 / p99 ms: naive | passthrough | clean",
                    naive50 + naive99 + pass50 + pass99 + clean50 + clean99,
                    text=f"{med(naive50):.2f} / {med(naive99):.2f} | "
                    f"{med(pass50):.2f} / {med(pass99):.2f} | "
                    f"{med(clean50):.2f} / {med(clean99):.2f}",
                ),
            ]
            continue
        rows = [
            Row(
                "3",
                f"{tag} rps direct | naive | passthrough | clean",
                [],
                text=" | ".join(f"{rps[s]:,.0f}" for s in sides),
            ),
            Row(
                "3",
                f"{tag} passthrough miss rps / naive",
                ratio("proxy_pass"),
                "{:.2f}",
                "≥ 0.90",
                med(ratio("proxy_pass")) >= 0.90,
            ),
            Row(
                "3",
                f"{tag} clean miss rps / naive",
                ratio("proxy_clean"),
                "{:.2f}",
                "≥ 0.90",
                med(ratio("proxy_clean")) >= 0.90,
            ),
        ]
        if c64:
            rows += [
                Row(
                    "3",
                    f"{tag} passthrough added p50 ms (vs direct)",
                    pass50,
                    "{:.2f}",
                    f"≤ naive {med(naive50):.2f}",
                    med(pass50) <= med(naive50),
                ),
                Row(
                    "3",
                    f"{tag} passthrough added p99 ms (vs direct)",
                    pass99,
                    "{:.2f}",
                    f"≤ naive {med(naive99):.2f}",
                    med(pass99) <= med(naive99),
                ),
            ]
        else:
            rows += [
                Row(
                    "3",
                    f"{tag} passthrough added p50 ms (vs direct)",
                    pass50,
                    "{:.2f}",
                    "≤ 1.00",
                    med(pass50) <= 1.0,
                ),
                Row("3", f"{tag} passthrough added p99 ms (vs direct)", pass99, "{:.2f}"),
            ]
        rows.append(
            Row(
                "3",
                f"{tag} added p50 / p99 ms: naive | clean",
                naive50 + naive99 + clean50 + clean99,
                text=f"{med(naive50):.2f} / {med(naive99):.2f} | "
                f"{med(clean50):.2f} / {med(clean99):.2f}",
            )
        )
        ctx.rows.extend(rows)
    all_misses = [
        r["all_misses"]
        for runs in groups.values()
        for side in ("proxy_pass", "proxy_clean")
        for r in runs[side]
    ]
    ctx.rows.append(
        Row(
            "3",
            "every proxy answer was a miss (upstream calls = answers, + ≤ conns in flight)",
            [float(sum(all_misses))],
            "{:.0f}",
            f"{len(all_misses)} of {len(all_misses)} runs",
            all(all_misses),
        )
    )
    ctx.cases["3"] = {
        "groups": groups,
        "discarded_rounds": discarded,
        "upstream_limit": FAST_LIMIT,
        "note": "direct = wrk straight at the fake; added = side − direct, per round",
    }


# -- case 4: coalescing -------------------------------------------------------------------


async def storm(port: int, path: str, n: int) -> dict[str, Any]:
    import aiohttp

    counts: dict[str, int] = {}
    statuses: dict[str, int] = {}
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        gate = asyncio.Event()

        async def one() -> None:
            await gate.wait()
            async with session.get(f"http://{HOST}:{port}{path}") as resp:
                await resp.read()
                x = resp.headers.get("X-Cache", "none")
                counts[x] = counts.get(x, 0) + 1
                statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.perf_counter() - t0
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    return {
        "x_cache": counts,
        "statuses": statuses,
        "errors": len(errors),
        "error_samples": errors[:3],
        "seconds": elapsed,
    }


def case_coalesce(ctx: Ctx) -> None:
    n = 1000
    ctx.say(
        f"\n== case 4: coalescing, {n} concurrent identical requests on a cold key, "
        "fake latency 50 ms, default config =="
    )
    fake = Fake(ctx, latency=0.05).start()
    pproc, pport = proxy(ctx, fake)
    runs: dict[str, list[dict[str, Any]]] = {"clean": [], "pass": []}
    with running(fake.proc, pproc):
        ctx.uvloop["case4_proxy"] = uses_uvloop(pproc.pid)
        for i in range(ctx.runs):
            for kind, template in (("clean", "/v1/users/{}"), ("pass", "/users/v1/users/{}")):
                uid = 3_000_000 + 10 * i + (0 if kind == "clean" else 1)
                path = template.format(uid)
                fake.reset()
                r = asyncio.run(storm(pport, path, n))
                r["upstream_calls"] = fake.total()
                r["path"] = path
                runs[kind].append(r)
                ctx.say(
                    f"  run {i + 1} {kind:5} {path:24} upstream calls {r['upstream_calls']}"
                    f"  X-Cache {r['x_cache']}  statuses {r['statuses']}  "
                    f"errors {r['errors']}  {r['seconds']:.2f}s"
                )
    for kind, label in (("clean", "clean route"), ("pass", "passthrough")):
        calls = [float(r["upstream_calls"]) for r in runs[kind]]
        ok = all(c == 1 for c in calls) and all(
            r["errors"] == 0 and r["statuses"] == {"200": n} for r in runs[kind]
        )
        ctx.rows.append(
            Row(
                "4",
                f"upstream calls for {n} concurrent cold {label} requests",
                calls,
                "{:.0f}",
                "= 1 (every run)",
                ok,
            )
        )
        coalesced = [float(r["x_cache"].get("COALESCED", 0)) for r in runs[kind]]
        ctx.rows.append(Row("4", f"  of which answered COALESCED ({label})", coalesced, "{:.0f}"))
    ctx.cases["4"] = {"requests": n, "fake_latency_s": 0.05, "runs": runs}


# -- case 5: realistic mix ----------------------------------------------------------------


def zipf_sequence(n: int, users: int, seed: int = 20260101) -> tuple[list[str], int]:
    """Deterministic request paths: Zipf(1.1) user popularity; 70 % clean single lookups,
    15 % passthrough single lookups, 15 % clean batches of 2–10 ids. Also the number of
    distinct upstream requests (the fewest upstream calls a perfect cache could make)."""
    rng = random.Random(seed)
    ids = [SYNTHETIC_MIN + x for x in rng.sample(range(SYNTHETIC_MAX - SYNTHETIC_MIN), users)]
    cum: list[float] = []
    total = 0.0
    for k in range(1, users + 1):
        total += k**-1.1
        cum.append(total)

    def pick(k: int = 1) -> list[int]:
        return [ids[i] for i in rng.choices(range(users), cum_weights=cum, k=k)]

    paths: list[str] = []
    keys: set[str] = set()
    for _ in range(n):
        roll = rng.random()
        if roll < 0.70:
            uid = pick()[0]
            paths.append(f"/v1/users/{uid}")
            keys.add(f"user {uid}")
        elif roll < 0.85:
            uid = pick()[0]
            paths.append(f"/users/v1/users/{uid}")
            keys.add(f"user {uid}")  # the same upstream request as the clean route
        else:
            batch: list[int] = []
            want = rng.randint(2, 10)
            while len(batch) < want:
                uid = pick()[0]
                if uid not in batch:
                    batch.append(uid)
            paths.append("/v1/users?ids=" + ",".join(map(str, batch)))
            keys.add("batch " + ",".join(map(str, sorted(batch))))
    return paths, len(keys)


def case_mix(ctx: Ctx) -> None:
    n, users = (20_000, 2_000) if ctx.quick else (100_000, 10_000)
    latency = 0.02
    ctx.say(
        f"\n== case 5: realistic mix, {n:,} requests over {users:,} users, Zipf(1.1), "
        f"fake latency {latency * 1000:.0f} ms, upstream limit raised to 1e6/s, "
        "cold cache each run =="
    )
    paths, distinct = zipf_sequence(n, users)
    seq = ctx.workdir / "zipf.txt"
    seq.write_text("\n".join(paths) + "\n")
    digest = hashlib.sha256(seq.read_bytes()).hexdigest()

    def measure(i: int, _side: str) -> dict[str, Any]:
        fake = Fake(ctx, latency=latency).start()
        pproc, pport = proxy(ctx, fake, FAST_LIMIT)
        with running(fake.proc, pproc):
            ctx.uvloop["case5_proxy"] = uses_uvloop(pproc.pid)
            done = ctx.workdir / "sequence.done"
            r = wrk(
                ctx,
                pport,
                "/",
                conns=64,
                script="sequence.lua",
                args=[str(seq), str(n), str(done)],
                max_seconds=600,
                done_file=done,
            )
            r["upstream_calls"] = fake.total()
        c = r["counts"]
        answered = sum(v for k, v in c.items() if k.startswith("xcache_"))
        if answered != n:
            raise BenchError(f"case 5: {answered} of {n} requests answered")
        r["answered"] = answered
        r["client_rps"] = answered / r["seconds"]
        r["hit_ratio"] = c.get("xcache_HIT", 0) / answered
        r["served_without_upstream"] = (
            c.get("xcache_HIT", 0) + c.get("xcache_COALESCED", 0) + c.get("xcache_STALE", 0)
        ) / answered
        r["upstream_per_1000"] = 1000 * r["upstream_calls"] / answered
        ctx.say(
            f"  run {i} answered {answered:,} in {r['seconds']:.1f}s = "
            f"{r['client_rps']:,.0f} rps, hit ratio {r['hit_ratio']:.3f}, upstream calls "
            f"{r['upstream_calls']:,} ({r['upstream_per_1000']:.1f}/1000), counts {c}, "
            f"other jobs {r['foreign_cpu_cores']:.2f} cores"
        )
        return r

    kept, discarded = rounds(ctx, ["mix"], measure)
    runs = kept["mix"]
    ideal = 1000 * distinct / n
    ctx.rows += [
        Row("5", "client rps (64 conns, cold start)", [r["client_rps"] for r in runs]),
        Row("5", "hit ratio (X-Cache: HIT / answers)", [r["hit_ratio"] for r in runs], "{:.3f}"),
        Row(
            "5",
            "answered without own upstream call (HIT+COALESCED+STALE)",
            [r["served_without_upstream"] for r in runs],
            "{:.3f}",
        ),
        Row(
            "5",
            "upstream calls per 1,000 client requests",
            [r["upstream_per_1000"] for r in runs],
            "{:.1f}",
            f"info; ideal {ideal:.1f}",
        ),
        pct_rows("5", "client", runs),
    ]
    ctx.cases["5"] = {
        "requests": n,
        "users": users,
        "zipf_s": 1.1,
        "seed": 20260101,
        "mix": "70% clean /v1/users/{id}, 15% passthrough /users/v1/users/{id}, "
        "15% clean /v1/users?ids= (2-10 ids)",
        "sequence_sha256": digest,
        "distinct_upstream_requests": distinct,
        "fake_latency_s": latency,
        "upstream_limit": FAST_LIMIT,
        "runs": runs,
        "discarded_rounds": discarded,
    }


# -- case 6: memory -----------------------------------------------------------------------


def fill_sequence(start: int, n: int) -> list[str]:
    """n distinct typical entries: alternately a clean and a passthrough user lookup."""
    return [
        (f"/v1/users/{start + i}" if i % 2 == 0 else f"/users/v1/users/{start + i}")
        for i in range(n)
    ]


def case_memory(ctx: Ctx) -> None:
    budget = (16 if ctx.quick else 64) * 1024 * 1024
    n = 20_000 if ctx.quick else 100_000
    ctx.say(
        f"\n== case 6: memory, fill L1 with {n:,} entries under a "
        f"{budget // 2**20} MiB budget (max_entries raised to 1e6 so the byte budget "
        "binds; upstream limit raised to 1e6/s) =="
    )
    warm_file = ctx.workdir / "warm.txt"
    warm_file.write_text("\n".join(fill_sequence(4_000_000, 2000)) + "\n")
    fill_file = ctx.workdir / "fill.txt"
    fill_file.write_text("\n".join(fill_sequence(5_000_000, n)) + "\n")
    env = {
        **FAST_LIMIT,
        "BLOXPROXY_CACHE_MAX_BYTES": str(budget),
        "BLOXPROXY_CACHE_MAX_ENTRIES": "1000000",
    }
    runs = []
    for i in range(ctx.runs):
        fake = Fake(ctx).start()
        pproc, pport = proxy(ctx, fake, env)
        with running(fake.proc, pproc):
            ctx.uvloop["case6_proxy"] = uses_uvloop(pproc.pid)
            done = ctx.workdir / "sequence.done"
            w = wrk(
                ctx,
                pport,
                "/",
                conns=64,
                script="sequence.lua",
                args=[str(warm_file), "2000", str(done)],
                max_seconds=120,
                done_file=done,
            )
            time.sleep(1.0)
            rss0 = proc_status(pproc.pid, "VmRSS")
            l1b0 = metric(pport, "bloxproxy_cache_l1_bytes")
            l1n0 = metric(pport, "bloxproxy_cache_l1_entries")
            f = wrk(
                ctx,
                pport,
                "/",
                conns=64,
                script="sequence.lua",
                args=[str(fill_file), str(n), str(done)],
                max_seconds=600,
                done_file=done,
            )
            filled = sum(v for k, v in f["counts"].items() if k.startswith("xcache_"))
            if filled != n:
                raise BenchError(f"case 6: {filled} of {n} fill requests answered")
            time.sleep(1.0)
            rss1 = proc_status(pproc.pid, "VmRSS")
            hwm = proc_status(pproc.pid, "VmHWM")
            l1b1 = metric(pport, "bloxproxy_cache_l1_bytes")
            l1n1 = metric(pport, "bloxproxy_cache_l1_entries")
            upstream = fake.total()
        r: dict[str, Any] = {
            "rss_before": rss0,
            "rss_after": rss1,
            "vm_hwm": hwm,
            "l1_bytes_before": l1b0,
            "l1_bytes_after": l1b1,
            "l1_entries_before": l1n0,
            "l1_entries_after": l1n1,
            "growth": rss1 - rss0,
            "growth_over_budget": (rss1 - rss0) / budget,
            "growth_over_l1_bytes_added": (rss1 - rss0) / max(1.0, l1b1 - l1b0),
            "upstream_calls": upstream,
            "warm": w,
            "fill": f,
        }
        runs.append(r)
        ctx.say(
            f"  run {i + 1} RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB "
            f"(+{r['growth'] / 2**20:.1f} MiB = {r['growth_over_budget']:.2f} × budget), "
            f"L1 {l1n1:,.0f} entries / {l1b1 / 2**20:.1f} MiB accounted, "
            f"fill {f['rps']:,.0f} rps, counts {f['counts']}"
        )
    mib = 2**20
    ctx.rows += [
        Row(
            "6",
            f"RSS growth / budget ({budget // mib} MiB), {n:,} entries",
            [r["growth_over_budget"] for r in runs],
            "{:.2f}",
            "≤ 1.20",
            med([r["growth_over_budget"] for r in runs]) <= 1.20,
        ),
        Row("6", "RSS growth MiB", [r["growth"] / mib for r in runs], "{:.1f}"),
        Row(
            "6",
            "L1 bytes accounted after fill, MiB",
            [r["l1_bytes_after"] / mib for r in runs],
            "{:.1f}",
        ),
        Row("6", "L1 entries after fill", [r["l1_entries_after"] for r in runs]),
        Row(
            "6",
            "RSS growth / L1 bytes added (accounting accuracy)",
            [r["growth_over_l1_bytes_added"] for r in runs],
            "{:.2f}",
        ),
    ]
    ctx.cases["6"] = {
        "budget_bytes": budget,
        "entries_requested": n,
        "fill": "alternating /v1/users/{id} and /users/v1/users/{id}, distinct ids",
        "env": env,
        "runs": runs,
    }


# -- case 7: Redis L2 hit -----------------------------------------------------------------


def case_redis(ctx: Ctx) -> None:
    import redis as redis_py

    sys.path.insert(0, str(ROOT))
    from tests.redis_server import RedisServer  # the tests' helper finds redis-server

    ctx.say("\n== case 7: Redis L2 hit (L1 disabled: max_entries=0) vs L1 hit, same Redis ==")
    server = RedisServer()
    server.start()
    try:
        fake = Fake(ctx).start()
        env = {"BLOXPROXY_CACHE_REDIS_URL": server.url}
        l1proc, l1port = proxy(ctx, fake, env, name="proxy-l1")
        l2proc, l2port = proxy(
            ctx, fake, {**env, "BLOXPROXY_CACHE_MAX_ENTRIES": "0"}, name="proxy-l2"
        )
        rc = redis_py.Redis.from_url(server.url)
        with running(fake.proc, l1proc, l2proc):
            ctx.uvloop["case7_proxy"] = uses_uvloop(l2proc.pid)
            for path in (CLEAN_HIT, PASS_HIT):
                warm_hit(l2port, path)  # stored in Redis by the first miss
                warm_hit(l1port, path)  # L1 filled from L2
            sides = {
                "l1_clean": (l1port, CLEAN_HIT),
                "l2_clean": (l2port, CLEAN_HIT),
                "l1_pass": (l1port, PASS_HIT),
                "l2_pass": (l2port, PASS_HIT),
            }
            for port, path in sides.values():
                wrk(ctx, port, path, duration=2)

            def measure(i: int, side: str) -> dict[str, Any]:
                port, path = sides[side]
                pre = check_hit(port, path)
                gets0 = rc.info("commandstats").get("cmdstat_get", {}).get("calls", 0)
                r = wrk(ctx, port, path)
                gets1 = rc.info("commandstats").get("cmdstat_get", {}).get("calls", 0)
                r["pre_x_cache"] = pre
                r["redis_gets_per_request"] = (gets1 - gets0) / max(1, r["requests"])
                ctx.say(
                    f"  run {i} {side:9} {wrk_line(r)}  Redis GETs/request "
                    f"{r['redis_gets_per_request']:.2f}"
                )
                return r

            runs, discarded = rounds(ctx, list(sides), measure)
        rc.close()
        redis_version = subprocess.run(
            [server.binary, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    finally:
        server.stop()
    rows = []
    for kind, label in (("clean", f"clean {CLEAN_HIT}"), ("pass", f"passthrough {PASS_HIT}")):
        ratio = [
            a["rps"] / b["rps"] for a, b in zip(runs[f"l2_{kind}"], runs[f"l1_{kind}"], strict=True)
        ]
        rows += [
            Row("7", f"L1 hit rps, {label}", [r["rps"] for r in runs[f"l1_{kind}"]]),
            Row("7", f"L2 (Redis) hit rps, {label}", [r["rps"] for r in runs[f"l2_{kind}"]]),
            Row(
                "7",
                f"L2 hit rps / L1 hit rps, {label}",
                ratio,
                "{:.2f}",
                "≥ 0.50",
                med(ratio) >= 0.5,
            ),
            pct_rows("7", f"L2 hit {kind}", runs[f"l2_{kind}"]),
        ]
    ctx.rows += rows
    ctx.cases["7"] = {
        "redis": redis_version,
        "runs": runs,
        "discarded_rounds": discarded,
        "config": "both proxies: config.yaml + BLOXPROXY_CACHE_REDIS_URL; the L2 "
        "one also BLOXPROXY_CACHE_MAX_ENTRIES=0",
    }


# -- machine and main ---------------------------------------------------------------------


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    models = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    wrk_v = subprocess.run(
        ["wrk", "--version"] if shutil.which("wrk") else ["true"],
        capture_output=True,
        text=True,
        check=False,
    )
    commit = (
        subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False
        ).stdout.strip()
        or None
    )
    return {
        "cpu_model": models[0] if models else platform.processor(),
        "cpu_count_proc": len(models),
        "nproc": nproc,
        "mem_total_bytes": int(mem.group(1)) * 1024 if mem else None,
        "uname": " ".join(platform.uname()),
        "python": sys.version.split()[0],
        "aiohttp": version("aiohttp"),
        "uvloop": version("uvloop"),
        "orjson": version("orjson"),
        "redis_py": version("redis"),
        "bloxproxy": version("bloxproxy"),
        "wrk": (wrk_v.stdout + wrk_v.stderr).splitlines()[0]
        if (wrk_v.stdout + wrk_v.stderr)
        else None,
        "git_commit": commit,
    }


# -- case 8: the event loop (uvloop or asyncio) ---------------------------------------------


def case_loop(ctx: Ctx) -> None:
    """uvloop is an optional dependency (``bloxproxy serve`` uses it when installed): what it
    is worth, for a hit and for a miss, against the same proxy on asyncio's own loop."""
    ctx.say(
        "\n== case 8: the proxy on uvloop vs on asyncio's loop (BLOXPROXY_NO_UVLOOP=1); "
        "hit and miss (fake 0 ms, upstream limit raised) =="
    )
    fake = Fake(ctx).start()
    uproc, uport = proxy(ctx, fake, FAST_LIMIT, name="proxy-uvloop")
    aproc, aport = proxy(
        ctx, fake, {**FAST_LIMIT, "BLOXPROXY_NO_UVLOOP": "1"}, name="proxy-asyncio"
    )
    ids = Ids(8_000_000)
    with running(fake.proc, uproc, aproc):
        ctx.uvloop["case8_uvloop"] = uses_uvloop(uproc.pid)
        ctx.uvloop["case8_asyncio"] = uses_uvloop(aproc.pid)
        if not ctx.uvloop["case8_uvloop"] or ctx.uvloop["case8_asyncio"]:
            raise BenchError("uvloop is not installed, or BLOXPROXY_NO_UVLOOP was not obeyed")
        for port in (uport, aport):
            warm_hit(port, CLEAN_HIT)
        sides = {
            "hit_uvloop": uport,
            "hit_asyncio": aport,
            "miss_uvloop": uport,
            "miss_asyncio": aport,
        }

        def measure(i: int, side: str) -> dict[str, Any]:
            port = sides[side]
            if side.startswith("hit"):
                r = wrk(ctx, port, CLEAN_HIT)
            else:
                start = ids.next
                r = wrk(
                    ctx, port, "/", script="unique.lua", args=["/users/v1/users/{id}", str(start)]
                )
                ids.advance(start + r["requests"] + 164)
            ctx.say(f"  run {i} {side:12} {wrk_line(r)}")
            return r

        for side in sides:  # warm-up, not recorded
            measure(0, side)
        runs, discarded = rounds(ctx, list(sides), measure)
    rows = []
    for kind, label in (("hit", f"clean hit {CLEAN_HIT}"), ("miss", "passthrough miss")):
        u, a = runs[f"{kind}_uvloop"], runs[f"{kind}_asyncio"]
        rows += [
            Row(
                "8",
                f"{label} rps: uvloop | asyncio",
                [],
                text=f"{med([r['rps'] for r in u]):,.0f} | {med([r['rps'] for r in a]):,.0f}",
            ),
            Row(
                "8",
                f"{label} rps uvloop / asyncio",
                [x["rps"] / y["rps"] for x, y in zip(u, a, strict=True)],
                "{:.2f}",
            ),
        ]
    ctx.rows.extend(rows)
    ctx.cases["8"] = {
        "runs": runs,
        "discarded_rounds": discarded,
        "conns": 64,
        "config": "config.yaml as shipped + upstream limit raised; the asyncio "
        "side with BLOXPROXY_NO_UVLOOP=1",
    }


# -- case 9: the economy workload (bench/economy.py) ----------------------------------------


def case_economy(ctx: Ctx) -> None:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import economy

    limits = "40" if ctx.quick else "40,80,20"
    ctx.say(
        f"\n== case 9: economy workload (bench/economy.py), fake limits {limits} per s "
        "per client IP; none | nginx | bloxproxy =="
    )
    try:
        res = economy.main(["--limits", limits], src=SRC, logdir=ctx.logdir, write=False)
    except RuntimeError as exc:
        raise BenchError(str(exc)) from exc
    ctx.rows += [
        Row("9", r["what"], r["values"], "{:.3f}", r["target"], r["ok"], r["text"])
        for r in res["rows"]
    ]
    ctx.cases["9"] = res


CASES: dict[str, Callable[[Ctx], None]] = {
    "1": lambda ctx: case_hit(ctx, 1),
    "2": lambda ctx: case_hit(ctx, 2),
    "3": case_miss,
    "4": case_coalesce,
    "5": case_mix,
    "6": case_memory,
    "7": case_redis,
    "8": case_loop,
    "9": case_economy,
}


def estimate(cases: Sequence[str], runs: int, duration: float, quick: bool) -> float:
    per = {
        "1": 5 * runs * duration + 25,
        "2": 5 * runs * duration + 30,
        "3": 20 * runs * duration + 20,
        "4": 5 + 3 * runs,
        "5": runs * (8 if quick else 35),
        "6": runs * (8 if quick else 30),
        "7": 4 * runs * duration + 25,
        "8": 4 * (runs + 1) * duration + 20,
        "9": 60 if quick else 180,
    }
    return sum(per[c] for c in cases)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the bloxproxy benchmarks (see bench/README.md).")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 run of 3 s per side, smaller cases 5 and 6",
    )
    p.add_argument("--cases", default="1,2,3,4,5,6,7,8,9", help="comma-separated case numbers")
    p.add_argument("--runs", type=int, default=None, help="rounds per case (default 3)")
    p.add_argument(
        "--duration", type=float, default=None, help="seconds per wrk measurement (default 10)"
    )
    p.add_argument("--out", default=str(BENCH / "out" / "results.json"))
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        metavar="S",
        help="before each measurement wait up to S seconds until other processes "
        "use < 0.25 cores (0: do not wait)",
    )
    p.add_argument(
        "--keep-logs", action="store_true", help="keep the servers' logs (the path is printed)"
    )
    args = p.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; choose from 1-9")
    if shutil.which("wrk") is None and set(cases) - {"9"}:  # case 9 brings its own client
        print("wrk is not installed; install it with:\n    apt-get install -y wrk", file=sys.stderr)
        return 2
    runs = args.runs or (1 if args.quick else 3)
    duration = args.duration or (3.0 if args.quick else 10.0)
    # 1,000 concurrent connections (case 4) need more descriptors than the usual 1,024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    tmp = Path(tempfile.mkdtemp(prefix="bloxproxy-bench-"))
    ctx = Ctx(
        runs=runs,
        duration=duration,
        quick=args.quick,
        workdir=tmp,
        logdir=tmp,
        quiet_wait=args.quiet_wait,
    )
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.monotonic()
    info = machine()
    try:
        info["source"] = snapshot(tmp / "src")
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print(
        f"bloxproxy bench: cases {','.join(cases)}, {runs} run(s), {duration:g} s per wrk "
        f"measurement, about {estimate(cases, runs, duration, args.quick) / 60:.0f} min; "
        f"{info['nproc']} cores ({info['cpu_model']}), Python {info['python']}, "
        f"aiohttp {info['aiohttp']}, uvloop {info['uvloop']}; logs in {tmp}",
        flush=True,
    )
    failed: dict[str, str] = {}
    try:
        for c in cases:
            try:
                CASES[c](ctx)
            except BenchError as exc:
                failed[c] = str(exc)
                print(f"case {c} failed: {exc}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every server", file=sys.stderr)
        stop_all()
        return 130
    finally:
        stop_all()
    elapsed = time.monotonic() - t0
    if ctx.foreign:
        ctx.rows.append(
            Row(
                "all",
                f"CPU used by other jobs during wrk runs, cores (of {NCPU})",
                ctx.foreign,
                "{:.2f}",
                "≈ 0",
            )
        )
    text = table(ctx.rows)
    print("\n" + text)
    print(
        f"\n{runs} run(s) × {duration:g} s; median over runs, spread = min–max; verdict: "
        "the median against the target. Took {:.1f} min.".format(elapsed / 60)
    )
    if failed:
        print("failed cases: " + ", ".join(failed), file=sys.stderr)
    result = {
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(PY).name, *sys.argv])
        if argv is None
        else " ".join(["bench/run.py", *argv]),
        "params": {
            "cases": cases,
            "runs": runs,
            "duration_s": duration,
            "quick": args.quick,
            "wrk": "wrk -t1 (one thread), --timeout 5s",
            "host": HOST,
        },
        "machine": info,
        "proxy_used_uvloop": ctx.uvloop,
        "elapsed_s": round(elapsed, 1),
        "rows": [r.to_json() for r in ctx.rows],
        "table": text,
        "cases": ctx.cases,
        "failed": failed,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"results: {out}")
    if args.keep_logs:
        print(f"logs: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
