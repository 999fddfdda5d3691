"""Cache decisions as pure functions: keys, storability, TTLs, freshness, headers.

Kept apart from storage and I/O (the hishel habit) so each is tested as a table. The
orchestration that awaits stores and upstream lives in :mod:`bloxproxy.cache.fetcher`; the
cache headers of every answer — the pipeline's and the front door's remembered ones — come
from :func:`cache_headers` here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Iterable
from enum import Enum
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote

import orjson

from ..rules import match_condition
from .entry import Entry

if TYPE_CHECKING:
    from ..upstream.client import UpstreamRequest
    from .policy import Policy

# Never cached, whatever the rule says: authentication and permission answers are about the
# caller, 429 and 5xx are about the moment (RFC 9111 leaves these to us; README, "Caching").
NEVER_STORE = frozenset({401, 403, 407, 429})


class Freshness(Enum):
    FRESH = "fresh"
    STALE_WHILE_REVALIDATE = "swr"  # serve now, refresh in the background
    STALE_IF_ERROR = "sie"  # serve only if the upstream fails
    EXPIRED = "expired"


def canonical_query(raw_query: str) -> str:
    """The query as the cache key sees it: pairs decoded, re-encoded one way, and ordered by
    name — so ``b=2&a=1`` and ``a=1&b=2``, or ``%2C`` and ``,``, are one entry. The order of
    repeated names is kept (``ids=2&ids=1`` is not ``ids=1&ids=2``: Roblox may answer in
    that order), and a query that is not valid UTF-8 is kept as sent rather than decoded
    into replacement characters that would make different queries look alike."""
    if not raw_query:
        return ""
    try:
        pairs = parse_qsl(raw_query, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        return "raw:" + raw_query
    pairs.sort(key=lambda pair: pair[0])  # stable: repeated names keep their order
    return "&".join(f"{quote(k, safe='')}={quote(v, safe=',')}" for k, v in pairs)


def credential_scope(secret: bytes, credential: str) -> str:
    """The per-credential part of a key: an HMAC, never the credential itself."""
    return hmac.new(secret, credential.encode(), hashlib.sha256).hexdigest()[:32]


def shared_request(req: UpstreamRequest, allowed: frozenset[str]) -> UpstreamRequest:
    """``req`` as it may go upstream for an answer shared by every caller: with only the
    request headers named in ``allowed`` (lower-case; a per-door allow-list, all of them
    part of the cache key), so what Roblox is asked is a function of the key alone and no
    client's ``User-Agent``, ``Accept`` or stray cookie shapes everyone's answer."""
    headers = req.headers
    kept = tuple((k, v) for k, v in headers if k.lower() in allowed)
    if len(kept) == len(headers):
        return req
    return dataclasses.replace(req, headers=kept)


def cache_key(req: UpstreamRequest, vary: Iterable[str] = (), scope: str = "") -> str:
    """``GET users/v1/users/1?a=1&b=2 [body=<hash>] [vary=...] [cred=<hmac>]``.

    Keyed by the *upstream* request, so both front doors share entries. The path prefix
    comes first so a route (or a service) can be purged by prefix.
    """
    key = f"{req.method} {req.service}{req.path}"
    query = canonical_query(req.query)
    if query:
        key += "?" + query
    if req.body:
        key += " body=" + hashlib.blake2b(req.body, digest_size=16).hexdigest()
    if vary:
        wanted = {name.lower() for name in vary}
        varied = sorted((k.lower(), v) for k, v in req.headers if k.lower() in wanted)
        if varied:
            # Each value quoted on its own: a value holding "&name=..." must not read as
            # another varied header (one client could fill another's entry).
            key += " vary=" + "&".join(f"{k}={quote(v, safe='')}" for k, v in varied)
    if scope:
        key += " cred=" + scope
    return key


def route_prefix(method: str, service: str, path_template_text: str) -> str:
    """Key prefix shared by every entry of a route: up to its first path parameter."""
    fixed = path_template_text.split("{", 1)[0]
    return f"{method} {service}{fixed}"


def store_ttl(policy: Policy, status: int, body: bytes) -> float:
    """How long an upstream answer may be stored (0: not at all)."""
    if status in NEVER_STORE or status >= 500 or status < 200:
        return 0.0
    if status in policy.negative_statuses:
        return policy.not_found_ttl
    if not 200 <= status < 300 or status == 206:
        return 0.0
    ttl = policy.ttl
    if policy.conditions:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 0.0  # a 200 that is not JSON on a JSON route: do not keep it around
        for cond in policy.conditions:
            if match_condition(cond, data):
                ttl = min(ttl, cond.ttl)
    return ttl


def repolls(policy: Policy, status: int, body: bytes) -> int:
    """How many times a stored answer is asked again in the background when it expires:
    the most any matching ``when`` condition says (a ``Pending`` thumbnail); 0 for most."""
    if not policy.conditions or not 200 <= status < 300:
        return 0
    wanted = [c for c in policy.conditions if c.repoll]
    if not wanted:
        return 0
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0
    return max((c.repoll for c in wanted if match_condition(c, data)), default=0)


def freshness(entry: Entry, now: float) -> Freshness:
    age = now - entry.stored_at
    if age < entry.ttl:
        return Freshness.FRESH
    if age < entry.ttl + entry.stale_while_revalidate:
        return Freshness.STALE_WHILE_REVALIDATE
    if age < entry.ttl + entry.stale_if_error:
        return Freshness.STALE_IF_ERROR
    return Freshness.EXPIRED


def marked_stale(entry: Entry, now: float) -> Entry | None:
    """``entry`` as a soft purge leaves it: stale from ``now`` on (its TTL cut to its age),
    its stale windows kept, so it is served STALE while one refresh runs (within
    stale-while-revalidate) or stands in for a failed refresh (stale-if-error); with
    neither window it is past its hard expiry, i.e. gone. None: not fresh, nothing to do.
    An entry of age 0 is moved a millisecond into the past (a TTL of 0 would mean "never
    stored")."""
    if not entry.is_fresh(now):
        return None
    stored_at = min(entry.stored_at, now - 0.001)
    return Entry(
        entry.status,
        entry.headers,
        entry.body,
        stored_at,
        now - stored_at,
        entry.stale_while_revalidate,
        entry.stale_if_error,
        entry.etag,
    )


def usable_on_error(entry: Entry | None, now: float) -> bool:
    """May ``entry`` stand in for a failed upstream call (stale-if-error, RFC 5861)?"""
    return entry is not None and now - entry.stored_at < entry.ttl + max(
        entry.stale_if_error, entry.stale_while_revalidate
    )


def upstream_failed(status: int) -> bool:
    """Statuses that count as an upstream failure for stale-if-error."""
    return status >= 500 or status == 429


def cache_control(entry: Entry | None, now: float, shared: bool) -> str:
    """``Cache-Control`` telling clients how long the answer stays fresh."""
    if entry is None or entry.ttl <= 0:
        return "no-store"
    remaining = max(0, int(entry.ttl - (now - entry.stored_at)))
    parts = ["public" if shared else "private", f"max-age={remaining}"]
    if entry.stale_while_revalidate:
        parts.append(f"stale-while-revalidate={int(entry.stale_while_revalidate)}")
    if entry.stale_if_error:
        parts.append(f"stale-if-error={int(entry.stale_if_error)}")
    return ", ".join(parts)


def cache_status(
    result: str, entry: Entry | None, now: float, stored: bool = False, detail: str = ""
) -> str:
    """RFC 9211 ``Cache-Status`` for our X-Cache result."""
    value = "bloxproxy"
    if result in ("HIT", "STALE") and entry is not None:
        value += f"; hit; ttl={int(entry.ttl - (now - entry.stored_at))}"
    elif result == "COALESCED":
        value += "; fwd=miss; collapsed"
    elif result == "MISS":
        value += "; fwd=miss" + ("; stored" if stored else "")
    else:
        value += "; fwd=bypass"
    if detail:
        value += f'; detail="{detail}"'
    return value


def cache_headers(
    result: str,
    entry: Entry,
    now: float,
    *,
    cached: bool,
    shared: bool,
    stored: bool = False,
    detail: str = "",
) -> list[tuple[str, str]]:
    """The cache headers of an answer: ``X-Cache``, ``Cache-Control``, ``Cache-Status``,
    and ``Age`` when the entry is (or was just) in the cache. The one place they are made,
    for the pipeline's answers and the front door's remembered hits alike."""
    out = [
        ("X-Cache", result),
        ("Cache-Control", cache_control(entry if cached else None, now, shared)),
        ("Cache-Status", cache_status(result, entry, now, stored, detail)),
    ]
    if cached:
        out.append(("Age", str(int(entry.age(now)))))
    return out


def encoded_etag(etag: str, coding: str) -> str:
    """The ETag of an answer sent in ``coding`` (``gzip``, ``br``) whose identity ETag is
    ``etag``: the same tag with ``-<coding>`` inside its quotes (``"ab12-br"``, weak staying
    weak), so each encoding is its own representation (RFC 9110 §8.8.3) and a client's
    ``If-None-Match`` matches only the bytes it holds. ``coding`` "": ``etag`` itself."""
    if not coding or not etag or not etag.endswith('"'):
        return etag
    return f'{etag[:-1]}-{coding}"'


def etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 §13.1.2 weak comparison of ``If-None-Match`` against our ETag."""
    if not etag:
        return False
    if if_none_match.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == bare for tag in if_none_match.split(","))
