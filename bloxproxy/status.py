"""The status snapshot: what ``/_bloxproxy/status.json`` answers and the status page shows.

A pure function of plain values (:class:`Inputs`, read from the live objects by
:mod:`bloxproxy.status_page`), so every number on the page is table-tested here:

- **requests**: client answers counted by the front door, the API's (a clean route or
  passthrough) apart from the rest (the proxy's own endpoints, unrouted paths, refusals);
- **hit ratio**: of the API's cacheable answers (``HIT``, ``STALE``, ``COALESCED``,
  ``MISS``), the share that needed no upstream call of its own; ``BYPASS`` (mutations,
  credentialed requests) is not in it. ``null`` before the first cacheable answer;
- **upstream calls avoided**: those answers (``HIT`` + ``STALE`` + ``COALESCED``): each
  would have been a call to Roblox without the proxy;
- **services**: one row per upstream service or budget scope, merged by name: the budget
  (the learned rate, the configured one, Roblox's own limit when it sent one, and which of
  them is in force), what was used of it (slots given, the line, refusals), a hold
  (``paused``: after a 429's ``Retry-After``, repeated 429s or ``x-ratelimit-remaining:
  0``), the attempts, the 429s and errors Roblox answered, and the circuit breaker;
- **routes**: the busiest routes with their own hit ratio, errors and mean latency;
- **coalescing**, **L1**, **Redis**: calls in flight and the callers waiting on another's
  call; L1's size against its bounds; Redis off, ok or unreachable.

Rates over time (requests/s, 429s/s, the use of a budget per second) are the page's to
compute from two snapshots: a snapshot holds counts since the start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .observe import BudgetRowLike

__all__ = ["AVOIDED", "Breaker", "Inputs", "RequestRow", "snapshot"]

AVOIDED = ("HIT", "STALE", "COALESCED")  # answers that needed no upstream call of their own
CACHEABLE = (*AVOIDED, "MISS")
NOT_API = frozenset({"none", "cors:preflight"})  # route labels of answers no route gave
TOP_ROUTES = 8


class RequestRow(NamedTuple):
    """Client answers of one (route, status, cache result): how many, seconds in all."""

    route: str
    status: int
    cache: str
    answers: float
    seconds: float


class Breaker(NamedTuple):
    """A service's circuit breaker: ``closed``, ``half_open`` or ``open`` (seconds left)."""

    service: str
    state: str
    open_for: float = 0.0


@dataclass(frozen=True, slots=True)
class Inputs:
    """Everything a snapshot is made of, as plain values."""

    now: float  # wall clock, seconds since the epoch
    uptime: float  # seconds since the app started
    requests: Sequence[RequestRow] = ()
    attempts: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (service, status)
    budgets: Sequence[BudgetRowLike] = ()
    rates: Mapping[str, float] = field(default_factory=dict)  # limits.upstream.rates
    default_rate: float = 0.0  # limits.upstream.rate
    breakers: Sequence[Breaker] = ()
    in_flight: int = 0  # upstream calls under way (one per key)
    waiters: int = 0  # callers waiting on another caller's call
    l1_entries: int = 0
    l1_bytes: int = 0
    l1_max_entries: int = 0
    l1_max_bytes: int = 0
    cache_enabled: bool = True
    redis: str = "off"  # "off" (not configured), "ok", or "unreachable (...)"
    redis_ms: float | None = None  # the PING's round trip


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _requests(rows: Sequence[RequestRow]) -> dict[str, Any]:
    by_result = dict.fromkeys(("HIT", "STALE", "COALESCED", "MISS", "BYPASS"), 0)
    api = other = errors = refused = 0
    for row in rows:
        n = int(row.answers)
        if row.status == 429:
            refused += n
        if row.route in NOT_API:
            other += n
            continue
        api += n
        if row.status >= 500:
            errors += n
        if row.cache in by_result:
            by_result[row.cache] += n
    avoided = sum(by_result[r] for r in AVOIDED)
    return {
        "api": api,
        "other": other,
        "errors": errors,
        "client_429": refused,
        "by_result": by_result,
        "avoided": avoided,
        "hit_ratio": _ratio(avoided, avoided + by_result["MISS"]),
    }


