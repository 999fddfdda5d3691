"""Cluster-wide coalescing (bloxproxy/cache/lease.py): one upstream call per cold key
across replicas on one real redis-server.

The decisions are tables; then the lease's scripts on Redis; then two proxy apps on one
Redis: a herd split across both, a leader cancelled, dead or failing mid-fetch, a wait
deadline, a stale entry standing in, Redis killed during a herd, no Redis command while
waiting; and the same per entity for batches.
The fake holds an answer with a scripted ``delay`` (real time, a few hundred ms at most).
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bloxproxy import config as config_mod
from bloxproxy.cache.lease import (
    STORED_MARK_MS,
    Act,
    Claim,
    Leases,
    Wake,
    lease_key,
    on_claim,
    on_read,
    on_wake,
)
from bloxproxy.config import ConfigError
from bloxproxy.fake import FakeRoblox, Fault
from tests.conftest import FakeClock, ProxyFactory, fetcher_of
from tests.redis_server import RedisServer
from tests.test_cache import USER, USER_KEY, Answer, Client, get, settle, users_get_count
from tests.test_cache_redis import eventually, listening

LEASE = lease_key("bloxproxy:", USER_KEY)

# -- the decisions -------------------------------------------------------------------------

CLAIMS = [
    # (claim, a stale entry may stand in) -> next step
    (Claim.ACQUIRED, False, Act.LEAD),
    (Claim.ACQUIRED, True, Act.LEAD),  # ours: ask, even with a stale entry at hand
    (Claim.HELD, False, Act.WAIT),
    (Claim.HELD, True, Act.STALE),  # waiters are served stale when an entry exists
    (Claim.STORED, False, Act.READ),  # stored just after our L2 read: read it again
    (Claim.STORED, True, Act.READ),
    (Claim.DOWN, False, Act.FETCH),  # Redis down: per-process coalescing, nothing fails
    (Claim.DOWN, True, Act.FETCH),
]


@pytest.mark.parametrize(("claim", "stale", "act"), CLAIMS)
def test_on_claim(claim: Claim, stale: bool, act: Act) -> None:
    assert on_claim(claim, stale) is act


WAKES = [
    (Wake.STORED, False, Act.READ),
    (Wake.STORED, True, Act.READ),  # the new entry beats the stale one
    (Wake.EMPTY, False, Act.FETCH),  # the leader's answer was not stored: ask ourselves
    (Wake.EMPTY, True, Act.STALE),  # ... or stand in with stale, as for our own failure
    (Wake.GONE, False, Act.CLAIM),  # the leader gave up: one waiter takes over
    (Wake.EXPIRED, False, Act.CLAIM),  # the leader died without a word
    (Wake.EXPIRED, True, Act.CLAIM),
    (Wake.DEADLINE, False, Act.FETCH),  # waited long enough: a fallback call, stored
    (Wake.DEADLINE, True, Act.FETCH),
    (Wake.LOST, False, Act.FETCH),  # the subscription is gone: per process
]


@pytest.mark.parametrize(("wake", "stale", "act"), WAKES)
def test_on_wake(wake: Wake, stale: bool, act: Act) -> None:
    assert on_wake(wake, stale) is act


READS = [
    # (the entry was in L2, the claim met the "stored" marker) -> next step (None: done)
    (True, False, None),
    (True, True, None),
    (False, False, Act.FETCH),  # a word said stored, the entry is gone: ask ourselves
    (False, True, Act.CLAIM),  # the marker's entry is gone: claim over the marker
]


@pytest.mark.parametrize(("found", "marked", "act"), READS)
def test_on_read(found: bool, marked: bool, act: Act | None) -> None:
    assert on_read(found, marked) is act


def test_lease_keys_are_hash_tagged_and_bounded() -> None:
    name = lease_key("bloxproxy:", "GET users/v1/users/{156}?x=" + "y" * 5000)
    assert name.startswith("bloxproxy:lease:{") and name.endswith("}")
    tag = name[len("bloxproxy:lease:{") : -1]
    assert len(tag) == 32 and "{" not in tag  # the whole digest is the hash tag
    assert lease_key("bloxproxy:", USER_KEY) != lease_key("bloxproxy:", USER_KEY + "?")


@pytest.mark.parametrize("value", ["0", "0s", "-1s", "soon", "[1]"])
def test_the_wait_must_be_a_duration_above_0(value: str) -> None:
    with pytest.raises(ConfigError, match="cluster_wait"):
        config_mod.load(None, env={"BLOXPROXY_CACHE_REDIS_CLUSTER_WAIT": value})


@pytest.mark.parametrize("value", ["0", "-1s", "soon", "50ms", "99ms"])
def test_a_lease_lives_100ms_at_least(value: str) -> None:
    """Renewed every third of its life: a shorter one would keep the loop busy."""
    with pytest.raises(ConfigError, match="lease_ttl: expected a duration"):
        config_mod.load(None, env={"BLOXPROXY_CACHE_REDIS_LEASE_TTL": value})
    assert config_mod.load(None, env={"BLOXPROXY_CACHE_REDIS_LEASE_TTL": "100ms"})


# -- the lease's scripts on Redis ----------------------------------------------------------


async def next_message(sub: PubSub) -> bytes:
    """The next published message's data (redis-py returns None for a skipped subscribe
    confirmation, so ask until a message comes or a second passes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.0
    while loop.time() < deadline:
        msg = await sub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if msg is not None:
            data: bytes = msg["data"]
            return data
    raise AssertionError("no message within 1 s")


