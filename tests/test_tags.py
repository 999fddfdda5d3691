"""Entity tags and purge by tag: the pure decisions as tables, then through the real proxy
in front of the fake Roblox (L1; two replicas on one real Redis in test_cache_redis.py's
way). Time moves with the injected clock; background work is awaited, never slept for.
"""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from bloxproxy import tagging
from bloxproxy.admin import PurgeOrder, purge_order
from bloxproxy.appkeys import CONFIG, FRONT
from bloxproxy.cache import decide, entities
from bloxproxy.cache.entry import Entry
from bloxproxy.cache.redis_store import RedisStore
from bloxproxy.cache.tags import TagIndex
from bloxproxy.fake import FakeRoblox
from bloxproxy.rules import BatchSpec
from bloxproxy.upstream.client import UpstreamRequest
from tests.conftest import FakeClock, ProxyFactory, fetcher_of
from tests.test_cache import TOKEN, USER, USER_KEY, USER_PT, Client, get, purge, settle
from tests.test_cache_redis import eventually, replicas

BATCH = "/v1/users?ids=1,156"
HEADSHOTS = "/v1/thumbnails/users/headshots?ids=156"


def batch_count(fake: FakeRoblox) -> int:
    return fake.count("users", "/v1/users", "POST")


def users_get_count(fake: FakeRoblox, uid: int = 156) -> int:
    return fake.count("users", f"/v1/users/{uid}", "GET")


# -- the pure decisions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        ("user:{user_id}", {"user_id": 156}, ("user:156",)),
        ("user:{ids}", {"ids": [1, 156]}, ("user:1", "user:156")),
        ("user:{ids}", {"ids": []}, ()),
        ("user:{user_id}", {}, ()),  # left out: no tag
        ("user:{user_id}", {"user_id": None}, ()),
        ("flag:{on}", {"on": True}, ("flag:true",)),
        ("name:{name}", {"name": "has space"}, ()),  # not a tag: left out
        ("name:{name}", {"name": "x" * 200}, ()),  # too long
        ("pair:{a}-{b}", {"a": [1, 2], "b": "x"}, ("pair:1-x", "pair:2-x")),
        ("static", {}, ("static",)),
        ("x" * 120 + "{n}", {"n": 10**10}, ()),  # an id too long for a tag
        ("user:{user_id}", {"user_id": -5}, ("user:-5",)),
    ],
)
def test_tag_templates(template: str, values: dict[str, Any], expected: tuple[str, ...]) -> None:
    assert tagging.render_tags([tagging.compile_tag(template)], values) == expected


def test_tags_are_deduplicated_and_capped() -> None:
    templates = [tagging.compile_tag("user:{ids}"), tagging.compile_tag("user:{ids}")]
    assert tagging.render_tags(templates, {"ids": [1, 1, 2]}) == ("user:1", "user:2")
    many = tagging.render_tags(templates, {"ids": list(range(1000))})
    assert len(many) == tagging.MAX_TAGS


@pytest.mark.parametrize(
    "text", ["", "user {user_id}", "user:{User}", "bad\nline", 7, None, "x" * 129, "{a"]
)
def test_bad_tag_templates(text: object) -> None:
    with pytest.raises(ValueError):
        tagging.compile_tag(text)


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("/v1/users/{user_id}", "/v1/users/156", {"user_id": "156"}),
        ("/v1/users/{user_id}/friends/count", "/v1/users/7/friends/count", {"user_id": "7"}),
        ("/v1/users/{user_id}", "/v1/users/156/extra", {}),
        ("/v1/users", "/v1/users", {}),
        ("/v1/groups/{group_id}", "/v1/groups/a%3Ab", {"group_id": "a:b"}),
    ],
)
def test_path_values(template: str, path: str, expected: dict[str, str]) -> None:
    assert tagging.path_values(template, path) == expected


