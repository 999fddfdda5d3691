"""Open Cloud through the proxy (rules/opencloud.yaml) against the fake: the caller's own
key, the long-running thumbnail operation, Open Cloud errors as problem+json, page tokens,
per-key cache isolation under concurrency, learned limit headers and a 429's retry-after."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

from bloxproxy.appkeys import GUARD
from bloxproxy.fake import FakeRoblox, Fault, IpLimit
from bloxproxy.fake.state import viewer_tag
from tests.conftest import FakeClock, ProxyFactory

Client = TestClient[web.Request, web.Application]
KEY = {"x-api-key": "key-of-alice"}
THUMB = "/v2/cloud/users/156/thumbnail?size=150"


async def call(
    proxy: Client, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    async with proxy.get(url, headers=KEY if headers is None else headers) as resp:
        body = await resp.read()
        return resp.status, orjson.loads(body) if body else None, resp.headers.copy()


async def test_the_thumbnail_operation_is_polled_until_done(
    proxy: Client, fake: FakeRoblox
) -> None:
    fake.cloud.polls = 2
    status, body, _ = await call(proxy, THUMB)
    assert status == 200, body
    assert set(body) == {"image_uri"} and body["image_uri"].startswith("https://tr.rbxcdn.com/")
    asked = [(r.path, r.headers.get("x-api-key")) for r in fake.requests]
    assert asked[0] == ("/cloud/v2/users/156:generateThumbnail", KEY["x-api-key"])
    assert [p for p, _ in asked[1:]] == [asked[1][0]] * 2  # the same operation, twice
    assert asked[1][0].startswith("/cloud/v2/users/156/operations/")
    assert {k for _, k in asked} == {KEY["x-api-key"]}  # every poll with the caller's key
    # a not-done operation is never stored; asked again, Roblox has the thumbnail made and
    # answers done at once (one call), which is kept for the route's TTL (none after)
    before = fake.total
    assert (await call(proxy, THUMB))[1] == body
    assert fake.total == before + 1
    assert (await call(proxy, THUMB))[1] == body
    assert fake.total == before + 1


async def test_an_operation_still_running_is_a_clear_202(
    proxy: Client, fake: FakeRoblox, clock: FakeClock
) -> None:
    fake.cloud.polls = 100
    started = clock.now
    status, body, headers = await call(proxy, THUMB)
    assert status == 202 and headers["Retry-After"] == "1"
    assert body["done"] is False and body["operation"].startswith("users/156/operations/")
    assert clock.now - started <= 5.0  # hold.within
    assert 2 <= fake.total <= 6
    # not stored: the next request asks Roblox again
    before = fake.total
    fake.cloud.polls = 0
    assert (await call(proxy, THUMB))[0] == 200
    assert fake.total > before


async def test_an_operation_name_that_is_not_a_resource_path_is_never_polled(
    proxy: Client, fake: FakeRoblox
) -> None:
    for name in ("../../users/v1/users/1", "users/1/%2e%2e/x", "", "a" * 600, 7):
        fake.reset()
        payload = orjson.dumps({"path": name, "done": False})
        fake.script(
            "apis",
            "/cloud/v2/users/156:generateThumbnail",
            [Fault(body=payload, content_type="application/json")],
        )
        status, body, _ = await call(proxy, THUMB)
        assert (status, body["operation"]) == (202, None), name
        assert fake.total == 1, name  # asked nothing else


async def test_open_cloud_errors_become_problems_with_the_upstream_error(
    proxy: Client, fake: FakeRoblox
) -> None:
    status, body, _ = await call(proxy, "/v2/cloud/users/4")
    assert status == 404 and body["code"] == "upstream_error"
    assert body["upstream_error"] == {"code": "NOT_FOUND", "message": "User not found."}
    assert body["detail"] == "apis answered 404: User not found."
    fake.cloud.add_key("no-groups", "users/9", {"universe:read"})
    status, body, _ = await call(proxy, "/v2/cloud/groups/7", {"x-api-key": "no-groups"})
    assert status == 403 and body["upstream_error"]["code"] == "PERMISSION_DENIED"
    status, body, _ = await call(proxy, "/v2/cloud/groups/7", {})
    assert status == 401 and body["errors"] == [{"code": 0, "message": "Invalid API Key"}]
    assert "x-api-key" not in fake.requests[-1].headers
    status, body, _ = await call(proxy, "/v2/cloud/groups/7/members/156")
    assert status == 404 and body["code"] == "not_found"  # not a member
    status, body, _ = await call(proxy, "/v1/cloud/badges/1")
    assert status == 404 and isinstance(body["errors"], list)
    for bad in ("/v2/cloud/groups/7/memberships?limit=101", "/v2/cloud/users/1/thumbnail?size=7"):
        status, body, _ = await call(proxy, bad)
        assert status == 400 and body["invalid_params"], bad
    assert fake.requests[-1].path != "/cloud/v2/users/1:generateThumbnail"


async def test_a_cookie_never_goes_to_open_cloud(proxy: Client, fake: FakeRoblox) -> None:
    headers = {**KEY, "Cookie": ".ROBLOSECURITY=secret-cookie", "Authorization": "Bearer t"}
    assert (await call(proxy, "/v2/cloud/users/156", headers))[0] == 200
    sent = fake.requests[-1].headers
    assert sent["x-api-key"] == KEY["x-api-key"]
    assert "cookie" not in sent and "authorization" not in sent


async def test_page_tokens_walk_the_memberships(proxy: Client, fake: FakeRoblox) -> None:
    seen: list[str] = []
    url = "/v2/cloud/groups/7/memberships?limit=100"
    while True:
        status, body, _ = await call(proxy, url)
        assert status == 200 and set(body) == {"data", "next_cursor", "previous_cursor"}
        seen += [m["user"] for m in body["data"]]
        if body["next_cursor"] is None:
            break
        url = f"/v2/cloud/groups/7/memberships?limit=100&cursor={body['next_cursor']}"
    assert len(seen) == 137 and len(set(seen)) == 137
    assert [r.query for r in fake.requests][1][1][0] == "pageToken"
    # and the proxy walks it whole
    async with proxy.get("/v2/cloud/groups/7/memberships?all=true", headers=KEY) as resp:
        lines = (await resp.read()).splitlines()
    assert resp.status == 200 and len(lines) == 138
    assert orjson.loads(lines[-1])["_end"]["complete"] is True


async def test_answers_are_private_to_each_key_under_concurrency(
    proxy: Client, fake: FakeRoblox
) -> None:
    keys = [f"owner-{i}-key" for i in range(4)]
    urls = ["/v2/cloud/users/156", "/v2/cloud/groups/7", "/v2/cloud/universes/1685831367"]
    jobs = [(key, url) for _ in range(5) for key in keys for url in urls]
    fake.latency = 0.002  # so the callers overlap upstream

    async def one(key: str, url: str) -> tuple[str, Any]:
        status, body, _ = await call(proxy, url, {"x-api-key": key})
        assert status == 200, body
        return key, body

    answers = await asyncio.gather(*(one(k, u) for k, u in jobs))
    for key, body in answers:
        assert body["_fake_viewer"] == viewer_tag(key)  # never another key's answer
    # one upstream call per key and route (coalesced and cached per key, not shared)
    assert fake.total == len(keys) * len(urls)
    # an anonymous caller never gets a keyed answer
    status, body, _ = await call(proxy, "/v2/cloud/users/156", {})
    assert status == 401 and "_fake_viewer" not in body


async def test_limit_headers_are_learned_and_a_429_waits_its_retry_after(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(BLOXPROXY_CACHE_ENABLED="false")
    fake.cloud.add_key("k1", "groups/5", {"group:read"})
    fake.cloud.owner_limit = IpLimit.parse("5/s")
    assert (await call(proxy, "/v2/cloud/groups/7", {"x-api-key": "k1"}))[0] == 200
    (row,) = [r for r in proxy.server.app[GUARD].limiter.rows() if r.scope == "apis"]
    assert row.limit == 5.0  # x-ratelimit-limit "5, 5;w=1" learned as 5/s
    fake.script("apis", "/cloud/v2/groups/7", [Fault(status=429, retry_after="2")])
    started = clock.now
    status, _, _ = await call(proxy, "/v2/cloud/groups/7", {"x-api-key": "k1"})
    assert status == 200  # retried after Roblox's retry-after, on the clock
    assert clock.now - started >= 2.0
