"""Entities, not URLs, and micro-batching (bloxproxy.cache.entities, .batcher).

The pure parts are tables: how a request splits into its variant and ids, how a batch call
is made, how an answer splits into items and how an answer is assembled, and when a batch
goes. Then the real proxy in front of the fake Roblox (and a real Redis for L2): batches
assembled from cached entries plus one call for the rest, concurrent single lookups merged
into one call with each caller answered exactly as its own call would have been, per-item
TTLs, absent ids, spellings of names, and the failures of a merged batch.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bloxproxy.cache import entities
from bloxproxy.cache.batcher import Batch, Batcher, arrival_rate, flush_at, window_for
from bloxproxy.fake import FakeRoblox, Fault
from bloxproxy.fake import answer as fake_answer
from bloxproxy.rules import BatchSpec
from bloxproxy.upstream.client import NOBODY, UpstreamRequest
from tests.conftest import FakeClock, ProxyFactory, fetcher_of

Client = TestClient[web.Request, web.Application]

HEADSHOTS = BatchSpec(
    "thumbnails", "GET", "/v1/users/avatar-headshot", "userIds", 100, key="targetId"
)
USERS = BatchSpec("users", "POST", "/v1/users", "userIds", 200)
NAMES = BatchSpec(
    "users",
    "POST",
    "/v1/usernames/users",
    "usernames",
    100,
    key="requestedUsername",
    match="case_insensitive",
    echo=True,
)


def get(query: str) -> UpstreamRequest:
    return UpstreamRequest("thumbnails", "GET", "/v1/users/avatar-headshot", query)


def post(spec: BatchSpec, body: object) -> UpstreamRequest:
    return UpstreamRequest(spec.service, "POST", spec.path, "", (), orjson.dumps(body), True)


# -- splitting a request -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "ids", "rest"),
    [
        ("userIds=156&size=150x150", ("156",), "size=150x150"),
        ("size=150x150&userIds=1,156", ("1", "156"), "size=150x150"),
        ("userIds=1&userIds=156&format=Png", ("1", "156"), "format=Png"),  # repeated keys
        ("userIds=156,1", ("156", "1"), ""),  # the caller's order kept
    ],
)
def test_a_get_splits_into_variant_and_ids(query: str, ids: tuple[str, ...], rest: str) -> None:
    ask = entities.ask_of(HEADSHOTS, get(query))
    assert ask is not None
    assert (ask.ids, ask.norm, ask.variant.query) == (ids, ids, rest)


@pytest.mark.parametrize(
    "query",
    [
        "size=150x150",  # no ids
        "userIds=",  # an empty one
        "userIds=1,,2",
        "userIds=0",  # not a Roblox id
        "userIds=-5",
        "userIds=abc",
        "userIds=1,1",  # an id twice: Roblox's own business
        "userIds=" + ",".join(str(i) for i in range(1, 102)),  # over the cap
        "userIds=1%FF",  # not UTF-8
    ],
)
def test_requests_entities_cannot_answer_exactly_are_not_split(query: str) -> None:
    assert entities.ask_of(HEADSHOTS, get(query)) is None


def test_other_requests_are_not_split() -> None:
    other = UpstreamRequest("thumbnails", "GET", "/v1/games/icons", "universeIds=1")
    assert entities.ask_of(HEADSHOTS, other) is None
    assert entities.ask_of(USERS, post(USERS, {"userIds": ["1"]})) is None  # strings
    assert entities.ask_of(USERS, post(USERS, {"userIds": [1.5]})) is None
    assert entities.ask_of(USERS, post(USERS, [1, 2])) is None  # not an object
    bad = UpstreamRequest("users", "POST", "/v1/users", "", (), b"{nope", True)
    assert entities.ask_of(USERS, bad) is None


def test_a_post_splits_into_a_canonical_variant() -> None:
    a = entities.ask_of(USERS, post(USERS, {"userIds": [156, 1], "excludeBannedUsers": False}))
    b = entities.ask_of(USERS, post(USERS, {"excludeBannedUsers": False, "userIds": [7]}))
    assert a is not None and b is not None
    assert a.ids == ("156", "1") and b.ids == ("7",)
    assert a.variant == b.variant  # one variant, whatever the spelling
    assert a.variant.body == b'{"excludeBannedUsers":false}'


def test_names_match_case_insensitively_and_are_kept_as_spelled() -> None:
    ask = entities.ask_of(NAMES, post(NAMES, {"usernames": ["Builderman", "ROBLOX"]}))
    assert ask is not None
    assert (ask.ids, ask.norm) == (("Builderman", "ROBLOX"), ("builderman", "roblox"))
    twice = post(NAMES, {"usernames": ["builderman", "BUILDERMAN"]})
    assert entities.ask_of(NAMES, twice) is None
    assert entities.ask_of(NAMES, post(NAMES, {"usernames": ["a b"]})) is None


# -- making a batch call, splitting its answer, assembling an answer --------------------------


def test_a_batch_call_carries_the_ids_and_the_variant() -> None:
    ask = entities.ask_of(HEADSHOTS, get("size=150x150&userIds=1&format=Png"))
    assert ask is not None
    req = entities.batch_request(HEADSHOTS, ask.variant, ["1", "156", "7"])
    assert req.query == "userIds=1,156,7&size=150x150&format=Png"
    repeat = BatchSpec(**{**_fields(HEADSHOTS), "list_format": "repeat"})
    assert entities.batch_request(repeat, ask.variant, ["1", "2"]).query == (
        "userIds=1&userIds=2&size=150x150&format=Png"
    )
    body = entities.ask_of(USERS, post(USERS, {"userIds": [1], "excludeBannedUsers": True}))
    assert body is not None
    req = entities.batch_request(USERS, body.variant, ["1", "156"])
    assert orjson.loads(req.body or b"") == {"excludeBannedUsers": True, "userIds": [1, 156]}
    assert ("Content-Type", "application/json") in req.headers


def _fields(spec: BatchSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in spec.__dataclass_fields__}


def test_an_answer_splits_into_items_per_id() -> None:
    body = b'{"data":[{"targetId":156,"state":"Completed"},{"targetId":1,"state":"Pending"}]}'
    assert entities.items_of(HEADSHOTS, body) == {
        "156": b'{"targetId":156,"state":"Completed"}',
        "1": b'{"targetId":1,"state":"Pending"}',
    }
    assert entities.items_of(HEADSHOTS, b'{"data":[]}') == {}
    for bad in (b"<html>", b'{"data":{}}', b'{"data":[{"id":1}]}', b'{"data":[1]}', b"[]"):
        assert entities.items_of(HEADSHOTS, bad) is None, bad
    names = b'{"data":[{"requestedUsername":"BuilderMan","id":156}]}'
    assert entities.items_of(NAMES, names) == {
        "builderman": b'{"requestedUsername":"BuilderMan","id":156}'
    }


def test_an_answer_is_assembled_in_the_order_asked_without_the_absent() -> None:
    ask = entities.ask_of(HEADSHOTS, get("userIds=156,999,1"))
    assert ask is not None
    body = entities.assemble(HEADSHOTS, ask, [b'{"targetId":156}', None, b'{"targetId":1}'])
    assert body == b'{"data":[{"targetId":156},{"targetId":1}]}'
    names = entities.ask_of(NAMES, post(NAMES, {"usernames": ["BUILDERMAN"]}))
    assert names is not None
    echoed = entities.assemble(NAMES, names, [b'{"requestedUsername":"builderman","id":156}'])
    assert orjson.loads(echoed) == {"data": [{"requestedUsername": "BUILDERMAN", "id": 156}]}


# -- when a batch goes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "slot_at", "busy", "deadline", "expected"),
    [
        (100, 5.0, True, 99.0, 10.0),  # full: now, slot or not, busy or not
        (1, 10.0, False, 99.0, 10.005),  # a slot is free: once the window has passed
        (1, 10.5, False, 99.0, 10.5),  # no slot yet: it keeps filling until there is one
        (1, 10.0, True, 99.0, 99.0),  # the variant's last batch still out: it keeps filling
        (1, 12.0, False, 12.0, 12.0),  # a slot just by the earliest caller's deadline
        (1, 15.0, False, 12.0, 10.005),  # none in time: it goes, and the limiter says so
        (1, 10.0, True, 10.001, 10.001),
    ],
)
def test_flush_at(size: int, slot_at: float, busy: bool, deadline: float, expected: float) -> None:
    got = flush_at(
        now=10.0,
        opened=10.0,
        window=0.005,
        size=size,
        cap=100,
        slot_at=slot_at,
        busy=busy,
        deadline=deadline,
    )
    assert got == pytest.approx(expected)


async def test_a_batch_goes_when_the_slot_estimated_at_its_opening_comes() -> None:
    """The limiter's next slot is estimated once: with others always in its line it is never
    "now", and a batch that polled for it would wait out its callers' deadline (30 s)."""
    sent: list[list[str]] = []

    async def run(batch: Batch) -> dict[str, object]:
        sent.append(sorted(batch.ids))
        return {norm: b"{}" for norm in batch.ids}

    batcher = Batcher(run, slot_in=lambda scope: 0.05)  # a line that never empties
    variant = UpstreamRequest("users", "POST", "/v1/users")
    loop = asyncio.get_running_loop()
    asked = [
        batcher.ask(USERS, "v", variant, None, f"u:{i}", str(i), str(i), NOBODY, loop.time() + 30)
        for i in (1, 2)
    ]
    assert await asyncio.wait_for(asyncio.gather(*asked), 5) == [b"{}", b"{}"]
    assert sent == [["1", "2"]]
    await batcher.close()


