"""Where the proxy spends its CPU on the hit and miss paths: py-spy under wrk load.

    .venv/bin/pip install py-spy      # a tool for this script only, not a dependency
    .venv/bin/python bench/profile.py [--what hit-clean,hit-pass,miss-pass,miss-clean,
                                             l2-hit-clean,l2-hit-pass]
                                      [--duration 10] [--rate 250] [--native]
                                      [--nonblocking]
                                      [--out bench/out/profile]

For each scenario: start the fake (0 ms) and the proxy (config.yaml; the miss scenarios
with ``BLOXPROXY_LIMITS_UPSTREAM_RATE=1000000``), warm the cache for the hit scenarios,
put wrk load on it (one thread, 64 connections; unique keys for the misses), and sample the
proxy process with ``py-spy record --format raw`` (pausing it for each sample, so stacks
are whole; ``--nonblocking`` does not pause it, but then many stacks come out partial).
Prints, per scenario, the top frames by own time (where the CPU is) and by inclusive time
(which calls are costly), as a share of the busy samples; writes the raw collapsed stacks
and the summary next to ``--out``. Servers are started and stopped like bench/run.py does.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run  # bench/run.py: the same servers, readiness checks and cleanup

# name: (path, every request a miss, L1 disabled and every hit from Redis)
SCENARIOS = {
    "hit-clean": (run.CLEAN_HIT, False, False),
    "hit-pass": (run.PASS_HIT, False, False),
    "miss-pass": ("/users/v1/users/{id}", True, False),
    "miss-clean": ("/v1/users/{id}", True, False),
    "l2-hit-clean": (run.CLEAN_HIT, False, True),
    "l2-hit-pass": (run.PASS_HIT, False, True),
}
_LINE = re.compile(r":\d+\)$")


def short(frame: str) -> str:
    """``handle (/work/main/bloxproxy/proxy.py:88)`` -> ``handle (bloxproxy/proxy.py)``."""
    frame = _LINE.sub(")", frame.strip())
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", str(run.ROOT) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    else:
        where = re.sub(r"^.*/lib/python3\.\d+/", "", where)
    return f"{name} ({where})" if where else name


def summarize(raw: Path, top: int = 25) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [short(f) for f in stack.split(";") if f]
        # py-spy's first element is the thread ("process 123:\"python\"" / "thread (0x..)")
        frames = [f for f in frames if not f.startswith(("process ", "thread ("))]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    lines = [f"{total} busy samples"]
    lines.append("\n  own time (the frame itself, incl. the C code it calls):")
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines.append("\n  inclusive time (the frame and everything under it):")
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(top)]
    return "\n".join(lines)


def profile(
    ctx: run.Ctx,
    what: str,
    duration: int,
    rate: int,
    native: bool,
    out: Path,
    blocking: bool = True,
) -> str:
    path, miss, l2 = SCENARIOS[what]
    if not l2:
        env = run.FAST_LIMIT if miss else None
        return _profile(ctx, what, path, miss, env, duration, rate, native, out, blocking)
    sys.path.insert(0, str(run.ROOT))
    from tests.redis_server import RedisServer  # finds redis-server, as run.py does

    with RedisServer() as server:
        env = {"BLOXPROXY_CACHE_REDIS_URL": server.url, "BLOXPROXY_CACHE_MAX_ENTRIES": "0"}
        return _profile(ctx, what, path, miss, env, duration, rate, native, out, blocking)


def _profile(
    ctx: run.Ctx,
    what: str,
    path: str,
    miss: bool,
    env: dict[str, str] | None,
    duration: int,
    rate: int,
    native: bool,
    out: Path,
    blocking: bool,
) -> str:
    fake = run.Fake(ctx).start()
    pproc, pport = run.proxy(ctx, fake, env)
    with run.running(fake.proc, pproc):
        if not miss:
            run.warm_hit(pport, path)
        script = ["-s", str(run.LUA / ("unique.lua" if miss else "static.lua"))]
        url = f"http://{run.HOST}:{pport}{'/' if miss else path}"
        cmd = ["wrk", "-t1", "-c64", f"-d{duration + 3}s", *script, url]
        if miss:
            cmd += ["--", path, "2000000"]
        wrk = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, BENCH_LUA_DIR=str(run.LUA)),
        )
        try:
            time.sleep(1.5)
            raw = out.with_name(f"{out.name}-{what}.collapsed")
            spy = [
                shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(pproc.pid),
                "--duration",
                str(duration),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "-o",
                str(raw),
            ]
            if native:
                spy.append("--native")
            if not blocking:
                spy.append("--nonblocking")
            subprocess.run(spy, check=True, capture_output=True, timeout=duration + 60)
        finally:
            stdout, _ = wrk.communicate(timeout=duration + 60)
    rps = re.search(r"Requests/sec:\s*([\d.]+)", stdout)
    head = (
        f"== {what}: {path} under wrk -t1 -c64 "
        f"({float(rps.group(1)) if rps else float('nan'):,.0f} rps while sampled, "
        f"py-spy {rate} Hz{' --native' if native else ''}"
        f"{'' if blocking else ' --nonblocking'}) =="
    )
    text = head + "\n" + summarize(raw)
    out.with_name(f"{out.name}-{what}.txt").write_text(text + "\n")
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--what", default=",".join(SCENARIOS))
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--rate", type=int, default=250)
    p.add_argument("--native", action="store_true", help="include native (C) frames")
    p.add_argument(
        "--nonblocking",
        action="store_true",
        help="sample without pausing the proxy (faster, but many stacks come out "
        "partial; the default pauses it for each sample: whole stacks)",
    )
    p.add_argument("--out", default=str(run.BENCH / "out" / "profile"))
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed; install it with:\n    apt-get install -y wrk", file=sys.stderr)
        return 2
    if not (shutil.which("py-spy") or Path(sys.executable).with_name("py-spy").exists()):
        print(
            "py-spy is not installed; install it with:\n    .venv/bin/pip install py-spy",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bloxproxy-profile-"))
    ctx = run.Ctx(
        runs=1, duration=args.duration, quick=False, workdir=tmp, logdir=tmp, quiet_wait=0
    )
    try:
        run.snapshot(tmp / "src")
        for what in args.what.split(","):
            print(
                profile(
                    ctx,
                    what.strip(),
                    args.duration,
                    args.rate,
                    args.native,
                    out,
                    not args.nonblocking,
                ),
                flush=True,
            )
            print()
    finally:
        run.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
