"""Faults under load: the upstream and Redis misbehave, every client still gets an answer.

Everything is real and on 127.0.0.1: the proxy app (the one ``serve`` runs) on an aiohttp
test server, the fake Roblox on another, a real ``redis-server`` process (killed, stopped,
restarted for real), and for the redirect test a *forbidden* TCP listener that counts
connections. Each test drives many concurrent requests (``hammer`` / ``Load``), each bounded
by ``asyncio.timeout``, so a hang fails the test instead of stalling it. Each test says in
its docstring what "nothing lost" means for that fault, and asserts exactly that.

Single-request versions of several faults live in ``test_errors.py`` (status mapping) and
``test_guard.py`` (retries, pause, breaker); these add concurrency, stale serving and
recovery. SIGHUP and SIGTERM under load are ``test_serve.py``'s (subprocess tests).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDictProxy

from bloxproxy.appkeys import GUARD
from bloxproxy.fake import FakeRoblox, Fault, create_fake_app
from tests.conftest import FakeClock, ProxyFactory, fetcher_of
from tests.redis_server import RedisServer

Client = TestClient[web.Request, web.Application]

PROBLEM = "application/problem+json"
ANSWER_WITHIN = 8.0  # no single request may take longer, whatever the fault
FAST = {"BLOXPROXY_LIMITS_UPSTREAM_RATE": "100000"}  # these tests are not about the limiter
# Cut bodies are attempt failures the breaker counts; tests of many cuts at once are not
# about the breaker (tests/test_guard.py is).
NO_BREAKER = {"BLOXPROXY_LIMITS_BREAKER_FAILURES": "1000"}
USER_TTL = 600.0  # users.get: ttl 10m, swr 1m, sie 1h
PAST_SWR = USER_TTL + 60 + 1  # only stale-if-error is left


@dataclass(frozen=True)
class Outcome:
    path: str
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    seconds: float

    @property
    def x_cache(self) -> str:
        return self.headers.get("X-Cache", "")

    def problem(self) -> dict[str, Any]:
        assert self.headers.get("Content-Type") == PROBLEM, self
        data: dict[str, Any] = orjson.loads(self.body)
        assert data["status"] == self.status, data
        assert data["request_id"] == self.headers["X-Request-ID"], data
        assert isinstance(data["detail"], str) and data["detail"], data
        return data

    def __repr__(self) -> str:
        return f"<{self.path} {self.status} {self.x_cache or '-'} {self.body[:160]!r}>"


async def request(client: Client, path: str, method: str = "GET", **kw: Any) -> Outcome:
    start = time.perf_counter()
    async with asyncio.timeout(ANSWER_WITHIN):  # a hang is a failure, not a stall
        async with client.request(method, path, allow_redirects=False, **kw) as resp:
            body = await resp.read()
    return Outcome(path, resp.status, resp.headers, body, time.perf_counter() - start)


async def hammer(
    client: Client, paths: Iterable[str], concurrency: int = 64, **kw: Any
) -> list[Outcome]:
    """Send every path at once (at most ``concurrency`` in flight); all answers, in order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(path: str) -> Outcome:
        async with gate:
            return await request(client, path, **kw)

    return await asyncio.gather(*(one(p) for p in paths))


def expect(outcomes: Sequence[Outcome], allowed: Callable[[Outcome], bool]) -> Counter[str]:
    """Zero 500s from the proxy (a passthrough answer, ``X-Cache`` set, is Roblox's own),
    nothing outside ``allowed``; returns a tally for further assertions."""
    tally: Counter[str] = Counter()
    for o in outcomes:
        assert o.status != 500 or o.x_cache, o
        assert allowed(o), o
        tally[f"{o.status} {o.x_cache or o.problem()['code']}"] += 1
    return tally


def problem_with(
    *codes: str, statuses: Iterable[int] = (502, 503, 504)
) -> Callable[[Outcome], bool]:
    """An answer from the proxy itself: problem+json with one of ``codes``; a 503 or 429 of
    ours says when to come back (``Retry-After``)."""
    wanted = set(statuses)

    def check(o: Outcome) -> bool:
        if o.status not in wanted or o.headers.get("Content-Type") != PROBLEM:
            return False
        code = o.problem()["code"]
        if code in ("circuit_open", "upstream_paused", "upstream_busy"):
            assert int(o.headers["Retry-After"]) >= 1, o
        return code in codes

    return check


