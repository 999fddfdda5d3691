"""A budget that learns: one upstream scope's rate, as a small state machine on an injected
clock (no I/O; :mod:`.limiter` does the waiting, :mod:`.shared` keeps the same state in Redis).

Roblox's limits are unknown and change (docs/ROBLOX.md, "Rate limits"): the legacy hosts
limit per client IP, publish nothing and answer 429 without ``Retry-After``; Open Cloud
sends ``x-ratelimit-limit`` (possibly several windows, ``1000, 1000;w=60``),
``x-ratelimit-remaining``, ``x-ratelimit-reset`` (seconds) and ``retry-after``. So a scope's
rate is learned, AIMD as in TCP congestion control:

- it **starts** at the configured rate (``limits.upstream.rate`` or the scope's ``rates``
  entry), which is also its **ceiling**, lowered to the tightest window of an
  ``x-ratelimit-limit`` Roblox sent;
- a **429** multiplies it by ``decrease`` (down to ``floor``) — once per congestion event:
  only a 429 for a slot given at the current rate (the same ``gen``) lowers it again, the
  ones already in flight at the old rate do not (TCP's "once per window");
- it **grows** by ``increase`` for each ``increase_every`` window without a 429 in which
  the budget was used (at least half of its slots taken: an idle scope does not creep up);
- it **holds** (no slot at all) until ``retry-after`` says, until ``x-ratelimit-reset``
  when ``x-ratelimit-remaining`` is 0, and from the second 429 in a row (no clean window in
  between) for ``pause_base`` doubling with each, so a storm is probed ever more rarely;
  every hold is capped by ``pause_max``, and ends paced, not with a burst.

Slots are GCRA (:mod:`bloxproxy.ratelimit`): one every ``1/rate`` s, bursts of up to
``ceil(rate)``. Times are whole microseconds, as in the Redis script, which runs this
very arithmetic (:mod:`.shared`; a contract test runs both on one table).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config

__all__ = [
    "Learner",
    "RateHeaders",
    "Slot",
    "Tuning",
    "interval_us",
    "parse_limit",
    "parse_rate_headers",
]

US = 1_000_000
# A slot due within this many microseconds is due now: clock values near 1.8e9 s carry a few
# 1e-7 s of float rounding, so a sleeper woken for its slot may read a hair before it.
EARLY_US = 1
USED_SHARE = 0.5  # a window in which fewer slots than this share of the budget went out is idle


@dataclass(frozen=True, slots=True)
class Tuning:
    """How one scope's budget learns (``limits.upstream``; ``ceiling`` per scope)."""

    ceiling: float  # requests/s: where it starts, and the most it grows to
    floor: float = 0.1
    decrease: float = 0.5
    increase: float = 0.5  # requests/s added per good window
    every: float = 1.0  # seconds: the window
    pause_base: float = 1.0
    pause_max: float = 60.0
    learn: bool = True

    @classmethod
    def of(cls, config: Config, scope: str, seeds: Mapping[str, float] | None = None) -> Tuning:
        """The tuning of ``scope``: its ``limits.upstream.rates`` entry, else (a per-owner
        scope, ``<base>@<owner>``) its base's entry, else the base's seed (an Open Cloud
        route's published limit per key owner), else ``limits.upstream.rate``."""
        up = config.limits.upstream
        ceiling = up.rates.get(scope)
        if ceiling is None:
            base = scope.split("@", 1)[0]
            ceiling = up.rates.get(base, (seeds or {}).get(base, up.rate))
        return cls(
            ceiling=ceiling,
            floor=min(up.floor, ceiling),
            decrease=up.decrease,
            increase=up.increase,
            every=up.increase_every,
            pause_base=up.pause_base,
            pause_max=up.pause_max,
            learn=up.learn,
        )


@dataclass(frozen=True, slots=True)
class Slot:
    """A take's answer: a slot now, or how long until the next one; the rate's generation
    (a 429 for a slot of an older generation does not lower the rate again)."""

    allowed: bool
    wait: float  # seconds until a slot (0.0 when allowed)
    gen: int
    rate: float  # the rate it was decided at
    held: bool = False  # the wait is a hold (Roblox asked us to stop), not pacing


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """What Roblox said about its limit on one answer (None: not said)."""

    rate: float | None  # requests/s of the tightest x-ratelimit-limit window
    remaining: int | None
    reset: float | None  # seconds until the window resets


def interval_us(rate: float) -> int:
    return max(1, math.floor(US / rate + 0.5))  # as ratelimit's GCRA (and the Lua) rounds


def burst_of(rate: float) -> int:
    return max(1, math.ceil(rate))


_ITEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*((?:;[^;,]*)*)$")
_WINDOW = re.compile(r";\s*w\s*=\s*(\d+(?:\.\d+)?)\s*(?=;|$)")


def parse_limit(value: str | None) -> float | None:
    """``x-ratelimit-limit`` as requests/s: the tightest of its windows. ``"1000, 1000;w=60"``
    → 16.67 (Open Cloud's form: the current quota, then each policy ``quota;w=seconds``); an
    item without ``w=`` says nothing about time and counts only when none has one (then
    per second, the IETF draft's default window). None when nothing can be read."""
    if not value:
        return None
    timed: list[float] = []
    bare: list[float] = []
    for item in value.split(","):
        found = _ITEM.match(item)
        if found is None:
            continue
        quota = float(found.group(1))
        window = _WINDOW.search(found.group(2))
        if window is None:
            bare.append(quota)
        elif float(window.group(1)) > 0:
            timed.append(quota / float(window.group(1)))
    rates = timed or bare
    best = min(rates) if rates else None
    return best if best is not None and best > 0 else None


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def parse_rate_headers(headers: Mapping[str, str]) -> RateHeaders | None:
    """Roblox's ``x-ratelimit-*`` headers on one answer (None when it sent none of them;
    ``retry-after`` is the 429's business, :func:`.retry.parse_retry_after`)."""
    limit = headers.get("x-ratelimit-limit")
    remaining = headers.get("x-ratelimit-remaining")
    reset = headers.get("x-ratelimit-reset")
    if limit is None and remaining is None and reset is None:
        return None
    left = _number(remaining)
    return RateHeaders(parse_limit(limit), None if left is None else int(left), _number(reset))


