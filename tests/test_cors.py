"""CORS for browser clients (server.cors): the decisions as a table, then a real client
against the real proxy and the fake — preflights allowed, refused and off, the headers of
actual answers (the pipeline's and the fast path's alike), keys, limits, hostile headers."""

from __future__ import annotations

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bloxproxy import config as config_mod
from bloxproxy.app import apply_reload
from bloxproxy.appkeys import PIPELINE
from bloxproxy.config import CorsConfig
from bloxproxy.cors import Cors
from bloxproxy.errors import ConfigError
from bloxproxy.fake import FakeRoblox

from .conftest import ProxyFactory, proxy_config
from .test_front import front_of

Client = TestClient[web.Request, web.Application]

DASH = "https://dash.example.com"
USER = "/v1/users/156"
USER_PT = "/users/v1/users/156"
ON = {"BLOXPROXY_SERVER_CORS_ENABLED": "true", "BLOXPROXY_SERVER_CORS_ORIGINS": DASH}
PREFLIGHT = {"Origin": DASH, "Access-Control-Request-Method": "GET"}
VARY_PREFLIGHT = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


def cors(**kw: object) -> Cors:
    fields = {"origins": (DASH,), **kw}
    return Cors(CorsConfig(enabled=True, **fields))  # type: ignore[arg-type]


# -- the decisions --------------------------------------------------------------------------

PREFLIGHTS = [
    # (config, origin, method, asked headers, allowed, reason contains)
    ({}, DASH, "GET", None, True, ""),
    ({}, DASH.upper(), "GET", None, True, ""),  # origins compare case-insensitively
    ({}, DASH, "POST", "content-type, x-request-id", True, ""),
    ({}, DASH, "GET", "Accept, Accept-Language", True, ""),  # safelisted: always fine
    ({}, None, "GET", None, False, "needs an Origin"),
    ({}, "https://evil.example.com", "GET", None, False, "not allowed"),
    ({}, DASH + ".evil.com", "GET", None, False, "not allowed"),  # no prefix matching
    ({}, "null", "GET", None, False, "not allowed"),
    ({}, DASH, "DELETE", None, False, "method 'DELETE'"),
    ({}, DASH, "get", None, False, "method 'get'"),  # methods are case-sensitive
    ({}, DASH, "", None, False, "method ''"),
    ({}, DASH, "GET", "x-secret", False, "'x-secret'"),
    ({}, DASH, "GET", ",".join(["x"] * 65), False, "more than 64"),
    ({"origins": ("*",)}, "https://any.example", "GET", None, True, ""),
    ({"methods": ("GET", "DELETE")}, DASH, "DELETE", None, True, ""),
]


@pytest.mark.parametrize(("kw", "origin", "method", "asked", "allowed", "reason"), PREFLIGHTS)
def test_preflight_decisions(
    kw: dict[str, object],
    origin: str | None,
    method: str,
    asked: str | None,
    allowed: bool,
    reason: str,
) -> None:
    got = cors(**kw).preflight(origin, method, asked)
    assert got.allowed is allowed
    assert reason in got.reason
    assert ("Vary", VARY_PREFLIGHT) in got.headers
    if allowed:
        headers = dict(got.headers)
        assert headers["Access-Control-Allow-Origin"] in (DASH, "*")
        assert headers["Access-Control-Max-Age"] == "600"


def test_the_access_key_header_is_allowed_when_keys_are_on() -> None:
    keyed = Cors(CorsConfig(enabled=True, origins=(DASH,)), key_header="X-Bloxproxy-Key")
    assert keyed.preflight(DASH, "GET", "x-bloxproxy-key").allowed
    assert not cors().preflight(DASH, "GET", "x-bloxproxy-key").allowed


def test_actual_headers() -> None:
    c = cors(allow_credentials=True)
    allowed = dict(c.actual(DASH))
    assert allowed["Access-Control-Allow-Origin"] == DASH
    assert allowed["Access-Control-Allow-Credentials"] == "true"
    assert "Cache-Status" in allowed["Access-Control-Expose-Headers"]
    assert allowed["Vary"] == "Origin"
    assert c.actual("https://evil.example.com") == (("Vary", "Origin"),)
    assert c.actual(None) == (("Vary", "Origin"),)
    assert c.wire(DASH) == "".join(f"{k}: {v}\r\n" for k, v in c.actual(DASH)).encode()
    assert c.wire("x" * 5000) == b"Vary: Origin\r\n"
    anyone = cors(origins=("*",))
    assert dict(anyone.actual(None))["Access-Control-Allow-Origin"] == "*"


