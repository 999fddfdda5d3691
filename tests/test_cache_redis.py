"""The cache with a Redis L2 shared by proxy replicas, and Redis trouble that is no outage.

Every test runs against a real redis-server (``redis_url`` is flushed per test; the tests
that kill Redis start their own :class:`RedisServer`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bloxproxy.cache.entry import Entry
from bloxproxy.fake import FakeRoblox
from tests.conftest import FakeClock, ProxyFactory, fetcher_of
from tests.redis_server import RedisServer
from tests.test_cache import (
    EXTRA_RULES,
    TOKEN,
    USER,
    USER_KEY,
    USER_PT,
    Client,
    cookie,
    get,
    purge,
    settle,
    users_get_count,
)


async def eventually(condition: Callable[[], bool], within: float = 2.0) -> None:
    """Poll ``condition`` (for pub/sub deliveries and reconnects) for at most ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.01)


async def listening(client: Client) -> None:
    shared = fetcher_of(client).shared
    assert shared is not None
    await asyncio.wait_for(shared.listening.wait(), 5.0)


async def replicas(make_proxy: ProxyFactory, redis_url: str, **env: str) -> tuple[Client, Client]:
    env = {"BLOXPROXY_CACHE_REDIS_URL": redis_url, "BLOXPROXY_SERVER_ADMIN_TOKEN": TOKEN, **env}
    a, b = await make_proxy(**env), await make_proxy(**env)
    await listening(a)
    await listening(b)
    return a, b


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name.startswith("bloxproxy") and r.levelno >= logging.WARNING
    ]


# -- L2 fill and L1 fill-from-L2 -----------------------------------------------------------


async def test_miss_on_one_replica_is_a_hit_on_the_other(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox, clock: FakeClock
) -> None:
    a, b = await replicas(make_proxy, redis_url)
    first = await get(a, USER)
    assert first.x_cache == "MISS"
    await settle(a)  # the L2 write runs beside the response
    clock.advance(10)
    hit = await get(b, USER)
    assert hit.x_cache == "HIT"
    assert hit.body == first.body
    assert hit.headers["Age"] == "10"
    assert hit.headers["ETag"] == first.headers["ETag"]
    assert users_get_count(fake) == 1
    # the other front door on the other replica: the same entry
    assert (await get(b, USER_PT)).x_cache == "HIT"
    assert users_get_count(fake) == 1


