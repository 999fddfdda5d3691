"""Credential isolation under concurrency, and secrets that never leave where they belong.

The fake Roblox puts ``"_fakeViewer": sha256(credential)[:16]`` into every JSON answer to a
credentialed call, so an answer that reached the wrong caller is visible: every response
here is checked against the identity of the client that asked for it.

1. Many clients — three cookies, two ``x-api-key``\\ s, two ``Authorization``\\ s, a cookie
   plus a key, an empty ``.ROBLOSECURITY=`` and none at all — hammer the same routes at
   once: a per-credential cached route, a forwarding uncached route, passthrough GET and
   POST, and shipped clean routes that forward no credential. A handful of ids, so keys
   collide, calls coalesce and entries are hit. With L1 only, and with two replicas sharing
   Redis L2.
2. Known secrets — cookies, keys, bearer tokens, the proxy's access keys, the admin token,
   the HMAC secret, and wrong values for the last two — go through every kind of answer
   (hits, bypasses, 4xx of ours, Roblox's errors, 5xx of ours, a CSRF dance, purges). None
   of them may appear in the logs (every record, formatted as the JSON log lines are), the
   access log stream, ``/_bloxproxy/metrics``, any L1 key or value, any Redis key or value,
   or any response; the access key, admin token and HMAC secret never reach Roblox.
   (A secret on a header line the HTTP parser refuses: ``test_hostile.py``, which runs
   ``serve``'s own runner.)
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from bloxproxy.appkeys import ACCESS_LOG
from bloxproxy.cache.entry import Entry
from bloxproxy.config import shipped_rules_dir
from bloxproxy.fake import FakeRoblox, Fault
from bloxproxy.logs import JsonFormatter
from tests.conftest import VIEWER_RULES, FakeClock, ProxyFactory, fetcher_of

Client = TestClient[web.Request, web.Application]

RULES = VIEWER_RULES


def tag(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()[:16]


Headers = list[tuple[str, str]] | dict[str, str]

# name -> (headers, the _fakeViewer that caller's own answers carry, or None)
IDENTITIES: dict[str, tuple[Headers, str | None]] = {
    "anonymous": ({}, None),
    "empty-cookie": ({"Cookie": ".ROBLOSECURITY="}, None),
    "other-cookie": ({"Cookie": "RBXEventTrackerV2=abc"}, None),
    "cookie-a": ({"Cookie": ".ROBLOSECURITY=COOKIE-A; RBXSource=x"}, tag("COOKIE-A")),
    "cookie-b": ({"Cookie": "RBXSource=x; .ROBLOSECURITY=COOKIE-B"}, tag("COOKIE-B")),
    "cookie-c": ({"Cookie": ".ROBLOSECURITY=COOKIE-C"}, tag("COOKIE-C")),
    "key-a": ({"x-api-key": "KEY-A"}, tag("KEY-A")),
    "key-b": ({"x-api-key": "KEY-B"}, tag("KEY-B")),
    "bearer-a": ({"Authorization": "Bearer TOKEN-A"}, tag("Bearer TOKEN-A")),
    "bearer-b": ({"Authorization": "Bearer TOKEN-B"}, tag("Bearer TOKEN-B")),
    # the fake reads the cookie first; the proxy scopes by both: never shares with cookie-a
    "cookie-a+key-b": (
        {"Cookie": ".ROBLOSECURITY=COOKIE-A", "x-api-key": "KEY-B"},
        tag("COOKIE-A"),
    ),
    # Repeated headers: passthrough forwards every copy and the fake reads a later one.
    "two-cookie-headers": ([("Cookie", "a=1"), ("Cookie", ".ROBLOSECURITY=DUP-C")], tag("DUP-C")),
    "empty-then-bearer": (
        [("Authorization", ""), ("Authorization", "Bearer DUP-A")],
        tag("Bearer DUP-A"),
    ),
}
# A rule with `credentials: forward` sends the first copy of each header only.
FIRST_COPY_ONLY = {"two-cookie-headers", "empty-then-bearer"}
IDS = (1, 156, 1_000_001, 1_000_002)


def plan(n: int, seed: int = 7) -> list[tuple[str, str, str, bytes | None, bool]]:
    """``n`` requests: (identity, method, path, body, forwards_credentials)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        who = rng.choice(list(IDENTITIES))
        uid = rng.choice(IDS)
        kind = rng.randrange(6)
        if kind == 0:
            out.append((who, "GET", f"/v1/as-viewer/{uid}", None, True))
        elif kind == 1:
            out.append((who, "GET", f"/v1/forwarded/{uid}", None, True))
        elif kind == 2:
            out.append((who, "GET", f"/users/v1/users/{uid}", None, True))
        elif kind == 3:
            body = orjson.dumps({"userIds": [uid, 156]})
            out.append((who, "POST", "/users/v1/users", body, True))
        elif kind == 4:
            out.append((who, "GET", f"/v1/users/{uid}", None, False))  # credentials: none
        else:
            out.append((who, "GET", f"/v1/users?ids={uid},156", None, False))
    return out


