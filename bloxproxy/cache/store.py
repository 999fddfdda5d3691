"""The cache store interface and the in-process L1 store.

A :class:`Store` maps a cache key to an :class:`~bloxproxy.cache.entry.Entry` until the
entry's :meth:`~bloxproxy.cache.entry.Entry.hard_expiry`. Freshness and staleness are the
caller's business; a store only guarantees never to return an entry past its hard expiry.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Protocol

from ..errors import StoreUnavailable
from .entry import ROW_EXPIRY, ROW_STORED_AT, Entry, Row, row_size

__all__ = ["MemoryStore", "Store", "StoreUnavailable"]


class Store(Protocol):
    async def get(self, key: str) -> Entry | None:
        """The entry under ``key``; None when absent or past its hard expiry."""
        ...

    async def set(self, key: str, entry: Entry) -> None:
        """Store ``entry`` until its hard expiry (not at all if that has already passed)."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True if it was there."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every key starting with ``prefix`` (taken literally); how many."""
        ...

    async def clear(self) -> int:
        """Remove every key of this store (and nothing else); how many."""
        ...

    async def close(self) -> None: ...


class MemoryStore:
    """In-process LRU store bounded by approximate bytes and by entry count.

    The ``*_nowait`` methods are the synchronous fast path (a hit costs no await); the
    async :class:`Store` methods call them. Entries past their hard expiry, by ``clock``,
    are dropped when read; until then they count against the budget and are evicted by LRU
    like any other. ``len()`` counts every held entry, expired-but-unread ones included.

    Entries are held as flat tuples of atomic values (:meth:`Entry.row`), not as
    :class:`Entry` objects: CPython's cyclic garbage collector stops tracking such a tuple
    the first time it sees one, while every ``Entry`` (or a nested tuple, untracked one
    level per pass) would be walked by each full collection (35 ms for 100,000 entries on
    the development machine: a latency spike every few seconds under a stream of misses).
    ``get_nowait`` builds the ``Entry`` when asked.
    """

    __slots__ = ("_bytes", "_cache", "_clock", "_max_bytes", "_max_entries")

    def __init__(
        self,
        max_bytes: int,
        max_entries: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes < 0 or max_entries < 0:
            raise ValueError("max_bytes and max_entries must be >= 0 (0: store nothing)")
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._clock = clock
        # One OrderedDict, least recently used first, and the byte count beside it: a row's
        # size is worked out again from the row when it leaves, so nothing else is held
        # per entry (cachetools' LRUCache kept three dicts, ~110 bytes more per entry, and
        # did its bookkeeping in Python: a store cost 3.5 µs, now 2.2).
        self._cache: OrderedDict[str, Row] = OrderedDict()
        self._bytes = 0

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def max_entries(self) -> int:
        return self._max_entries

    @property
    def bytes_used(self) -> int:
        """Sum of :meth:`Entry.size` over the held entries."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is held (expired or not), without touching its LRU position."""
        return key in self._cache

    def get_nowait(self, key: str) -> Entry | None:
        row = self._row(key)
        return None if row is None else Entry.from_row(row)

    def stored_at_nowait(self, key: str) -> float | None:
        """The ``stored_at`` of the entry under ``key`` (None when absent), without
        building the entry; it counts as a use for the LRU order, like a get."""
        row = self._row(key)
        return None if row is None else float(row[ROW_STORED_AT])

    def _row(self, key: str) -> Row | None:
        cache = self._cache
        row = cache.get(key)
        if row is None:
            return None
        if self._clock() >= row[ROW_EXPIRY]:
            del cache[key]
            self._bytes -= row_size(row)
            return None
        cache.move_to_end(key)  # the most recently used
        return row

    def set_nowait(self, key: str, entry: Entry) -> None:
        if not self._max_entries:
            return  # holds nothing (L1 off)
        cache = self._cache
        old = cache.pop(key, None)  # superseded, whether the new one is stored or not
        if old is not None:
            self._bytes -= row_size(old)
        row = entry.row()
        size = row_size(row)
        if size > self._max_bytes or self._clock() >= row[ROW_EXPIRY]:
            return  # not storable
        room = self._max_bytes - size
        while cache and (self._bytes > room or len(cache) >= self._max_entries):
            self._bytes -= row_size(cache.popitem(last=False)[1])  # the least recently used
        cache[key] = row
        self._bytes += size

    def delete_nowait(self, key: str) -> bool:
        """Remove ``key``; True if it held an entry not yet expired (as Redis would say)."""
        row = self._cache.pop(key, None)
        if row is None:
            return False
        self._bytes -= row_size(row)
        expiry: float = row[ROW_EXPIRY]
        return self._clock() < expiry

    def delete_prefix_nowait(self, prefix: str) -> int:
        """Remove keys starting with ``prefix``; counts only entries not yet expired."""
        cache = self._cache
        now = self._clock()
        count = 0
        for key in [k for k in cache if k.startswith(prefix)]:
            row = cache.pop(key)
            self._bytes -= row_size(row)
            if now < row[ROW_EXPIRY]:
                count += 1
        return count

    def delete_keys_nowait(self, keys: Collection[str]) -> int:
        """Remove ``keys`` and what is memoized beside them (``key + " |…"``: renderings,
        encodings) in one pass over the store; counts only the keys' entries not yet
        expired."""
        cache = self._cache
        now = self._clock()
        count = 0
        for key in keys:
            row = cache.pop(key, None)
            if row is not None:
                self._bytes -= row_size(row)
                count += now < row[ROW_EXPIRY]
        beside = []
        for name in cache:
            i = name.find(" |")
            while i >= 0:
                if name[:i] in keys:
                    beside.append(name)
                    break
                i = name.find(" |", i + 2)
        for name in beside:
            self._bytes -= row_size(cache.pop(name))
        return count

    def clear_nowait(self) -> int:
        """Remove everything; counts only entries not yet expired."""
        now = self._clock()
        count = sum(1 for row in self._cache.values() if now < row[ROW_EXPIRY])
        self._cache.clear()
        self._bytes = 0
        return count

    async def get(self, key: str) -> Entry | None:
        return self.get_nowait(key)

    async def set(self, key: str, entry: Entry) -> None:
        self.set_nowait(key, entry)

    async def delete(self, key: str) -> bool:
        return self.delete_nowait(key)

    async def delete_prefix(self, prefix: str) -> int:
        return self.delete_prefix_nowait(prefix)

    async def clear(self) -> int:
        return self.clear_nowait()

    async def close(self) -> None:
        self.clear_nowait()
