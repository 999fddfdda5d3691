"""The app factory shared by ``bloxproxy serve`` and the tests.

Resources are opened and closed in ``cleanup_ctx`` (one owner each): the upstream session,
and the fetcher built on it. Routes: the reserved ``/_bloxproxy/`` prefix for the proxy's
own endpoints, and one catch-all for the clean API and passthrough.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from .config import Config
from .errors import not_found
from .fetch import Fetcher
from .middlewares import problem_middleware, request_id_of
from .proxy import Proxy
from .rules import RuleSet, load_rules
from .upstream import Upstream, create_session

CONFIG = web.AppKey("config", Config)
RULES = web.AppKey("rules", RuleSet)
PROXY = web.AppKey("proxy", Proxy)

RESERVED_PREFIX = "/_bloxproxy/"


def create_app(config: Config, *, rules: RuleSet | None = None) -> web.Application:
    """Build the proxy app; ``rules`` defaults to loading ``config``'s rule paths."""
    app = web.Application(middlewares=[problem_middleware],
                          client_max_size=config.server.max_body_size)
    app[CONFIG] = config
    app[RULES] = rules if rules is not None else load_rules(config.rule_paths())
    app.cleanup_ctx.append(_pipeline)
    app.router.add_get(RESERVED_PREFIX + "healthz", _healthz)
    app.router.add_route("*", RESERVED_PREFIX + "{tail:.*}", _reserved)
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


async def _pipeline(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    session = create_session(config)
    upstream = Upstream(config, session)
    app[PROXY] = Proxy(config, app[RULES], Fetcher(upstream), request_id_of)
    try:
        yield
    finally:
        await session.close()


async def _handle(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY].handle(request)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _reserved(request: web.Request) -> web.StreamResponse:
    raise not_found(f"no proxy endpoint at {request.rel_url.raw_path}", code="no_route")