@pytest.mark.parametrize(
    ("tag", "ok"),
    [("user:156", True), ("a", True), ("x" * 128, True), ("x" * 129, False), ("", False),
     ("user 156", False), ("user:156\n", False), ("é", False), (156, False), (None, False)],
)  # fmt: skip
def test_valid_tag(tag: object, ok: bool) -> None:
    assert tagging.valid_tag(tag) is ok


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"tag": "user:156"}, PurgeOrder("tag", "user:156")),
        ({"tag": "user:156", "soft": True}, PurgeOrder("tag", "user:156", soft=True)),
        ({"tag": "user:156", "soft": False}, PurgeOrder("tag", "user:156")),
        ({"url": "/v1/users/156"}, PurgeOrder("url", "/v1/users/156")),
        ({"key": "GET x"}, PurgeOrder("key", "GET x")),
        ({"all": True}, PurgeOrder("all")),
        ({"url": "/v1/users/156", "soft": False}, PurgeOrder("url", "/v1/users/156")),
    ],
)
def test_purge_orders(body: object, expected: PurgeOrder) -> None:
    assert purge_order(body) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "expected a JSON object"),
        ("user:156", "expected a JSON object"),
        ({}, "exactly one of"),
        ({"tag": 156}, "tag: expected a non-empty string"),
        ({"tag": ["user:156"]}, "tag: expected a non-empty string"),
        ({"tag": ""}, "tag: expected a non-empty string"),
        ({"tag": "x" * 10_000}, "tag: expected 1 to 128 characters"),
        ({"tag": "user 156"}, "tag: expected 1 to 128"),
        ({"tag": "user:156", "path": "/v1/users/156"}, "unknown field 'path'"),
        ({"tag": "user:156", "url": "/v1/users/156"}, "exactly one of"),
        ({"tag": "user:156", "soft": "yes"}, "soft: expected true or false"),
        ({"url": "/v1/users/156", "soft": True}, "only a purge by tag can be soft"),
        ({"all": False}, "all: expected true"),
        ({"x" * 1000: 1}, "unknown field '" + "x" * 40 + "'"),
    ],
)
def test_bad_purge_orders(body: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        purge_order(body)


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        # fresh, aged 5 s: stale from now on, its windows kept (served STALE for 60 s)
        (Entry(200, (), b"x", NOW - 5, 600, 60, 3600), decide.Freshness.STALE_WHILE_REVALIDATE),
        # fresh, aged 0: moved a millisecond back, still stale from now on
        (Entry(200, (), b"x", NOW, 600, 60, 0), decide.Freshness.STALE_WHILE_REVALIDATE),
        # stale-if-error only: kept for a failed refresh
        (Entry(200, (), b"x", NOW - 5, 600, 0, 3600), decide.Freshness.STALE_IF_ERROR),
        # no stale window: past its hard expiry, i.e. gone
        (Entry(404, (), b"", NOW - 5, 300), decide.Freshness.EXPIRED),
    ],
)
def test_marked_stale(entry: Entry, expected: decide.Freshness) -> None:
    marked = decide.marked_stale(entry, NOW)
    assert marked is not None
    assert decide.freshness(marked, NOW) is expected
    assert (marked.body, marked.etag, marked.status) == (entry.body, entry.etag, entry.status)
    assert abs(marked.age(NOW) - entry.age(NOW)) <= 0.001
    assert marked.hard_expiry() <= NOW + max(entry.stale_while_revalidate, entry.stale_if_error)


def test_marked_stale_leaves_a_stale_entry_alone() -> None:
    assert decide.marked_stale(Entry(200, (), b"x", NOW - 700, 600, 60), NOW) is None


def test_tag_index_sweeps_and_stays_bounded() -> None:
    held = {f"k{i}" for i in range(10)}
    index = TagIndex(max_pairs=8)
    for i in range(6):
        index.add(f"k{i}", (f"t{i}", "all"), held.__contains__)
        assert len(index) <= 8
    # the fifth: 10 pairs > 8, swept (all held), then the oldest tags (t0, all) forgotten
    assert index.forgotten == 2
    assert index.keys("all") == {"k5"} and index.keys("t0") == frozenset()
    assert index.keys("t4") == {"k4"}
    held.clear()  # evicted from the store
    index.add("k9", ("t9",), held.__contains__)
    for i in range(9):
        index.add(f"n{i}", ("n",), lambda _: False)
    assert len(index) <= 8
    assert index.pop("nope") == set()