def up() -> bool:
    return True


async def test_claim_renew_release_and_the_word(redis_client: aioredis.Redis) -> None:
    leases = Leases(redis_client, "t:", ttl=1.2, wait=1.0, listening=up)
    other = Leases(redis_client, "t:", ttl=1.2, wait=1.0, listening=up)
    name = lease_key("t:", "k")
    mine = await leases.claim(name)
    assert mine.claim is Claim.ACQUIRED and mine.token
    theirs = await other.claim(name)
    assert theirs.claim is Claim.HELD and 1.1 < theirs.pttl <= 1.2  # how long it has left
    await redis_client.pexpire(name, 600)
    renewing = leases.renewing(mine)  # renews every ttl/3: at 0.4 s
    await asyncio.sleep(0.5)
    renewing.cancel()
    assert await redis_client.pttl(name) > 800  # renewed: it had 100 ms left
    # A release with another token leaves the lease alone, but the word still goes out.
    async with redis_client.pubsub() as sub:
        await sub.subscribe(leases.channel)
        await other.done(name, "not-the-token", Wake.STORED)
        assert await redis_client.get(name) == mine.token.encode()
        await leases.done(name, mine.token, Wake.STORED)
        # released into the "stored" marker, for a second
        assert await redis_client.get(name) == b"!stored"
        assert 900 < await redis_client.pttl(name) <= STORED_MARK_MS
        words = [await next_message(sub), await next_message(sub)]
    assert words == [f"stored {name}".encode()] * 2
    # a claim meeting the marker is told to read L2 again; one taking it over leads
    assert (await other.claim(name)).claim is Claim.STORED
    taken = await other.claim(name, take_mark=True)
    assert taken.claim is Claim.ACQUIRED
    assert (await leases.claim(name, take_mark=True)).claim is Claim.HELD  # not twice
    # a lease given up (not stored) is deleted: the next claim leads
    await other.done(name, taken.token, Wake.GONE)
    assert await redis_client.exists(name) == 0


async def test_a_lease_without_expiry_is_held_not_ours(redis_client: aioredis.Redis) -> None:
    leases = Leases(redis_client, "t:", ttl=1.0, wait=1.0, listening=up)
    await redis_client.set("t:lease:{x}", "set-by-hand")  # no PX: PTTL says -1
    got = await leases.claim("t:lease:{x}")
    assert (got.claim, got.pttl) == (Claim.HELD, 0.0)  # waited for as one lease TTL