def _routes(rows: Sequence[RequestRow], top: int) -> list[dict[str, Any]]:
    acc: dict[str, list[float]] = {}  # route -> [requests, avoided, cacheable, errors, seconds]
    for row in rows:
        if row.route in NOT_API:
            continue
        a = acc.setdefault(row.route, [0.0] * 5)
        a[0] += row.answers
        a[1] += row.answers if row.cache in AVOIDED else 0
        a[2] += row.answers if row.cache in CACHEABLE else 0
        a[3] += row.answers if row.status >= 500 else 0
        a[4] += row.seconds
    busiest = sorted(acc.items(), key=lambda kv: (-kv[1][0], kv[0]))[:top]
    return [
        {
            "route": route,
            "requests": int(a[0]),
            "hit_ratio": _ratio(a[1], a[2]),
            "errors": int(a[3]),
            "mean_ms": round(a[4] / a[0] * 1000, 2) if a[0] else 0.0,
        }
        for route, a in busiest
    ]


def _source(rate: float, ceiling: float, limit: float) -> str:
    """Which number the budget is: Roblox's limit, a learned one, or the configured one."""
    if limit and rate >= limit - 1e-9 and limit < ceiling:
        return "roblox"
    if rate < ceiling - 1e-9:
        return "learned"
    return "configured"


def _service(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "budget": None,
        "attempts": 0,
        "status_429": 0,
        "errors": 0,
        "breaker": "closed",
        "breaker_open_for": 0.0,
    }


def _services(inputs: Inputs) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for (service, status), count in inputs.attempts.items():
        row = out.setdefault(service, _service(service))
        n = int(count)
        if status.isdigit():
            row["attempts"] += n
            if status == "429":
                row["status_429"] += n
            elif int(status) >= 500:
                row["errors"] += n
        elif status == "error":  # the connection failed or timed out
            row["attempts"] += n
            row["errors"] += n
    for b in inputs.breakers:
        row = out.setdefault(b.service, _service(b.service))
        row["breaker"] = b.state
        row["breaker_open_for"] = round(max(0.0, b.open_for), 1) if b.state == "open" else 0.0
    seen = set()
    for budget in inputs.budgets:
        seen.add(budget.scope)
        row = out.setdefault(budget.scope, _service(budget.scope))
        row["budget"] = {
            "rate": round(budget.rate, 3),
            "ceiling": round(budget.ceiling, 3),
            "limit": round(budget.limit, 3) if budget.limit else None,
            "source": _source(budget.rate, budget.ceiling, budget.limit),
            "hold_seconds": round(budget.hold, 1) if budget.hold > 0 else 0.0,
            "paused": budget.hold > 0,
            "slots": budget.slots,
            "waiting": budget.waiting,
            "waits": budget.waits,
            "refusals": budget.refusals,
        }
    for scope, rate in inputs.rates.items():  # configured, not used yet
        if scope not in seen:
            row = out.setdefault(scope, _service(scope))
            row["budget"] = {
                "rate": round(rate, 3),
                "ceiling": round(rate, 3),
                "limit": None,
                "source": "configured",
                "hold_seconds": 0.0,
                "paused": False,
                "slots": 0,
                "waiting": 0,
                "waits": 0,
                "refusals": 0,
            }
    return [out[name] for name in sorted(out)]


def snapshot(inputs: Inputs, top: int = TOP_ROUTES) -> dict[str, Any]:
    """The status document (see the module docstring); JSON-ready, keys in a fixed order."""
    services = _services(inputs)
    requests = _requests(inputs.requests)
    upstream_429 = sum(s["status_429"] for s in services)
    return {
        "time": round(inputs.now, 3),
        "uptime_seconds": round(inputs.uptime, 1),
        "hit_ratio": requests.pop("hit_ratio"),
        "upstream_calls_avoided": requests.pop("avoided"),
        "requests": requests,
        "upstream": {
            "attempts": sum(s["attempts"] for s in services),
            "status_429": upstream_429,
            "errors": sum(s["errors"] for s in services),
            "paused": sorted(s["name"] for s in services if s["budget"] and s["budget"]["paused"]),
            "open_circuits": sorted(s["name"] for s in services if s["breaker"] != "closed"),
            "default_rate": inputs.default_rate,
        },
        "services": services,
        "routes": _routes(inputs.requests, top),
        "coalescing": {"in_flight": inputs.in_flight, "waiters": inputs.waiters},
        "l1": {
            "enabled": inputs.cache_enabled and inputs.l1_max_entries > 0,
            "entries": inputs.l1_entries,
            "bytes": inputs.l1_bytes,
            "max_entries": inputs.l1_max_entries,
            "max_bytes": inputs.l1_max_bytes,
        },
        "redis": {
            "state": inputs.redis,
            "ping_ms": None if inputs.redis_ms is None else round(inputs.redis_ms, 2),
        },
    }
