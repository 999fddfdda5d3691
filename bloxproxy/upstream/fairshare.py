"""Fair shares of a scope's upstream budget: who gets the next slot when requests wait.

Requests waiting for a slot of one scope (:mod:`.limiter`) queue per client (the
``Caller.client`` identity: ``key:<hash>`` of an access key, else ``ip:<address>``), and the
slots go round the clients by deficit round robin (Shreedhar and Varghese, "Efficient fair
queuing using deficit round robin", SIGCOMM 1995): each turn a client earns its weight
(``Caller.weight``, 1.0 by default) in credit and is served one slot per whole credit. A
client with 1,000 queued misses (a cache-buster's random query strings) gets its share, one
in N clients' worth, and the others theirs; within a client, first come, first served.

A pure structure: no clock, no I/O. Items that gave up (a waiter past its deadline, a
cancelled request) stay where they are and are skipped when they come up (``live``), at no
cost to their client's credit.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["MIN_WEIGHT", "FairQueue"]

T = TypeVar("T")
MIN_WEIGHT = 1e-3  # a zero or negative weight would never be served


def _always(item: object) -> bool:
    return True


class FairQueue(Generic[T]):
    """Per-client FIFO queues served by weighted deficit round robin."""

    __slots__ = ("_credit", "_fresh", "_queues", "_ring", "_size", "_weight")

    def __init__(self) -> None:
        self._queues: dict[str, deque[T]] = {}
        self._weight: dict[str, float] = {}
        self._credit: dict[str, float] = {}
        self._ring: deque[str] = deque()  # clients with something queued, in turn order
        self._fresh = True  # the client at the head has not had its credit for this turn
        self._size = 0

    def __len__(self) -> int:
        """Items queued, those that gave up but were not reached yet included."""
        return self._size

    @property
    def clients(self) -> int:
        """Clients with something queued."""
        return len(self._ring)

    def push(self, client: str, item: T, weight: float = 1.0) -> None:
        """Queue ``item`` for ``client``, whose weight becomes ``weight``."""
        queue = self._queues.get(client)
        if queue is None:
            queue = self._queues[client] = deque()
            self._credit[client] = 0.0
            self._ring.append(client)
        queue.append(item)
        self._weight[client] = max(MIN_WEIGHT, weight) if math.isfinite(weight) else 1.0
        self._size += 1

    def pop(self, live: Callable[[T], bool] = _always) -> T | None:
        """The next item to serve (None: nothing live is queued)."""
        idle_turns = 0
        while self._ring:
            client = self._ring[0]
            queue = self._queues[client]
            while queue and not live(queue[0]):
                queue.popleft()
                self._size -= 1
            if not queue:
                self._leave(client)
                idle_turns = 0
                continue
            if self._fresh:  # its turn begins: this turn's credit
                self._credit[client] += self._weight[client]
                self._fresh = False
            if self._credit[client] >= 1.0:
                self._credit[client] -= 1.0
                self._size -= 1
                item = queue.popleft()
                if not queue:
                    self._leave(client)
                return item
            self._ring.rotate(-1)  # not enough credit yet: the next client's turn
            self._fresh = True
            idle_turns += 1
            if idle_turns >= len(self._ring):
                self._skip_rounds()
                idle_turns = 0
        return None

    def _leave(self, client: str) -> None:
        """An emptied queue leaves the ring with its credit (DRR keeps none for idle ones)."""
        del self._queues[client], self._weight[client], self._credit[client]
        self._ring.popleft()  # (only the head is ever served or found empty)
        self._fresh = True

    def _skip_rounds(self) -> None:
        """A whole round served nobody (every weight below 1): give every client the credit
        of the rounds it would take until one can be served, at once."""
        rounds = min(math.ceil((1.0 - self._credit[c]) / self._weight[c]) - 1 for c in self._ring)
        if rounds > 0:
            for c in self._ring:
                self._credit[c] += rounds * self._weight[c]
