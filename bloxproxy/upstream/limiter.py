"""The upstream rate limiter: one budget per scope (a service, or a rule's named bucket).

Every attempt takes a slot (``limits.upstream.rate``, per-scope ``rates``). Locally a scope
is an ``aiolimiter`` leaky bucket; with ``limits.upstream.shared`` and Redis it is a GCRA
bucket in Redis (:mod:`bloxproxy.ratelimit`), so N replicas send ``rate``/s together, and
when Redis fails the local one takes over for a few seconds. A request that would wait
longer than ``limits.upstream.max_wait`` is refused with a 503
:class:`~bloxproxy.errors.Unavailable` (``upstream_busy``, ``Retry-After`` one slot).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiolimiter import AsyncLimiter

from ..errors import StoreUnavailable, Unavailable

if TYPE_CHECKING:
    from ..config import Config
    from ..ratelimit import RedisBuckets

__all__ = ["Limiter"]

log = logging.getLogger("bloxproxy.upstream")


def rate_of(config: Config, scope: str) -> float:
    up = config.limits.upstream
    return up.rates.get(scope, up.rate)


class Limiter:
    """Per-scope upstream rate limits (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        shared: RedisBuckets | None = None,
    ) -> None:
        self._config = config
        self._clock, self._sleep = clock, sleep
        self.shared = shared
        self._shared_retry_at = 0.0
        self._local: dict[str, AsyncLimiter] = {}

    def reload(self, config: Config) -> None:
        changed = config.limits.upstream != self._config.limits.upstream
        self._config = config
        if changed:
            self._local.clear()

    def _limiter(self, scope: str) -> AsyncLimiter:
        limiter = self._local.get(scope)
        if limiter is None:
            rate = rate_of(self._config, scope)
            limiter = AsyncLimiter(rate, 1.0) if rate >= 1 else AsyncLimiter(1, 1.0 / rate)
            self._local[scope] = limiter
        return limiter

    def next_slot_in(self, scope: str) -> float:
        """Seconds until a slot of ``scope`` is free for a new request (0.0: one is free
        now); the micro-batcher keeps a batch filling meanwhile. An estimate from the local
        bucket (one slot's time when it is full), also when the budget is shared."""
        limiter = self._limiter(scope)
        if limiter.has_capacity():
            return 0.0
        return limiter.time_period / limiter.max_rate

    async def acquire(self, scope: str) -> None:
        """Take a slot for one attempt; Unavailable when none comes within ``max_wait``."""
        max_wait = self._config.limits.upstream.max_wait
        if self.shared is not None and self._clock() >= self._shared_retry_at:
            try:
                await self._acquire_shared(scope, max_wait)
                return
            except StoreUnavailable as exc:
                # Fall back to the local limiter; try Redis again in a few seconds.
                if not self._shared_retry_at:
                    log.warning("shared upstream budget unavailable, limiting locally: %s", exc)
                self._shared_retry_at = self._clock() + 5.0
        limiter = self._limiter(scope)
        if limiter.has_capacity():
            await limiter.acquire()  # no wait: spare the timeout's set-up
            return
        try:
            async with asyncio.timeout(max_wait):
                await limiter.acquire()
        except TimeoutError:
            raise Unavailable(
                f"too many requests queued for {scope}",
                "upstream_busy",
                limiter.time_period / limiter.max_rate,  # one slot
            ) from None

    async def _acquire_shared(self, scope: str, max_wait: float) -> None:
        assert self.shared is not None
        deadline = self._clock() + max_wait
        while True:
            rate = rate_of(self._config, scope)
            decision = await self.shared.take(scope, rate, max(1, math.ceil(rate)))
            if decision.allowed:
                self._shared_retry_at = 0.0
                return
            if self._clock() + decision.retry_after > deadline:
                raise Unavailable(
                    f"the shared upstream budget for {scope} is used up",
                    "upstream_busy",
                    decision.retry_after,
                )
            await self._sleep(decision.retry_after)