@pytest.mark.parametrize(
    ("rate", "last", "now", "expected"),
    [
        (0.0, 10.0, 10.0, 0.5),  # a first arrival: 1 / tau
        (0.5, 10.0, 10.0, 1.0),  # two at once
        (4.0, 10.0, 12.0, 4.0 * math.exp(-1) + 0.5),  # one tau later: the past counts 1/e
        (4.0, 10.0, 9.0, 4.5),  # a clock that went back counts as no time
        (4.0, 10.0, 110.0, 0.5),  # long quiet: as good as a first arrival
    ],
)
def test_arrival_rate(rate: float, last: float, now: float, expected: float) -> None:
    assert arrival_rate(rate, last, now, tau=2.0) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("rate", "window", "max_window", "expected"),
    [
        (0.0, 0.005, 0.25, 0.005),  # nobody else lately: a lone lookup pays the short window
        (3.9, 0.005, 0.25, 0.005),  # less than one companion expected within max_window
        (4.0, 0.005, 0.25, 0.25),  # one expected: wait for it
        (400.0, 0.005, 0.25, 0.25),  # many: the cap flushes it sooner anyway
        (400.0, 0.005, 0.005, 0.005),  # max_window off (equal to window)
    ],
)
def test_window_for(rate: float, window: float, max_window: float, expected: float) -> None:
    assert window_for(rate, window, max_window) == expected


