"""The upstream limiter: one learned budget per scope, and a fair line to wait in for it.

Every attempt takes a slot of its scope (a service, or a rule's ``limits.bucket``): the
scope's :class:`~.budget.Learner` says whether one is free — in process, or with
``limits.upstream.shared`` and Redis the same state shared by every replica of the egress
(:mod:`.shared`; while Redis fails, the local learner takes over for a few seconds, from
the last rate Redis gave). A request that finds none **waits in line** up to its deadline
(``Caller.max_wait``, else ``limits.upstream.max_wait``): each scope's waiters queue per
client and the slots go round them by weighted deficit round robin (:mod:`.fairshare`), so
a client sending a thousand cache-busting misses gets its share and no more. Only a
request that cannot have a slot by its deadline — it passed, or the next slot (a hold
Roblox asked for) is later — is refused, at once, with a 503
:class:`~bloxproxy.errors.Unavailable` (``upstream_paused`` during a hold, else
``upstream_busy``), which lets a stale entry answer. Fair shares are per process: with
shared budgets each replica serves its own line from the one Redis budget.

A scope's line is served by one task (its *dispatcher*), started when the first request
has to wait and ending when nobody does; :meth:`Limiter.close` stops them. Time is the
injected ``clock`` and ``sleep``. The answers feed the budget back (:meth:`Limiter.on_429`,
:meth:`Limiter.on_headers`); :meth:`Limiter.next_slot_in` tells a batcher, cheaply and
synchronously, how long a new request of a scope would wait.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import StoreUnavailable, Unavailable
from .budget import Learner, RateHeaders, Slot, Tuning, interval_us
from .client import NOBODY, Caller, Ticket
from .fairshare import FairQueue

if TYPE_CHECKING:
    from ..config import Config
    from .shared import SharedBudgets

__all__ = ["BudgetRow", "Limiter", "Ticket"]

log = logging.getLogger("bloxproxy.upstream")

SHARED_PAUSE = 5.0  # after a Redis failure, the local budget stands in this long
# A slot this late still counts as within a deadline: clock values near 1.8e9 s carry a
# few 1e-7 s of float rounding, and a slot due at the deadline itself must not be refused.
DEADLINE_SLACK = 1e-5


@dataclass(frozen=True, slots=True)
class BudgetRow:
    """One scope's budget as metrics and readyz show it."""

    scope: str
    rate: float  # learned requests/s
    ceiling: float  # configured requests/s
    limit: float  # Roblox's x-ratelimit-limit as requests/s (0: none seen)
    hold: float  # seconds left of a hold (0: none)
    slots: int  # slots given (attempts admitted)
    waiting: int  # requests in line now
    waits: int  # requests that had to wait in line
    refusals: int  # requests refused: no slot within their deadline


class _Waiter:
    __slots__ = ("counted", "deadline", "fut", "settled")

    def __init__(self, fut: asyncio.Future[Ticket], deadline: float, counted: bool) -> None:
        self.fut = fut
        self.deadline = deadline
        self.settled = False
        self.counted = counted  # a refusal of it is a refusal (not a tentative ask's)


def _live(w: _Waiter) -> bool:
    return not w.fut.done()


class _Scope:
    """One scope: its learner (the budget itself, or a mirror of the shared one), its line
    and its counters."""

    __slots__ = (
        "deadlines",
        "dispatcher",
        "held_until",
        "learner",
        "limit_sent",
        "line",
        "name",
        "next_at",
        "pending",
        "refusals",
        "slots",
        "waits",
    )

    def __init__(self, name: str, tuning: Tuning, now: float) -> None:
        self.name = name
        self.learner = Learner(tuning, now)
        self.line: FairQueue[_Waiter] = FairQueue()
        self.deadlines: list[tuple[float, int, _Waiter]] = []  # a heap
        self.pending = 0  # waiters not answered yet
        self.dispatcher: asyncio.Task[None] | None = None
        self.next_at = 0.0  # shared budget: when Redis last said a slot would be free
        self.held_until = 0.0  # shared budget: the end of the hold Redis last told of
        self.limit_sent: float | None = None  # shared budget: the limit last written
        self.slots = self.waits = self.refusals = 0


