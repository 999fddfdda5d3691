"""Passthrough, the drop-in base URL: ``/{service}/{path}`` ≡ ``https://{service}.roblox.com/{path}``.

Requests reach the fake with method, path, query and body unchanged; answers come back with
Roblox's status, body and the headers clients rely on. What must not cross: hop-by-hop and
client-address headers, cookies between clients, redirects, paths that climb out of a
service, and services that are not allow-listed.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDictProxy
from yarl import URL

from bloxproxy import passthrough as passthrough_mod
from bloxproxy.errors import HTTPProblem
from bloxproxy.fake import FakeRoblox, Fault
from bloxproxy.passthrough import canonical_path
from tests.conftest import ProxyFactory

Client = TestClient[web.Request, web.Application]

COOKIE = "_|WARNING:-DO-NOT-SHARE-THIS.--Sharing-this-will-allow-someone-to-log-in|_ABC123"
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:@+=-]{1,128}$")
NO_CACHE = {"BLOXPROXY_CACHE_ENABLED": "false", "BLOXPROXY_RETRIES_ATTEMPTS": "1"}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    def problem(self, status: int) -> dict[str, Any]:
        assert self.status == status, self.body
        assert self.headers["Content-Type"] == "application/problem+json"
        problem: dict[str, Any] = orjson.loads(self.body)
        assert problem["status"] == status
        assert problem["title"] and problem["detail"] and problem["instance"]
        assert problem["request_id"] == self.headers["X-Request-ID"]
        return problem


async def send(
    client: Client,
    method: str,
    target: str,
    *,
    session: aiohttp.ClientSession | None = None,
    **kw: Any,
) -> Answer:
    """Send ``target`` byte for byte (the test client would normalize ``..`` and ``//``)."""
    url = URL(f"http://{client.host}:{client.port}{target}", encoded=True)
    async with (session or client.session).request(
        method, url, allow_redirects=False, **kw
    ) as resp:
        return Answer(resp.status, resp.headers, await resp.read())


@pytest.fixture
async def plain(make_proxy: ProxyFactory) -> Client:
    """A proxy without cache and retries: every request is one upstream call."""
    return await make_proxy(**NO_CACHE)


# -- requests reach Roblox unchanged ---------------------------------------------------------------

ODD_QUERY = "z=1&a=2&a=1&q=%20x+y%2F&empty=&ids=3,1,2&%C3%A9=%E2%9C%93"
ODD_QUERY_PAIRS = (
    ("z", "1"),
    ("a", "2"),
    ("a", "1"),
    ("q", " x y/"),
    ("empty", ""),
    ("ids", "3,1,2"),
    ("é", "✓"),
)
RAW_BODY = b'{"b": 2,   "a":[1, 2]}\n\x00\xff\xfe binary tail'


@pytest.mark.parametrize("method", ["GET", "POST", "PATCH", "PUT", "DELETE"])
async def test_method_path_query_and_body_reach_the_fake_unchanged(
    method: str, plain: Client, fake: FakeRoblox
) -> None:
    body = None if method == "GET" else RAW_BODY
    headers = {"Content-Type": "application/octet-stream", "X-Custom": "kept"}
    answer = await send(
        plain, method, f"/games/v1/some/Path-x?{ODD_QUERY}", data=body, headers=headers
    )

    assert fake.total == 1
    seen = fake.requests[-1]
    assert (seen.method, seen.service, seen.path) == (method, "games", "/v1/some/Path-x")
    assert seen.query == ODD_QUERY_PAIRS  # order and repeats kept
    assert seen.body == (body or b"")
    assert seen.headers["x-custom"] == "kept"
    if body is not None:
        assert seen.headers["content-type"] == "application/octet-stream"
    # no such Roblox endpoint: the fake's 404 comes back as Roblox sent it
    assert answer.status == 404
    assert answer.json() == {"errors": [{"code": 0, "message": "NotFound"}]}


async def test_answer_is_byte_for_byte_what_roblox_sent(
    plain: Client, fake: FakeRoblox, fake_server: TestServer
) -> None:
    body = b'{"userIds": [156,  1, 4],"excludeBannedUsers":false}'
    async with aiohttp.ClientSession() as direct:
        async with direct.post(fake_server.make_url("/users/v1/users"), data=body) as resp:
            expected = await resp.read()
            expected_type = resp.headers["Content-Type"]

    answer = await send(plain, "POST", "/users/v1/users", data=body)

    assert answer.status == 200
    assert answer.body == expected
    assert answer.headers["Content-Type"] == expected_type
    assert fake.requests[-1].body == body
    assert [u["id"] for u in answer.json()["data"]] == [156, 1]  # Roblox's order, not ours


async def test_query_string_is_not_reordered(plain: Client, fake: FakeRoblox) -> None:
    answer = await send(
        plain,
        "GET",
        "/thumbnails/v1/users/avatar-headshot?size=48x48&userIds=156,1&format=Png&isCircular=true",
    )
    assert answer.status == 200
    assert fake.requests[-1].query == (
        ("size", "48x48"),
        ("userIds", "156,1"),
        ("format", "Png"),
        ("isCircular", "true"),
    )
    # Roblox's own order (the fake reverses), and its own camelCase keys
    assert [t["targetId"] for t in answer.json()["data"]] == [1, 156]


# -- answers come back unchanged -------------------------------------------------------------------

RATE_HEADERS = {
    "x-ratelimit-limit": "10, 10;w=60",
    "x-ratelimit-remaining": "0",
    "x-ratelimit-reset": "42",
}


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_429_with_retry_after_and_rate_limit_headers_comes_back(
    method: str, make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(BLOXPROXY_RETRIES_ATTEMPTS="1")  # cache on: a 429 is never kept
    fake.script(
        "users",
        "/v1/users",
        [Fault(status=429, retry_after="7", headers=RATE_HEADERS)],
        method=method,
    )
    answer = await send(
        proxy, method, "/users/v1/users", data=b'{"userIds":[1]}' if method == "POST" else None
    )

    assert answer.status == 429
    assert answer.json() == {"errors": [{"code": 4, "message": "Too many requests."}]}
    assert answer.headers["Retry-After"] == "7"
    for name, value in RATE_HEADERS.items():
        assert answer.headers[name] == value
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
    assert fake.total == 1


async def test_rate_limit_headers_of_a_200_come_back(plain: Client, fake: FakeRoblox) -> None:
    fake.script("users", "/v1/users/1", [Fault(headers=RATE_HEADERS)])
    answer = await send(plain, "GET", "/users/v1/users/1")
    assert answer.status == 200
    assert answer.json()["name"] == "Roblox"
    for name, value in RATE_HEADERS.items():
        assert answer.headers[name] == value


@pytest.mark.parametrize(
    ("fault", "status", "content_type"),
    [
        (Fault(status=503, body="<html>down</html>", content_type="text/html"), 503, "text/html"),
        (Fault(status=500), 500, "application/json; charset=utf-8"),
        (Fault(status=400, code=7, message="Bad thing"), 400, "application/json; charset=utf-8"),
        (
            Fault(body="plain words", content_type="text/plain; charset=utf-8"),
            200,
            "text/plain; charset=utf-8",
        ),
    ],
)
async def test_status_body_and_content_type_come_back_unchanged(
    fault: Fault,
    status: int,
    content_type: str,
    plain: Client,
    fake: FakeRoblox,
    fake_server: TestServer,
) -> None:
    # What the fake answers for this fault, asked directly...
    fake.script("users", "/v1/users/1", [fault])
    async with aiohttp.ClientSession() as direct:
        async with direct.get(fake_server.make_url("/users/v1/users/1")) as resp:
            expected = (resp.status, resp.headers["Content-Type"], await resp.read())
    # ...is what a passthrough client gets.
    fake.script("users", "/v1/users/1", [fault])
    answer = await send(plain, "GET", "/users/v1/users/1")

    assert (answer.status, answer.headers["Content-Type"], answer.body) == expected
    assert expected[:2] == (status, content_type)
    assert "problem" not in answer.headers["Content-Type"]


@pytest.mark.parametrize("method", ["POST", "PATCH", "PUT", "DELETE"])
async def test_mutation_is_never_resent_after_a_dropped_connection(
    method: str, proxy: Client, fake: FakeRoblox
) -> None:
    # Default retries: reads are retried, mutations must reach Roblox at most once.
    fake.script("users", "/v1/users/1/display-names", [Fault(drop=True)], method=method)
    answer = await send(proxy, method, "/users/v1/users/1/display-names", data=b"{}")
    assert answer.problem(502)["code"] == "upstream_unreachable"
    assert fake.total == 1


# -- headers that must not be forwarded ------------------------------------------------------------

HOP_HEADERS = {
    "Connection": "keep-alive, X-Hop-Named",
    "X-Hop-Named": "1",
    "Keep-Alive": "timeout=5",
    "TE": "trailers",
    "Upgrade": "h2c",
    "Proxy-Authorization": "Basic dXNlcjpwYXNz",
    "Proxy-Connection": "keep-alive",
    "Roblox-Id": "123456",
    "X-Forwarded-For": "203.0.113.7",
    "Forwarded": "for=203.0.113.7",
    "X-Real-IP": "203.0.113.7",
}


async def test_hop_by_hop_and_identity_headers_are_not_forwarded(
    plain: Client, fake: FakeRoblox
) -> None:
    answer = await send(
        plain,
        "GET",
        "/users/v1/users/1",
        headers={
            **HOP_HEADERS,
            "X-End-To-End": "yes",
            "Accept-Language": "de-DE",
            "Roblox-Place-Id": "4922741943",
        },
    )
    assert answer.status == 200
    seen = fake.requests[-1].headers
    for name in HOP_HEADERS:
        assert name.lower() not in seen, f"{name} was forwarded"
    # end-to-end headers do go through (so the assertions above can fail)
    assert seen["x-end-to-end"] == "yes"
    assert seen["accept-language"] == "de-DE"
    assert seen["roblox-place-id"] == "4922741943"


async def test_hop_by_hop_headers_of_the_answer_are_not_returned(
    plain: Client, fake: FakeRoblox
) -> None:
    fake.script(
        "users",
        "/v1/users/1",
        [
            Fault(
                headers={
                    "Keep-Alive": "timeout=99",
                    "Trailer": "X-Checksum",
                    "X-Roblox-Edge": "kept",
                }
            )
        ],
    )
    answer = await send(plain, "GET", "/users/v1/users/1")
    assert answer.headers["X-Roblox-Edge"] == "kept"
    assert "Keep-Alive" not in answer.headers
    assert "Trailer" not in answer.headers


# -- request ids -----------------------------------------------------------------------------------


async def test_request_id_is_sent_upstream_and_echoed(plain: Client, fake: FakeRoblox) -> None:
    first = await send(plain, "GET", "/users/v1/users/1")
    second = await send(plain, "GET", "/users/v1/users/1")
    rid = first.headers["X-Request-ID"]
    assert REQUEST_ID_RE.match(rid)
    assert fake.requests[0].headers["x-request-id"] == rid
    assert second.headers["X-Request-ID"] != rid  # one per request
    assert fake.requests[1].headers["x-request-id"] == second.headers["X-Request-ID"]


async def test_client_request_id_is_kept(plain: Client, fake: FakeRoblox) -> None:
    rid = "bot-7.trace:abc@x+y=z_1"
    answer = await send(plain, "GET", "/users/v1/users/1", headers={"X-Request-ID": rid})
    assert answer.headers["X-Request-ID"] == rid
    assert fake.requests[-1].headers["x-request-id"] == rid


@pytest.mark.parametrize(
    "bad", ["has space", "x" * 129, "<script>", "a;b", "id\twith\ttab", "", "ünïcode"]
)
async def test_malformed_client_request_id_is_replaced(
    bad: str, plain: Client, fake: FakeRoblox
) -> None:
    headers = {"X-Request-ID": bad.encode().decode("latin-1")}
    answer = await send(plain, "GET", "/users/v1/users/1", headers=headers)
    rid = answer.headers["X-Request-ID"]
    assert rid != headers["X-Request-ID"]
    assert REQUEST_ID_RE.match(rid)
    assert fake.requests[-1].headers["x-request-id"] == rid


async def test_upstream_request_id_header_does_not_replace_ours(
    plain: Client, fake: FakeRoblox
) -> None:
    fake.script("users", "/v1/users/1", [Fault(headers={"X-Request-ID": "from-roblox"})])
    answer = await send(plain, "GET", "/users/v1/users/1", headers={"X-Request-ID": "mine"})
    assert answer.headers.getall("X-Request-ID") == ["mine"]


# -- redirects -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "fault", "location"),
    [
        (
            "GET",
            Fault(redirect_to="https://evil.example/steal?x=1"),
            "https://evil.example/steal?x=1",
        ),
        ("GET", Fault(status=301, redirect_to="/v1/users/2"), "/v1/users/2"),
        (
            "POST",
            Fault(status=307, redirect_to="http://127.0.0.1:1/internal"),
            "http://127.0.0.1:1/internal",
        ),
    ],
)
async def test_redirects_are_returned_not_followed(
    method: str, fault: Fault, location: str, plain: Client, fake: FakeRoblox
) -> None:
    fake.script("users", "/v1/users/1", [fault])
    answer = await send(
        plain, method, "/users/v1/users/1", data=b"{}" if method == "POST" else None
    )
    assert answer.status == (fault.status or 302)
    assert answer.headers["Location"] == location
    assert fake.total == 1  # nothing fetched the Location


async def test_redirect_is_not_followed_with_cache_on(proxy: Client, fake: FakeRoblox) -> None:
    fake.script("users", "/v1/users/1", [Fault(redirect_to="/v1/users/2")])
    answer = await send(proxy, "GET", "/users/v1/users/1")
    assert answer.status == 302
    assert answer.headers["Location"] == "/v1/users/2"
    assert fake.total == 1
    assert fake.count("users", "/v1/users/2") == 0


# -- paths -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["/users//v1/users/1", "/users/v1//users/1", "//users/v1/users/1", "/users/v1/users/1/"],
)
async def test_double_and_trailing_slashes_work(
    target: str, plain: Client, fake: FakeRoblox
) -> None:
    answer = await send(plain, "GET", target)
    assert answer.status == 200
    assert answer.json()["id"] == 1
    assert fake.requests[-1].raw_path == "/users/v1/users/1"