async def test_a_trickle_of_single_lookups_is_merged_a_lone_one_is_not_held() -> None:
    """Lookups arriving 50 ms apart on a scope with budget to spare: no limiter queue merges
    them, the longer window does once they have been coming steadily; a lone lookup is sent
    after the short window."""
    sent: list[list[str]] = []

    async def run(batch: Batch) -> dict[str, object]:
        sent.append(sorted(batch.ids))
        return {norm: b"{}" for norm in batch.ids}

    loop = asyncio.get_running_loop()
    variant = UpstreamRequest("users", "POST", "/v1/users")

    def ask(batcher: Batcher, i: int) -> asyncio.Future[object]:
        return batcher.ask(
            USERS, "v", variant, None, f"u:{i}", str(i), str(i), NOBODY, loop.time() + 30
        )

    lone = Batcher(run)
    first = ask(lone, 1)
    await asyncio.sleep(0.05)
    second = ask(lone, 2)
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert sent == [["1"], ["2"]]
    await lone.close()

    sent.clear()
    steady = Batcher(run)
    await asyncio.wait_for(asyncio.gather(*(ask(steady, i) for i in range(10, 18))), 5)
    third = ask(steady, 3)  # nine asked just now: 4.5/s, one more expected within 250 ms
    await asyncio.sleep(0.05)
    fourth = ask(steady, 4)
    await asyncio.wait_for(asyncio.gather(third, fourth), 5)
    assert sent == [[str(i) for i in range(10, 18)], ["3", "4"]]
    await steady.close()


# -- through the proxy ------------------------------------------------------------------------


async def call(
    client: Client, method: str, path: str, **kw: Any
) -> tuple[int, dict[str, str], bytes]:
    async with client.request(method, path, **kw) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def own_answer(
    fake: FakeRoblox, method: str, path: str, query: str = "", body: Any = None
) -> bytes:
    """What the fake answers this very request, asked alone (computed in-process)."""
    service, _, rest = path.lstrip("/").partition("/")
    pairs = [tuple(p.split("=", 1)) for p in query.split("&") if p]
    raw = orjson.dumps(body) if body is not None else b""
    reply = fake_answer(fake, method, service, "/" + rest, pairs, raw)  # type: ignore[arg-type]
    assert reply.status == 200
    return reply.body


