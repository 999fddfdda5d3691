"""Game servers as clients: named access keys bound to places through ``Roblox-Id``,
limited per game server, weighted in the upstream budget, and answered for Luau.

Through the real proxy app in front of the fake Roblox, on loopback; the client buckets run
on the injected clock. The upstream calls' ``Caller`` is looked at by wrapping the app's
own client middleware with one that records and hands on (nothing of ours is replaced).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from bloxproxy import config as config_mod
from bloxproxy import serve
from bloxproxy.app import create_app
from bloxproxy.appkeys import UPSTREAM
from bloxproxy.fake import FAKE_STATE, FakeRoblox, Fault
from bloxproxy.upstream.client import Call, Caller
from tests.conftest import ROOT, FakeClock, ProxyFactory

Client = TestClient[web.Request, web.Application]

GAME, ADV, LUAU, BOT, PLAIN = "GAME-KEY-1", "ADV-KEY-2", "LUAU-KEY-3", "BOT-KEY-4", "PLAIN-KEY-5"
CLIENTS = (
    "{"
    f"game: {{key: {GAME}, places: [1818, 2020], weight: 4}},"
    f"adv: {{key: {ADV}, places: [1818], roblox_id: advisory}},"
    f"luau: {{key: {LUAU}, places: [1818], answer_mode: luau, per_server: 2/min}},"
    f"bot: {{key: {BOT}}}"
    "}"
)
ENV = {"BLOXPROXY_AUTH_CLIENTS": CLIENTS, "BLOXPROXY_AUTH_KEYS": PLAIN}
USER = "/v1/users/156"


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return orjson.loads(self.body)

    def problem(self, status: int, code: str) -> dict[str, Any]:
        assert self.status == status, self.body
        assert self.headers["Content-Type"] == "application/problem+json"
        problem: dict[str, Any] = self.json()
        assert (problem["status"], problem["code"]) == (status, code), problem
        return problem


async def call(
    client: Client, key: str, path: str = USER, place: str | None = "1818", **headers: str
) -> Answer:
    sent = {"X-Bloxproxy-Key": key, **headers}
    if place is not None:
        sent["Roblox-Id"] = place
    async with client.get(path, headers=sent) as resp:
        return Answer(resp.status, resp.headers, await resp.read())


def record_callers(client: Client) -> list[Caller]:
    """Every upstream call's Caller, as the client middleware gets it."""
    upstream = client.server.app[UPSTREAM]
    inner = upstream._middleware
    assert inner is not None
    seen: list[Caller] = []

    async def recording(
        call: Call, request: ClientRequest, handler: ClientHandlerType
    ) -> ClientResponse:
        seen.append(call.caller)
        return await inner(call, request, handler)

    upstream._middleware = recording
    return seen


# -- bound to places -----------------------------------------------------------------------