@pytest.fixture
def rule_paths(tmp_path: Path) -> str:
    rules = tmp_path / "iso.yaml"
    rules.write_text(RULES)
    return f"[{shipped_rules_dir()}, {rules}]"


async def hammer_identities(
    clients: list[Client], fake: FakeRoblox, n: int = 600
) -> dict[str, int]:
    fake.latency = 0.005  # a few ms upstream: concurrent misses overlap and coalesce
    gate = asyncio.Semaphore(100)
    seen: dict[str, int] = {}
    mistakes: list[str] = []

    async def one(
        i: int, who: str, method: str, path: str, body: bytes | None, forwards: bool
    ) -> None:
        headers, own = IDENTITIES[who]
        client = clients[i % len(clients)]
        async with gate, asyncio.timeout(10):
            async with client.request(method, path, headers=headers, data=body) as resp:
                raw = await resp.read()
                cache = resp.headers.get("X-Cache", "")
        if resp.status != 200:
            mistakes.append(f"{who} {method} {path}: {resp.status} {raw[:200]!r}")
            return
        viewer = orjson.loads(raw).get("_fakeViewer")
        expected = own if forwards else None
        if who in FIRST_COPY_ONLY and path.startswith("/v1/"):
            expected = None
        if viewer != expected:
            mistakes.append(
                f"{who} {method} {path} ({cache}): got viewer {viewer}, expected {expected}"
            )
        seen[f"{path.split('/')[1]}:{cache}"] = seen.get(f"{path.split('/')[1]}:{cache}", 0) + 1

    await asyncio.gather(*(one(i, *p) for i, p in enumerate(plan(n))))
    assert not mistakes, "\n".join(mistakes[:20])
    return seen


async def test_many_callers_same_routes_each_gets_only_its_own_answers(
    make_proxy: ProxyFactory, fake: FakeRoblox, rule_paths: str
) -> None:
    proxy = await make_proxy(
        BLOXPROXY_RULES_PATHS=rule_paths, BLOXPROXY_LIMITS_UPSTREAM_RATE="100000"
    )
    seen = await hammer_identities([proxy], fake)
    # The cache really was in play (hits and coalesced calls), not only bypasses.
    assert seen.get("v1:HIT", 0) + seen.get("v1:COALESCED", 0) > 100, seen
    assert seen.get("users:BYPASS", 0) > 50, seen
    # and the per-credential entries exist, keyed by an HMAC, never the credential
    keys = list(fetcher_of(proxy).l1._cache)
    assert sum(" cred=" in k for k in keys) >= 8
    assert not any(s in k for k in keys for s in ("COOKIE-", "KEY-", "TOKEN-"))


async def test_many_callers_across_two_replicas_sharing_redis(
    make_proxy: ProxyFactory, fake: FakeRoblox, rule_paths: str, redis_url: str
) -> None:
    env = {
        "BLOXPROXY_RULES_PATHS": rule_paths,
        "BLOXPROXY_LIMITS_UPSTREAM_RATE": "100000",
        "BLOXPROXY_CACHE_REDIS_URL": redis_url,
        "BLOXPROXY_CACHE_CREDENTIAL_SECRET": "shared-hmac-for-the-test",
    }
    a, b = await make_proxy(**env), await make_proxy(**env)
    await hammer_identities([a, b], fake, n=300)
    for client in (a, b):  # let the L2 writes land, then go again: now L2 answers too
        for task in [*fetcher_of(client)._background]:
            await task
        fetcher_of(client).drop_l1()
    await hammer_identities([b, a], fake, n=300)
    async with aioredis.Redis.from_url(redis_url) as direct:
        keys = [k async for k in direct.scan_iter("bloxproxy:*")]
    assert sum(b" cred=" in k for k in keys) >= 8


async def test_isolation_check_can_fail(
    make_proxy: ProxyFactory, fake: FakeRoblox, rule_paths: str
) -> None:
    """If a credentialed answer were served to someone else, the check above would see it:
    a shared (non-per-credential) entry holding cookie-a's answer is caught."""
    proxy = await make_proxy(BLOXPROXY_RULES_PATHS=rule_paths)
    fetcher = fetcher_of(proxy)
    async with proxy.get("/v1/as-viewer/156", headers=IDENTITIES["cookie-a"][0]) as resp:
        assert resp.status == 200
    # Plant cookie-a's entry under the anonymous key, as a scope bug would.
    key = next(k for k in fetcher.l1._cache if " cred=" in k)
    entry = fetcher.l1.get_nowait(key)
    assert entry is not None
    fetcher.l1.set_nowait(key.split(" cred=")[0], entry)
    with pytest.raises(AssertionError, match="got viewer"):
        async with proxy.get("/v1/as-viewer/156") as resp:
            viewer = orjson.loads(await resp.read()).get("_fakeViewer")
            assert viewer is None, f"anonymous got viewer {viewer}"


