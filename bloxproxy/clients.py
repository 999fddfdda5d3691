"""Protecting us from clients: optional access keys and per-client rate limits.

Access keys (``auth.keys``, and the named ones of ``auth.clients``) are checked in constant
time against every configured key, in a header of our own (``auth.header``, default
``X-Bloxproxy-Key``) — ``x-api-key`` and ``Authorization`` belong to Roblox and go through
to it. The key header itself is never forwarded upstream.

A wrong or missing key is a failed attempt, throttled per client address
(``limits.auth_failures``, :class:`~bloxproxy.authn.FailureThrottle`).

Client limits (``limits.clients``) are a token bucket per access key, or per client IP when
keys are off (``X-Forwarded-For`` only when ``forwarded_for_hops`` says a trusted proxy put it
there). With Redis configured the buckets live there (one atomic script call), so N replicas
enforce one limit; without it, or while Redis is down, in memory. Every answer carries the
IETF ``RateLimit``/``RateLimit-Policy`` headers and ``X-RateLimit-Limit/Remaining/Reset`` —
except that a passthrough answer keeps Roblox's own ``x-ratelimit-*`` when it sent them.
The proxy's own endpoints (``/_bloxproxy/…``) are exempt: probes and admin calls have their
own rules.

A named client (:class:`~bloxproxy.keyconfig.NamedClient`) may be bound to places: its
requests must carry a ``Roblox-Id`` naming one of them (:mod:`bloxproxy.robloxid`; a 403
problem otherwise, or — ``roblox_id: advisory`` — a warning and a count). It may have its
own limit instead of ``limits.clients``, and a limit per game server (the key, the place
and the client address: ``per_server``, by default HttpService's own 500/min); each limit
the request was checked against is one policy of the ``RateLimit`` headers. What the gate
learns goes into the request's :class:`~bloxproxy.observe.RequestInfo`: who the client is
(its share of the upstream budget), the key's ``weight`` in that budget and whether its
answers are written for Luau (:mod:`bloxproxy.luau`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from . import robloxid
from .authn import FailureThrottle, digests, secret_bytes, which
from .config import Config
from .errors import HTTPProblem
from .keyconfig import NamedClient, Rate
from .ratelimit import Decision, FallbackBuckets, RedisBuckets

if TYPE_CHECKING:
    from .observe import RequestInfo

log = logging.getLogger("bloxproxy")

RESERVED = "/_bloxproxy/"


def client_ip(request: web.Request, hops: int) -> str:
    """The client address: the peer, or the ``hops``-th ``X-Forwarded-For`` entry from the
    right when that many trusted proxies stand in front of us."""
    if hops > 0:
        forwarded = [
            p.strip() for p in request.headers.get("X-Forwarded-For", "").split(",") if p.strip()
        ]
        if forwarded:
            return forwarded[-hops] if len(forwarded) >= hops else forwarded[0]
    return request.remote or "unknown"


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit a request was checked against: its ``RateLimit`` policy name (``clients``
    or ``server``), the bucket's decision, and the bucket's window in seconds."""

    policy: str
    decision: Decision
    window: float


Granted = tuple[Limit, ...]  # the limits a request passed, for its answer's headers


def rate_headers(limits: Sequence[Limit], keep_upstream: bool) -> dict[str, str]:
    """The ``RateLimit``/``RateLimit-Policy`` headers (one policy per limit) and — unless
    Roblox sent its own — ``X-RateLimit-*`` of the limit with the fewest requests left."""
    policies, states = [], []
    for lim in limits:
        d = lim.decision
        # draft-ietf-httpapi-ratelimit-headers (structured fields form)
        policies.append(f'"{lim.policy}";q={d.limit};w={max(1, math.ceil(lim.window))}')
        states.append(f'"{lim.policy}";r={d.remaining};t={max(0, math.ceil(d.reset))}')
    headers = {"RateLimit-Policy": ", ".join(policies), "RateLimit": ", ".join(states)}
    if not keep_upstream:
        tightest = min(limits, key=lambda lim: lim.decision.remaining).decision
        headers.update(
            {
                "X-RateLimit-Limit": str(tightest.limit),
                "X-RateLimit-Remaining": str(tightest.remaining),
                "X-RateLimit-Reset": str(max(0, math.ceil(tightest.reset))),
            }
        )
    return headers


