"""Protecting Roblox from us, and our users from Roblox's hiccups.

One aiohttp **client middleware** on the upstream session, in three steps, outermost
first (plain method calls: three aiohttp middlewares cost a wrapper chain per request):

1. ``retry`` — bounded attempts for safe reads only (GET/HEAD and POSTs a rule marks
   ``safe_read``) on connection errors, timeouts, 502/503/504 and 429; exponential backoff
   with full jitter, capped, and ``max(backoff, Retry-After)``; a total deadline over all
   attempts; a per-service retry budget (each first attempt earns ``retries.budget`` of a
   retry, the bucket holds at most ``retries.budget_reserve``), so a failure storm adds at
   most that share of extra traffic. Mutations are never retried.
2. ``csrf`` — Roblox's handshake for cookie-authenticated mutations: a 403 carrying
   ``x-csrf-token`` is resent once with the token, which is remembered per credential
   (keyed by an HMAC, 30 minutes) and sent up front next time.
3. ``guard`` — every network attempt, retries and CSRF resends included: the service's
   429 pause and circuit breaker, then its rate limiter (``limits.upstream``; waits at most
   ``max_wait``, else 503 with ``Retry-After``), then the attempt with its own timeout; the
   outcome feeds the pause (429) and the breaker (errors and 5xx).

Which service an attempt belongs to comes from :data:`bloxproxy.upstream.CURRENT`, set by
:meth:`bloxproxy.upstream.Upstream.send` for the duration of one upstream call.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import hashlib
import hmac
import logging
import math
import os
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

import aiohttp
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from aiolimiter import AsyncLimiter
from cachetools import TTLCache

from .cache.store import StoreUnavailable
from .errors import Unavailable
from .inflight import ByteBudget
from .observe import observe_into
from .upstream import CURRENT, read_body

if TYPE_CHECKING:
    from .config import Config
    from .observe import Metrics
    from .ratelimit import RedisBuckets
    from .upstream import UpstreamRequest

log = logging.getLogger("bloxproxy.upstream")

_BREAKER_CODES = {"closed": 0, "half_open": 1, "open": 2}
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MUTATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_TTL = 1800.0  # Roblox tokens last about 30 minutes (noblox.js caches them 1800 s)
_ROBLOSECURITY = re.compile(r"(?:^|;)\s*\.ROBLOSECURITY=([^;]*)")

Sleep = Callable[[float], Awaitable[None]]


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


@dataclass(slots=True)
class Breaker:
    """Consecutive-failure circuit breaker: closed → open → half-open (one probe) → …"""

    threshold: int
    open_for: float
    failures: int = 0
    state: str = "closed"
    opened_until: float = 0.0
    probing: bool = False

    def before(self, now: float, service: str) -> None:
        if self.state == "open":
            if now < self.opened_until:
                raise Unavailable(
                    f"{service} is failing; circuit open", "circuit_open", self.opened_until - now
                )
            self.state = "half_open"
        if self.state == "half_open":
            if self.probing:
                raise Unavailable(f"{service} is failing; waiting for a probe", "circuit_open", 1.0)
            self.probing = True

    def success(self) -> None:
        if self.state != "closed":
            log.info("circuit closed", extra={"event": "breaker_closed"})
        self.failures, self.state, self.probing = 0, "closed", False

    def failure(self, now: float, service: str) -> None:
        self.failures += 1
        self.probing = False
        if self.state == "half_open" or (
            self.state == "closed" and self.failures >= self.threshold
        ):
            if self.state == "closed":
                log.warning(
                    "circuit opened for %s after %d failures",
                    service,
                    self.failures,
                    extra={"event": "breaker_open", "service": service},
                )
            self.state, self.opened_until = "open", now + self.open_for

    def neutral(self) -> None:
        """An attempt that says nothing about health (a 429, a cancel) ends a probe."""
        self.probing = False


@dataclass(slots=True)
class Pause:
    """A service-wide pause after a 429: Retry-After, else exponential backoff."""

    base: float
    cap: float
    until: float = 0.0
    strikes: int = 0

    def check(self, now: float, service: str) -> None:
        if now < self.until:
            raise Unavailable(
                f"{service} asked us to slow down (429); paused",
                "upstream_paused",
                self.until - now,
            )

    def on_429(self, now: float, retry_after: float | None) -> float:
        self.strikes += 1
        # Retry-After is honoured up to the cap too: a wild value must not stop a service
        # for a day.
        wait = min(
            self.cap,
            retry_after if retry_after is not None else self.base * 2 ** (self.strikes - 1),
        )
        self.until = max(self.until, now + wait)
        return wait

    def on_success(self) -> None:
        self.strikes = 0


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


@dataclass(slots=True)
class ServiceState:
    limiter: AsyncLimiter
    breaker: Breaker
    pause: Pause
    budget: RetryBudget
    retries: int = 0  # counters, read by metrics and tests
    rejected: int = 0
    # This service's metric rows (observe.Metrics), looked up once.
    counters: dict[int | str, list[float]] = field(default_factory=dict)
    waits: list[float] | None = None
    latency: list[float] | None = None
    gauge: int = -1  # the breaker-state value last exported


class ConnectionLost(aiohttp.ClientConnectionError):
    """The connection dropped and the retry middleware is done with the request."""


def _give_up(exc: BaseException) -> NoReturn:
    """Re-raise the last attempt's error. aiohttp itself resends an idempotent request (PUT
    and DELETE included) once when the connection drops (``ClientOSError``,
    ``ServerDisconnectedError``), around all middlewares: that would retry a mutation and
    add attempts past ``retries.attempts``, the budget and the deadline. Under another type
    it does not."""
    lost = isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
    if lost and not isinstance(exc, aiohttp.ClientConnectorError):  # (that one it never resends)
        raise ConnectionLost(str(exc) or type(exc).__name__) from exc
    raise exc


class Guard:
    """Per-service upstream state and the client middleware (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        shared: RedisBuckets | None = None,
        metrics: Metrics | None = None,
        bodies: ByteBudget | None = None,
    ) -> None:
        self._config = config
        self.bodies = bodies  # bytes of upstream bodies being read at once, all services
        self.metrics = metrics
        self._clock, self._wall, self._sleep, self._rand = clock, wall, sleep, rand
        self.shared = shared
        self._shared_retry_at = 0.0
        self.services: dict[str, ServiceState] = {}
        secret = config.cache.credential_secret
        self._secret = secret.encode() if secret else os.urandom(32)
        self.csrf_tokens: TTLCache[str, str] = TTLCache(maxsize=10_000, ttl=CSRF_TTL, timer=clock)

    def reload(self, config: Config) -> None:
        """New limits and retry settings. When they changed, per-service state (limiters,
        breakers, pauses, budgets) starts over with the new numbers."""
        old, self._config = self._config, config
        if (
            old.limits.upstream != config.limits.upstream
            or old.limits.breaker != config.limits.breaker
            or old.retries != config.retries
        ):
            self.services.clear()

    def middlewares(self) -> tuple[aiohttp.ClientMiddlewareType, ...]:
        return (self.middleware,)

    async def middleware(self, req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        """retry → csrf → guard → the attempt, for calls made by Upstream.send."""
        ureq = CURRENT.get()
        if ureq is None:
            return await handler(req)
        return await self.retry(req, handler, ureq)

    def state(self, service: str) -> ServiceState:
        st = self.services.get(service)
        if st is None:
            up = self._config.limits.upstream
            rate = up.rates.get(service, up.rate)
            b = self._config.limits.breaker
            r = self._config.retries
            st = self.services[service] = ServiceState(
                AsyncLimiter(rate, 1.0) if rate >= 1 else AsyncLimiter(1, 1.0 / rate),
                Breaker(b.failures, b.open_for),
                Pause(up.pause_base, up.pause_max),
                RetryBudget(r.budget, r.budget_reserve),
            )
            if self.metrics is not None:
                st.waits = self.metrics.limiter_waits(service)
                st.latency = self.metrics.upstream_latency(service)
        return st

    # -- retry --------------------------------------------------------------------------

    async def retry(
        self, req: ClientRequest, handler: ClientHandlerType, ureq: UpstreamRequest
    ) -> ClientResponse:
        st = self.state(ureq.service)
        st.budget.earn()
        r = self._config.retries
        # safe_read: GET/HEAD, and POSTs a rule marks as documented reads. Never mutations.
        retryable = ureq.safe_read
        start = self._clock()
        attempt = 1
        while True:
            try:
                resp = await self.csrf(req, handler, ureq)
            except (aiohttp.ClientError, TimeoutError) as exc:
                if not (retryable and attempt < r.attempts):
                    _give_up(exc)
                delay = full_jitter(attempt, r.backoff_base, r.backoff_max, self._rand)
                if not self._may_retry(st, start, delay):
                    _give_up(exc)
            else:
                if not (retryable and resp.status in RETRY_STATUSES and attempt < r.attempts):
                    return resp
                delay = full_jitter(attempt, r.backoff_base, r.backoff_max, self._rand)
                after = parse_retry_after(resp.headers.get("Retry-After"), self._wall())
                if after is not None:
                    delay = max(delay, after)
                if resp.status == 429:  # the service is paused (guard): wait it out
                    delay = max(delay, st.pause.until - self._clock())
                if not self._may_retry(st, start, delay):
                    return resp
                resp.release()  # the discarded answer gives its connection back
            attempt += 1
            st.retries += 1
            if self.metrics is not None:
                self.metrics.retries.labels(ureq.service).inc()
            await self._sleep(delay)

    def _may_retry(self, st: ServiceState, start: float, delay: float) -> bool:
        left = self._config.retries.deadline - (self._clock() - start)
        return delay < left and st.budget.spend()

    # -- csrf ---------------------------------------------------------------------------

    def _csrf_key(self, cookie: str) -> str:
        # surrogateescape: aiohttp decodes raw header bytes that way; any value is a key.
        return hmac.new(
            self._secret, cookie.encode("utf-8", "surrogateescape"), hashlib.sha256
        ).hexdigest()

    async def csrf(
        self, req: ClientRequest, handler: ClientHandlerType, ureq: UpstreamRequest
    ) -> ClientResponse:
        if req.method not in MUTATIONS:
            return await self.guard(req, handler, ureq)
        match = _ROBLOSECURITY.search(req.headers.get("Cookie", ""))
        cookie = match.group(1).strip() if match else ""
        if not cookie:
            return await self.guard(req, handler, ureq)
        key = self._csrf_key(cookie)
        if "X-CSRF-TOKEN" not in req.headers:
            known = self.csrf_tokens.get(key)
            if known is not None:
                req.headers["X-CSRF-TOKEN"] = known
        resp = await self.guard(req, handler, ureq)
        token = resp.headers.get("x-csrf-token")
        if resp.status != 403 or not token:
            return resp
        self.csrf_tokens[key] = token
        if req.headers.get("X-CSRF-TOKEN") == token:
            return resp  # the token Roblox just issued was refused: do not loop
        resp.release()
        req.headers["X-CSRF-TOKEN"] = token
        return await self.guard(req, handler, ureq)

    # -- guard ----------------------------------------------------------------------------

    async def guard(
        self, req: ClientRequest, handler: ClientHandlerType, ureq: UpstreamRequest
    ) -> ClientResponse:
        service = ureq.service
        st = self.state(service)
        try:
            st.pause.check(self._clock(), service)
            st.breaker.before(self._clock(), service)
        except Unavailable as exc:
            self._count(st, service, exc.code)  # refused without a call, under its reason
            raise
        finally:
            self._breaker_gauge(st, service)
        started = time.perf_counter()
        try:
            await self._acquire(service, st)
        except BaseException:
            st.breaker.neutral()
            raise
        sent = time.perf_counter()
        if st.waits is not None:
            observe_into(st.waits, sent - started)
        try:
            # Each attempt is bounded by the session's sock_connect/sock_read timeouts
            # (upstream.timeout), all attempts together by its total (retries.deadline).
            resp = await handler(req)
            # The body is part of the attempt: a cut mid-body is retried and counted.
            try:
                await read_body(
                    resp,
                    self._config.upstream.max_response_size,
                    self.bodies,
                    self._config.limits.upstream.max_wait,
                )
            except BaseException:
                resp.close()
                raise
        except (aiohttp.ClientError, TimeoutError):
            st.breaker.failure(self._clock(), service)
            self._count(st, service, "error")
            self._breaker_gauge(st, service)
            raise
        except BaseException:
            st.breaker.neutral()
            raise
        self._count(st, service, resp.status)
        if st.latency is not None:
            observe_into(st.latency, time.perf_counter() - sent)
        self._outcome(service, st, resp)
        self._breaker_gauge(st, service)
        return resp

    def _count(self, st: ServiceState, service: str, status: int | str) -> None:
        """One upstream attempt (or refusal) in the metrics; the rows looked up once."""
        if self.metrics is None:
            return
        row = st.counters.get(status)
        if row is None:
            row = st.counters[status] = self.metrics.attempts(service, status)
        row[0] += 1

    def _breaker_gauge(self, st: ServiceState, service: str) -> None:
        code = _BREAKER_CODES[st.breaker.state]
        if self.metrics is not None and code != st.gauge:
            self.metrics.breaker_state.labels(service).set(code)
            st.gauge = code

    def _outcome(self, service: str, st: ServiceState, resp: ClientResponse) -> None:
        """Feed one answer to the service's pause (429) and breaker (5xx)."""
        if resp.status == 429:
            after = parse_retry_after(resp.headers.get("Retry-After"), self._wall())
            wait = st.pause.on_429(self._clock(), after)
            log.warning(
                "%s answered 429; pausing the service for %.1fs",
                service,
                wait,
                extra={"event": "upstream_paused", "service": service},
            )
            st.breaker.neutral()
        elif resp.status >= 500:
            st.breaker.failure(self._clock(), service)
        else:
            st.pause.on_success()
            st.breaker.success()

    def _rejected(self, service: str, st: ServiceState) -> None:
        st.rejected += 1
        if self.metrics is not None:
            self.metrics.limiter_rejections.labels(service).inc()

    async def _acquire(self, service: str, st: ServiceState) -> None:
        max_wait = self._config.limits.upstream.max_wait
        if self.shared is not None and self._clock() >= self._shared_retry_at:
            try:
                await self._acquire_shared(service, max_wait, st)
                return
            except StoreUnavailable as exc:
                # Fall back to the local limiter; try Redis again in a few seconds.
                if not self._shared_retry_at:
                    log.warning("shared upstream budget unavailable, limiting locally: %s", exc)
                self._shared_retry_at = self._clock() + 5.0
        limiter = st.limiter
        if limiter.has_capacity():
            await limiter.acquire()  # no wait: spare the timeout's set-up
            return
        try:
            async with asyncio.timeout(max_wait):
                await limiter.acquire()
        except TimeoutError:
            self._rejected(service, st)
            raise Unavailable(
                f"too many requests queued for {service}",
                "upstream_busy",
                st.limiter.time_period / st.limiter.max_rate,
            ) from None  # one slot

    async def _acquire_shared(self, service: str, max_wait: float, st: ServiceState) -> None:
        assert self.shared is not None
        deadline = self._clock() + max_wait
        while True:
            up = self._config.limits.upstream
            rate = up.rates.get(service, up.rate)
            decision = await self.shared.take(service, rate, max(1, math.ceil(rate)))
            if decision.allowed:
                self._shared_retry_at = 0.0
                return
            if self._clock() + decision.retry_after > deadline:
                self._rejected(service, st)
                raise Unavailable(
                    f"the shared upstream budget for {service} is used up",
                    "upstream_busy",
                    decision.retry_after,
                )
            await self._sleep(decision.retry_after)
