"""The cache store interface and the in-process L1 store.

A :class:`Store` maps a cache key to an :class:`~bloxproxy.cache.entry.Entry` until the
entry's :meth:`~bloxproxy.cache.entry.Entry.hard_expiry`. Freshness and staleness are the
caller's business; a store only guarantees never to return an entry past its hard expiry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from cachetools import LRUCache

from .entry import Entry

__all__ = ["MemoryStore", "Store", "StoreUnavailable"]


class StoreUnavailable(Exception):
    """The backing store (Redis) failed; the caller decides whether to degrade to L1."""


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


def _entry_size(entry: Entry) -> int:
    return entry.size()


class MemoryStore:
    """In-process LRU store bounded by approximate bytes and by entry count.

    The ``*_nowait`` methods are the synchronous fast path (a hit costs no await); the
    async :class:`Store` methods call them. Entries past their hard expiry, by ``clock``,
    are dropped when read; until then they count against the budget and are evicted by LRU
    like any other. ``len()`` counts every held entry, expired-but-unread ones included.
    """

    __slots__ = ("_cache", "_clock", "_max_bytes", "_max_entries")

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
        self._cache: LRUCache[str, Entry] = LRUCache(maxsize=max_bytes, getsizeof=_entry_size)

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def max_entries(self) -> int:
        return self._max_entries

    @property
    def bytes_used(self) -> int:
        """Sum of :meth:`Entry.size` over the held entries."""
        return int(self._cache.currsize)

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is held (expired or not), without touching its LRU position."""
        return key in self._cache

    def get_nowait(self, key: str) -> Entry | None:
        cache = self._cache
        entry = cache.get(key)  # marks the key most recently used
        if entry is None:
            return None
        if self._clock() >= entry.hard_expiry():
            del cache[key]
            return None
        return entry

    def set_nowait(self, key: str, entry: Entry) -> None:
        cache = self._cache
        if entry.size() > self._max_bytes or self._clock() >= entry.hard_expiry():
            # Not storable; the old value under key is superseded all the same.
            cache.pop(key, None)
            return
        cache[key] = entry  # evicts LRU entries until the byte budget fits
        while len(cache) > self._max_entries:
            cache.popitem()

    def delete_nowait(self, key: str) -> bool:
        """Remove ``key``; True if it held an entry not yet expired (as Redis would say)."""
        entry = self._cache.pop(key, None)
        return entry is not None and self._clock() < entry.hard_expiry()

    def delete_prefix_nowait(self, prefix: str) -> int:
        """Remove keys starting with ``prefix``; counts only entries not yet expired."""
        cache = self._cache
        now = self._clock()
        count = 0
        for key in [k for k in cache if k.startswith(prefix)]:
            entry = cache.pop(key)
            if now < entry.hard_expiry():
                count += 1
        return count

    def clear_nowait(self) -> int:
        """Remove everything; counts only entries not yet expired."""
        now = self._clock()
        count = sum(1 for entry in self._cache.values() if now < entry.hard_expiry())
        self._cache.clear()
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