def ok(o: Outcome) -> bool:
    return o.status == 200


def either(*checks: Callable[[Outcome], bool]) -> Callable[[Outcome], bool]:
    return lambda o: any(c(o) for c in checks)


FRESH_IDS = itertools.count(1_000_001)  # the fake's synthetic users: each one a new key


def fresh_users(n: int, prefix: str = "/v1/users/") -> list[str]:
    return [f"{prefix}{next(FRESH_IDS)}" for _ in range(n)]


def script_each(fake: FakeRoblox, paths: Iterable[str], faults: list[Fault]) -> None:
    """Script ``faults`` for the upstream path behind each clean ``/v1/users/{id}`` path."""
    for path in paths:
        fake.script("users", "/v1/users/" + path.rsplit("/", 1)[1], faults)


async def settle(client: Client) -> None:
    fetcher = fetcher_of(client)
    for _ in range(20):
        tasks = fetcher.tasks()
        if not tasks:
            return
        await asyncio.gather(*tasks, return_exceptions=True)


# -- upstream: slow, refused, reset, 5xx, 429, bad bodies, too large, redirects --------------


async def test_slow_upstream_past_the_deadline(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    """Nothing lost means: every request is answered within its bound (two 300 ms attempts
    plus slack, never the fake's 1.5 s), as 504 ``upstream_timeout`` or — once the breaker
    has seen enough timeouts — 503 ``circuit_open`` with Retry-After; cached routes keep
    answering 200 HIT at cache speed meanwhile; zero 500s; and after the circuit's open
    time the same paths answer 200 again without restarting anything."""
    proxy = await make_proxy(
        BLOXPROXY_UPSTREAM_TIMEOUT="300ms", BLOXPROXY_RETRIES_ATTEMPTS="2", **FAST
    )
    warm = ["/v1/users/156", "/v1/users/1", "/users/v1/users/156"]
    assert [o.status for o in await hammer(proxy, warm)] == [200] * 3
    slow = fresh_users(24)
    script_each(fake, slow, [Fault(delay=1.5)] * 2)

    outcomes = await hammer(proxy, [*slow, *warm * 10])
    tally = expect(
        outcomes,
        either(
            problem_with("upstream_timeout", "circuit_open"),
            lambda o: o.status == 200 and o.x_cache == "HIT" and o.path in warm,
        ),
    )
    assert tally["200 HIT"] == 30
    assert tally["504 upstream_timeout"] >= 5  # the breaker opens after 5 failed calls
    for o in outcomes:
        assert o.seconds < (2.5 if o.path in slow else 1.0), o

    await asyncio.sleep(1.6)  # let the fake's sleeping handlers finish
    script_each(fake, slow, [])  # the open circuit spared Roblox some of the scripted calls
    clock = fetcher_of(proxy).clock
    assert isinstance(clock, FakeClock)
    clock.advance(31)  # past the circuit's open time (30 s); cached entries stay fresh
    assert (await request(proxy, slow[0])).status == 200  # the half-open probe closes it
    recovered = await hammer(proxy, slow[1:])
    assert expect(recovered, ok) == Counter({"200 MISS": len(slow) - 1})


async def test_connection_refused(make_proxy: ProxyFactory) -> None:
    """Upstream at a closed port from the start. Nothing lost means: every request — clean,
    passthrough, batch POST — gets a problem+json 502 ``upstream_unreachable`` (or 503
    ``circuit_open`` with Retry-After once the breaker opens), fast; zero 500s; the proxy's
    own endpoints keep answering 200."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # bound, never listening: connections are refused
        proxy = await make_proxy(
            BLOXPROXY_UPSTREAM_BASE_URL=f"http://127.0.0.1:{closed}/{{service}}", **FAST
        )
        paths = [
            *fresh_users(20),
            *fresh_users(20, "/users/v1/users/"),
            "/v1/users?ids=1,156",
            "/v1/groups/7",
            "/games/v1/games?universeIds=1",
        ] * 2
        outcomes = await hammer(proxy, paths)
        tally = expect(outcomes, problem_with("upstream_unreachable", "circuit_open"))
        assert tally["502 upstream_unreachable"] >= 5, tally
        assert all(o.seconds < 2.0 for o in outcomes)
        health = await request(proxy, "/_bloxproxy/healthz")
        assert health.status == 200


async def test_roblox_going_away_serves_stale_and_recovers_on_the_same_port(
    make_proxy: ProxyFactory, aiohttp_server: Any, clock: FakeClock
) -> None:
    """The upstream process disappears mid-run (its port refuses connections), then comes
    back on the same port. Nothing lost means: every path that was cached answers 200 STALE
    with exactly the body it had; uncached paths get a problem+json 502/503; zero 500s; and
    after the upstream returns, new requests are 200 MISS from it — the proxy was never
    restarted."""
    upstream = await aiohttp_server(create_fake_app())
    port = upstream.port
    proxy = await make_proxy(
        BLOXPROXY_UPSTREAM_BASE_URL=f"http://127.0.0.1:{port}/{{service}}", **FAST
    )
    cached = ["/v1/users/156", "/v1/users/1", *fresh_users(8)]
    before = {o.path: o.body for o in await hammer(proxy, cached)}
    clock.advance(PAST_SWR)
    await upstream.close()

    outcomes = await hammer(proxy, [*cached * 5, *fresh_users(20)])
    tally = expect(
        outcomes,
        either(
            lambda o: o.status == 200 and o.x_cache == "STALE" and o.body == before[o.path],
            problem_with("upstream_unreachable", "circuit_open"),
        ),
    )
    assert tally["200 STALE"] == len(cached) * 5, tally

    await aiohttp_server(create_fake_app(), port=port)  # a new upstream process, same port
    clock.advance(31)  # past the circuit's open time: one probe, then closed
    assert (await request(proxy, cached[2])).status == 200  # the probe
    recovered = await hammer(proxy, fresh_users(10))
    assert expect(recovered, ok) == Counter({"200 MISS": 10})


async def test_reset_mid_body(make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock) -> None:
    """Roblox sends the headers and half a body, then resets the connection — on many paths
    at once, while other paths are fine. Nothing lost means: each cut answer becomes a
    problem+json 502 (``upstream_unreachable``) for every waiter of that call, a path with a
    stale entry answers 200 STALE instead, healthy paths answer 200; zero 500s; and the
    pool is not poisoned: the same paths answer 200 right after. (One attempt only: with
    retries the cut is retried, see the next test.)"""
    proxy = await make_proxy(**FAST, **NO_BREAKER, BLOXPROXY_RETRIES_ATTEMPTS="1")
    stale = fresh_users(4)
    await hammer(proxy, stale)
    clock.advance(PAST_SWR)
    cut = fresh_users(16)
    script_each(fake, [*cut, *stale], [Fault(reset_mid_body=True)])
    healthy = fresh_users(16, "/users/v1/users/")

    outcomes = await hammer(proxy, [*cut * 4, *stale * 4, *healthy])
    tally = expect(
        outcomes,
        either(
            problem_with("upstream_unreachable", "upstream_bad_response", statuses=[502]),
            lambda o: (
                o.status == 200
                and (o.path in healthy or (o.path in stale and o.x_cache == "STALE"))
            ),
        ),
    )
    assert tally["200 STALE"] == len(stale) * 4, tally
    assert sum(n for k, n in tally.items() if k.startswith("502")) == len(cut) * 4, tally

    again = await hammer(proxy, [*cut, *healthy])
    assert all(o.status == 200 for o in again), again


async def test_reset_mid_body_is_retried(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    """The body is part of the attempt: a connection cut mid-body on a safe read is retried.
    Nothing lost means: every client request gets 200, and each cut path cost exactly two
    upstream calls (the cut one and its retry) however many clients waited for it."""
    proxy = await make_proxy(**FAST, **NO_BREAKER)
    cut = fresh_users(8)
    script_each(fake, cut, [Fault(reset_mid_body=True)])
    outcomes = await hammer(proxy, cut * 4)
    assert all(o.status == 200 for o in outcomes), outcomes
    for path in cut:
        assert fake.count("users", "/v1/users/" + path.rsplit("/", 1)[1]) == 2, path


async def test_5xx_burst_with_a_cached_route_serving_stale(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    """A burst of 503s and 500s on every users path. Nothing lost means: paths with a stale
    entry answer 200 STALE with the old body (also once the breaker is open); uncached clean
    paths answer problem+json 502/503 (Roblox's 503 stays 503, a 500 becomes 502, an open
    circuit is 503 with Retry-After); passthrough returns Roblox's own 5xx as sent (not
    ours, so not problem+json, and never cached); zero 500s from the proxy; after the burst
    and the circuit's open time, every path answers fresh 200s."""
    proxy = await make_proxy(**FAST)
    cached = fresh_users(10)
    before = {o.path: o.body for o in await hammer(proxy, cached)}
    clock.advance(PAST_SWR)
    uncached = fresh_users(10)
    script_each(fake, [*cached, *uncached], [Fault(status=503)] * 3)  # 3 attempts = 1 call
    passthrough = fresh_users(5, "/users/v1/users/")
    script_each(fake, passthrough, [Fault(status=500)])

    outcomes = await hammer(proxy, [*cached * 10, *uncached * 3, *passthrough])
    tally = expect(
        outcomes,
        either(
            lambda o: o.status == 200 and o.x_cache == "STALE" and o.body == before[o.path],
            lambda o: o.path in uncached and problem_with("upstream_error", "circuit_open")(o),
            lambda o: (
                o.path in passthrough
                and o.status == 500
                and o.x_cache == "MISS"
                and orjson.loads(o.body)["errors"][0]["message"] == "InternalServerError"
            ),
            # the users circuit is open for passthrough too (one breaker per service)
            lambda o: o.path in passthrough and problem_with("circuit_open", statuses=[503])(o),
        ),
    )
    assert tally["200 STALE"] == 100, tally
    assert proxy.server.app[GUARD].services["users"].breaker.state == "open"

    clock.advance(31)
    script_each(fake, [*cached, *uncached, *passthrough], [])  # spared by the open circuit
    await request(proxy, uncached[0])  # the half-open probe
    recovered = await hammer(proxy, [*cached, *uncached, *passthrough])
    tally = expect(recovered, ok)
    assert sum(tally.values()) == len(recovered)
    assert all(o.x_cache in ("MISS", "HIT", "COALESCED") for o in recovered)


