"""Retry decisions for safe upstream reads, as pure functions and one small budget.

What the guard's bounded retry loop (:mod:`bloxproxy.upstream.guard`) asks: may this
attempt's outcome be retried, how long to wait first (exponential backoff with AWS "full
jitter", at least ``Retry-After`` and the service's 429 pause), and is there budget left (a
per-service share of traffic, so a failure storm adds at most that much).
"""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["RETRY_STATUSES", "RetryBudget", "full_jitter", "parse_retry_after", "retry_delay"]

RETRY_STATUSES = frozenset({429, 502, 503, 504})


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # isdigit() alone also takes "²" and "٣"
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" parses as naive; HTTP dates are GMT, not local time
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now_wall)


def full_jitter(attempt: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """AWS "full jitter": uniform in [0, min(cap, base * 2**(attempt-1))]."""
    return rand() * min(cap, base * 2.0 ** (attempt - 1))


def retry_delay(jitter: float, retry_after: float | None, pause_left: float) -> float:
    """The wait before the next attempt: the jittered backoff, but never less than what
    Roblox asked (``Retry-After``) or what is left of the service's 429 pause."""
    delay = jitter
    if retry_after is not None:
        delay = max(delay, retry_after)
    return max(delay, pause_left)


@dataclass(slots=True)
class RetryBudget:
    """Each first attempt earns ``ratio`` of a retry; a retry spends one; at most ``reserve``
    (or one: a reserve below one retry must not switch the ``ratio`` share off)."""

    ratio: float
    reserve: float
    tokens: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.reserve

    def earn(self) -> None:
        self.tokens = min(max(self.reserve, 1.0), self.tokens + self.ratio)

    def spend(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
