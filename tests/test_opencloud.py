"""Open Cloud through the proxy (rules/opencloud.yaml) against the fake: the caller's own
key, the long-running thumbnail operation, Open Cloud errors as problem+json, page tokens,
per-key cache isolation under concurrency, learned limit headers and a 429's retry-after."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bloxproxy import config as config_mod
from bloxproxy.app import create_app
from bloxproxy.appkeys import ACCESS_LOG, CONFIG, GUARD
from bloxproxy.errors import ConfigError
from bloxproxy.fake import FAKE_STATE, FakeRoblox, Fault, IpLimit
from bloxproxy.fake.state import viewer_tag
from tests.conftest import FakeClock, ProxyFactory, fetcher_of
from tests.test_cache import TOKEN, purge, settle
from tests.test_gamekeys import ROOT, blocks, like

Client = TestClient[web.Request, web.Application]
ACCESS_JSON = {"BLOXPROXY_LOGGING_ACCESS_LOG": "true", "BLOXPROXY_LOGGING_FORMAT": "json"}
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
    # the finished operation is kept under the request that started it too: asked again,
    # a hit, Roblox not asked at all
    before = fake.total
    again = await call(proxy, THUMB)
    assert again[1] == body and again[2]["X-Cache"] == "HIT"
    assert fake.total == before


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
    # not stored, under the poll's key nor the starting request's: the next request
    # starts the operation again
    assert not any(":generateThumbnail" in k for k in fetcher_of(proxy).l1._cache)
    before = len(fake.requests)
    fake.cloud.polls = 0
    assert (await call(proxy, THUMB))[0] == 200
    assert [r.path for r in fake.requests[before:]] == ["/cloud/v2/users/156:generateThumbnail"]


async def test_a_kept_operation_honours_its_ttl_on_the_clock(
    proxy: Client, fake: FakeRoblox, clock: FakeClock
) -> None:
    fake.cloud.polls = 2
    fake.cloud.owner_limit = IpLimit.parse("100/s")  # its answers carry x-ratelimit-*
    assert (await call(proxy, THUMB))[0] == 200
    assert fake.total == 3  # started, polled twice (one second apart, on the clock)
    # kept as a stored entry is: without the headers about the moment of the call
    fetcher = fetcher_of(proxy)
    (key,) = [k for k in fetcher.l1._cache if ":generateThumbnail" in k and "|" not in k]
    kept = fetcher.l1.get_nowait(key)
    assert kept is not None and [n.lower() for n, _ in kept.headers] == ["content-type"]
    # the starting request's entry is the poll's: as old as it, gone when it goes
    clock.advance(3599)
    status, _, headers = await call(proxy, THUMB)
    assert (status, headers["X-Cache"], headers["Age"]) == (200, "HIT", "3599")
    assert fake.total == 3
    clock.advance(1)  # the route's 1 h is over
    status, _, headers = await call(proxy, THUMB)
    assert (status, headers["X-Cache"]) == (200, "MISS")
    assert [r.path for r in fake.requests[3:]] == ["/cloud/v2/users/156:generateThumbnail"]
    # (Roblox kept the thumbnail: done at once, stored as any answer)
    assert (await call(proxy, THUMB))[2]["X-Cache"] == "HIT" and fake.total == 4
    # another size is another request, an operation of its own
    assert (await call(proxy, THUMB.replace("150", "420")))[0] == 200 and fake.total == 7


STALE_THUMBNAIL = """\
service: apis
routes:
  - id: opencloud.user_thumbnail
    endpoint: /v2/cloud/users/{user_id}/thumbnail
    params:
      user_id: {type: int, min: 1}
    query:
      size: {type: int, default: 420}
    backend:
      path: /cloud/v2/users/{user_id}:generateThumbnail
      query: {size: "{size}"}
      credentials: api_key
    response:
      pick: response
      shape: object
      hold: {operation: path, within: 5s, every: 1s}
    cache:
      ttl: 1m
      stale_if_error: 1h
      credentials: per_credential
      when: [{path: done, equals: false, ttl: 0s}]
      tags: ["user:{user_id}"]