# -- secrets never leave ------------------------------------------------------------------------

ACCESS_KEYS = ("ACCESS-KEY-SECRET-1", "ACCESS-KEY-SECRET-2")
ADMIN_TOKEN = "ADMIN-TOKEN-SECRET-9"
HMAC_SECRET = "HMAC-SECRET-FOR-KEYS-7"
CLIENT_SECRETS = (
    "COOKIE-SECRET-1",
    "COOKIE-SECRET-2",
    "APIKEY-SECRET-3",
    "APIKEY-SECRET-4",
    "AUTH-SECRET-5",
    "AUTH-SECRET-6",
)
WRONG = ("WRONG-ACCESS-SECRET-0", "WRONG-ADMIN-SECRET-0")
# Named keys (auth.clients): a game key with advisory Roblox-Id checks, a Luau one.
NAMED_KEYS = ("GAME-KEY-SECRET-3", "LUAU-KEY-SECRET-4")
NAMED = (
    f"{{game: {{key: {NAMED_KEYS[0]}, places: [1818], roblox_id: advisory, weight: 4}},"
    f" luau: {{key: {NAMED_KEYS[1]}, places: [1818], answer_mode: luau}}}}"
)
OURS = (*ACCESS_KEYS, *NAMED_KEYS, ADMIN_TOKEN, HMAC_SECRET, *WRONG)  # never sent to Roblox
SECRETS = (*OURS, *CLIENT_SECRETS)


def credentials() -> list[dict[str, str]]:
    c1, c2, k3, k4, a5, a6 = CLIENT_SECRETS
    return [
        {"Cookie": f".ROBLOSECURITY={c1}"},
        {"Cookie": f"a=1; .ROBLOSECURITY={c2}; b=2"},
        {"x-api-key": k3},
        {"X-API-KEY": k4},
        {"Authorization": f"Bearer {a5}"},
        {"Authorization": a6},
        {"Cookie": f".ROBLOSECURITY={c1}", "x-api-key": k3, "Authorization": f"Bearer {a5}"},
    ]


