"""A byte budget for upstream bodies held at once, across all requests.

Each upstream answer is capped (``upstream.max_response_size``), but without a bound over
all of them a burst of concurrent large misses holds many bodies in memory at once — 120
distinct 7 MiB answers took a process from 0.5 to 1.2 GiB against a 256 MiB cache budget.
:class:`ByteBudget` bounds their sum (``upstream.max_inflight_bytes``). Each upstream call
has a :class:`Lease` on it: the body reserves its size before its first byte arrives (see
:func:`bloxproxy.upstream.client.read_body`) and the reservation lasts until every holder
of the lease is done — the call itself, and the request that answers its client with it,
once that answer has been written out (the front door releases it). A body in memory is
therefore always counted, from the first byte read to the last byte written. A reservation
that cannot be had within the wait (``limits.upstream.max_wait``) is refused, and the
request gets 503 with ``Retry-After`` (or a stale answer). Waiters are served first come,
first served; one body larger than the whole budget still goes through, alone.

When a burst is over (nothing reserved any more after more than ``trim_after`` bytes had
been), ``on_idle`` runs once: the app gives memory back to the system there
(:func:`bloxproxy.upstream.inflight.release_free_memory`), since glibc's allocator keeps the
freed heap of a burst otherwise (measured: 820 MiB kept, 310 after a trim, with 256 MiB of
cache; ``bench/inflight_burst.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
from collections import deque
from collections.abc import Callable

__all__ = ["BudgetExhausted", "ByteBudget", "Lease", "release_free_memory"]


class BudgetExhausted(Exception):
    """No room in the budget within the wait."""


class ByteBudget:
    """At most ``limit`` bytes reserved at once; see the module docstring."""

    __slots__ = ("_burst", "_on_idle", "_trim_after", "_waiters", "limit", "peak", "used")

    def __init__(
        self,
        limit: int,
        *,
        on_idle: Callable[[], object] | None = None,
        trim_after: int = 16 * 1024 * 1024,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1 byte")
        self.limit = limit
        self.used = 0  # bytes reserved now
        self.peak = 0  # the most ever reserved at once (metrics, tests)
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._on_idle = on_idle
        self._trim_after = trim_after
        self._burst = 0  # the most reserved at once since the budget was last idle

    @property
    def waiting(self) -> int:
        """Reservations waiting for room."""
        return len(self._waiters)

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
        if not self.used and self._burst > self._trim_after and self._on_idle is not None:
            self._burst = 0
            self._on_idle()

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
        if self.used > self._burst:
            self._burst = self.used
            if self.used > self.peak:
                self.peak = self.used

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self.used + waiters[0][0] <= self.limit:
            n, future = waiters.popleft()
            if not future.done():
                self._grant(n)
                future.set_result(None)


class Lease:
    """One upstream call's hold on a :class:`ByteBudget` (see the module docstring).

    It starts with one holder, the call; :meth:`hold` adds one (the request that will
    write the answer out), :meth:`release` drops one, and the last release gives the
    reservation back. :meth:`reserve` is made per attempt: a retry replaces the failed
    attempt's reservation, and a failed read gives its bytes back at once."""

    __slots__ = ("_budget", "_holders", "reserved")

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self._holders = 1
        self.reserved = 0

    async def reserve(self, n: int, wait: float) -> None:
        self.unreserve()
        self.reserved = await self._budget.take(n, wait)

    def unreserve(self) -> None:
        if self.reserved:
            n, self.reserved = self.reserved, 0
            self._budget.give(n)

    def hold(self) -> None:
        self._holders += 1

    def release(self) -> None:
        self._holders -= 1
        if self._holders <= 0:
            self.unreserve()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim  # glibc only
    except (OSError, AttributeError, TypeError):
        return None
    return trim


def release_free_memory() -> bool:
    """Ask the C allocator to give freed memory back to the system (glibc's
    ``malloc_trim``); False where there is no such call (musl, macOS)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