async def test_l2_hit_fills_l1(
    make_proxy: ProxyFactory, redis_url: str, redis_client: aioredis.Redis, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(BLOXPROXY_CACHE_REDIS_URL=redis_url)
    await get(proxy, USER_PT)
    await settle(proxy)
    assert await redis_client.exists("bloxproxy:" + USER_KEY)
    fetcher = fetcher_of(proxy)
    fetcher.drop_l1()
    assert (await get(proxy, USER_PT)).x_cache == "HIT"  # from L2 ...
    assert USER_KEY in fetcher.l1  # ... and now in L1
    await redis_client.delete("bloxproxy:" + USER_KEY)
    assert (await get(proxy, USER_PT)).x_cache == "HIT"  # served by L1 alone
    assert users_get_count(fake) == 1


async def test_negative_entries_are_shared_too(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox
) -> None:
    a, b = await replicas(make_proxy, redis_url)
    assert (await get(a, "/users/v1/users/999")).status == 404
    await settle(a)
    answer = await get(b, "/users/v1/users/999")
    assert (answer.status, answer.x_cache) == (404, "HIT")
    assert users_get_count(fake, 999) == 1


# -- purge across replicas -----------------------------------------------------------------


async def test_purge_on_one_replica_is_a_miss_on_the_other(
    make_proxy: ProxyFactory, redis_url: str, redis_client: aioredis.Redis, fake: FakeRoblox
) -> None:
    a, b = await replicas(make_proxy, redis_url)
    await get(a, USER)
    await settle(a)
    assert (await get(b, USER)).x_cache == "HIT"
    assert USER_KEY in fetcher_of(a).l1
    answer = await purge(b, {"url": USER})
    assert answer.json() == {"purged": 1, "scope": "url", "target": USER_KEY}
    assert not await redis_client.exists("bloxproxy:" + USER_KEY)
    await eventually(lambda: USER_KEY not in fetcher_of(a).l1)
    # the rendering of the clean route went with the entry
    assert not any(k.startswith(USER_KEY) for k in fetcher_of(a).l1._cache)
    assert (await get(a, USER)).x_cache == "MISS"
    assert users_get_count(fake) == 2


async def test_purge_all_reaches_every_replica(
    make_proxy: ProxyFactory, redis_url: str, redis_client: aioredis.Redis, fake: FakeRoblox
) -> None:
    a, b = await replicas(make_proxy, redis_url)
    paths = [USER, "/v1/users/1", "/games/v1/games?universeIds=1685831367"]
    for path in paths:
        await get(a, path)
    await settle(a)
    for path in paths:
        assert (await get(b, path)).x_cache == "HIT"
    await redis_client.set("unrelated:key", b"keep me")
    answer = await purge(b, {"all": True})
    assert answer.json()["purged"] >= 3
    assert [k async for k in redis_client.scan_iter("bloxproxy:*")] == []
    assert await redis_client.get("unrelated:key") == b"keep me"  # never FLUSHDB
    await eventually(lambda: len(fetcher_of(a).l1) == 0)
    for path in paths:
        assert (await get(a, path)).x_cache == "MISS"


async def test_route_purge_reaches_every_replica(
    make_proxy: ProxyFactory, redis_url: str, redis_client: aioredis.Redis, fake: FakeRoblox
) -> None:
    a, b = await replicas(make_proxy, redis_url)
    route_paths, other = [USER, "/v1/users/1"], "/v1/users?ids=1,156"
    for path in [*route_paths, other]:
        await get(a, path)
    await settle(a)
    for path in [*route_paths, other]:
        assert (await get(b, path)).x_cache == "HIT"
    answer = await purge(b, {"route": "users.get"})
    assert answer.json()["target"] == "GET users/v1/users/"
    assert answer.json()["purged"] >= 2
    left = [k async for k in redis_client.scan_iter("bloxproxy:*")]
    assert not any(k.startswith(b"bloxproxy:GET users/v1/users/") for k in left)
    assert any(k.startswith(b"bloxproxy:POST users/v1/users") for k in left)
    await eventually(lambda: "GET users/v1/users/1" not in fetcher_of(a).l1)
    assert not any(k.startswith("GET users/v1/users/") for k in fetcher_of(a).l1._cache)
    for path in route_paths:
        assert (await get(a, path)).x_cache == "MISS"
    assert (await get(a, other)).x_cache == "HIT"


async def test_purge_works_without_redis_on_l1(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox
) -> None:
    # A purge that reaches L1 but finds Redis gone still answers.
    a = await make_proxy(
        BLOXPROXY_CACHE_REDIS_URL=_closed_url(), BLOXPROXY_SERVER_ADMIN_TOKEN=TOKEN
    )
    await get(a, USER)
    answer = await purge(a, {"url": USER})
    assert (answer.status, answer.json()["purged"]) == (200, 1)
    assert (await get(a, USER)).x_cache == "MISS"


# -- Redis trouble -------------------------------------------------------------------------


def _closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


async def requests_for(client: Client, seconds: float) -> None:
    """Keep sending requests for a while, so the L2 back-off runs out and Redis is retried."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    uid = 1_000_000
    while loop.time() < deadline:
        uid += 1
        answer = await get(client, f"/users/v1/users/{uid}")
        assert answer.status == 200
        await asyncio.sleep(0.05)


async def test_redis_down_at_start(
    make_proxy: ProxyFactory, fake: FakeRoblox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bloxproxy")
    proxy = await make_proxy(BLOXPROXY_CACHE_REDIS_URL=_closed_url())
    first = await get(proxy, USER)
    assert (first.status, first.x_cache) == (200, "MISS")
    assert (await get(proxy, USER)).x_cache == "HIT"  # L1 alone
    assert (await get(proxy, USER_PT)).x_cache == "HIT"
    shared = fetcher_of(proxy).shared
    assert shared is not None
    await eventually(lambda: not shared.healthy)
    await requests_for(proxy, 0.8)  # L2 retried after its 0.5 s back-off, listener too
    assert users_get_count(fake) == 1
    found = warnings_of(caplog)
    assert len(found) == 1, [r.getMessage() for r in found]
    assert "redis" in found[0].getMessage()


@pytest.mark.redis  # starts its own redis-server
async def test_redis_down_at_start_then_up(
    make_proxy: ProxyFactory, fake: FakeRoblox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bloxproxy")
    server = RedisServer()
    server.start()
    server.stop()  # its port is now closed
    try:
        proxy = await make_proxy(BLOXPROXY_CACHE_REDIS_URL=server.url)
        fetcher = fetcher_of(proxy)
        shared = fetcher.shared
        assert shared is not None
        assert (await get(proxy, USER)).x_cache == "MISS"
        await eventually(lambda: not shared.healthy)
        await requests_for(proxy, 0.6)
        server.restart()
        await eventually(shared.listening.is_set, within=10.0)
        # Purges published while this replica could not listen are lost to it: L1 dropped.
        assert USER_KEY not in fetcher.l1
        assert (await get(proxy, USER)).x_cache == "MISS"
        await settle(proxy)
        async with aioredis.Redis.from_url(server.url) as direct:
            assert await direct.exists("bloxproxy:" + USER_KEY)  # L2 at once, no back-off
        assert shared.healthy
        assert len(warnings_of(caplog)) == 1
    finally:
        server.stop()


@pytest.mark.redis  # starts its own redis-server
async def test_redis_killed_mid_run_then_back(
    make_proxy: ProxyFactory, fake: FakeRoblox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bloxproxy")
    server = RedisServer()
    server.start()
    try:
        proxy = await make_proxy(BLOXPROXY_CACHE_REDIS_URL=server.url)
        await listening(proxy)
        fetcher = fetcher_of(proxy)
        shared = fetcher.shared
        assert shared is not None
        key_1 = "GET users/v1/users/1"
        assert (await get(proxy, "/v1/users/1")).x_cache == "MISS"
        await settle(proxy)
        async with aioredis.Redis.from_url(server.url) as direct:
            assert await direct.exists("bloxproxy:" + key_1)

        server.kill()
        await eventually(lambda: not shared.listening.is_set())
        answer = await get(proxy, USER)
        assert (answer.status, answer.x_cache) == (200, "MISS")
        assert (await get(proxy, USER)).x_cache == "HIT"
        assert (await get(proxy, "/v1/users/1")).x_cache == "HIT"  # still in L1
        await requests_for(proxy, 0.8)
        await settle(proxy)
        found = warnings_of(caplog)
        assert len(found) == 1, [r.getMessage() for r in found]

        server.restart()  # same port, empty
        await eventually(shared.listening.is_set, within=10.0)
        # The listener missed whatever was published meanwhile: L1 was dropped.
        assert key_1 not in fetcher.l1
        again = await get(proxy, "/v1/users/1")
        assert again.x_cache == "MISS"
        assert users_get_count(fake, 1) == 2
        # L2 is used again: a new entry reaches Redis (after the back-off, if the first
        # command met a connection from before the restart).
        async with aioredis.Redis.from_url(server.url) as direct:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5.0
            uid = 2_000_000
            while True:
                uid += 1
                assert (await get(proxy, f"/users/v1/users/{uid}")).status == 200
                await settle(proxy)
                if await direct.exists(f"bloxproxy:GET users/v1/users/{uid}"):
                    break
                assert loop.time() < deadline, "no entry reached the restarted Redis"
                await asyncio.sleep(0.05)
        assert shared.healthy
        found = warnings_of(caplog)
        assert len(found) == 1, [r.getMessage() for r in found]  # still the one incident
    finally:
        server.stop()


async def test_corrupt_value_in_redis_is_a_miss(
    make_proxy: ProxyFactory, redis_url: str, redis_client: aioredis.Redis, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(BLOXPROXY_CACHE_REDIS_URL=redis_url)
    name = "bloxproxy:" + USER_KEY
    for n, junk in enumerate((b"garbage", b"BXP\x00[2]\n", b"BXP\x00[1,200]\n{}"), start=1):
        fetcher_of(proxy).drop_l1()
        await redis_client.set(name, junk)
        answer = await get(proxy, USER)
        assert (answer.status, answer.x_cache) == (200, "MISS")
        assert users_get_count(fake) == n
        await settle(proxy)
        stored = await redis_client.get(name)
        assert stored is not None
        assert Entry.from_bytes(stored).status == 200  # replaced by a good entry


async def test_keys_are_under_the_prefix_with_an_expiry(
    make_proxy: ProxyFactory, redis_url: str, redis_client: aioredis.Redis
) -> None:
    proxy = await make_proxy(
        BLOXPROXY_CACHE_REDIS_URL=redis_url, BLOXPROXY_CACHE_REDIS_PREFIX="bxtest:"
    )
    await listening(proxy)
    await get(proxy, USER)  # ttl 10m + stale-if-error 1h
    await get(proxy, "/users/v1/users/999")  # users.get's negative: 5 min, no stale window
    await get(proxy, "/users/v1/nothing/999")  # no rule: the negative default, 30 s
    await get(proxy, "/thumbnails/v1/assets?assetIds=1365767")  # no rule: passthrough, 30 s
    await settle(proxy)
    keys = sorted([k.decode() async for k in redis_client.scan_iter("*")])
    # (the four misses' leases, released into their "stored" markers: a second each)
    leases = [k for k in keys if k.startswith("bxtest:lease:{")]
    assert len(leases) == 4
    for name in leases:
        assert 0 < await redis_client.pttl(name) <= 1000
    keys = [k for k in keys if k not in leases]
    assert keys == [
        "bxtest:GET thumbnails/v1/assets?assetIds=1365767",
        "bxtest:GET users/v1/nothing/999",
        "bxtest:GET users/v1/users/156",
        "bxtest:GET users/v1/users/999",
        "bxtest:tag:user:156",  # users.get's tags: each set lives as its longest entry
        "bxtest:tag:user:999",
    ]
    expected = {keys[0]: 30_000, keys[1]: 30_000, keys[2]: 4_200_000, keys[3]: 300_000}
    expected |= {keys[4]: 4_200_000, keys[5]: 300_000}
    for key, px in expected.items():
        pttl = await redis_client.pttl(key)
        assert px - 5_000 < pttl <= px, (key, pttl)
    assert b"bxtest:invalidate" in await redis_client.pubsub_channels()


async def test_no_credential_in_any_redis_key(
    make_proxy: ProxyFactory,
    redis_url: str,
    redis_client: aioredis.Redis,
    tmp_path: Path,
    fake: FakeRoblox,
) -> None:
    rules = tmp_path / "viewer.yaml"
    rules.write_text(EXTRA_RULES)
    env = {
        "BLOXPROXY_CACHE_REDIS_URL": redis_url,
        "BLOXPROXY_RULES_PATHS": str(rules),
        "BLOXPROXY_CACHE_CREDENTIAL_SECRET": "shared-hmac-secret",
    }
    a, b = await make_proxy(**env), await make_proxy(**env)
    secrets = ["COOKIE-SECRET-A", "COOKIE-SECRET-B", "Bearer TOKEN-SECRET", "KEY-SECRET"]
    credentialed = [
        cookie(secrets[0]),
        cookie(secrets[1]),
        {"headers": {"Authorization": secrets[2]}},
        {"headers": {"x-api-key": secrets[3]}},
    ]
    for kwargs in credentialed:
        for path in ("/v1/as-viewer/156", "/v1/forwarded/156", USER_PT):
            assert (await get(a, path, **kwargs)).status == 200
    await get(a, "/v1/as-viewer/156")
    await settle(a)
    keys = [k async for k in redis_client.scan_iter("*")]
    assert sum(b" cred=" in k for k in keys) == 4  # the per-credential entries reached L2
    for key in keys:
        value = await redis_client.get(key) or b""
        for secret in secrets:
            assert secret.encode() not in key
            assert secret.encode() not in value
    # with a shared HMAC secret, the other replica finds the caller's own entry
    answer = await get(b, "/v1/as-viewer/156", **credentialed[0])
    assert answer.x_cache == "HIT"
    # as-viewer: one miss per credential; forwarded and passthrough (which follows the
    # shipped users.get, the first rule describing this request): bypass each time; then
    # the anonymous as-viewer request
    assert fake.count("users", "/v1/users/156") == 4 + 4 * 2 + 1


async def test_pipelined_writes_to_a_silent_redis_fail_cleanly() -> None:
    """A Redis that accepts and never answers: a batch's pipelined write is a
    StoreUnavailable and its pipelined claims are DOWN (per-process coalescing), within the
    command timeout, and no pipeline is left holding a connection for the garbage
    collector to warn about."""
    import gc
    import warnings

    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from bloxproxy.cache.lease import Claim, Leases
    from bloxproxy.cache.redis_store import RedisStore
    from bloxproxy.errors import StoreUnavailable

    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await done.wait()  # reads nothing, answers nothing
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.Redis(
        host="127.0.0.1", port=port, socket_timeout=0.1, retry=Retry(NoBackoff(), 0)
    )
    entry = Entry(200, (), b"{}", 0.0, 60.0)
    store = RedisStore(client, "t:", clock=lambda: 1.0)
    leases = Leases(client, "t:", ttl=1.0, wait=1.0, listening=lambda: True)
    try:
        with pytest.raises(StoreUnavailable):
            await store.set_many([("a", entry, ("user:1",)), ("b", entry, ())])
        got = await leases.claim_many(["t:lease:{a}", "t:lease:{b}"])
        assert [g.claim for g in got] == [Claim.DOWN, Claim.DOWN]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        assert [w for w in caught if "Unclosed" in str(w.message)] == []
    finally:
        done.set()
        await client.aclose()
        server.close()
        await server.wait_closed()
