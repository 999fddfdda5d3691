"""The upstream limiter (bloxproxy/upstream/limiter.py): requests wait in line for a slot
of their scope's learned budget, in their client's fair share, until their deadline.

Against the fake Roblox on 127.0.0.1, through the real proxy app, on injected clocks:
``FakeClock`` (a sleep passes at once), or ``SteppedClock``, whose sleepers wait until the
test wakes them one by one (so the test decides when each slot comes, and sees who gets
it). The learning is tested against the fake's per-IP limit on the fake clock too
(``create_fake_app(clock=..., ip_limit=...)``), legacy 429s without ``Retry-After`` and
Open Cloud's ``x-ratelimit-*`` alike.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bloxproxy import config as config_mod
from bloxproxy.app import create_app
from bloxproxy.appkeys import GUARD, UPSTREAM
from bloxproxy.errors import Unavailable
from bloxproxy.fake import FAKE_STATE, FakeRoblox, Fault, IpLimit, create_fake_app
from bloxproxy.upstream.client import Caller
from bloxproxy.upstream.limiter import BudgetRow, Limiter
from tests.conftest import FakeClock, ProxyFactory

Client = TestClient[web.Request, web.Application]

ONE_ATTEMPT = {"BLOXPROXY_RETRIES_ATTEMPTS": "1"}
NO_CACHE = {"BLOXPROXY_CACHE_ENABLED": "false"}
FRESH = itertools.count(1_000_001)  # the fake's synthetic users: each one a new key


def near(seconds: float) -> Any:
    """A time to the millisecond."""
    return pytest.approx(seconds, abs=1e-3)


class SteppedClock(FakeClock):
    """Sleepers wait until the test wakes them (:meth:`step`), earliest first, time moving
    to each one's wake-up."""

    def __init__(self) -> None:
        super().__init__()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    async def sleep(self, seconds: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._seq), fut))
        await fut

    @property
    def sleeping(self) -> int:
        return sum(not fut.done() for *_, fut in self._sleepers)

    def step(self) -> None:
        while self._sleepers:
            wake, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                self.now = max(self.now, wake)
                fut.set_result(None)
                return
        raise AssertionError("nobody sleeps")


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def problem(self, status: int, code: str) -> dict[str, Any]:
        assert self.status == status, self.body
        problem: dict[str, Any] = orjson.loads(self.body)
        assert (problem["status"], problem["code"]) == (status, code), problem
        return problem


async def call(client: Client, path: str, **kwargs: Any) -> Answer:
    async with client.get(path, **kwargs) as resp:
        return Answer(resp.status, resp.headers, await resp.read())


async def poll(condition: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.002)):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"timed out: {what}")


def budget(proxy: Client, scope: str = "users") -> BudgetRow:
    rows = [r for r in proxy.server.app[GUARD].limiter.rows() if r.scope == scope]
    return rows[0] if rows else BudgetRow(scope, 0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0)


def fresh(n: int) -> list[str]:
    return [f"/v1/users/{next(FRESH)}" for _ in range(n)]


# -- waiting in line, until the deadline ---------------------------------------------------


