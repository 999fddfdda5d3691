"""A bare aiohttp server answering fixed bytes: the baseline of the hit-path cases.

    python bench/bare.py --port 9100 --body /v1/users/156=body.json [--body PATH=FILE ...]
                         [--content-type TYPE] [--workers N] [--loop uvloop|asyncio]

Each ``--body PATH=FILE`` adds one GET route answering the file's bytes (read once at start)
with ``--content-type``. No access log, no middleware: the least an aiohttp handler can do.
With ``--raw`` there is no router and no ``web.Response`` either: the handler answers with
the whole HTTP message prepared as bytes (the proxy's fast-path technique, front.WireResponse),
which is about as close to the machine's limit as an aiohttp server gets.
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
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument(
        "--body",
        action="append",
        required=True,
        metavar="PATH=FILE",
        help="answer GET PATH with the bytes of FILE (repeatable)",
    )
    p.add_argument("--content-type", default="application/json; charset=utf-8")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--raw", action="store_true", help="prepared bytes, no router (see above)")
    return p.parse_args(argv)


def make_app(bodies: dict[str, bytes], content_type: str) -> web.Application:
    app = web.Application()
    for path, body in bodies.items():

        async def handler(request: web.Request, body: bytes = body) -> web.Response:
            return web.Response(body=body, headers={"Content-Type": content_type})

        app.router.add_get(path, handler)
    return app


def make_raw_handler(
    bodies: dict[str, bytes], content_type: str
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    from email.utils import formatdate

    from aiohttp.http import SERVER_SOFTWARE

    from bloxproxy.prepared import WireResponse

    heads: dict[str, tuple[int, bytes]] = {}

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = bodies.get(request.path)
        if body is None:
            return web.Response(status=404)
        now = int(time.time())
        second, head = heads.get(request.path, (-1, b""))
        if second != now:  # the Date header changes once a second
            head = (
                f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nDate: {formatdate(now, usegmt=True)}\r\n"
                f"Server: {SERVER_SOFTWARE}\r\n\r\n"
            ).encode()
            heads[request.path] = (now, head)
        return WireResponse(200, head, body)

    return handler


async def serve(args: argparse.Namespace, bodies: dict[str, bytes]) -> None:
    runner: web.BaseRunner[Any]
    if args.raw:
        runner = web.ServerRunner(
            web.Server(make_raw_handler(bodies, args.content_type)), handle_signals=False
        )
    else:
        runner = web.AppRunner(
            make_app(bodies, args.content_type), access_log=None, handle_signals=False
        )
    await runner.setup()
    site = web.TCPSite(
        runner, args.host, args.port, reuse_port=args.reuse_port or None, backlog=1024
    )
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