@pytest.mark.parametrize("retry_after", [None, "30"], ids=["without-retry-after", "retry-after-30"])
async def test_429_storm(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock, retry_after: str | None
) -> None:
    """Roblox answers 429 to a first wave of concurrent requests (once each). Nothing lost
    means: that wave is answered — 200 when a retry got through, else Roblox's 429 (the
    retry budget was spent) — and the users budget learned a lower rate; a second wave sent
    while the scope is slowed or holding *waits in line* and is answered 200, zero 503s,
    with cached paths and other services answered at once. Only when Roblox asks for a
    hold longer than a request may wait (``Retry-After: 30`` > ``limits.upstream.max_wait``)
    is an uncached request refused at once — 503 ``upstream_paused`` with Retry-After, zero
    of them reaching Roblox — and after ``clock.advance`` past it the same paths answer 200.
    Zero 500s."""
    proxy = await make_proxy(**FAST)
    warm = "/v1/users/156"
    assert (await request(proxy, warm)).status == 200
    first = fresh_users(20)
    script_each(fake, first, [Fault(status=429, retry_after=retry_after)])
    long_hold = retry_after == "30"

    wave = await hammer(proxy, first)
    refused = problem_with("upstream_paused", statuses=[503]) if long_hold else lambda o: False
    expect(wave, either(ok, problem_with("upstream_error", statuses=[429]), refused))
    users = next(r for r in proxy.server.app[GUARD].limiter.rows() if r.scope == "users")
    assert users.rate < users.ceiling  # learned: 429s lower the rate

    calls = fake.total
    second = fresh_users(60)
    storm = await hammer(proxy, [*second, warm, warm, "/games/v1/games?universeIds=1"])

    def cached_or_other(o: Outcome) -> bool:
        return o.status == 200 and (o.path == warm or o.path.startswith("/games/"))

    if not long_hold:  # absorbed by queueing: every one answered, none refused
        tally = expect(storm, ok)
        assert tally["200 MISS"] == len(second) + 1, tally
        assert fake.total - calls == len(second) + 1
        script_each(fake, first, [])
        return
    expect(storm, either(problem_with("upstream_paused", statuses=[503]), cached_or_other))
    assert sum(o.status == 503 for o in storm) == len(second)
    assert fake.total - calls == 1  # only the games call: users holds
    wait = max(int(o.headers["Retry-After"]) for o in storm if o.status == 503)
    assert 20 <= wait <= 30

    clock.advance(wait)
    script_each(fake, first, [])  # 429s left over where the hold spared Roblox a retry
    recovered = await hammer(proxy, [*first, *second])
    assert expect(recovered, ok)["200 MISS"] == len(first) + len(second)


