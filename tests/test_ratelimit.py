"""GCRA token buckets: in memory on an injected clock (exact times), and in Redis with one
Lua script on Redis's own TIME (counts and bounds).

The contract tests run against both implementations; the memory-only tables pin the exact
``remaining``/``retry_after``/``reset`` arithmetic, the Redis-only ones atomicity across
clients, key layout and failure.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bloxproxy.errors import StoreUnavailable
from bloxproxy.ratelimit import Decision, MemoryBuckets, RedisBuckets
from tests.conftest import FakeClock

Take = Callable[..., Awaitable[Decision]]  # take(key, cost, dry_run=False)
MakeBuckets = Callable[[float, int], Take]

EPOCH = 1_800_000_000.0  # wall-clock magnitudes, where float seconds lose microseconds


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def make_buckets(request: pytest.FixtureRequest) -> AsyncIterator[MakeBuckets]:
    """``make(rate, burst)`` → ``take(key, cost)`` on a fresh bucket set of either kind."""
    if request.param == "memory":
        clock = FakeClock(EPOCH)

        def make_memory(rate: float, burst: int) -> Take:
            buckets = MemoryBuckets(rate, burst, clock)

            async def take(key: str, cost: float = 1.0, dry_run: bool = False) -> Decision:
                return buckets.take(key, cost, dry_run=dry_run)

            return take

        yield make_memory
        return
    client = aioredis.Redis.from_url(request.getfixturevalue("redis_url"))
    buckets = RedisBuckets(client, "test:rl:")

    def make_redis(rate: float, burst: int) -> Take:
        async def take(key: str, cost: float = 1.0, dry_run: bool = False) -> Decision:
            return await buckets.take(key, rate, burst, cost, dry_run=dry_run)

        return take

    try:
        yield make_redis
    finally:
        await client.aclose()


# -- contract: both implementations -----------------------------------------------------------
# Rates are slow (a token per second or less) so the real time a Redis round trip takes
# never refills a token in the middle of a test.


async def test_a_dry_run_answers_like_a_take_and_takes_nothing(make_buckets: MakeBuckets) -> None:
    take = make_buckets(1, 3)
    assert [(await take("k", 1, dry_run=True)).allowed for _ in range(10)] == [True] * 10
    assert [(await take("k", 1)).allowed for _ in range(4)] == [True] * 3 + [False]
    dry = await take("k", 1, dry_run=True)
    assert not dry.allowed and 0 < dry.retry_after <= 1.0
    assert not (await take("k", 1)).allowed  # the dry runs left the bucket as it was


@pytest.mark.parametrize(("rate", "burst"), [(1, 1), (1, 5), (5, 5), (0.5, 3), (1, 20), (0.2, 7)])
async def test_burst_then_denied(make_buckets: MakeBuckets, rate: float, burst: int) -> None:
    take = make_buckets(rate, burst)
    decisions = [await take("k", 1) for _ in range(burst + 2)]
    assert [d.allowed for d in decisions] == [True] * burst + [False] * 2
    assert [d.remaining for d in decisions] == [*range(burst - 1, -1, -1), 0, 0]
    assert {d.limit for d in decisions} == {burst}
    interval = 1 / rate
    for n, d in enumerate(decisions[:burst], 1):
        assert d.retry_after == 0.0
        assert n * interval - 0.05 <= d.reset <= n * interval
    for d in decisions[burst:]:
        assert 0.0 < d.retry_after <= interval
        assert burst * interval - 0.05 <= d.reset <= burst * interval


async def test_keys_are_independent(make_buckets: MakeBuckets) -> None:
    take = make_buckets(1, 2)
    assert [(await take("a", 1)).allowed for _ in range(3)] == [True, True, False]
    assert [(await take("b", 1)).allowed for _ in range(3)] == [True, True, False]


async def test_cost_takes_several_tokens(make_buckets: MakeBuckets) -> None:
    take = make_buckets(1, 5)
    first = await take("k", 3)
    assert (first.allowed, first.remaining) == (True, 2)
    refused = await take("k", 3)  # two left: not enough, and nothing is taken
    assert (refused.allowed, refused.remaining) == (False, 2)
    assert 0.9 <= refused.retry_after <= 1.0
    second = await take("k", 2)
    assert (second.allowed, second.remaining) == (True, 0)


async def test_cost_zero_only_looks(make_buckets: MakeBuckets) -> None:
    take = make_buckets(1, 3)
    await take("k", 1)
    peek = await take("k", 0)
    assert (peek.allowed, peek.remaining) == (True, 2)
    assert (await take("k", 0)).remaining == 2


async def test_cost_above_the_burst_is_never_allowed(make_buckets: MakeBuckets) -> None:
    take = make_buckets(1, 3)
    decision = await take("k", 4)
    assert (decision.allowed, decision.remaining) == (False, 3)


# -- memory: exact arithmetic on the injected clock ------------------------------------------


@pytest.mark.parametrize("start", [0.0, 12_345.678, EPOCH])
@pytest.mark.parametrize(("rate", "burst"), [(5, 5), (10, 10), (3, 3), (100, 100), (7, 3)])
def test_memory_burst_is_exact_at_any_clock_magnitude(
    start: float, rate: float, burst: int
) -> None:
    clock = FakeClock(start)
    buckets = MemoryBuckets(rate, burst, clock)
    decisions = [buckets.take("k") for _ in range(burst + 1)]
    assert [d.allowed for d in decisions] == [True] * burst + [False]
    assert [d.remaining for d in decisions] == [*range(burst - 1, -1, -1), 0]
    assert decisions[-1].retry_after == pytest.approx(1 / rate, abs=1e-6)
    clock.advance(1 / rate)  # exactly one interval later: exactly one more
    assert [buckets.take("k").allowed for _ in range(2)] == [True, False]


def test_memory_refill_remaining_retry_after_and_reset() -> None:
    clock = FakeClock(EPOCH)
    buckets = MemoryBuckets(rate=2, burst=4, clock=clock)  # a token every 0.5 s
    table = [
        # (advance, allowed, remaining, retry_after, reset)
        (0.0, True, 3, 0.0, 0.5),
        (0.0, True, 2, 0.0, 1.0),
        (0.0, True, 1, 0.0, 1.5),
        (0.0, True, 0, 0.0, 2.0),
        (0.0, False, 0, 0.5, 2.0),
        (0.2, False, 0, 0.3, 1.8),
        (0.3, True, 0, 0.0, 2.0),
        (1.0, True, 1, 0.0, 1.5),
        (10.0, True, 3, 0.0, 0.5),  # idle time refills up to the burst, not beyond
    ]
    for advance, allowed, remaining, retry_after, reset in table:
        clock.advance(advance)
        d = buckets.take("k")
        assert (d.allowed, d.limit, d.remaining) == (allowed, 4, remaining)
        assert d.retry_after == pytest.approx(retry_after, abs=1e-6)
        assert d.reset == pytest.approx(reset, abs=1e-6)


def test_memory_fractional_rate() -> None:
    clock = FakeClock(EPOCH)
    buckets = MemoryBuckets(rate=0.5, burst=2, clock=clock)  # one token every 2 s
    assert [buckets.take("k").allowed for _ in range(3)] == [True, True, False]
    clock.advance(1.999)
    assert not buckets.take("k").allowed
    clock.advance(0.001)
    d = buckets.take("k")
    assert (d.allowed, d.remaining, d.reset) == (True, 0, pytest.approx(4.0))


def test_memory_denied_requests_take_nothing() -> None:
    clock = FakeClock(1_000.0)  # (a hundred float steps at EPOCH would drift by microseconds)
    buckets = MemoryBuckets(rate=1, burst=1, clock=clock)
    buckets.take("k")
    for _ in range(100):
        clock.advance(0.001)
        assert not buckets.take("k").allowed
    clock.advance(0.9)  # one second after the first take, hammering or not
    assert buckets.take("k").allowed


def test_memory_forgets_the_least_recently_used_keys() -> None:
    clock = FakeClock(EPOCH)
    buckets = MemoryBuckets(rate=1, burst=1, clock=clock, max_keys=2)
    assert buckets.take("a").allowed and buckets.take("b").allowed
    assert not buckets.take("a").allowed  # a is now the most recently used
    assert buckets.take("c").allowed  # evicts b
    assert buckets.take("b").allowed  # forgotten: a full bucket again
    assert not buckets.take("c").allowed


# -- Redis: atomic, prefixed, expiring, failing loudly -----------------------------------------


async def test_redis_is_atomic_across_clients(redis_url: str) -> None:
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(4)]
    try:
        replicas = [RedisBuckets(c, "test:rl:") for c in clients]
        decisions = await asyncio.gather(
            *(replicas[i % 4].take("shared", 1, 10) for i in range(60))
        )
    finally:
        for c in clients:
            await c.aclose()
    assert sum(d.allowed for d in decisions) == 10
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(10))


async def test_redis_refills_on_its_own_clock(redis_client: aioredis.Redis) -> None:
    buckets = RedisBuckets(redis_client, "test:rl:")
    assert (await buckets.take("k", 20, 1)).allowed
    refused = await buckets.take("k", 20, 1)
    assert not refused.allowed
    assert 0.0 < refused.retry_after <= 0.05
    await asyncio.sleep(refused.retry_after + 0.005)  # Redis TIME cannot be injected
    assert (await buckets.take("k", 20, 1)).allowed


async def test_redis_key_is_prefixed_and_expires_when_full(
    redis_client: aioredis.Redis,
) -> None:
    buckets = RedisBuckets(redis_client, "bloxproxy:rl:client:")
    decision = await buckets.take("ip:127.0.0.1", 1, 5)
    assert await redis_client.keys("*") == [b"bloxproxy:rl:client:ip:127.0.0.1"]
    ttl_ms = await redis_client.pttl("bloxproxy:rl:client:ip:127.0.0.1")
    # kept until the bucket would be full again, plus a second of slack
    assert decision.reset * 1000 + 900 < ttl_ms <= decision.reset * 1000 + 1000


async def test_redis_denied_request_writes_nothing(redis_client: aioredis.Redis) -> None:
    buckets = RedisBuckets(redis_client, "test:rl:")
    await buckets.take("k", 1, 1)
    before = await redis_client.get("test:rl:k")
    assert not (await buckets.take("k", 1, 1)).allowed
    assert await redis_client.get("test:rl:k") == before


async def test_redis_down_raises_store_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = aioredis.Redis(port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(StoreUnavailable):
            await RedisBuckets(client, "test:rl:").take("k", 1, 1)
    finally:
        await client.aclose()
