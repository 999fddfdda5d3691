"""Protecting the proxy from its clients: access keys and client rate limits.

Through the real proxy app in front of the fake Roblox. The memory buckets run on the
injected clock (``clock.advance`` refills them); the Redis ones on a real redis-server,
shared by two proxy apps as two replicas would share it.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from bloxproxy import config as config_mod
from bloxproxy.errors import ConfigError
from bloxproxy.fake import FakeRoblox, Fault
from tests.conftest import FakeClock, ProxyFactory
from tests.redis_server import RedisServer

Client = TestClient[web.Request, web.Application]

NO_CACHE = {"BLOXPROXY_CACHE_ENABLED": "false"}
KEYS = {"BLOXPROXY_AUTH_KEYS": "k1,k2"}
USER = "/users/v1/users/1"
RATE_HEADERS = (
    "RateLimit",
    "RateLimit-Policy",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
)


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def problem(self, status: int, code: str) -> dict[str, Any]:
        assert self.status == status, self.body
        assert self.headers["Content-Type"] == "application/problem+json"
        problem: dict[str, Any] = orjson.loads(self.body)
        assert (problem["status"], problem["code"]) == (status, code), problem
        assert problem["title"] and problem["detail"]
        return problem

    def limits(self) -> tuple[str, ...]:
        return tuple(self.headers.get(name, "") for name in RATE_HEADERS)


async def call(client: Client, path: str = USER, **kwargs: Any) -> Answer:
    async with client.get(path, **kwargs) as resp:
        return Answer(resp.status, resp.headers, await resp.read())


def limits(remaining: int, reset: int, burst: int, window: int) -> tuple[str, ...]:
    """The expected (RateLimit, RateLimit-Policy, X-RateLimit-*) values."""
    return (
        f'"clients";r={remaining};t={reset}',
        f'"clients";q={burst};w={window}',
        str(burst),
        str(remaining),
        str(reset),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- access keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Bloxproxy-Key": ""},
        {"X-Bloxproxy-Key": "k3"},
        {"X-Bloxproxy-Key": "K1"},
        {"X-Bloxproxy-Key": "k1k2"},
        {"x-api-key": "k1"},  # Roblox's header, not ours
        {"Authorization": "Bearer k1"},
    ],
)
async def test_missing_or_wrong_key_is_401(
    make_proxy: ProxyFactory, fake: FakeRoblox, headers: dict[str, str]
) -> None:
    proxy = await make_proxy(**KEYS)
    problem = (await call(proxy, headers=headers)).problem(401, "unauthorized")
    assert "X-Bloxproxy-Key" in problem["detail"]
    assert fake.total == 0


@pytest.mark.parametrize("key", ["k1", "k2"])
async def test_each_configured_key_is_accepted(
    make_proxy: ProxyFactory, fake: FakeRoblox, key: str
) -> None:
    proxy = await make_proxy(**KEYS)
    assert (await call(proxy, headers={"X-Bloxproxy-Key": key})).status == 200
    assert (await call(proxy, "/v1/users/1", headers={"x-bloxproxy-key": key})).status == 200


async def test_key_header_is_not_forwarded_but_roblox_credentials_are(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**KEYS)
    headers = {"X-Bloxproxy-Key": "k1", "Authorization": "Bearer t0k", "x-api-key": "cloud"}
    assert (await call(proxy, headers=headers)).status == 200
    sent = fake.requests[-1].headers
    assert "x-bloxproxy-key" not in sent
    assert "k1" not in sent.values()
    assert (sent["authorization"], sent["x-api-key"]) == ("Bearer t0k", "cloud")


async def test_custom_key_header(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(**KEYS, BLOXPROXY_AUTH_HEADER="X-Proxy-Key")
    (await call(proxy, headers={"X-Bloxproxy-Key": "k1"})).problem(401, "unauthorized")
    assert (await call(proxy, headers={"X-Proxy-Key": "k2"})).status == 200
    assert "x-proxy-key" not in fake.requests[-1].headers


@pytest.mark.parametrize("name", ["x-api-key", "Authorization", "Cookie"])
def test_key_header_cannot_be_one_roblox_uses(name: str) -> None:
    with pytest.raises(ConfigError, match="belongs to Roblox"):
        config_mod.load(None, env={"BLOXPROXY_AUTH_HEADER": name})


async def test_an_empty_key_in_the_list_lets_nobody_in(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(BLOXPROXY_AUTH_KEYS="[k1, '']")
    (await call(proxy)).problem(401, "unauthorized")
    (await call(proxy, headers={"X-Bloxproxy-Key": ""})).problem(401, "unauthorized")
    assert (await call(proxy, headers={"X-Bloxproxy-Key": "k1"})).status == 200


async def test_key_with_raw_non_utf8_bytes_is_401_not_500(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**KEYS)
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(
        b"GET /users/v1/users/1 HTTP/1.1\r\nHost: proxy\r\nX-Bloxproxy-Key: \xff\xfek1\r\n"
        b"Connection: close\r\n\r\n"
    )
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert raw.startswith(b"HTTP/1.1 401 "), raw[:200]
    assert fake.total == 0


@pytest.mark.parametrize(
    "path", ["/_bloxproxy/healthz", "/_bloxproxy/readyz", "/_bloxproxy/nothing-here"]
)
async def test_proxy_endpoints_need_no_key(make_proxy: ProxyFactory, path: str) -> None:
    proxy = await make_proxy(**KEYS)
    answer = await call(proxy, path)
    assert answer.status in (200, 404)
    assert answer.status != 401


async def test_keys_off_by_default(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy()
    answer = await call(proxy)
    assert answer.status == 200
    assert answer.limits() == ("",) * 5  # no client limit either


# -- client limits in memory -----------------------------------------------------------------

LIMITED = {
    **NO_CACHE,
    "BLOXPROXY_LIMITS_CLIENTS_RATE": "1",
    "BLOXPROXY_LIMITS_CLIENTS_BURST": "3",
}


async def test_burst_then_429_with_both_header_families(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(**LIMITED)
    answers = [await call(proxy) for _ in range(3)]
    assert [a.status for a in answers] == [200] * 3
    assert [a.limits() for a in answers] == [
        limits(2, 1, 3, 3),
        limits(1, 2, 3, 3),
        limits(0, 3, 3, 3),
    ]

    limited = await call(proxy)
    problem = limited.problem(429, "rate_limited")
    assert (problem["retry_after"], limited.headers["Retry-After"]) == (1, "1")
    assert limited.limits() == limits(0, 3, 3, 3)
    assert fake.count("users", "/v1/users/1") == 3  # refused before the pipeline

    clock.advance(1)
    again = await call(proxy)
    assert (again.status, again.limits()) == (200, limits(0, 3, 3, 3))
    assert (await call(proxy)).status == 429
    clock.advance(3)  # full again
    assert [(await call(proxy)).status for _ in range(4)] == [200, 200, 200, 429]


async def test_default_burst_is_the_rate_rounded_up(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(**NO_CACHE, BLOXPROXY_LIMITS_CLIENTS_RATE="2.5")
    statuses = [(await call(proxy)).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_proxy_errors_count_and_carry_the_headers(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**LIMITED)
    missing = await call(proxy, "/nosuchservice/v1/x")
    missing.problem(404, "unknown_service")
    assert missing.limits() == limits(2, 1, 3, 3)
    assert (await call(proxy)).limits()[0] == '"clients";r=1;t=2'


async def test_proxy_endpoints_are_not_limited(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(**LIMITED)
    for _ in range(10):
        answer = await call(proxy, "/_bloxproxy/healthz")
        assert answer.status == 200
        assert "RateLimit" not in answer.headers
    assert (await call(proxy)).limits()[0] == '"clients";r=2;t=1'


async def test_limits_are_per_access_key(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(**LIMITED, **KEYS)
    one, two = {"X-Bloxproxy-Key": "k1"}, {"X-Bloxproxy-Key": "k2"}
    assert [(await call(proxy, headers=one)).status for _ in range(4)] == [200] * 3 + [429]
    assert [(await call(proxy, headers=two)).status for _ in range(4)] == [200] * 3 + [429]
    # a wrong key is refused before it can spend anybody's budget
    for _ in range(5):
        (await call(proxy, headers={"X-Bloxproxy-Key": "nope"})).problem(401, "unauthorized")


async def test_limits_are_per_ip_without_keys(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(**LIMITED)
    # every request comes from 127.0.0.1; X-Forwarded-For is not trusted by default
    statuses = [
        (await call(proxy, headers={"X-Forwarded-For": f"10.0.0.{i}"})).status for i in range(4)
    ]
    assert statuses == [200] * 3 + [429]


async def test_forwarded_for_is_honoured_when_trusted(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(**LIMITED, BLOXPROXY_LIMITS_CLIENTS_FORWARDED_FOR_HOPS="1")

    async def status(xff: str) -> int:
        return (await call(proxy, headers={"X-Forwarded-For": xff})).status

    assert [await status("10.0.0.1") for _ in range(4)] == [200] * 3 + [429]
    assert [await status("10.0.0.2") for _ in range(3)] == [200] * 3
    # the entry our trusted proxy appended counts, not what the client wrote before it
    assert await status("1.2.3.4, 10.0.0.1") == 429
    assert await status("10.0.0.1, 10.0.0.3") == 200
    # without the header: the peer
    assert [(await call(proxy)).status for _ in range(4)] == [200] * 3 + [429]


async def test_passthrough_keeps_roblox_rate_limit_headers(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**LIMITED)
    fake.script("users", "/v1/users/1", [Fault(headers={"x-ratelimit-remaining": "7"})])
    answer = await call(proxy)
    assert answer.status == 200
    assert answer.headers.getall("X-RateLimit-Remaining") == ["7"]
    assert "X-RateLimit-Limit" not in answer.headers  # no mix of theirs and ours
    assert answer.headers["RateLimit"] == '"clients";r=2;t=1'

    roblox = {
        "x-ratelimit-limit": "1000",
        "x-ratelimit-remaining": "998",
        "x-ratelimit-reset": "30",
    }
    fake.script("users", "/v1/users/1", [Fault(headers=roblox)])
    answer = await call(proxy)
    assert [answer.headers.getall(name) for name in roblox] == [[v] for v in roblox.values()]
    assert answer.headers["RateLimit-Policy"] == '"clients";q=3;w=3'

    plain = await call(proxy)  # Roblox sent none: ours
    assert plain.limits() == limits(0, 3, 3, 3)


async def test_clean_routes_carry_our_headers(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(**LIMITED)
    fake.script("users", "/v1/users/1", [Fault(headers={"x-ratelimit-remaining": "7"})])
    answer = await call(proxy, "/v1/users/1")
    assert (answer.status, answer.limits()) == (200, limits(2, 1, 3, 3))


# -- client limits in Redis ------------------------------------------------------------------


def redis_limited(redis_url: str) -> dict[str, str]:
    return {
        **NO_CACHE,
        "BLOXPROXY_CACHE_REDIS_URL": redis_url,
        "BLOXPROXY_LIMITS_CLIENTS_RATE": "0.1",  # nothing refills during a test
        "BLOXPROXY_LIMITS_CLIENTS_BURST": "4",
    }


async def test_two_replicas_share_one_budget(
    make_proxy: ProxyFactory, fake: FakeRoblox, redis_client: aioredis.Redis, redis_url: str
) -> None:
    env = redis_limited(redis_url)
    one, two = await make_proxy(**env), await make_proxy(**env)
    answers = await asyncio.gather(*(call((one, two)[i % 2]) for i in range(10)))
    assert sorted(a.status for a in answers) == [200] * 4 + [429] * 6
    assert fake.count("users", "/v1/users/1") == 4
    assert sorted(a.headers["X-RateLimit-Remaining"] for a in answers if a.status == 200) == [
        "0",
        "1",
        "2",
        "3",
    ]
    refused = next(a for a in answers if a.status == 429)
    refused.problem(429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 10
    assert await redis_client.keys("*") == [b"bloxproxy:rl:client:ip:127.0.0.1"]


async def test_shared_budget_per_key_is_stored_hashed(
    make_proxy: ProxyFactory, redis_client: aioredis.Redis, redis_url: str
) -> None:
    env = {**redis_limited(redis_url), "BLOXPROXY_AUTH_KEYS": "super-secret-key"}
    one, two = await make_proxy(**env), await make_proxy(**env)
    key = {"X-Bloxproxy-Key": "super-secret-key"}
    statuses = [(await call((one, two)[i % 2], headers=key)).status for i in range(6)]
    assert statuses == [200] * 4 + [429] * 2
    names = await redis_client.keys("*")
    assert len(names) == 1 and names[0].startswith(b"bloxproxy:rl:client:key:")
    assert b"super-secret-key" not in names[0]


async def test_redis_down_falls_back_to_memory(
    make_proxy: ProxyFactory, fake: FakeRoblox, redis_server: RedisServer, redis_url: str
) -> None:
    proxy = await make_proxy(**redis_limited(redis_url))
    assert [(await call(proxy)).status for _ in range(2)] == [200, 200]  # Redis: 2 left
    redis_server.kill()
    # Requests keep working, still limited: a fresh in-memory bucket of 4
    assert [(await call(proxy)).status for _ in range(5)] == [200] * 4 + [429]


async def test_redis_unreachable_from_the_start(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(**redis_limited(f"redis://127.0.0.1:{free_port()}/0"))
    assert [(await call(proxy)).status for _ in range(5)] == [200] * 4 + [429]


async def test_redis_is_used_again_after_it_returns(
    make_proxy: ProxyFactory,
    redis_server: RedisServer,
    redis_url: str,
    clock: FakeClock,
) -> None:
    proxy = await make_proxy(**redis_limited(redis_url))
    redis_server.kill()
    assert (await call(proxy)).status == 200  # memory
    redis_server.restart()
    assert (await call(proxy)).status == 200  # memory still: Redis is skipped for a while
    async with aioredis.Redis.from_url(redis_url) as client:
        assert await client.keys("*") == []
        clock.advance(5)
        assert (await call(proxy)).status == 200
        assert await client.keys("*") == [b"bloxproxy:rl:client:ip:127.0.0.1"]