BAD_SERVICES = [
    "/nope/x",
    "/USERS/v1/users/1",
    "/USERS/..",
    "/%2e%2e/x",
    "/%2E%2E/users/v1/users/1",
    "/_x/y",
    "/" + "a" * 300 + "/x",
    "/users.roblox.com/v1/users/1",
    "/127.0.0.1:1/x",
    "/localhost/x",
    "/user%73/v1/users/1",
]  # "/" is the proxy's own 404 pointing at /docs (tests/test_front.py)


async def test_unknown_or_malformed_service_is_404_without_upstream_request(
    plain: Client, fake: FakeRoblox, subtests: pytest.Subtests
) -> None:
    for target in BAD_SERVICES:
        with subtests.test(target=target[:40]):
            answer = await send(plain, "GET", target)
            problem = answer.problem(404)
            assert problem["code"] == "unknown_service"
            assert problem["instance"] == target
            assert len(problem["detail"]) < 1000  # a 300-char name is shortened
            assert fake.total == 0


DOT_SEGMENTS = [
    "/users/v1/../v1/users/1",
    "/users/v1/%2e%2e/users/1",
    "/users/v1/%2E%2E/users/1",
    "/users/v1/.%2e/users/1",
    "/users/./v1/users/1",
    "/users/v1/users/%2e",
    "/users/..",
]


