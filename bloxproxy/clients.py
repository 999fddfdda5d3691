"""Protecting us from clients: optional access keys and per-client rate limits.

Access keys (``auth.keys``) are checked in constant time against every configured key, in a
header of our own (``auth.header``, default ``X-Bloxproxy-Key``) — ``x-api-key`` and
``Authorization`` belong to Roblox and go through to it. The key header itself is never
forwarded upstream.

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
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable

from aiohttp import web

from .authn import FailureThrottle, digests, matches, secret_bytes
from .config import Config
from .errors import HTTPProblem
from .ratelimit import Decision, FallbackBuckets, RedisBuckets

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


def rate_headers(d: Decision, window: float, keep_upstream: bool) -> dict[str, str]:
    reset = max(0, math.ceil(d.reset))
    headers = {
        # draft-ietf-httpapi-ratelimit-headers (structured fields form)
        "RateLimit-Policy": f'"clients";q={d.limit};w={max(1, math.ceil(window))}',
        "RateLimit": f'"clients";r={d.remaining};t={reset}',
    }
    if not keep_upstream:
        headers.update(
            {
                "X-RateLimit-Limit": str(d.limit),
                "X-RateLimit-Remaining": str(d.remaining),
                "X-RateLimit-Reset": str(reset),
            }
        )
    return headers


class ClientGate:
    """Checks one request against the access keys and the client's bucket.

    :meth:`check` raises a 401/429 problem or returns the headers the answer must carry;
    :meth:`decorate` adds them to a response (keeping Roblox's own ``x-ratelimit-*``). A
    wrong or missing key is a failed attempt for ``throttle``, which answers 429 once the
    client's address has made too many (:mod:`bloxproxy.authn`).
    """

    def __init__(
        self,
        config: Config,
        redis_buckets: RedisBuckets | None,
        clock: Callable[[], float] = time.monotonic,
        throttle: FailureThrottle | None = None,
    ) -> None:
        self._keys = digests(config.auth.keys)
        self._header = config.auth.header
        lim = self._lim = config.limits.clients
        self._burst = lim.burst or max(1, math.ceil(lim.rate))
        self._window = self._burst / lim.rate if lim.rate > 0 else 0.0
        self._buckets = (
            FallbackBuckets(lim.rate, self._burst, redis_buckets, clock, "client limits")
            if lim.rate > 0
            else None
        )
        self._throttle = throttle

    @classmethod
    def build(
        cls,
        config: Config,
        redis_buckets: RedisBuckets | None,
        clock: Callable[[], float] = time.monotonic,
        throttle: FailureThrottle | None = None,
    ) -> ClientGate | None:
        """The gate, or None when neither access keys nor client limits are configured."""
        if not config.auth.keys and config.limits.clients.rate <= 0:
            return None
        return cls(config, redis_buckets, clock, throttle)

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
        ok = matches(given, self._keys)  # (a missing header never matches a "" key)
        if self._throttle is not None:
            await self._throttle.check(client_ip(request, self._lim.forwarded_for_hops), ok)
        if not ok:
            raise HTTPProblem(
                401,
                f"missing or unknown access key (send it in {self._header})",
                code="unauthorized",
            )

    async def check(self, request: web.Request) -> tuple[Decision | None, str]:
        """The client's rate-limit decision (None: no client limit) and who the client is:
        ``key:<hash>`` of its access key, else ``ip:<address>`` — the identity its share of
        the upstream budget goes by too."""
        if self._keys:
            given = request.headers.get(self._header, "")
            await self.authenticate(request, given)
            ident = "key:" + hashlib.sha256(secret_bytes(given)).hexdigest()[:32]
        else:
            ident = "ip:" + client_ip(request, self._lim.forwarded_for_hops)
        if self._buckets is None:
            return None, ident
        decision = await self._buckets.take(ident)
        if not decision.allowed:
            retry = max(1, math.ceil(decision.retry_after))
            headers = rate_headers(decision, self._window, False)
            headers["Retry-After"] = str(retry)
            raise HTTPProblem(
                429,
                f"rate limit of {self._lim.rate:g} requests/s (burst {self._burst}) exceeded",
                code="rate_limited",
                headers=headers,
                extra={"retry_after": retry},
            )
        return decision, ident

    def decorate(self, resp: web.StreamResponse, decision: Decision) -> None:
        # Roblox's own counters (Open Cloud sends x-ratelimit-limit/remaining/reset, maybe
        # only some): ours must not overwrite any of them.
        keep = any(name.lower().startswith("x-ratelimit-") for name in resp.headers)
        resp.headers.update(rate_headers(decision, self._window, keep))
