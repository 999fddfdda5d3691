"""The learned budgets in Redis (bloxproxy/upstream/shared.py), on a real redis-server.

The Lua scripts must be the Learner's arithmetic exactly: every scenario of
tests/test_budget.py runs against both, observation for observation, on the scenario's own
clock (``now`` passed in). Then two proxy apps on one Redis: one learned budget between
them, a 429 seen by one slowing the other, apart with different ``upstream.egress_id``s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bloxproxy.app import create_app
from bloxproxy.appkeys import GUARD
from bloxproxy.fake import FakeRoblox, Fault
from bloxproxy.upstream.budget import Tuning
from bloxproxy.upstream.shared import TTL_MS, SharedBudgets
from tests.conftest import proxy_config
from tests.redis_server import RedisServer
from tests.test_budget import SCENARIOS, Step, run_learner

Client = TestClient[web.Request, web.Application]


async def run_shared(budgets: SharedBudgets, tuning: Tuning, steps: list[Step]) -> list[Any]:
    seen: list[dict[str, Any]] = []
    for t, op, *args in steps:
        if op == "take":
            slot = await budgets.take("scope", tuning, now=t)
            seen.append(
                {
                    "allowed": slot.allowed,
                    "wait": slot.wait,
                    "gen": slot.gen,
                    "rate": slot.rate,
                    "held": slot.held,
                }
            )
        elif op == "429":
            rate, hold = await budgets.on_429("scope", tuning, args[0], args[1], now=t)
            seen.append({"rate": rate, "hold": hold})
        else:
            rate, hold = await budgets.on_headers("scope", tuning, args[0], now=t)
            seen.append({"rate": rate, "hold": hold})
    return seen


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_the_script_is_the_learner(redis_client: aioredis.Redis, name: str) -> None:
    tuning, scenario = SCENARIOS[name]
    steps = [step for step, _ in scenario]
    shared = await run_shared(SharedBudgets(redis_client, "test:"), tuning, steps)
    assert shared == run_learner(tuning, steps)  # every field, exactly


async def test_one_hash_tagged_key_per_budget(redis_client: aioredis.Redis) -> None:
    budgets = SharedBudgets(redis_client, "bloxproxy:", "eu-1")
    assert budgets.key("users") == "bloxproxy:rl:{upstream:eu-1:users}"
    assert (await budgets.take("users", Tuning(ceiling=5.0))).allowed  # Redis's own TIME
    await budgets.on_429("users", Tuning(ceiling=5.0), 0, None)
    assert [k.decode() for k in await redis_client.keys("*")] == [budgets.key("users")]
    ttl = await redis_client.pttl(budgets.key("users"))
    assert TTL_MS - 5_000 < ttl <= TTL_MS  # forgotten after an hour unused
    state = await budgets.state("users")
    assert (state["r"], state["g"], state["u"]) == (2.5, 1.0, 0.0)
    assert await budgets.state("games") == {}


# -- two replicas --------------------------------------------------------------------------


def shared_env(redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "BLOXPROXY_CACHE_ENABLED": "false",
        "BLOXPROXY_RETRIES_ATTEMPTS": "1",
        "BLOXPROXY_CACHE_REDIS_URL": redis_url,
        "BLOXPROXY_LIMITS_UPSTREAM_SHARED": "true",
        **extra,
    }


@pytest.fixture
def make_replica(
    aiohttp_client: Callable[..., Awaitable[Client]], fake_server: TestServer
) -> Callable[..., Awaitable[Client]]:
    """A proxy app on the real monotonic clock and sleep: a shared budget's slots come on
    Redis's clock, which a fake one cannot move (waits here take real time, tens of ms)."""

    async def make(**env: str) -> Client:
        config = proxy_config(fake_server, **env)
        return await aiohttp_client(create_app(config, monotonic=time.monotonic))

    return make


Replica = Callable[..., Awaitable[Client]]


