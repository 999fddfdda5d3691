"""Bad input and upstream failures on clean routes: always a problem+json answer.

Every answer here is ``application/problem+json`` with ``status``, ``title``, ``detail``,
``instance`` and the ``request_id`` of the ``X-Request-ID`` header. Bad input is refused
before any upstream call; an upstream failure is mapped to a status that says whose fault
it is (502/503/504 for Roblox, 4xx for the client) and never to a stack trace.
"""

from __future__ import annotations

import gzip
import re
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from yarl import URL

from bloxproxy.fake import FakeRoblox, Fault
from tests.conftest import ProxyFactory
from tests.test_routes import CASES, KEYED, Case

Client = TestClient[web.Request, web.Application]

# Fault tests want exactly one upstream attempt per request, answered afresh.
FRESH = {"BLOXPROXY_CACHE_ENABLED": "false", "BLOXPROXY_RETRIES_ATTEMPTS": "1"}
TRACEBACK = re.compile(r"Traceback|File \"|\.py\"?, line \d+|bloxproxy/\w+\.py|site-packages")


async def fetch(
    client: Client, target: str, method: str = "GET", **kw: Any
) -> tuple[int, Any, dict[str, Any]]:
    """``target`` goes out byte for byte; returns status, headers and the problem body."""
    url = URL(f"http://{client.host}:{client.port}{target}", encoded=True)
    async with client.session.request(method, url, allow_redirects=False, **kw) as resp:
        body = await resp.read()
        text = body.decode("utf-8", "replace")
        assert not TRACEBACK.search(text), text
        assert resp.status >= 400, text
        assert resp.headers["Content-Type"] == "application/problem+json", text
        problem: dict[str, Any] = orjson.loads(body)
        assert problem["status"] == resp.status
        assert isinstance(problem["title"], str) and problem["title"]
        assert isinstance(problem["detail"], str) and problem["detail"]
        assert problem["instance"] == target.partition("?")[0]
        assert problem["request_id"] == resp.headers["X-Request-ID"]
        assert problem["type"] == "about:blank"
        return resp.status, resp.headers, problem


# -- bad input: 400 before any upstream call -------------------------------------------------------

BAD_INPUT = [
    # (target, parameter named in invalid_params)
    ("/v1/users/abc", "user_id"),
    ("/v1/users/0", "user_id"),
    ("/v1/users/-5", "user_id"),
    ("/v1/users/1.5", "user_id"),
    ("/v1/users/0x10", "user_id"),
    ("/v1/users/%2B1", "user_id"),
    ("/v1/users/%201", "user_id"),
    ("/v1/users/9223372036854775808", "user_id"),  # int64 max + 1
    ("/v1/users/99999999999999999999", "user_id"),
    ("/v1/users?ids=" + ",".join(str(i) for i in range(1, 202)), "ids"),  # 201
    ("/v1/presence?ids=" + ",".join(str(i) for i in range(1, 52)), "ids"),  # 51
    ("/v1/universes?ids=" + ",".join(str(i) for i in range(1, 52)), "ids"),  # 51
    ("/v1/users?ids=", "ids"),
    ("/v1/users", "ids"),
    ("/v1/users?ids=1,,2", "ids"),
    ("/v1/users?ids=1,", "ids"),
    ("/v1/users?ids=1,x", "ids"),
    ("/v1/users?ids=1&ids=", "ids"),
    ("/v1/users?ids=1&exclude_banned=maybe", "exclude_banned"),
    ("/v1/groups/7/members?limit=11", "limit"),
    ("/v1/groups/7/members?limit=10&limit=25", "limit"),
    ("/v1/groups/7/members?sort_order=Sideways", "sort_order"),
    ("/v1/groups/7/members?cursor=" + "c" * 4097, "cursor"),
    ("/v1/thumbnails/users/headshots?ids=1&size=123x123", "size"),
    ("/v1/thumbnails/users/headshots?ids=1&format=Gif", "format"),
    ("/v1/thumbnails/universes/icons?ids=1&size=48x48", "size"),
    ("/v1/users/search", "keyword"),
    ("/v1/users/search?keyword=ab", "keyword"),
    ("/v1/users/by-username/" + "a" * 21, "username"),
    ("/v1/users/by-username/ab", "username"),
    ("/v1/users/by-username/bad-name", "username"),
    ("/v1/users/by-username/bad%20name", "username"),
    ("/v1/users/by-username/%C3%A9l%C3%A8ve", "username"),
    ("/v1/users/by-username/..", "username"),
]


