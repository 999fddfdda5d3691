"""The app's typed keys: what the app factory (:mod:`bloxproxy.app`) puts in the
application, for the handlers of the proxy's own endpoints, ``serve`` and the tests to find.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from .authn import FailureThrottle
from .cache.fetcher import Fetcher
from .config import Config
from .connections import ConnectionStats
from .front import Front
from .observe import AccessLog, Metrics
from .pipeline import Pipeline
from .redisconn import RedisClient, RedisConnections
from .rules import RuleSet
from .siblings import Siblings
from .upstream.client import Upstream
from .upstream.guard import Guard

__all__ = [
    "ACCESS_LOG",
    "AUTH_THROTTLE",
    "CONFIG",
    "CONNECTIONS",
    "FETCHER",
    "FRONT",
    "GUARD",
    "METRICS",
    "PIPELINE",
    "RULES",
    "RUNTIME",
    "SIBLINGS",
    "UPSTREAM",
    "Runtime",
]


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the app owns beside its config: clocks, sleep, and the Redis clients."""

    clock: Callable[[], float]
    monotonic: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]  # a request's own waits (retry backoff, holds)
    redis: RedisClient | None  # commands (cache.redis.timeout each); None: no Redis
    connections: RedisConnections | None  # all of the topology's clients (pub/sub, primary)
    # Waits of work no request waits for (background re-polls of a Pending thumbnail)
    background_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


CONFIG = web.AppKey("config", Config)  # the config the app started with
RULES = web.AppKey("rules", RuleSet)  # the rules it started with (live: PIPELINE's)
PIPELINE = web.AppKey("pipeline", Pipeline)
FETCHER = web.AppKey("fetcher", Fetcher)
GUARD = web.AppKey("guard", Guard)
UPSTREAM = web.AppKey("upstream", Upstream)
METRICS = web.AppKey("metrics", Metrics)
FRONT = web.AppKey("front", Front)
ACCESS_LOG = web.AppKey("access_log", AccessLog)
RUNTIME = web.AppKey("runtime", Runtime)
CONNECTIONS = web.AppKey("connections", ConnectionStats)  # counted by serve's runner
AUTH_THROTTLE = web.AppKey("auth_throttle", FailureThrottle)
# With serve --workers N: this worker's siblings, whose metrics a scrape merges (serve.py)
SIBLINGS = web.AppKey("siblings", Siblings)
