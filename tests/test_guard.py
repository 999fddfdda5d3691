"""The upstream guard: retries, 429 holds, the circuit breaker, the per-scope limiter, the
shared Redis budget and the CSRF handshake.

Pure parts (``parse_retry_after``, ``full_jitter``, ``Breaker``, ``RetryBudget``) are
tables; everything else goes through the real proxy app in front of the fake Roblox with
scripted faults. Backoff sleeps, holds and waits for budget run on the injected clock; only
per-attempt timeouts take real time, kept to tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bloxproxy.appkeys import GUARD
from bloxproxy.errors import Unavailable
from bloxproxy.fake import FakeRoblox, Fault
from bloxproxy.upstream.breaker import Breaker
from bloxproxy.upstream.retry import RetryBudget, full_jitter, parse_retry_after
from tests.conftest import FakeClock, ProxyFactory

Client = TestClient[web.Request, web.Application]

NOW = 1_800_000_000.0
NO_CACHE = {"BLOXPROXY_CACHE_ENABLED": "false"}
ONE_ATTEMPT = {"BLOXPROXY_RETRIES_ATTEMPTS": "1"}
FAST = {"BLOXPROXY_LIMITS_UPSTREAM_RATE": "10000"}  # the limiter out of the way
COOKIE_A = "_|WARNING:-DO-NOT-SHARE-THIS.--Sharing-this-will-allow-someone-to-log-in|_AAAA"
COOKIE_B = "_|WARNING:-DO-NOT-SHARE-THIS.--Sharing-this-will-allow-someone-to-log-in|_BBBB"
DISPLAY_NAME = "/v1/users/1/display-names"
CATALOG_DETAILS = "/v1/catalog/items/details"


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)

    def problem(self, status: int, code: str) -> dict[str, Any]:
        assert self.status == status, self.body
        assert self.headers["Content-Type"] == "application/problem+json"
        problem: dict[str, Any] = orjson.loads(self.body)
        assert (problem["status"], problem["code"]) == (status, code), problem
        return problem


async def call(client: Client, path: str, method: str = "GET", **kwargs: Any) -> Answer:
    async with client.request(method, path, **kwargs) as resp:
        return Answer(resp.status, resp.headers, await resp.read())


def http_date(when: float) -> str:
    return email.utils.formatdate(when, usegmt=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        (" 3 ", 3.0),
        ("0", 0.0),
        ("120", 120.0),
        (http_date(NOW + 30), 30.0),
        (http_date(NOW - 30), 0.0),  # a date in the past: retry now, never negative
        (http_date(NOW), 0.0),
        ("Fri, 15 Jan 2027 08:00:30 GMT", 30.0),  # NOW is 2027-01-15 08:00:00 UTC
        ("Fri, 15 Jan 2027 08:00:30 -0000", 30.0),  # "-0000": still GMT, not local time
        (None, None),
        ("", None),
        ("   ", None),
        ("soon", None),
        ("-1", None),
        ("1.5", None),  # delta-seconds is an integer (RFC 9110 §10.2.3)
        ("²", None),  # str.isdigit() says yes, float() says no
        ("٣", None),
        ("Mon, 99 Foo 2025 00:00:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == (None if expected is None else pytest.approx(expected))


@pytest.fixture
def local_zone_not_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "EST+5")  # POSIX form: no tzdata needed
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_zone_not_utc")
def test_retry_after_date_is_gmt_whatever_the_local_zone() -> None:
    assert parse_retry_after("Fri, 15 Jan 2027 08:00:30 -0000", NOW) == 30.0
    assert parse_retry_after("Fri, 15 Jan 2027 08:00:30 GMT", NOW) == 30.0


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (1, 1.0, 0.1),
        (2, 1.0, 0.2),
        (3, 1.0, 0.4),
        (4, 1.0, 0.8),
        (5, 1.0, 1.6),
        (6, 1.0, 2.0),  # capped
        (10, 1.0, 2.0),
        (3, 0.5, 0.2),
        (6, 0.25, 0.5),
        (1, 0.0, 0.0),  # full jitter reaches zero
        (10, 0.0, 0.0),
    ],
)
def test_full_jitter_with_a_fixed_rand(attempt: int, rand: float, expected: float) -> None:
    assert full_jitter(attempt, 0.1, 2.0, lambda: rand) == pytest.approx(expected)


@pytest.mark.parametrize("attempt", range(1, 11))
def test_full_jitter_stays_within_the_capped_step(attempt: int) -> None:
    step = min(2.0, 0.1 * 2 ** (attempt - 1))
    values = [i / 50 for i in range(50)]
    delays = [full_jitter(attempt, 0.1, 2.0, lambda v=v: v) for v in values]
    assert all(0.0 <= d < step + 1e-12 for d in delays)
    assert delays == sorted(delays) and delays[-1] == pytest.approx(step * 0.98)


def test_unavailable_rounds_retry_after_up_to_whole_seconds() -> None:
    for seconds, header in [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (29.5, "30")]:
        exc = Unavailable("paused", "upstream_paused", seconds)
        assert (exc.status, exc.code, exc.headers) == (
            503,
            "upstream_paused",
            {"Retry-After": header},
        )
        assert exc.extra == {"retry_after": int(header)}


def test_breaker_opens_after_consecutive_failures_only() -> None:
    b = Breaker(threshold=3, open_for=30.0)
    for _ in range(2):
        b.before(NOW, "users")
        b.failure(NOW, "users")
    b.before(NOW, "users")
    b.success()  # a success in between: the count starts over
    for _ in range(2):
        b.before(NOW, "users")
        b.failure(NOW, "users")
    assert b.state == "closed"
    b.before(NOW, "users")
    b.failure(NOW, "users")
    assert (b.state, b.opened_until) == ("open", NOW + 30.0)


def test_breaker_open_half_open_probe_closed() -> None:
    b = Breaker(threshold=1, open_for=30.0)
    b.failure(NOW, "users")
    with pytest.raises(Unavailable) as opened:
        b.before(NOW + 10, "users")
    assert (opened.value.code, opened.value.headers["Retry-After"]) == ("circuit_open", "20")
    with pytest.raises(Unavailable):
        b.before(NOW + 29.9, "users")
    b.before(NOW + 30, "users")  # the probe
    assert (b.state, b.probing) == ("half_open", True)
    with pytest.raises(Unavailable) as waiting:  # one probe at a time
        b.before(NOW + 30, "users")
    assert waiting.value.headers["Retry-After"] == "1"
    b.success()
    assert (b.state, b.failures, b.probing) == ("closed", 0, False)
    b.before(NOW + 31, "users")


def test_breaker_failed_probe_opens_again() -> None:
    b = Breaker(threshold=5, open_for=30.0)
    for _ in range(5):
        b.failure(NOW, "users")
    b.before(NOW + 30, "users")
    b.failure(NOW + 30, "users")  # one failure is enough while half-open
    assert (b.state, b.opened_until, b.probing) == ("open", NOW + 60, False)
    with pytest.raises(Unavailable):
        b.before(NOW + 59, "users")


def test_breaker_neutral_outcome_frees_the_probe_slot() -> None:
    b = Breaker(threshold=1, open_for=30.0)
    b.failure(NOW, "users")
    b.before(NOW + 30, "users")
    b.neutral()  # e.g. a 429 or a cancelled probe: says nothing about health
    assert (b.state, b.probing) == ("half_open", False)
    b.before(NOW + 30, "users")  # the next request is the probe
    assert b.probing


def test_retry_budget_arithmetic() -> None:
    b = RetryBudget(ratio=0.25, reserve=2.0)
    assert b.tokens == 2.0  # the reserve is there from the start
    assert [b.spend(), b.spend(), b.spend()] == [True, True, False]
    for _ in range(3):
        b.earn()
    assert not b.spend()  # 0.75 of a retry is not one
    b.earn()
    assert b.spend() and b.tokens == 0.0
    for _ in range(100):
        b.earn()
    assert b.tokens == 2.0  # capped at the reserve


def test_retry_budget_default_share() -> None:
    b = RetryBudget(ratio=0.2, reserve=0.0)
    granted = 0
    for _ in range(100):  # 100 first attempts, each wanting 2 retries
        b.earn()
        granted += b.spend() + b.spend()
    assert granted == 20


def test_zero_budget_never_retries() -> None:
    b = RetryBudget(ratio=0.0, reserve=0.0)
    b.earn()
    assert not b.spend()


# -- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/users/v1/users/1", "/v1/users/1"])
async def test_503_503_200_is_one_request_three_upstream_calls(
    make_proxy: ProxyFactory, fake: FakeRoblox, path: str
) -> None:
    proxy = await make_proxy(**NO_CACHE)
    fake.script("users", "/v1/users/1", [Fault(status=503), Fault(status=503)])
    answer = await call(proxy, path)
    assert answer.status == 200
    assert answer.json()["id"] == 1
    assert fake.count("users", "/v1/users/1") == 3
    assert proxy.server.app[GUARD].services["users"].retries == 2


async def test_retries_stop_after_the_configured_attempts(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**NO_CACHE, BLOXPROXY_RETRIES_ATTEMPTS="3")
    fake.script("users", "/v1/users/1", [Fault(status=503)] * 5)
    answer = await call(proxy, "/users/v1/users/1")
    assert answer.status == 503
    assert fake.count("users", "/v1/users/1") == 3


@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_retried_statuses(make_proxy: ProxyFactory, fake: FakeRoblox, status: int) -> None:
    proxy = await make_proxy(**NO_CACHE)
    fake.script("users", "/v1/users/1", [Fault(status=status, retry_after="0")])
    assert (await call(proxy, "/users/v1/users/1")).status == 200
    assert fake.count("users", "/v1/users/1") == 2


@pytest.mark.parametrize("status", [400, 403, 404, 500, 501])
async def test_other_statuses_are_not_retried(
    make_proxy: ProxyFactory, fake: FakeRoblox, status: int
) -> None:
    proxy = await make_proxy(**NO_CACHE)
    fake.script("users", "/v1/users/1", [Fault(status=status)])
    assert (await call(proxy, "/users/v1/users/1")).status == status
    assert fake.count("users", "/v1/users/1") == 1


async def test_head_is_retried(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(**NO_CACHE)
    # A passthrough HEAD is asked upstream as the GET it describes (it shares the GET's
    # entry): a safe read, retried like one.
    fake.script("users", "/v1/users/1", [Fault(status=503)], method="GET")
    answer = await call(proxy, "/users/v1/users/1", "HEAD")
    assert (answer.status, answer.body) == (200, b"")
    assert fake.count("users", "/v1/users/1", "GET") == 2
    assert fake.count("users", "/v1/users/1", "HEAD") == 0


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("fault", [Fault(status=503), Fault(status=429), Fault(drop=True)])
async def test_passthrough_mutations_are_never_retried(
    make_proxy: ProxyFactory, fake: FakeRoblox, method: str, fault: Fault
) -> None:
    proxy = await make_proxy(**NO_CACHE)
    fake.script("users", "/v1/users", [fault, fault, fault])
    answer = await call(proxy, "/users/v1/users", method, json={"userIds": [1]})
    assert answer.status in (429, 502, 503)
    assert fake.count("users", "/v1/users", method) == 1
    assert proxy.server.app[GUARD].services["users"].retries == 0


async def test_cookie_mutation_is_never_retried(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(**NO_CACHE)
    fake.script("users", DISPLAY_NAME, [Fault(status=503), Fault(status=503)])
    answer = await call(
        proxy,
        "/users" + DISPLAY_NAME,
        "PATCH",
        json={"newDisplayName": "Builder"},
        headers={"Cookie": f".ROBLOSECURITY={COOKIE_A}"},
    )
    assert answer.status == 503
    assert fake.count("users", DISPLAY_NAME) == 1


@pytest.mark.parametrize(
    ("path", "upstream"),
    [("/v1/users?ids=1", "/v1/users"), ("/v1/users/by-username/Roblox", "/v1/usernames/users")],
)
async def test_rule_marked_safe_read_post_is_retried(
    make_proxy: ProxyFactory, fake: FakeRoblox, path: str, upstream: str
) -> None:
    proxy = await make_proxy(**NO_CACHE)
    fake.script("users", upstream, [Fault(status=503), Fault(drop=True)], method="POST")
    answer = await call(proxy, path)
    assert answer.status == 200, answer.body
    assert fake.count("users", upstream, "POST") == 3


async def test_timeouts_are_retried(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(**NO_CACHE, BLOXPROXY_UPSTREAM_TIMEOUT="100ms")
    fake.script("users", "/v1/users/1", [Fault(delay=2.0)])
    answer = await call(proxy, "/users/v1/users/1")
    assert answer.status == 200
    assert fake.count("users", "/v1/users/1") == 2


async def test_timeout_of_the_last_attempt_is_504(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**NO_CACHE, **ONE_ATTEMPT, BLOXPROXY_UPSTREAM_TIMEOUT="50ms")
    fake.script("users", "/v1/users/1", [Fault(delay=2.0)])
    (await call(proxy, "/users/v1/users/1")).problem(504, "upstream_timeout")
    assert fake.count("users", "/v1/users/1") == 1


async def test_dropped_connections_are_retried(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(**NO_CACHE)
    fake.script("users", "/v1/users/1", [Fault(drop=True), Fault(drop=True)])
    assert (await call(proxy, "/users/v1/users/1")).status == 200
    assert fake.count("users", "/v1/users/1") == 3


async def test_dropped_connections_cost_no_more_than_the_attempts(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**NO_CACHE, BLOXPROXY_RETRIES_ATTEMPTS="3")
    fake.script("users", "/v1/users/1", [Fault(drop=True)] * 6)
    (await call(proxy, "/users/v1/users/1")).problem(502, "upstream_unreachable")
    assert fake.count("users", "/v1/users/1") == 3


@pytest.mark.parametrize(("deadline", "calls", "status"), [("1500ms", 2, 503), ("15s", 3, 200)])
async def test_the_deadline_covers_all_attempts(
    make_proxy: ProxyFactory, fake: FakeRoblox, deadline: str, calls: int, status: int
) -> None:
    proxy = await make_proxy(**NO_CACHE, BLOXPROXY_RETRIES_DEADLINE=deadline)
    wait = Fault(status=503, retry_after="1")
    fake.script("users", "/v1/users/1", [wait, wait])
    # attempt 1 at t=0, attempt 2 at t=1; a third at t=2 would end past a 1.5 s deadline
    assert (await call(proxy, "/users/v1/users/1")).status == status
    assert fake.count("users", "/v1/users/1") == calls


async def test_retry_waits_for_retry_after_when_longer_than_backoff(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(**NO_CACHE)  # backoff steps of at most 0.1 s, then 0.2 s
    fake.script("users", "/v1/users/1", [Fault(status=503, retry_after="3")])
    start = clock.now
    assert (await call(proxy, "/users/v1/users/1")).status == 200
    assert clock.now - start == pytest.approx(3.0)


async def test_retry_after_as_http_date(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(**NO_CACHE)
    fake.script("users", "/v1/users/1", [Fault(status=503, retry_after=http_date(NOW + 4))])
    start = clock.now
    assert (await call(proxy, "/users/v1/users/1")).status == 200
    assert clock.now - start == pytest.approx(4.0)


async def test_backoff_is_capped(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(
        **NO_CACHE,
        **FAST,  # a budget starts paced: its slots would add to the backoff
        BLOXPROXY_RETRIES_BACKOFF_BASE="10s",
        BLOXPROXY_RETRIES_BACKOFF_MAX="50ms",
    )
    fake.script("users", "/v1/users/1", [Fault(status=503), Fault(status=503)])
    start = clock.now
    assert (await call(proxy, "/users/v1/users/1")).status == 200
    assert 0.0 <= clock.now - start <= 0.1


async def test_retry_budget_caps_extra_calls_under_a_failure_storm(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(
        **NO_CACHE,
        **FAST,
        BLOXPROXY_LIMITS_BREAKER_FAILURES="1000",
        BLOXPROXY_RETRIES_BUDGET="0.25",
        BLOXPROXY_RETRIES_BUDGET_RESERVE="0",
    )
    fake.script("users", "/v1/users/1", [Fault(status=503)] * 500)
    for _ in range(20):
        assert (await call(proxy, "/users/v1/users/1")).status == 503
    # 20 first attempts earn 5 retries; 3 attempts each would have been 60 calls
    assert fake.count("users", "/v1/users/1") == 25


async def test_default_retry_budget_is_a_fifth_plus_the_reserve(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**NO_CACHE, **FAST, BLOXPROXY_LIMITS_BREAKER_FAILURES="1000")
    fake.script("users", "/v1/users/1", [Fault(status=503)] * 500)
    for _ in range(50):
        assert (await call(proxy, "/users/v1/users/1")).status == 503
    calls = fake.count("users", "/v1/users/1")
    assert 50 + 10 <= calls <= 50 + 10 + 50 * 0.2  # not 150


# -- 429: the scope's budget holds, requests wait -------------------------------------------
# (The learning itself, fair shares and the line are tests/test_budget.py, test_fairshare.py
# and test_limiter.py.) A 429 no longer pauses a service with fast 503s: a request waits for
# the hold to end when it can within its deadline, and is refused at once when it cannot.


def users_budget(proxy: Client) -> Any:
    return next(r for r in proxy.server.app[GUARD].limiter.rows() if r.scope == "users")


async def test_429_with_retry_after_holds_the_scope_and_requests_wait(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(**NO_CACHE, **ONE_ATTEMPT)
    fake.script("users", "/v1/users/1000002", [Fault(status=429, retry_after="2")])
    first = await call(proxy, "/users/v1/users/1000002")
    assert (first.status, first.headers["Retry-After"]) == (429, "2")  # Roblox's own answer
    assert users_budget(proxy).hold == pytest.approx(2.0)

    start = clock.now
    assert (await call(proxy, "/games/v1/games?universeIds=1")).status == 200  # others go on
    assert clock.now == start

    # a client that can wait no longer than 1 s is told at once, and Roblox is spared
    hurried = await call(proxy, "/users/v1/users/1000003", headers={"X-Bloxproxy-Max-Wait": "1s"})
    assert hurried.problem(503, "upstream_paused")["retry_after"] == 2
    assert hurried.headers["Retry-After"] == "2"
    assert fake.count("users", "/v1/users/1000003") == 0
    assert clock.now == start

    waited = await call(proxy, "/users/v1/users/1000003")  # the default bound: 10 s
    assert waited.status == 200
    assert clock.now - start == pytest.approx(2.0)  # it waited for the hold, in line
    assert fake.count("users", "/v1/users/1000003") == 1
    assert "x-bloxproxy-max-wait" not in fake.requests[-1].headers  # ours: never forwarded


async def test_repeated_429s_without_retry_after_hold_longer_each_time(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(**NO_CACHE, **ONE_ATTEMPT, BLOXPROXY_LIMITS_UPSTREAM_PAUSE_BASE="1s")
    fake.script("users", "/v1/users/1000002", [Fault(status=429)] * 3)
    assert (await call(proxy, "/users/v1/users/1000002")).status == 429
    # the first 429 lowers the rate (20 → 10/s) and holds nothing
    assert (users_budget(proxy).rate, users_budget(proxy).hold) == (10.0, 0.0)
    assert (await call(proxy, "/users/v1/users/1000002")).status == 429  # (paced: 0.1 s)
    # the second in a row (no clean second between): 5/s, and a hold of pause_base
    assert (users_budget(proxy).rate, users_budget(proxy).hold) == (5.0, 1.0)
    start = clock.now
    assert (await call(proxy, "/users/v1/users/1000002")).status == 429  # waited for it
    assert clock.now - start == pytest.approx(1.0)
    assert (users_budget(proxy).rate, users_budget(proxy).hold) == (2.5, 2.0)  # doubled
    start = clock.now
    assert (await call(proxy, "/users/v1/users/1000002")).status == 200
    assert clock.now - start == pytest.approx(2.0)
    assert fake.count("users", "/v1/users/1000002") == 4
    assert users_budget(proxy).refusals == 0


async def test_429_with_retry_after_date_holds_until_then(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(**NO_CACHE, **ONE_ATTEMPT)
    fake.script("users", "/v1/users/1000002", [Fault(status=429, retry_after=http_date(NOW + 30))])
    assert (await call(proxy, "/users/v1/users/1000002")).status == 429
    clock.advance(9)  # 21 s left: more than a request may wait (limits.upstream.max_wait)
    refused = await call(proxy, "/users/v1/users/1000002")
    assert refused.problem(503, "upstream_paused")["retry_after"] == 21
    assert users_budget(proxy).refusals == 1
    clock.advance(16)  # 5 s left: within the bound, so it waits
    start = clock.now
    assert (await call(proxy, "/users/v1/users/1000002")).status == 200
    assert clock.now - start == pytest.approx(5.0)


async def test_429_is_retried_after_the_pause(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(**NO_CACHE)
    fake.script("users", "/v1/users/1000002", [Fault(status=429, retry_after="2")])
    start = clock.now
    assert (await call(proxy, "/users/v1/users/1000002")).status == 200
    assert clock.now - start == pytest.approx(2.0)
    assert fake.count("users", "/v1/users/1000002") == 2


async def test_pause_serves_stale_else_503(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(**ONE_ATTEMPT)
    assert (await call(proxy, "/v1/users/1")).status == 200  # users.get: ttl 10m, swr 1m
    clock.advance(12 * 60)  # past ttl and stale-while-revalidate, within stale-if-error
    fake.script("users", "/v1/users/1000002", [Fault(status=429, retry_after="60")])
    limited = await call(proxy, "/v1/users/1000002")
    assert (limited.status, limited.headers["Retry-After"]) == (429, "60")

    stale = await call(proxy, "/v1/users/1")
    assert (stale.status, stale.headers["X-Cache"]) == (200, "STALE")
    assert stale.json()["id"] == 1
    assert fake.count("users", "/v1/users/1") == 1  # the pause kept it from Roblox

    paused = await call(proxy, "/v1/users/1000003")
    paused.problem(503, "upstream_paused")
    assert paused.headers["Retry-After"] == "60"
    assert fake.count("users", "/v1/users/1000003") == 0

    clock.advance(60)
    fresh = await call(proxy, "/v1/users/1")
    assert (fresh.status, fresh.headers["X-Cache"]) == (200, "MISS")
    assert fake.count("users", "/v1/users/1") == 2


# -- circuit breaker -------------------------------------------------------------------------

BREAKER = {**ONE_ATTEMPT, "BLOXPROXY_LIMITS_BREAKER_FAILURES": "3"}


async def open_users_circuit(proxy: Client, fake: FakeRoblox) -> None:
    for uid in (1_000_002, 1_000_003, 1_000_004):
        fake.script("users", f"/v1/users/{uid}", [Fault(status=503)])
        assert (await call(proxy, f"/v1/users/{uid}")).status == 503


async def test_breaker_opens_serves_stale_half_opens_and_closes(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(**BREAKER)
    assert (await call(proxy, "/v1/users/1")).status == 200
    clock.advance(12 * 60)
    await open_users_circuit(proxy, fake)

    stale = await call(proxy, "/v1/users/1")
    assert (stale.status, stale.headers["X-Cache"]) == (200, "STALE")
    refused = await call(proxy, "/v1/users/1000005")
    refused.problem(503, "circuit_open")
    assert refused.headers["Retry-After"] == "30"
    assert fake.count("users", "/v1/users/1") == 1
    assert fake.count("users", "/v1/users/1000005") == 0
    assert (await call(proxy, "/games/v1/games?universeIds=1")).status == 200  # other services

    clock.advance(30)  # half-open: one probe goes through, succeeds, closes the circuit
    assert (await call(proxy, "/v1/users/1000005")).status == 200
    assert (await call(proxy, "/v1/users/1000006")).status == 200
    assert fake.count("users", "/v1/users/1000005") == fake.count("users", "/v1/users/1000006") == 1
    assert proxy.server.app[GUARD].services["users"].breaker.state == "closed"


async def test_breaker_counts_only_consecutive_failures(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**NO_CACHE, **BREAKER)
    for uid in (1_000_002, 1_000_003, 1_000_004, 1_000_005):
        if uid != 1_000_004:
            fake.script("users", f"/v1/users/{uid}", [Fault(status=503)])
        await call(proxy, f"/v1/users/{uid}")  # 503, 503, 200, 503
    assert (await call(proxy, "/v1/users/1000006")).status == 200


async def test_failed_probe_opens_the_circuit_again(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(**NO_CACHE, **BREAKER)
    await open_users_circuit(proxy, fake)
    clock.advance(30)
    fake.script("users", "/v1/users/1000005", [Fault(status=503)])
    assert (await call(proxy, "/v1/users/1000005")).status == 503  # the probe, answered by Roblox
    (await call(proxy, "/v1/users/1000006")).problem(503, "circuit_open")
    assert fake.count("users", "/v1/users/1000006") == 0
    clock.advance(30)
    assert (await call(proxy, "/v1/users/1000006")).status == 200


async def test_timeouts_and_drops_count_as_failures(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**NO_CACHE, **BREAKER, BLOXPROXY_UPSTREAM_TIMEOUT="50ms")
    fake.script("users", "/v1/users/1000002", [Fault(drop=True)])
    fake.script("users", "/v1/users/1000003", [Fault(delay=2.0)])
    fake.script("users", "/v1/users/1000004", [Fault(status=502)])
    for uid in (1_000_002, 1_000_003, 1_000_004):
        assert (await call(proxy, f"/v1/users/{uid}")).status in (502, 504)
    (await call(proxy, "/v1/users/1000005")).problem(503, "circuit_open")


async def test_half_open_lets_one_probe_through(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(**NO_CACHE, **BREAKER)
    await open_users_circuit(proxy, fake)
    clock.advance(30)
    fake.latency = 0.1  # the probe is still out when the others arrive
    uids = range(1_000_005, 1_000_009)
    answers = await asyncio.gather(*(call(proxy, f"/v1/users/{uid}") for uid in uids))
    assert sorted(a.status for a in answers) == [200, 503, 503, 503]
    for answer in answers:
        if answer.status == 503:
            answer.problem(503, "circuit_open")
    assert sum(fake.count("users", f"/v1/users/{uid}") for uid in uids) == 1
    fake.latency = 0.0
    assert (await call(proxy, "/v1/users/1000009")).status == 200  # closed again


# -- the per-service limiter -----------------------------------------------------------------

TIGHT = {"BLOXPROXY_LIMITS_UPSTREAM_RATE": "1", "BLOXPROXY_LIMITS_UPSTREAM_MAX_WAIT": "50ms"}


async def test_limiter_bound_answers_503_busy_with_retry_after(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**NO_CACHE, **TIGHT)
    answers = await asyncio.gather(call(proxy, "/v1/users/1"), call(proxy, "/v1/users/1000002"))
    assert sorted(a.status for a in answers) == [200, 503]
    busy = next(a for a in answers if a.status == 503)
    busy.problem(503, "upstream_busy")
    assert busy.headers["Retry-After"] == "1"
    assert fake.count("users", "/v1/users/1") + fake.count("users", "/v1/users/1000002") == 1
    assert proxy.server.app[GUARD].services["users"].rejected == 1


async def test_limiter_retry_after_covers_a_slot_below_one_per_second(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(
        **NO_CACHE,
        BLOXPROXY_LIMITS_UPSTREAM_RATE="0.5",  # one call every 2 s
        BLOXPROXY_LIMITS_UPSTREAM_MAX_WAIT="50ms",
    )
    answers = await asyncio.gather(call(proxy, "/v1/users/1"), call(proxy, "/v1/users/2"))
    busy = next(a for a in answers if a.status == 503)
    assert busy.problem(503, "upstream_busy")["retry_after"] == 2
    assert busy.headers["Retry-After"] == "2"


async def test_limiter_waits_within_the_bound(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(
        **NO_CACHE,
        BLOXPROXY_LIMITS_UPSTREAM_RATE="20",  # a 50 ms slot per request after the burst
        BLOXPROXY_LIMITS_UPSTREAM_MAX_WAIT="2s",
    )
    answers = await asyncio.gather(
        *(call(proxy, f"/v1/users/{1_000_000 + i}") for i in range(1, 24))
    )
    assert [a.status for a in answers] == [200] * 23
    assert proxy.server.app[GUARD].services["users"].rejected == 0


async def test_rates_per_service_with_a_default(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(
        **NO_CACHE,
        BLOXPROXY_LIMITS_UPSTREAM_RATES="{users: 1}",
        BLOXPROXY_LIMITS_UPSTREAM_MAX_WAIT="50ms",
    )
    users = await asyncio.gather(call(proxy, "/v1/users/1"), call(proxy, "/v1/users/1000002"))
    games = await asyncio.gather(
        call(proxy, "/games/v1/games?universeIds=1"), call(proxy, "/games/v1/games?universeIds=2")
    )
    assert sorted(a.status for a in users) == [200, 503]
    assert [a.status for a in games] == [200, 200]


async def test_retries_pass_the_limiter(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(**NO_CACHE, **TIGHT)
    fake.script("users", "/v1/users/1", [Fault(status=503)])
    # The first attempt takes the only token; the retry must wait a second for the next.
    (await call(proxy, "/users/v1/users/1")).problem(503, "upstream_busy")
    assert fake.count("users", "/v1/users/1") == 1
    st = proxy.server.app[GUARD].services["users"]
    assert (st.retries, st.rejected) == (1, 1)


async def test_csrf_resend_passes_the_limiter(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(**NO_CACHE, **TIGHT)
    answer = await call(
        proxy,
        "/users" + DISPLAY_NAME,
        "PATCH",
        json={"newDisplayName": "Builder"},
        headers={"Cookie": f".ROBLOSECURITY={COOKIE_A}"},
    )
    answer.problem(503, "upstream_busy")
    assert fake.count("users", DISPLAY_NAME) == 1


# -- shared upstream budget in Redis ---------------------------------------------------------


async def test_shared_upstream_budget_across_two_proxies(
    make_proxy: ProxyFactory, fake: FakeRoblox, redis_url: str
) -> None:
    env = {
        **NO_CACHE,
        "BLOXPROXY_CACHE_REDIS_URL": redis_url,
        "BLOXPROXY_LIMITS_UPSTREAM_SHARED": "true",
        # one slot every 0.5 s; a budget starts paced (its burst is earned by a quiet second)
        "BLOXPROXY_LIMITS_UPSTREAM_RATE": "2",
        "BLOXPROXY_LIMITS_UPSTREAM_MAX_WAIT": "10ms",
    }
    one, two = await make_proxy(**env), await make_proxy(**env)
    answers = await asyncio.gather(
        *(call((one, two)[i % 2], f"/v1/users/{1_000_001 + i}") for i in range(8))
    )
    assert sorted(a.status for a in answers) == [200] + [503] * 7
    for busy in (a for a in answers if a.status == 503):
        busy.problem(503, "upstream_busy")
        assert busy.headers["Retry-After"] == "1"
    assert sum(fake.count("users", f"/v1/users/{1_000_000 + i}") for i in range(1, 9)) == 1
    # games has its own budget
    assert (await call(two, "/games/v1/games?universeIds=1")).status == 200


async def test_local_proxies_without_sharing_each_get_the_rate(
    make_proxy: ProxyFactory, fake: FakeRoblox, redis_url: str
) -> None:
    env = {
        **NO_CACHE,
        "BLOXPROXY_CACHE_REDIS_URL": redis_url,
        "BLOXPROXY_LIMITS_UPSTREAM_RATE": "2",
        "BLOXPROXY_LIMITS_UPSTREAM_MAX_WAIT": "10ms",
    }
    one, two = await make_proxy(**env), await make_proxy(**env)
    answers = await asyncio.gather(
        *(call((one, two)[i % 2], f"/v1/users/{1_000_001 + i}") for i in range(8))
    )
    assert sorted(a.status for a in answers) == [200] * 2 + [503] * 6  # one slot each


async def test_shared_budget_falls_back_to_the_local_limiter_without_redis(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(
        **NO_CACHE,
        **TIGHT,
        BLOXPROXY_CACHE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        BLOXPROXY_LIMITS_UPSTREAM_SHARED="true",
    )
    answers = await asyncio.gather(call(proxy, "/v1/users/1"), call(proxy, "/v1/users/1000002"))
    assert sorted(a.status for a in answers) == [200, 503]  # still limited, locally


# -- CSRF ------------------------------------------------------------------------------------


async def patch_display_name(
    proxy: Client, cookie: str | None, token: str | None = None, name: str = "Builder"
) -> Answer:
    headers = {}
    if cookie is not None:
        headers["Cookie"] = f".ROBLOSECURITY={cookie}"
    if token is not None:
        headers["X-CSRF-TOKEN"] = token
    return await call(
        proxy, "/users" + DISPLAY_NAME, "PATCH", json={"newDisplayName": name}, headers=headers
    )


def csrf_sent(fake: FakeRoblox, path: str = DISPLAY_NAME) -> list[str | None]:
    """The X-CSRF-TOKEN of each request the fake got on ``path``, in order."""
    return [r.headers.get("x-csrf-token") for r in fake.requests if r.path == path]


async def test_csrf_transparent_resend_then_token_up_front(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy()
    token = fake.csrf_token(COOKIE_A)
    first = await patch_display_name(proxy, COOKIE_A)
    assert (first.status, first.json()) == (200, {"_fakeViewer": first.json()["_fakeViewer"]})
    assert csrf_sent(fake) == [None, token]  # 403 "Token Validation Failed", then 200
    assert [orjson.loads(r.body) for r in fake.requests] == [{"newDisplayName": "Builder"}] * 2

    second = await patch_display_name(proxy, COOKIE_A, name="Another")
    assert second.status == 200
    assert csrf_sent(fake) == [None, token, token]  # one request, token at once


async def test_csrf_tokens_are_per_cookie(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy()
    assert (await patch_display_name(proxy, COOKIE_A)).status == 200
    assert (await patch_display_name(proxy, COOKIE_B)).status == 200
    token_a, token_b = fake.csrf_token(COOKIE_A), fake.csrf_token(COOKIE_B)
    assert token_a != token_b
    assert csrf_sent(fake) == [None, token_a, None, token_b]
    assert (await patch_display_name(proxy, COOKIE_B)).status == 200
    assert csrf_sent(fake)[-1] == token_b
    tokens = proxy.server.app[GUARD].csrf_tokens
    assert len(tokens) == 2
    assert not any(COOKIE_A in key or COOKIE_B in key for key in tokens)  # HMAC keys


async def test_expired_token_is_renewed_once(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy()
    assert (await patch_display_name(proxy, COOKIE_A)).status == 200
    old = fake.csrf_token(COOKIE_A)
    fake.rotate_csrf()
    new = fake.csrf_token(COOKIE_A)
    assert (await patch_display_name(proxy, COOKIE_A)).status == 200
    assert csrf_sent(fake) == [None, old, old, new]


async def test_stored_token_expires_after_30_minutes(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy()
    assert (await patch_display_name(proxy, COOKIE_A)).status == 200
    clock.advance(30 * 60)
    assert (await patch_display_name(proxy, COOKIE_A)).status == 200
    assert csrf_sent(fake)[2] is None  # forgotten: the dance again


async def test_client_with_its_own_valid_token_still_works(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy()
    token = fake.csrf_token(COOKIE_A)
    assert (await patch_display_name(proxy, COOKIE_A, token)).status == 200
    assert csrf_sent(fake) == [token]


async def test_client_with_a_stale_token_gets_it_renewed(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy()
    assert (await patch_display_name(proxy, COOKIE_A, "stale")).status == 200
    assert csrf_sent(fake) == ["stale", fake.csrf_token(COOKIE_A)]


async def test_a_token_refused_twice_is_answered_not_looped(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy()
    token = fake.csrf_token(COOKIE_A)
    refusal = Fault(status=403, message="Token Validation Failed", headers={"x-csrf-token": token})
    fake.script("users", DISPLAY_NAME, [refusal, refusal, refusal])
    answer = await patch_display_name(proxy, COOKIE_A)
    assert (answer.status, answer.headers["x-csrf-token"]) == (403, token)
    assert csrf_sent(fake) == [None, token]


async def test_anonymous_catalog_post_lets_the_client_do_the_dance(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy()
    body = {"items": [{"itemType": 1, "id": 1}]}
    refused = await call(proxy, "/catalog" + CATALOG_DETAILS, "POST", json=body)
    token = refused.headers["x-csrf-token"]  # Roblox's header reaches the client
    assert (refused.status, token) == (403, fake.csrf_token(None))
    done = await call(
        proxy, "/catalog" + CATALOG_DETAILS, "POST", json=body, headers={"X-CSRF-TOKEN": token}
    )
    assert done.status == 200
    assert csrf_sent(fake, CATALOG_DETAILS) == [None, token]
    assert len(proxy.server.app[GUARD].csrf_tokens) == 0  # no credential, nothing stored


async def test_empty_roblosecurity_cookie_is_not_a_credential(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy()
    answer = await patch_display_name(proxy, "")
    assert answer.status == 401  # the fake: not logged in; no CSRF dance for nobody
    assert csrf_sent(fake) == [None]
    refused = await call(
        proxy,
        "/catalog" + CATALOG_DETAILS,
        "POST",
        json={"items": []},
        headers={"Cookie": ".ROBLOSECURITY=; other=1"},
    )
    assert refused.status == 403
    assert fake.count("catalog", CATALOG_DETAILS) == 1
    assert len(proxy.server.app[GUARD].csrf_tokens) == 0


async def test_csrf_is_not_applied_to_reads(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(**NO_CACHE)
    cookie = {"Cookie": f".ROBLOSECURITY={COOKIE_A}"}
    assert (await call(proxy, "/users/v1/users/authenticated", headers=cookie)).status == 200
    assert (await call(proxy, "/v1/users?ids=1", headers=cookie)).status == 200
    assert len(proxy.server.app[GUARD].csrf_tokens) == 0
