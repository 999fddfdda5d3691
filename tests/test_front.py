"""The front door's fast hit path (bloxproxy.front): prepared answers written as bytes.

A fresh anonymous GET hit is answered from a remembered ``FastEntry`` before aiohttp's
router runs, as one prepared HTTP/1.1 message. These tests check that such an answer is the
same answer the full pipeline gives, that it is used only when it may be, and that it is
sound HTTP on a real socket (keep-alive, pipelining, large bodies, HTTP/1.0, close).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bloxproxy import front as front_mod
from bloxproxy.app import FRONT
from bloxproxy.cache.entry import Entry, make_etag
from bloxproxy.fake import FakeRoblox
from bloxproxy.front import FastEntry, Front, SharedFast, WireResponse

from .conftest import FakeClock, ProxyFactory
from .redis_server import RedisServer
from .test_cache import settle

Client = TestClient[web.Request, web.Application]

USER = "/v1/users/156"
USER_PT = "/users/v1/users/156"
# Headers that differ between two answers by design.
_PER_ANSWER = {"x-request-id", "server-timing", "date", "age", "cache-control", "cache-status"}


def front_of(client: Client) -> Front:
    return client.server.app[FRONT]


async def answer(client: Client, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with client.get(path, headers=headers) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


async def warm(client: Client, path: str) -> tuple[int, dict[str, str], bytes]:
    """A MISS, then a HIT from the full pipeline; that HIT. Both leave a fast entry."""
    status, headers, _ = await answer(client, path)
    assert (status, headers["x-cache"]) == (200, "MISS")
    front = front_of(client)
    front.forget_all()  # so the next answer comes from the pipeline, and is remembered again
    hit = await answer(client, path)
    assert hit[1]["x-cache"] == "HIT"
    assert front.fast_answers == 0
    return hit


@pytest.mark.parametrize("path", [USER, USER_PT])
async def test_the_fast_answer_is_the_pipeline_answer(proxy: Client, path: str) -> None:
    front = front_of(proxy)
    status, slow, body = await warm(proxy, path)
    assert front.fast_answers == 0
    fstatus, fast, fbody = await answer(proxy, path)
    assert front.fast_answers == 1
    assert (fstatus, fbody) == (status, body)
    assert set(fast) == set(slow)
    for name in set(slow) - _PER_ANSWER:
        assert fast[name] == slow[name], name
    assert fast["content-length"] == str(len(body))
    assert fast["x-cache"] == "HIT"
    assert fast["cache-status"].startswith("bloxproxy; hit; ttl=")
    assert re.fullmatch(r"cache;desc=HIT;dur=[\d.]+, total;dur=[\d.]+", fast["server-timing"])
    assert fast["x-request-id"] != slow["x-request-id"]


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
    status, headers, _ = await answer(client, path)
    assert (status, headers["x-cache"]) == (200, "MISS")
    await settle(client)  # the L2 write is a background task
    assert front_of(client).fast == {}
    hit = await answer(client, path)
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
        fstatus, fast, fbody = await answer(client, path)
        assert (fstatus, fbody) == (status, body)
        assert set(fast) == set(slow)
        for name in set(slow) - _PER_ANSWER:
            assert fast[name] == slow[name], name
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


# -- the pieces ---------------------------------------------------------------------------------


def entry(**changes: object) -> FastEntry:
    args: dict[str, object] = {
        "key": "k", "stored_at": 100.0, "ttl": 60.0, "swr": 10.0, "sie": 0.0, "status": 200,
        "body": b"{}", "static": (("Content-Type", "application/json"),), "etag": "",
        "route": "r", "shared": True,
    }  # fmt: skip
    args.update(changes)
    return FastEntry(**args)  # type: ignore[arg-type]


def test_wire_head_is_rebuilt_each_second_and_refuses_unsafe_values() -> None:
    fe = entry()
    head = fe.wire(1.2, 1_800_000_000.3)
    assert head is not None and head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Cache-Control: public, max-age=58, stale-while-revalidate=10\r\n" in head
    assert b"Date: Fri, 15 Jan 2027 08:00:00 GMT\r\n" in head
    assert head.endswith(b"\r\n") and not head.endswith(b"\r\n\r\n")
    assert fe.wire(1.9, 1_800_000_000.9) is head  # same second: the same bytes
    assert b"Age: 2\r\n" in (fe.wire(2.0, 1_800_000_000.9) or b"")
    assert b"Date: Fri, 15 Jan 2027 08:00:01 GMT" in (fe.wire(2.0, 1_800_000_001.0) or b"")
    assert entry(static=(("X-Odd", "a\r\nSet-Cookie: x"),)).wire(1, 1) is None
    assert entry(static=(("Content-Language", "\udcff"),)).wire(1, 1) is None
    assert b"private, max-age=" in (entry(shared=False).wire(1, 1) or b"")


async def test_a_large_wire_body_arrives_whole() -> None:
    body = bytes(range(256)) * 1024  # 256 KiB: written after the head, not joined to it
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        return WireResponse(200, head, body)

    app = web.Application()
    app.router.add_get("/", handler)
    server = TestServer(app)
    client: Client = TestClient(server)
    await client.start_server()
    try:
        for _ in range(2):  # twice on one connection: keep-alive holds
            async with client.get("/") as resp:
                assert resp.status == 200
                assert await resp.read() == body
    finally:
        await client.close()


# -- every pipeline answer as prepared bytes (front.wired) -------------------------------------


def plain_responses() -> dict[str, Callable[[], web.Response]]:
    return {
        "/json": lambda: web.Response(
            body=b'{"a":1}', headers={"Content-Type": "application/json", "X-Cache": "MISS"}
        ),
        "/empty": lambda: web.Response(status=200),
        "/octets": lambda: web.Response(body=b"\x00\x01"),
        "/problem": lambda: web.Response(
            status=404, text='{"title":"x"}', content_type="application/problem+json"
        ),
        "/unicode": lambda: web.Response(body=b"x", headers={"X-Name": "Ærø"}),
        "/multi": lambda: web.Response(body=b"x", headers=[("X-A", "1"), ("X-A", "2")]),  # type: ignore[arg-type]
    }


async def raw_get(
    port: int, path: str, version: str = "1.1"
) -> tuple[bytes, dict[str, list[str]], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/{version}\r\nHost: x\r\n\r\n".encode())
        status = await reader.readline()
        headers: dict[str, list[str]] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        body = await reader.readexactly(int(headers.get("content-length", ["0"])[0]))
        return status, headers, body
    finally:
        writer.close()
        await writer.wait_closed()


async def test_wired_answers_are_the_answers_aiohttp_would_send() -> None:
    made = plain_responses()
    wired_types: dict[str, str] = {}

    async def plain(request: web.Request) -> web.StreamResponse:
        return made[request.match_info["p"]]()

    async def wire(request: web.Request) -> web.StreamResponse:
        resp = front_mod.wired(request, made[request.match_info["p"]]())
        wired_types[request.match_info["p"]] = type(resp).__name__
        return resp

    app = web.Application()
    app.router.add_get("/plain{p:/.*}", plain)
    app.router.add_get("/wire{p:/.*}", wire)
    server = TestServer(app)
    await server.start_server()
    try:
        for path in made:
            a = await raw_get(server.port, "/plain" + path)
            b = await raw_get(server.port, "/wire" + path)
            assert wired_types[path] == "WireResponse", path
            assert a[0] == b[0] and a[2] == b[2], path
            a[1].pop("date"), b[1].pop("date")
            assert a[1] == b[1], path
    finally:
        await server.close()


async def test_wired_leaves_what_it_cannot_say_to_aiohttp() -> None:
    seen: list[web.StreamResponse] = []
    cases = {
        "/head": lambda: web.Response(body=b"x"),
        "/204": lambda: web.Response(status=204),
        "/304": lambda: web.Response(status=304),
        "/newline": lambda: web.Response(body=b"x", headers={"X-Bad": "a\r\nSet-Cookie: x=1"}),
        "/closing": lambda: _closing(web.Response(body=b"x")),
        "/cookie": lambda: _with_cookie(web.Response(body=b"x")),
        "/te": lambda: web.Response(body=b"x", headers={"Transfer-Encoding": "chunked"}),
    }

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = cases[request.path]()
        out = front_mod.wired(request, resp)
        seen.append(out)
        assert out is resp, request.path
        if request.path in ("/newline", "/te"):
            return web.Response(body=b"ok")  # aiohttp would refuse or mis-frame these
        return out

    app = web.Application()
    for path in cases:
        app.router.add_route("*", path, handler)
    server = TestServer(app)
    client: Client = TestClient(server)
    await client.start_server()
    try:
        async with client.head("/head") as resp:
            assert resp.status == 200
        for path in ("/204", "/304", "/newline", "/closing", "/cookie", "/te"):
            async with client.get(path) as resp:
                assert resp.status in (200, 204, 304), path
        status, _, _ = await raw_get(server.port, "/cookie", version="1.0")
        assert status.startswith(b"HTTP/1.0 200")
    finally:
        await client.close()
    assert len(seen) == 8


def _closing(resp: web.Response) -> web.Response:
    resp.force_close()
    return resp


def _with_cookie(resp: web.Response) -> web.Response:
    resp.set_cookie("a", "b")
    return resp