async def test_a_batchs_leases_in_one_write_each(redis_client: aioredis.Redis) -> None:
    leases = Leases(redis_client, "t:", ttl=1.2, wait=1.0, listening=up)
    names = [lease_key("t:", f"entity {i}") for i in range(3)]
    await redis_client.set(names[1], "another-replica", px=5000)
    got = await leases.claim_many(names)
    assert [g.claim for g in got] == [Claim.ACQUIRED, Claim.HELD, Claim.ACQUIRED]
    assert 4.9 < got[1].pttl <= 5.0
    for name in (names[0], names[2]):
        await redis_client.pexpire(name, 600)
    renewing = leases.renewing(*got)  # the two it holds, together, at 0.4 s
    await asyncio.sleep(0.5)
    renewing.cancel()
    assert [await redis_client.pttl(n) > 800 for n in names] == [True, True, True]
    assert await redis_client.get(names[1]) == b"another-replica"  # not renewed: not ours
    async with redis_client.pubsub() as sub:
        await sub.subscribe(leases.channel)
        pipe = redis_client.pipeline(transaction=False)
        for g in got:
            await leases.queue_done(pipe, g.lease, g.token, Wake.STORED)
        await pipe.execute()
        words = {await next_message(sub) for _ in names}
    assert words == {f"stored {n}".encode() for n in names}
    assert [await redis_client.get(n) for n in names] == [
        b"!stored",
        b"another-replica",
        b"!stored",
    ]
    down = Leases(redis_client, "t:", ttl=1.0, wait=1.0, listening=lambda: False)
    assert {g.claim for g in await down.claim_many(names)} == {Claim.DOWN}


async def test_the_word_wakes_registered_waiters_only() -> None:
    leases = Leases(aioredis.Redis(), "t:", ttl=1.0, wait=1.0, listening=up)
    a, b = leases.interest("t:lease:{a}"), leases.interest("t:lease:{b}")
    for junk in (b"", b"stored", b"nonsense t:lease:{a}", b"lost t:lease:{a}", 7, b"\xff {a}"):
        leases.on_message(junk)  # hostile or foreign messages change nothing
    assert not a.done() and leases.waiting == 2
    leases.on_message("gone t:lease:{a}")
    assert a.result() is Wake.GONE and not b.done()
    leases.on_lost()
    assert b.result() is Wake.LOST and leases.waiting == 0


async def test_a_failed_claim_is_down_and_feeds_the_back_off() -> None:
    seen: list[BaseException] = []
    nowhere = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    try:
        leases = Leases(nowhere, "t:", ttl=1.0, wait=1.0, listening=up, failed=seen.append)
        assert (await leases.claim("t:lease:{x}")).claim is Claim.DOWN
        claims = await leases.claim_many(["t:lease:{x}", "t:lease:{y}"])
        assert [c.claim for c in claims] == [Claim.DOWN, Claim.DOWN]
        assert len(seen) == 2  # SharedCache counts it with its own failures (one incident)
    finally:
        await nowhere.aclose()


async def test_no_subscription_means_no_claim() -> None:
    leases = Leases(aioredis.Redis(), "t:", ttl=1.0, wait=1.0, listening=lambda: False)
    assert (await leases.claim("t:lease:{x}")).claim is Claim.DOWN  # not even a command


# -- two replicas --------------------------------------------------------------------------


async def replicas(make_proxy: ProxyFactory, url: str, **env: str) -> tuple[Client, Client]:
    env = {"BLOXPROXY_CACHE_REDIS_URL": url, "BLOXPROXY_RETRIES_ATTEMPTS": "1", **env}
    a, b = await make_proxy(**env), await make_proxy(**env)
    await listening(a)
    await listening(b)
    return a, b


def leases_of(client: Client) -> Leases:
    leases = fetcher_of(client).leases
    assert leases is not None
    return leases


def hold(fake: FakeRoblox, seconds: float, path: str = "/v1/users/156") -> None:
    """The fake holds the next answer for ``path`` ``seconds`` (a real wait)."""
    fake.script("users", path, [Fault(delay=seconds)])


