"""Shared fixtures: the fake Roblox upstream, an injectable clock, the real proxy app.

Everything runs for real on 127.0.0.1: the fake is an aiohttp server, the proxy is the app
that `bloxproxy serve` runs, and Redis (tests/conftest_redis.py) is a real redis-server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bloxproxy import config as config_mod
from bloxproxy.app import create_app
from bloxproxy.appkeys import FETCHER
from bloxproxy.cache.fetcher import Fetcher
from bloxproxy.config import Config
from bloxproxy.fake import FAKE_STATE, FakeRoblox, create_fake_app

pytest_plugins = ["tests.conftest_redis"]

ROOT = Path(__file__).resolve().parent.parent


VIEWER_RULES = """\
service: users
routes:
  - id: viewer.as_viewer
    endpoint: /v1/as-viewer/{user_id}
    params:
      user_id: {type: int, min: 1}
    backend:
      path: /v1/users/{user_id}
      credentials: forward
    response:
      case: keep
    cache:
      ttl: 1m
      credentials: per_credential
  - id: viewer.forwarded
    endpoint: /v1/forwarded/{user_id}
    params:
      user_id: {type: int, min: 1}
    backend:
      path: /v1/users/{user_id}
      credentials: forward
    response:
      case: keep
    cache:
      ttl: 1m
"""
# Two routes that forward the caller's credential upstream: /v1/as-viewer/{id} opts in to
# per-credential caching, /v1/forwarded/{id} keeps the default (bypass). The fake tags
# credentialed answers with _fakeViewer, so a leak between callers is visible.


class FakeClock:
    """Wall-clock stand-in: tests move time with :meth:`advance` instead of sleeping."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        """Stands in for asyncio.sleep in retry backoff: time passes, nobody waits."""
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


@pytest.fixture
def clock(request: pytest.FixtureRequest) -> FakeClock:
    """A :class:`FakeClock`; ``parametrize("clock", [SomeClock], indirect=True)`` gives a
    test another kind of it (tests/test_limiter.py's ``SteppedClock``)."""
    kind: type[FakeClock] = getattr(request, "param", FakeClock)
    return kind()


@pytest.fixture
async def fake_server(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    return await aiohttp_server(create_fake_app())


@pytest.fixture
def fake(fake_server: TestServer) -> FakeRoblox:
    """The fake's state: request counters, the log, scripted faults, latency."""
    return fake_server.app[FAKE_STATE]


def proxy_config(fake_server: TestServer, **env: str) -> Config:
    """The default config pointed at the fake, with ``BLOXPROXY_*`` overrides."""
    base = {"BLOXPROXY_UPSTREAM_BASE_URL": f"http://127.0.0.1:{fake_server.port}/{{service}}"}
    return config_mod.load(None, env={**base, **env})


ProxyFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
def make_proxy(
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
    fake_server: TestServer,
    clock: FakeClock,
) -> ProxyFactory:
    """Start a proxy app against the fake: ``await make_proxy(BLOXPROXY_CACHE_ENABLED="false")``.

    The app's wall clock, monotonic clock and retry sleep all run on ``clock``."""

    async def make(**env: str) -> TestClient[web.Request, web.Application]:
        app = create_app(
            proxy_config(fake_server, **env), clock=clock, monotonic=clock, sleep=clock.sleep
        )
        return await aiohttp_client(app)

    return make


@pytest.fixture
async def proxy(make_proxy: ProxyFactory) -> TestClient[web.Request, web.Application]:
    """A proxy with the default config (L1 cache only) in front of the fake."""
    return await make_proxy()


def fetcher_of(client: TestClient[web.Request, web.Application]) -> Fetcher:
    return client.server.app[FETCHER]
