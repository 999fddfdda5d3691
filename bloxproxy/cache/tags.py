"""The L1 side of tags: which L1 keys carry a tag, so a purge by tag finds them.

:class:`TagIndex` maps tag → keys. The store itself knows nothing of it (its hit path stays
as cheap as it was): keys evicted or purged by other means stay listed until a sweep, and a
listed key that is gone is simply skipped. The index is bounded: past ``max_pairs``
(tag, key) pairs it sweeps out the keys the store no longer holds, and if more than half
the bound is still left, forgets its oldest tags whole (an entry under a forgotten tag is
then only purged by tag from Redis, or when it expires), so a sweep runs at most once per
``max_pairs / 2`` additions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["TagIndex"]


class TagIndex:
    """Tag → the L1 keys carrying it (see the module docstring)."""

    __slots__ = ("_keys", "_max", "_pairs", "forgotten")

    def __init__(self, max_pairs: int) -> None:
        self._keys: dict[str, set[str]] = {}
        self._max = max(1, max_pairs)
        self._pairs = 0
        self.forgotten = 0  # tags dropped whole to stay in bounds (tests look at it)

    def __len__(self) -> int:
        """(tag, key) pairs held."""
        return self._pairs

    def add(self, key: str, tags: Iterable[str], held: Callable[[str], bool]) -> None:
        """``key`` carries ``tags``; ``held(key)`` says whether the store still has a key
        (asked only when the index sweeps)."""
        index = self._keys
        for tag in tags:
            keys = index.get(tag)
            if keys is None:
                index[tag] = keys = set()
            if key not in keys:
                keys.add(key)
                self._pairs += 1
        if self._pairs > self._max:
            self._sweep(held)

    def pop(self, tag: str) -> set[str]:
        """The keys listed under ``tag``, no longer listed."""
        keys = self._keys.pop(tag, set())
        self._pairs -= len(keys)
        return keys

    def keys(self, tag: str) -> frozenset[str]:
        return frozenset(self._keys.get(tag, ()))

    def clear(self) -> None:
        self._keys.clear()
        self._pairs = 0

    def _sweep(self, held: Callable[[str], bool]) -> None:
        index = self._keys
        for tag in list(index):
            keys = index[tag]
            gone = [k for k in keys if not held(k)]
            keys.difference_update(gone)
            self._pairs -= len(gone)
            if not keys:
                del index[tag]
        while index and self._pairs > self._max // 2:
            oldest = next(iter(index))  # dicts keep insertion order
            self._pairs -= len(index.pop(oldest))
            self.forgotten += 1
