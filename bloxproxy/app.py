"""The app factory shared by ``bloxproxy serve`` and the tests.

Resources are opened and closed in ``cleanup_ctx`` (one owner each): the upstream session,
and the fetcher built on it. Routes: the reserved ``/_bloxproxy/`` prefix for the proxy's
own endpoints, and one catch-all for the clean API and passthrough.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from aiohttp import web

from . import admin
from .config import Config
from .errors import not_found
from .cache.layer import Fetcher, SharedCache
from .cache.redis_store import RedisStore
from .middlewares import problem_middleware
from .proxy import Proxy
from .rules import RuleSet, load_rules
from .upstream import Upstream, create_session

CONFIG = web.AppKey("config", Config)
RULES = web.AppKey("rules", RuleSet)
PROXY = web.AppKey("proxy", Proxy)
FETCHER = web.AppKey("fetcher", Fetcher)
# Tests inject a fake wall clock here (before startup) to move time without sleeping.
Clock = Callable[[], float]
CLOCK: web.AppKey[Clock] = web.AppKey("clock")

RESERVED_PREFIX = "/_bloxproxy/"


def create_app(config: Config, *, rules: RuleSet | None = None,
               clock: Callable[[], float] | None = None) -> web.Application:
    """Build the proxy app; ``rules`` defaults to loading ``config``'s rule paths, and
    ``clock`` (wall-clock seconds) to :func:`time.time`."""
    app = web.Application(middlewares=[problem_middleware],
                          client_max_size=config.server.max_body_size)
    app[CONFIG] = config
    app[RULES] = rules if rules is not None else load_rules(config.rule_paths())
    if clock is not None:
        app[CLOCK] = clock
    app.cleanup_ctx.append(_pipeline)
    app.router.add_get(RESERVED_PREFIX + "healthz", _healthz)
    app.router.add_post(RESERVED_PREFIX + "admin/purge", admin.purge)
    app.router.add_route("*", RESERVED_PREFIX + "{tail:.*}", _reserved)
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


async def _pipeline(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    session = create_session(config)
    upstream = Upstream(config, session)
    clock = app.get(CLOCK, time.time)
    redis_cfg = config.cache.redis
    shared = None
    clients: list[aioredis.Redis] = []
    fetcher = Fetcher(upstream, config, clock=clock)
    if redis_cfg.url and config.cache.enabled:
        client = _redis_client(redis_cfg.url, redis_cfg.max_connections, redis_cfg.timeout)
        # Pub/sub blocks reading for long stretches: its own client, no read timeout.
        listener = _redis_client(redis_cfg.url, 2, None)
        clients = [client, listener]
        shared = SharedCache(RedisStore(client, redis_cfg.prefix, clock), listener,
                             redis_cfg.prefix + "invalidate", fetcher.drop_l1,
                             fetcher.apply_event)
        fetcher.shared = shared
        shared.start()
    app[FETCHER] = fetcher
    app[PROXY] = Proxy(config, app[RULES], fetcher)
    try:
        yield
    finally:
        await fetcher.close()
        if shared is not None:
            await shared.stop()
        for c in clients:
            await c.aclose()
        await session.close()


def _redis_client(url: str, max_connections: int, timeout: float | None) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout or 5.0,
        socket_timeout=timeout, socket_connect_timeout=timeout or 2.0,
        health_check_interval=10 if timeout is None else 0,
    )
    # No client-side retries: a request must not stall on a dead Redis, it degrades to L1.
    return aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


async def _handle(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY].handle(request)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _reserved(request: web.Request) -> web.StreamResponse:
    raise not_found(f"no proxy endpoint at {request.rel_url.raw_path}", code="no_route")
