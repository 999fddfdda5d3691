# ruff: noqa: RUF001  (the report uses en dashes and times signs on purpose)
"""What a miss must cost: the naive proxy with the proxy's own parts added one at a time.

    .venv/bin/python bench/miss_floor.py [--runs 3] [--duration 8] [--conns 8,64]

Case 3 compares a bloxproxy miss with bench/naive_proxy.py at a 0 ms upstream. This script
asks how much of the gap the features themselves cost, whoever writes them: it runs the
naive proxy and, in the same rounds, copies of it that each add one more of bloxproxy's
real parts (imported from the package, not re-written), then bloxproxy itself:

- ``naive``: bench/naive_proxy.py as case 3 runs it;
- ``+gc``: the same handler served by this file, with the collector settings of
  ``bloxproxy serve`` (``gc.freeze()`` once up, first threshold 10,000), which every
  level below has too;
- ``+observe``: a request id, ``X-Request-ID`` and ``Server-Timing``, the access line
  (``observe.AccessLog``, JSON, to the process's stderr, a file) and the request metrics
  (``observe.Metrics.observe_request``) — what the default config has on;
- ``+cache``: the cache key (``decide.cache_key``), an L1 lookup, the answer stored as an
  ``Entry`` with its ETag in ``MemoryStore`` (the shipped budget), and the cache headers
  (``X-Cache``, ``Cache-Control``, ``Cache-Status``, ``ETag``);
- ``+coalesce``: the upstream call in a task of its own that identical requests join (the
  pipeline's coalescing: a task, a done-callback and a waiter per miss);
- ``+guard``: the call through bloxproxy's ``Upstream`` and its guard middleware (limiter,
  breaker, pause, retry budget, CSRF check, upstream metrics) instead of a plain
  ``ClientSession``;
- ``proxy``: ``bloxproxy serve`` with the shipped config, passthrough route (its limiter
  raised to 1e6/s as in case 3).

Each level is served by this same file (``serve --level N``) through aiohttp's router and
``web.Response``, like the naive proxy; bloxproxy's own server side is cheaper than that
(its front door skips the router and writes prepared bytes). Every request is a new user
id, through wrk's ``unique.lua``.
Prints rps per level and its ratio to ``naive`` (median and spread of ``--runs`` rounds,
each round measuring every level once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import run  # bench/run.py: servers, wrk, rounds, cleanup

LEVELS = ("+gc", "+observe", "+cache", "+coalesce", "+guard")  # levels 0-4 of `serve`


# -- the servers ----------------------------------------------------------------------------


def make_app(level: int, upstream: str, config: str) -> Any:
    import aiohttp
    from aiohttp import web

    from bloxproxy import config as config_mod
    from bloxproxy.cache import decide
    from bloxproxy.cache.entry import KEPT_HEADERS, Entry, make_etag
    from bloxproxy.cache.store import MemoryStore
    from bloxproxy.observe import AccessLog, Metrics
    from bloxproxy.upstream.client import Upstream, UpstreamRequest, create_session
    from bloxproxy.upstream.guard import Guard

    cfg = config_mod.load(
        config,
        env={
            "BLOXPROXY_UPSTREAM_BASE_URL": upstream + "/{service}",
            "BLOXPROXY_LIMITS_UPSTREAM_RATE": "1000000",
        },
    )
    observe, cache, coalesce, guard = (level >= n for n in (1, 2, 3, 4))
    metrics = Metrics()
    access = AccessLog(fmt=cfg.logging.format)
    l1 = MemoryStore(cfg.cache.max_bytes, cfg.cache.max_entries)
    inflight: dict[str, asyncio.Task[tuple[int, tuple[tuple[str, str], ...], bytes]]] = {}
    count = [0]
    app = web.Application()
    state: dict[str, Any] = {}

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if guard:
            g = Guard(cfg, metrics=metrics)
            state["upstream"] = Upstream(cfg, create_session(cfg), g.middleware)
        else:
            connector = aiohttp.TCPConnector(limit=cfg.upstream.max_connections, limit_per_host=0)
            state["session"] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        access.start()
        yield
        await access.stop()
        if guard:
            await state["upstream"]._session.close()
        else:
            await state["session"].close()

    async def fetch(path: str, rid: str) -> tuple[int, tuple[tuple[str, str], ...], bytes]:
        if guard:
            r = await state["upstream"].send(UpstreamRequest("users", "GET", path), rid)
            return r.status, r.headers, r.body
        async with state["session"].get(upstream + "/users" + path, allow_redirects=False) as resp:
            body = await resp.read()
            return resp.status, tuple(resp.headers.items()), body

    async def joined(
        key: str, path: str, rid: str
    ) -> tuple[int, tuple[tuple[str, str], ...], bytes]:
        task = inflight.get(key)
        if task is None:
            task = inflight[key] = asyncio.get_running_loop().create_task(fetch(path, rid))

            def done(t: asyncio.Task[Any], key: str = key) -> None:
                if inflight.get(key) is t:
                    del inflight[key]

            task.add_done_callback(done)
        if not task.done():
            waiter = asyncio.get_running_loop().create_future()

            def wake(_: object) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            task.add_done_callback(wake)
            timer = asyncio.get_running_loop().call_later(10.0, wake, None)
            try:
                await waiter
            finally:
                timer.cancel()
                task.remove_done_callback(wake)
        return task.result()

    async def handle(request: web.Request) -> web.Response:
        start = time.perf_counter()
        rid = ""
        if observe:
            count[0] += 1
            rid = f"floor{count[0]:08x}"
        path = request.rel_url.raw_path.removeprefix("/users")
        headers: dict[str, str] = {}
        key = ""
        if cache:
            req = UpstreamRequest("users", "GET", path)
            key = decide.cache_key(req)
            if l1.get_nowait(key) is not None:
                raise web.HTTPInternalServerError(text="every request must be a miss")
        if coalesce:
            status, up_headers, body = await joined(key, path, rid)
        else:
            status, up_headers, body = await fetch(path, rid)
        ctype = next((v for k, v in up_headers if k.lower() == "content-type"), None)
        if ctype:
            headers["Content-Type"] = ctype
        if cache:
            now = time.time()
            entry = Entry(
                status,
                tuple((k, v) for k, v in up_headers if k.lower() in KEPT_HEADERS),
                body,
                now,
                60.0,
                30.0,
                300.0,
                make_etag(body),
            )
            l1.set_nowait(key, entry)
            headers["X-Cache"] = "MISS"
            headers["Cache-Control"] = decide.cache_control(entry, now, True)
            headers["Cache-Status"] = decide.cache_status("MISS", entry, now, True)
            headers["ETag"] = entry.etag
        if observe:
            total = time.perf_counter() - start
            headers["X-Request-ID"] = rid
            headers["Server-Timing"] = f"total;dur={total * 1000:.1f}"
            metrics.observe_request("passthrough:users", status, "MISS", total)
            access.write(
                rid,
                "GET",
                request.rel_url.raw_path[:512],
                "passthrough:users",
                status,
                "MISS",
                total,
                total,
            )
        return web.Response(status=status, body=body, headers=headers)

    app.cleanup_ctx.append(ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def tune_gc() -> None:
    """The collector settings of `bloxproxy serve` (bloxproxy/serve.py), once listening."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