async def test_dot_segments_are_400_without_upstream_request(
    plain: Client, fake: FakeRoblox, subtests: pytest.Subtests
) -> None:
    for target in DOT_SEGMENTS:
        with subtests.test(target=target):
            answer = await send(plain, "POST", target, data=b"{}")
            answer.problem(400)
            assert fake.total == 0


# -- host-header routing ---------------------------------------------------------------------------


@pytest.fixture
async def by_host(make_proxy: ProxyFactory) -> Client:
    return await make_proxy(BLOXPROXY_SERVER_HOST_SUFFIX="roblox.proxy.internal", **NO_CACHE)


@pytest.mark.parametrize(
    "host", ["users.roblox.proxy.internal", "Users.Roblox.Proxy.Internal:8080"]
)
async def test_host_header_selects_the_service(
    host: str, by_host: Client, fake: FakeRoblox
) -> None:
    answer = await send(by_host, "GET", "/v1/users/1?x=1", headers={"Host": host})
    assert answer.status == 200
    assert answer.json()["displayName"] == "Roblox"  # Roblox's answer, not the clean API's
    seen = fake.requests[-1]
    assert (seen.service, seen.path, seen.query) == ("users", "/v1/users/1", (("x", "1"),))


@pytest.mark.parametrize(
    "host", ["nope.roblox.proxy.internal", "evil.example.users.roblox.proxy.internal"]
)
async def test_unknown_sub_host_is_404_without_upstream_request(
    host: str, by_host: Client, fake: FakeRoblox
) -> None:
    answer = await send(by_host, "GET", "/v1/users/1", headers={"Host": host})
    assert answer.problem(404)["code"] == "unknown_service"
    assert fake.total == 0


