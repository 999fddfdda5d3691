"""The cache through the real proxy app in front of the fake Roblox, L1 only.

Time moves with the injected clock (``clock.advance``); background work is awaited through
the fetcher's own task references, never slept for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bloxproxy import normalize
from bloxproxy.app import create_app
from bloxproxy.cache.entry import make_etag
from bloxproxy.fake import FakeRoblox, Fault
from bloxproxy.fake.state import viewer_tag
from tests.conftest import VIEWER_RULES, FakeClock, ProxyFactory, fetcher_of, proxy_config

Client = TestClient[web.Request, web.Application]

USER = "/v1/users/156"  # users.get: ttl 10m, swr 1m, sie 1h, not_found_ttl 5m
USER_PT = "/users/v1/users/156"  # the same upstream request through passthrough
USER_KEY = "GET users/v1/users/156"  # their cache key
ROUTE_CC = "public, max-age=600, stale-while-revalidate=60, stale-if-error=3600"
NO_RETRIES = {"BLOXPROXY_RETRIES_ATTEMPTS": "1"}  # one scripted fault, one failed call
TOKEN = "s3cret-admin-token"


# A dropped connection, and one more in case the transport resends an idempotent request
# once on its own (aiohttp does unless told otherwise): one *call* fails either way.
DROPS = [Fault(drop=True)] * 2


def drops_taken(fake: FakeRoblox) -> int:
    """How many of :data:`DROPS` one failed call consumed; clears the rest."""
    taken = len(DROPS) - fake.pending_faults()
    fake.script("users", "/v1/users/156", [])
    assert 1 <= taken <= len(DROPS)
    return taken


def failure(status: int) -> Fault:
    """An upstream error answer; a 429 says "retry now", so the proxy does not pause the
    service (that is the upstream guard's business, not the cache's)."""
    return Fault(status=status, retry_after="0" if status == 429 else None)


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def x_cache(self) -> str:
        return str(self.headers.get("X-Cache", ""))

    def json(self) -> Any:
        return orjson.loads(self.body)


async def get(client: Client, path: str, method: str = "GET", **kwargs: Any) -> Answer:
    async with client.request(method, path, **kwargs) as resp:
        return Answer(resp.status, resp.headers, await resp.read())


async def settle(client: Client) -> None:
    """Wait for the fetcher's in-flight misses, refreshes and L2 writes to finish."""
    fetcher = fetcher_of(client)
    for _ in range(10):
        tasks = fetcher.tasks()
        if not tasks:
            return
        await asyncio.gather(*tasks, return_exceptions=True)
    raise AssertionError("fetcher tasks keep coming")


def users_get_count(fake: FakeRoblox, uid: int = 156) -> int:
    return fake.count("users", f"/v1/users/{uid}", "GET")


# -- hits, misses, one cache for both front doors ------------------------------------------


async def test_miss_then_hit_with_cache_headers(
    proxy: Client, fake: FakeRoblox, clock: FakeClock
) -> None:
    first = await get(proxy, USER)
    assert first.status == 200
    assert first.x_cache == "MISS"
    assert first.headers["Age"] == "0"
    assert first.headers["Cache-Control"] == ROUTE_CC
    assert first.headers["Cache-Status"] == "bloxproxy; fwd=miss; stored"
    assert first.headers["ETag"] == make_etag(first.body)
    assert first.json()["name"] == "builderman"

    clock.advance(100.4)
    hit = await get(proxy, USER)
    assert hit.x_cache == "HIT"
    assert hit.body == first.body
    assert hit.headers["Age"] == "100"
    assert hit.headers["Cache-Control"] == (
        "public, max-age=499, stale-while-revalidate=60, stale-if-error=3600"
    )
    assert hit.headers["Cache-Status"] == "bloxproxy; hit; ttl=499"
    assert hit.headers["ETag"] == first.headers["ETag"]
    assert users_get_count(fake) == 1


async def test_fresh_until_ttl_then_refetched_after_hard_expiry(
    proxy: Client, fake: FakeRoblox, clock: FakeClock
) -> None:
    await get(proxy, USER)
    clock.advance(599.9)
    assert (await get(proxy, USER)).x_cache == "HIT"
    clock.advance(600 + 3600)  # past ttl + stale-if-error: nobody may use it
    again = await get(proxy, USER)
    assert again.x_cache == "MISS"
    assert again.headers["Age"] == "0"
    assert users_get_count(fake) == 2


async def test_clean_route_and_passthrough_share_one_entry(proxy: Client, fake: FakeRoblox) -> None:
    clean = await get(proxy, USER)
    raw = await get(proxy, USER_PT)
    assert (clean.x_cache, raw.x_cache) == ("MISS", "HIT")
    assert users_get_count(fake) == 1
    assert raw.json()["displayName"] == "builderman"  # passthrough: Roblox's body as sent
    assert clean.json()["display_name"] == "builderman"  # clean: normalized

    raw = await get(proxy, "/users/v1/users/1")
    clean = await get(proxy, "/v1/users/1")
    assert (raw.x_cache, clean.x_cache) == ("MISS", "HIT")
    assert users_get_count(fake, 1) == 1


