"""Token buckets for client limits and shared upstream budgets, in memory or in Redis.

Both implementations are GCRA (the "generic cell rate algorithm", a token bucket stored as
one timestamp): ``rate`` tokens per second, up to ``burst`` at once. A bucket answers a
:class:`Decision` — allowed or not, tokens left, when to retry, when it is full again —
which is everything the ``RateLimit`` headers need. The Redis version runs as one Lua
script, so N replicas consume one budget atomically (no read-modify-write from Python). A
``dry_run`` take answers as a take would, and takes nothing (the failed-auth throttle asks
it of successful attempts). :class:`FallbackBuckets` is Redis's buckets with memory ones
standing in while Redis is away.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import LRUCache

from .errors import StoreUnavailable
from .redisconn import REDIS_ERRORS, RedisClient, SlotScript

log = logging.getLogger("bloxproxy.ratelimit")


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int  # the burst size
    remaining: int  # whole tokens left after this request
    retry_after: float  # seconds until one token is available (0 when allowed)
    reset: float  # seconds until the bucket is full again


_US = 1_000_000  # buckets count in whole microseconds


def _interval_us(rate: float) -> int:
    return max(1, math.floor(_US / rate + 0.5))  # as the Lua script rounds


def _decide(
    tat: int, now: int, interval: int, burst: int, cost: float
) -> tuple[Decision, int | None]:
    """GCRA step in integer microseconds: the decision and the new theoretical arrival time
    (None: unchanged). Integers, because float seconds near 1.7e9 (epoch clocks, Redis
    TIME) carry ~1e-7 s of rounding per step, enough to lose the last token of a burst."""
    tat = max(tat, now)
    new_tat = tat + math.floor(cost * interval + 0.5)
    allow_at = new_tat - burst * interval
    if now < allow_at:  # would exceed the burst
        remaining = max(0, (now - (tat - burst * interval)) // interval)
        return Decision(False, burst, remaining, (allow_at - now) / _US, (tat - now) / _US), None
    remaining = max(0, (now - allow_at) // interval)
    return Decision(True, burst, remaining, 0.0, (new_tat - now) / _US), new_tat


class MemoryBuckets:
    """Per-key GCRA buckets in process, the least recently used forgotten past ``max_keys``."""

    __slots__ = ("_burst", "_clock", "_interval", "_tat")

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self._interval, self._burst, self._clock = _interval_us(rate), burst, clock
        self._tat: LRUCache[str, int] = LRUCache(maxsize=max_keys)

    def take(self, key: str, cost: float = 1.0, *, dry_run: bool = False) -> Decision:
        now = round(self._clock() * _US)
        decision, new_tat = _decide(self._tat.get(key, now), now, self._interval, self._burst, cost)
        if new_tat is not None and not dry_run:
            self._tat[key] = new_tat
        return decision


# KEYS[1] bucket key; ARGV: rate/s, burst, cost, 1 for a dry run (nothing stored). Time
# comes from Redis (TIME) so replicas with skewed clocks agree; like _decide, it counts in
# whole microseconds (exact in a Lua double up to 2^53). Returns {allowed, remaining,
# retry_after_us, reset_us}.
_GCRA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = math.max(1, math.floor(1000000 / rate + 0.5))
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + math.floor(cost * interval + 0.5)
local allow_at = new_tat - burst * interval
if now < allow_at then
  local remaining = math.max(0, math.floor((now - (tat - burst * interval)) / interval))
  return {0, remaining, allow_at - now, tat - now}
end
if ARGV[4] ~= '1' then
  local ttl = math.ceil((new_tat - now) / 1000) + 1000
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl)
end
local remaining = math.max(0, math.floor((now - allow_at) / interval))
return {1, remaining, 0, new_tat - now}
"""


class RedisBuckets:
    """GCRA buckets in Redis, one atomic script call per decision."""

    __slots__ = ("_client", "_prefix", "_script")

    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._client, self._prefix = client, prefix
        self._script = SlotScript(client, _GCRA)

    async def take(
        self, key: str, rate: float, burst: int, cost: float = 1.0, *, dry_run: bool = False
    ) -> Decision:
        try:
            allowed, remaining, retry_us, reset_us = await self._script(
                keys=[self._prefix + key], args=[rate, burst, cost, 1 if dry_run else 0]
            )
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"redis rate limit failed: {exc}") from exc
        return Decision(
            bool(allowed), burst, int(remaining), int(retry_us) / _US, int(reset_us) / _US
        )


class FallbackBuckets:
    """``rate``/``burst`` buckets in Redis when given (shared by every replica), in memory
    without it — and while it is away: after a failure Redis is left alone for
    :attr:`REDIS_PAUSE` seconds (the first failure is logged, naming ``what``)."""

    REDIS_PAUSE = 5.0

    __slots__ = ("_burst", "_clock", "_down_until", "_memory", "_rate", "_redis", "_what")

    def __init__(
        self,
        rate: float,
        burst: int,
        redis: RedisBuckets | None,
        clock: Callable[[], float] = time.monotonic,
        what: str = "rate limits",
    ) -> None:
        self._rate, self._burst, self._redis, self._clock, self._what = (
            rate,
            burst,
            redis,
            clock,
            what,
        )
        self._memory = MemoryBuckets(rate, burst, clock)
        self._down_until = 0.0

    async def take(self, key: str, cost: float = 1.0, *, dry_run: bool = False) -> Decision:
        if self._redis is not None and self._clock() >= self._down_until:
            try:
                return await self._redis.take(key, self._rate, self._burst, cost, dry_run=dry_run)
            except StoreUnavailable as exc:
                if not self._down_until:
                    log.warning("%s fall back to memory: %s", self._what, exc)
                self._down_until = self._clock() + self.REDIS_PAUSE
        return self._memory.take(key, cost, dry_run=dry_run)
