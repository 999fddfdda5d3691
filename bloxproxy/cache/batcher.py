"""The micro-batcher: concurrent asks for ids of one batch endpoint and variant become one
upstream call, up to the endpoint's cap.

An id asked while no batch of its variant is open opens one; ids asked while it is open join
it (an id already open or already in flight is waited for, not asked twice). A batch goes
(:func:`flush_at`) when it is full, or once its short window has passed *and* the upstream
limiter's next slot (as it estimated when the batch opened, or when the call before it came
back) has come *and* no other batch of its variant is in flight — so while requests wait for
budget, or for the call before theirs, the batch keeps filling, which is when merging pays
most — but never later than the earliest of its callers' deadlines. The estimate is taken
once, not polled: with others in the limiter's line the next slot keeps moving, and the
batch then joins the line like any call. (Fifty
concurrent single lookups are therefore two calls at most, however slowly they arrive.)

The window is short (``window``, 5 ms) unless companions are expected: when the variant's
new ids have lately been asked at least once per ``max_window`` (:func:`arrival_rate`, an
exponentially decaying count over the last ``RATE_TAU`` seconds; :func:`window_for`), the
batch waits up to ``max_window`` (250 ms) for them. A lone lookup therefore pays 5 ms; a
steady trickle of single lookups that no limiter queue would merge (the scope has budget to
spare) is merged anyway, which is what keeps an unknown upstream limit unreached
(``bench/economy.py``: from 2.8 to 4.4 answers per upstream call at 40/s per IP, with no
more wall time).
The batcher only collects and schedules; ``run`` (the fetcher's) makes the call, stores the
entities and says what each id got.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..rules import BatchSpec
from ..upstream.client import Caller

__all__ = ["RATE_TAU", "Batch", "Batcher", "arrival_rate", "flush_at", "window_for"]

RATE_TAU = 2.0  # seconds: how far back the arrival rate of a variant's new ids looks

_MAX_RATES = 1024  # variants whose arrival rate is remembered

# What ``run`` says an id got: its item's bytes, None (absent), or an exception.
Outcome = Any
Run = Callable[["Batch"], Awaitable[dict[str, Outcome]]]


def arrival_rate(rate: float, last: float, now: float, tau: float = RATE_TAU) -> float:
    """The arrival rate (per second) of a variant's new ids after one more arrives at
    ``now``, given the ``rate`` estimated at the previous arrival (``last``): an exponentially
    decaying count of arrivals, divided by its time constant ``tau``."""
    return rate * math.exp(-max(0.0, now - last) / tau) + 1.0 / tau


def window_for(rate: float, window: float, max_window: float) -> float:
    """How long a new batch waits for companions: ``max_window`` when at least one more id is
    expected within it at the recent arrival ``rate``, else the short ``window``."""
    if max_window > window and rate * max_window >= 1.0:
        return max_window
    return window


def flush_at(
    *,
    now: float,
    opened: float,
    window: float,
    size: int,
    cap: int,
    slot_at: float,
    busy: bool,
    deadline: float,
    follower: bool = False,
) -> float:
    """When an open batch should go: now when it is full; a ``follower`` (another replica
    collects its variant: :mod:`.cluster_batch`) once its window has passed, as it costs no
    slot and must reach the collector before it goes; while another batch of its
    variant is in flight (``busy``), not before that one is back (it keeps filling: the
    batcher looks again then); else once its window has passed and the limiter's next slot
    (``slot_at``) has come. Never after the earliest caller's ``deadline``; and when no slot
    comes before it, at the window's end: the limiter then refuses at once (a stale answer
    or a 503 now, not after the wait)."""
    if size >= cap:
        return now
    if follower:
        return min(opened + window, deadline)
    if busy:
        return deadline
    if slot_at > deadline:
        return opened + window
    return max(opened + window, slot_at)


@dataclass(slots=True)
class Batch:
    """One batch being filled, then asked: its ids (normalized → as spelled) and who waits."""

    spec: BatchSpec
    variant_key: str
    variant: Any  # the UpstreamRequest without ids
    policy: Any  # how its entities are stored (the fetcher's)
    caller: Caller  # the first asker's: its request id goes upstream, its share pays
    opened: float
    deadline: float
    ids: dict[str, str] = field(default_factory=dict)
    futures: dict[str, asyncio.Future[Outcome]] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None
    slot_at: float | None = None  # the limiter's next slot, estimated once (see above)
    window: float = 0.0  # how long it waits for companions (window_for, at its opening)
    follower: bool = False  # another replica's batch collects its variant (Batcher.follow)
    cluster: Any = None  # what the runner keeps for it (the fetcher: its collector lease)
    ticket: Any = None  # the budget's slot its call holds already (cluster_batch.slot_first)


class Batcher:
    """Open batches per variant, their timers, and the ids in flight (see the module
    docstring). ``slot_in(scope)`` is the limiter's "seconds until a slot is free"; times
    are the event loop's (deadlines are in it too)."""

    def __init__(
        self,
        run: Run,
        *,
        slot_in: Callable[[str], float] = lambda scope: 0.0,
        on_open: Callable[[Batch], None] | None = None,
    ) -> None:
        self._run = run
        self._slot_in = slot_in
        self._on_open = on_open  # told of each batch as it opens (before its first id)
        self._open: dict[str, Batch] = {}
        self._busy: dict[str, int] = {}  # variant key → its batches in flight
        self._flying: dict[str, asyncio.Future[Outcome]] = {}  # entity key → its outcome
        self._rates: dict[str, tuple[float, float]] = {}  # variant key → (rate, last arrival)
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # batches sent (tests and metrics)
        self.asked = 0  # ids sent in them
        # per batch endpoint ("service path"): [batches sent, ids in them, their caps summed]
        self.sent: dict[str, list[int]] = {}

    def known(self, entity_key: str) -> asyncio.Future[Outcome] | None:
        """The outcome already asked for ``entity_key`` (open or in flight), if any."""
        known = self._flying.get(entity_key)
        return known if known is not None and not known.done() else None

    def ask(
        self,
        spec: BatchSpec,
        variant_key: str,
        variant: Any,
        policy: Any,
        entity_key: str,
        norm: str,
        spelled: str,
        caller: Caller,
        deadline: float,
    ) -> asyncio.Future[Outcome]:
        """The future outcome of one id: joined to the open batch of its variant (opened if
        there is none), or the one already asked for it."""
        known = self._flying.get(entity_key)
        if known is not None and not known.done():
            return known
        now = asyncio.get_running_loop().time()
        rate = self.arrived(variant_key, now)
        batch = self._open.get(variant_key)
        if batch is None:
            batch = Batch(spec, variant_key, variant, policy, caller, now, deadline)
            batch.window = window_for(rate, spec.window, spec.max_window)
            self._open[variant_key] = batch
            if self._on_open is not None:
                self._on_open(batch)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        batch.ids[norm] = spelled
        batch.futures[norm] = future
        batch.deadline = min(batch.deadline, deadline)
        self._flying[entity_key] = future
        future.add_done_callback(lambda _: self._forget(entity_key, future))
        self._schedule(batch)
        return future

    def _forget(self, entity_key: str, future: asyncio.Future[Outcome]) -> None:
        if self._flying.get(entity_key) is future:
            del self._flying[entity_key]

    def _schedule(self, batch: Batch) -> None:
        now = asyncio.get_running_loop().time()
        if batch.slot_at is None:
            batch.slot_at = now + self._slot_in(batch.variant.scope)
        when = flush_at(
            now=now,
            opened=batch.opened,
            window=batch.window,
            size=len(batch.ids),
            cap=batch.spec.max,
            slot_at=batch.slot_at,
            busy=self._busy.get(batch.variant_key, 0) > 0,
            deadline=batch.deadline,
            follower=batch.follower,
        )
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        if when <= now:
            self._flush(batch)
            return
        loop = asyncio.get_running_loop()
        batch.timer = loop.call_later(when - now, self._schedule, batch)

    def arrived(self, variant_key: str, now: float, n: int = 1) -> float:
        """``n`` new ids of the variant asked at ``now`` (here, or by another replica whose
        ids a batch of ours carried: :mod:`.cluster_batch`); its arrival rate after them."""
        rate, last = self._rates.get(variant_key, (0.0, now))
        for _ in range(n):
            rate = arrival_rate(rate, last, now)
            last = now
        self._rates[variant_key] = (rate, now)
        if len(self._rates) > _MAX_RATES:  # bounded: forget the variant asked longest ago
            del self._rates[min(self._rates, key=lambda k: self._rates[k][1])]
        return rate

    def widen(self, batch: Batch, rate: float) -> None:
        """``batch`` collects for the cluster, whose ids of its variant arrive at ``rate``
        (:mod:`.cluster_batch`): its window is the one that rate calls for when that is
        longer than the one this replica's own arrivals gave it (each replica sees only its
        share of the cluster's asks)."""
        if batch.follower or self._open.get(batch.variant_key) is not batch:
            return
        window = window_for(rate, batch.spec.window, batch.spec.max_window)
        if window > batch.window:
            batch.window = window
            self._schedule(batch)

    def follow(self, batch: Batch) -> None:
        """``batch`` is a follower (another replica collects its variant): it goes at
        once (with the ids it has: those asked while its collector lease was being taken),
        whatever the limiter and the batch before it — it costs no slot, and its ids must
        reach the collector before that one goes."""
        if batch.follower or self._open.get(batch.variant_key) is not batch:
            return
        batch.follower, batch.window = True, 0.0
        self._schedule(batch)

    def _flush(self, batch: Batch) -> None:
        if self._open.get(batch.variant_key) is batch:
            del self._open[batch.variant_key]
        self.calls += 1
        self.asked += len(batch.ids)
        row = self.sent.setdefault(f"{batch.spec.service} {batch.spec.path}", [0, 0, 0])
        row[0] += 1
        row[1] += len(batch.ids)
        row[2] += batch.spec.max
        self._busy[batch.variant_key] = self._busy.get(batch.variant_key, 0) + 1
        task = asyncio.get_running_loop().create_task(self._go(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _go(self, batch: Batch) -> None:
        try:
            outcomes = await self._run(batch)
        except BaseException as exc:  # every waiter learns what happened, whatever it was
            outcomes = {norm: exc for norm in batch.futures}
            if isinstance(exc, asyncio.CancelledError):
                for future in batch.futures.values():
                    future.cancel()
                raise
        finally:
            key = batch.variant_key
            left = self._busy.get(key, 1) - 1
            if left > 0:
                self._busy[key] = left
            else:
                self._busy.pop(key, None)
            waiting = self._open.get(key)
            if waiting is not None and not left:
                waiting.slot_at = None  # the next batch of this variant may go: when?
                self._schedule(waiting)
        for norm, future in batch.futures.items():
            if not future.done():
                future.set_result(outcomes.get(norm))

    async def close(self) -> None:
        for batch in list(self._open.values()):
            if batch.timer is not None:
                batch.timer.cancel()
            for future in batch.futures.values():
                future.cancel()
        self._open.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