def test_memo_is_bounded_by_the_config() -> None:
    c = cors()
    for i in range(1000):
        c.actual(f"https://h{i}.example.com")
        c.wire(f"https://h{i}.example.com")
        c.actual(DASH.upper() + "x" * (i % 3))
    assert len(c._memo) <= 1
    assert len(c._wire_memo) <= 2


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {
                "BLOXPROXY_SERVER_CORS_ORIGINS": "*",
                "BLOXPROXY_SERVER_CORS_ALLOW_CREDENTIALS": "true",
            },
            "server.cors.origins: '*' cannot go with allow_credentials",
        ),
        (
            {"BLOXPROXY_SERVER_CORS_ORIGINS": "https://a.example.com/path"},
            "server.cors.origins: expected '*' or an origin",
        ),
        ({"BLOXPROXY_SERVER_CORS_METHODS": "GET, P O S T"}, "expected HTTP method names"),
        ({"BLOXPROXY_SERVER_CORS_HEADERS": "X-A:b"}, "expected header names"),
    ],
)
def test_config_problems(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_mod.load(None, env=env)
    assert message in str(err.value)


def test_config_reads_origins_from_the_environment() -> None:
    env = {**ON, "BLOXPROXY_SERVER_CORS_ORIGINS": "HTTPS://Dash.Example.com/, http://[::1]:3000"}
    got = config_mod.load(None, env=env).server.cors
    assert got.origins == (DASH, "http://[::1]:3000")
    assert config_mod.load(
        None, env={"BLOXPROXY_SERVER_CORS_ORIGINS": "*"}
    ).server.cors.origins == ("*",)


# -- through the proxy ----------------------------------------------------------------------


async def options(
    client: Client, path: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    async with client.options(path, headers=headers) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


@pytest.mark.parametrize("path", [USER, USER_PT, "/v1/users/156?x=1", "/games/v1/nothing/here"])
async def test_a_preflight_is_answered_here(
    make_proxy: ProxyFactory, fake: FakeRoblox, path: str
) -> None:
    proxy = await make_proxy(**ON)
    status, headers, body = await options(
        proxy, path, {**PREFLIGHT, "Access-Control-Request-Headers": "Content-Type"}
    )
    assert status == 204
    assert body == b""
    assert headers["access-control-allow-origin"] == DASH
    assert headers["access-control-allow-methods"] == "GET, HEAD, POST"
    assert "X-Request-ID" in headers["access-control-allow-headers"]
    assert headers["access-control-max-age"] == "600"
    assert headers["vary"] == VARY_PREFLIGHT
    assert "access-control-allow-credentials" not in headers
    assert headers["x-request-id"]
    assert fake.total == 0  # never upstream


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({**PREFLIGHT, "Origin": "https://evil.example.com"}, "not allowed"),
        ({**PREFLIGHT, "Access-Control-Request-Method": "PATCH"}, "method 'PATCH'"),
        ({**PREFLIGHT, "Access-Control-Request-Headers": "cookie"}, "'cookie'"),
        ({"Access-Control-Request-Method": "GET"}, "needs an Origin"),
    ],
)
async def test_a_refused_preflight_is_a_403_problem(
    make_proxy: ProxyFactory, fake: FakeRoblox, headers: dict[str, str], detail: str
) -> None:
    proxy = await make_proxy(**ON)
    status, got, body = await options(proxy, USER, headers)
    assert status == 403
    assert got["content-type"] == "application/problem+json"
    assert got["vary"] == VARY_PREFLIGHT
    assert "access-control-allow-origin" not in got
    problem = orjson.loads(body)
    assert problem["code"] == "cors_refused"
    assert detail in problem["detail"]
    assert fake.total == 0


