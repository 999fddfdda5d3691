"""Held Open Cloud keys on passthrough (``auth.clients.<name>.opencloud_passthrough``): which
requests get the key (a table of :func:`bloxproxy.cloudkeys.passthrough_use`), and against
the fake: the key injected, the client's own key winning, clients not opted in, methods
refused before any upstream call, other hosts and paths, cookies, per-key privacy under
concurrency, the key owner's budget, Roblox's 429 passed on, and the key kept out of logs,
metrics, problems and the status page."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bloxproxy.appkeys import ACCESS_LOG, CONFIG, GUARD
from bloxproxy.cloudkeys import PassUse, passthrough_use
from bloxproxy.fake import FakeRoblox, Fault
from bloxproxy.fake.state import viewer_tag
from tests.conftest import FakeClock, ProxyFactory

Client = TestClient[web.Request, web.Application]
HELD = {"main": "HELDSECRETmain0001", "side": "HELDSECRETside0002"}
ACCESS = {
    "game": "ACCESSgame01",  # main, passthrough for reads
    "other": "ACCESSother02",  # side, passthrough for reads
    "writer": "ACCESSwriter03",  # main, passthrough for GET, HEAD and POST
    "bot": "ACCESSbot04",  # main, clean routes only
    "plain": "P1",  # auth.keys: no held key
}
USER = "/apis/cloud/v2/users/156"
READS = frozenset({"GET", "HEAD"})


@pytest.mark.parametrize(
    ("methods", "service", "path", "method", "own", "expected"),
    [
        (READS, "apis", "/cloud/v2/users/156", "GET", False, PassUse.HELD),
        (READS, "apis", "/cloud/v2/users/156", "HEAD", False, PassUse.HELD),
        (READS, "apis", "/cloud/v1/universes/1/places/2/versions", "GET", False, PassUse.HELD),
        (READS, "apis", "/legacy-groups/v1/groups/7/audit-log", "GET", False, PassUse.HELD),
        (READS, "apis", "/cloud/v2/users/156", "PATCH", False, PassUse.REFUSED),
        (READS, "apis", "/legacy-badges/v1/badges/1", "PATCH", False, PassUse.REFUSED),
        (frozenset({"GET", "POST"}), "apis", "/cloud/v2/x", "POST", False, PassUse.HELD),
        (frozenset({"GET", "POST"}), "apis", "/cloud/v2/x", "HEAD", False, PassUse.REFUSED),
        # the client's own credential wins, whatever the method
        (READS, "apis", "/cloud/v2/users/156", "GET", True, PassUse.AS_IS),
        (READS, "apis", "/cloud/v2/users/156", "PATCH", True, PassUse.AS_IS),
        # not opted in
        (frozenset(), "apis", "/cloud/v2/users/156", "GET", False, PassUse.AS_IS),
        (frozenset(), "apis", "/cloud/v2/users/156", "PATCH", False, PassUse.AS_IS),
        # other hosts, other paths of apis.roblox.com: never the key, never refused
        (READS, "users", "/cloud/v2/users/156", "GET", False, PassUse.AS_IS),
        (READS, "groups", "/legacy-badges/v1/badges/1", "POST", False, PassUse.AS_IS),
        (READS, "apis", "/assets/user-auth/v1/assets", "POST", False, PassUse.AS_IS),
        (READS, "apis", "/cloud", "GET", False, PassUse.AS_IS),
        (READS, "apis", "/cloudy/v2/users/1", "GET", False, PassUse.AS_IS),
        (READS, "apis", "/Cloud/v2/users/1", "GET", False, PassUse.AS_IS),
        (READS, "apis", "/legacy-/v1/badges/1", "GET", False, PassUse.AS_IS),
        (READS, "apis", "/legacy-badges", "GET", False, PassUse.AS_IS),
        (READS, "apis", "/x/cloud/v2/users/1", "GET", False, PassUse.AS_IS),
        (READS, "apis.evil", "/cloud/v2/users/1", "GET", False, PassUse.AS_IS),
    ],
)
def test_which_requests_get_the_held_key(
    methods: frozenset[str], service: str, path: str, method: str, own: bool, expected: PassUse
) -> None:
    assert passthrough_use(methods, service, path, method, own) is expected


async def holding(make_proxy: ProxyFactory, **env: str) -> Client:
    clients = {
        "game": {"key": ACCESS["game"], "opencloud_key": "main", "opencloud_passthrough": True},
        "other": {"key": ACCESS["other"], "opencloud_key": "side", "opencloud_passthrough": True},
        "writer": {
            "key": ACCESS["writer"],
            "opencloud_key": "main",
            "opencloud_passthrough": ["GET", "HEAD", "POST"],
        },
        "bot": {"key": ACCESS["bot"], "opencloud_key": "main"},
    }
    keys = {
        "main": {"key": HELD["main"], "owner": "group:7"},
        "side": {"key": HELD["side"], "owner": "user:5"},
    }
    return await make_proxy(
        BLOXPROXY_LOGGING_ACCESS_LOG="true",
        BLOXPROXY_LOGGING_FORMAT="json",
        BLOXPROXY_AUTH_KEYS=ACCESS["plain"],
        BLOXPROXY_AUTH_CLIENTS=orjson.dumps(clients).decode(),
        BLOXPROXY_OPENCLOUD_KEYS=orjson.dumps(keys).decode(),
        **env,
    )


@pytest.fixture
async def held(make_proxy: ProxyFactory) -> Client:
    return await holding(make_proxy)


def access(name: str, **more: str) -> dict[str, str]:
    return {"X-Bloxproxy-Key": ACCESS[name], **more}


async def ask(
    proxy: Client, url: str, headers: dict[str, str], method: str = "GET", host: str = ""
) -> tuple[int, Any, Any]:
    if host:
        headers = {**headers, "Host": host}
    async with proxy.request(method, url, headers=headers) as resp:
        body = await resp.read()
        return resp.status, orjson.loads(body) if body else None, resp.headers.copy()


async def test_the_held_key_goes_out_for_an_opted_in_client(held: Client, fake: FakeRoblox) -> None:
    status, body, headers = await ask(held, USER, access("game"))
    assert status == 200 and body["_fakeViewer"] == viewer_tag(HELD["main"])
    assert headers["X-Cache"] == "MISS"
    sent = fake.requests[-1]
    assert (sent.service, sent.path, sent.headers["x-api-key"]) == ("apis", USER[5:], HELD["main"])
    assert "x-bloxproxy-key" not in sent.headers
    # the rule describing the read keeps it per key: asked again, a hit, Roblox not asked
    again = await ask(held, USER, access("game"))
    assert (again[1], again[2]["X-Cache"]) == (body, "HIT") and fake.total == 1
    # the clean route of the same upstream read, with the same held key: the same entry
    status, _, headers = await ask(held, "/v2/cloud/users/156", access("bot"))
    assert (status, headers["X-Cache"]) == (200, "HIT") and fake.total == 1
    # a HEAD is asked as a GET, with the key; the legacy-* API-key routes get it too
    assert (await ask(held, "/apis/cloud/v2/groups/7", access("game"), "HEAD"))[0] == 200
    assert (fake.requests[-1].method, fake.requests[-1].headers["x-api-key"]) == (
        "GET",
        HELD["main"],
    )
    status, body, _ = await ask(held, "/apis/legacy-groups/v1/groups/7/settings", access("game"))
    assert status == 200 and body["_fakeViewer"] == viewer_tag(HELD["main"])
    # a path that is not Open Cloud's on the same host: as the client sent it
    await ask(held, "/apis/universes/v1/universes/1", access("game"))
    assert fake.requests[-1].path == "/universes/v1/universes/1"
    assert "x-api-key" not in fake.requests[-1].headers


async def test_the_host_door_gets_it_too(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await holding(make_proxy, BLOXPROXY_SERVER_HOST_SUFFIX="proxy.test")
    status, body, _ = await ask(
        proxy, "/cloud/v2/users/156", access("game"), host="apis.proxy.test"
    )
    assert status == 200 and body["_fakeViewer"] == viewer_tag(HELD["main"])
    await ask(proxy, "/cloud/v2/users/156", access("game"), host="users.proxy.test")
    assert fake.requests[-1].service == "users" and "x-api-key" not in fake.requests[-1].headers


async def test_the_clients_own_credential_wins(held: Client, fake: FakeRoblox) -> None:
    status, body, _ = await ask(held, USER, access("game", **{"x-api-key": "game-own"}))
    assert status == 200 and body["_fakeViewer"] == viewer_tag("game-own")
    assert fake.requests[-1].headers["x-api-key"] == "game-own"
    await ask(held, USER, access("game", Authorization="Bearer oauth-token"))
    sent = fake.requests[-1].headers
    assert sent["authorization"] == "Bearer oauth-token" and "x-api-key" not in sent
    # its own key, any method: sent as it is (Roblox answers what it answers)
    before = fake.total
    await ask(held, USER, access("game", **{"x-api-key": "game-own"}), "PATCH")
    assert fake.total == before + 1 and fake.requests[-1].headers["x-api-key"] == "game-own"
    # a blank x-api-key is no key: the held one goes, the blank one does not
    status, body, _ = await ask(
        held, "/apis/cloud/v2/groups/7", access("game", **{"x-api-key": " "})
    )
    assert status == 200 and fake.requests[-1].headers["x-api-key"] == HELD["main"]


async def test_not_opted_in_goes_without_a_key(held: Client, fake: FakeRoblox) -> None:
    for name in ("bot", "plain"):
        status, body, _ = await ask(held, USER, access(name))
        assert (status, body) == (401, {"errors": [{"code": 0, "message": "Invalid API Key"}]})
        assert "x-api-key" not in fake.requests[-1].headers
    # and never a hit of an opted-in client's entry
    assert (await ask(held, USER, access("game")))[0] == 200
    status, _, headers = await ask(held, USER, access("bot"))
    assert status == 401 and headers.get("X-Cache") != "HIT"


async def test_a_method_not_allowed_is_our_403(held: Client, fake: FakeRoblox) -> None:
    for method in ("PATCH", "DELETE", "POST", "PUT"):
        status, body, headers = await ask(held, USER, access("game"), method)
        assert status == 403 and headers["Content-Type"] == "application/problem+json", method
        assert body["code"] == "held_key_method" and body["allowed_methods"] == ["GET", "HEAD"]
        assert method in body["detail"] and "HELDSECRET" not in orjson.dumps(body).decode()
    assert fake.total == 0  # Roblox never asked
    # a client allowed POST sends it with the key
    await ask(held, "/apis/cloud/v2/universes/1/places/2:publish", access("writer"), "POST")
    assert fake.total == 1
    assert (fake.requests[-1].method, fake.requests[-1].headers["x-api-key"]) == (
        "POST",
        HELD["main"],
    )
    status, body, _ = await ask(held, USER, access("writer"), "DELETE")
    assert status == 403 and body["allowed_methods"] == ["GET", "HEAD", "POST"]
    assert fake.total == 1


async def test_the_clients_cookie_never_goes_with_the_held_key(
    held: Client, fake: FakeRoblox
) -> None:
    cookie = ".ROBLOSECURITY=_|WARNING:-DO-NOT-SHARE-THIS.secret-cookie; other=1"
    status, body, _ = await ask(held, USER, access("game", Cookie=cookie))
    assert status == 200 and body["_fakeViewer"] == viewer_tag(HELD["main"])
    sent = fake.requests[-1].headers
    assert "cookie" not in sent and sent["x-api-key"] == HELD["main"]
    # the answer is the key's: the same entry with or without the cookie
    status, _, headers = await ask(held, USER, access("game"))
    assert (status, headers["X-Cache"]) == (200, "HIT") and fake.total == 1
    # a cookie to another host still goes there (only the held key's calls lose it)
    await ask(held, "/users/v1/users/authenticated", access("game", Cookie=cookie))
    assert "secret-cookie" in fake.requests[-1].headers["cookie"]


async def test_two_held_keys_never_share_an_answer_under_concurrency(
    held: Client, fake: FakeRoblox
) -> None:
    fake.latency = 0.002  # so the callers overlap upstream
    urls = [USER, "/apis/cloud/v2/groups/7", "/apis/cloud/v2/users/156/operations/1"]
    expected = {"game": HELD["main"], "writer": HELD["main"], "other": HELD["side"]}
    names = ["game", "other", "writer", "other"] * 5

    async def one(name: str, url: str) -> None:
        status, body, _ = await ask(held, url, access(name))
        assert body["_fakeViewer"] == viewer_tag(expected[name]), (name, url, status)

    await asyncio.gather(*(one(n, u) for n in names for u in urls))
    # the described reads: once per held key; the undescribed one is not cached (a
    # credentialed passthrough read no rule describes goes upstream each time)
    described = [r for r in fake.requests if not r.path.endswith("/operations/1")]
    assert len(described) == 2 * 2
    assert {r.headers["x-api-key"] for r in fake.requests} == set(HELD.values())


async def test_the_key_owners_budget_and_its_429(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await holding(make_proxy, BLOXPROXY_CACHE_ENABLED="false")
    assert (await ask(proxy, USER, access("game")))[0] == 200
    assert (await ask(proxy, "/apis/cloud/v2/users/156/operations/1", access("other")))[0] == 404
    scopes = {row.scope for row in proxy.server.app[GUARD].limiter.rows()}
    # the rule's operation for the owner (as its clean route), else the host's, per owner
    assert {"cloud-getuser@group-7", "apis@user-5"} <= scopes
    assert "apis" not in scopes
    # Roblox's 429 and its retry-after reach the client as Roblox sent them
    fake.script("apis", USER[5:], [Fault(status=429, retry_after="7")] * 10)
    status, body, headers = await ask(proxy, USER, access("game"))
    assert status == 429 and headers["Retry-After"] == "7"
    assert body["errors"][0]["message"] == "Too many requests."  # Roblox's body, as is
    assert body["_fakeViewer"] == viewer_tag(HELD["main"])
    assert all(r.headers["x-api-key"] == HELD["main"] for r in fake.requests[2:])


async def test_the_held_key_stays_out_of_logs_metrics_and_the_status_page(
    capsysbinary: pytest.CaptureFixture[bytes], make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await holding(make_proxy)  # (after capsysbinary: the log writes to it)
    for name in ("game", "other"):
        assert (await ask(proxy, USER, access(name)))[0] == 200
    assert (await ask(proxy, USER, access("game"), "PATCH"))[0] == 403
    fake.script("apis", "/cloud/v2/groups/7", [Fault(status=500)] * 3)
    await ask(proxy, "/apis/cloud/v2/groups/7", access("game"))
    proxy.server.app[ACCESS_LOG].flush()
    log = capsysbinary.readouterr().err
    assert log.count(b'"type":"access"') == 4
    seen = [log]
    for page in ("/_bloxproxy/metrics", "/_bloxproxy/status.json", "/_bloxproxy/"):
        async with proxy.get(page, headers=access("game")) as resp:
            assert resp.status == 200, page
            seen.append(await resp.read())
    for secret in HELD.values():
        assert not any(secret.encode() in text for text in seen)
    config = proxy.server.app[CONFIG]
    assert "HELDSECRET" not in repr(config.auth) + repr(config.opencloud)


async def test_hostile_requests_get_problems_never_a_500(held: Client, fake: FakeRoblox) -> None:
    assert held.port is not None
    key = ACCESS["game"].encode()

    async def raw(line: bytes, extra: bytes = b"") -> tuple[int, Any]:
        reader, writer = await asyncio.open_connection("127.0.0.1", held.port)
        writer.write(
            line
            + b" HTTP/1.1\r\nHost: x\r\nX-Bloxproxy-Key: "
            + key
            + b"\r\n"
            + extra
            + b"Connection: close\r\n\r\n"
        )
        data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), orjson.loads(body) if body else None

    for method in (b"PROPFIND", b"TRACE", b"OPTIONS"):
        status, body = await raw(method + b" /apis/cloud/v2/users/156")
        assert (status, body["code"]) == (403, "held_key_method"), method
    assert (await raw(b"GET /apis/cloud/v2/users/%ff"))[0] == 400
    assert (await raw(b"GET /apis/cloud/v2/%2e%2e/x"))[0] == 400
    assert (await raw(b"GET /apis/cloud/v2/users/1%00"))[0] == 400
    assert fake.total == 0
    # a key of its own that is not UTF-8 is still its own: sent as it is, Roblox refuses it
    status, body = await raw(b"GET /apis/cloud/v2/users/156", b"x-api-key: \xff\xfe\r\n")
    assert status == 401 and body["errors"][0]["message"] == "Invalid API Key"
    assert fake.total == 1
    assert fake.requests[-1].headers["x-api-key"] != HELD["main"]
