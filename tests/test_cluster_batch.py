"""Batches across replicas (bloxproxy/cache/cluster_batch.py): the pure parts as tables, the
box's scripts on a real Redis, and two replicas whose single lookups go out in one batch."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bloxproxy.appkeys import GUARD
from bloxproxy.cache.batcher import Batch, Batcher, flush_at
from bloxproxy.cache.cluster_batch import (
    Collectors,
    box_item,
    keys,
    merged,
    read_box_item,
    slot_first,
)
from bloxproxy.fake import FakeRoblox, Fault
from bloxproxy.rules import BatchSpec
from bloxproxy.upstream.client import NOBODY, UpstreamRequest
from tests.conftest import FakeClock, ProxyFactory, fetcher_of
from tests.test_cache import Client, get
from tests.test_cache_redis import eventually
from tests.test_cluster_coalesce import batch_calls, ids_of, replicas

U3, U4, U5 = 1_000_003, 1_000_004, 1_000_005  # synthetic users of the fake


def collectors_of(client: Client) -> Collectors:
    collectors = fetcher_of(client).collectors
    assert collectors is not None
    return collectors


# -- the pure parts --------------------------------------------------------------------------


def test_a_variants_lease_and_box_share_one_hash_tag() -> None:
    lease, box, rate = keys("bp:", "POST users /v1/users |excludeBannedUsers=false")
    assert lease.startswith("bp:batch:{") and lease.endswith("}:lease")
    assert box == lease.removesuffix(":lease") + ":box"
    assert rate == lease.removesuffix(":lease") + ":rate"
    other, _, _ = keys("bp:", "POST users /v1/users |excludeBannedUsers=true")
    assert other != lease and len(other) == len(lease)  # bounded, whatever the variant


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (box_item("156", "156"), ("156", "156")),
        (box_item("builderman", "BuilderMan"), ("builderman", "BuilderMan")),
        (b'["1"]', None),  # not a pair
        (b'["1", 1]', None),  # not strings
        (b'["", "x"]', None),  # empty
        (b"{", None),  # not JSON
        (b'{"a": 1}', None),
        (b'["' + b"1" * 600 + b'", "1"]', None),  # longer than any id
        (None, None),
        (7, None),
    ],
)
def test_box_items_are_read_defensively(raw: object, expected: tuple[str, str] | None) -> None:
    assert read_box_item(raw) == expected


@pytest.mark.parametrize(
    ("own", "remote", "cap", "ids", "carried", "left"),
    [
        ({"1": "1"}, [("2", "2"), ("3", "3")], 10, ["1", "2", "3"], ["2", "3"], []),
        ({"1": "1"}, [("1", "1"), ("2", "2")], 10, ["1", "2"], ["1", "2"], []),  # asked once
        ({"1": "1", "2": "2"}, [("3", "3"), ("4", "4")], 3, ["1", "2", "3"], ["3"], ["4"]),
        ({"1": "1"}, [("2", "2"), ("2", "2")], 10, ["1", "2"], ["2"], []),  # twice in the box
        ({}, [("5", "5")], 1, ["5"], ["5"], []),  # a follower that collects after all
    ],
)
def test_remote_ids_join_up_to_the_cap(
    own: dict[str, str],
    remote: list[tuple[str, str]],
    cap: int,
    ids: list[str],
    carried: list[str],
    left: list[str],
) -> None:
    got_ids, got_carried, got_left = merged(own, remote, cap)
    assert (list(got_ids), got_carried, got_left) == (ids, carried, left)


def test_a_follower_goes_after_its_window_whatever_the_limiter() -> None:
    common = {"now": 10.0, "opened": 10.0, "window": 0.005, "size": 1, "cap": 100}
    # busy and no slot for 5 s: a collector keeps filling, a follower goes at 10.005
    assert flush_at(**common, slot_at=15.0, busy=True, deadline=99.0) == 99.0
    assert flush_at(**common, slot_at=15.0, busy=True, deadline=99.0, follower=True) == 10.005
    assert flush_at(**common, slot_at=10.0, busy=False, deadline=10.001, follower=True) == 10.001


@pytest.mark.parametrize(
    ("now", "slot_in", "expected"),
    [
        (10.0, 0.0, 0.95),  # free by the estimate: asked all the same (Redis may say wait)
        (10.0, 0.4, 0.95),  # the slot comes within the lease: waited for, box still open
        (10.0, 0.94, 0.95),  # just within
        (10.0, 0.96, 0.0),  # after the lease: take the box now, the call waits as any
        (10.95, 0.0, 0.0),  # no time left before the take
        (11.2, 0.0, 0.0),  # the lease is over already
    ],
)
def test_a_collector_waits_for_its_slot_only_within_its_lease(
    now: float, slot_in: float, expected: float
) -> None:
    # a lease taken at 10.0 for 1 s, the take 50 ms before its end
    assert slot_first(now, 11.0, slot_in) == pytest.approx(expected)


# -- the scripts on Redis --------------------------------------------------------------------


async def test_lead_join_take_on_redis(redis_client: aioredis.Redis) -> None:
    a = Collectors(redis_client, "t:", lease_ms=1000, grace_ms=500)
    b = Collectors(redis_client, "t:", lease_ms=1000, grace_ms=500)
    token, rate = await a.lead("v")
    assert token and rate == 0.0  # nothing asked yet
    assert await b.lead("v") == ("", 0.0)  # a collects: b follows
    left, leftovers = await b.join("v", {"2": "2", "3": "3"})
    assert 0.9 < left <= 1.0 and leftovers == []
    lease, box, _ = keys("t:", "v")
    assert 1400 < await redis_client.pttl(box) <= 1500  # the lease's time plus the grace
    assert await a.take("v", token, 1) == [("2", "2"), ("3", "3")]
    assert await redis_client.exists(lease, box) == 0  # taken and released at once
    # no collector any more: a late follower collects itself, with what a dead one left
    await redis_client.rpush(box, box_item("9", "9"), b"junk")
    assert await b.join("v", {"4": "4"}) == (-1.0, [("9", "9")])
    assert await redis_client.exists(box) == 0
    # a take with a token that is not the lease's leaves the lease alone
    other, rate = await b.lead("v")
    assert other and await a.take("v", "not-the-token", 0) == []
    assert await redis_client.get(lease) == other.encode()
    # every id the two asked counted once, in the cluster's rate (2 s of memory): b's 2 at
    # its join, a's own 1 at its take, b's 1 more at its late join: 4 ids / 2 s, decayed by
    # the moments since (e^-(t/2 s): 1.5 would be half a second, far more than this takes)
    assert 1.5 < rate <= 2.0
    assert (await a.lead("w"))[1] == 0.0  # per variant


async def test_redis_away_means_alone() -> None:
    dead = aioredis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    failures: list[BaseException] = []
    c = Collectors(dead, "t:", lease_ms=1000, grace_ms=500, failed=failures.append)
    assert await c.lead("v") == (None, 0.0)
    assert await c.take("v", "x", 1) == []
    assert await c.join("v", {"1": "1"}) == (-1.0, [])
    assert len(failures) == 3
    assert await Collectors(dead, "t:", 1000, 500, usable=lambda: False).lead("v") == (None, 0.0)
    assert len(failures) == 3  # not even tried while the back-off lasts
    await dead.aclose()


# -- two replicas ----------------------------------------------------------------------------


async def lease_held(redis_client: aioredis.Redis) -> bool:
    return bool([k async for k in redis_client.scan_iter("bloxproxy:batch:*:lease")])


async def test_single_lookups_on_two_replicas_go_out_in_one_batch(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox, redis_client: aioredis.Redis
) -> None:
    """a's second batch waits for its first (in flight, held by the fake) and collects
    meanwhile; b's lookups, opened after, follow it: one call carries a's id and b's."""
    a, b = await replicas(make_proxy, redis_url)
    fake.script("users", "/v1/users", [Fault(delay=0.3)], method="POST")
    first = asyncio.ensure_future(get(a, "/v1/users?ids=1"))
    await eventually(lambda: len(batch_calls(fake)) == 1)
    second = asyncio.ensure_future(get(a, "/v1/users?ids=2"))
    for _ in range(200):  # a's second batch took the collector lease
        if await lease_held(redis_client):
            break
        await asyncio.sleep(0.005)
    followers = await asyncio.gather(*(get(b, f"/v1/users?ids={i}") for i in (U3, U4, U5)))
    assert [(x.status, ids_of(x)) for x in followers] == [(200, [U3]), (200, [U4]), (200, [U5])]
    assert [(x.status, ids_of(x)) for x in (await first, await second)] == [
        (200, [1]),
        (200, [2]),
    ]
    assert batch_calls(fake) == [[1], [2, U3, U4, U5]]
    assert collectors_of(b).joined == 1
    assert collectors_of(a).carried == 3
    # b's answers are what its own calls would have got: ask a third replica, cold
    c = await make_proxy(BLOXPROXY_CACHE_ENABLED="false")
    for x, i in zip(followers, (U3, U4, U5), strict=True):
        assert x.body == (await get(c, f"/v1/users?ids={i}")).body