async def herd(a: Client, b: Client, n: int, path: str = USER) -> list[Answer]:
    return await asyncio.gather(*(get((a, b)[i % 2], path) for i in range(n)))


async def test_a_herd_on_two_replicas_is_one_upstream_call(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox, redis_client: aioredis.Redis
) -> None:
    a, b = await replicas(make_proxy, redis_url)
    hold(fake, 0.2)
    answers = await herd(a, b, 60)
    assert users_get_count(fake) == 1
    assert {x.status for x in answers} == {200}
    assert len({x.body for x in answers}) == 1  # every answer the leader's
    results = [x.x_cache for x in answers]
    assert results.count("MISS") == 1 and results.count("COALESCED") == 59
    # the other replica's answers came from L2, woken by the word
    other = answers[(results.index("MISS") + 1) % 2 :: 2]
    assert all("another replica" in x.headers["Cache-Status"] for x in other)
    await settle(a)
    await settle(b)
    assert await redis_client.get(LEASE) == b"!stored"  # released, into the marker
    assert leases_of(a).waiting == leases_of(b).waiting == 0
    leader, waiter = (a, b) if results.index("MISS") % 2 == 0 else (b, a)
    assert leases_of(leader).counts == {"led": 1}  # one key, one outcome per replica
    assert leases_of(waiter).counts == {"waited": 1}
    async with waiter.get("/_bloxproxy/metrics") as resp:
        text = await resp.text()
    assert 'bloxproxy_cluster_coalescing_total{outcome="waited"} 1.0' in text


async def test_off_each_replica_asks_once(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox
) -> None:
    a, b = await replicas(make_proxy, redis_url, BLOXPROXY_CACHE_REDIS_CLUSTER_COALESCING="false")
    assert fetcher_of(a).leases is None
    hold(fake, 0.2)
    answers = await herd(a, b, 20)
    assert {x.status for x in answers} == {200}
    assert users_get_count(fake) == 2  # per process, as before


async def test_waiters_issue_no_redis_command_while_waiting(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox, redis_client: aioredis.Redis
) -> None:
    a, b = await replicas(make_proxy, redis_url)
    hold(fake, 0.6)
    running = asyncio.ensure_future(herd(a, b, 20))
    await eventually(lambda: leases_of(a).waiting + leases_of(b).waiting == 1)
    before = await redis_client.info("commandstats")
    await asyncio.sleep(0.25)  # both replicas mid-herd: one asking, one waiting
    after = await redis_client.info("commandstats")
    changed = {k: v["calls"] - before.get(k, {"calls": 0})["calls"] for k, v in after.items()}
    assert {k: n for k, n in changed.items() if n} == {"cmdstat_info": 1}  # only ours
    answers = await running
    assert {x.status for x in answers} == {200} and users_get_count(fake) == 1


async def test_a_cancelled_leader_hands_over_to_a_waiter(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox
) -> None:
    a, b = await replicas(make_proxy, redis_url)
    hold(fake, 2.0)
    lead = asyncio.ensure_future(get(a, USER))
    await eventually(lambda: users_get_count(fake) == 1)  # a's call is at the fake
    follow = asyncio.ensure_future(get(b, USER))
    await eventually(lambda: leases_of(b).waiting == 1)
    loop = asyncio.get_running_loop()
    began = loop.time()
    for task in fetcher_of(a).tasks():
        task.cancel()  # a's replica stops mid-fetch: its lease goes with a word
    answer = await follow
    assert (answer.status, answer.x_cache) == (200, "MISS")  # b took over
    assert leases_of(b).counts == {"took_over": 1}
    assert loop.time() - began < 0.5  # at the word, not at the lease's expiry (3 s)
    assert users_get_count(fake) == 2  # one more call, no more
    await asyncio.gather(lead, return_exceptions=True)


