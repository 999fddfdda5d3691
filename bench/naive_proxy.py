"""A naive aiohttp proxy: the baseline of the miss-path case.

    python bench/naive_proxy.py --port 9200 --upstream http://127.0.0.1:9000 [--loop uvloop|asyncio]

Every request ``METHOD /path?query`` is sent to ``{upstream}/path?query`` through one shared
``ClientSession`` (connection pool sized like the proxy's ``upstream.max_connections``), and
the upstream's status, body and ``Content-Type`` come back. No cache, no limits, no retries,
no access log, no metrics: what a few lines of aiohttp give.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)


def make_app(upstream: str, max_connections: int) -> web.Application:
    app = web.Application()
    base = upstream.rstrip("/")

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0)
        app[SESSION] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        yield
        await app[SESSION].close()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read() if request.body_exists else None
        async with request.app[SESSION].request(
            request.method,
            base + request.rel_url.raw_path_qs,
            data=body,
            allow_redirects=False,
        ) as resp:
            data = await resp.read()
            headers = {}
            ctype = resp.headers.get("Content-Type")
            if ctype:
                headers["Content-Type"] = ctype
            return web.Response(status=resp.status, body=data, headers=headers)

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def serve(args: argparse.Namespace) -> None:
    await serve_app(make_app(args.upstream, args.max_connections), args.host, args.port)


async def serve_app(
    app: web.Application, host: str, port: int, started: Callable[[], None] | None = None
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM (``started``: called once it listens)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024).start()
    if started is not None:
        started()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9000")
    p.add_argument("--max-connections", type=int, default=256)
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = p.parse_args(argv)
    if args.loop == "uvloop":
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