async def test_bad_input_is_400_without_upstream_request(
    proxy: Client, fake: FakeRoblox, subtests: pytest.Subtests
) -> None:
    # One proxy for the whole table (a proxy per row costs more than the rows do).
    for target, param in BAD_INPUT:
        with subtests.test(target=target[:60]):
            status, _, problem = await fetch(proxy, target)
            assert status == 400
            assert problem["code"] == "invalid_request"
            assert param in [p["name"] for p in problem["invalid_params"]]
            assert param in problem["detail"]
    assert fake.total == 0


async def test_every_invalid_parameter_is_listed(proxy: Client, fake: FakeRoblox) -> None:
    status, _, problem = await fetch(
        proxy, "/v1/users/0/username-history?limit=7&sort_order=Up&cursor="
    )
    assert status == 400
    names = {(p["name"], p["in"]) for p in problem["invalid_params"]}
    assert {("user_id", "path"), ("limit", "query"), ("sort_order", "query")} <= names
    assert fake.total == 0


@pytest.mark.parametrize(
    "target",
    [
        "/v1/users/%FF",
        "/v1/users/by-username/%C3%28",
        "/v1/users/by-username/%FF%FE",
        "/v1/groups/%E2%82/roles",
    ],
)
async def test_invalid_utf8_in_a_path_segment_is_400(
    target: str, proxy: Client, fake: FakeRoblox
) -> None:
    status, _, problem = await fetch(proxy, target)
    assert status == 400
    assert "UTF-8" in problem["detail"]
    assert fake.total == 0


async def test_invalid_utf8_in_a_query_value_is_400(proxy: Client, fake: FakeRoblox) -> None:
    status, _, _ = await fetch(proxy, "/v1/users/search?keyword=ab%FFcd")
    assert status == 400
    assert fake.total == 0


@pytest.mark.parametrize(
    "target", ["/v1/users/1%0A", "/v1/users/by-username/ab%0Dcd", "/users/v1/users/1%0A"]
)
async def test_control_characters_in_the_path_get_a_problem_without_upstream_request(
    target: str, proxy: Client, fake: FakeRoblox
) -> None:
    status, _, _ = await fetch(proxy, target)
    assert status in (400, 404)
    assert fake.total == 0


# -- unknown paths and methods ---------------------------------------------------------------------


UNKNOWN_CLEAN = [
    "/v1/nothing/here",
    "/v1/users/1/nothing",
    "/v2/users/1",
    "/v1",
    "/v1/users/1/",
    "/v1//users/1",
    "/v99/users/1",
]


async def test_unknown_clean_path_is_404_no_route(
    proxy: Client, fake: FakeRoblox, subtests: pytest.Subtests
) -> None:
    for target in UNKNOWN_CLEAN:
        with subtests.test(target=target):
            status, _, problem = await fetch(proxy, target)
            assert status == 404
            assert problem["code"] == "no_route"
    assert fake.total == 0


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_wrong_method_on_a_clean_route_is_405_with_allow(
    method: str, proxy: Client, fake: FakeRoblox
) -> None:
    status, headers, problem = await fetch(proxy, "/v1/users/156", method, data=b"{}")
    assert status == 405
    assert {m.strip() for m in headers["Allow"].split(",")} == {"GET", "HEAD"}
    assert method not in headers["Allow"]
    assert method in problem["detail"]
    assert fake.total == 0