USERS_BATCH = BatchSpec("users", "POST", "/v1/users", "userIds", 200, about="user")
NAMES = BatchSpec(
    "users", "POST", "/v1/usernames/users", "usernames", 100, key="requestedUsername",
    match="case_insensitive", echo=True, about="user",
)  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "norm", "item", "expected"),
    [
        (USERS_BATCH, "156", b'{"id":156}', ("user:156",)),
        (USERS_BATCH, "156", None, ("user:156",)),  # absent: still about user 156
        (NAMES, "builderman", b'{"id":156,"requestedUsername":"Builderman"}', ("user:156",)),
        (NAMES, "nobody", None, ()),
        (NAMES, "x", b"not json", ()),
        (NAMES, "x", b'{"id":"156"}', ()),
        (BatchSpec("users", "POST", "/v1/users", "userIds", 200), "156", None, ()),  # no about
    ],
)
def test_entity_tags(
    spec: BatchSpec, norm: str, item: bytes | None, expected: tuple[str, ...]
) -> None:
    assert entities.entity_tags(spec, norm, item) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"userIds":[156,156,1]}', ("user:156", "user:1")),  # an id twice: stored whole
        (b'{"userIds":[156,"x",true]}', ("user:156",)),
        (b"not json", ()),
        (b'{"userIds":"156"}', ()),
    ],
)
def test_request_tags(body: bytes, expected: tuple[str, ...]) -> None:
    req = UpstreamRequest("users", "POST", "/v1/users", "", (), body)
    assert entities.request_tags(USERS_BATCH, req) == expected


# -- through the proxy (L1) --------------------------------------------------------------------


@pytest.fixture
async def admin_proxy(make_proxy: ProxyFactory) -> Client:
    return await make_proxy(BLOXPROXY_SERVER_ADMIN_TOKEN=TOKEN)


async def test_purge_by_tag_drops_the_single_answer_and_the_batch_entries(
    admin_proxy: Client, fake: FakeRoblox
) -> None:
    for path in (USER, "/v1/users/1", BATCH, HEADSHOTS):
        assert (await get(admin_proxy, path)).x_cache == "MISS"
    await settle(admin_proxy)
    answer = await purge(admin_proxy, {"tag": "user:156"})
    assert answer.status == 200
    # users.get's entry, the batch's entity entry of 156 and the headshot's
    assert answer.json() == {"purged": 3, "scope": "tag", "target": "user:156", "soft": False}
    assert (await get(admin_proxy, USER)).x_cache == "MISS"
    assert (await get(admin_proxy, USER_PT)).x_cache == "HIT"  # (the entry just refilled)
    assert (await get(admin_proxy, "/v1/users/1")).x_cache == "HIT"  # another user
    batches = batch_count(fake)
    again = await get(admin_proxy, BATCH)
    assert again.x_cache == "MISS"  # 156 asked again, 1 from its entry
    assert batch_count(fake) == batches + 1
    assert orjson.loads(fake.requests[-1].body)["userIds"] == [156]
    assert [u["id"] for u in again.json()["data"]] == [1, 156]
    assert (await get(admin_proxy, HEADSHOTS)).x_cache == "MISS"
    assert (await get(admin_proxy, "/v1/users?ids=1")).x_cache == "HIT"
    assert (await purge(admin_proxy, {"tag": "user:424242"})).json()["purged"] == 0


async def test_an_entry_filled_through_passthrough_is_tagged_too(
    admin_proxy: Client, fake: FakeRoblox
) -> None:
    assert (await get(admin_proxy, USER_PT)).x_cache == "MISS"
    assert (await purge(admin_proxy, {"tag": "user:156"})).json()["purged"] == 1
    assert (await get(admin_proxy, USER)).x_cache == "MISS"
    assert users_get_count(fake) == 2


async def test_a_purge_by_tag_drops_the_renderings_and_the_remembered_answer(
    admin_proxy: Client, fake: FakeRoblox
) -> None:
    for _ in range(3):  # a miss, then hits: remembered by the front door's fast path
        await get(admin_proxy, USER)
    fetcher = fetcher_of(admin_proxy)
    assert any(k.startswith(USER_KEY + " |render=") for k in fetcher.l1._cache)
    await purge(admin_proxy, {"tag": "user:156"})
    assert not any(k.startswith(USER_KEY) for k in fetcher.l1._cache)
    assert (await get(admin_proxy, USER)).x_cache == "MISS"
    assert users_get_count(fake) == 2


