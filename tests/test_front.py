"""The front door's fast hit path (bloxproxy.front): prepared answers written as bytes.

A fresh anonymous GET hit is answered from a remembered ``FastEntry`` before aiohttp's
router runs, as one prepared HTTP/1.1 message. These tests check that such an answer is the
same answer the full pipeline gives, that it is used only when it may be, and that it is
sound HTTP on a real socket (keep-alive, pipelining, large bodies, HTTP/1.0, close).
"""

from __future__ import annotations

import asyncio
import re

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from bloxproxy import front as front_mod
from bloxproxy.appkeys import FRONT
from bloxproxy.cache.entry import Entry, make_etag
from bloxproxy.fake import FakeRoblox
from bloxproxy.front import Front
from bloxproxy.prepared import SharedFast

from .conftest import FakeClock, ProxyFactory
from .redis_server import RedisServer
from .test_cache import settle

Client = TestClient[web.Request, web.Application]

USER = "/v1/users/156"
USER_PT = "/users/v1/users/156"
# Every answer names the request it answers; the tests send this id with every request, so
# that two answers can be compared header for header.
RID = {"X-Request-ID": "compare-me"}
_DURATIONS = re.compile(r"dur=[\d.]+")


def same_answer(fast: dict[str, str], slow: dict[str, str]) -> None:
    """Every header of the fast answer is the pipeline's, value for value (the clock is
    held still); only Server-Timing's measured durations may differ."""
    assert set(fast) == set(slow)
    for name, value in slow.items():
        if name == "server-timing":
            assert _DURATIONS.sub("dur=N", fast[name]) == _DURATIONS.sub("dur=N", value)
        else:
            assert fast[name] == value, name


def front_of(client: Client) -> Front:
    return client.server.app[FRONT]


