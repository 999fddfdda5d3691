"""A byte budget for upstream bodies being read at once, across all requests.

Each upstream answer is capped (``upstream.max_response_size``), but without a bound over
all of them a burst of concurrent large misses holds many bodies in memory at once — 120
distinct 7 MiB answers took a process from 0.5 to 1.2 GiB against a 256 MiB cache budget.
:class:`ByteBudget` bounds their sum (``upstream.max_inflight_bytes``): a read reserves its
bytes before they arrive (the ``Content-Length``, or each chunk of a body of unknown size)
and gives them back when the body is complete or the read failed. A reservation that cannot
be had within the wait (``limits.upstream.max_wait``) is refused, and the request gets 503
with ``Retry-After`` (or a stale answer). Waiters are served first come, first served; one
body larger than the whole budget still goes through, alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["BudgetExhausted", "ByteBudget"]


class BudgetExhausted(Exception):
    """No room in the budget within the wait."""


class ByteBudget:
    """At most ``limit`` bytes reserved at once; see the module docstring."""

    __slots__ = ("_waiters", "limit", "peak", "used")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1 byte")
        self.limit = limit
        self.used = 0  # bytes reserved now
        self.peak = 0  # the most ever reserved at once (metrics, tests)
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def size(self, n: int) -> int:
        """What a reservation of ``n`` bytes really takes (a body larger than the whole
        budget takes all of it, so it can go through once the others are done)."""
        return max(0, min(n, self.limit))

    async def take(self, n: int, wait: float) -> int:
        """Reserve ``n`` bytes, waiting at most ``wait`` seconds (BudgetExhausted); returns
        what was reserved, to be given back with :meth:`give`."""
        n = self.size(n)
        if not self._waiters and self.used + n <= self.limit:
            self._grant(n)
            return n
        if wait <= 0:
            raise BudgetExhausted
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        item = (n, future)
        self._waiters.append(item)
        try:
            async with asyncio.timeout(wait):
                await future
        except TimeoutError:
            self._withdraw(item)
            raise BudgetExhausted from None
        except BaseException:  # cancelled: the reservation must not outlive the caller
            self._withdraw(item)
            raise
        return n

    def give(self, n: int) -> None:
        """Give back a reservation made by :meth:`take`."""
        self.used -= n
        self._wake()

    def _withdraw(self, item: tuple[int, asyncio.Future[None]]) -> None:
        n, future = item
        if future.done() and not future.cancelled():
            self.give(n)  # granted just as we gave up: hand it on
            return
        with contextlib.suppress(ValueError):  # (already taken off by _wake)
            self._waiters.remove(item)
        self._wake()  # a smaller waiter behind us may fit now

    def _grant(self, n: int) -> None:
        self.used += n
        if self.used > self.peak:
            self.peak = self.used

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self.used + waiters[0][0] <= self.limit:
            n, future = waiters.popleft()
            if not future.done():
                self._grant(n)
                future.set_result(None)
