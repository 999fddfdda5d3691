"""The status page: the snapshot as a table of plain values, status.json and the page over
HTTP (keys, CSP, hostile credentials), and the page in a real headless Chromium after
traffic through the real proxy in front of the bundled fake."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bloxproxy.app import create_app
from bloxproxy.appkeys import METRICS
from bloxproxy.authn import basic_password
from bloxproxy.fake import FAKE_STATE, Fault
from bloxproxy.status import Breaker, Inputs, RequestRow, snapshot
from bloxproxy.status_page import CSP, PAGE
from tests.browser import dump_dom, screenshot_live
from tests.conftest import ProxyFactory, proxy_config

ROOT = Path(__file__).resolve().parent.parent
Client = TestClient[Any, Any]


@dataclass(frozen=True)
class Row:
    """A budget row as the limiter gives it (observe.BudgetRowLike)."""

    scope: str
    rate: float
    ceiling: float
    limit: float = 0.0
    hold: float = 0.0
    slots: int = 0
    waiting: int = 0
    waits: int = 0
    refusals: int = 0


def rows(*spec: tuple[str, int, str, int]) -> list[RequestRow]:
    return [RequestRow(route, status, cache, n, n * 0.01) for route, status, cache, n in spec]


# -- the snapshot (pure) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requests", "ratio", "avoided", "api", "other", "errors", "refused"),
    [
        ((), None, 0, 0, 0, 0, 0),
        # hits, stale and shared calls avoided a call; misses did not; BYPASS is not cacheable
        (
            (
                ("users.get", 200, "HIT", 6),
                ("users.get", 200, "MISS", 2),
                ("users.get", 200, "STALE", 1),
                ("users.get", 200, "COALESCED", 1),
                ("users.get", 200, "BYPASS", 5),
            ),
            0.8,
            8,
            15,
            0,
            0,
            0,
        ),
        # the proxy's own endpoints, unrouted paths and preflights are not API traffic
        (
            (
                ("none", 200, "", 40),
                ("none", 401, "", 2),
                ("cors:preflight", 204, "", 3),
                ("passthrough:users", 200, "MISS", 1),
            ),
            0.0,
            0,
            1,
            45,
            0,
            0,
        ),
        # 5xx of the API counted; 429s to clients counted wherever they came from
        (
            (
                ("users.get", 502, "MISS", 2),
                ("users.get", 429, "", 3),
                ("none", 429, "", 1),
                ("users.get", 200, "HIT", 2),
            ),
            0.5,
            2,
            7,
            1,
            2,
            4,
        ),
        # only BYPASS: nothing cacheable yet
        ((("users.post", 200, "BYPASS", 3),), None, 0, 3, 0, 0, 0),
    ],
)
def test_requests_and_hit_ratio(
    requests: tuple[tuple[str, int, str, int], ...],
    ratio: float | None,
    avoided: int,
    api: int,
    other: int,
    errors: int,
    refused: int,
) -> None:
    snap = snapshot(Inputs(now=1.0, uptime=2.0, requests=rows(*requests)))
    assert snap["hit_ratio"] == ratio
    assert snap["upstream_calls_avoided"] == avoided
    q = snap["requests"]
    assert (q["api"], q["other"], q["errors"], q["client_429"]) == (api, other, errors, refused)


@pytest.mark.parametrize(
    ("row", "source"),
    [
        (Row("users", 20.0, 20.0), "configured"),
        (Row("users", 10.0, 20.0), "learned"),  # lowered after a 429
        (Row("users", 5.0, 20.0, limit=5.0), "roblox"),  # capped at x-ratelimit-limit
        (Row("users", 3.0, 20.0, limit=5.0), "learned"),  # below Roblox's: learned
        (Row("users", 20.0, 20.0, limit=50.0), "configured"),  # Roblox allows more
    ],
)
def test_budget_source(row: Row, source: str) -> None:
    (service,) = snapshot(Inputs(now=0, uptime=0, budgets=[row]))["services"]
    assert service["budget"]["source"] == source
    assert service["budget"]["rate"] == row.rate


def test_services_merge_attempts_breakers_budgets_and_configured_rates() -> None:
    snap = snapshot(
        Inputs(
            now=0,
            uptime=0,
            attempts={
                ("users", "200"): 10,
                ("users", "429"): 2,
                ("users", "503"): 1,
                ("users", "error"): 1,  # the connection failed: an attempt and an error
                ("users", "circuit_open"): 4,  # refused without a call: not an attempt
                ("thumbnails", "200"): 3,
            },
            budgets=[Row("users", 10.0, 20.0, hold=2.26, slots=14, waiting=3, waits=5, refusals=1)],
            rates={"users": 20.0, "games": 5.0},  # games: configured, never used
            breakers=[Breaker("thumbnails", "open", 12.34), Breaker("users", "closed", -5.0)],
        )
    )
    by_name = {s["name"]: s for s in snap["services"]}
    assert list(by_name) == ["games", "thumbnails", "users"]
    users = by_name["users"]
    assert (users["attempts"], users["status_429"], users["errors"]) == (14, 2, 2)
    assert users["breaker"] == "closed" and users["breaker_open_for"] == 0.0
    assert users["budget"] == {
        "rate": 10.0,
        "ceiling": 20.0,
        "limit": None,
        "source": "learned",
        "hold_seconds": 2.3,
        "paused": True,
        "slots": 14,
        "waiting": 3,
        "waits": 5,
        "refusals": 1,
    }
    thumbs = by_name["thumbnails"]
    assert thumbs["budget"] is None
    assert (thumbs["breaker"], thumbs["breaker_open_for"]) == ("open", 12.3)
    games = by_name["games"]["budget"]
    assert (games["rate"], games["source"], games["slots"]) == (5.0, "configured", 0)
    up = snap["upstream"]
    assert (up["attempts"], up["status_429"], up["errors"]) == (17, 2, 2)
    assert up["paused"] == ["users"] and up["open_circuits"] == ["thumbnails"]


def test_top_routes_busiest_first_with_their_own_ratio() -> None:
    requests = rows(
        ("b.route", 200, "HIT", 3),
        ("b.route", 200, "MISS", 1),
        ("a.route", 200, "MISS", 4),  # as busy as b: by name
        ("c.route", 503, "MISS", 9),
        ("c.route", 200, "BYPASS", 1),
        ("d.route", 200, "BYPASS", 1),
        ("none", 200, "", 100),  # not a route
    )
    snap = snapshot(Inputs(now=0, uptime=0, requests=requests), top=3)
    assert [r["route"] for r in snap["routes"]] == ["c.route", "a.route", "b.route"]
    c, a, b = snap["routes"]
    assert (c["requests"], c["errors"], c["hit_ratio"]) == (10, 9, 0.0)
    assert b["hit_ratio"] == 0.75 and a["hit_ratio"] == 0.0
    assert c["mean_ms"] == 10.0  # 0.01 s per answer
    only_bypass = snapshot(Inputs(now=0, uptime=0, requests=rows(("d", 200, "BYPASS", 1))))
    assert only_bypass["routes"][0]["hit_ratio"] is None


@pytest.mark.parametrize(
    ("inputs", "l1", "redis"),
    [
        (
            Inputs(0, 0, l1_entries=3, l1_bytes=900, l1_max_entries=10, l1_max_bytes=4096),
            {"enabled": True, "entries": 3, "bytes": 900, "max_entries": 10, "max_bytes": 4096},
            {"state": "off", "ping_ms": None},
        ),
        (
            Inputs(0, 0, l1_max_entries=0, redis="ok", redis_ms=0.4567),
            {"enabled": False, "entries": 0, "bytes": 0, "max_entries": 0, "max_bytes": 0},
            {"state": "ok", "ping_ms": 0.46},
        ),
        (
            Inputs(0, 0, l1_max_entries=5, cache_enabled=False, redis="unreachable (X)"),
            {"enabled": False, "entries": 0, "bytes": 0, "max_entries": 5, "max_bytes": 0},
            {"state": "unreachable (X)", "ping_ms": None},
        ),
    ],
)
def test_l1_and_redis(inputs: Inputs, l1: dict[str, Any], redis: dict[str, Any]) -> None:
    snap = snapshot(inputs)
    assert snap["l1"] == l1 and snap["redis"] == redis


def _basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("header", "password"),
    [
        (_basic(b"status:k1"), "k1"),
        (_basic(b":k1"), "k1"),
        (_basic(b"user:with:colons"), "with:colons"),
        ("basic " + base64.b64encode(b"u:k").decode(), "k"),  # the scheme in any case
        (_basic(b"no-colon"), ""),
        (_basic(b"u:"), ""),
        ("Basic !!!not-base64", ""),
        ("Basic \udcff\udcfe", ""),  # bytes that are not UTF-8, as aiohttp hands them over
        ("Bearer k1", ""),
        ("", ""),
        (_basic(b"u:\xff"), "\udcff"),  # the key's bytes kept (secret_bytes gives them back)
    ],
)
def test_basic_password(header: str, password: str) -> None:
    assert basic_password(header) == password


# -- over HTTP ----------------------------------------------------------------------------


async def _fault_429(fake_server: TestServer, path: str) -> None:
    """One 429 (Retry-After: 1) for the next GET of ``users`` ``path``, through the fake's
    control API."""
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            fake_server.make_url("/_fake/faults"),
            json={
                "service": "users",
                "path": path,
                "faults": [{"status": 429, "retry_after": "1"}],
            },
        ) as r,
    ):
        assert r.status == 200, await r.text()


async def _traffic(proxy: Client, fake_server: TestServer, headers: dict[str, str]) -> None:
    """Three misses (one answered only after a 429) and three hits on users.get."""
    await _fault_429(fake_server, "/v1/users/2")
    for user in (1, 1, 1, 2, 2, 156):
        async with proxy.get(f"/v1/users/{user}", headers=headers) as r:
            assert r.status == 200, await r.text()


async def test_status_json_after_traffic(make_proxy: ProxyFactory, fake_server: TestServer) -> None:
    proxy = await make_proxy()
    await _traffic(proxy, fake_server, {})
    async with proxy.get("/_bloxproxy/status.json") as r:
        assert r.status == 200
        assert r.headers["Cache-Control"] == "no-store"
        snap = await r.json()
    assert snap["hit_ratio"] == 0.5 and snap["upstream_calls_avoided"] == 3
    assert snap["requests"]["by_result"]["MISS"] == 3
    assert snap["upstream"]["status_429"] == 1 and snap["upstream"]["attempts"] == 4
    (users,) = snap["services"]
    assert users["name"] == "users" and users["status_429"] == 1
    assert users["budget"]["source"] == "learned"  # the 429 lowered it
    assert users["budget"]["rate"] < users["budget"]["ceiling"]
    assert snap["routes"][0]["route"] == "users.get" and snap["routes"][0]["requests"] == 6
    assert snap["l1"]["entries"] >= 3 and snap["redis"]["state"] == "off"
    assert snap["coalescing"] == {"in_flight": 0, "waiters": 0}


async def test_page_is_self_contained_behind_a_strict_csp(proxy: Client) -> None:
    async with proxy.get("/_bloxproxy/") as r:
        assert r.status == 200 and r.content_type == "text/html"
        html = await r.text()
        csp = r.headers["Content-Security-Policy"]
    assert html.encode() == PAGE and csp == CSP
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    # no URL of anywhere else: no scheme, no protocol-relative URL, no src at all
    assert not re.search(r"https?:|//[a-z0-9]", html.replace("'//", ""), re.I)
    assert " src=" not in html and "<iframe" not in html
    # the one script and the one style are the ones the CSP names by hash
    for tag in ("script", "style"):
        (body,) = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        digest = __import__("hashlib").sha256(body.encode()).digest()
        assert f"'sha256-{base64.b64encode(digest).decode()}'" in csp
    async with proxy.head("/_bloxproxy/") as r:
        assert r.status == 200


@pytest.mark.parametrize("path", ["/_bloxproxy/", "/_bloxproxy/status.json"])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_other_methods_get_405(proxy: Client, path: str, method: str) -> None:
    async with proxy.request(method, path) as r:
        assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"
        assert r.content_type == "application/problem+json"


@pytest.mark.parametrize("path", ["/_bloxproxy/", "/_bloxproxy/status.json"])
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-Bloxproxy-Key": "wrong"}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": _basic(b"status:wrong")}, 401),
        ({"Authorization": "Basic %%%"}, 401),  # not base64: no key given
        ({"Authorization": _basic(b"u:\xff\xfe")}, 401),  # not UTF-8
        ({"X-Bloxproxy-Key": "k1"}, 200),
        ({"Authorization": "Bearer k1"}, 200),
        ({"Authorization": _basic(b"status:k1")}, 200),
        ({"Authorization": _basic(b"anyone:k2")}, 200),
    ],
)
async def test_keys(
    make_proxy: ProxyFactory, path: str, headers: dict[str, str], status: int
) -> None:
    proxy = await make_proxy(BLOXPROXY_AUTH_KEYS="k1,k2")
    async with proxy.get(path, headers=headers) as r:
        assert r.status == status, await r.text()
        if status == 401:
            assert r.content_type == "application/problem+json"
            assert r.headers["WWW-Authenticate"].startswith('Basic realm="bloxproxy status"')
            assert "k1" not in await r.text()


async def test_wrong_keys_are_throttled_a_missing_one_only_prompted(
    make_proxy: ProxyFactory,
) -> None:
    proxy = await make_proxy(
        BLOXPROXY_AUTH_KEYS="k1",
        BLOXPROXY_LIMITS_AUTH_FAILURES_RATE="0.001",
        BLOXPROXY_LIMITS_AUTH_FAILURES_BURST="2",
    )
    for _ in range(5):  # a browser before its prompt: no key, never a guess
        async with proxy.get("/_bloxproxy/") as r:
            assert r.status == 401
    statuses = []
    for _ in range(4):
        async with proxy.get("/_bloxproxy/status.json", headers={"X-Bloxproxy-Key": "x"}) as r:
            statuses.append(r.status)
    assert statuses[:2] == [401, 401] and statuses[-1] == 429


async def test_redis_state(make_proxy: ProxyFactory, redis_url: str) -> None:
    proxy = await make_proxy(BLOXPROXY_CACHE_REDIS_URL=redis_url)
    async with proxy.get("/_bloxproxy/status.json") as r:
        redis = (await r.json())["redis"]
    assert redis["state"] == "ok" and redis["ping_ms"] >= 0


async def test_redis_unreachable(make_proxy: ProxyFactory, unused_tcp_port: int) -> None:
    proxy = await make_proxy(
        BLOXPROXY_CACHE_REDIS_URL=f"redis://127.0.0.1:{unused_tcp_port}/0",
        BLOXPROXY_CACHE_REDIS_TIMEOUT="200ms",
    )
    async with proxy.get("/_bloxproxy/status.json") as r:
        assert r.status == 200
        redis = (await r.json())["redis"]
    assert redis["state"].startswith("unreachable (") and redis["ping_ms"] is None


# -- in a browser -------------------------------------------------------------------------


def _url(proxy: Client, key: str | None = None) -> str:
    auth = f"status:{key}@" if key else ""
    return f"http://{auth}127.0.0.1:{proxy.server.port}/_bloxproxy/"


async def test_in_a_browser_after_traffic(
    make_proxy: ProxyFactory, fake_server: TestServer
) -> None:
    """What a person sees: the hit ratio, the 429, the service's learned budget, the
    route, charts with points; and with keys on, nothing without the key."""
    proxy = await make_proxy(BLOXPROXY_AUTH_KEYS="k1")
    await _traffic(proxy, fake_server, {"X-Bloxproxy-Key": "k1"})

    page = await dump_dom(_url(proxy, "k1"))  # the browser answers the 401's prompt
    assert page.attrs["state"]["class"] == "state live", page.of("state")
    assert page.of("hit-ratio") == "50.0 %"
    assert page.of("hit-sub") == "3 hits, 0 stale, 0 shared, 3 misses"
    assert page.of("avoided") == "3"
    assert page.of("requests") == "6"
    assert page.of("upstream-429") == "1"
    assert page.of("attempts") == "4"
    assert page.of("l1").endswith("entries") and page.of("redis") == "not used"
    (head, *body) = page.rows["services"]
    assert head[1][:3] == ["service", "budget", "use"]
    (users,) = body
    assert users[0]["data-name"] == "users"
    cells = dict(zip(head[1], users[1], strict=True))
    assert re.fullmatch(r"\d+\.\d+/s learned \(configured 20\.0/s\)", cells["budget"])
    assert cells["calls"] == "4" and cells["429s"] == "1" and cells["state"] == "ok"
    assert cells["use"].endswith("4 calls let through")
    (_, route) = page.rows["routes"]
    assert route[1] == ["users.get", "6", "50.0 %", route[1][3], "0"]
    # three polls in 5 s of virtual time: the hit ratio's chart has three points, the
    # rates (from two polls each) two
    assert int(page.attrs["c-hit"]["data-points"]) >= 3
    for chart in ("c-req", "c-saved", "c-up", "c-429", "c-wait"):
        assert int(page.attrs[chart]["data-points"]) >= 2, chart
    polyline = re.search(r'id="c-hit".*?<polyline points="([^"]*)"', page.html, re.S)
    assert polyline is not None and len(polyline.group(1).split()) >= 3

    def refusals() -> float:
        counts = proxy.server.app[METRICS].request_counts()
        return sum(n for route, status, _, n, _ in counts if (route, status) == ("none", 401))

    # Without the key: refused, nothing shown (a headless browser has no prompt to show;
    # wrong keys are test_keys' above)
    before = refusals()
    refused = await dump_dom(_url(proxy), budget_ms=500)
    assert "hit-ratio" not in refused.html and "upstream-429" not in refused.html
    assert refusals() > before


@pytest.mark.skipif(
    not os.environ.get("BLOXPROXY_STATUS_SCREENSHOT"),
    reason="makes docs/status-page.png: BLOXPROXY_STATUS_SCREENSHOT=docs/status-page.png",
)
async def test_screenshot_for_the_docs(
    aiohttp_client: Callable[..., Awaitable[Client]], fake_server: TestServer
) -> None:
    """docs/status-page.png: a proxy on the real clocks after traffic on a few routes, and
    more traffic while the page is read (run on demand, with the variable set)."""
    proxy = await aiohttp_client(create_app(proxy_config(fake_server)))
    await _traffic(proxy, fake_server, {})
    paths = [
        "/v1/users/1",
        "/v1/users/156",
        "/v1/groups/7",
        "/v1/users?ids=1,2,156",
        "/v1/presence?ids=1,2",
        "/v1/users/1/username-history",
        "/users/v1/users/2",
    ]

    async def more(n: int, pause: float = 0.0, thumbnails: bool = True) -> None:
        for i in range(n):
            path = paths[i % len(paths)]
            if thumbnails and i % 5 == 0:
                path = f"/v1/thumbnails/users/headshots?ids={i}"
            async with proxy.get(path) as r:
                await r.read()
            await asyncio.sleep(pause * (1 + (i // 40) % 3))  # the rate changes now and then

    await asyncio.gather(*(more(60) for _ in range(4)))  # identical calls at once: coalesced

    async def throttled_later() -> None:  # Roblox says 429 late in the run: a pause shows
        await asyncio.sleep(15)
        fake_server.app[FAKE_STATE].script(
            "thumbnails",
            "/v1/users/avatar-headshot",
            [Fault(status=429, retry_after="6")] * 2,
        )

    background = asyncio.gather(
        throttled_later(), more(2000, 0.01), *(more(2000, 0.01, False) for _ in range(2))
    )
    try:
        out = ROOT / os.environ["BLOXPROXY_STATUS_SCREENSHOT"]
        await screenshot_live(_url(proxy), out, seconds=21)
    finally:
        background.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await background


async def test_coalescing_waiters_while_a_call_is_in_flight(
    proxy: Client, fake_server: TestServer
) -> None:
    """Three identical requests while Roblox is slow: one call in flight, two waiting on it;
    none once it answered."""
    fake_server.app[FAKE_STATE].script("users", "/v1/users/1", [Fault(delay=0.3)])

    async def get() -> int:
        async with proxy.get("/v1/users/1") as r:
            await r.read()
            return r.status

    calls = [asyncio.ensure_future(get()) for _ in range(3)]
    try:
        for _ in range(100):  # until all three are in (each is one request to the proxy)
            async with proxy.get("/_bloxproxy/status.json") as r:
                during = (await r.json())["coalescing"]
            if during["waiters"] == 2:
                break
            await asyncio.sleep(0.005)
        assert during == {"in_flight": 1, "waiters": 2}
    finally:
        assert await asyncio.gather(*calls) == [200, 200, 200]
    async with proxy.get("/_bloxproxy/status.json") as r:
        after = await r.json()
    assert after["coalescing"] == {"in_flight": 0, "waiters": 0}
    assert after["requests"]["by_result"]["COALESCED"] == 2