async def test_a_collector_waits_as_long_as_the_clusters_demand_says(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox
) -> None:
    """The window of a batch comes from the arrival rate of its ids: a has seen none, but
    the cluster has just asked ten (b's batch, in the cluster's rate in Redis), so a's batch
    waits the long window for companions and its next id rides along: one call, not two
    (before, a went after its 5 ms window, as if it were alone)."""
    a, b = await replicas(make_proxy, redis_url)
    ten = ",".join(str(1_000_100 + i) for i in range(10))
    assert (await get(b, f"/v1/users?ids={ten}")).status == 200  # the cluster asks 10 ids
    first = asyncio.ensure_future(get(a, f"/v1/users?ids={U3}"))
    await asyncio.sleep(0.05)  # well inside the long window (250 ms), far past the short
    second = await get(a, f"/v1/users?ids={U4}")
    assert [(x.status, ids_of(x)) for x in (await first, second)] == [(200, [U3]), (200, [U4])]
    assert batch_calls(fake)[1:] == [[U3, U4]]


class WallClock(FakeClock):
    """Real time: a shared budget's slots are timed by Redis's own clock (``TIME``), which
    a test cannot move, so a test that waits for one runs the proxy on real time."""

    def __call__(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@pytest.mark.parametrize("clock", [WallClock], indirect=True)
async def test_a_collector_holds_its_box_open_while_it_waits_for_its_slot(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox
) -> None:
    """Slot first: b has just taken the shared budget's slot, which a does not know yet;
    a's batch waits for the next slot (0.2 s on) before it takes its box, holding
    its collector lease, so b's lookups asked meanwhile ride in a's call: one call, not
    one per replica (before, a took its box at once and waited for the slot in the call,
    and b's lookups found no lease and went in a call of b's own)."""
    a, b = await replicas(
        make_proxy,
        redis_url,
        BLOXPROXY_LIMITS_UPSTREAM_SHARED="true",
        BLOXPROXY_LIMITS_UPSTREAM_RATE="5",  # a new budget starts paced: a slot per 0.2 s
    )
    assert (await get(b, "/v1/users/156")).status == 200  # b takes the slot
    first = asyncio.ensure_future(get(a, "/v1/users?ids=2"))
    limiter = a.server.app[GUARD].limiter
    await eventually(lambda: any(row.waiting for row in limiter.rows()))  # a waits for a slot
    followers = await asyncio.gather(*(get(b, f"/v1/users?ids={i}") for i in (U3, U4)))
    assert [(x.status, ids_of(x)) for x in followers] == [(200, [U3]), (200, [U4])]
    answer = await first
    assert (answer.status, ids_of(answer)) == (200, [2])
    assert batch_calls(fake) == [[2, U3, U4]]
    assert collectors_of(a).carried == 2
    # the wait was a's own: no request was refused, and the slot a waited for was its call's
    assert sum(row.refusals for row in limiter.rows()) == 0
    assert fake.total == 2


async def test_a_collector_that_dies_with_the_box_is_taken_over(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox
) -> None:
    """b's ids are in a's box when a's replica stops: once a's lease and one lease TTL have
    passed without a word, b claims them and asks them itself."""
    a, b = await replicas(
        make_proxy,
        redis_url,
        BLOXPROXY_CACHE_REDIS_LEASE_TTL="200ms",
        BLOXPROXY_CACHE_REDIS_COLLECT_FOR="300ms",
    )
    fake.script("users", "/v1/users", [Fault(delay=2.0)], method="POST")
    first = asyncio.ensure_future(get(a, "/v1/users?ids=1"))
    await eventually(lambda: len(batch_calls(fake)) == 1)
    second = asyncio.ensure_future(get(a, "/v1/users?ids=2"))
    await asyncio.sleep(0.05)  # a's second batch collects (its first is held for 2 s)
    loop = asyncio.get_running_loop()
    began = loop.time()
    follow = asyncio.ensure_future(get(b, f"/v1/users?ids={U3}"))
    await eventually(lambda: collectors_of(b).joined == 1)
    await fetcher_of(a).batcher.close()  # a stops before its second batch went
    answer = await follow
    assert (answer.status, ids_of(answer)) == (200, [U3])
    assert 0.2 <= loop.time() - began < 1.5
    assert batch_calls(fake) == [[1], [U3]]
    await asyncio.gather(first, second, return_exceptions=True)


async def test_off_each_replica_batches_alone(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox
) -> None:
    a, b = await replicas(make_proxy, redis_url, BLOXPROXY_CACHE_REDIS_CLUSTER_BATCHES="false")
    assert fetcher_of(a).collectors is None
    fake.script("users", "/v1/users", [Fault(delay=0.3)], method="POST")
    first = asyncio.ensure_future(get(a, "/v1/users?ids=1"))
    await eventually(lambda: len(batch_calls(fake)) == 1)
    second = asyncio.ensure_future(get(a, "/v1/users?ids=2"))
    await asyncio.sleep(0.05)
    await asyncio.gather(*(get(b, f"/v1/users?ids={i}") for i in (U3, U4, U5)))
    await asyncio.gather(first, second)
    assert batch_calls(fake) == [[1], [U3, U4, U5], [2]]


async def test_a_batch_told_to_follow_goes_at_once() -> None:
    """A batch waiting behind its variant's batch in flight goes as soon as it is told it
    follows another replica's collector (its ids must reach that one before it goes)."""
    sent: list[list[str]] = []
    gate = asyncio.Event()

    async def run(batch: Batch) -> dict[str, object]:
        sent.append(sorted(batch.ids))
        await gate.wait()
        return {norm: b"{}" for norm in batch.ids}

    opened: list[Batch] = []
    batcher = Batcher(run, on_open=opened.append)
    loop = asyncio.get_running_loop()
    variant = UpstreamRequest("users", "POST", "/v1/users")
    spec = BatchSpec("users", "POST", "/v1/users", "userIds", 200)

    def ask(i: int) -> asyncio.Future[object]:
        return batcher.ask(
            spec, "v", variant, None, f"u:{i}", str(i), str(i), NOBODY, loop.time() + 30
        )

    first = ask(1)
    await eventually(lambda: sent == [["1"]])  # in flight, held
    second = ask(2)
    await asyncio.sleep(0.05)
    assert sent == [["1"]]  # waits behind the first, as a collector would
    batcher.follow(opened[-1])
    await asyncio.sleep(0)
    assert sent == [["1"], ["2"]]
    gate.set()
    assert await asyncio.gather(first, second) == [b"{}", b"{}"]
    await batcher.close()


@pytest.mark.parametrize("topology", ["sentinel", "cluster"])
async def test_one_call_for_two_replicas_on_sentinel_and_cluster(
    make_proxy: ProxyFactory, fake: FakeRoblox, topology: str, request: pytest.FixtureRequest
) -> None:
    """Cluster coalescing and batches across replicas on the other topologies: their lease,
    box and word keys are hash-tagged (one slot each) and their scripts run where their
    keys are."""
    url = request.getfixturevalue(f"{topology}_url")
    a, b = await replicas(make_proxy, url)
    base = 1_000_100 if topology == "sentinel" else 1_000_200
    # a herd for one cold key, split over the replicas: one upstream call
    fake.script("users", f"/v1/users/{base}", [Fault(delay=0.2)])
    herd = await asyncio.gather(*(get((a, b)[i % 2], f"/v1/users/{base}") for i in range(20)))
    assert {x.status for x in herd} == {200}
    assert fake.count("users", f"/v1/users/{base}") == 1
    # single lookups on both replicas while a's batch collects: one batch call
    fake.script("users", "/v1/users", [Fault(delay=0.3)], method="POST")
    first = asyncio.ensure_future(get(a, f"/v1/users?ids={base + 1}"))
    await eventually(lambda: len(batch_calls(fake)) == 1)
    second = asyncio.ensure_future(get(a, f"/v1/users?ids={base + 2}"))
    await asyncio.sleep(0.05)
    follow = await get(b, f"/v1/users?ids={base + 3}")
    assert (follow.status, ids_of(follow)) == (200, [base + 3])
    await asyncio.gather(first, second)
    assert batch_calls(fake) == [[base + 1], [base + 2, base + 3]]