async def test_soft_purge_serves_stale_then_refreshes_once(
    admin_proxy: Client, fake: FakeRoblox, clock: FakeClock
) -> None:
    for _ in range(3):  # remembered by the fast path too: it must not answer HIT after
        assert (await get(admin_proxy, USER)).status == 200
    assert admin_proxy.server.app[FRONT].fast_answers == 1
    await get(admin_proxy, BATCH)
    clock.advance(5)
    answer = await purge(admin_proxy, {"tag": "user:156", "soft": True})
    assert answer.json() == {"purged": 2, "scope": "tag", "target": "user:156", "soft": True}
    gets, batches = users_get_count(fake), batch_count(fake)
    stale = await get(admin_proxy, USER)
    assert (stale.status, stale.x_cache) == (200, "STALE")  # at once, while one refresh runs
    assert stale.headers["Age"] == "5"
    assert (await get(admin_proxy, USER)).x_cache in ("STALE", "HIT")
    await settle(admin_proxy)
    assert users_get_count(fake) == gets + 1  # exactly one refresh
    fresh = await get(admin_proxy, USER)
    assert (fresh.x_cache, fresh.headers["Age"]) == ("HIT", "0")
    # the batch: 156's entry stale (refreshed in a batch), 1's untouched
    assert (await get(admin_proxy, BATCH)).x_cache == "STALE"
    fetcher = fetcher_of(admin_proxy)
    entity = next(k for k in fetcher.l1._cache if k.endswith(" id=156"))
    refresh = fetcher.batcher.known(entity)
    assert refresh is not None
    await refresh
    assert batch_count(fake) == batches + 1
    assert orjson.loads(fake.requests[-1].body)["userIds"] == [156]
    assert (await get(admin_proxy, BATCH)).x_cache == "HIT"


async def test_soft_purge_without_a_stale_window_is_a_purge(
    admin_proxy: Client, fake: FakeRoblox, clock: FakeClock
) -> None:
    assert (await get(admin_proxy, "/v1/users/999")).status == 404  # negative: no windows
    clock.advance(1)
    assert (await purge(admin_proxy, {"tag": "user:999", "soft": True})).json()["purged"] == 1
    assert (await get(admin_proxy, "/v1/users/999")).x_cache == "MISS"
    assert users_get_count(fake, 999) == 2


