"""One cached upstream answer, and its byte form for Redis.

The in-process L1 keeps :class:`Entry` objects as they are; the Redis L2 keeps
:meth:`Entry.to_bytes`. The byte form is deliberately not pickle (a shared Redis must never
be able to run code in a replica) and carries a format version, so a replica that reads
data written by another version gets a clean :class:`ValueError`, i.e. a cache miss.

Byte layout (version 1)::

    b"BXP\\x00" | orjson array header | b"\\n" | raw body

with the header ``[1, status, stored_at, ttl, swr, sie, etag, len(body), [[name, value], ...]]``.
orjson escapes control characters inside strings, so the first ``\\n`` always ends the header.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "ENTRY_OVERHEAD",
    "FORMAT_VERSION",
    "HEADER_OVERHEAD",
    "KEPT_HEADERS",
    "PER_CALLER_HEADERS",
    "Entry",
    "Row",
    "make_etag",
]

FORMAT_VERSION = 1
# What a stored answer keeps of the upstream headers (lower-case names): the rest describes
# the moment of the call (rate-limit counters, Roblox machine ids, cookies) and must not be
# replayed. A remembered answer (front.FastEntry, front.SharedFast) repeats these too.
KEPT_HEADERS = frozenset({"content-type", "content-language"})
# Response headers about the caller rather than the resource (lower-case names): a cookie
# set for one call, its CSRF token, Roblox's challenge for it, authentication results.
# Only the caller whose upstream call drew them gets them; a coalesced follower never
# does, whatever the status (a stored answer keeps KEPT_HEADERS only, so a hit never does).
PER_CALLER_HEADERS = frozenset(
    {
        "set-cookie",
        "set-cookie2",
        "x-csrf-token",
        "rblx-challenge-id",
        "rblx-challenge-type",
        "rblx-challenge-metadata",
        "authentication-info",
        "proxy-authentication-info",
    }
)
_MAGIC = b"BXP\x00"

# Memory of one cached entry besides its body, etag and header text, measured once with
# tracemalloc (CPython 3.11, 64-bit): 20 000 entries built by Entry.from_bytes (fresh float
# and str objects, as from Redis or a parsed response) stored in a MemoryStore under
# 40-character keys, so the store's own structures count too (then cachetools' LRUCache:
# a data dict, a size dict and an OrderedDict; MemoryStore now keeps one OrderedDict, so
# the figure errs high). Measured ~502 bytes per entry: Entry with slots ~100, bytes/str
# object headers ~80, four floats ~96, key str ~90, three dict/OrderedDict slots and the
# size int ~140.
# Through the whole proxy (tracemalloc over 20 000 clean-route misses: entry, rendering,
# longer keys, the front door's remembered answers) it came to ~700 bytes per entry, and
# the budget is meant to bound what the process really holds: 700.
ENTRY_OVERHEAD = 700
# Each kept header costs a 2-tuple and two str objects besides its text (~170 bytes
# measured the same way with five typical headers; ~105 when names are shared constants).
HEADER_OVERHEAD = 170


# Entry.row(): status, body, stored_at, ttl, swr, sie, etag, hard expiry, *headers (flat).
Row = tuple[Any, ...]
_FIELDS = (
    "status",
    "headers",
    "body",
    "stored_at",
    "ttl",
    "stale_while_revalidate",
    "stale_if_error",
    "etag",
)
_ROW_FIELDS = tuple(f for f in _FIELDS if f != "headers")  # the first seven items of a row
ROW_STORED_AT = 2
ROW_EXPIRY = 7


def make_etag(body: bytes) -> str:
    """Strong ETag for ``body``: a quoted 24-hex-digit BLAKE2b digest."""
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


@dataclass(frozen=True, slots=True)
class Entry:
    """One cached upstream answer.

    ``stored_at`` is wall-clock epoch seconds (replicas share Redis, so a monotonic clock
    would not do). The entry is fresh for ``ttl`` seconds, may then be served stale while
    revalidating for ``stale_while_revalidate`` seconds or on upstream error for
    ``stale_if_error`` seconds, and after :meth:`hard_expiry` nobody may use it.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float
    ttl: float
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    etag: str = ""

    def __post_init__(self) -> None:
        _check(
            self.status,
            self.stored_at,
            self.ttl,
            self.stale_while_revalidate,
            self.stale_if_error,
        )

    def age(self, now: float) -> float:
        """Seconds since the answer was fetched (never negative, even with clock skew)."""
        return max(0.0, now - self.stored_at)

    def is_fresh(self, now: float) -> bool:
        return now - self.stored_at < self.ttl

    def hard_expiry(self) -> float:
        """Epoch seconds after which the entry may not be used at all, not even stale."""
        return self.stored_at + self.ttl + max(self.stale_while_revalidate, self.stale_if_error)

    def size(self) -> int:
        """Approximate bytes this entry holds in memory (the L1 byte budget unit)."""
        return row_size(self.row())

    def row(self) -> Row:
        """The entry as one flat tuple of atomic values (the L1 form, see :mod:`.store`):
        status, body, stored_at, ttl, swr, sie, etag, :meth:`hard_expiry`, then the headers
        as name, value, name, value …

        Flat on purpose: CPython's collector untracks a tuple only once everything in it is
        untracked, one nesting level per pass, and a row that is still tracked when it
        reaches the old generation stays there until a full collection walks it. A tuple
        of atoms only is untracked the first time a collection sees it.
        """
        return (
            self.status,
            self.body,
            self.stored_at,
            self.ttl,
            self.stale_while_revalidate,
            self.stale_if_error,
            self.etag,
            self.hard_expiry(),
            *[x for pair in self.headers for x in pair],
        )

    @classmethod
    def from_row(cls, row: Row) -> Entry:
        """The entry back from :meth:`row` (trusted: it was validated when made)."""
        entry = object.__new__(cls)
        for name, value in zip(_ROW_FIELDS, row, strict=False):
            object.__setattr__(entry, name, value)
        object.__setattr__(entry, "headers", tuple(zip(row[8::2], row[9::2], strict=True)))
        return entry

    def with_headers(self, headers: tuple[tuple[str, str], ...]) -> Entry:
        """This entry with other headers (``dataclasses.replace`` costs several times more)."""
        entry = object.__new__(Entry)
        for name in _FIELDS:
            object.__setattr__(entry, name, getattr(self, name))
        object.__setattr__(entry, "headers", headers)
        return entry

    def for_another_caller(self) -> Entry:
        """This answer as a caller other than the one whose call drew it may see it: without
        :data:`PER_CALLER_HEADERS`."""
        kept = tuple((k, v) for k, v in self.headers if k.lower() not in PER_CALLER_HEADERS)
        return self if len(kept) == len(self.headers) else self.with_headers(kept)

    def to_bytes(self) -> bytes:
        header = orjson.dumps(
            [
                FORMAT_VERSION,
                self.status,
                self.stored_at,
                self.ttl,
                self.stale_while_revalidate,
                self.stale_if_error,
                self.etag,
                len(self.body),
                self.headers,
            ]
        )
        return b"".join((_MAGIC, header, b"\n", self.body))

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Entry:
        """Parse :meth:`to_bytes` output; :class:`ValueError` for anything else."""
        if type(data) is not bytes:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise ValueError(f"expected bytes, got {type(data).__name__}")
            data = bytes(data)
        if not data.startswith(_MAGIC):
            raise ValueError("not a bloxproxy cache entry (bad magic)")
        end = data.find(b"\n", len(_MAGIC))
        if end < 0:
            raise ValueError("truncated cache entry (no header end)")
        try:
            header = orjson.loads(data[len(_MAGIC) : end])
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"corrupt cache entry header: {exc}") from None
        if not isinstance(header, list) or not header:
            raise ValueError("corrupt cache entry header: not a non-empty array")
        if header[0] != FORMAT_VERSION or type(header[0]) is not int:
            raise ValueError(f"unsupported cache entry version: {header[0]!r}")
        if len(header) != 9:
            raise ValueError(f"corrupt cache entry header: {len(header)} fields")
        _, status, stored_at, ttl, swr, sie, etag, body_len, raw_headers = header
        if type(status) is not int or type(body_len) is not int or type(etag) is not str:
            raise ValueError("corrupt cache entry header: bad field types")
        for number in (stored_at, ttl, swr, sie):
            if type(number) is not float and type(number) is not int:
                raise ValueError("corrupt cache entry header: bad number field")
        body = data[end + 1 :]
        if len(body) != body_len:
            raise ValueError(f"truncated cache entry: body {len(body)} of {body_len} bytes")
        if not isinstance(raw_headers, list):
            raise ValueError("corrupt cache entry header: headers not an array")
        headers: list[tuple[str, str]] = []
        for pair in raw_headers:
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or type(pair[0]) is not str
                or type(pair[1]) is not str
            ):
                raise ValueError("corrupt cache entry header: bad header pair")
            headers.append((pair[0], pair[1]))
        # __post_init__ raises ValueError for out-of-range values.
        return cls(
            status,
            tuple(headers),
            body,
            float(stored_at),
            float(ttl),
            float(swr),
            float(sie),
            etag,
        )


def _check(status: int, stored_at: float, ttl: float, swr: float, sie: float) -> None:
    """Cheap invariants that keep :meth:`Entry.hard_expiry` finite (Redis PX needs an
    integer) and guarantee that every Entry survives to_bytes/from_bytes; ValueError."""
    if not 100 <= status <= 999:
        raise ValueError(f"status out of range: {status!r}")
    if not math.isfinite(stored_at):
        raise ValueError(f"stored_at must be finite: {stored_at!r}")
    for name, value in (("ttl", ttl), ("stale_while_revalidate", swr), ("stale_if_error", sie)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and >= 0: {value!r}")


def row_size(row: Row) -> int:
    """:meth:`Entry.size` of the entry ``row`` holds."""
    n = ENTRY_OVERHEAD + len(row[1]) + len(row[6]) + HEADER_OVERHEAD * ((len(row) - 8) // 2)
    for i in range(8, len(row)):
        n += len(row[i])
    return n
