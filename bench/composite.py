"""The composite-route benchmark: upstream calls of ``/v1/users/{user_id}/profile``.

    .venv/bin/python bench/composite.py [--users 100] [--latency 0.02] [--runs 1]
        [--rate 100000] [--modes composite,...] [--out bench/out/composite.json]

Starts the bundled fake Roblox (``python -m bloxproxy.fake``, ``--latency`` seconds per
answer) and the proxy (``python -m bloxproxy serve`` with the repository's ``config.yaml``,
upstream = the fake, and ``BLOXPROXY_LIMITS_UPSTREAM_RATE`` = ``--rate``: 100000 by default,
so that the limiter does not pace the calls being counted; the config's own is 20), both on
127.0.0.1, then asks for the profiles of ``--users`` distinct synthetic users three ways,
each on users no earlier way asked (a cold cache), and counts the upstream calls the fake
received (``GET /_fake/stats``):

- ``composite``: the profiles at once, ``GET /v1/users/{id}/profile`` each;
- ``parts-at-once``: the seven part routes of every profile as separate client requests,
  all at once (the micro-batcher merges these too);
- ``parts-one-by-one``: the same requests one after another, as a client that fetches each
  part itself would.

Prints a Markdown table (the numbers in bench/RESULTS.md come from it) and writes the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HOST = "127.0.0.1"
FIRST_USER = 1_000_000  # the fake's synthetic users
PARTS = 7  # user, headshot, presence, three counts, primary group


def part_urls(uid: int) -> list[str]:
    """The clean routes the profile's parts are, as a client would ask each."""
    return [
        f"/v1/users?ids={uid}",
        f"/v1/thumbnails/users/headshots?ids={uid}",
        f"/v1/presence?ids={uid}",
        f"/v1/users/{uid}/friends/count",
        f"/v1/users/{uid}/followers/count",
        f"/v1/users/{uid}/followings/count",
        f"/v1/users/{uid}/groups/primary",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def fake_stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/_fake/stats", timeout=10) as resp:
        stats: dict[str, Any] = json.loads(resp.read())
    return stats


def fake_reset(port: int) -> None:
    req = urllib.request.Request(f"http://{HOST}:{port}/_fake/reset", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=10):
        pass


def wait_ready(url: str, deadline: float = 30.0) -> None:
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2):
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {deadline:.0f}s")


@contextlib.contextmanager
def servers(latency: float, rate: float) -> Iterator[tuple[int, int]]:
    """The fake and the proxy, started from this checkout; stopped on the way out."""
    fake_port, proxy_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOXPROXY_")}
    env["PYTHONPATH"] = str(ROOT)
    py = sys.executable
    fake_cmd = [py, "-m", "bloxproxy.fake", "--port", str(fake_port), "--latency", str(latency)]
    proxy_env = env | {
        "BLOXPROXY_UPSTREAM_BASE_URL": f"http://{HOST}:{fake_port}/{{service}}",
        "BLOXPROXY_LIMITS_UPSTREAM_RATE": str(rate),
        "BLOXPROXY_LOGGING_ACCESS_LOG": "false",
    }
    proxy_cmd = [py, "-m", "bloxproxy", "serve", "--config", str(ROOT / "config.yaml")]
    proxy_cmd += ["--port", str(proxy_port)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        quiet = subprocess.DEVNULL
        procs.append(subprocess.Popen(fake_cmd, env=env, stdout=quiet, start_new_session=True))
        wait_ready(f"http://{HOST}:{fake_port}/_fake/stats")
        procs.append(
            subprocess.Popen(
                proxy_cmd, env=proxy_env, stdout=quiet, stderr=quiet, start_new_session=True
            )
        )
        wait_ready(f"http://{HOST}:{proxy_port}/_bloxproxy/healthz")
        yield fake_port, proxy_port
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


async def run_mode(
    mode: str, base: str, users: range, missing: dict[str, int]
) -> tuple[float, int, int]:
    """Seconds taken, requests sent, and answers that were not complete (the profiles'
    missing parts counted into ``missing`` by part and reason)."""
    limits = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(base, connector=limits) as session:
        started = time.perf_counter()
        if mode == "composite":
            got = await asyncio.gather(*(_get(session, f"/v1/users/{u}/profile") for u in users))
            bad = sum(1 for status, body in got if status != 200 or body["missing"])
            sent = len(got)
            for _, body in got:
                for m in body.get("missing", ()):
                    key = f"{m['part']}: {m['reason']}"
                    missing[key] = missing.get(key, 0) + 1
        elif mode == "parts-at-once":
            urls = [url for u in users for url in part_urls(u)]
            got = await asyncio.gather(*(_get(session, url) for url in urls))
            bad = sum(1 for status, _ in got if status != 200)
            sent = len(got)
        else:
            bad = sent = 0
            for u in users:
                for url in part_urls(u):
                    status, _ = await _get(session, url)
                    bad += status != 200
                    sent += 1
        return time.perf_counter() - started, sent, bad


MODES = ("composite", "parts-at-once", "parts-one-by-one")


def measure(n: int, latency: float, rate: float, modes: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = []
    with servers(latency, rate) as (fake_port, proxy_port):
        base = f"http://{HOST}:{proxy_port}"
        for i, mode in enumerate(modes):
            users = range(FIRST_USER + 10_000 * (i + 1), FIRST_USER + 10_000 * (i + 1) + n)
            fake_reset(fake_port)
            missing: dict[str, int] = {}
            seconds, sent, bad = asyncio.run(run_mode(mode, base, users, missing))
            stats = fake_stats(fake_port)
            by_service: dict[str, int] = {}
            for key, count in stats["counts"].items():
                service = key.split(" ")[1]
                by_service[service] = by_service.get(service, 0) + count
            rows.append(
                {
                    "mode": mode,
                    "profiles": n,
                    "client_requests": sent,
                    "incomplete": bad,
                    "missing": dict(sorted(missing.items())),
                    "upstream_calls": stats["total"],
                    "per_service": dict(sorted(by_service.items())),
                    "seconds": round(seconds, 3),
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| way | client requests | upstream calls | users | thumbnails | presence | friends "
        "| groups | incomplete | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["per_service"]
        cells = [
            r["mode"],
            str(r["client_requests"]),
            f"**{r['upstream_calls']}**",
            *(str(s.get(k, 0)) for k in ("users", "thumbnails", "presence", "friends", "groups")),
            str(r["incomplete"]),
            f"{r['seconds']:.2f} s",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100, help="distinct profiles per way")
    parser.add_argument("--latency", type=float, default=0.02, help="the fake's seconds/answer")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--rate", type=float, default=100000.0, help="the proxy's upstream rate per scope"
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated, of: {', '.join(MODES)}"
    )
    parser.add_argument("--out", type=Path, default=BENCH / "out" / "composite.json")
    args = parser.parse_args()
    modes = tuple(m.strip() for m in args.modes.split(","))
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"--modes: unknown {unknown}; known: {', '.join(MODES)}")
    runs = []
    for run in range(args.runs):
        rows = measure(args.users, args.latency, args.rate, modes)
        runs.append(rows)
        print(
            f"run {run + 1}: {args.users} profiles, fake latency {args.latency * 1000:.0f} ms, "
            f"upstream rate {args.rate:g}/s per scope"
        )
        print(table(rows))
        for r in rows:
            if r["missing"]:
                print(f"{r['mode']}: missing parts: {r['missing']}")
        print()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"users": args.users, "latency": args.latency, "rate": args.rate}
    doc = {"settings": settings, "runs": runs}
    args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