@pytest.mark.parametrize(
    "data",
    [
        b'{"tag": 156}',
        b'{"tag": ""}',
        b'{"tag": "' + b"u" * 100_000 + b'"}',
        b'{"tag": "user:\xff\xfe"}',  # not UTF-8
        b"\xff\xfe\x00",
        b'{"tag": "user:156", "path": "/v1/users/156"}',
        b'{"tag": "user:156", "url": "/v1/users/156"}',
        b'{"tag": "user:156", "soft": 1}',
        b'{"tag": "user:156", "nope": true}',
        b'{"tag": null}',
        b"[]",
        b"",
    ],
)
async def test_hostile_purge_bodies_are_400_problems(admin_proxy: Client, data: bytes) -> None:
    await get(admin_proxy, USER)
    answer = await get(
        admin_proxy,
        "/_bloxproxy/admin/purge",
        "POST",
        data=data,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status == 400
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["status"] == 400 and problem["detail"]
    if data.startswith((b"\xff", b'{"tag": "user:\xff')) or not data:
        assert problem["detail"].startswith("the body is not JSON (UTF-8)")
    assert len(answer.body) < 2000  # a huge tag is not echoed back
    assert (await get(admin_proxy, USER)).x_cache == "HIT"  # nothing was purged


async def test_the_tag_header_is_off_by_default(proxy: Client) -> None:
    for path in (USER, USER, USER, BATCH):
        assert "Surrogate-Key" not in (await get(proxy, path)).headers


async def test_the_tag_header_when_configured(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(BLOXPROXY_CACHE_TAG_HEADER="Surrogate-Key")
    answers = [await get(proxy, USER) for _ in range(3)]  # a miss, a hit, a remembered hit
    assert [a.x_cache for a in answers] == ["MISS", "HIT", "HIT"]
    assert [a.headers.get("Surrogate-Key") for a in answers] == ["user:156"] * 3
    assert proxy.server.app[FRONT].fast_answers == 1  # the remembered answer repeats it
    batch = await get(proxy, "/v1/users?ids=156,1")
    assert batch.headers["Surrogate-Key"] == "user:1 user:156"  # (ids sorted upstream)
    assert (await get(proxy, USER_PT)).headers["Surrogate-Key"] == "user:156"
    # a route that tags nothing says nothing
    assert "Surrogate-Key" not in (await get(proxy, "/v1/users/search?keyword=builderman")).headers


# -- two replicas on one Redis -----------------------------------------------------------------


async def test_a_tag_purge_on_one_replica_reaches_the_other(
    make_proxy: ProxyFactory, redis_url: str, redis_client: aioredis.Redis, fake: FakeRoblox
) -> None:
    a, b = await replicas(make_proxy, redis_url)
    for path in (USER, BATCH):
        await get(a, path)
    await settle(a)
    for path in (USER, BATCH):
        assert (await get(b, path)).x_cache == "HIT"  # b's L1 filled from Redis, indexed
    assert await redis_client.smembers("bloxproxy:tag:user:156")
    entity = next(k for k in fetcher_of(a).l1._cache if k.endswith(" id=156"))
    answer = await purge(b, {"tag": "user:156"})
    assert answer.json()["purged"] == 2
    assert not await redis_client.exists("bloxproxy:tag:user:156", "bloxproxy:" + USER_KEY)
    assert not await redis_client.exists("bloxproxy:" + entity)
    assert await redis_client.exists("bloxproxy:tag:user:1")
    await eventually(lambda: USER_KEY not in fetcher_of(a).l1 and entity not in fetcher_of(a).l1)
    assert (await get(a, USER)).x_cache == "MISS"
    assert (await get(a, "/v1/users?ids=1")).x_cache == "HIT"


async def test_a_soft_tag_purge_reaches_the_other_replica(
    make_proxy: ProxyFactory, redis_url: str, redis_client: aioredis.Redis, fake: FakeRoblox,
    clock: FakeClock,
) -> None:  # fmt: skip
    a, b = await replicas(make_proxy, redis_url)
    await get(a, USER)
    await settle(a)
    for _ in range(3):
        assert (await get(b, USER)).x_cache == "HIT"
    clock.advance(5)
    assert (await purge(a, {"tag": "user:156", "soft": True})).json()["purged"] == 1
    stored = await redis_client.get("bloxproxy:" + USER_KEY)
    assert stored is not None
    marked = Entry.from_bytes(stored)
    assert decide.freshness(marked, clock()) is decide.Freshness.STALE_WHILE_REVALIDATE

    def stale_on_b() -> bool:
        entry = fetcher_of(b).l1.get_nowait(USER_KEY)
        return entry is not None and not entry.is_fresh(clock())

    await eventually(stale_on_b)
    count = users_get_count(fake)
    assert (await get(b, USER)).x_cache == "STALE"
    await settle(b)
    assert users_get_count(fake) == count + 1
    assert (await get(b, USER)).x_cache == "HIT"
    body = orjson.loads((await get(b, USER)).body)
    assert body["id"] == 156


async def test_without_l1_the_header_and_the_purge_work_from_redis(
    make_proxy: ProxyFactory, redis_url: str, redis_client: aioredis.Redis, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(
        BLOXPROXY_CACHE_REDIS_URL=redis_url,
        BLOXPROXY_CACHE_MAX_ENTRIES="0",
        BLOXPROXY_CACHE_TAG_HEADER="Surrogate-Key",
        BLOXPROXY_SERVER_ADMIN_TOKEN=TOKEN,
    )
    answers = []
    for _ in range(3):  # a miss, a hit from Redis, a hit of the remembered SharedFast
        answers.append(await get(proxy, USER))
        await settle(proxy)
    assert [a.x_cache for a in answers] == ["MISS", "HIT", "HIT"]
    assert [a.headers.get("Surrogate-Key") for a in answers] == ["user:156"] * 3
    assert proxy.server.app[FRONT].fast_answers == 1
    assert len(fetcher_of(proxy).tags) == 0  # no L1, no index
    assert (await purge(proxy, {"tag": "user:156"})).json()["purged"] == 1
    assert not await redis_client.exists("bloxproxy:" + USER_KEY)
    assert (await get(proxy, USER)).x_cache == "MISS"
    assert users_get_count(fake) == 2


# -- the Redis side, against a real server ---------------------------------------------------


async def test_redis_tag_sets_live_as_long_as_their_longest_entry(
    redis_client: aioredis.Redis,
) -> None:
    store = RedisStore(redis_client, "t:", lambda: NOW)
    await store.set("GET a", Entry(200, (), b"a", NOW, 60), ("user:1", "group:7"))
    await store.set("GET b", Entry(200, (), b"b", NOW, 600, 0, 3600), ("user:1",))
    await store.set("GET c", Entry(200, (), b"c", NOW, 30), ("user:1",))  # shorter: no change
    await store.set("GET d", Entry(200, (), b"d", NOW, 30))  # untagged: a plain SET
    assert await redis_client.smembers("t:tag:user:1") == {b"GET a", b"GET b", b"GET c"}
    assert await redis_client.smembers("t:tag:group:7") == {b"GET a"}
    assert 4_195_000 < await redis_client.pttl("t:tag:user:1") <= 4_200_000
    assert 55_000 < await redis_client.pttl("t:tag:group:7") <= 60_000
    assert (await store.get("GET a")) == Entry(200, (), b"a", NOW, 60)
    assert await store.delete_tag("group:7") == 1
    assert not await redis_client.exists("t:GET a", "t:tag:group:7")
    assert await store.delete_tag("user:1") == 2  # (a already gone)
    assert [k async for k in redis_client.scan_iter("t:*")] == [b"t:GET d"]
    assert await store.delete_tag("user:1") == 0


async def test_a_soft_redis_purge_leaves_an_entry_refreshed_meanwhile_alone(
    redis_client: aioredis.Redis, redis_url: str
) -> None:
    store = RedisStore(redis_client, "t:", lambda: NOW)
    old = Entry(200, (), b"old", NOW - 5, 600, 60)
    for key in ("GET a", "GET b"):
        await store.set(key, old, ("user:1",))
    newer = Entry(200, (), b"new", NOW, 600, 60)
    sync = redis.Redis.from_url(redis_url)

    def mark(entry: Entry) -> Entry | None:
        if entry.body == b"old" and not sync.exists("t:refreshed"):
            sync.set("t:refreshed", b"1")
            sync.set("t:GET a", newer.to_bytes())  # a refresh lands between read and write
        return decide.marked_stale(entry, NOW)

    try:
        assert await store.soften_tag("user:1", mark) == 1
    finally:
        sync.close()
    a, b = await store.get("GET a"), await store.get("GET b")
    assert a == newer  # not overwritten with the stale old one
    assert b is not None and b.body == b"old"
    assert decide.freshness(b, NOW) is decide.Freshness.STALE_WHILE_REVALIDATE
    assert 59_000 < await redis_client.pttl("t:GET b") <= 60_000  # its window only
    gone = Entry(404, (), b"", NOW - 5, 300)  # no stale window: the soft purge deletes it
    await store.set("GET c", gone, ("user:2",))
    assert await store.soften_tag("user:2", lambda e: decide.marked_stale(e, NOW)) == 1
    assert not await redis_client.exists("t:GET c")


async def test_a_purge_body_past_the_body_limit_is_a_413_problem(admin_proxy: Client) -> None:
    limit = admin_proxy.server.app[CONFIG].server.max_body_size
    data = b'{"tag": "' + b"u" * (limit + 10) + b'"}'
    answer = await get(
        admin_proxy,
        "/_bloxproxy/admin/purge",
        "POST",
        data=io.BytesIO(data),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status == 413
    assert answer.headers["Content-Type"].startswith("application/problem+json")