async def test_passthrough_spellings_of_one_path_share_one_entry(
    proxy: Client, fake: FakeRoblox
) -> None:
    results = [(await get(proxy, p)).x_cache for p in (USER_PT, "/users//v1/users/156")]
    assert results == ["MISS", "HIT"]
    assert users_get_count(fake) == 1


async def test_query_order_and_id_list_forms_do_not_split_clean_routes(
    proxy: Client, fake: FakeRoblox
) -> None:
    forms = [
        "/v1/users?ids=1,156",
        "/v1/users?ids=1&ids=156",
        "/v1/users?exclude_banned=false&ids=1&ids=156",
        "/v1/users?ids=156,1",
    ]
    answers = [await get(proxy, path) for path in forms]
    assert [a.x_cache for a in answers] == ["MISS", "HIT", "HIT", "HIT"]
    assert fake.count("users", "/v1/users", "POST") == 1
    assert [u["id"] for u in answers[0].json()["data"]] == [1, 156]
    assert [u["id"] for u in answers[3].json()["data"]] == [156, 1]  # put back in the asked order


async def test_query_order_does_not_split_passthrough(proxy: Client, fake: FakeRoblox) -> None:
    a = await get(proxy, "/users/v1/users/search?keyword=builderman&limit=10")
    b = await get(proxy, "/users/v1/users/search?limit=10&keyword=builderman")
    c = await get(proxy, "/users/v1/users/search?limit=25&keyword=builderman")
    assert (a.x_cache, b.x_cache, c.x_cache) == ("MISS", "HIT", "MISS")
    assert fake.count("users", "/v1/users/search") == 2