async def test_other_hosts_keep_path_routing(by_host: Client, fake: FakeRoblox) -> None:
    clean = await send(by_host, "GET", "/v1/users/1")
    assert clean.status == 200
    assert clean.json()["display_name"] == "Roblox"  # the clean API
    passthrough = await send(by_host, "GET", "/users/v1/users/1")
    assert passthrough.json()["displayName"] == "Roblox"


async def test_host_suffix_off_ignores_host(plain: Client, fake: FakeRoblox) -> None:
    answer = await send(
        plain, "GET", "/v1/users/1", headers={"Host": "games.roblox.proxy.internal"}
    )
    assert answer.json()["display_name"] == "Roblox"
    assert fake.requests[-1].service == "users"


# -- CSRF: whoever does the dance, the headers go through both ways --------------------------------
#
# Roblox answers a cookie-authenticated mutation without a valid token with 403 "Token
# Validation Failed" and the token in `x-csrf-token`. Drop-in clients (ro.py, noblox.js) resend
# with `X-CSRF-TOKEN` themselves; the upstream session may also do it for them (guard.csrf).
# Either way the client's token reaches Roblox unchanged and Roblox's refusal reaches the
# client with its token.

DISPLAY_NAME = "/users/v1/users/1/display-names"
COOKIE_HEADERS = {"Cookie": f".ROBLOSECURITY={COOKIE}", "Content-Type": "application/json"}