async def test_a_batch_is_assembled_from_the_cache_plus_one_call_for_the_rest(
    proxy: Client, fake: FakeRoblox
) -> None:
    assert (await call(proxy, "GET", "/v1/users?ids=1,156"))[0] == 200
    assert fake.count("users", "/v1/users", "POST") == 1
    status, headers, body = await call(proxy, "GET", "/v1/users?ids=156,1,1000002,1000003")
    assert status == 200
    assert [u["id"] for u in orjson.loads(body)["data"]] == [156, 1, 1000002, 1000003]
    assert fake.count("users", "/v1/users", "POST") == 2
    asked = orjson.loads(fake.requests[-1].body)
    assert sorted(asked["userIds"]) == [1000002, 1000003]  # only the missing ids went upstream
    assert headers["X-Cache"] == "MISS"
    # every spelling of those ids now comes from the entries, from either door
    assert (await call(proxy, "GET", "/v1/users?ids=1000003,1000002"))[1]["X-Cache"] == "HIT"
    status, headers, body = await call(
        proxy,
        "POST",
        "/users/v1/users",
        json={"excludeBannedUsers": False, "userIds": [1000002, 156]},
    )
    assert (status, headers["X-Cache"]) == (200, "HIT")
    assert body == own_answer(
        fake,
        "POST",
        "/users/v1/users",
        body={"userIds": [1000002, 156], "excludeBannedUsers": False},
    )
    assert fake.count("users", "/v1/users", "POST") == 2


HEADSHOT = (
    "/thumbnails/v1/users/avatar-headshot?userIds={}&size=150x150&format=Png&isCircular=false"
)


async def test_concurrent_single_lookups_are_one_call_each_answered_as_alone(
    proxy: Client, fake: FakeRoblox
) -> None:
    """50 concurrent single-id headshot lookups through passthrough (what a bot sends):
    at most two upstream calls, and each caller's answer is byte for byte what its own call
    would have got."""
    users = [1_000_100 + i for i in range(50)]
    answers = await asyncio.gather(*(call(proxy, "GET", HEADSHOT.format(u)) for u in users))
    assert fake.count("thumbnails", "/v1/users/avatar-headshot", "GET") <= 2
    for user, (status, headers, body) in zip(users, answers, strict=True):
        path, _, query = HEADSHOT.format(user).partition("?")
        assert (status, headers["Content-Type"]) == (200, "application/json; charset=utf-8")
        assert body == own_answer(fake, "GET", path, query), user
    assert fetcher_of(proxy).batcher.asked == 50
    async with proxy.get("/_bloxproxy/metrics") as resp:
        scraped = {
            (s.name, s.labels.get("endpoint")): s.value
            for family in text_string_to_metric_families(await resp.text())
            for s in family.samples
        }
    endpoint = "thumbnails /v1/users/avatar-headshot"
    calls = scraped[("bloxproxy_batch_calls_total", endpoint)]
    assert calls == fake.count("thumbnails", "/v1/users/avatar-headshot", "GET")
    assert scraped[("bloxproxy_batch_ids_total", endpoint)] == 50
    assert scraped[("bloxproxy_batch_capacity_total", endpoint)] == 100 * calls
    assert scraped[("bloxproxy_coalesce_waiting", None)] == 0


async def test_the_clean_door_and_passthrough_share_entities(
    proxy: Client, fake: FakeRoblox
) -> None:
    await call(proxy, "GET", "/v1/thumbnails/users/headshots?ids=1,156")
    status, headers, _ = await call(proxy, "GET", HEADSHOT.format(156))
    assert (status, headers["X-Cache"]) == (200, "HIT")
    assert fake.count("thumbnails", "/v1/users/avatar-headshot", "GET") == 1


async def test_each_thumbnail_is_kept_as_its_state_says(
    proxy: Client, fake: FakeRoblox, clock: FakeClock
) -> None:
    """A Pending thumbnail is kept for seconds, the Completed ones beside it for the hour:
    after the Pending one expires, only it is asked again."""
    fake.script_thumbnail(1_000_201, ["Pending", "Completed"])
    path = "/v1/thumbnails/users/headshots?ids=1000200,1000201,1000202"
    states = [t["state"] for t in orjson.loads((await call(proxy, "GET", path))[2])["data"]]
    assert states == ["Completed", "Pending", "Completed"]
    clock.advance(6)
    states = [t["state"] for t in orjson.loads((await call(proxy, "GET", path))[2])["data"]]
    assert states == ["Completed", "Completed", "Completed"]
    assert fake.count("thumbnails", "/v1/users/avatar-headshot", "GET") == 2
    asked = dict(fake.requests[-1].query)
    assert asked["userIds"] == "1000201"