async def test_a_dead_leader_is_taken_over_at_its_lease_expiry(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox, redis_client: aioredis.Redis
) -> None:
    _, b = await replicas(make_proxy, redis_url)
    # A replica that claimed the key and died: no renewals, no word.
    await redis_client.set(LEASE, "dead-replica", px=300)
    loop = asyncio.get_running_loop()
    began = loop.time()
    answer = await get(b, USER)
    assert (answer.status, answer.x_cache) == (200, "MISS")
    assert 0.28 <= loop.time() - began < 1.5
    assert users_get_count(fake) == 1
    assert leases_of(b).counts == {"took_over": 1}
    await settle(b)
    assert await redis_client.exists("bloxproxy:" + USER_KEY)


async def test_past_the_wait_deadline_the_fallback_is_stored(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox, redis_client: aioredis.Redis
) -> None:
    _, b = await replicas(make_proxy, redis_url, BLOXPROXY_CACHE_REDIS_CLUSTER_WAIT="200ms")
    await redis_client.set(LEASE, "a-slow-replica", px=5000)  # alive, but slow
    async with redis_client.pubsub() as sub:
        await sub.subscribe("bloxproxy:coalesce")
        loop = asyncio.get_running_loop()
        began = loop.time()
        answer = await get(b, USER)
        assert (answer.status, answer.x_cache) == (200, "MISS")
        assert 0.19 <= loop.time() - began < 1.0
        await settle(b)
        assert await redis_client.exists("bloxproxy:" + USER_KEY)  # stored
        assert await next_message(sub) == f"stored {LEASE}".encode()  # and said
    assert await redis_client.get(LEASE) == b"a-slow-replica"  # not its lease to free
    assert users_get_count(fake) == 1


async def test_a_leaders_failure_is_not_handed_to_the_waiters(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox, redis_client: aioredis.Redis
) -> None:
    """Roblox fails the leader's call (nothing stored): the word says "empty", and the
    waiting replica asks for itself instead of waiting out its deadline."""
    a, b = await replicas(make_proxy, redis_url)
    fake.script("users", "/v1/users/156", [Fault(status=500, delay=0.3)])
    lead = asyncio.ensure_future(get(a, USER))
    await eventually(lambda: users_get_count(fake) == 1)
    follow = asyncio.ensure_future(get(b, USER))
    await eventually(lambda: leases_of(b).waiting == 1)
    assert (await lead).status >= 500
    answer = await follow
    assert (answer.status, answer.x_cache) == (200, "MISS")
    assert users_get_count(fake) == 2
    assert leases_of(b).counts == {"fallback": 1}
    await settle(b)
    assert await redis_client.exists("bloxproxy:" + USER_KEY)  # b's answer is stored


async def test_waiters_are_served_stale_while_another_replica_refreshes(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox, clock: FakeClock
) -> None:
    a, b = await replicas(make_proxy, redis_url)
    first = await get(a, USER)  # ttl 10m, swr 1m, sie 1h
    await settle(a)
    assert (await get(b, USER)).x_cache == "HIT"  # b has it in L1 too
    clock.advance(15 * 60)  # past stale-while-revalidate, inside stale-if-error
    hold(fake, 0.4)
    lead = asyncio.ensure_future(get(a, USER))
    await eventually(lambda: users_get_count(fake) == 2)  # a is refreshing
    loop = asyncio.get_running_loop()
    began = loop.time()
    stale = await get(b, USER)
    assert (stale.status, stale.x_cache, stale.body) == (200, "STALE", first.body)
    assert "another replica" in stale.headers["Cache-Status"]
    assert loop.time() - began < 0.3  # at once, not after the leader's call
    fetcher = fetcher_of(b)
    assert USER_KEY in fetcher._elsewhere
    assert (await get(b, USER)).x_cache == "STALE"  # again, without a claim
    fresh = await lead
    assert fresh.x_cache == "MISS"
    await eventually(lambda: USER_KEY not in fetcher._elsewhere)  # the word came
    answer = await get(b, USER)
    assert answer.x_cache == "HIT" and answer.headers["ETag"] == fresh.headers["ETag"]
    assert users_get_count(fake) == 2