@pytest.mark.parametrize(
    "fault",
    [
        Fault(malformed_json=True),
        Fault(body="<html>Roblox is down</html>", content_type="text/html"),
        Fault(body='{"id": 1, "name": "Roblox"}', content_type="text/plain"),
        Fault(body="", content_type="application/json"),
    ],
    ids=["malformed-json", "html", "json-as-text", "empty"],
)
async def test_unusable_bodies_on_a_clean_route(
    make_proxy: ProxyFactory, fake: FakeRoblox, fault: Fault
) -> None:
    """Roblox answers 200 with a body the clean route cannot use, on many paths at once,
    while a passthrough client asks for the same upstream URL (same cache key). Nothing
    lost means: every clean request gets a problem+json 502 ``upstream_bad_response`` (no
    traceback, no HTML in it); passthrough gets the body as Roblox sent it; the unusable
    answer does not stay cached for the clean route: a second round is 200 from upstream;
    zero 500s."""
    proxy = await make_proxy(**FAST)
    paths = fresh_users(12)
    script_each(fake, paths, [fault])
    outcomes = await hammer(proxy, [p for p in paths for _ in range(4)])
    tally = expect(outcomes, problem_with("upstream_bad_response", statuses=[502]))
    assert tally["502 upstream_bad_response"] == len(paths) * 4
    assert not any(b"<html>" in o.body for o in outcomes)

    # Passthrough takes Roblox's answer as is; the clean route on the same key refuses it
    # (and drops the entry), then recovers.
    shared = fresh_users(6)
    script_each(fake, shared, [fault])
    raw = await hammer(proxy, ["/users" + p for p in shared])
    assert all(o.status == 200 and o.x_cache == "MISS" for o in raw), raw
    clean = await hammer(proxy, shared)
    expect(clean, problem_with("upstream_bad_response", statuses=[502]))

    again = await hammer(proxy, [*paths, *shared])
    assert expect(again, ok)["200 MISS"] == len(paths) + len(shared)