class Learner:
    """One scope's learned budget (see the module docstring). ``now`` is seconds on the
    guard's monotonic clock; the state is whole microseconds."""

    __slots__ = ("gen", "hold", "limit", "rate", "since", "strikes", "tat", "tuning", "used")

    def __init__(self, tuning: Tuning, now: float) -> None:
        self.tuning = tuning
        self.rate = tuning.ceiling
        start = round(now * US)
        # GCRA: the time the bucket is empty again. It starts empty (paced from the first
        # slot, the burst earned by a second of quiet): nobody knows what Roblox's own
        # bucket holds when we start.
        self.tat = start + (burst_of(self.rate) - 1) * interval_us(self.rate)
        self.gen = 0  # how many times the rate was lowered
        self.hold = 0  # no slot before this
        self.since = start  # the current window's start
        self.used = 0  # slots given in it
        self.limit = 0.0  # Roblox's x-ratelimit-limit as requests/s (0: none seen)
        self.strikes = 0  # 429s in a row, without a clean window between

    @property
    def cap(self) -> float:
        """The most the rate may be: the configured ceiling, or Roblox's limit if lower."""
        ceiling = self.tuning.ceiling
        return self.limit if 0 < self.limit < ceiling else ceiling

    def retune(self, tuning: Tuning) -> None:
        """New numbers (a reload): what was learned stays, within them."""
        self.tuning = tuning
        self._clamp()

    def _clamp(self) -> None:
        cap = self.cap
        if self.rate > cap or not self.tuning.learn:
            self.rate = cap
        self.rate = max(self.rate, min(self.tuning.floor, cap))

    def _roll(self, now: int) -> None:
        """End the window if it is over: one in which slots went out without a 429
        forgives the strikes (a window spent holding does not), a well used one raises the
        rate."""
        t = self.tuning
        elapsed = now - self.since
        if elapsed < round(t.every * US):
            return
        if self.used:
            self.strikes = 0
        if t.learn and self.used >= USED_SHARE * self.rate * elapsed / US:
            self.rate = min(self.cap, self.rate + t.increase)
        self.since, self.used = now, 0

    def _wait(self, now: int) -> int:
        """Microseconds until a slot (0: one is free)."""
        if now + EARLY_US < self.hold:
            return self.hold - now
        interval = interval_us(self.rate)
        allow_at = max(self.tat, now) + interval - burst_of(self.rate) * interval
        wait = allow_at - now
        return wait if wait > EARLY_US else 0

    def take(self, now: float) -> Slot:
        """A slot for one attempt, or how long until one."""
        at = round(now * US)
        self._clamp()
        self._roll(at)
        wait = self._wait(at)
        if wait:
            return Slot(False, wait / US, self.gen, self.rate, at + EARLY_US < self.hold)
        self.tat = max(self.tat, at) + interval_us(self.rate)
        self.used += 1
        return Slot(True, 0.0, self.gen, self.rate)

    def next_slot_in(self, now: float) -> float:
        """Seconds until a slot is free (0.0: now); changes nothing."""
        return self._wait(round(now * US)) / US

    def hold_left(self, now: float) -> float:
        return max(0, self.hold - round(now * US)) / US

    def on_429(self, now: float, gen: int, retry_after: float | None) -> float:
        """A 429 for a slot of generation ``gen``: lower the rate (once per generation) and
        hold as Roblox asked, or from the second strike on. Returns the hold in seconds."""
        t = self.tuning
        at = round(now * US)
        self._clamp()
        self._roll(at)
        escalate = 0
        if gen == self.gen:
            self.gen += 1
            self.strikes += 1
            if t.learn:
                self.rate = max(min(t.floor, self.cap), self.rate * t.decrease)
            self.since, self.used = at, 0
            if self.strikes >= 2:
                escalate = round(t.pause_base * US) * 2 ** (self.strikes - 2)
        asked = escalate if retry_after is None else round(retry_after * US)
        wait = min(round(t.pause_max * US), asked)
        self._hold_for(at, wait)
        return wait / US

    def on_headers(self, now: float, said: RateHeaders) -> float:
        """Roblox's limit headers on an answer: the limit caps the rate; nothing remaining
        holds until the reset. Returns the hold they asked (seconds; 0.0 none)."""
        self._clamp()
        if said.rate is not None:
            self.limit = said.rate
            self._clamp()
        wait = 0
        if said.remaining == 0 and said.reset:
            wait = min(round(self.tuning.pause_max * US), round(said.reset * US))
            self._hold_for(round(now * US), wait)
        return wait / US

    def _hold_for(self, at: int, wait: int) -> None:
        if wait > 0:
            self.hold = max(self.hold, at + wait)
            # and paced when it ends, not a burst into a bucket Roblox just emptied
            interval = interval_us(self.rate)
            self.tat = max(self.tat, self.hold + (burst_of(self.rate) - 1) * interval)