def users(proxy: Client) -> Any:
    return next(r for r in proxy.server.app[GUARD].limiter.rows() if r.scope == "users")


async def call(proxy: Client, path: str) -> int:
    async with proxy.get(path) as resp:
        await resp.read()
        return resp.status


async def test_a_429_seen_by_one_replica_slows_the_other(
    make_replica: Replica, fake: FakeRoblox, redis_url: str, redis_client: aioredis.Redis
) -> None:
    env = shared_env(redis_url)
    one, two = await make_replica(**env), await make_replica(**env)
    assert await call(one, "/v1/users/1000001") == 200
    assert await call(two, "/v1/users/1000002") == 200
    fake.script("users", "/v1/users/1000003", [Fault(status=429)])
    assert await call(one, "/v1/users/1000003") == 429
    assert users(one).rate == 10.0  # learned, in Redis
    assert await call(two, "/v1/users/1000004") == 200
    assert users(two).rate == 10.0  # the other replica draws on the lowered budget
    state = await SharedBudgets(redis_client, "bloxproxy:").state("users")
    assert (state["r"], state["g"]) == (10.0, 1.0)


async def test_replicas_share_one_learned_rate(
    make_replica: Replica, fake: FakeRoblox, redis_url: str
) -> None:
    """Two replicas whose clients send as fast as they may, at a budget learned down to
    10/s: together they send 10/s, not 10/s each. Waiting for Redis's slots takes real time
    (Redis's clock is its own), so this one test sleeps, about a second."""
    env = shared_env(redis_url, BLOXPROXY_LIMITS_UPSTREAM_RATE="20")
    one, two = await make_replica(**env), await make_replica(**env)
    fake.script("users", "/v1/users/1000001", [Fault(status=429)])
    assert await call(one, "/v1/users/1000001") == 429  # 20/s → 10/s, for both
    statuses = await asyncio.gather(
        *(call((one, two)[i % 2], f"/v1/users/{1_000_010 + i}") for i in range(10))
    )
    assert statuses == [200] * 10  # they waited in their lines
    sent = [r.at for r in fake.requests[-10:]]
    assert sent[-1] - sent[0] >= 0.8  # 10 slots at 10/s, one every 0.1 s, shared
    assert users(one).slots + users(two).slots == 11  # the 429, and these


async def test_replicas_with_their_own_egress_have_their_own_budget(
    make_replica: Replica, fake: FakeRoblox, redis_url: str
) -> None:
    one = await make_replica(**shared_env(redis_url, BLOXPROXY_UPSTREAM_EGRESS_ID="node-a"))
    two = await make_replica(**shared_env(redis_url, BLOXPROXY_UPSTREAM_EGRESS_ID="node-b"))
    fake.script("users", "/v1/users/1000003", [Fault(status=429)])
    assert await call(one, "/v1/users/1000003") == 429
    assert await call(two, "/v1/users/1000004") == 200
    assert (users(one).rate, users(two).rate) == (10.0, 20.0)


async def test_without_redis_a_replica_learns_locally_from_where_it_was(
    make_replica: Replica,
    fake: FakeRoblox,
    redis_url: str,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = await make_replica(**shared_env(redis_url, BLOXPROXY_CACHE_REDIS_TIMEOUT="200ms"))
    fake.script("users", "/v1/users/1000003", [Fault(status=429)])
    assert await call(proxy, "/v1/users/1000003") == 429
    assert users(proxy).rate == 10.0
    redis_server.kill()  # (the fixture starts it again for the next test)
    fake.script("users", "/v1/users/1000004", [Fault(status=429)])
    assert await call(proxy, "/v1/users/1000004") == 429  # slot and 429: both local now
    assert users(proxy).rate == 5.0  # learning went on, from Redis's 10/s
    assert await call(proxy, "/v1/users/1000005") == 200
    assert "shared upstream budget unavailable, learning locally" in caplog.text