@pytest.mark.redis  # starts its own redis-server
async def test_redis_killed_during_a_herd_fails_nothing(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    server = RedisServer()
    server.start()
    try:
        a, b = await replicas(make_proxy, server.url)
        hold(fake, 0.5)
        running = asyncio.ensure_future(herd(a, b, 40))
        await eventually(lambda: leases_of(a).waiting + leases_of(b).waiting == 1)
        server.kill()
        answers = await running
        assert {x.status for x in answers} == {200}
        assert len({x.body for x in answers}) == 1
        assert users_get_count(fake) <= 2  # at most one per process
        # Redis still down: a new herd coalesces per process, and nothing fails
        shared = fetcher_of(b).shared
        assert shared is not None
        await eventually(lambda: not shared.listening.is_set())
        hold(fake, 0.2, "/v1/users/1")
        again = await herd(a, b, 20, "/v1/users/1")
        assert {x.status for x in again} == {200}
        assert users_get_count(fake, 1) == 2
        for client in (a, b):
            await settle(client)
    finally:
        server.stop()


async def test_a_key_purged_right_after_its_fill_is_coalesced_again(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox, redis_client: aioredis.Redis
) -> None:
    a, b = await replicas(make_proxy, redis_url)
    hold(fake, 0.1)
    await herd(a, b, 10)
    assert await redis_client.get(LEASE) == b"!stored"  # the fill's marker, for a second
    await fetcher_of(a).purge_key(USER_KEY)  # L2, both L1s
    await eventually(lambda: USER_KEY not in fetcher_of(b).l1)
    hold(fake, 0.2)
    answers = await herd(a, b, 20)
    assert {x.status for x in answers} == {200}
    # the marker's entry was gone: one replica claimed over it, the other waited
    assert [x.x_cache for x in answers].count("MISS") == 1
    assert users_get_count(fake) == 2
    both = [leases_of(a).counts, leases_of(b).counts]
    assert sum(c.get("led", 0) for c in both) == 2  # the fill, and the claim over its marker
    assert sum(c.get("waited", 0) for c in both) == 2


# -- batches, per entity -------------------------------------------------------------------


def batch_calls(fake: FakeRoblox) -> list[list[int]]:
    """The ids of every batch call to users' POST /v1/users, in order."""
    return [
        sorted(orjson.loads(r.body)["userIds"])
        for r in fake.requests
        if (r.method, r.service, r.path) == ("POST", "users", "/v1/users")
    ]


async def times(n: int, client: Client, path: str) -> list[Answer]:
    return await asyncio.gather(*(get(client, path) for _ in range(n)))


def ids_of(answer: Answer) -> list[int]:
    return sorted(u["id"] for u in orjson.loads(answer.body)["data"])


async def test_batches_coalesce_per_entity_across_replicas(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox
) -> None:
    a, b = await replicas(make_proxy, redis_url)
    fake.script("users", "/v1/users", [Fault(delay=0.3)], method="POST")
    first = asyncio.ensure_future(times(5, a, "/v1/users?ids=1,156"))
    await eventually(lambda: len(batch_calls(fake)) == 1)  # a's batch is at the fake
    # b wants 156 (a is asking it) and 2 (nobody is): it asks only 2, and waits for 156
    second = await times(5, b, "/v1/users?ids=156,2")
    assert {x.status for x in second} == {200}
    assert {tuple(ids_of(x)) for x in second} == {(2, 156)}
    assert batch_calls(fake) == [[1, 156], [2]]
    assert leases_of(b).counts == {"led": 1, "waited": 1}  # per entity
    assert {tuple(ids_of(x)) for x in await first} == {(1, 156)}
    # every entity is in L2 now: a third replica's batch of all three is a hit
    c = await make_proxy(BLOXPROXY_CACHE_REDIS_URL=redis_url)
    await listening(c)
    answer = await get(c, "/v1/users?ids=2,1,156")
    assert (answer.status, answer.x_cache, ids_of(answer)) == (200, "HIT", [1, 2, 156])
    assert len(batch_calls(fake)) == 2


async def test_a_batch_whose_leader_gives_up_is_asked_by_the_waiter(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox
) -> None:
    a, b = await replicas(make_proxy, redis_url)
    fake.script("users", "/v1/users", [Fault(delay=2.0)], method="POST")
    lead = asyncio.ensure_future(get(a, "/v1/users?ids=1,156"))
    await eventually(lambda: len(batch_calls(fake)) == 1)
    follow = asyncio.ensure_future(get(b, "/v1/users?ids=1,156"))
    await eventually(lambda: leases_of(b).waiting == 2)  # one per entity
    loop = asyncio.get_running_loop()
    began = loop.time()
    await fetcher_of(a).batcher.close()  # a's replica stops mid-call: "gone" for both ids
    answer = await follow
    assert (answer.status, ids_of(answer)) == (200, [1, 156])
    assert loop.time() - began < 0.5  # at the word, not the lease's expiry
    assert batch_calls(fake) == [[1, 156], [1, 156]]
    assert leases_of(b).counts == {"took_over": 2}  # each entity's lease claimed again
    await asyncio.gather(lead, return_exceptions=True)


async def test_an_entity_whose_leader_died_is_taken_over_at_its_lease_expiry(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox, redis_client: aioredis.Redis
) -> None:
    _, b = await replicas(make_proxy, redis_url)
    assert (await get(b, "/v1/users?ids=2")).status == 200  # to learn how entities are keyed
    await settle(b)
    [two] = [k.decode() async for k in redis_client.scan_iter("bloxproxy:POST users*")]
    assert two.endswith("id=2")
    entity = two.removeprefix("bloxproxy:")[: -len("2")] + "156"
    await redis_client.set(lease_key("bloxproxy:", entity), "dead-replica", px=300)
    loop = asyncio.get_running_loop()
    began = loop.time()
    answer = await get(b, "/v1/users?ids=1,156")
    assert (answer.status, ids_of(answer)) == (200, [1, 156])
    assert 0.28 <= loop.time() - began < 1.5
    assert batch_calls(fake) == [[2], [1], [156]]  # 1 at once; 156 once its lease expired
    assert leases_of(b).counts == {"led": 2, "took_over": 1}
    await settle(b)
    assert await redis_client.exists("bloxproxy:" + entity)


@pytest.mark.redis  # starts its own redis-server
async def test_redis_killed_while_a_batch_waits_fails_nothing(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    server = RedisServer()
    server.start()
    try:
        a, b = await replicas(make_proxy, server.url)
        fake.script("users", "/v1/users", [Fault(delay=0.4)], method="POST")
        lead = asyncio.ensure_future(times(3, a, "/v1/users?ids=1,156"))
        await eventually(lambda: len(batch_calls(fake)) == 1)
        follow = asyncio.ensure_future(times(3, b, "/v1/users?ids=1,156"))
        await eventually(lambda: leases_of(b).waiting == 2)
        server.kill()  # b's waits end (the subscription is gone): it asks itself
        for answers in (await follow, await lead):
            assert {(x.status, tuple(ids_of(x))) for x in answers} == {(200, (1, 156))}
        assert batch_calls(fake) == [[1, 156], [1, 156]]
        # still down: a batch is asked per replica, and answered
        again = await times(2, b, "/v1/users?ids=2")
        assert {x.status for x in again} == {200}
        for client in (a, b):
            await settle(client)
    finally:
        server.stop()


async def test_the_wait_is_at_most_half_the_coalesce_timeout(
    make_proxy: ProxyFactory, redis_url: str
) -> None:
    """Else the waiting requests would give up (504) as the fallback call starts."""
    a, _ = await replicas(make_proxy, redis_url, BLOXPROXY_CACHE_COALESCE_TIMEOUT="2s")
    assert leases_of(a).max_wait == 1.0
    b, _ = await replicas(make_proxy, redis_url, BLOXPROXY_CACHE_REDIS_CLUSTER_WAIT="300ms")
    assert leases_of(b).max_wait == 0.3