async def answer(client: Client, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with client.get(path, headers=headers) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


async def warm(client: Client, path: str) -> tuple[int, dict[str, str], bytes]:
    """A MISS, then a HIT from the full pipeline; that HIT. Both leave a fast entry."""
    status, headers, _ = await answer(client, path, **RID)
    assert (status, headers["x-cache"]) == (200, "MISS")
    front = front_of(client)
    front.forget_all()  # so the next answer comes from the pipeline, and is remembered again
    hit = await answer(client, path, **RID)
    assert hit[1]["x-cache"] == "HIT"
    assert front.fast_answers == 0
    return hit


@pytest.mark.parametrize("path", [USER, USER_PT])
async def test_the_fast_answer_is_the_pipeline_answer(proxy: Client, path: str) -> None:
    front = front_of(proxy)
    status, slow, body = await warm(proxy, path)
    assert front.fast_answers == 0
    fstatus, fast, fbody = await answer(proxy, path, **RID)
    assert front.fast_answers == 1
    assert (fstatus, fbody) == (status, body)
    same_answer(fast, slow)
    assert fast["content-length"] == str(len(body))
    assert fast["x-cache"] == "HIT"
    assert fast["cache-status"].startswith("bloxproxy; hit; ttl=")
    assert re.fullmatch(r"cache;desc=HIT;dur=[\d.]+, total;dur=[\d.]+", fast["server-timing"])


async def test_age_and_max_age_follow_the_clock(proxy: Client, clock: FakeClock) -> None:
    await warm(proxy, USER)
    clock.advance(42.5)
    _, headers, _ = await answer(proxy, USER)
    assert front_of(proxy).fast_answers == 1
    assert headers["age"] == "42"
    max_age = int(re.search(r"max-age=(\d+)", headers["cache-control"]).group(1))  # type: ignore[union-attr]
    clock.advance(1)
    _, later, _ = await answer(proxy, USER)
    assert later["age"] == "43"
    assert f"max-age={max_age - 1}" in later["cache-control"]


async def test_a_stale_entry_goes_back_to_the_pipeline(
    proxy: Client, clock: FakeClock, fake: FakeRoblox
) -> None:
    await warm(proxy, USER)
    clock.advance(24 * 3600)
    _, headers, _ = await answer(proxy, USER)
    assert headers["x-cache"] != "HIT"
    assert front_of(proxy).fast_answers == 0


async def test_the_client_request_id_is_echoed(proxy: Client) -> None:
    await warm(proxy, USER)
    _, headers, _ = await answer(proxy, USER, **{"X-Request-ID": "abc-123"})
    assert front_of(proxy).fast_answers == 1
    assert headers["x-request-id"] == "abc-123"
    _, headers, _ = await answer(proxy, USER, **{"X-Request-ID": "bad id\u00e9"})
    assert headers["x-request-id"] != "bad id\u00e9"


@pytest.mark.parametrize(
    "header",
    [
        {"Cookie": ".ROBLOSECURITY=x"},
        {"Authorization": "Bearer x"},
        {"If-None-Match": '"nope"'},
        {"Accept-Language": "de-DE"},
        {"Connection": "close"},
    ],
)
async def test_requests_that_may_differ_take_the_pipeline(
    proxy: Client, header: dict[str, str]
) -> None:
    await warm(proxy, USER_PT)
    status, headers, _ = await answer(proxy, USER_PT, **header)
    assert status in (200, 304)
    assert front_of(proxy).fast_answers == 0
    if "Connection" in header:
        assert headers["connection"] == "close"


async def test_a_purge_ends_the_fast_answers(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    client = await make_proxy(BLOXPROXY_SERVER_ADMIN_TOKEN="t" * 32)
    await warm(client, USER)
    await answer(client, USER)
    assert front_of(client).fast_answers == 1
    async with client.post(
        "/_bloxproxy/admin/purge",
        json={"all": True},
        headers={"Authorization": "Bearer " + "t" * 32},
    ) as resp:
        assert resp.status == 200
    _, headers, _ = await answer(client, USER)
    assert headers["x-cache"] == "MISS"
    assert front_of(client).fast_answers == 1


async def test_only_a_hit_is_remembered(proxy: Client) -> None:
    front = front_of(proxy)
    await answer(proxy, USER)  # MISS: a key asked for once leaves nothing behind
    assert front.fast == {}
    await answer(proxy, USER)  # a HIT from the pipeline: remembered
    assert list(front.fast) == [USER]
    await answer(proxy, USER)
    assert front.fast_answers == 1


async def test_no_fast_answers_without_an_l1(make_proxy: ProxyFactory) -> None:
    client = await make_proxy(BLOXPROXY_CACHE_MAX_ENTRIES="0")
    for _ in range(3):
        _, headers, _ = await answer(client, USER)
        assert headers["x-cache"] == "MISS"
    assert front_of(client).fast == {}


async def test_metrics_and_access_log_count_fast_answers(proxy: Client) -> None:
    await warm(proxy, USER)
    for _ in range(3):
        await answer(proxy, USER)
    async with proxy.get("/_bloxproxy/metrics") as resp:
        text = await resp.text()
    hits = re.search(r'^bloxproxy_cache_results_total\{result="HIT",route="users.get"\} (\S+)$',
                     text, re.M)  # fmt: skip
    assert hits is not None and float(hits.group(1)) == 4.0  # 1 pipeline hit + 3 fast


def test_every_own_route_is_known_to_the_dispatcher(proxy: Client) -> None:
    """dispatch() sends everything else straight to the catch-all, skipping the router: a
    new route of the proxy's own must live where dispatch() looks for them."""
    canonicals = [r.canonical for r in proxy.server.app.router.resources()]
    assert "/{tail}" in canonicals
    for path in canonicals:
        if path != "/{tail}":
            assert path.startswith(front_mod._OWN_PREFIX) or path in front_mod._OWN_PATHS, path


async def test_own_paths_still_route_and_odd_spellings_are_the_catch_alls(proxy: Client) -> None:
    async with proxy.get("/_bloxproxy/healthz") as resp:
        assert resp.status == 200
    async with proxy.get("/docs") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
    for odd in ("/_bloxproxy", "/docs/x", "/_bloxproxyz/healthz"):
        async with proxy.get(odd) as resp:
            assert resp.status == 404, odd
            assert resp.content_type == "application/problem+json"


async def test_the_root_is_a_404_problem_pointing_at_the_docs(
    proxy: Client, make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    for method in ("GET", "POST", "DELETE"):
        async with proxy.request(method, "/") as resp:
            assert resp.status == 404, method
            assert resp.content_type == "application/problem+json"
            problem = orjson.loads(await resp.read())
        assert problem["code"] == "no_route" and problem["instance"] == "/"
        assert "/docs" in problem["detail"] and "/openapi.json" in problem["detail"]
        assert problem["request_id"] == resp.headers["X-Request-ID"]
    async with proxy.head("/") as resp:
        assert resp.status == 404 and await resp.read() == b""
    async with proxy.get("/docs") as resp:  # where it points
        assert resp.status == 200 and resp.content_type == "text/html"
    assert fake.total == 0, "never an upstream call"
    keyed = await make_proxy(BLOXPROXY_AUTH_KEYS="k1")
    async with keyed.get("/") as resp:
        assert resp.status == 401, "like /docs: behind the access key"
    async with keyed.get("/", headers={"X-Bloxproxy-Key": "k1"}) as resp:
        assert resp.status == 404


# -- from Redis, with no L1 (SharedFast) ------------------------------------------------------

KEY = "bloxproxy:GET users/v1/users/156"  # the Redis name of both paths' entry


async def shared_proxy(make_proxy: ProxyFactory, redis_url: str, **env: str) -> Client:
    return await make_proxy(
        BLOXPROXY_CACHE_MAX_ENTRIES="0", BLOXPROXY_CACHE_REDIS_URL=redis_url, **env
    )


async def warm_shared(client: Client, path: str) -> tuple[int, dict[str, str], bytes]:
    """A MISS (stored in Redis only), then a HIT from Redis by the pipeline; that HIT."""
    status, headers, _ = await answer(client, path, **RID)
    assert (status, headers["x-cache"]) == (200, "MISS")
    await settle(client)  # the L2 write is a background task
    assert front_of(client).fast == {}
    hit = await answer(client, path, **RID)
    assert hit[1]["x-cache"] == "HIT"
    assert front_of(client).fast_answers == 0
    return hit


async def rewrite(redis: aioredis.Redis, body: bytes, *, stored_at: float, **kw: object) -> None:
    """Put another version of the entry in Redis, as another replica's refresh would."""
    fields: dict[str, object] = {
        "status": 200, "headers": (("Content-Type", "application/json"),), "body": body,
        "stored_at": stored_at, "ttl": 600.0, "stale_while_revalidate": 60.0,
        "stale_if_error": 3600.0, "etag": make_etag(body),
    }  # fmt: skip
    fields.update(kw)
    await redis.set(KEY, Entry(**fields).to_bytes())  # type: ignore[arg-type]


@pytest.mark.parametrize("path", [USER, USER_PT])
async def test_the_fast_answer_from_redis_is_the_pipeline_answer(
    make_proxy: ProxyFactory, redis_url: str, path: str
) -> None:
    client = await shared_proxy(make_proxy, redis_url)
    status, slow, body = await warm_shared(client, path)
    front = front_of(client)
    remembered = front.fast[path]
    assert isinstance(remembered, SharedFast)
    for _ in range(2):
        fstatus, fast, fbody = await answer(client, path, **RID)
        assert (fstatus, fbody) == (status, body)
        same_answer(fast, slow)
        assert fast["x-cache"] == "HIT"
    assert front.fast_answers == 2
    # It keeps no answer: only the header block of the entry version it last answered.
    assert remembered.last is not None and remembered.last.body == b""


async def test_the_fast_answer_from_redis_follows_every_change_there(
    make_proxy: ProxyFactory, redis_url: str, redis_client: aioredis.Redis, clock: FakeClock
) -> None:
    client = await shared_proxy(make_proxy, redis_url)
    await warm_shared(client, USER_PT)
    front = front_of(client)

    # Another replica refreshed the entry: the next answer is the new one, new ETag too.
    new = b'{"id":156,"name":"builderman","displayName":"Renamed"}'
    await rewrite(redis_client, new, stored_at=clock() + 1)
    clock.advance(2)
    _, headers, body = await answer(client, USER_PT)
    assert (body, headers["etag"], headers["age"]) == (new, make_etag(new), "1")
    assert front.fast_answers == 1
    # And the clean route renders it (its own ETag: the rendering's).
    await answer(client, USER)  # the pipeline's HIT from Redis, remembered
    _, headers, body = await answer(client, USER)
    assert front.fast_answers == 2
    assert orjson.loads(body)["display_name"] == "Renamed"
    assert headers["etag"] == make_etag(body)

    # Purged elsewhere (the key is gone from Redis): the pipeline, a MISS.
    await redis_client.delete(KEY)
    _, headers, _ = await answer(client, USER_PT)
    assert headers["x-cache"] == "MISS"
    assert front.fast_answers == 2


@pytest.mark.parametrize(
    ("kw", "expect"),
    [
        ({"stored_at_delta": -630.0}, "STALE"),  # past its ttl: the pipeline revalidates
        ({"stored_at_delta": +30.0}, "HIT"),  # from a replica whose clock runs ahead
        ({"status": 203}, "HIT"),  # not a 200: the pipeline answers
    ],
)
async def test_entries_the_fast_path_may_not_answer_go_to_the_pipeline(
    make_proxy: ProxyFactory,
    redis_url: str,
    redis_client: aioredis.Redis,
    clock: FakeClock,
    kw: dict[str, float],
    expect: str,
) -> None:
    client = await shared_proxy(make_proxy, redis_url)
    await warm_shared(client, USER)
    kw = dict(kw)
    stored_at = clock() + kw.pop("stored_at_delta", 0.0)
    await rewrite(
        redis_client, b'{"id":156,"name":"b","displayName":"b"}', stored_at=stored_at, **kw
    )
    status, headers, _ = await answer(client, USER)
    assert (status, headers["x-cache"]) == (200, expect)
    assert front_of(client).fast_answers == 0


@pytest.mark.parametrize(
    "header", [{"Cookie": ".ROBLOSECURITY=x"}, {"If-None-Match": '"nope"'}, {"Connection": "close"}]
)
async def test_requests_that_may_differ_take_the_pipeline_with_redis_too(
    make_proxy: ProxyFactory, redis_url: str, header: dict[str, str]
) -> None:
    client = await shared_proxy(make_proxy, redis_url)
    await warm_shared(client, USER_PT)
    status, headers, _ = await answer(client, USER_PT, **header)
    assert status == 200
    assert headers["x-cache"] == ("BYPASS" if "Cookie" in header else "HIT")
    assert front_of(client).fast_answers == 0


async def test_a_body_the_route_refuses_is_the_pipelines_problem(
    make_proxy: ProxyFactory, redis_url: str, redis_client: aioredis.Redis, clock: FakeClock
) -> None:
    client = await shared_proxy(make_proxy, redis_url)
    await warm_shared(client, USER)
    await rewrite(redis_client, b"<html>not json</html>", stored_at=clock())
    status, headers, body = await answer(client, USER)
    assert status == 502
    assert headers["content-type"] == "application/problem+json"
    assert b"invalid JSON" in body
    assert front_of(client).fast_answers == 0
    assert not await redis_client.exists(KEY)  # and the pipeline dropped it, as always


@pytest.mark.redis  # starts its own redis-server
async def test_redis_gone_sends_the_fast_path_to_the_pipeline(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    server = RedisServer()
    server.start()
    try:
        client = await shared_proxy(make_proxy, server.url)
        await warm_shared(client, USER)
        await answer(client, USER)
        assert front_of(client).fast_answers == 1
        server.kill()
        for _ in range(3):
            status, headers, _ = await answer(client, USER)
            assert (status, headers["x-cache"]) == (200, "MISS")  # from Roblox, no error
        assert front_of(client).fast_answers == 1
    finally:
        server.stop()


# -- on a raw socket --------------------------------------------------------------------------


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    status = await reader.readline()
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def test_pipelined_requests_get_their_answers_in_order(proxy: Client) -> None:
    _, _, body = await warm(proxy, USER)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    try:
        ids = [f"req-{i}" for i in range(5)]
        writer.write(b"".join(
            f"GET {USER} HTTP/1.1\r\nHost: x\r\nX-Request-ID: {rid}\r\n\r\n".encode() for rid in ids
        ))  # fmt: skip
        await writer.drain()
        for rid in ids:
            status, headers, got = await asyncio.wait_for(read_answer(reader), 5)
            assert status == b"HTTP/1.1 200 OK\r\n"
            assert headers["x-request-id"] == rid
            assert got == body
        assert front_of(proxy).fast_answers == 5
    finally:
        writer.close()
        await writer.wait_closed()


async def test_an_asterisk_target_gets_a_problem_too(proxy: Client) -> None:
    """``OPTIONS *`` matches no route: before the dispatcher it got aiohttp's plain-text 404."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    try:
        writer.write(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await asyncio.wait_for(read_answer(reader), 5)
        assert status.startswith(b"HTTP/1.1 404")
        assert headers["content-type"] == "application/problem+json"
        assert b'"status":404' in body.replace(b" ", b"")
    finally:
        writer.close()
        await writer.wait_closed()


async def test_http_1_0_gets_an_http_1_0_answer(proxy: Client) -> None:
    _, _, body = await warm(proxy, USER)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    try:
        writer.write(f"GET {USER} HTTP/1.0\r\n\r\n".encode())
        status, headers, got = await asyncio.wait_for(read_answer(reader), 5)
        assert status.startswith(b"HTTP/1.0 200")
        assert (got, headers["x-cache"]) == (body, "HIT")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection closes
        assert front_of(proxy).fast_answers == 0
    finally:
        writer.close()
        await writer.wait_closed()