class Limiter:
    """Per-scope learned budgets and their fair lines (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        shared: SharedBudgets | None = None,
    ) -> None:
        self._config = config
        self._clock, self._sleep = clock, sleep
        self.shared = shared
        self._shared_retry_at = 0.0
        self._shared_failed = False
        self.scopes: dict[str, _Scope] = {}
        self._seq = itertools.count()
        # Where per-owner scopes (``<base>@<owner>``) start: an Open Cloud route's
        # published limit per key owner, by base (set from the rules: ``seed``).
        self.seeds: dict[str, float] = {}

    def seed(self, seeds: dict[str, float]) -> None:
        """New per-owner seeds (the rules loaded or reloaded); scopes already made retune."""
        self.seeds = dict(seeds)
        self.reload(self._config)

    def reload(self, config: Config) -> None:
        """New numbers: what each scope learned stays, within them; its line stays."""
        self._config = config
        for name, st in self.scopes.items():
            st.learner.retune(Tuning.of(config, name, self.seeds))

    def _scope(self, name: str) -> _Scope:
        st = self.scopes.get(name)
        if st is None:
            tuning = Tuning.of(self._config, name, self.seeds)
            st = self.scopes[name] = _Scope(name, tuning, self._clock())
        return st

    def wait_bound(self, caller: Caller = NOBODY) -> float:
        """How long ``caller`` may wait for a slot: its own bound, at most the config's."""
        bound = self._config.limits.upstream.max_wait
        return bound if caller.max_wait is None else max(0.0, min(caller.max_wait, bound))

    def _shared_on(self, now: float) -> bool:
        return self.shared is not None and now >= self._shared_retry_at

    def _shared_down(self, now: float, exc: StoreUnavailable) -> None:
        if not self._shared_failed:
            log.warning("shared upstream budget unavailable, learning locally: %s", exc)
        self._shared_failed = True
        self._shared_retry_at = now + SHARED_PAUSE

    # -- slots ---------------------------------------------------------------------------

    async def acquire(
        self,
        scope: str,
        caller: Caller = NOBODY,
        deadline: float | None = None,
        *,
        tentative: bool = False,
    ) -> Ticket:
        """A slot of ``scope`` for one attempt, waiting in ``caller``'s share of the line
        until ``deadline`` (on the limiter's clock; None: :meth:`wait_bound` from now).
        ``tentative``: a slot asked ahead of a call that waits for one anyway when this
        gives none (:meth:`~bloxproxy.upstream.guard.Guard.reserve`): not counted as a
        refusal then."""
        st = self._scope(scope)
        now = self._clock()
        if deadline is None:
            deadline = now + self.wait_bound(caller)
        if st.pending:  # others are in line: take a place (the next slot is theirs or ours)
            wait = self._next_slot(st, now)
            held = self._hold_left(st, now) > 0
        else:
            got = await self._take(st, now)
            if isinstance(got, Ticket):
                st.slots += 1
                return got
            wait, held = got.wait, got.held
            now = self._clock()
        if now + wait > deadline + DEADLINE_SLACK:
            st.refusals += not tentative
            raise _refusal(scope, wait, held)
        return await self._wait_in_line(st, caller, deadline, not tentative)

    async def _take(self, st: _Scope, now: float) -> Ticket | Slot:
        """A slot from the scope's budget now, or the Slot saying how long until one."""
        if self._shared_on(now):
            assert self.shared is not None
            try:
                slot = await self.shared.take(st.name, st.learner.tuning)
            except StoreUnavailable as exc:
                self._shared_down(self._clock(), exc)
            else:
                if self._shared_failed:
                    log.info("shared upstream budget back")
                    self._shared_failed = False
                self._shared_retry_at = 0.0
                st.learner.rate = slot.rate  # the mirror: metrics, and the fallback's start
                st.next_at = now + slot.wait
                if slot.held:
                    st.held_until = st.next_at
                return Ticket(st.name, slot.gen, True) if slot.allowed else slot
        slot = st.learner.take(now)
        return Ticket(st.name, slot.gen, False) if slot.allowed else slot

    def _next_slot(self, st: _Scope, now: float) -> float:
        if self._shared_on(now):
            return max(0.0, st.next_at - now)
        return st.learner.next_slot_in(now)

    async def _wait_in_line(
        self, st: _Scope, caller: Caller, deadline: float, counted: bool
    ) -> Ticket:
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), deadline, counted)
        st.line.push(caller.client, waiter, caller.weight)
        heapq.heappush(st.deadlines, (deadline, next(self._seq), waiter))
        st.pending += 1
        st.waits += 1
        if st.dispatcher is None:
            st.dispatcher = loop.create_task(self._dispatch(st))
        try:
            return await waiter.fut
        finally:
            if not waiter.settled:  # cancelled (the client left): out of the count
                waiter.settled = True
                st.pending -= 1

    async def _dispatch(self, st: _Scope) -> None:
        """Serve the scope's line: a slot to the next waiter in fair order; refuse those
        who cannot have one within their deadline; sleep until the next slot."""
        try:
            while st.pending:
                got = await self._take(st, self._clock())
                if isinstance(got, Ticket):
                    waiter = st.line.pop(_live)
                    if waiter is None:  # all gave up while Redis answered: the slot is lost
                        break
                    st.slots += 1
                    _settle(st, waiter)
                    waiter.fut.set_result(got)
                    continue
                self._refuse_before(st, self._clock() + got.wait, got.held, got.wait)
                if st.pending:
                    await self._sleep(got.wait)
        except asyncio.CancelledError:
            self._fail_all(st, None)
            raise
        except BaseException as exc:  # a bug: nobody may wait for a dispatcher that is gone
            self._fail_all(st, exc)
            raise
        finally:
            st.dispatcher = None

    def _refuse_before(self, st: _Scope, when: float, held: bool, wait: float) -> None:
        """Refuse the waiters whose deadline comes before ``when`` (the next slot)."""
        heap = st.deadlines
        when -= DEADLINE_SLACK  # (a slot due at the deadline itself still counts)
        while heap and (heap[0][0] < when or heap[0][2].settled):
            _, _, waiter = heapq.heappop(heap)
            if waiter.settled or waiter.fut.done():
                continue
            st.refusals += waiter.counted
            _settle(st, waiter)
            waiter.fut.set_exception(_refusal(st.name, wait, held))

    def _fail_all(self, st: _Scope, exc: BaseException | None) -> None:
        for _, _, waiter in st.deadlines:
            if not waiter.settled and not waiter.fut.done():
                _settle(st, waiter)
                if exc is None:
                    waiter.fut.cancel()
                else:
                    waiter.fut.set_exception(
                        Unavailable("upstream limiter failed", "upstream_busy", 1.0)
                    )
        st.deadlines.clear()

    # -- what the answers say ------------------------------------------------------------

    async def on_429(self, ticket: Ticket, retry_after: float | None) -> float:
        """Roblox answered 429 to the attempt of ``ticket``: lower and maybe hold its
        scope's budget. Returns the hold (seconds; 0 none)."""
        st = self._scope(ticket.scope)
        now = self._clock()
        if ticket.shared and self._shared_on(now):
            assert self.shared is not None
            try:
                rate, hold = await self.shared.on_429(
                    st.name, st.learner.tuning, ticket.gen, retry_after
                )
            except StoreUnavailable as exc:
                self._shared_down(self._clock(), exc)
            else:
                self._mirror(st, now, rate, hold)
                return hold
        # a slot of the shared budget, judged here: it counts as one of the current rate
        gen = st.learner.gen if ticket.shared else ticket.gen
        return st.learner.on_429(now, gen, retry_after)

    async def on_headers(self, scope: str, said: RateHeaders) -> None:
        """Roblox's rate-limit headers on an answer of ``scope``."""
        st = self._scope(scope)
        now = self._clock()
        st.learner.on_headers(now, said)
        if not self._shared_on(now):
            return
        news = said.rate is not None and said.rate != st.limit_sent
        if not news and said.remaining != 0:
            return  # nothing the shared budget does not know: no Redis call
        assert self.shared is not None
        try:
            rate, hold = await self.shared.on_headers(st.name, st.learner.tuning, said)
        except StoreUnavailable as exc:
            self._shared_down(self._clock(), exc)
            return
        st.limit_sent = said.rate if said.rate is not None else st.limit_sent
        self._mirror(st, now, rate, hold)

    @staticmethod
    def _mirror(st: _Scope, now: float, rate: float, hold: float) -> None:
        st.learner.rate = rate
        if hold > 0:
            st.next_at = max(st.next_at, now + hold)
            st.held_until = max(st.held_until, now + hold)

    def _hold_left(self, st: _Scope, now: float) -> float:
        if self._shared_on(now):
            return max(0.0, st.held_until - now)
        return st.learner.hold_left(now)

    # -- for others ----------------------------------------------------------------------

    def next_slot_in(self, scope: str) -> float:
        """Seconds until a slot of ``scope`` would be free for a new request: 0.0 when one
        is free now and nobody waits. Cheap and synchronous (no Redis call: with a shared
        budget, what Redis said last); with a line, an estimate (the line drains at the
        learned rate, though fair shares may serve a new client sooner)."""
        st = self.scopes.get(scope)
        if st is None:
            return 0.0
        now = self._clock()
        wait = self._next_slot(st, now)
        if st.pending:
            wait += st.pending * interval_us(st.learner.rate) / 1_000_000
        return wait

    def rate(self, scope: str) -> float:
        """The scope's learned rate (requests/s), as far as this process knows."""
        st = self.scopes.get(scope)
        if st is None:
            return Tuning.of(self._config, scope, self.seeds).ceiling
        return st.learner.rate

    def hold_left(self, scope: str) -> float:
        """Seconds left of the scope's hold, as far as this process knows (0.0: none)."""
        st = self.scopes.get(scope)
        return 0.0 if st is None else self._hold_left(st, self._clock())

    def rows(self) -> list[BudgetRow]:
        """Every scope's budget now (read at scrape time)."""
        now = self._clock()
        return [
            BudgetRow(
                name,
                st.learner.rate,
                st.learner.tuning.ceiling,
                st.learner.limit,
                self._hold_left(st, now),
                st.slots,
                st.pending,
                st.waits,
                st.refusals,
            )
            for name, st in sorted(self.scopes.items())
        ]

    async def close(self) -> None:
        """Stop the dispatchers (their waiters are cancelled)."""
        tasks = [st.dispatcher for st in self.scopes.values() if st.dispatcher is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass


def _settle(st: _Scope, waiter: _Waiter) -> None:
    waiter.settled = True
    st.pending -= 1


def _refusal(scope: str, wait: float, held: bool) -> Unavailable:
    if held:
        return Unavailable(f"{scope} asked us to slow down (429); holding", "upstream_paused", wait)
    return Unavailable(f"too many requests queued for {scope}", "upstream_busy", wait)