async def test_csrf_dance_done_by_the_client_works(plain: Client, fake: FakeRoblox) -> None:
    body = b'{"newDisplayName":"Builder"}'
    answer = await send(plain, "PATCH", DISPLAY_NAME, data=body, headers=COOKIE_HEADERS)
    if answer.status == 403:  # the proxy left the handshake to us
        assert answer.json()["errors"][0]["message"] == "Token Validation Failed"
        token = answer.headers["x-csrf-token"]
        answer = await send(
            plain,
            "PATCH",
            DISPLAY_NAME,
            data=body,
            headers={**COOKIE_HEADERS, "X-CSRF-TOKEN": token},
        )
    assert answer.status == 200
    seen = fake.requests[-1]
    assert seen.headers["x-csrf-token"] == fake.csrf_token(COOKIE)
    assert f".ROBLOSECURITY={COOKIE}" in seen.headers["cookie"]
    assert seen.body == body
    assert fake.total == 2  # one refused attempt, one accepted


async def test_client_csrf_token_goes_upstream_unchanged(plain: Client, fake: FakeRoblox) -> None:
    token = fake.csrf_token(COOKIE)
    answer = await send(
        plain,
        "PATCH",
        DISPLAY_NAME,
        data=b'{"newDisplayName":"Builder"}',
        headers={**COOKIE_HEADERS, "X-CSRF-TOKEN": token},
    )
    assert answer.status == 200
    assert fake.total == 1
    assert fake.requests[-1].headers["x-csrf-token"] == token


async def test_csrf_refusal_comes_back_with_its_token(plain: Client, fake: FakeRoblox) -> None:
    # Roblox keeps refusing (e.g. the session was revoked): the client sees the 403 and the
    # token header Roblox sent, as Roblox sent them.
    refusal = Fault(
        status=403, code=0, message="Token Validation Failed", headers={"x-csrf-token": "T0k3n+/="}
    )
    fake.script("users", "/v1/users/1/display-names", [refusal] * 3, method="PATCH")
    answer = await send(
        plain, "PATCH", DISPLAY_NAME, data=b'{"newDisplayName":"Abc"}', headers=COOKIE_HEADERS
    )
    assert answer.status == 403
    assert answer.headers["x-csrf-token"] == "T0k3n+/="
    assert answer.json()["errors"] == [{"code": 0, "message": "Token Validation Failed"}]
    assert fake.total <= 2  # at most one resend with the fresh token, never a loop


async def test_csrf_refusal_is_not_cached(proxy: Client, fake: FakeRoblox) -> None:
    refusal = Fault(status=403, message="Token Validation Failed", headers={"x-csrf-token": "abc"})
    fake.script("users", "/v1/users/authenticated", [refusal], method="GET")
    first = await send(proxy, "GET", "/users/v1/users/authenticated")
    second = await send(proxy, "GET", "/users/v1/users/authenticated")
    assert first.status == 403
    assert second.status == 401  # asked again: the fake's own anonymous answer
    assert fake.total == 2


# -- body size -------------------------------------------------------------------------------------


@pytest.fixture
async def small_body(make_proxy: ProxyFactory) -> Client:
    return await make_proxy(BLOXPROXY_SERVER_MAX_BODY_SIZE="1KiB", **NO_CACHE)