async def test_off_options_keeps_todays_answer(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy()
    status, headers, body = await options(proxy, USER, PREFLIGHT)
    assert status == 405
    assert "access-control-allow-origin" not in headers
    assert orjson.loads(body)["status"] == 405


async def test_an_options_that_is_no_preflight_goes_on_as_before(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(**ON)
    status, headers, _ = await options(proxy, USER, {"Origin": DASH})
    assert status == 405  # the clean route's answer, now readable by the page
    assert headers["access-control-allow-origin"] == DASH


async def test_preflights_need_no_key_but_count_against_the_client_limit(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(
        **ON,
        BLOXPROXY_AUTH_KEYS="sekrit",
        BLOXPROXY_LIMITS_CLIENTS_RATE="1",
        BLOXPROXY_LIMITS_CLIENTS_BURST="2",
    )
    asked = {**PREFLIGHT, "Access-Control-Request-Headers": "X-Bloxproxy-Key"}
    first = await options(proxy, USER, asked)
    assert first[0] == 204
    assert first[1]["ratelimit"].startswith('"clients";r=1')
    assert "X-Bloxproxy-Key" in first[1]["access-control-allow-headers"]
    assert (await options(proxy, USER, asked))[0] == 204
    status, _, body = await options(proxy, USER, asked)
    assert status == 429
    assert orjson.loads(body)["code"] == "rate_limited"
    assert fake.total == 0
    # The actual request still needs its key, and its refusal is readable by the page.
    async with proxy.get(USER, headers={"Origin": DASH}) as resp:
        assert resp.status == 401
        assert resp.headers["Access-Control-Allow-Origin"] == DASH


@pytest.mark.parametrize("path", [USER, USER_PT])
async def test_actual_answers_carry_the_headers_on_both_paths(
    make_proxy: ProxyFactory, fake: FakeRoblox, path: str
) -> None:
    proxy = await make_proxy(**ON)
    front = front_of(proxy)
    seen = []
    for _ in range(3):  # a miss, a hit from the pipeline, a hit from the fast path
        async with proxy.get(path, headers={"Origin": DASH}) as resp:
            assert resp.status == 200
            seen.append((resp.headers["X-Cache"], front.fast_answers))
            assert resp.headers["Access-Control-Allow-Origin"] == DASH
            assert "Cache-Status" in resp.headers["Access-Control-Expose-Headers"]
            assert resp.headers.getall("Vary") == ["Origin"]
    assert seen == [("MISS", 0), ("HIT", 0), ("HIT", 1)]
    for origin in ("https://evil.example.com", "x" * 6000, "é{}<script>;; ,null"):
        async with proxy.get(path, headers={"Origin": origin}) as resp:
            assert resp.status == 200
            assert "Access-Control-Allow-Origin" not in resp.headers
            assert resp.headers.getall("Vary") == ["Origin"]
    async with proxy.get(path) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers
    assert front.fast_answers == 5  # the same entry answered them all
    assert fake.total == 1


async def test_errors_carry_the_headers(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(**ON)
    async with proxy.get("/v1/users/not-a-number", headers={"Origin": DASH}) as resp:
        assert resp.status == 400
        assert resp.headers["Access-Control-Allow-Origin"] == DASH


async def test_own_endpoints_get_no_cors(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(**ON)
    async with proxy.get("/_bloxproxy/healthz", headers={"Origin": DASH}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers
    status, headers, _ = await options(proxy, "/_bloxproxy/healthz", PREFLIGHT)
    assert status == 405
    assert "access-control-allow-origin" not in headers


async def test_hostile_preflights_get_sane_answers(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**ON)
    hostile = [
        {**PREFLIGHT, "Origin": "https://" + "a" * 7000},
        {**PREFLIGHT, "Origin": "é{}<script>;; ,null"},
        {**PREFLIGHT, "Access-Control-Request-Method": "G" * 7000},
        {**PREFLIGHT, "Access-Control-Request-Headers": ",".join(["x-a"] * 2000)},
        {**PREFLIGHT, "Access-Control-Request-Headers": ",,, ,\t,"},
    ]
    for headers in hostile:
        status, _, body = await options(proxy, USER, headers)
        assert status in (204, 403)
        if status == 403:
            assert len(orjson.loads(body)["detail"]) < 400
    assert fake.total == 0


async def test_reload_turns_it_on(make_proxy: ProxyFactory, fake_server: TestServer) -> None:
    proxy = await make_proxy()
    assert (await options(proxy, USER, PREFLIGHT))[0] == 405
    app = proxy.server.app
    apply_reload(app, proxy_config(fake_server, **ON), app[PIPELINE].rules)
    assert (await options(proxy, USER, PREFLIGHT))[0] == 204
