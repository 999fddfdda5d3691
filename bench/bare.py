"""A bare aiohttp server answering fixed bytes: the baseline of the hit-path cases.

    python bench/bare.py --port 9100 --body /v1/users/156=body.json [--body PATH=FILE ...]
                         [--content-type TYPE] [--workers N] [--loop uvloop|asyncio]

Each ``--body PATH=FILE`` adds one GET route answering the file's bytes (read once at start)
with ``--content-type``. No access log, no middleware: the least an aiohttp handler can do.
With ``--workers N`` (N > 1) it starts N copies of itself that bind the same port with
``SO_REUSEPORT`` (as ``bloxproxy serve --workers N`` does) and waits for them; SIGTERM/SIGINT
are passed on. ``--loop`` defaults to uvloop when installed, like the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
from pathlib import Path

from aiohttp import web


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--body", action="append", required=True, metavar="PATH=FILE",
                   help="answer GET PATH with the bytes of FILE (repeatable)")
    p.add_argument("--content-type", default="application/json; charset=utf-8")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    return p.parse_args(argv)


def make_app(bodies: dict[str, bytes], content_type: str) -> web.Application:
    app = web.Application()
    for path, body in bodies.items():
        async def handler(request: web.Request, body: bytes = body) -> web.Response:
            return web.Response(body=body, headers={"Content-Type": content_type})

        app.router.add_get(path, handler)
    return app


async def serve(args: argparse.Namespace, bodies: dict[str, bytes]) -> None:
    runner = web.AppRunner(make_app(bodies, args.content_type), access_log=None,
                           handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, reuse_port=args.reuse_port or None,
                       backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def supervise(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``args.workers`` single-process copies sharing the port."""
    # drop "--workers N" wherever it is, then ask each child for one process on a shared port
    cleaned: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--workers":
            skip = True
            continue
        if a.startswith("--workers="):
            continue
        cleaned.append(a)
    child_argv = [sys.executable, __file__, *cleaned, "--workers", "1", "--reuse-port"]
    procs = [subprocess.Popen(child_argv) for _ in range(args.workers)]

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    for p in procs:
        code = max(code, p.wait())
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    bodies: dict[str, bytes] = {}
    for spec in args.body:
        path, sep, file = spec.partition("=")
        if not sep or not path.startswith("/"):
            raise SystemExit(f"--body expects PATH=FILE with PATH starting with '/', got {spec!r}")
        bodies[path] = Path(file).read_bytes()
    if args.workers > 1:
        return supervise(args, argv)
    if args.loop == "uvloop":
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
    asyncio.run(serve(args, bodies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