async def test_head_on_a_clean_route_is_allowed(proxy: Client, fake: FakeRoblox) -> None:
    url = URL(f"http://{proxy.host}:{proxy.port}/v1/users/156", encoded=True)
    async with proxy.session.head(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("target", ["/_bloxproxy/unknown", "/_bloxproxy//", "/_bloxproxy/admin"])
async def test_unknown_reserved_path_is_404(target: str, proxy: Client, fake: FakeRoblox) -> None:
    status, _, problem = await fetch(proxy, target)
    assert status == 404
    assert problem["code"] == "no_route"
    assert fake.total == 0


# -- upstream faults on clean routes ---------------------------------------------------------------


@pytest.fixture
async def fresh(make_proxy: ProxyFactory) -> Client:
    return await make_proxy(**FRESH)


async def test_upstream_503_is_503_with_upstream_status(fresh: Client, fake: FakeRoblox) -> None:
    fake.script("users", "/v1/users/1", [Fault(status=503)])
    status, _, problem = await fetch(fresh, "/v1/users/1")
    assert status == 503
    assert problem["upstream_status"] == 503
    assert problem["errors"] == [{"code": 0, "message": "Service Unavailable"}]
    assert fake.total == 1


@pytest.mark.parametrize("upstream", [500, 501, 502, 520])
async def test_upstream_5xx_is_502(upstream: int, fresh: Client, fake: FakeRoblox) -> None:
    fake.script("users", "/v1/users/1", [Fault(status=upstream)])
    status, _, problem = await fetch(fresh, "/v1/users/1")
    assert status == 502
    assert problem["upstream_status"] == upstream


async def test_upstream_429_keeps_retry_after(fresh: Client, fake: FakeRoblox) -> None:
    fake.script("friends", "/v1/users/156/friends/count", [Fault(status=429, retry_after="7")])
    status, headers, problem = await fetch(fresh, "/v1/users/156/friends/count")
    assert status == 429
    assert headers["Retry-After"] == "7"
    assert problem["upstream_status"] == 429
    assert problem["errors"][0]["code"] == 4


async def test_upstream_429_on_a_batch_post(fresh: Client, fake: FakeRoblox) -> None:
    fake.script("users", "/v1/users", [Fault(status=429, retry_after="3")], method="POST")
    status, headers, _ = await fetch(fresh, "/v1/users?ids=1,156")
    assert status == 429
    assert headers["Retry-After"] == "3"


async def test_connection_drop_is_502_unreachable(fresh: Client, fake: FakeRoblox) -> None:
    # POST (users.batch) is not idempotent: aiohttp does not silently resend it.
    fake.script("users", "/v1/users", [Fault(drop=True)], method="POST")
    status, _, problem = await fetch(fresh, "/v1/users?ids=1")
    assert status == 502
    assert problem["code"] == "upstream_unreachable"
    assert fake.total == 1


async def test_connection_drop_on_a_get_is_502_unreachable(fresh: Client, fake: FakeRoblox) -> None:
    fake.script("users", "/v1/users/1", [Fault(drop=True)])
    status, _, problem = await fetch(fresh, "/v1/users/1")
    assert status == 502
    assert problem["code"] == "upstream_unreachable"
    assert fake.total == 1  # one attempt configured, and no hidden resend


async def test_reset_mid_body_is_502(fresh: Client, fake: FakeRoblox) -> None:
    fake.script("users", "/v1/users", [Fault(reset_mid_body=True)], method="POST")
    status, _, problem = await fetch(fresh, "/v1/users?ids=1")
    assert status == 502
    assert problem["code"] in ("upstream_unreachable", "upstream_bad_response")


async def test_upstream_unreachable_is_502(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(BLOXPROXY_UPSTREAM_BASE_URL="http://127.0.0.1:1/{service}", **FRESH)
    status, _, problem = await fetch(proxy, "/v1/users/1")
    assert status == 502
    assert problem["code"] == "upstream_unreachable"


@pytest.mark.parametrize(
    "fault",
    [
        Fault(malformed_json=True),
        Fault(body="<html><body>Roblox is down</body></html>", content_type="text/html"),
        Fault(body="", content_type="application/json"),
        Fault(body="null", content_type="text/plain"),
        Fault(body='{"id": 1, "name": "Roblox"}', content_type="text/html; charset=utf-8"),
    ],
    ids=["malformed", "html", "empty", "null-as-text", "json-as-html"],
)
async def test_unusable_upstream_body_is_502_bad_response(
    fault: Fault, fresh: Client, fake: FakeRoblox
) -> None:
    fake.script("users", "/v1/users/1", [fault])
    status, _, problem = await fetch(fresh, "/v1/users/1")
    assert status == 502
    assert problem["code"] == "upstream_bad_response"
    assert "<html>" not in problem["detail"]


async def test_unexpected_shape_is_502(fresh: Client, fake: FakeRoblox) -> None:
    # users.batch picks `data` and orders by `id`: a string where a list belongs
    fake.script(
        "users",
        "/v1/users",
        [Fault(body='{"data": "nope"}', content_type="application/json")],
        method="POST",
    )
    status, _, problem = await fetch(fresh, "/v1/users?ids=1,2")
    assert status == 502
    assert problem["code"] == "upstream_bad_response"


LIST_CASES = {c.route_id: c for c in reversed(CASES) if "next_cursor" in c.expect}
WRONG_SHAPE = (
    '{"data": "nope", "roles": {"id": 1}, "userPresences": 7, '
    '"groupMemberships": "nope", "groupRoles": {"id": 1}, '
    '"nextPageCursor": null, "previousPageCursor": null, "nextPageToken": ""}'
)


@pytest.mark.parametrize("case", sorted(LIST_CASES.values(), key=str), ids=str)
async def test_list_route_with_a_non_list_upstream_is_502(
    case: Case, fresh: Client, fake: FakeRoblox
) -> None:
    # A list route never answers a 200 in another shape ({"value": ...}) when Roblox's
    # answer changes shape: clients index `data`.
    fake.script(
        case.service,
        case.path,
        [Fault(body=WRONG_SHAPE, content_type="application/json")],
        method=case.method,
    )
    keyed = case.route_id.startswith("opencloud.")  # Open Cloud routes want an API key
    headers = KEYED if keyed else {}
    status, _, problem = await fetch(fresh, case.url, headers=headers)
    assert status == 502
    assert problem["code"] == "upstream_bad_response"
    assert fake.total == 1


@pytest.mark.parametrize(
    "fault",
    [
        Fault(malformed_json=True),
        Fault(body="<html>maintenance</html>", content_type="text/html"),
        Fault(body='{"data": {"id": 1}}', content_type="application/json"),
    ],
    ids=["malformed", "html", "shape"],
)
async def test_unusable_200_is_not_served_from_cache(
    fault: Fault, make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    # One bad answer must not break the route for its whole TTL (10 min for users).
    proxy = await make_proxy(BLOXPROXY_RETRIES_ATTEMPTS="1")  # cache on
    fake.script("users", "/v1/users", [fault], method="POST")
    status, _, _ = await fetch(proxy, "/v1/users?ids=1")
    assert status == 502
    url = URL(f"http://{proxy.host}:{proxy.port}/v1/users?ids=1", encoded=True)
    async with proxy.session.get(url) as resp:
        assert resp.status == 200
        assert (await resp.json())["data"][0]["id"] == 1
    assert fake.count("users", "/v1/users", "POST") == 2


@pytest.fixture
async def small_upstream(make_proxy: ProxyFactory) -> Client:
    return await make_proxy(BLOXPROXY_UPSTREAM_MAX_RESPONSE_SIZE="1KiB", **FRESH)


async def test_upstream_body_over_max_size_is_502_too_large(
    small_upstream: Client, fake: FakeRoblox
) -> None:
    fake.script("users", "/v1/users/1", [Fault(body_size=5000)])
    status, _, problem = await fetch(small_upstream, "/v1/users/1")
    assert status == 502
    assert problem["code"] == "upstream_too_large"


async def test_compressed_upstream_body_is_bounded_after_decompression(
    small_upstream: Client, fake: FakeRoblox
) -> None:
    # 5 KB of JSON gzips to well under 1 KiB: the limit must apply to what we decode.
    big = b'{"id": 1, "name": "' + b"x" * 5000 + b'"}'
    packed = gzip.compress(big)
    assert len(packed) < 1024
    fake.script(
        "users",
        "/v1/users/1",
        [Fault(body=packed, content_type="application/json", headers={"Content-Encoding": "gzip"})],
    )
    status, _, problem = await fetch(small_upstream, "/v1/users/1")
    assert status == 502
    assert problem["code"] == "upstream_too_large"


async def test_upstream_body_just_under_max_size_is_fine(
    small_upstream: Client, fake: FakeRoblox
) -> None:
    url = URL(f"http://{small_upstream.host}:{small_upstream.port}/v1/users/156", encoded=True)
    async with small_upstream.session.get(url) as resp:  # ~200 bytes upstream
        assert resp.status == 200


async def test_slow_upstream_is_504_timeout(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(BLOXPROXY_UPSTREAM_TIMEOUT="200ms", **FRESH)
    fake.script("users", "/v1/users/1", [Fault(delay=2)])
    status, _, problem = await fetch(proxy, "/v1/users/1")
    assert status == 504
    assert problem["code"] == "upstream_timeout"


@pytest.mark.parametrize("code", [301, 302, 307, 308])
async def test_redirect_on_a_clean_route_is_502(code: int, fresh: Client, fake: FakeRoblox) -> None:
    fake.script("users", "/v1/users/1", [Fault(status=code, redirect_to="https://evil.example/")])
    status, headers, problem = await fetch(fresh, "/v1/users/1")
    assert status == 502
    assert problem["upstream_status"] == code
    assert "Location" not in headers
    assert fake.total == 1


@pytest.mark.parametrize("upstream", [401, 403])
async def test_upstream_auth_errors_are_not_our_clients_fault(
    upstream: int, fresh: Client, fake: FakeRoblox
) -> None:
    # An anonymous clean route refused by Roblox: Roblox's status and errors stay visible.
    fake.script("users", "/v1/users/1", [Fault(status=upstream)])
    status, _, problem = await fetch(fresh, "/v1/users/1")
    assert status == upstream
    assert problem["upstream_status"] == upstream
    assert problem["errors"][0]["code"] == 0


async def test_fault_is_not_cached(proxy: Client, fake: FakeRoblox) -> None:
    fake.script("users", "/v1/users/1", [Fault(status=500)])
    status, _, _ = await fetch(proxy, "/v1/users/1")
    assert status == 502
    url = URL(f"http://{proxy.host}:{proxy.port}/v1/users/1", encoded=True)
    async with proxy.session.get(url) as resp:
        assert resp.status == 200
    assert fake.count("users", "/v1/users/1") >= 2


# -- never a stack trace ---------------------------------------------------------------------------

NASTY = [
    "/v1/users/%00",
    "/v1/users/1%00",
    "/v1/users/by-username/%00abc",
    "/v1/users/" + "9" * 5000,
    "/v1/users/by-username/" + "a" * 5000,
    "/v1/users?ids=" + "1," * 3000,
    "/v1/users?ids=%FF",
    "/v1/users/%",
    "/v1/users/%zz",
    "/v1/users/%E2%80%AE156",
    "/v1/users/\uff11\uff15\uff16",  # full-width digits 156
    "/v1/users/by-username/\\..\\x",
    "/v1/users/search?keyword=%00%00%00",
    "/v1/groups/7/members?cursor=%FF%FE",
    "/v1/thumbnails/users/headshots?ids=1&is_circular=%FF",
    "/users/v1/users/%00",
    "/users/v1/%",
    "/users/" + "%2F" * 300,
    "/%00/x",
    "/_bloxproxy/%FF",
]


async def test_nasty_input_gets_a_clean_answer(proxy: Client, subtests: pytest.Subtests) -> None:
    for target in NASTY:
        with subtests.test(target=target[:40]):
            url = URL(f"http://{proxy.host}:{proxy.port}{_ascii(target)}", encoded=True)
            async with proxy.session.get(url) as resp:
                body = await resp.read()
                text = body.decode("utf-8", "replace")
                assert not TRACEBACK.search(text), text
                assert resp.status < 500 or resp.status in (502, 504), text
                if resp.headers["Content-Type"] == "application/problem+json":
                    problem = orjson.loads(body)
                    assert problem["status"] == resp.status
                    assert problem["request_id"] == resp.headers["X-Request-ID"]


def _ascii(target: str) -> str:
    """Percent-encode non-ASCII characters the way a client would."""
    return "".join(c if c.isascii() else "".join(f"%{b:02X}" for b in c.encode()) for c in target)