async def test_body_over_max_size_is_413(small_body: Client, fake: FakeRoblox) -> None:
    answer = await send(small_body, "POST", "/users/v1/users", data=b"x" * 1025)
    answer.problem(413)
    assert fake.total == 0


async def test_chunked_body_over_max_size_is_413(small_body: Client, fake: FakeRoblox) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"y" * 512

    answer = await send(small_body, "POST", "/users/v1/users", data=chunks())
    answer.problem(413)
    assert fake.total == 0


async def test_body_at_max_size_goes_through(small_body: Client, fake: FakeRoblox) -> None:
    body = b'{"userIds":[1],"pad":"' + b"p" * (1024 - 24) + b'"}'
    assert len(body) == 1024
    answer = await send(small_body, "POST", "/users/v1/users", data=body)
    assert answer.status == 200
    assert fake.requests[-1].body == body


# -- cookies ---------------------------------------------------------------------------------------


async def test_upstream_set_cookie_is_not_kept_between_clients(
    make_proxy: ProxyFactory, fake: FakeRoblox, fake_server: TestServer
) -> None:
    # A host name, not an IP: aiohttp's cookie jar ignores cookies from IP addresses, so
    # only a named upstream shows whether the proxy keeps them.
    proxy = await make_proxy(
        BLOXPROXY_UPSTREAM_BASE_URL=f"http://localhost:{fake_server.port}/{{service}}",
        **NO_CACHE,
    )
    set_cookie = "RBXEventTrackerV2=browserid=42; Path=/; Expires=Wed, 01 Jan 2048 00:00:00 GMT"
    fake.script("users", "/v1/users/1", [Fault(headers={"Set-Cookie": set_cookie})])
    jarless = aiohttp.DummyCookieJar()
    async with aiohttp.ClientSession(cookie_jar=jarless) as alice:
        first = await send(proxy, "GET", "/users/v1/users/1", session=alice)
    assert first.headers["Set-Cookie"] == set_cookie  # passed back to its client...

    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as bob:
        second = await send(proxy, "GET", "/users/v1/users/2", session=bob)
    assert second.status == 200
    assert fake.requests[-1].path == "/v1/users/2"
    assert "cookie" not in fake.requests[-1].headers  # ...and never replayed to another


async def test_client_cookies_are_forwarded_only_on_their_request(
    plain: Client, fake: FakeRoblox
) -> None:
    await send(
        plain,
        "GET",
        "/users/v1/users/authenticated",
        headers={"Cookie": f".ROBLOSECURITY={COOKIE}"},
    )
    assert COOKIE in fake.requests[-1].headers["cookie"]
    await send(plain, "GET", "/users/v1/users/1")
    assert "cookie" not in fake.requests[-1].headers


# -- canonical paths: the shortcut for paths already canonical ----------------------------


def _reference_canonical(raw_path: str) -> str:
    """canonical_path() spelled out without its shortcut: decode and encode every segment."""
    out = []
    for raw in raw_path.split("/"):
        if not raw:
            continue
        segment = unquote(raw, errors="strict")
        if segment in (".", "..") or re.search(r"[\x00-\x1f\x7f]", segment):
            raise HTTPProblem(400, "refused")
        out.append(quote(segment, safe="-._~!$&'()*+,;=:@"))
    return "/" + "/".join(out)


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="/.%2Fa~-_!$&'()*+,;=:@ \\é\x7f?#[]", max_size=24))
def test_canonical_path_is_the_segment_by_segment_encoding(raw_path: str) -> None:
    try:
        expected = _reference_canonical(raw_path)
    except (HTTPProblem, UnicodeDecodeError):
        with pytest.raises(HTTPProblem):
            canonical_path(raw_path)
        return
    assert canonical_path(raw_path) == expected
    if passthrough_mod._CANONICAL.fullmatch(raw_path):
        assert expected == raw_path  # the shortcut returns it as it is


@pytest.mark.parametrize(
    "raw_path",
    ["/v1/users/1", "/a/.../b", "/a/.b/..c", "/~user/x;y=1/@z", "/a/./b", "/a/../b", "/a/b/", "/"],
)
def test_canonical_path_examples(raw_path: str) -> None:
    try:
        expected = _reference_canonical(raw_path)
    except HTTPProblem:
        with pytest.raises(HTTPProblem):
            canonical_path(raw_path)
        return
    assert canonical_path(raw_path) == expected