async def test_body_larger_than_the_limit(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    """Roblox answers bodies of 200 KB against a 16 KiB limit on many paths at once.
    Nothing lost means: each such request — clean or passthrough — gets a problem+json 502
    ``upstream_too_large``; requests for normal-sized answers meanwhile are 200; the
    connections are not poisoned (a second round is 200); zero 500s."""
    proxy = await make_proxy(BLOXPROXY_UPSTREAM_MAX_RESPONSE_SIZE="16KiB", **FAST)
    big = fresh_users(10)
    big_pt = fresh_users(10, "/users/v1/users/")
    script_each(fake, [*big, *big_pt], [Fault(body_size=200_000)])
    normal = fresh_users(20)
    outcomes = await hammer(proxy, [*big, *big_pt, *normal])
    tally = expect(
        outcomes,
        either(
            problem_with("upstream_too_large", statuses=[502]),
            lambda o: o.status == 200 and o.path in normal,
        ),
    )
    assert tally["502 upstream_too_large"] == 20, tally
    again = await hammer(proxy, [*big, *big_pt])
    assert all(o.status == 200 for o in again), again


class Forbidden:
    """A TCP listener on another 127.0.0.1 port; a redirect there must never be followed."""

    def __init__(self) -> None:
        self.accepts = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Forbidden:
        async def on_connect(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepts += 1
            writer.close()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/stolen?x=1"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_redirect_to_another_host_is_not_followed(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    """Roblox answers 301/302/303/307/308 pointing at another host (a real listener).
    Nothing lost means: the listener sees zero connections; a clean route answers
    problem+json 502 naming the redirect (no Location passed on); passthrough returns the
    redirect as Roblox sent it, unfollowed and not cached (the next call asks Roblox);
    zero 500s."""
    proxy = await make_proxy(**FAST)
    async with Forbidden() as forbidden:
        clean, passthrough = [], []
        for code in (301, 302, 303, 307, 308):
            for path in fresh_users(4):
                clean.append(path)
                fake.script(
                    "users",
                    "/v1/users/" + path.rsplit("/", 1)[1],
                    [Fault(status=code, redirect_to=forbidden.url)],
                )
            for path in fresh_users(4, "/users/v1/users/"):
                passthrough.append((path, code))
                fake.script(
                    "users",
                    "/v1/users/" + path.rsplit("/", 1)[1],
                    [Fault(status=code, redirect_to=forbidden.url)] * 2,
                )
        outcomes = await hammer(proxy, [*clean, *(p for p, _ in passthrough)])
        expected_code = dict(passthrough)
        expect(
            outcomes,
            either(
                lambda o: (
                    o.path in clean
                    and problem_with("upstream_error", statuses=[502])(o)
                    and "Location" not in o.headers
                    and 300 <= o.problem()["upstream_status"] < 400
                ),
                lambda o: (
                    o.status == expected_code.get(o.path)
                    and o.headers["Location"] == forbidden.url
                    and o.x_cache == "MISS"
                ),
            ),
        )
        again = await hammer(proxy, [p for p, _ in passthrough])
        assert all(o.x_cache == "MISS" and 300 <= o.status < 400 for o in again), again
        await asyncio.sleep(0.05)
        assert forbidden.accepts == 0


# -- Redis: absent at start, killed under load, hung, restarted ---------------------------------


@dataclass
class Load:
    """Steady concurrent traffic against one or more replicas until stopped.

    Each worker loops over a mix of L1 hits, fresh misses (clean and passthrough, so L2
    reads and writes keep coming) and another service, every request bounded by
    ``asyncio.timeout``. ``outcomes`` keeps (start time, outcome) of every request."""

    clients: Sequence[Client]
    workers: int = 16
    outcomes: list[tuple[float, Outcome]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def paths(self) -> Iterable[str]:
        for i in itertools.count():
            yield (
                "/v1/users/156",
                "/users/v1/users/1",
                fresh_users(1)[0],
                fresh_users(1, "/users/v1/users/")[0],
                "/v1/groups/7",
            )[i % 5]

    async def _worker(self, n: int) -> None:
        client = self.clients[n % len(self.clients)]
        for path in self.paths():
            if self._stop.is_set():
                return
            start = time.monotonic()
            self.outcomes.append((start, await request(client, path)))
            await asyncio.sleep(0.005)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(n)) for n in range(self.workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def during(self, start: float, end: float) -> list[Outcome]:
        return [o for t, o in self.outcomes if start <= t < end]

    def assert_nothing_lost(self, bound: float) -> None:
        failed = [o for _, o in self.outcomes if o.status != 200]
        assert not failed, failed[:10]
        slowest = max(o.seconds for _, o in self.outcomes)
        assert slowest < bound, slowest


async def redis_keys(url: str, pattern: str = "bloxproxy:GET *") -> set[bytes]:
    async with aioredis.Redis.from_url(url) as direct:
        return {k async for k in direct.scan_iter(pattern)}


async def l2_is_used(a: Client, b: Client, url: str, within: float = 8.0) -> None:
    """A miss on replica ``a`` reaches Redis and is a HIT on replica ``b`` (from L2)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        path = fresh_users(1, "/users/v1/users/")[0]
        assert (await request(a, path)).x_cache == "MISS"
        await settle(a)
        if (await request(b, path)).x_cache == "HIT":
            key = f"bloxproxy:GET users/v1/users/{path.rsplit('/', 1)[1]}".encode()
            assert key in await redis_keys(url)
            return
        assert loop.time() < deadline, "L2 never came back"
        await asyncio.sleep(0.1)


async def replicas(make_proxy: ProxyFactory, url: str) -> tuple[Client, Client]:
    env = {"BLOXPROXY_CACHE_REDIS_URL": url, **FAST}
    return await make_proxy(**env), await make_proxy(**env)


@pytest.fixture
def own_redis() -> Any:
    """A private redis-server, for tests that kill or hang it. pytest cannot mark a fixture,
    so each test using it carries ``@pytest.mark.redis`` itself."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.redis  # own_redis is a redis-server of its own
async def test_redis_absent_at_start_then_started(
    make_proxy: ProxyFactory, own_redis: RedisServer
) -> None:
    """Two replicas start while their Redis is down; Redis comes up under load. Nothing
    lost means: every client request during the whole run is 200 (from upstream or L1),
    none slower than 2 s; once Redis is up, L2 is used again (a miss on one replica is a
    hit on the other) without restarting either proxy."""
    own_redis.stop()  # its port now refuses connections
    a, b = await replicas(make_proxy, own_redis.url)
    load = Load([a, b])
    load.start()
    await asyncio.sleep(1.0)
    down_until = time.monotonic()
    own_redis.restart()  # same port
    await asyncio.sleep(1.5)
    await load.stop()
    load.assert_nothing_lost(bound=2.0)
    assert len(load.during(0, down_until)) >= 100  # load really ran while Redis was absent
    await l2_is_used(a, b, own_redis.url)
    for client in (a, b):
        shared = fetcher_of(client).shared
        assert shared is not None
        await asyncio.wait_for(shared.listening.wait(), 10.0)


@pytest.mark.redis  # own_redis is a redis-server of its own
async def test_redis_killed_under_load_then_restarted(
    make_proxy: ProxyFactory, own_redis: RedisServer
) -> None:
    """Redis is SIGKILLed while two replicas serve steady traffic, then restarted (empty,
    same port). Nothing lost means: every request before, during and after is 200, none
    slower than 2 s; while Redis is away cached answers still come from L1; afterwards L2 is
    used again (miss on one replica, hit on the other) with no proxy restart."""
    a, b = await replicas(make_proxy, own_redis.url)
    await l2_is_used(a, b, own_redis.url)
    load = Load([a, b])
    load.start()
    await asyncio.sleep(0.7)
    killed = time.monotonic()
    own_redis.kill()
    await asyncio.sleep(1.2)
    restarted = time.monotonic()
    own_redis.restart()
    await asyncio.sleep(1.5)
    await load.stop()
    load.assert_nothing_lost(bound=2.0)
    outage = load.during(killed, restarted)
    assert len(outage) >= 100
    assert any(o.x_cache == "HIT" for o in outage)  # L1 kept serving
    await l2_is_used(a, b, own_redis.url)


@pytest.mark.redis  # own_redis is a redis-server of its own
async def test_redis_hung_under_load(make_proxy: ProxyFactory, own_redis: RedisServer) -> None:
    """Redis stops answering (SIGSTOP: connections stay open, no replies come) under load,
    then resumes. Nothing lost means: every request is 200, and none waits much longer
    than one Redis command timeout (250 ms): under 2 s even for the first ones of the
    incident; and L2 is used again within seconds of SIGCONT, without restarting anything
    (the many requests that failed together were one incident, not a reason to back off
    for the 30 s cap — as they were until SharedCache doubled its back-off once per
    incident)."""
    a, b = await replicas(make_proxy, own_redis.url)
    await l2_is_used(a, b, own_redis.url)
    proc = own_redis._proc
    assert proc is not None
    load = Load([a, b])
    load.start()
    await asyncio.sleep(0.5)
    hung = time.monotonic()
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(1.5)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    resumed = time.monotonic()
    await asyncio.sleep(1.0)
    await load.stop()
    load.assert_nothing_lost(bound=2.0)
    assert len(load.during(hung, resumed)) >= 50
    await l2_is_used(a, b, own_redis.url, within=4.0)


def test_outcome_checks_can_fail() -> None:
    """The helpers above are not vacuous: a 500, or an answer outside ``allowed``, fails."""
    from multidict import CIMultiDict

    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": PROBLEM, "X-Request-ID": "r"}))
    body = orjson.dumps({"status": 500, "request_id": "r", "detail": "x", "code": "internal"})
    with pytest.raises(AssertionError):
        expect([Outcome("/x", 500, headers, body, 0.0)], lambda o: True)
    with pytest.raises(AssertionError):
        expect([Outcome("/x", 502, headers, body, 0.0)], ok)