async def serve(args: argparse.Namespace) -> None:
    import naive_proxy  # bench/naive_proxy.py: the same serving loop as the baseline

    await naive_proxy.serve_app(
        make_app(args.level, args.upstream, args.config), run.HOST, args.port, started=tune_gc
    )


# -- the measurement ------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process ``pid`` used so far."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / run.CLK_TCK


def floor_proc(ctx: run.Ctx, fake: run.Fake, level: int) -> tuple[run.Proc, int]:
    port = run.free_port()
    argv = [
        run.PY,
        str(Path(__file__).resolve()),
        "serve",
        "--level",
        str(level),
        "--port",
        str(port),
        "--upstream",
        f"http://{run.HOST}:{fake.port}",
        "--config",
        str(run.SRC / "config.yaml"),
    ]
    proc = run.Proc(f"floor{level}-{port}", argv, ctx.logdir, run.child_env()).start()
    run.wait_ready(proc, port, "/users/v1/users/1")
    return proc, port


def measure_all(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bloxproxy-miss-floor-"))
    ctx = run.Ctx(runs=args.runs, duration=args.duration, quick=False, workdir=tmp, logdir=tmp)
    out: dict[str, Any] = {"machine": run.machine(), "args": vars(args), "groups": {}}
    try:
        out["source"] = run.snapshot(tmp / "src")
        fake = run.Fake(ctx).start()
        procs = [fake.proc]
        sides: dict[str, tuple[int, int]] = {}  # side: (port, pid)
        nproc, port = run.naive(ctx, fake)
        sides["naive"] = port, nproc.pid
        procs.append(nproc)
        for i, name in enumerate(LEVELS):
            p, port = floor_proc(ctx, fake, i)
            sides[name] = port, p.pid
            procs.append(p)
        pproc, port = run.proxy(ctx, fake, run.FAST_LIMIT)
        sides["proxy"] = port, pproc.pid
        procs.append(pproc)
        ids = run.Ids(2_000_000)
        with run.running(*procs):

            def one(side: str, conns: int, duration: float) -> dict[str, Any]:
                start = ids.next  # every side gets new ids: the cached ones must miss
                port, pid = sides[side]
                cpu = proc_cpu(pid)
                r = run.wrk(
                    ctx,
                    port,
                    "/",
                    conns=conns,
                    duration=duration,
                    script="unique.lua",
                    args=["/users/v1/users/{id}", str(start)],
                )
                # the server's own CPU per answer (a few requests may still be in flight)
                r["cpu_us"] = (proc_cpu(pid) - cpu) / max(1, r["requests"]) * 1e6
                ids.advance(start + r["requests"] + conns + 100)
                return r

            for side in sides:  # warm-up, not recorded
                one(side, 64, 2)
            for conns in args.conns:

                def measure(i: int, side: str, conns: int = conns) -> dict[str, Any]:
                    r = one(side, conns, ctx.duration)
                    ctx.say(
                        f"  c{conns} run {i} {side:10} {run.wrk_line(r)}  "
                        f"{r['cpu_us']:.0f} µs CPU/answer"
                    )
                    return r

                kept, _ = run.rounds(ctx, list(sides), measure, f"c{conns} ")
                out["groups"][f"c{conns}"] = kept
    finally:
        run.stop_all()
    return out


def report(out: dict[str, Any]) -> str:
    lines = []
    for g, kept in out["groups"].items():
        lines.append(
            f"\nfake 0 ms, {g}: rps (median, spread), ratio to naive, and the "
            f"server's CPU per answer (median) and what the level added to it"
        )
        before = 0.0
        for side, runs in kept.items():
            rps = [r["rps"] for r in runs]
            ratios = [r["rps"] / n["rps"] for r, n in zip(runs, kept["naive"], strict=True)]
            cpu = run.med([r["cpu_us"] for r in runs])
            step = f"{cpu - before:+.0f}" if before else ""
            before = cpu
            lines.append(
                f"  {side:10} {run.med(rps):8,.0f}  ({min(rps):,.0f}–{max(rps):,.0f})"
                f"  × {run.med(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
                f"  {cpu:5.0f} µs {step:>5}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("serve", help="(internal) serve one level")
    s.add_argument("--level", type=int, required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--upstream", required=True)
    s.add_argument("--config", required=True)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=8)
    p.add_argument("--conns", default="8,64")
    p.add_argument("--out", type=Path, default=None, help="write the raw numbers as JSON")
    args = p.parse_args(argv)
    if args.cmd == "serve":
        try:
            import uvloop
        except ImportError:
            asyncio.run(serve(args))
        else:
            uvloop.run(serve(args))
        return 0
    args.conns = [int(c) for c in str(args.conns).split(",")]
    out = measure_all(args)
    text = report(out)
    print(text)
    if args.out is not None:
        args.out.write_text(json.dumps({**out, "report": text}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
