"""Compressed answers for clients that accept them (``server.compression``): which encoding
a request gets, which answers may be compressed, and the compressing itself.

The decisions are pure (:func:`negotiate`, :func:`compressible`); :class:`Compression` is
``server.compression`` compiled once, with the negotiation of each ``Accept-Encoding``
value memoized (bounded: what clients send is unbounded). The front door
(:mod:`bloxproxy.front`) asks it for every answer; a cached answer's compressed body is made
once per encoding and kept beside its L1 entry (``Fetcher.encoded``), so a hit only looks
it up. The ETag of a compressed answer is the identity one with the encoding appended
(:func:`bloxproxy.cache.decide.encoded_etag`).
"""

from __future__ import annotations

import gzip

import brotli

from .config import CompressionConfig

__all__ = ["Compression", "compressible", "negotiate"]

_MAX_ELEMENTS = 32  # Accept-Encoding members looked at (a real client sends a handful)
_MEMO_MAX = 256  # distinct Accept-Encoding values remembered
_MEMO_VALUE_MAX = 200  # longer values are negotiated every time, never remembered
_ALIASES = {"x-gzip": "gzip"}  # RFC 9110 §8.4.1.3


def _weight(params: list[str]) -> float:
    """The ``q`` of one Accept-Encoding member (1 without one; -1: unreadable)."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() != "q":
            continue
        value = value.strip()
        if not value or len(value) > 5 or not all(c.isdigit() or c == "." for c in value):
            return -1.0
        try:
            q = float(value)
        except ValueError:
            return -1.0
        return q if 0.0 <= q <= 1.0 else -1.0
    return 1.0


def negotiate(accept: str | None, offered: tuple[str, ...]) -> str:
    """The encoding of ``offered`` (preferred first) a request with this
    ``Accept-Encoding`` gets: the one it weighs highest, ``q=0`` meaning "not this one",
    ``*`` standing for any it does not name (RFC 9110 §12.5.3); "" for identity (no
    header, nothing acceptable, or a value we cannot read)."""
    if not accept or not offered:
        return ""
    weights: dict[str, float] = {}
    star = -1.0
    for member in accept.split(",")[:_MAX_ELEMENTS]:
        coding, *params = member.split(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = _weight(params)
        if q < 0:
            continue  # unreadable: as if it were not there
        coding = _ALIASES.get(coding, coding)
        if coding == "*":
            star = q
        elif coding in offered:
            weights[coding] = max(q, weights.get(coding, -1.0))  # named twice: the higher
    best, best_q = "", 0.0
    for coding in offered:
        q = weights.get(coding, star)
        if q > best_q:
            best, best_q = coding, q
    return best


# Content types worth compressing (a Roblox image or a zip is compressed already).
_TEXT_SUFFIXES = ("+json", "+xml")
_TEXT_TYPES = frozenset(
    {"application/json", "application/javascript", "application/xml", "image/svg+xml"}
)


def compressible(content_type: str | None) -> bool:
    """Is a body of this ``Content-Type`` worth compressing: JSON, text, XML, JavaScript?"""
    if not content_type:
        return False
    media = content_type.partition(";")[0].strip().lower()
    return media.startswith("text/") or media in _TEXT_TYPES or media.endswith(_TEXT_SUFFIXES)


class Compression:
    """``server.compression`` compiled once (see the module docstring)."""

    __slots__ = ("_brotli_quality", "_gzip_level", "_memo", "min_size", "offered")

    def __init__(self, config: CompressionConfig) -> None:
        self.offered = config.encodings
        self.min_size = config.min_size
        self._gzip_level = config.gzip_level
        self._brotli_quality = config.brotli_quality
        self._memo: dict[str, str] = {}

    @classmethod
    def build(cls, config: CompressionConfig) -> Compression | None:
        return cls(config) if config.enabled and config.encodings else None

    def choose(self, accept: str | None) -> str:
        """:func:`negotiate` for this ``Accept-Encoding`` value, memoized."""
        if not accept:
            return ""
        memo = self._memo
        got = memo.get(accept)
        if got is not None:
            return got
        got = negotiate(accept, self.offered)
        if len(accept) <= _MEMO_VALUE_MAX:
            if len(memo) >= _MEMO_MAX:
                memo.clear()  # a client cycling through values: start again, stay bounded
            memo[accept] = got
        return got

    def eligible(self, status: int, body: bytes, content_type: str | None) -> bool:
        """May an answer with this status, body and type be sent compressed at all?
        (Never a bodiless status, a small body, or a type that is compressed already.)"""
        if status < 200 or status in (204, 304):
            return False
        return len(body) >= self.min_size and compressible(content_type)

    def compress(self, body: bytes, coding: str) -> bytes:
        """``body`` in ``coding`` (``br`` or ``gzip``)."""
        if coding == "br":
            data: bytes = brotli.compress(body, quality=self._brotli_quality)
            return data
        if coding == "gzip":
            return gzip.compress(body, compresslevel=self._gzip_level, mtime=0)
        raise ValueError(f"unknown encoding {coding!r}")