async def test_a_bound_key_from_its_places(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(**ENV)
    for place in ("1818", "2020", " 2020 "):
        answer = await call(proxy, GAME, place=place)
        assert answer.status == 200, answer.body
        assert answer.json()["name"] == "builderman"
    sent = fake.requests[-1].headers
    assert "roblox-id" not in sent and "x-bloxproxy-key" not in sent
    assert GAME not in repr(fake.requests)


@pytest.mark.parametrize(
    ("place", "why"),
    [
        (
            None,
            "the request has no Roblox-Id header (Roblox adds it to HttpService requests "
            "of game servers)",
        ),
        ("42", "its Roblox-Id names place 42"),
        ("0", "its Roblox-Id names place 0"),
        ("placeId=1818", "its Roblox-Id header is not a place id"),
        ("-1818", "its Roblox-Id header is not a place id"),
    ],
)
async def test_a_bound_key_from_elsewhere_is_403(
    make_proxy: ProxyFactory, fake: FakeRoblox, place: str | None, why: str
) -> None:
    proxy = await make_proxy(**ENV)
    problem = (await call(proxy, GAME, place=place)).problem(403, "wrong_place")
    assert (
        problem["detail"] == f"this access key is for game servers of places 1818, 2020, and {why}"
    )
    assert problem["places"] == [1818, 2020]
    assert fake.total == 0


async def test_two_roblox_id_headers_are_403(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(**ENV)
    headers = [("X-Bloxproxy-Key", GAME), ("Roblox-Id", "1818"), ("Roblox-Id", "1818")]
    async with proxy.get(USER, headers=headers) as resp:
        assert resp.status == 403
    assert fake.total == 0


async def test_advisory_serves_warns_and_counts(
    make_proxy: ProxyFactory, fake: FakeRoblox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "bloxproxy")
    proxy = await make_proxy(**ENV)
    assert (await call(proxy, ADV, place="42")).status == 200
    assert (await call(proxy, ADV, place=None)).status == 200
    assert (await call(proxy, ADV, place="1818")).status == 200
    assert (await call(proxy, GAME, place="7")).status == 403
    warned = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "roblox_id"]
    assert warned == [
        "access key adv: Roblox-Id names place 42; served anyway (roblox_id: advisory)",
        "access key adv: Roblox-Id missing; served anyway (roblox_id: advisory)",
    ]
    assert ADV not in caplog.text
    async with proxy.get("/_bloxproxy/metrics", headers={"X-Bloxproxy-Key": PLAIN}) as resp:
        metrics = await resp.text()
    for client, outcome in (("adv", "mismatch"), ("adv", "missing"), ("adv", "match")):
        assert f'bloxproxy_roblox_id_total{{client="{client}",outcome="{outcome}"}} 1.0' in metrics
    assert 'bloxproxy_roblox_id_total{client="game",outcome="mismatch"} 1.0' in metrics


async def test_unbound_named_keys_plain_keys_and_wrong_keys(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**ENV)
    assert (await call(proxy, BOT, place=None)).status == 200  # not bound: no Roblox-Id needed
    assert (await call(proxy, PLAIN, place="42")).status == 200
    for wrong in ("nope", GAME.lower(), GAME + "x", ""):
        (await call(proxy, wrong)).problem(401, "unauthorized")


async def test_no_roblox_id_counter_without_bound_keys(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(BLOXPROXY_AUTH_CLIENTS=f"{{bot: {{key: {BOT}}}}}")
    async with proxy.get("/_bloxproxy/metrics", headers={"X-Bloxproxy-Key": BOT}) as resp:
        assert "bloxproxy_roblox_id" not in await resp.text()


# -- limited per server ----------------------------------------------------------------------

LIMITED = {
    "BLOXPROXY_CACHE_ENABLED": "false",
    "BLOXPROXY_LIMITS_CLIENTS_FORWARDED_FOR_HOPS": "1",
    "BLOXPROXY_AUTH_CLIENTS": (
        f"{{game: {{key: {GAME}, places: [1818, 2020], per_server: 3/min, rate: 5/min}},"
        f" bot: {{key: {BOT}}}}}"
    ),
}


async def test_each_server_has_its_bucket_and_the_key_one_too(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(**LIMITED)

    async def status(place: str, address: str) -> Answer:
        return await call(proxy, GAME, place=place, **{"X-Forwarded-For": address})

    first = [await status("1818", "10.0.0.1") for _ in range(3)]
    assert [a.status for a in first] == [200] * 3
    assert first[0].headers["RateLimit-Policy"] == '"server";q=3;w=60, "clients";q=5;w=60'
    assert first[0].headers["RateLimit"] == '"server";r=2;t=20, "clients";r=4;t=12'
    assert first[2].headers["X-RateLimit-Remaining"] == "0"  # the tightest: this server's
    refused = await status("1818", "10.0.0.1")
    problem = refused.problem(429, "rate_limited")
    assert problem["detail"] == "rate limit of 3/min per game server exceeded"
    assert refused.headers["Retry-After"] == "20" and problem["retry_after"] == 20
    assert refused.headers["RateLimit"] == '"server";r=0;t=60'  # the key's was not asked
    # another server (another address, or another place at the same address): its own bucket
    assert (await status("1818", "10.0.0.2")).status == 200
    assert (await status("2020", "10.0.0.1")).status == 200
    # ... until the key's own limit, over all its servers, is spent
    key_wide = (await status("1818", "10.0.0.3")).problem(429, "rate_limited")
    assert key_wide["detail"] == "rate limit of 5/min for this key exceeded"
    assert fake.total == 5
    clock.advance(12)  # the key's bucket: a token every 12 s; the first server's: every 20 s
    assert (await status("1818", "10.0.0.1")).status == 429
    assert (await status("1818", "10.0.0.3")).status == 200
    assert (await status("2020", "10.0.0.4")).problem(429, "rate_limited")["detail"] == (
        "rate limit of 5/min for this key exceeded"
    )


async def test_replicas_share_the_server_buckets_in_redis(
    make_proxy: ProxyFactory, redis_client: aioredis.Redis, redis_url: str
) -> None:
    env = {**LIMITED, "BLOXPROXY_CACHE_REDIS_URL": redis_url}
    env["BLOXPROXY_AUTH_CLIENTS"] = f"{{game: {{key: {GAME}, places: [1818], per_server: 3/h}}}}"
    one, two = await make_proxy(**env), await make_proxy(**env)
    statuses = [(await call((one, two)[i % 2], GAME)).status for i in range(5)]
    assert statuses == [200] * 3 + [429] * 2
    names = await redis_client.keys("*")
    assert names == [b"bloxproxy:rl:client:server:game:1818:127.0.0.1"]
    assert not any(GAME.encode() in n for n in names)


async def test_httpservice_limit_is_the_default_per_server(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(**ENV)
    answer = await call(proxy, GAME)
    assert answer.headers["RateLimit-Policy"] == '"server";q=500;w=60'
    assert answer.headers["RateLimit"] == '"server";r=499;t=1'
    # an unbound named key and a plain one: no limit at all (limits.clients is off)
    assert "RateLimit" not in (await call(proxy, BOT)).headers
    assert "RateLimit" not in (await call(proxy, PLAIN)).headers


async def test_a_named_key_without_its_own_rate_shares_limits_clients(
    make_proxy: ProxyFactory,
) -> None:
    env = {**LIMITED, "BLOXPROXY_LIMITS_CLIENTS_RATE": "1", "BLOXPROXY_LIMITS_CLIENTS_BURST": "2"}
    env["BLOXPROXY_AUTH_CLIENTS"] = (
        f"{{bot: {{key: {BOT}}}, free: {{key: {GAME}, rate: 0, places: [1818], per_server: 0}}}}"
    )
    proxy = await make_proxy(**env)
    assert [(await call(proxy, BOT)).status for _ in range(3)] == [200, 200, 429]
    statuses = [(await call(proxy, GAME)).status for _ in range(10)]
    assert statuses == [200] * 10  # rate: 0 and per_server: 0: no limit at all
    assert "RateLimit" not in (await call(proxy, GAME)).headers


# -- the upstream budget's weight --------------------------------------------------------------


async def test_the_weight_goes_with_every_upstream_call(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**ENV, BLOXPROXY_CACHE_ENABLED="false")
    seen = record_callers(proxy)
    for key, path in ((GAME, USER), (BOT, "/users/v1/users/1"), (PLAIN, USER)):
        assert (await call(proxy, key, path)).status == 200
    assert [c.weight for c in seen] == [4.0, 1.0, 1.0]
    clients = [c.client for c in seen]
    assert all(c.startswith("key:") for c in clients) and len(set(clients)) == 3
    assert not any(key in "".join(clients) for key in (GAME, BOT, PLAIN))
    assert [c.request_id for c in seen] == [r.headers["x-request-id"] for r in fake.requests]


async def test_a_game_behind_an_analytics_flood(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    """What today's upstream limiter does with a weighted game key behind a flood of another
    key's misses: it serves waiting calls first come, first served, so the game's misses
    wait behind the flood; with ``max_wait`` longer than the flood takes to drain, every one
    of them is answered, and each reached the upstream middleware carrying the game's
    weight (the flood's: 1). The limiter does not order by weight (yet): this test does not
    claim the game goes first."""
    proxy = await make_proxy(
        BLOXPROXY_AUTH_CLIENTS=f"{{game: {{key: {GAME}, weight: 4}}, analytics: {{key: {BOT}}}}}",
        BLOXPROXY_CACHE_ENABLED="false",
        BLOXPROXY_LIMITS_UPSTREAM_RATE="50",  # 50 at once, then 50/s (real time: aiolimiter)
        BLOXPROXY_LIMITS_UPSTREAM_MAX_WAIT="8s",
    )
    seen = record_callers(proxy)
    start = time.monotonic()
    flood = [asyncio.create_task(call(proxy, BOT, f"/v1/users/{i}")) for i in range(1000, 1100)]
    await asyncio.sleep(0.05)  # the flood is queued first
    game = [asyncio.create_task(call(proxy, GAME)) for _ in range(5)]
    game_answers = await asyncio.gather(*game)
    game_done = time.monotonic() - start
    flood_answers = await asyncio.gather(*flood)
    assert [a.status for a in game_answers] == [200] * 5
    assert {a.status for a in flood_answers} <= {200, 404}  # the fake knows only some ids
    weights = sorted(c.weight for c in seen)
    assert weights == [1.0] * 100 + [4.0] * 5
    assert game_done < 8  # within max_wait: never a 503 upstream_busy
    assert fake.total == 105


# -- answers for Luau --------------------------------------------------------------------------


def envelope(answer: Answer) -> dict[str, Any]:
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Cache-Control"] == "no-store"
    doc: dict[str, Any] = answer.json()
    assert set(doc) <= {"ok", "status", "headers", "body", "body_encoding"}
    assert doc["headers"]["x-request-id"] == answer.headers["X-Request-ID"]
    return doc


async def test_luau_answers_are_envelopes_and_others_are_not(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**ENV)
    plain = await call(proxy, GAME)
    wrapped = envelope(await call(proxy, LUAU))
    again = await call(proxy, GAME)  # the entry is cached: the same plain answer, a hit
    assert (plain.status, again.status, again.headers["X-Cache"]) == (200, 200, "HIT")
    assert again.body == plain.body and "ok" not in again.json()
    assert wrapped["ok"] is True and wrapped["status"] == 200
    assert wrapped["body"] == plain.json()
    h = wrapped["headers"]
    assert h["x-cache"] == "HIT" and h["content-type"] == "application/json; charset=utf-8"
    assert h["etag"] == plain.headers["ETag"] and "cache-control" in h
    assert h["ratelimit"] == '"server";r=1;t=30'
    assert fake.count("users", "/v1/users/156") == 1


async def test_luau_errors_of_roblox_of_ours_and_of_the_gate(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**ENV)
    upstream_404 = envelope(await call(proxy, LUAU, "/v1/users/4"))
    assert (upstream_404["ok"], upstream_404["status"]) == (False, 404)
    assert upstream_404["body"]["code"] == "upstream_error"
    assert upstream_404["body"]["errors"][0]["message"] == "The user id is invalid."
    assert upstream_404["headers"]["content-type"] == "application/problem+json"
    ours = envelope(await call(proxy, LUAU, "/v1/users/abc"))
    assert (ours["status"], ours["body"]["code"]) == (400, "invalid_request")
    wrong_place = envelope(await call(proxy, LUAU, place="42"))
    assert (wrong_place["status"], wrong_place["body"]["code"]) == (403, "wrong_place")
    limited = envelope(await call(proxy, LUAU))  # per_server: 2/min, two spent above
    assert (limited["status"], limited["body"]["code"]) == (429, "rate_limited")
    assert limited["headers"]["retry-after"] == "30"
    assert limited["body"]["request_id"] == limited["headers"]["x-request-id"]
    # a wrong key is nobody's: answered as it is
    unknown = await call(proxy, "not-a-key")
    unknown.problem(401, "unauthorized")


async def test_luau_conditional_binary_and_passthrough(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(
        **{**ENV, "BLOXPROXY_AUTH_CLIENTS": f"{{luau: {{key: {LUAU}, answer_mode: luau}}}}"}
    )
    first = envelope(await call(proxy, LUAU))
    etag = first["headers"]["etag"]
    not_modified = envelope(await call(proxy, LUAU, **{"If-None-Match": etag}))
    assert (not_modified["ok"], not_modified["status"], not_modified["body"]) == (False, 304, None)
    fake.script(
        "users", "/v1/bin", [Fault(status=200, body=b"\x89PNG\xff", content_type="image/png")]
    )
    binary = envelope(await call(proxy, LUAU, "/users/v1/bin"))
    assert (binary["body"], binary["body_encoding"]) == ("iVBOR/8=", "base64")
    passthrough = envelope(await call(proxy, LUAU, "/users/v1/users/1"))
    assert passthrough["body"]["id"] == 1 and passthrough["headers"]["x-cache"] == "MISS"


async def test_luau_head_and_the_proxys_own_endpoints(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(**ENV)
    headers = {"X-Bloxproxy-Key": LUAU, "Roblox-Id": "1818"}
    async with proxy.head(USER, headers=headers) as resp:
        assert (resp.status, resp.headers["Cache-Control"]) == (200, "no-store")
        assert await resp.read() == b""
    async with proxy.get("/_bloxproxy/metrics", headers=headers) as resp:
        assert resp.status == 200 and "bloxproxy_requests_total" in await resp.text()


# -- the README's game server example runs as written -------------------------------------------


def readme_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## Game servers\n")
    return text[start : text.index("\n## ", start + 1)]


def blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^```(\w+)\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def like(shown: Any, got: Any, where: str = "") -> None:
    """``got`` is what ``shown`` shows: "…" stands for any value, and the ``headers`` shown
    are some of those sent (with these values)."""
    if shown == "…":
        return
    if isinstance(shown, dict):
        assert isinstance(got, dict), where
        if where.endswith(".headers"):
            assert set(shown) <= set(got), (where, sorted(got))
        else:
            assert set(shown) == set(got), (where, sorted(shown), sorted(got))
        for name, value in shown.items():
            like(value, got[name], f"{where}.{name}")
        return
    assert shown == got, (where, shown, got)


async def test_the_readme_game_server_example(
    tmp_path: Path,
    fake_server: TestServer,
    clock: FakeClock,
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    found = blocks(readme_section())
    yaml_body = next(body for lang, body in found if lang == "yaml")
    (tmp_path / "game-config.yaml").write_text(yaml_body, encoding="utf-8")
    base = f"http://127.0.0.1:{fake_server.port}/{{service}}"
    env = {"GAME_KEY": GAME, "ANALYTICS_KEY": BOT, "BLOXPROXY_UPSTREAM_BASE_URL": base}
    config = config_mod.load(str(tmp_path / "game-config.yaml"), env=env)
    app = create_app(config, clock=clock, monotonic=clock, sleep=clock.sleep)
    proxy = await aiohttp_client(app)

    # The Luau asks for what the first exchange shows, with the header the config names.
    lua = next(body for lang, body in found if lang == "lua")
    assert "Url = `{PROXY}/v1/users/{userId}`" in lua and 'Method = "GET"' in lua
    assert f'Headers = {{ ["{config.auth.header}"] = KEY }}' in lua
    assert "answer.ok" in lua and "answer.body" in lua and "answer.status" in lua

    exchanges = [
        (body, shown)
        for (lang, body), (next_lang, shown) in itertools.pairwise(found)
        if lang == "http" and next_lang == "json"
    ]
    assert len(exchanges) == 3
    for request, shown in exchanges:
        line, *header_lines = request.strip().splitlines()
        method, target, _ = line.split()
        headers = dict(h.split(": ", 1) for h in header_lines)
        assert headers.pop(config.auth.header) == "<GAME_KEY>"
        headers[config.auth.header] = GAME
        async with proxy.request(method, target, headers=headers) as resp:
            assert resp.status == 200
            got = orjson.loads(await resp.read())
        like(orjson.loads(shown), got)
        if got["body"].get("request_id"):
            assert got["body"]["request_id"] == got["headers"]["x-request-id"]
    assert "roblox-id" not in fake_server.app[FAKE_STATE].requests[-1].headers


# -- named keys count as access keys everywhere ----------------------------------------------


def test_named_keys_alone_are_access_keys() -> None:
    env = {
        "BLOXPROXY_AUTH_CLIENTS": f"{{game: {{key: {GAME}}}}}",
        "BLOXPROXY_SERVER_HOST": "0.0.0.0",
    }
    config = config_mod.load(None, env=env)
    assert serve.open_listener(config) is None  # serve starts beyond loopback with them
    assert serve.open_listener(config_mod.load(None, env={"BLOXPROXY_SERVER_HOST": "0.0.0.0"}))


async def test_named_keys_guard_the_api_and_its_document(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(BLOXPROXY_AUTH_CLIENTS=f"{{game: {{key: {GAME}}}}}")
    assert (await proxy.get("/openapi.json")).status == 401
    resp = await proxy.get("/openapi.json", headers={"X-Bloxproxy-Key": GAME})
    scheme = (await resp.json())["components"]["securitySchemes"]["accessKey"]
    assert scheme["name"] == "X-Bloxproxy-Key" and "auth.clients" in scheme["description"]
    (await call(proxy, "", place=None)).problem(401, "unauthorized")