"""


async def test_a_kept_operation_keeps_its_stale_window(
    make_proxy: ProxyFactory, tmp_path: Path, fake: FakeRoblox, clock: FakeClock
) -> None:
    rules = tmp_path / "thumbnail.yaml"
    rules.write_text(STALE_THUMBNAIL, encoding="utf-8")
    proxy = await make_proxy(BLOXPROXY_RULES_PATHS=str(rules), BLOXPROXY_RETRIES_ATTEMPTS="1")
    fake.cloud.polls = 2
    status, body, _ = await call(proxy, THUMB)
    assert status == 200 and fake.total == 3
    clock.advance(61)  # past the rule's minute: Roblox fails, the kept answer stands in
    fake.script("apis", "/cloud/v2/users/156:generateThumbnail", [Fault(status=500)])
    status, again, headers = await call(proxy, THUMB)
    assert (status, again, headers["X-Cache"]) == (200, body, "STALE")
    assert fake.total == 4  # the starting request only: no poll
    clock.advance(3600)  # past the stale window too: Roblox's failure is the answer
    fake.script("apis", "/cloud/v2/users/156:generateThumbnail", [Fault(status=500)])
    assert (await call(proxy, THUMB))[0] == 502


async def test_a_kept_operation_carries_the_routes_tags(
    make_proxy: ProxyFactory, tmp_path: Path, fake: FakeRoblox
) -> None:
    rules = tmp_path / "thumbnail.yaml"
    rules.write_text(STALE_THUMBNAIL, encoding="utf-8")
    proxy = await make_proxy(BLOXPROXY_RULES_PATHS=str(rules), BLOXPROXY_SERVER_ADMIN_TOKEN=TOKEN)
    fake.cloud.polls = 2
    assert (await call(proxy, THUMB))[0] == 200
    assert (await call(proxy, THUMB))[2]["X-Cache"] == "HIT" and fake.total == 3
    # a purge of the user's tag drops the kept entry with the poll's
    assert (await purge(proxy, {"tag": "user:156"})).status == 200
    status, _, headers = await call(proxy, THUMB)
    assert (status, headers["X-Cache"]) == (200, "MISS") and fake.total == 4


async def test_a_kept_operation_is_only_for_its_own_key(held: Client, fake: FakeRoblox) -> None:
    fake.cloud.polls = 2
    status, body, _ = await call(held, THUMB, access("game"))
    assert status == 200 and fake.total == 3
    # the same held key (game's and bot's): the kept answer, nothing asked
    for name in ("game", "bot"):
        got = await call(held, THUMB, access(name))
        assert (got[1], got[2]["X-Cache"]) == (body, "HIT"), name
    assert fake.total == 3
    # another key asks for itself, with its own key (Roblox made the thumbnail already)
    for key, headers in (
        (HELD["side"], access("other")),
        ("own-key", access("game", **{"x-api-key": "own-key"})),
        ("ad-hoc", access("plain", **{"x-api-key": "ad-hoc"})),
    ):
        before = len(fake.requests)
        got = await call(held, THUMB, headers)
        assert got[0] == 200 and got[2]["X-Cache"] != "HIT", key
        sent = fake.requests[before:]
        assert [r.path for r in sent] == ["/cloud/v2/users/156:generateThumbnail"], key
        assert {r.headers["x-api-key"] for r in sent} == {key}
    # and without a key, nothing: no answer is anybody's
    assert (await call(held, THUMB, access("plain")))[0] == 401
    # the kept entries are private: every one of them keyed by a credential's HMAC
    keys = [k for k in fetcher_of(held).l1._cache if "generateThumbnail" in k]
    assert keys and all(" cred=" in k for k in keys)
    for secret in (*HELD.values(), "own-key", "ad-hoc"):
        assert not any(secret in k for k in keys)


async def test_a_kept_operation_is_a_hit_on_another_replica(
    make_proxy: ProxyFactory, tmp_path: Path, redis_url: str, fake: FakeRoblox
) -> None:
    env = {"BLOXPROXY_CACHE_REDIS_URL": redis_url, "BLOXPROXY_CACHE_CREDENTIAL_SECRET": "s" * 32}
    a = await holding(make_proxy, tmp_path, **env)
    b = await holding(make_proxy, tmp_path, **env)
    fake.cloud.polls = 2
    status, body, _ = await call(a, THUMB, access("game"))
    assert status == 200 and fake.total == 3
    await settle(a)  # the L2 writes run beside the answer
    got = await call(b, THUMB, access("bot"))
    assert (got[1], got[2]["X-Cache"]) == (body, "HIT")
    assert fake.total == 3
    assert (await call(b, THUMB, access("other")))[2]["X-Cache"] != "HIT"


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
    asked = fake.total
    status, body, _ = await call(proxy, "/v2/cloud/groups/7", {})
    assert (status, body["code"]) == (401, "api_key_required")  # no key: Roblox not asked
    assert fake.total == asked
    fake.script("apis", "/cloud/v2/groups/7", [Fault(status=401)])  # Roblox's own 401
    status, body, _ = await call(proxy, "/v2/cloud/groups/7", {"x-api-key": "revoked"})
    assert status == 401 and body["code"] == "upstream_error" and body["errors"]
    status, body, _ = await call(proxy, "/v2/cloud/groups/7/members/156")
    assert status == 404 and body["code"] == "not_found"  # not a member
    # a legacy-* route: the legacy API's own errors list in the problem
    status, body, _ = await call(proxy, "/v1/cloud/groups/4/settings")
    assert (status, body["upstream_status"]) == (404, 400)  # status_map: unknown group
    assert body["errors"][0]["message"] == "Group is invalid or does not exist."
    fake.cloud.add_key("stranger", "users/156", {"legacy-group:manage"})
    status, body, _ = await call(proxy, "/v1/cloud/groups/7/audit-log", {"x-api-key": "stranger"})
    assert status == 403 and body["errors"][0]["code"] == 23
    asked = fake.total
    for bad in (
        "/v2/cloud/groups/7/memberships?limit=101",
        "/v2/cloud/users/1/thumbnail?size=7",
        "/v1/cloud/groups/7/audit-log?limit=7",
        "/v1/cloud/groups/7/audit-log?action_type=DropTables",
        "/v1/cloud/groups/7/audit-log?user_id=x",
        "/v1/cloud/groups/7/audit-log?user_id=0",
        "/v1/cloud/groups/7/audit-log?sort_order=sideways",
        "/v1/cloud/groups/7/audit-log?cursor=%3Cscript%3E",
        "/v1/cloud/groups/0/settings",
    ):
        status, body, _ = await call(proxy, bad)
        assert status == 400 and body["invalid_params"], bad
    assert fake.total == asked  # bad input never reaches Roblox
    assert fake.requests[-1].path != "/cloud/v2/users/1:generateThumbnail"


async def all_pages(proxy: Client, first: str) -> list[Any]:
    """Every item of a list route, its pages walked by ``next_cursor`` from ``first``."""
    items: list[Any] = []
    url = first
    while True:
        status, body, _ = await call(proxy, url)
        assert status == 200 and set(body) == {"data", "next_cursor", "previous_cursor"}
        items += body["data"]
        if body["next_cursor"] is None:
            return items
        url = f"{first}&cursor={body['next_cursor']}"


async def test_the_audit_log_walks_its_pages_with_the_callers_key(
    proxy: Client, fake: FakeRoblox
) -> None:
    items = await all_pages(proxy, "/v1/cloud/groups/7/audit-log?limit=25&sort_order=Desc")
    seen = [item["created"] for item in items]
    assert len(seen) == 30 and seen == sorted(seen, reverse=True)
    assert {r.headers.get("x-api-key") for r in fake.requests} == {KEY["x-api-key"]}
    assert [dict(r.query).get("sortOrder") for r in fake.requests] == ["Desc", "Desc"]


async def test_a_cookie_never_goes_to_open_cloud(proxy: Client, fake: FakeRoblox) -> None:
    headers = {**KEY, "Cookie": ".ROBLOSECURITY=secret-cookie", "Authorization": "Bearer t"}
    assert (await call(proxy, "/v2/cloud/users/156", headers))[0] == 200
    sent = fake.requests[-1].headers
    assert sent["x-api-key"] == KEY["x-api-key"]
    assert "cookie" not in sent and "authorization" not in sent


async def test_page_tokens_walk_the_memberships(proxy: Client, fake: FakeRoblox) -> None:
    seen = [m["user"] for m in await all_pages(proxy, "/v2/cloud/groups/7/memberships?limit=100")]
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
    assert (status, body["code"]) == (401, "api_key_required")


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


# -- keys held by the proxy ------------------------------------------------------------------

HELD = {"main": "HELDSECRETmain0001", "side": "HELDSECRETside0002"}
ACCESS = {"game": "ACCESSgame01", "bot": "ACCESSbot02", "other": "ACCESSother03", "plain": "P1"}


@pytest.fixture
async def held(make_proxy: ProxyFactory, tmp_path: Path) -> Client:
    return await holding(make_proxy, tmp_path)


async def holding(make_proxy: ProxyFactory, tmp_path: Path, **env: str) -> Client:
    """A proxy holding two Open Cloud keys: ``main`` (group 7's) for the access keys
    ``game`` and ``bot``, ``side`` (user 5's, from a file) for ``other``; ``plain`` has none."""
    key_file = tmp_path / "side.key"
    key_file.write_text(HELD["side"] + "\n", encoding="utf-8")
    uses = {"game": "main", "bot": "main", "other": "side"}
    clients = {name: {"key": ACCESS[name], "opencloud_key": key} for name, key in uses.items()}
    keys = {
        "main": {"key": HELD["main"], "owner": "group:7"},
        "side": {"key_file": str(key_file), "owner": "user:5"},
        "unused": {"key": "HELDSECRETunused03", "owner": "user:6"},
    }
    return await make_proxy(
        **ACCESS_JSON,
        BLOXPROXY_AUTH_KEYS=ACCESS["plain"],
        BLOXPROXY_AUTH_CLIENTS=orjson.dumps(clients).decode(),
        BLOXPROXY_OPENCLOUD_KEYS=orjson.dumps(keys).decode(),
        **env,
    )


def access(name: str, **more: str) -> dict[str, str]:
    return {"X-Bloxproxy-Key": ACCESS[name], **more}


async def test_a_held_key_is_sent_for_its_clients(held: Client, fake: FakeRoblox) -> None:
    status, body, _ = await call(held, "/v2/cloud/users/156", access("game"))
    assert status == 200 and body["_fake_viewer"] == viewer_tag(HELD["main"])
    sent = fake.requests[-1].headers
    assert sent["x-api-key"] == HELD["main"] and "x-bloxproxy-key" not in sent
    # bot uses the same key: the same private entry, Roblox not asked again
    assert (await call(held, "/v2/cloud/users/156", access("bot")))[1] == body
    assert fake.total == 1
    # other's key comes from its file
    status, body, _ = await call(held, "/v2/cloud/users/156", access("other"))
    assert status == 200 and body["_fake_viewer"] == viewer_tag(HELD["side"])
    # a client's own key wins over the held one
    own = access("game", **{"x-api-key": "game-own-key"})
    status, body, _ = await call(held, "/v2/cloud/users/156", own)
    assert body["_fake_viewer"] == viewer_tag("game-own-key")
    assert fake.requests[-1].headers["x-api-key"] == "game-own-key"
    # an access key without a held key, and no key of its own
    status, body, _ = await call(held, "/v2/cloud/users/156", access("plain"))
    assert (status, body["code"]) == (401, "api_key_required")
    assert fake.total == 3
    # a held key never goes to a route that does not ask for one
    assert (await call(held, "/v1/users/156", access("game")))[0] == 200
    assert "x-api-key" not in fake.requests[-1].headers


async def test_held_keys_walk_and_draw_on_their_owners_budget(
    held: Client, fake: FakeRoblox
) -> None:
    async with held.get("/v2/cloud/groups/7/memberships?all=true", headers=access("game")) as r:
        lines = (await r.read()).splitlines()
    assert r.status == 200 and len(lines) == 138
    assert {q.headers["x-api-key"] for q in fake.requests} == {HELD["main"]}
    assert (await call(held, "/v2/cloud/groups/7", access("other")))[0] == 200
    rows = {row.scope: row for row in held.server.app[GUARD].limiter.rows()}
    # one scope per operation and owner, seeded with the operation's published limit
    assert rows["cloud-listgroupmemberships@group-7"].ceiling == pytest.approx(300 / 60)
    assert rows["cloud-getgroup@user-5"].ceiling == pytest.approx(150 / 60)
    # a member's role is the same operation as the list: the same scope
    slots = rows["cloud-listgroupmemberships@group-7"].slots
    assert (await call(held, "/v2/cloud/groups/7/members/1", access("bot")))[0] == 200
    rows = {row.scope: row for row in held.server.app[GUARD].limiter.rows()}
    assert rows["cloud-listgroupmemberships@group-7"].slots == slots + 1
    # a client's own key: its owner is unknown, the service's scope
    await call(held, "/v2/cloud/groups/5850082", access("plain", **{"x-api-key": "own"}))
    assert "apis" in {row.scope for row in held.server.app[GUARD].limiter.rows()}


async def test_owners_never_see_each_others_answers_under_concurrency(
    held: Client, fake: FakeRoblox
) -> None:
    fake.latency = 0.002
    names = ["game", "other", "bot", "other", "game"] * 6
    urls = ["/v2/cloud/users/156", "/v2/cloud/groups/7", "/v2/cloud/groups/7/roles/1008"]
    expected = {"game": HELD["main"], "bot": HELD["main"], "other": HELD["side"]}

    async def one(name: str, url: str) -> None:
        status, body, _ = await call(held, url, access(name))
        assert status == 200, body
        assert body["_fake_viewer"] == viewer_tag(expected[name]), (name, url)

    await asyncio.gather(*(one(n, u) for n in names for u in urls))
    assert fake.total == 2 * len(urls)  # one call per owner's key and route


async def test_held_keys_stay_out_of_logs_and_metrics(
    capsysbinary: pytest.CaptureFixture[bytes],
    make_proxy: ProxyFactory,
    tmp_path: Path,
    fake: FakeRoblox,
) -> None:
    held = await holding(make_proxy, tmp_path)  # (after capsysbinary: the log writes to it)
    for name in ("game", "other"):
        assert (await call(held, "/v2/cloud/groups/7", access(name)))[0] == 200
    fake.script("apis", "/cloud/v2/users/1", [Fault(status=500)] * 3)
    await call(held, "/v2/cloud/users/1", access("game"))
    held.server.app[ACCESS_LOG].flush()
    log = capsysbinary.readouterr().err
    assert log.count(b'"type":"access"') == 3
    async with held.get("/_bloxproxy/metrics", headers=access("game")) as resp:
        metrics = await resp.read()
    assert b"bloxproxy_" in metrics
    for secret in HELD.values():
        assert secret.encode() not in log and secret.encode() not in metrics
    assert repr(held.server.app[CONFIG].opencloud).count("HELDSECRET") == 0


def test_held_key_config_problems(tmp_path: Path) -> None:
    def problems(keys: object, clients: object = None) -> list[str]:
        env = {"BLOXPROXY_OPENCLOUD_KEYS": orjson.dumps(keys).decode()}
        if clients is not None:
            env["BLOXPROXY_AUTH_CLIENTS"] = orjson.dumps(clients).decode()
        with pytest.raises(ConfigError) as info:
            config_mod.load(None, env=env)
        return [str(p) for p in info.value.problems]

    where = "$BLOXPROXY_OPENCLOUD_KEYS: opencloud.keys"
    ok = {"k": {"key": "SECRETX", "owner": "group:7"}}
    assert problems(ok, {"bot": {"key": "b", "opencloud_key": "nope"}}) == [
        "$BLOXPROXY_AUTH_CLIENTS: auth.clients.bot.opencloud_key: nope is not in opencloud.keys"
    ]
    assert problems(ok, {"bot": {"key": "b", "opencloud_key": 7}}) == [
        "$BLOXPROXY_AUTH_CLIENTS: auth.clients.bot.opencloud_key: expected the name of an "
        "opencloud.keys entry, got 7"
    ]
    assert problems({"k": {"key": "SECRETX", "owner": "grp"}}) == [
        f"{where}.k.owner: expected the key's owner as user:<id> or group:<id>, got 'grp'"
    ]
    both = {"key": "SECRETX", "key_file": "/x", "owner": "user:1"}
    assert problems({"k": both}) == [f"{where}.k: give exactly one of key and key_file"]
    empty = tmp_path / "empty.key"
    empty.write_text("  \n", encoding="utf-8")
    missing = tmp_path / "missing.key"
    found = problems(
        {
            "a": {"key_file": str(empty), "owner": "user:1"},
            "b": {"key_file": str(missing), "owner": "user:1"},
            "c": {"key": "SECRETX\nSECRETY", "owner": "user:1"},
            "d": {"key": "SECRETX"},
            "e f": {"key": "SECRETX", "owner": "user:1"},
        }
    )
    assert found == [
        f"{where}.a.key_file: the key file {str(empty)!r} holds no API key (empty, or not "
        "one line)",
        f"{where}.b.key_file: cannot read the key file {str(missing)!r}: No such file or directory",
        f"{where}.c.key: expected an API key (one line, at most 4096 characters)",
        f"{where}.d.owner: required: the key's owner, user:<id> or group:<id>",
        f"{where}.e f: a key name is letters, digits, '_', '.' or '-' (at most 64)",
    ]
    assert not any("SECRETX" in text for text in found)


async def test_an_owners_limit_headers_and_429_act_on_its_own_scope(
    make_proxy: ProxyFactory, tmp_path: Path, fake: FakeRoblox, clock: FakeClock
) -> None:
    held = await holding(make_proxy, tmp_path, BLOXPROXY_CACHE_ENABLED="false")
    fake.cloud.add_key(HELD["main"], "groups/7")
    fake.cloud.add_key(HELD["side"], "users/5")
    fake.cloud.owner_limit = IpLimit.parse("120/min", burst=120)  # "120, 120;w=60"
    assert (await call(held, "/v2/cloud/users/156", access("game")))[0] == 200
    limiter = held.server.app[GUARD].limiter
    rows = {row.scope: row for row in limiter.rows()}
    assert rows["cloud-getuser@group-7"].limit == pytest.approx(2.0)  # learned: 120/60 s
    # Roblox holds one owner: that owner's scope waits its retry-after, the other's does not
    fake.script("apis", "/cloud/v2/users/1", [Fault(status=429, retry_after="2")])
    started = clock.now
    assert (await call(held, "/v2/cloud/users/1", access("game")))[0] == 200  # retried
    assert clock.now - started >= 2.0
    started = clock.now
    assert (await call(held, "/v2/cloud/users/1", access("other")))[0] == 200
    assert clock.now - started < 1.0


async def test_passthrough_with_the_clients_own_key_is_private_to_it(
    proxy: Client, fake: FakeRoblox
) -> None:
    url = "/apis/cloud/v2/users/156"
    first = await call(proxy, url, {"x-api-key": "pass-a"})
    again = await call(proxy, url, {"x-api-key": "pass-a"})
    other = await call(proxy, url, {"x-api-key": "pass-b"})
    assert first[1]["_fakeViewer"] == again[1]["_fakeViewer"] == viewer_tag("pass-a")
    assert again[2]["X-Cache"] == "HIT"  # the rule's per-credential policy, for its key only
    assert other[1]["_fakeViewer"] == viewer_tag("pass-b") and other[2]["X-Cache"] == "MISS"
    assert fake.total == 2
    # and the clean route's entry is the same upstream request: shared with the same key
    clean = await call(proxy, "/v2/cloud/users/156", {"x-api-key": "pass-a"})
    assert clean[2]["X-Cache"] == "HIT" and fake.total == 2
    assert (await call(proxy, url, {}))[0] == 401  # no key: Roblox's own 401, passed on


# -- the README's Open Cloud example runs as written -----------------------------------------


async def test_the_readme_open_cloud_example(
    tmp_path: Path,
    fake_server: TestServer,
    clock: FakeClock,
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## Open Cloud\n")
    found = blocks(text[start : text.index("\n## ", start + 1)])
    yaml_body = next(body for lang, body in found if lang == "yaml")
    (tmp_path / "opencloud-config.yaml").write_text(yaml_body, encoding="utf-8")
    secrets = {
        "GAME_KEY": "game-k3y",
        "BOT_KEY": "bot-k3y",
        "TOOLS_KEY": "tools-k3y",
        "ROBLOX_OPEN_CLOUD_KEY": "oc-s3cret",
    }
    env = {
        **secrets,
        "BLOXPROXY_UPSTREAM_BASE_URL": f"http://127.0.0.1:{fake_server.port}/{{service}}",
    }
    config = config_mod.load(str(tmp_path / "opencloud-config.yaml"), env=env)
    proxy = await aiohttp_client(
        create_app(config, clock=clock, monotonic=clock, sleep=clock.sleep)
    )
    lua = next(body for lang, body in found if lang == "lua")
    assert "Url = `{PROXY}/v2/cloud/users/{userId}/thumbnail?size=150`" in lua
    assert f'["{config.auth.header}"] = KEY' in lua and ".image_uri" in lua

    exchanges = [
        (body, shown)
        for (lang, body), (next_lang, shown) in itertools.pairwise(found)
        if lang == "http" and next_lang == "json"
    ]
    assert len(exchanges) == 5
    fake = fake_server.app[FAKE_STATE]
    for request, shown in exchanges:
        line, *header_lines = request.strip().splitlines()
        method, target, _ = line.split()
        headers = dict(h.split(": ", 1) for h in header_lines)
        placeholder = headers[config.auth.header].strip("<>")
        headers[config.auth.header] = secrets[placeholder]
        async with proxy.request(method, target, headers=headers) as resp:
            got = orjson.loads(await resp.read())
        for tag in ("_fake_viewer", "_fakeViewer"):  # the fake's tag of whose answer it is
            got.pop(tag, None)
        like(orjson.loads(shown), got)
        assert resp.status == got.get("status", 200)
    # the game's and the tools' calls went out with the held key, and nothing else did
    sent = {r.headers.get("x-api-key") for r in fake.requests}
    assert sent == {secrets["ROBLOX_OPEN_CLOUD_KEY"]}
    assert fake.requests[-1].path == "/cloud/v2/users/156"  # (the passthrough one)


async def test_hostile_api_keys_get_problems_never_a_500(proxy: Client, fake: FakeRoblox) -> None:
    assert proxy.port is not None
    answers = []
    for key in (b"\xff\xfe", b"   ", b"k" * 8000, b"caf\xc3\xa9"):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(
            b"GET /v2/cloud/users/156 HTTP/1.1\r\nHost: x\r\nx-api-key: "
            + key
            + b"\r\nConnection: close\r\n\r\n"
        )
        data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        answers.append((int(head.split()[1]), orjson.loads(body)))
    assert [status for status, _ in answers] == [401, 401, 200, 200]
    assert answers[0][1]["code"] == "upstream_error"  # Roblox refused it; nothing broke
    assert answers[1][1]["code"] == "api_key_required"  # blank is no key
    assert answers[2][1]["_fake_viewer"] != answers[3][1]["_fake_viewer"]
