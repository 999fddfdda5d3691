"""What one caller sends or is sent never shapes, or reaches, another caller's answer.

The hardening rules for shared answers, each attacked against the real proxy, the fake
Roblox and real client sessions on loopback:

- per-caller response headers (``Set-Cookie``, ``x-csrf-token``, Roblox's challenge headers)
  go to the caller whose upstream call drew them, never to a coalesced follower or a cache
  hit, whatever the status;
- what goes upstream for a shared (cacheable, anonymous) request is a function of its cache
  key: a fixed allow-list of request headers per door, nothing else a client sends;
- client address headers never reach Roblox, on any request.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bloxproxy.fake import FakeRoblox, Fault
from tests.conftest import ProxyFactory

Client = TestClient[web.Request, web.Application]

PER_CALLER = {
    "Set-Cookie": "RBXEventTrackerV2=browserid=42; Path=/; HttpOnly",
    "x-csrf-token": "token-for-the-first-caller",
    "rblx-challenge-id": "challenge-for-the-first-caller",
}
COOKIE = "_|WARNING:-DO-NOT-SHARE-THIS.--Sharing-this-will-allow-someone-to-log-in|_ABC123"


async def _get_many(
    client: Client, path: str, n: int, **kw: Any
) -> list[tuple[int, aiohttp.typedefs.LooseHeaders, str]]:
    """``n`` concurrent GETs, each on its own session without a cookie jar."""

    async def one() -> tuple[int, Any, str]:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            url = f"http://{client.host}:{client.port}{path}"
            async with session.get(url, allow_redirects=False, **kw) as resp:
                await resp.read()
                return resp.status, resp.headers, resp.headers.get("X-Cache", "")

    return list(await asyncio.gather(*(one() for _ in range(n))))


@pytest.mark.parametrize("status", [400, 403, 404, 500, 302, 200])
async def test_per_caller_headers_reach_only_the_caller_whose_call_drew_them(
    make_proxy: ProxyFactory, fake: FakeRoblox, status: int
) -> None:
    """Ten concurrent anonymous GETs coalesce onto one upstream call whose answer carries
    a cookie, a CSRF token and a challenge id: the leader gets them (passthrough passes on
    what Roblox sent it), none of the nine followers does — stored status or not."""
    proxy = await make_proxy(BLOXPROXY_RETRIES_ATTEMPTS="1")
    extra: dict[str, Any] = {"redirect_to": "https://www.roblox.com/"} if status == 302 else {}
    fake.script(
        "users",
        "/v1/users/1",
        [Fault(status=status, delay=0.2, headers=dict(PER_CALLER), **extra)],
    )
    answers = await _get_many(proxy, "/users/v1/users/1", 10)
    assert fake.count("users", "/v1/users/1") == 1
    assert {status_ for status_, _, _ in answers} == {status}
    carriers = [h for _, h, _ in answers if "Set-Cookie" in h]
    assert len(carriers) == 1, [dict(h) for _, h, _ in answers]
    leader = carriers[0]
    assert leader["Set-Cookie"] == PER_CALLER["Set-Cookie"]
    assert leader["x-csrf-token"] == PER_CALLER["x-csrf-token"]
    for _, headers, cache in answers:
        if headers is leader:
            continue
        assert cache == "COALESCED"
        for name in PER_CALLER:
            assert name not in headers, (status, name, dict(headers))


async def test_per_caller_headers_are_never_served_from_the_cache(
    proxy: Client, fake: FakeRoblox
) -> None:
    fake.script("users", "/v1/users/1", [Fault(headers=dict(PER_CALLER))])
    first = await _get_many(proxy, "/users/v1/users/1", 1)
    assert first[0][1]["Set-Cookie"] == PER_CALLER["Set-Cookie"]
    hits = await _get_many(proxy, "/users/v1/users/1", 3)
    for status, headers, cache in hits:
        assert (status, cache) == (200, "HIT")
        for name in PER_CALLER:
            assert name not in headers


# -- what goes upstream for a shared answer -----------------------------------------------

HOSTILE_REQUEST_HEADERS = {
    "User-Agent": "evil-bot/1.0",
    "Accept": "text/html",
    "Cookie": "RBXSessionTracker=sessionid=1; .ROBLOSECURITY=",  # anonymous: no credential
    "X-Custom-Header": "shapes-the-answer",
    "Origin": "https://evil.example",
    "Referer": "https://evil.example/page",
    "Content-Type": "text/plain",
    "DNT": "1",
}


UNDESCRIBED = "/thumbnails/v1/assets?assetIds=1365767"  # no rule describes this request


async def test_a_shared_passthrough_get_sends_only_keyed_headers(
    proxy: Client, fake: FakeRoblox
) -> None:
    """One client's odd headers must not shape the answer everyone shares: upstream sees our
    User-Agent and the passthrough door's keyed headers only (accept-language,
    roblox-place-id); the next anonymous client with the same keyed headers is served that
    entry."""
    headers = {**HOSTILE_REQUEST_HEADERS, "Accept-Language": "de", "Roblox-Place-Id": "5"}
    [(status, _, cache)] = await _get_many(proxy, UNDESCRIBED, 1, headers=headers)
    assert (status, cache) == (200, "MISS")
    sent = fake.requests[-1].headers
    assert sent["user-agent"] == "bloxproxy/0.1"
    assert sent["accept-language"] == "de"
    assert sent["roblox-place-id"] == "5"
    for name in HOSTILE_REQUEST_HEADERS:
        if name.lower() != "user-agent":
            assert sent.get(name.lower()) in (None, "*/*"), (name, sent)
    # The same keyed headers without the odd ones: the same entry.
    same = {"Accept-Language": "de", "Roblox-Place-Id": "5"}
    [(status, _, cache)] = await _get_many(proxy, UNDESCRIBED, 1, headers=same)
    assert (status, cache) == (200, "HIT")


async def test_a_passthrough_get_a_rule_describes_sends_what_the_rule_lists(
    proxy: Client, fake: FakeRoblox
) -> None:
    """users.get describes GET users/v1/users/{id} and forwards no client header: from
    passthrough too, nothing the client sends reaches Roblox, and nothing splits the entry."""
    headers = {**HOSTILE_REQUEST_HEADERS, "Accept-Language": "de"}
    [(status, _, cache)] = await _get_many(proxy, "/users/v1/users/1", 1, headers=headers)
    assert (status, cache) == (200, "MISS")
    sent = fake.requests[-1].headers
    assert "accept-language" not in sent and "x-custom-header" not in sent
    [(status, _, cache)] = await _get_many(proxy, "/v1/users/1", 1)  # the clean twin
    assert (status, cache) == (200, "HIT")


async def test_a_clean_route_sends_only_what_its_rule_lists(
    proxy: Client, fake: FakeRoblox
) -> None:
    [(status, _, _)] = await _get_many(proxy, "/v1/users/1", 1, headers=HOSTILE_REQUEST_HEADERS)
    assert status == 200
    sent = fake.requests[-1].headers
    assert sent["user-agent"] == "bloxproxy/0.1"
    for name in HOSTILE_REQUEST_HEADERS:
        if name.lower() != "user-agent":
            assert sent.get(name.lower()) in (None, "*/*"), (name, sent)


async def test_credentialed_passthrough_still_forwards_the_callers_headers(
    proxy: Client, fake: FakeRoblox
) -> None:
    """A credentialed request bypasses the shared cache and keeps forwarding what it did."""
    headers = {
        "User-Agent": "my-bot/2.0",
        "Cookie": f".ROBLOSECURITY={COOKIE}",
        "X-Custom-Header": "1",
    }
    [(status, _, cache)] = await _get_many(proxy, "/users/v1/users/1", 1, headers=headers)
    assert (status, cache) == (200, "BYPASS")
    sent = fake.requests[-1].headers
    assert sent["user-agent"] == "my-bot/2.0"
    assert sent["x-custom-header"] == "1"
    assert COOKIE in sent["cookie"]


# -- client addresses -----------------------------------------------------------------------

CLIENT_ADDRESS_HEADERS = {
    "True-Client-IP": "203.0.113.7",
    "CF-Connecting-IP": "203.0.113.7",
    "CF-Connecting-IPv6": "2001:db8::7",
    "X-Client-IP": "203.0.113.7",
    "X-Real-IP": "203.0.113.7",
    "Forwarded": "for=203.0.113.7;proto=https",
    "X-Forwarded-For": "203.0.113.7",
    "X-Cluster-Client-IP": "203.0.113.7",
    "Fastly-Client-IP": "203.0.113.7",
    "X-Original-Forwarded-For": "203.0.113.7",
    "X-Originating-IP": "203.0.113.7",
    "X-Remote-IP": "203.0.113.7",
    "X-Remote-Addr": "203.0.113.7",
    "Client-IP": "203.0.113.7",
    "X-Envoy-External-Address": "203.0.113.7",
}


@pytest.mark.parametrize(
    ("method", "path", "credentialed"),
    [
        ("GET", "/users/v1/users/1", False),  # shared
        ("GET", "/users/v1/users/1", True),  # bypass: everything else is forwarded
        ("POST", "/users/v1/users", False),  # a passthrough POST
        ("GET", "/v1/users/1", False),  # clean
    ],
)
async def test_client_address_headers_never_reach_roblox(
    proxy: Client, fake: FakeRoblox, method: str, path: str, credentialed: bool
) -> None:
    headers = dict(CLIENT_ADDRESS_HEADERS)
    if credentialed:
        headers["Cookie"] = f".ROBLOSECURITY={COOKIE}"
    body = b'{"userIds":[1]}' if method == "POST" else None
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        url = f"http://{proxy.host}:{proxy.port}{path}"
        async with session.request(method, url, headers=headers, data=body) as resp:
            assert resp.status == 200, await resp.text()
    sent = fake.requests[-1].headers
    leaked = sorted(name for name in CLIENT_ADDRESS_HEADERS if name.lower() in sent)
    assert leaked == []
    assert "203.0.113.7" not in repr(sent)