class _Bucket:
    """A rate limit's buckets and how to talk about them."""

    __slots__ = ("buckets", "describe", "window")

    def __init__(self, buckets: FallbackBuckets, window: float, describe: str) -> None:
        self.buckets, self.window, self.describe = buckets, window, describe


class _Named:
    """A named client's limits: its own (or the shared ``limits.clients``, or none) and the
    one per game server."""

    __slots__ = ("client", "own", "server")

    def __init__(self, client: NamedClient, own: _Bucket | None, server: _Bucket | None) -> None:
        self.client, self.own, self.server = client, own, server


class ClientGate:
    """Checks one request against the access keys and the client's buckets.

    :meth:`check` raises a 401/403/429 problem or returns the limits the request passed,
    whose headers the answer must carry; :meth:`decorate` adds them to a response (keeping
    Roblox's own ``x-ratelimit-*``). A wrong or missing key is a failed attempt for
    ``throttle``, which answers 429 once the client's address has made too many
    (:mod:`bloxproxy.authn`). ``roblox_ids`` is told each ``Roblox-Id`` check of a bound
    key: the client's name and the outcome (:class:`bloxproxy.robloxid.Check`).
    """

    def __init__(
        self,
        config: Config,
        redis_buckets: RedisBuckets | None,
        clock: Callable[[], float] = time.monotonic,
        throttle: FailureThrottle | None = None,
        roblox_ids: Callable[[str, str], None] | None = None,
    ) -> None:
        auth = config.auth
        self._plain = len(auth.keys)
        self._keys = digests((*auth.keys, *(c.key for c in auth.clients)))
        self._header = auth.header
        lim = config.limits.clients

        def bucket(rate: float, burst: int, window: float, describe: str) -> _Bucket:
            buckets = FallbackBuckets(rate, burst, redis_buckets, clock, "client limits")
            return _Bucket(buckets, window, describe)

        def bucket_of(rate: Rate, describe: str) -> _Bucket:
            return bucket(rate.per_second, rate.burst, rate.window, describe)

        self._shared: _Bucket | None = None  # limits.clients
        if lim.rate > 0:
            burst = lim.burst or max(1, math.ceil(lim.rate))
            describe = f"rate limit of {lim.rate:g} requests/s (burst {burst}) exceeded"
            self._shared = bucket(lim.rate, burst, burst / lim.rate, describe)
        self._named: list[_Named] = []
        for client in auth.clients:
            own = self._shared
            if client.own_rate:  # its own (None: no limit) instead of limits.clients
                rate = client.rate
                own = (
                    bucket_of(rate, f"rate limit of {rate} for this key exceeded") if rate else None
                )
            per = client.per_server
            server = (
                bucket_of(per, f"rate limit of {per} per game server exceeded") if per else None
            )
            self._named.append(_Named(client, own, server))
        self._hops = lim.forwarded_for_hops
        self._throttle = throttle
        self._roblox_ids = roblox_ids

    @classmethod
    def build(
        cls,
        config: Config,
        redis_buckets: RedisBuckets | None,
        clock: Callable[[], float] = time.monotonic,
        throttle: FailureThrottle | None = None,
        roblox_ids: Callable[[str, str], None] | None = None,
    ) -> ClientGate | None:
        """The gate, or None when neither access keys nor client limits are configured."""
        if not config.auth.keyed and config.limits.clients.rate <= 0:
            return None
        return cls(config, redis_buckets, clock, throttle, roblox_ids)

    @property
    def keyed(self) -> bool:
        """Are access keys required?"""
        return bool(self._keys)

    @property
    def header(self) -> str:
        """The header carrying the access key (``auth.header``)."""
        return self._header

    async def authenticate(self, request: web.Request, given: str) -> None:
        """Raise a 401 problem unless ``given`` is one of the access keys (a 429 one once the
        client's address has failed too often, whatever it sends)."""
        await self._which(request, given)

    async def _which(self, request: web.Request, given: str) -> int:
        index = which(given, self._keys)  # (a missing header never matches a "" key)
        ok = index >= 0
        if self._throttle is not None:
            await self._throttle.check(client_ip(request, self._hops), ok)
        if not ok:
            raise HTTPProblem(
                401,
                f"missing or unknown access key (send it in {self._header})",
                code="unauthorized",
            )
        return index

    async def check(self, request: web.Request, info: RequestInfo) -> Granted:
        """Who the client is and whether it may go on: raises a 401/403/429 problem, or
        returns the limits it passed (none: no limit applies). Sets ``info.client`` —
        ``key:<hash>`` of its access key, else ``ip:<address>``: the identity its share of
        the upstream budget goes by — and, for a named key, ``info.weight`` and
        ``info.luau``, before any check that may refuse it (so that its refusal is written
        the way its answers are)."""
        named: _Named | None = None
        if self._keys:
            given = request.headers.get(self._header, "")
            index = await self._which(request, given)
            info.client = "key:" + hashlib.sha256(secret_bytes(given)).hexdigest()[:32]
            if index >= self._plain:
                named = self._named[index - self._plain]
                info.weight, info.luau = named.client.weight, named.client.luau
                info.key_name = named.client.name
        else:
            info.client = "ip:" + client_ip(request, self._hops)
        if named is None:
            return await self._take(self._shared, "clients", info.client, ())
        client = named.client
        place: int | None = None
        if client.bound:
            place = self._roblox_id(request, client)
        # The server's bucket first: a server over its limit spends nothing of the key's.
        where = f"{place if place is not None else '-'}:{client_ip(request, self._hops)}"
        granted = await self._take(named.server, "server", f"server:{client.name}:{where}", ())
        return await self._take(named.own, "clients", info.client, granted)

    async def check_preflight(self, request: web.Request, info: RequestInfo) -> Granted:
        """A CORS preflight: no access key (browsers send none with it), but the client
        limit (``limits.clients``) of its address, like any request without a key; raises a
        429 problem, or returns the limit it passed."""
        info.client = "ip:" + client_ip(request, self._hops)
        return await self._take(self._shared, "clients", info.client, ())

    def _roblox_id(self, request: web.Request, client: NamedClient) -> int | None:
        """The place of a bound key's request; a 403 problem when ``Roblox-Id`` does not
        name one of the key's places and the key requires it."""
        result = robloxid.check(request.headers.getall(robloxid.HEADER, []), client.places)
        if self._roblox_ids is not None:
            self._roblox_ids(client.name, result.outcome)
        if result.ok:
            return result.place
        if client.roblox_id == "advisory":
            log.warning(
                "access key %s: Roblox-Id %s; served anyway (roblox_id: advisory)",
                client.name,
                result.outcome if result.place is None else f"names place {result.place}",
                extra={"event": "roblox_id", "outcome": result.outcome},
            )
            return result.place
        places = ", ".join(str(p) for p in client.places)
        why = {
            "missing": "the request has no Roblox-Id header (Roblox adds it to HttpService "
            "requests of game servers)",
            "malformed": "its Roblox-Id header is not a place id",
            "mismatch": f"its Roblox-Id names place {result.place}",
        }[result.outcome]
        raise HTTPProblem(
            403,
            f"this access key is for game servers of place{'s' * (len(client.places) > 1)} "
            f"{places}, and {why}",
            code="wrong_place",
            extra={"places": list(client.places)},
        )

    async def _take(
        self, bucket: _Bucket | None, policy: str, ident: str, granted: Granted
    ) -> Granted:
        """``granted`` and one more token from ``bucket`` (a 429 problem without one)."""
        if bucket is None:
            return granted
        decision = await bucket.buckets.take(ident)
        limits = (*granted, Limit(policy, decision, bucket.window))
        if not decision.allowed:
            retry = max(1, math.ceil(decision.retry_after))
            headers = rate_headers(limits, False)
            headers["Retry-After"] = str(retry)
            raise HTTPProblem(
                429,
                bucket.describe,
                code="rate_limited",
                headers=headers,
                extra={"retry_after": retry},
            )
        return limits

    def decorate(self, resp: web.StreamResponse, granted: Granted) -> None:
        if not granted:
            return
        # Roblox's own counters (Open Cloud sends x-ratelimit-limit/remaining/reset, maybe
        # only some): ours must not overwrite any of them.
        keep = any(name.lower().startswith("x-ratelimit-") for name in resp.headers)
        resp.headers.update(rate_headers(granted, keep))