async def test_absent_ids_are_remembered_as_absent(proxy: Client, fake: FakeRoblox) -> None:
    for _ in range(2):
        status, _, body = await call(proxy, "GET", "/v1/users?ids=156,999")
        assert status == 200 and [u["id"] for u in orjson.loads(body)["data"]] == [156]
    assert fake.count("users", "/v1/users", "POST") == 1


async def test_names_are_answered_in_each_callers_spelling(proxy: Client, fake: FakeRoblox) -> None:
    spellings = ["builderman", "BuilderMan", "BUILDERMAN"]
    asked = [{"usernames": [name], "excludeBannedUsers": False} for name in spellings]
    answers = await asyncio.gather(
        *(call(proxy, "POST", "/users/v1/usernames/users", json=body) for body in asked)
    )
    for name, body, (status, _, got) in zip(spellings, asked, answers, strict=True):
        assert status == 200
        assert orjson.loads(got)["data"][0]["requestedUsername"] == name
        assert got == own_answer(fake, "POST", "/users/v1/usernames/users", body=body)
    assert fake.count("users", "/v1/usernames/users", "POST") == 1
    clean = await call(proxy, "GET", "/v1/users/by-username/Builderman")
    assert (clean[0], clean[1]["X-Cache"]) == (200, "HIT")


async def test_a_batch_roblox_refuses_as_a_whole_is_asked_again_as_each_caller_asked(
    proxy: Client, fake: FakeRoblox
) -> None:
    """A merged batch that Roblox answers 400 (an id it does not like, whatever): each caller
    gets what its own request gets, not the merged batch's error."""
    fake.script("users", "/v1/users", [Fault(status=400)], method="POST")
    answers = await asyncio.gather(
        call(proxy, "POST", "/users/v1/users", json={"userIds": [1]}),
        call(proxy, "POST", "/users/v1/users", json={"userIds": [156]}),
    )
    assert [status for status, _, _ in answers] == [200, 200]
    assert [orjson.loads(b)["data"][0]["id"] for _, _, b in answers] == [1, 156]
    assert fake.count("users", "/v1/users", "POST") == 3  # the batch, then each alone


async def test_a_429_on_a_batch_reaches_its_callers_or_their_stale_entries(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(BLOXPROXY_RETRIES_ATTEMPTS="1")
    await call(proxy, "GET", "/v1/presence?ids=156")
    clock.advance(40)  # presence: ttl 30s, stale-if-error 5m
    fake.script("presence", "/v1/presence/users", [Fault(status=429)], method="POST")
    # one batch for both: 156 (a stale entry) and 1 (none)
    (status, headers, _), (status_1, _, body) = await asyncio.gather(
        call(proxy, "GET", "/v1/presence?ids=156"),
        call(proxy, "POST", "/presence/v1/presence/users", json={"userIds": [1]}),
    )
    assert fake.count("presence", "/v1/presence/users", "POST") == 2
    assert (status, headers["X-Cache"]) == (200, "STALE")
    assert status_1 == 429  # no stale entry: Roblox's own answer, as its own call would get
    assert b"Too many requests" in body


@pytest.mark.redis
async def test_entities_live_in_l2_too(
    make_proxy: ProxyFactory, fake: FakeRoblox, redis_url: str, redis_client: aioredis.Redis
) -> None:
    """A replica finds the entities another one stored, and assembles from them."""
    a = await make_proxy(BLOXPROXY_CACHE_REDIS_URL=redis_url)
    b = await make_proxy(BLOXPROXY_CACHE_REDIS_URL=redis_url)
    await call(a, "GET", "/v1/users?ids=1,156")
    for task in fetcher_of(a).tasks():
        await task
    keys = sorted([k.decode() async for k in redis_client.scan_iter("bloxproxy:POST users*")])
    assert [k.rsplit(" ", 1)[-1] for k in keys] == ["id=1", "id=156"]
    status, headers, body = await call(b, "GET", "/v1/users?ids=156")
    assert (status, headers["X-Cache"]) == (200, "HIT")
    assert orjson.loads(body)["data"][0]["id"] == 156
    assert fake.count("users", "/v1/users", "POST") == 1
