"""What a fetch gives back: an upstream answer, fresh or cached, and how the cache got it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .entry import Entry

if TYPE_CHECKING:
    from ..upstream.inflight import Lease

__all__ = ["Fetched"]


class Fetched:
    """An upstream answer (fresh or cached) and what the cache did to get it.

    ``result`` is the ``X-Cache`` value: HIT, MISS, STALE, BYPASS or COALESCED. ``key`` is set
    when the entry is (or was just) in the cache. ``lease`` is the hold on the byte budget of
    the upstream body behind this answer, for the request that writes it out (the front
    door releases it once written; see :mod:`bloxproxy.upstream.inflight`).
    """

    __slots__ = (
        "cache_time",
        "detail",
        "entry",
        "fast_ok",
        "key",
        "lease",
        "result",
        "shared",
        "stored",
        "tags",
        "upstream",
    )

    def __init__(
        self,
        entry: Entry,
        result: str,
        *,
        key: str = "",
        stored: bool = False,
        shared: bool = True,
        detail: str = "",
    ) -> None:
        self.entry = entry
        self.result = result  # HIT | MISS | STALE | BYPASS | COALESCED
        self.key = key
        self.stored = stored
        self.shared = shared
        self.detail = detail
        self.upstream = 0.0  # seconds the upstream call behind this answer took (0: none)
        self.fast_ok = False  # may the front door remember this answer (a hit of a plain GET)?
        self.cache_time = 0.0  # seconds the L1/L2 lookup took
        self.lease: Lease | None = None
        self.tags: tuple[str, ...] = ()  # the entry's entity tags (bloxproxy.tagging)

    @property
    def cached(self) -> bool:
        """Is the entry (or was it just) stored under ``key``?"""
        return bool(self.key) and self.entry.ttl > 0

    def coalesced(self) -> Fetched:
        """This answer as a coalesced follower gets it: without the per-caller headers
        (cookies, CSRF tokens: :data:`~bloxproxy.cache.entry.PER_CALLER_HEADERS`), and
        without the leader's lease."""
        # A waiter handed the stale-if-error stand-in got stale content: it must say so.
        result = "STALE" if self.result == "STALE" else "COALESCED"
        out = Fetched(
            self.entry.for_another_caller(),
            result,
            key=self.key,
            stored=self.stored,
            shared=self.shared,
            detail=self.detail,
        )
        out.upstream = self.upstream
        out.cache_time = self.cache_time
        out.tags = self.tags
        return out