async def test_clean_hits_do_not_normalize_again(
    proxy: Client, fake: FakeRoblox, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_apply = normalize.apply

    def counting_apply(*args: Any) -> object:
        calls.append(args)
        return real_apply(*args)

    monkeypatch.setattr(normalize, "apply", counting_apply)
    bodies = {(await get(proxy, USER)).body for _ in range(5)}
    assert len(bodies) == 1
    assert len(calls) == 1
    # the other front door reads the raw entry, the clean one still its memo
    await get(proxy, USER_PT)
    await get(proxy, USER)
    assert len(calls) == 1
    # another entry, and another requested order of it: one rendering each
    await get(proxy, "/v1/users?ids=1,156")
    await get(proxy, "/v1/users?ids=156,1")
    await get(proxy, "/v1/users?ids=156&ids=1")
    assert len(calls) == 3


# -- TTLs by rule, passthrough and negative answers -----------------------------------------


# A passthrough GET that no rule describes (the fake serves it; no shipped rule asks for it).
UNDESCRIBED = "/thumbnails/v1/assets?assetIds=1365767&size=150x150&format=Png"


def undescribed_count(fake: FakeRoblox) -> int:
    return fake.count("thumbnails", "/v1/assets", "GET")


async def test_passthrough_ttl(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(BLOXPROXY_CACHE_PASSTHROUGH_TTL="20s")
    first = await get(proxy, UNDESCRIBED)
    assert first.status == 200
    assert first.headers["Cache-Control"] == "public, max-age=20"
    clock.advance(19.9)
    assert (await get(proxy, UNDESCRIBED)).x_cache == "HIT"
    clock.advance(0.1)
    assert (await get(proxy, UNDESCRIBED)).x_cache == "MISS"
    assert undescribed_count(fake) == 2


async def test_passthrough_ttl_zero_stores_nothing(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(BLOXPROXY_CACHE_PASSTHROUGH_TTL="0")
    for _ in range(2):
        answer = await get(proxy, UNDESCRIBED)
        assert answer.status == 200
        assert answer.headers["Cache-Control"] == "no-store"
        assert "ETag" not in answer.headers
    assert undescribed_count(fake) == 2


async def test_passthrough_404_uses_the_negative_ttl(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(BLOXPROXY_CACHE_NEGATIVE_TTL="7s")
    first = await get(proxy, "/users/v1/nothing/999")
    assert (first.status, first.x_cache) == (404, "MISS")
    assert first.headers["Cache-Control"] == "public, max-age=7"
    clock.advance(6.9)
    hit = await get(proxy, "/users/v1/nothing/999")
    assert (hit.status, hit.x_cache, hit.body) == (404, "HIT", first.body)
    clock.advance(0.1)
    assert (await get(proxy, "/users/v1/nothing/999")).x_cache == "MISS"
    assert fake.count("users", "/v1/nothing/999", "GET") == 2


@pytest.mark.parametrize("first_door", ["passthrough", "clean"])
async def test_a_rule_policy_applies_to_its_upstream_request_from_either_door(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock, first_door: str
) -> None:
    """users.search (5m, stale-if-error 1h) describes GET users/v1/users/search: a
    passthrough GET of it is stored with the rule's policy, not cache.passthrough_ttl, and
    whichever door stores first, the other door's hit says the same."""
    proxy = await make_proxy(BLOXPROXY_CACHE_PASSTHROUGH_TTL="30s")
    doors = {
        "clean": "/v1/users/search?keyword=builderman&limit=10",
        "passthrough": "/users/v1/users/search?keyword=builderman&limit=10",
    }
    second_door = "clean" if first_door == "passthrough" else "passthrough"
    first = await get(proxy, doors[first_door])
    assert (first.status, first.x_cache) == (200, "MISS")
    assert first.headers["Cache-Control"] == "public, max-age=300, stale-if-error=3600"
    clock.advance(60)
    second = await get(proxy, doors[second_door])
    assert (second.status, second.x_cache) == (200, "HIT")
    assert second.headers["Cache-Control"] == "public, max-age=240, stale-if-error=3600"
    assert second.headers["Age"] == "60"
    clock.advance(200)  # past the 30 s passthrough TTL, inside the rule's 5 minutes
    assert (await get(proxy, doors[first_door])).x_cache == "HIT"
    assert fake.count("users", "/v1/users/search", "GET") == 1


@pytest.mark.parametrize("path", ["/v1/users/999", "/users/v1/users/999"])
async def test_a_cached_404_carries_the_cache_headers_from_both_doors(
    proxy: Client, fake: FakeRoblox, clock: FakeClock, path: str
) -> None:
    """A negative entry (users.get: not_found_ttl 5m) answered from the cache says so the
    same way from both doors: X-Cache, Age, Cache-Control, Cache-Status and an ETag."""
    first = await get(proxy, path)
    assert (first.status, first.x_cache) == (404, "MISS")
    assert first.headers["Cache-Control"] == "public, max-age=300"
    assert first.headers["ETag"]
    clock.advance(42)
    hit = await get(proxy, path)
    assert (hit.status, hit.x_cache) == (404, "HIT")
    assert hit.headers["Age"] == "42"
    assert hit.headers["Cache-Control"] == "public, max-age=258"
    assert hit.headers["Cache-Status"] == "bloxproxy; hit; ttl=258"
    assert hit.headers["ETag"] == first.headers["ETag"]
    assert users_get_count(fake, 999) == 1


@pytest.mark.parametrize(
    "path", [USER, USER_PT, "/v1/users?ids=1,156", "/thumbnails/v1/assets?assetIds=1365767"]
)
async def test_the_first_answer_carries_the_etag_its_hits_carry(proxy: Client, path: str) -> None:
    """A client can revalidate from the very first (miss) answer."""
    miss = await get(proxy, path)
    assert (miss.status, miss.x_cache) == (200, "MISS")
    hit = await get(proxy, path)
    assert hit.x_cache == "HIT"
    assert miss.headers["ETag"] == hit.headers["ETag"]
    revalidated = await get(proxy, path, headers={"If-None-Match": miss.headers["ETag"]})
    assert revalidated.status == 304


async def test_clean_route_404_uses_the_rule_not_found_ttl(
    proxy: Client, fake: FakeRoblox, clock: FakeClock
) -> None:
    # users.get: not_found_ttl 5m, and no stale serving of a negative answer
    assert (await get(proxy, "/v1/users/999")).status == 404
    clock.advance(299)
    assert (await get(proxy, "/v1/users/999")).status == 404
    assert users_get_count(fake, 999) == 1
    clock.advance(1)
    assert (await get(proxy, "/v1/users/999")).status == 404
    assert users_get_count(fake, 999) == 2


@pytest.mark.parametrize("status", [401, 403, 429, 500, 502, 503, 504])
async def test_errors_are_never_stored(
    make_proxy: ProxyFactory, fake: FakeRoblox, status: int
) -> None:
    proxy = await make_proxy(**NO_RETRIES)
    fake.script("users", "/v1/users/156", [failure(status)])
    failed = await get(proxy, USER_PT)
    assert failed.status == status
    assert failed.x_cache == "MISS"
    assert failed.headers["Cache-Control"] == "no-store"
    assert failed.headers["Cache-Status"] == "bloxproxy; fwd=miss"
    assert "ETag" not in failed.headers
    ok = await get(proxy, USER_PT)
    assert (ok.status, ok.x_cache) == (200, "MISS")
    assert users_get_count(fake) == 2


async def test_clean_route_error_is_not_stored(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(**NO_RETRIES)
    fake.script("users", "/v1/users/156", [failure(429)])
    assert (await get(proxy, USER)).status == 429
    answer = await get(proxy, USER)
    assert (answer.status, answer.x_cache) == (200, "MISS")
    assert users_get_count(fake) == 2


async def test_pending_thumbnail_batch_is_kept_seconds_only(
    proxy: Client, fake: FakeRoblox, clock: FakeClock
) -> None:
    pending = "/v1/thumbnails/users/headshots?ids=1,2"  # fake user 2 is Pending
    first = await get(proxy, pending)
    assert {t["state"] for t in first.json()["data"]} == {"Completed", "Pending"}
    assert first.headers["Cache-Control"] == "public, max-age=5, stale-if-error=86400"
    clock.advance(4.9)
    assert (await get(proxy, pending)).x_cache == "HIT"
    clock.advance(0.1)
    assert (await get(proxy, pending)).x_cache == "MISS"
    assert fake.count("thumbnails", "/v1/users/avatar-headshot") == 2


async def test_completed_thumbnail_batch_is_kept_an_hour(
    proxy: Client, fake: FakeRoblox, clock: FakeClock
) -> None:
    done = "/v1/thumbnails/users/headshots?ids=1,156"
    first = await get(proxy, done)
    assert {t["state"] for t in first.json()["data"]} == {"Completed"}
    assert first.headers["Cache-Control"] == "public, max-age=3600, stale-if-error=86400"
    clock.advance(3599)
    assert (await get(proxy, done)).x_cache == "HIT"
    clock.advance(1)
    assert (await get(proxy, done)).x_cache == "MISS"
    assert fake.count("thumbnails", "/v1/users/avatar-headshot") == 2


# -- coalescing ----------------------------------------------------------------------------


@pytest.fixture
async def wide_proxy(
    aiohttp_client: Callable[..., Awaitable[Client]], fake_server: TestServer, clock: FakeClock
) -> Client:
    """A proxy whose test client may hold 200+ connections at once."""
    app = create_app(proxy_config(fake_server, **NO_RETRIES), clock=clock)
    return await aiohttp_client(app, connector=aiohttp.TCPConnector(limit=0))


async def test_200_concurrent_misses_cost_one_upstream_call(
    wide_proxy: Client, fake: FakeRoblox
) -> None:
    fake.latency = 0.05
    answers = await asyncio.gather(*(get(wide_proxy, USER) for _ in range(200)))
    assert users_get_count(fake) == 1
    assert {a.status for a in answers} == {200}
    assert len({a.body for a in answers}) == 1
    results = [a.x_cache for a in answers]
    assert results.count("MISS") == 1
    assert results.count("COALESCED") > 0
    assert set(results) <= {"MISS", "COALESCED", "HIT"}
    coalesced = next(a for a in answers if a.x_cache == "COALESCED")
    assert coalesced.headers["Cache-Status"] == "bloxproxy; fwd=miss; collapsed"
    assert coalesced.headers["ETag"] == make_etag(coalesced.body)


async def test_both_front_doors_coalesce_onto_one_call(
    wide_proxy: Client, fake: FakeRoblox
) -> None:
    fake.latency = 0.05
    paths = [USER, USER_PT] * 25
    answers = await asyncio.gather(*(get(wide_proxy, p) for p in paths))
    assert {a.status for a in answers} == {200}
    assert users_get_count(fake) == 1


async def test_uncacheable_answer_is_shared_with_waiters_but_not_stored(
    wide_proxy: Client, fake: FakeRoblox
) -> None:
    fake.latency = 0.05
    fake.script("users", "/v1/users/156", [Fault(status=503)])
    answers = await asyncio.gather(*(get(wide_proxy, USER_PT) for _ in range(20)))
    assert {a.status for a in answers} == {503}
    assert users_get_count(fake) == 1
    assert {a.headers["Cache-Control"] for a in answers} == {"no-store"}
    after = await get(wide_proxy, USER_PT)
    assert (after.status, after.x_cache) == (200, "MISS")
    assert users_get_count(fake) == 2


async def test_upstream_failure_is_shared_with_waiters(
    wide_proxy: Client, fake: FakeRoblox
) -> None:
    fake.latency = 0.05
    fake.script("users", "/v1/users/156", DROPS)
    answers = await asyncio.gather(*(get(wide_proxy, USER) for _ in range(20)))
    assert {a.status for a in answers} == {502}
    assert {a.json()["code"] for a in answers} == {"upstream_unreachable"}
    assert users_get_count(fake) == drops_taken(fake)  # every attempt belongs to one call


async def test_waiters_give_up_after_the_coalesce_timeout(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(BLOXPROXY_CACHE_COALESCE_TIMEOUT="100ms", **NO_RETRIES)
    fake.script("users", "/v1/users/156", [Fault(delay=0.6)])
    loop = asyncio.get_running_loop()
    started = loop.time()
    answers = await asyncio.gather(*(get(proxy, USER) for _ in range(5)))
    assert loop.time() - started < 0.5
    assert {a.status for a in answers} == {504}
    for a in answers:
        assert a.headers["Content-Type"].startswith("application/problem+json")
        assert a.json()["code"] == "upstream_timeout"
        assert a.json()["status"] == 504
    assert users_get_count(fake) == 1
    # The call itself went on (shielded) and its answer was stored for the next request.
    await settle(proxy)
    assert (await get(proxy, USER)).x_cache == "HIT"
    assert users_get_count(fake) == 1


# -- stale-while-revalidate and stale-if-error ---------------------------------------------


async def test_stale_while_revalidate_serves_stale_and_refreshes_once(
    proxy: Client, fake: FakeRoblox, clock: FakeClock
) -> None:
    first = await get(proxy, USER)
    clock.advance(610)  # ttl 10m, swr 1m
    fake.latency = 0.2  # keep the refresh in flight while the stale answers go out
    stale = await asyncio.gather(*(get(proxy, USER) for _ in range(10)))
    assert [a.x_cache for a in stale] == ["STALE"] * 10
    assert {a.body for a in stale} == {first.body}
    assert stale[0].headers["Age"] == "610"
    assert stale[0].headers["Cache-Status"] == 'bloxproxy; hit; ttl=-10; detail="revalidating"'
    assert stale[0].headers["Cache-Control"] == (
        "public, max-age=0, stale-while-revalidate=60, stale-if-error=3600"
    )
    await settle(proxy)
    assert users_get_count(fake) == 2  # exactly one background refresh
    fresh = await get(proxy, USER)
    assert (fresh.x_cache, fresh.headers["Age"]) == ("HIT", "0")
    assert users_get_count(fake) == 2


async def test_failed_refresh_keeps_the_stale_entry(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(**NO_RETRIES)
    first = await get(proxy, USER)
    clock.advance(610)
    fake.script("users", "/v1/users/156", [Fault(status=503)])
    assert (await get(proxy, USER)).x_cache == "STALE"
    await settle(proxy)
    assert users_get_count(fake) == 2
    again = await get(proxy, USER)  # the failed refresh stored nothing: still stale
    assert (again.x_cache, again.body) == ("STALE", first.body)
    await settle(proxy)
    assert (await get(proxy, USER)).x_cache == "HIT"
    assert users_get_count(fake) == 3


SIE_FAULTS = {
    "503": [Fault(status=503)],
    "429": [failure(429)],
    "500": [Fault(status=500)],
    "drop": DROPS,
    "timeout": [Fault(delay=0.5)],
}


@pytest.mark.parametrize("fault", list(SIE_FAULTS))
async def test_stale_if_error(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock, fault: str
) -> None:
    proxy = await make_proxy(BLOXPROXY_UPSTREAM_TIMEOUT="100ms", **NO_RETRIES)
    first = await get(proxy, USER)
    clock.advance(700)  # past ttl + swr, inside stale-if-error (1h)
    fake.script("users", "/v1/users/156", SIE_FAULTS[fault])
    stale = await get(proxy, USER)
    assert stale.status == 200
    assert stale.x_cache == "STALE"
    assert stale.body == first.body
    assert stale.headers["Age"] == "700"
    assert stale.headers["Cache-Status"] == 'bloxproxy; hit; ttl=-100; detail="stale-if-error"'
    assert stale.headers["Cache-Control"] == (
        "public, max-age=0, stale-while-revalidate=60, stale-if-error=3600"
    )
    attempts = drops_taken(fake) if fault == "drop" else 1
    assert fake.pending_faults() == 0
    assert users_get_count(fake) == 1 + attempts
    # the upstream is back: a fresh answer replaces the stale one
    fresh = await get(proxy, USER)
    assert (fresh.x_cache, fresh.headers["Age"]) == ("MISS", "0")


async def test_waiters_of_a_failed_call_get_the_stale_answer_as_stale(
    wide_proxy: Client, fake: FakeRoblox, clock: FakeClock
) -> None:
    first = await get(wide_proxy, USER)
    clock.advance(700)
    fake.latency = 0.05
    fake.script("users", "/v1/users/156", [failure(503)])
    answers = await asyncio.gather(*(get(wide_proxy, USER) for _ in range(20)))
    assert users_get_count(fake) == 2
    assert {(a.status, a.x_cache, a.body) for a in answers} == {(200, "STALE", first.body)}
    assert {a.headers["Cache-Status"] for a in answers} == {
        'bloxproxy; hit; ttl=-100; detail="stale-if-error"'
    }


async def test_entry_carries_its_stale_window_to_the_other_front_door(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(**NO_RETRIES)
    first = await get(proxy, USER)  # stored by the clean route: stale-if-error 1h
    clock.advance(700)
    fake.script("users", "/v1/users/156", [Fault(status=503)])
    raw = await get(proxy, USER_PT)
    assert (raw.status, raw.x_cache) == (200, "STALE")
    assert orjson.loads(raw.body)["id"] == first.json()["id"]


async def test_no_stale_answer_past_the_stale_if_error_window(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(**NO_RETRIES)
    await get(proxy, USER)
    clock.advance(600 + 3600)
    fake.script("users", "/v1/users/156", [Fault(status=503)])
    failed = await get(proxy, USER)
    assert failed.status == 503
    assert failed.json()["upstream_status"] == 503


async def test_negative_entries_are_not_served_stale(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(**NO_RETRIES)
    assert (await get(proxy, "/v1/users/999")).status == 404
    clock.advance(301)
    fake.script("users", "/v1/users/999", [Fault(status=503)])
    assert (await get(proxy, "/v1/users/999")).status == 503


# -- credentials ---------------------------------------------------------------------------


def cookie(value: str) -> dict[str, dict[str, str]]:
    return {"headers": {"Cookie": f".ROBLOSECURITY={value}"}}


@pytest.mark.parametrize(
    ("headers", "credential"),
    [
        ({"Cookie": ".ROBLOSECURITY=COOKIE-A"}, "COOKIE-A"),
        ({"Cookie": "RBXEventTrackerV2=x; .ROBLOSECURITY=COOKIE-A"}, "COOKIE-A"),
        ({"Authorization": "Bearer TOKEN-A"}, "Bearer TOKEN-A"),
        ({"x-api-key": "KEY-A"}, "KEY-A"),
    ],
)
async def test_credentialed_requests_bypass_the_shared_cache(
    proxy: Client, fake: FakeRoblox, headers: dict[str, str], credential: str
) -> None:
    tag = viewer_tag(credential)  # what the fake adds to answers for this credential

    # a credentialed request neither fills the anonymous entry ...
    mine = await get(proxy, USER_PT, headers=headers)
    assert mine.x_cache == "BYPASS"
    assert mine.headers["Cache-Control"] == "no-store"
    assert mine.headers["Cache-Status"] == 'bloxproxy; fwd=bypass; detail="credentialed"'
    assert mine.json()["_fakeViewer"] == tag
    anon = await get(proxy, USER_PT)
    assert anon.x_cache == "MISS"
    assert "_fakeViewer" not in anon.json()
    # ... nor reads it
    mine = await get(proxy, USER_PT, headers=headers)
    assert mine.x_cache == "BYPASS"
    assert mine.json()["_fakeViewer"] == tag
    assert (await get(proxy, USER_PT)).x_cache == "HIT"
    assert users_get_count(fake) == 3
    assert all(credential not in key for key in fetcher_of(proxy).l1._cache)


async def test_clean_route_credentials_bypass_by_default(proxy: Client, fake: FakeRoblox) -> None:
    await get(proxy, USER)
    answer = await get(proxy, USER, **cookie("COOKIE-A"))
    assert answer.x_cache == "BYPASS"
    assert users_get_count(fake) == 2


async def test_empty_roblosecurity_cookie_is_anonymous(proxy: Client, fake: FakeRoblox) -> None:
    await get(proxy, USER_PT)
    for headers in ({"Cookie": ".ROBLOSECURITY="}, {"Cookie": ".ROBLOSECURITY=; other=1"}):
        answer = await get(proxy, USER_PT, headers=headers)
        assert answer.x_cache == "HIT"
    assert users_get_count(fake) == 1


EXTRA_RULES = (
    VIEWER_RULES
    + """\
  - id: test.mapped_errors
    endpoint: /v1/mapped/{user_id}
    params:
      user_id: {type: int, min: 1}
    backend:
      path: /v1/users/{user_id}
    response:
      status_map: {400: 404, 401: 404, 403: 404, 429: 404, 500: 404, 503: 404}
    cache:
      ttl: 1m
      not_found_ttl: 1m
"""
)


@pytest.fixture
async def viewer_proxy(make_proxy: ProxyFactory, tmp_path: Path) -> Client:
    rules = tmp_path / "viewer.yaml"
    rules.write_text(EXTRA_RULES)
    return await make_proxy(BLOXPROXY_RULES_PATHS=str(rules), **NO_RETRIES)


async def test_per_credential_entries_are_isolated(
    viewer_proxy: Client, fake: FakeRoblox, clock: FakeClock
) -> None:
    path = "/v1/as-viewer/156"
    seen: list[tuple[str, str, str | None]] = []
    for who in ("A", "A", "B", "B", "", "", "A", "B"):
        kwargs = cookie(f"COOKIE-{who}") if who else {}
        answer = await get(viewer_proxy, path, **kwargs)
        assert answer.status == 200
        seen.append((who, answer.x_cache, answer.json().get("_fakeViewer")))
        if who:
            assert answer.headers["Cache-Control"].startswith("private, ")
        else:
            assert answer.headers["Cache-Control"].startswith("public, ")
    tag_a, tag_b = viewer_tag("COOKIE-A"), viewer_tag("COOKIE-B")
    assert seen == [
        ("A", "MISS", tag_a),
        ("A", "HIT", tag_a),
        ("B", "MISS", tag_b),
        ("B", "HIT", tag_b),
        ("", "MISS", None),
        ("", "HIT", None),
        ("A", "HIT", tag_a),
        ("B", "HIT", tag_b),
    ]
    assert users_get_count(fake) == 3
    keys = list(fetcher_of(viewer_proxy).l1._cache)
    assert any(" cred=" in k for k in keys)
    assert not any("COOKIE" in k for k in keys)
    # Passthrough follows the first rule that describes its upstream request: here the
    # shipped users.get (credentials bypass), not the per-credential viewer rule added beside.
    assert (await get(viewer_proxy, USER_PT, **cookie("COOKIE-A"))).x_cache == "BYPASS"


async def test_without_opt_in_forwarded_credentials_bypass(
    viewer_proxy: Client, fake: FakeRoblox
) -> None:
    path = "/v1/forwarded/156"
    a = await get(viewer_proxy, path, **cookie("COOKIE-A"))
    anon = await get(viewer_proxy, path)
    b = await get(viewer_proxy, path, **cookie("COOKIE-B"))
    assert [x.x_cache for x in (a, anon, b)] == ["BYPASS", "MISS", "BYPASS"]
    assert a.json()["_fakeViewer"] == viewer_tag("COOKIE-A")
    assert "_fakeViewer" not in anon.json()
    assert b.json()["_fakeViewer"] == viewer_tag("COOKIE-B")
    assert (await get(viewer_proxy, path)).x_cache == "HIT"
    assert users_get_count(fake) == 3


@pytest.mark.parametrize("status", [401, 403, 429, 500, 503])
async def test_errors_mapped_to_404_are_still_never_stored(
    viewer_proxy: Client, fake: FakeRoblox, status: int
) -> None:
    fake.script("users", "/v1/users/156", [failure(status)])
    assert (await get(viewer_proxy, "/v1/mapped/156")).status != 200
    assert USER_KEY not in fetcher_of(viewer_proxy).l1
    answer = await get(viewer_proxy, "/v1/mapped/156")
    assert (answer.status, answer.x_cache) == (200, "MISS")
    assert users_get_count(fake) == 2


async def test_status_mapped_to_404_is_a_negative_entry(
    viewer_proxy: Client, fake: FakeRoblox, clock: FakeClock
) -> None:
    fake.script("users", "/v1/users/156", [failure(400)])
    assert (await get(viewer_proxy, "/v1/mapped/156")).status == 404
    clock.advance(59)
    assert (await get(viewer_proxy, "/v1/mapped/156")).status == 404  # from the cache
    assert users_get_count(fake) == 1
    clock.advance(1)
    assert (await get(viewer_proxy, "/v1/mapped/156")).status == 200
    assert users_get_count(fake) == 2


# -- what is never cached ------------------------------------------------------------------


async def test_a_passthrough_post_a_rule_documents_as_a_read_is_cached(
    proxy: Client, fake: FakeRoblox
) -> None:
    """users.batch documents POST users/v1/users as a read: from passthrough it is cached
    like a GET (per id), whatever the spelling of its JSON body, and shared with the clean
    route that reads through the same POST."""
    first = await get(proxy, "/users/v1/users", "POST", json={"userIds": [1, 156]})
    assert (first.status, first.x_cache) == (200, "MISS")
    assert first.headers["Cache-Control"].startswith("public, max-age=")
    spelled = b'{ "excludeBannedUsers" : false ,"userIds":[1,156]}'  # no excludeBannedUsers
    again = await get(proxy, "/users/v1/users", "POST", json={"userIds": [1, 156]})
    other = await get(
        proxy, "/users/v1/users", "POST", data=spelled, headers={"Content-Type": "text/json"}
    )
    assert (again.x_cache, again.body) == ("HIT", first.body)
    assert other.status == 200
    assert fake.count("users", "/v1/users", "POST") == 2  # a different variant: its own call
    for _ in range(2):
        assert (await get(proxy, "/v1/users?ids=1,156")).status == 200
    assert fake.count("users", "/v1/users", "POST") == 2  # the clean twin: from the entries


async def test_a_passthrough_post_no_rule_documents_is_never_cached(
    proxy: Client, fake: FakeRoblox
) -> None:
    for _ in range(2):
        answer = await get(proxy, "/catalog/v1/catalog/items/details", "POST", json={"items": []})
        assert answer.x_cache == "BYPASS"
        assert answer.headers["Cache-Control"] == "no-store"
    assert fake.count("catalog", "/v1/catalog/items/details", "POST") == 2


async def test_cache_disabled_bypasses_everything(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(BLOXPROXY_CACHE_ENABLED="false")
    for path in (USER, USER_PT, USER, USER_PT):
        answer = await get(proxy, path)
        assert answer.status == 200
        assert answer.x_cache == "BYPASS"
        assert answer.headers["Cache-Control"] == "no-store"
        assert "ETag" not in answer.headers and "Age" not in answer.headers
    assert users_get_count(fake) == 4
    assert len(fetcher_of(proxy).l1) == 0


# -- ETag and If-None-Match ----------------------------------------------------------------


@pytest.mark.parametrize("path", [USER, USER_PT])
async def test_if_none_match_gets_304(proxy: Client, fake: FakeRoblox, path: str) -> None:
    first = await get(proxy, path)
    etag = first.headers["ETag"]
    assert etag == make_etag(first.body)
    for inm in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        answer = await get(proxy, path, headers={"If-None-Match": inm})
        assert answer.status == 304, inm
        assert answer.body == b""
        assert answer.headers["ETag"] == etag
        assert answer.x_cache == "HIT"
        assert answer.headers["Cache-Control"].startswith("public, max-age=")
    other = await get(proxy, path, headers={"If-None-Match": '"nope"'})
    assert (other.status, other.body) == (200, first.body)
    assert users_get_count(fake) == 1


async def test_clean_and_passthrough_etags_describe_their_own_bodies(proxy: Client) -> None:
    clean = await get(proxy, USER)
    raw = await get(proxy, USER_PT)
    assert clean.headers["ETag"] == make_etag(clean.body)
    assert raw.headers["ETag"] == make_etag(raw.body)
    assert clean.headers["ETag"] != raw.headers["ETag"]
    answer = await get(proxy, USER_PT, headers={"If-None-Match": clean.headers["ETag"]})
    assert answer.status == 200


async def test_bypass_answers_never_304(proxy: Client) -> None:
    first = await get(proxy, USER)
    answer = await get(
        proxy, USER, headers={"If-None-Match": first.headers["ETag"], **cookie("X")["headers"]}
    )
    assert (answer.status, answer.x_cache) == (200, "BYPASS")
    assert "ETag" not in answer.headers


async def test_errors_never_304(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy()
    first = await get(proxy, "/users/v1/users/999")
    assert first.status == 404
    again = await get(proxy, "/users/v1/users/999", headers={"If-None-Match": "*"})
    assert again.status == 404


# -- L1 bounds -----------------------------------------------------------------------------


async def test_l1_entry_bound(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(BLOXPROXY_CACHE_MAX_ENTRIES="3")
    l1 = fetcher_of(proxy).l1
    ids = [1, 156, 261, 1000001, 1000002]
    for uid in ids:
        assert (await get(proxy, f"/users/v1/users/{uid}")).x_cache == "MISS"
        assert len(l1) <= 3
    assert len(l1) == 3
    assert (await get(proxy, f"/users/v1/users/{ids[-1]}")).x_cache == "HIT"
    assert (await get(proxy, f"/users/v1/users/{ids[0]}")).x_cache == "MISS"  # evicted (LRU)
    # clean routes' renderings count against the bound as well
    for uid in ids:
        await get(proxy, f"/v1/users/{uid}")
        assert len(l1) <= 3


async def test_l1_byte_bound(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(BLOXPROXY_CACHE_MAX_BYTES="2500")
    l1 = fetcher_of(proxy).l1
    ids = [1, 156, 1000001, 1000002, 1000003]
    for uid in ids:
        assert (await get(proxy, f"/users/v1/users/{uid}")).x_cache == "MISS"
        assert 0 < l1.bytes_used <= 2500
    assert 1 <= len(l1) < len(ids)
    assert (await get(proxy, f"/users/v1/users/{ids[-1]}")).x_cache == "HIT"
    assert (await get(proxy, f"/users/v1/users/{ids[0]}")).x_cache == "MISS"
    for uid in ids:
        await get(proxy, f"/v1/users/{uid}")
        assert l1.bytes_used <= 2500


async def test_entry_larger_than_l1_is_served_not_stored(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(BLOXPROXY_CACHE_MAX_BYTES="600")
    for _ in range(2):
        answer = await get(proxy, USER_PT)
        assert answer.status == 200
    assert len(fetcher_of(proxy).l1) == 0
    assert users_get_count(fake) == 2


# -- purge (L1 only) -----------------------------------------------------------------------


async def purge(client: Client, body: object, token: str = TOKEN) -> Answer:
    return await get(
        client,
        "/_bloxproxy/admin/purge",
        "POST",
        data=orjson.dumps(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )


@pytest.fixture
async def admin_proxy(make_proxy: ProxyFactory) -> Client:
    return await make_proxy(BLOXPROXY_SERVER_ADMIN_TOKEN=TOKEN)


async def test_purge_needs_the_token(proxy: Client, admin_proxy: Client) -> None:
    assert (await purge(proxy, {"all": True})).status == 404  # no token configured: off
    for token in ("", "wrong", TOKEN + "x", TOKEN[:-1]):
        answer = await purge(admin_proxy, {"all": True}, token)
        assert answer.status == 401
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    answer = await get(
        admin_proxy, "/_bloxproxy/admin/purge", "POST", data=b'{"all": true}',
        headers={"Authorization": f"Basic {TOKEN}"},
    )  # fmt: skip
    assert answer.status == 401


async def test_purge_url_drops_the_shared_entry(admin_proxy: Client, fake: FakeRoblox) -> None:
    await get(admin_proxy, USER)
    await get(admin_proxy, "/v1/users/1")
    answer = await purge(admin_proxy, {"url": USER_PT})
    assert answer.status == 200
    assert answer.json() == {"purged": 1, "scope": "url", "target": "GET users/v1/users/156"}
    assert (await get(admin_proxy, USER)).x_cache == "MISS"  # entry and rendering gone
    assert (await get(admin_proxy, "/v1/users/1")).x_cache == "HIT"
    assert (await purge(admin_proxy, {"url": USER})).json()["purged"] == 1
    assert (await get(admin_proxy, USER_PT)).x_cache == "MISS"
    assert users_get_count(fake) == 3


async def test_purge_key_route_and_all(admin_proxy: Client, fake: FakeRoblox) -> None:
    for path in (USER, "/v1/users/1", "/v1/users?ids=1,156", "/games/v1/games?universeIds=1"):
        assert (await get(admin_proxy, path)).x_cache == "MISS"
    answer = await purge(admin_proxy, {"key": "GET users/v1/users/1"})
    assert answer.json()["purged"] == 1
    assert (await get(admin_proxy, "/v1/users/1")).x_cache == "MISS"
    answer = await purge(admin_proxy, {"route": "users.get"})
    assert answer.json()["target"] == "GET users/v1/users/"
    assert answer.json()["purged"] >= 2
    assert (await get(admin_proxy, USER)).x_cache == "MISS"
    assert (await get(admin_proxy, "/v1/users?ids=1,156")).x_cache == "HIT"  # other route
    assert (await purge(admin_proxy, {"all": True})).status == 200
    for path in ("/v1/users?ids=1,156", "/games/v1/games?universeIds=1", USER):
        assert (await get(admin_proxy, path)).x_cache == "MISS"
    assert (await purge(admin_proxy, {"route": "nope"})).status == 404
    assert (await purge(admin_proxy, {"url": "https://evil/x"})).status == 400
    assert (await purge(admin_proxy, {"all": True, "key": "x"})).status == 400
