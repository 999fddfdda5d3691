"""A per-client-IP rate limit for the fake Roblox upstream (off by default).

What it imitates (the sources are public; docs/ROBLOX.md collects them):

* The legacy web APIs (``*.roblox.com``) publish no numbers, but limit per client IP: a
  maintainer of a Roblox proxy answering its users' 429s: rate limits follow the IP, and
  trusted traffic fares better (github.com/askfalse/roproxy-lite issue #5).  Over the limit
  they answer 429 with the endpoint's documented error (e.g. users search ``4: Too many
  requests.``, games ``4: Too many requests have been made.``, catalog details ``8: The flood
  limit has been exceeded.`` in the official OpenAPI) and **no** ``Retry-After``: the legacy
  response headers recorded from Roblox (Roblox-Client-Tracker GraphqlHttpArtifacts) carry
  none and no ``x-ratelimit-*`` either.
* Open Cloud (``apis.roblox.com/cloud/...``) documents ``x-ratelimit-limit`` (it may list
  several windows, e.g. ``1000, 1000;w=60``), ``x-ratelimit-remaining``,
  ``x-ratelimit-reset`` (seconds until the reset, not an epoch) and ``retry-after`` on a 429
  (Roblox creator docs, ``cloud/reference/rate-limits.md``).

The model is one token bucket per client IP -- the peer address, so every connection from one
IP draws on the same bucket and the limit counts everything a proxy in front sends -- or,
with ``per_service``, one per (IP, service).  A bucket holds ``burst`` tokens and refills at
``rate`` per second on the state's injected clock; a request takes a token or, finding none,
is refused.  A refused request takes nothing (a client that keeps hammering is not punished
further; Roblox's exact policy is not public).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?)?\s*([a-z]+))?\s*$")
_EPSILON = 1e-9  # float slack: 40 refills of 1/40 s must make one token, not 0.99999...


@dataclass(frozen=True, slots=True)
class IpLimit:
    """``rate`` requests per second per client IP, in bursts of at most ``burst``."""

    rate: float
    burst: int
    per_service: bool = False  # one bucket per (IP, service) instead of per IP

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number of requests/s, not {self.rate!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError(f"burst must be an integer >= 1, not {self.burst!r}")

    @classmethod
    def parse(cls, text: str, *, burst: int | None = None, per_service: bool = False) -> IpLimit:
        """``"40/s"``, ``"40"`` (per second), ``"2400/min"``, ``"100/10s"``, ``"5000/h"``.

        ``burst`` defaults to the per-second rate rounded up (at least 1): ``40/s`` lets 40
        requests through at once, then one every 25 ms.
        """
        found = _RATE.match(text.lower())
        unit = _UNITS.get(found.group(3) or "s") if found else None
        if found is None or unit is None:
            raise ValueError(f"expected a rate like '40/s', '2400/min' or '100/10s', got {text!r}")
        count, per = float(found.group(1)), float(found.group(2) or 1)
        if per <= 0:
            raise ValueError(f"expected a rate like '40/s', got {text!r}")
        return cls.per_second(count / (per * unit), burst=burst, per_service=per_service)

    @classmethod
    def per_second(
        cls, rate: float, *, burst: int | None = None, per_service: bool = False
    ) -> IpLimit:
        """``rate`` requests/s; ``burst`` defaults to the rate rounded up (at least 1)."""
        default = max(1, math.ceil(rate - _EPSILON)) if math.isfinite(rate) else 1
        return cls(float(rate), default if burst is None else burst, per_service)

    @property
    def window(self) -> int:
        """Seconds an empty bucket needs to fill up (the ``w=`` of ``x-ratelimit-limit``)."""
        return max(1, math.ceil(self.burst / self.rate - _EPSILON))

    def limit_header(self) -> str:
        """``x-ratelimit-limit`` in Open Cloud's multi-window form: ``"40, 40;w=1"``."""
        return f"{self.burst}, {self.burst};w={self.window}"

    def to_json(self) -> dict[str, object]:
        return {"rate": self.rate, "burst": self.burst, "per_service": self.per_service}


class Verdict(NamedTuple):
    """The limiter's answer for one request."""

    allowed: bool
    remaining: int  # whole tokens left after this request
    reset: int  # seconds until the bucket is full again
    retry_after: int  # seconds until a token is back (0 when allowed)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class IpLimiter:
    """Token buckets for one :class:`IpLimit`, on an injected clock (seconds)."""

    __slots__ = ("_buckets", "_clock", "limit")

    def __init__(self, limit: IpLimit, clock: Callable[[], float]) -> None:
        self.limit = limit
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def take(self, ip: str, service: str) -> Verdict:
        """Take a token for a request from ``ip`` to ``service``."""
        limit = self.limit
        now = self._clock()
        key = (ip, service if limit.per_service else "")
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(limit.burst), now)
        else:
            refill = max(0.0, now - bucket.stamp) * limit.rate
            bucket.tokens = min(float(limit.burst), bucket.tokens + refill)
            bucket.stamp = now
        allowed = bucket.tokens >= 1 - _EPSILON
        if allowed:
            bucket.tokens = max(0.0, bucket.tokens - 1)
        missing = limit.burst - bucket.tokens
        reset = max(0, math.ceil(missing / limit.rate - _EPSILON))
        retry = 0 if allowed else max(1, math.ceil((1 - bucket.tokens) / limit.rate - _EPSILON))
        return Verdict(allowed, int(bucket.tokens + _EPSILON), reset, retry)

    def clear(self) -> None:
        """Refill every bucket (forget every client)."""
        self._buckets.clear()