class Seen:
    """Everything the proxy said to anyone: response statuses, headers and bodies."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, str, bytes]] = []

    async def send(self, client: Client, method: str, path: str, **kw: Any) -> int:
        async with asyncio.timeout(10):
            async with client.request(method, path, allow_redirects=False, **kw) as resp:
                body = await resp.read()
        self.answers.append((resp.status, repr(list(resp.headers.items())), body))
        return resp.status


async def test_secrets_never_appear_in_logs_metrics_cache_keys_or_answers(
    make_proxy: ProxyFactory,
    fake: FakeRoblox,
    rule_paths: str,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    clock: FakeClock,
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = await make_proxy(
        BLOXPROXY_RULES_PATHS=rule_paths,
        BLOXPROXY_AUTH_KEYS=",".join(ACCESS_KEYS),
        BLOXPROXY_AUTH_CLIENTS=NAMED,
        BLOXPROXY_SERVER_ADMIN_TOKEN=ADMIN_TOKEN,
        BLOXPROXY_CACHE_CREDENTIAL_SECRET=HMAC_SECRET,
        BLOXPROXY_CACHE_REDIS_URL=redis_url,
        BLOXPROXY_LIMITS_CLIENTS_RATE="1000",
        BLOXPROXY_LOGGING_LEVEL="DEBUG",
        BLOXPROXY_RETRIES_ATTEMPTS="1",
    )
    seen = Seen()
    access = itertools.cycle(ACCESS_KEYS)

    def h(extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"X-Bloxproxy-Key": next(access), **(extra or {})}

    # Our own refusals: no key, a wrong key, a wrong admin token, a right one.
    assert await seen.send(proxy, "GET", "/v1/users/1") == 401
    assert (
        await seen.send(proxy, "GET", "/v1/users/1", headers={"X-Bloxproxy-Key": WRONG[0]}) == 401
    )
    for token in (WRONG[1], ADMIN_TOKEN):
        await seen.send(
            proxy,
            "POST",
            "/_bloxproxy/admin/purge",
            json={"url": "/v1/users/1"},
            headers={"Authorization": f"Bearer {token}"},
        )
    await seen.send(
        proxy,
        "POST",
        "/_bloxproxy/admin/purge",
        json={"all": True},
        headers={"Authorization": ADMIN_TOKEN},
    )

    for cred in credentials():
        for path in (
            "/v1/as-viewer/156",
            "/v1/as-viewer/1",
            "/v1/forwarded/156",
            "/users/v1/users/156",
            "/v1/users/156",
            "/v1/users?ids=1,156",
            "/v1/users/abc",
            "/nosuch/v1/x",
            "/v1/as-viewer/0",
            "/_bloxproxy/nope",
        ):
            await seen.send(proxy, "GET", path, headers=h(cred))
        await seen.send(
            proxy, "POST", "/users/v1/users", headers=h(cred), json={"userIds": [1, 156]}
        )
        await seen.send(proxy, "DELETE", "/v1/users/1", headers=h(cred))  # 405
        # a cookie mutation: the CSRF dance (token remembered under an HMAC of the cookie)
        await seen.send(
            proxy,
            "POST",
            "/catalog/v1/catalog/items/details",
            headers=h(cred),
            json={"items": [{"itemType": 1, "id": 1}]},
        )
        # Roblox refusing, failing, cutting the body, asking us to slow down
        for fault in (
            Fault(status=401),
            Fault(status=403),
            Fault(status=500),
            Fault(reset_mid_body=True),
            Fault(malformed_json=True),
        ):
            fake.script("users", "/v1/users/77", [fault])
            await seen.send(proxy, "GET", "/v1/as-viewer/77", headers=h(cred))
        # a hold longer than a request may wait (limits.upstream.max_wait): 503 at once
        fake.script("users", "/v1/users/78", [Fault(status=429, retry_after="30")])
        await seen.send(proxy, "GET", "/v1/forwarded/78", headers=h(cred))
        await seen.send(proxy, "GET", "/v1/forwarded/79", headers=h(cred))  # held: 503
        clock.advance(31)
    # The named keys: from their place, another, none; answers plain and in the envelope.
    for named in NAMED_KEYS:
        for place in ({"Roblox-Id": "1818"}, {"Roblox-Id": "42"}, {}):
            for path in ("/v1/users/156", "/v1/as-viewer/156", "/users/v1/users/1", "/v1/users/x"):
                cred = credentials()[0]
                await seen.send(
                    proxy, "GET", path, headers={"X-Bloxproxy-Key": named, **place, **cred}
                )
    await seen.send(
        proxy,
        "POST",
        "/_bloxproxy/admin/purge",
        json={"all": True},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    await seen.send(proxy, "GET", "/v1/as-viewer/156", headers=h(credentials()[0]))
    assert await seen.send(proxy, "GET", "/_bloxproxy/metrics", headers=h()) == 200
    metrics = seen.answers[-1][2].decode()
    for task in [*fetcher_of(proxy)._background]:
        await task

    statuses = {status for status, _, _ in seen.answers}
    assert {200, 400, 401, 403, 404, 405, 429, 502, 503} <= statuses, statuses

    # Where secrets could end up.
    formatter = JsonFormatter()
    logs = "\n".join(formatter.format(r) for r in caplog.records)
    proxy.server.app[ACCESS_LOG].flush()
    out, err = capfd.readouterr()
    assert '"type":"access"' in err  # the access log stream was captured
    assert "bloxproxy_requests_total" in metrics
    l1 = fetcher_of(proxy).l1._cache
    held = [(k, Entry.from_row(row)) for k, row in l1.items()]
    l1_text = "\n".join(f"{k} {e.headers!r} {e.body!r}" for k, e in held)
    async with aioredis.Redis.from_url(redis_url) as direct:
        names = [k async for k in direct.scan_iter("*")]
        dumps = [await direct.dump(k) or b"" for k in names]
    assert any(b" cred=" in k for k in names)  # per-credential entries reached Redis
    places: dict[str, bytes] = {
        "logs": logs.encode(),
        "access log / stderr / stdout": (err + out).encode(),
        "metrics": metrics.encode(),
        "L1": l1_text.encode(),
        "Redis keys": b"\n".join(names),
        "Redis values": b"\n".join(dumps),
        "answers": b"\n".join(h.encode() + b + str(s).encode() for s, h, b in seen.answers),
    }
    leaks = [
        f"{secret} in {where}"
        for secret in SECRETS
        for where, text in places.items()
        if secret.encode() in text
    ]
    assert not leaks, leaks

    # Ours never go to Roblox; the clients' own do (that is the point of forwarding them).
    upstream = b"\n".join(repr(r.headers).encode() + r.body for r in fake.requests)
    assert not [s for s in OURS if s.encode() in upstream]
    assert any(s.encode() in upstream for s in CLIENT_SECRETS)