async def test_requests_wait_in_line_instead_of_failing_fast(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(**NO_CACHE, BLOXPROXY_LIMITS_UPSTREAM_RATE="1")
    start = clock.now
    answers = await asyncio.gather(*(call(proxy, p) for p in fresh(8)))
    assert [a.status for a in answers] == [200] * 8
    assert clock.now - start == near(7.0)  # one a second, the first at once
    row = budget(proxy)
    assert (row.slots, row.waits, row.refusals, row.waiting) == (8, 7, 0, 0)


async def test_past_the_deadline_a_503_that_says_when(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(
        **NO_CACHE, BLOXPROXY_LIMITS_UPSTREAM_RATE="1", BLOXPROXY_LIMITS_UPSTREAM_MAX_WAIT="2s"
    )
    answers = await asyncio.gather(*(call(proxy, p) for p in fresh(5)))
    assert sorted(a.status for a in answers) == [200, 200, 200, 503, 503]  # at 0, 1 and 2 s
    for busy in (a for a in answers if a.status == 503):
        assert busy.problem(503, "upstream_busy")["retry_after"] == 1
        assert busy.headers["Retry-After"] == "1"
    assert fake.total == 3
    assert budget(proxy).refusals == 2
    assert proxy.server.app[GUARD].services["users"].rejected == 2


async def test_a_refused_request_is_answered_from_stale(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(
        BLOXPROXY_LIMITS_UPSTREAM_RATE="1", BLOXPROXY_LIMITS_UPSTREAM_MAX_WAIT="100ms"
    )
    assert (await call(proxy, "/v1/users/1")).status == 200
    clock.advance(12 * 60)  # users.get: past ttl and stale-while-revalidate
    assert (await call(proxy, "/v1/users/1000002")).status == 200  # this second's slot
    stale = await call(proxy, "/v1/users/1")  # the next slot is 1 s away: past its bound
    assert (stale.status, stale.headers["X-Cache"]) == (200, "STALE")
    assert budget(proxy).refusals == 1


@pytest.mark.parametrize(
    ("header", "answered"),
    [("500ms", 1), ("1500ms", 2), ("2", 3), ("2.5s", 3), ("1h", 5)],  # capped at max_wait
)
async def test_a_client_sets_its_own_bound(
    make_proxy: ProxyFactory, fake: FakeRoblox, header: str, answered: int
) -> None:
    proxy = await make_proxy(
        **NO_CACHE, BLOXPROXY_LIMITS_UPSTREAM_RATE="1", BLOXPROXY_LIMITS_UPSTREAM_MAX_WAIT="4s"
    )
    bound = {"X-Bloxproxy-Max-Wait": header}
    answers = await asyncio.gather(*(call(proxy, p, headers=bound) for p in fresh(6)))
    assert sorted(a.status for a in answers) == [200] * answered + [503] * (6 - answered)
    assert all("x-bloxproxy-max-wait" not in r.headers for r in fake.requests)


@pytest.mark.parametrize("header", ["soon", "-1s", "3 seconds", "1e3", ""])
async def test_a_bound_that_cannot_be_read_is_a_400(
    make_proxy: ProxyFactory, fake: FakeRoblox, header: str
) -> None:
    proxy = await make_proxy()
    answer = await call(proxy, "/users/v1/users/1", headers={"X-Bloxproxy-Max-Wait": header})
    problem = answer.problem(400, "invalid_request")
    assert problem["detail"].startswith("X-Bloxproxy-Max-Wait: expected a duration like '3s'")
    assert fake.total == 0


# -- fair shares -------------------------------------------------------------------------

KEYS = {"BLOXPROXY_AUTH_KEYS": "buster-key,good-key"}
BUSTER = {"X-Bloxproxy-Key": "buster-key"}
GOOD = {"X-Bloxproxy-Key": "good-key"}


@pytest.mark.parametrize("clock", [SteppedClock], indirect=True)
async def test_a_cache_buster_does_not_starve_a_well_behaved_client(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: SteppedClock
) -> None:
    """60 concurrent cache-busting misses (random query strings) from one client, then 5
    misses of another: the slots alternate, so the other's misses go out among the next 10
    slots instead of after all 60 (6 s at 10/s: before fair shares, past the 2 s wait
    bound, 503s)."""
    proxy = await make_proxy(**ONE_ATTEMPT, **KEYS, BLOXPROXY_LIMITS_UPSTREAM_RATE="10")
    busting = [
        asyncio.create_task(call(proxy, f"/users/v1/users/1?nocache={n}", headers=BUSTER))
        for n in range(60)
    ]
    await poll(lambda: budget(proxy).waiting == 59, "59 busting misses in line")  # one went
    good = [asyncio.create_task(call(proxy, p, headers=GOOD)) for p in fresh(5)]
    await poll(lambda: budget(proxy).waiting == 64, "the good misses in line too")
    start = clock.now
    while budget(proxy).waiting:
        before = fake.total
        clock.step()  # one slot
        await poll(lambda: fake.total > before, "the slot's call")  # noqa: B023
    order = ["good" if r.path != "/v1/users/1" else "buster" for r in fake.requests[1:]]
    assert order[:10] == ["buster", "good"] * 5
    assert order[10:] == ["buster"] * 54
    assert [a.status for a in await asyncio.gather(*busting, *good)] == [200] * 65
    assert clock.now - start == near(6.4)


async def test_the_line_is_shared_fairly_by_many_clients(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    """Every client gets about the same number of slots while all of them wait, whatever
    their number of requests in line."""
    keys = [f"key-{n}" for n in range(4)]
    proxy = await make_proxy(
        **NO_CACHE, BLOXPROXY_AUTH_KEYS=",".join(keys), BLOXPROXY_LIMITS_UPSTREAM_RATE="5"
    )
    sizes = [40, 10, 5, 1]
    tasks = [
        asyncio.create_task(call(proxy, path, headers={"X-Bloxproxy-Key": key}))
        for key, size in zip(keys, sizes, strict=True)
        for path in fresh(size)
    ]
    answers = await asyncio.gather(*tasks)
    assert sorted({a.status for a in answers}) == [200, 503]  # 10 s at 5/s: 51 slots
    served = [0] * 4
    for task_answer, key_index in zip(
        answers, [i for i, size in enumerate(sizes) for _ in range(size)], strict=True
    ):
        served[key_index] += task_answer.status == 200
    assert served[1:] == [10, 5, 1]  # every small client fully served
    assert served[0] == budget(proxy).slots - 16


# -- learning, against the fake's per-IP limit on the same clock ---------------------------

MakeFake = Callable[..., Awaitable[tuple[FakeRoblox, Client]]]


@pytest.fixture
def limited_fake(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[Client]],
    clock: FakeClock,
) -> MakeFake:
    """``await limited_fake("40/s", **env)``: a fake limiting per IP on ``clock`` and a
    proxy in front of it on the same clock (the proxy is not told the limit)."""

    async def make(limit: str, **env: str) -> tuple[FakeRoblox, Client]:
        server = await aiohttp_server(create_fake_app(clock=clock, ip_limit=IpLimit.parse(limit)))
        base = {"BLOXPROXY_UPSTREAM_BASE_URL": f"http://127.0.0.1:{server.port}/{{service}}"}
        config = config_mod.load(None, env={**base, **env})
        app = create_app(config, clock=clock, monotonic=clock, sleep=clock.sleep)
        return server.app[FAKE_STATE], await aiohttp_client(app)

    return make


async def drive(
    proxy: Client, paths: list[str], clients: int, rates: list[float] | None = None, **kw: Any
) -> list[Answer]:
    """``clients`` clients, each sending its share of ``paths`` one after the other; the
    users budget's rate after each answer goes to ``rates``."""
    out: list[Answer] = []

    async def one(mine: list[str]) -> None:
        for path in mine:
            out.append(await call(proxy, path, **kw))
            if rates is not None:
                rates.append(budget(proxy).rate)

    await asyncio.gather(*(one(paths[i::clients]) for i in range(clients)))
    return out


async def test_the_rate_is_learned_below_a_legacy_hosts_limit(
    limited_fake: MakeFake, clock: FakeClock
) -> None:
    """The fake allows 40/s per IP and answers 429 without Retry-After above it; the proxy
    starts at 100/s. The learned rate goes under 40/s and stays there: at most 1 % of the
    calls draw a 429 (each answered to its client: one attempt per request here)."""
    fake, proxy = await limited_fake(
        "40/s", **NO_CACHE, **ONE_ATTEMPT, BLOXPROXY_LIMITS_UPSTREAM_RATE="100"
    )
    start = clock.now
    rates: list[float] = []
    answers = await drive(proxy, fresh(1500), clients=32, rates=rates)
    assert {a.status for a in answers} <= {200, 429}
    assert fake.limited <= 0.01 * fake.total, (fake.limited, fake.total)
    late = rates[len(rates) // 3 :]  # after the first descent: the saw-tooth around 40
    assert 20.0 <= min(late) and sum(late) / len(late) < 40.0, (min(late), max(late))
    assert fake.total / (clock.now - start) >= 30.0  # and the budget is used, not wasted


async def test_a_429_storm_without_retry_after_is_absorbed_by_queueing(
    limited_fake: MakeFake, clock: FakeClock
) -> None:
    """200 concurrent misses against a fake allowing 40/s (no Retry-After on its 429s) and
    a proxy starting at 100/s: no fast 503s, no pause of the service — every request waits
    in line, its 429'd attempts retried, and is answered 200 within its deadline."""
    fake, proxy = await limited_fake("40/s", **NO_CACHE, BLOXPROXY_LIMITS_UPSTREAM_RATE="100")
    start = clock.now
    answers = await asyncio.gather(*(call(proxy, p) for p in fresh(200)))
    assert [a.status for a in answers] == [200] * 200
    assert clock.now - start < 10.0
    assert 1 <= fake.limited <= 10, fake.limited
    assert budget(proxy).refusals == 0


async def test_x_ratelimit_headers_cap_the_rate(limited_fake: MakeFake, clock: FakeClock) -> None:
    """Open Cloud says its limit (``x-ratelimit-limit: 10, 10;w=1`` at 10/s): the budget
    takes it as its ceiling from the first answer, and holds when ``remaining`` is 0."""
    fake, proxy = await limited_fake(
        "10/s", **NO_CACHE, **ONE_ATTEMPT, BLOXPROXY_LIMITS_UPSTREAM_RATE="100"
    )
    key = {"x-api-key": "some-key"}
    paths = [f"/apis/cloud/v2/users/{next(FRESH)}" for _ in range(60)]
    first = await call(proxy, paths[0], headers=key)
    assert (first.status, first.headers["x-ratelimit-limit"]) == (200, "10, 10;w=1")
    row = budget(proxy, "apis")
    assert (row.limit, row.rate) == (10.0, 10.0)
    answers = await drive(proxy, paths[1:], clients=8, headers=key)
    assert [a.status for a in answers] == [200] * 59
    assert fake.limited == 0


async def test_retry_after_on_open_cloud_is_honoured(
    limited_fake: MakeFake, clock: FakeClock
) -> None:
    fake, proxy = await limited_fake("1000/s", **NO_CACHE, **ONE_ATTEMPT)
    key = {"x-api-key": "some-key"}
    fake.script("apis", "/cloud/v2/users/1", [Fault(status=429, retry_after="3")])
    refused = await call(proxy, "/apis/cloud/v2/users/1", headers=key)
    assert (refused.status, refused.headers["retry-after"]) == (429, "3")
    assert budget(proxy, "apis").hold == near(3.0)
    start = clock.now
    assert (await call(proxy, "/apis/cloud/v2/users/1", headers=key)).status == 200
    assert clock.now - start == near(3.0)


# -- the limiter itself --------------------------------------------------------------------


def limiter_for(clock: FakeClock, **env: str) -> Limiter:
    return Limiter(config_mod.load(None, env=env), clock=clock, sleep=clock.sleep)


async def test_next_slot_in() -> None:
    clock = SteppedClock()
    limiter = limiter_for(clock, BLOXPROXY_LIMITS_UPSTREAM_RATE="2")
    assert limiter.next_slot_in("users") == 0.0  # never used: a slot is free
    await limiter.acquire("users")
    assert limiter.next_slot_in("users") == 0.5
    waiting = [asyncio.create_task(limiter.acquire("users")) for _ in range(3)]
    await poll(lambda: clock.sleeping == 1, "the dispatcher sleeps")
    assert limiter.next_slot_in("users") == 0.5 + 3 * 0.5  # the line drains at 2/s
    assert limiter.next_slot_in("games") == 0.0  # scopes apart
    clock.advance(0.25)
    assert limiter.next_slot_in("users") == 0.25 + 3 * 0.5
    for _ in range(3):
        clock.step()
        await asyncio.sleep(0)
    await asyncio.gather(*waiting)
    assert limiter.next_slot_in("users") == near(0.5)
    await limiter.close()


async def test_the_cache_layer_asks_the_upstream(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**NO_CACHE, BLOXPROXY_LIMITS_UPSTREAM_RATES="{users: 2}")
    upstream = proxy.server.app[UPSTREAM]
    assert upstream.next_slot_in("users") == 0.0
    assert (await call(proxy, "/v1/users/1")).status == 200
    assert upstream.next_slot_in("users") == near(0.5)
    assert upstream.next_slot_in("games") == 0.0


async def test_a_tentative_ask_refused_is_not_a_refusal() -> None:
    """A slot asked ahead of a call (``tentative``: a batch gathering ids while it waits,
    whose call waits for its slot anyway when none comes) is refused like any ask, but
    the refusals that metrics and alerts count are requests refused, so it is not one."""
    clock = SteppedClock()
    limiter = limiter_for(clock, BLOXPROXY_LIMITS_UPSTREAM_RATE="1")
    await limiter.acquire("users")
    now = clock()
    with pytest.raises(Unavailable):  # the next slot is 1 s away: refused at once
        await limiter.acquire("users", deadline=now + 0.5, tentative=True)
    in_line = asyncio.create_task(limiter.acquire("users", deadline=now + 5.0))
    late = asyncio.create_task(limiter.acquire("users", deadline=now + 1.5, tentative=True))
    await poll(lambda: limiter.rows()[0].waiting == 2, "two in line")
    clock.step()  # one slot: the first in line's; the tentative one's deadline passes
    assert (await in_line).scope == "users"
    with pytest.raises(Unavailable):
        await late
    assert limiter.rows()[0].refusals == 0
    with pytest.raises(Unavailable):  # the same refused as a request's: counted
        await limiter.acquire("users", deadline=clock() + 0.1)
    assert limiter.rows()[0].refusals == 1
    await limiter.close()


async def test_a_waiter_that_gives_up_leaves_the_line_and_costs_no_slot() -> None:
    clock = SteppedClock()
    limiter = limiter_for(clock, BLOXPROXY_LIMITS_UPSTREAM_RATE="1")
    await limiter.acquire("users")
    gone = asyncio.create_task(limiter.acquire("users", Caller(client="a")))
    kept = asyncio.create_task(limiter.acquire("users", Caller(client="b")))
    await poll(lambda: limiter.rows()[0].waiting == 2, "two in line")
    gone.cancel()
    await asyncio.sleep(0)
    assert limiter.rows()[0].waiting == 1
    clock.step()
    assert (await kept).scope == "users"
    assert gone.cancelled()
    row = limiter.rows()[0]
    assert (row.slots, row.waiting, row.refusals) == (2, 0, 0)
    await limiter.close()


async def test_close_cancels_the_line() -> None:
    clock = SteppedClock()
    limiter = limiter_for(clock, BLOXPROXY_LIMITS_UPSTREAM_RATE="1")
    await limiter.acquire("users")
    waiting = asyncio.create_task(limiter.acquire("users"))
    await poll(lambda: clock.sleeping == 1, "the dispatcher sleeps")
    await limiter.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_hold_longer_than_the_deadline_refuses_at_once() -> None:
    clock = SteppedClock()
    limiter = limiter_for(clock)
    ticket = await limiter.acquire("users")
    assert await limiter.on_429(ticket, 30.0) == 30.0
    with pytest.raises(Unavailable) as refused:
        await limiter.acquire("users")  # max_wait 10 s < 30 s
    assert (refused.value.code, refused.value.headers["Retry-After"]) == ("upstream_paused", "30")
    assert clock.sleeping == 0  # nobody waits for what cannot come in time
    waiting = asyncio.create_task(limiter.acquire("users", deadline=clock.now + 31))
    await poll(lambda: clock.sleeping == 1, "the dispatcher sleeps through the hold")
    clock.step()
    assert (await waiting).gen == 1
    assert clock.now == near(1_800_000_030.0)
    await limiter.close()
