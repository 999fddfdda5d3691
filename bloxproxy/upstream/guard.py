"""Protecting Roblox from us, and our users from Roblox's hiccups: the client middleware.

One aiohttp client middleware, given to every upstream call with its
:class:`~bloxproxy.upstream.client.Call`; three steps, outermost first:

1. **retry** — a bounded ``for`` over ``retries.attempts``, for safe reads only (GET/HEAD
   and POSTs a rule marks ``safe_read``), on connection errors, timeouts, 502/503/504 and
   429: exponential backoff with full jitter, at least ``Retry-After`` and the 429 pause,
   all attempts within ``retries.deadline``, and a per-service retry budget
   (:mod:`.retry`). Mutations are never retried.
2. **csrf** — Roblox's token handshake for cookie-authenticated mutations (:mod:`.csrf`).
3. **admission and the attempt** — every network attempt, retries and CSRF resends
   included: the service's circuit breaker (:mod:`.breaker`), then a slot of its scope's
   learned budget (:mod:`.limiter`), waited for in the client's fair share of the line up
   to the call's deadline (``Caller.max_wait``, else ``limits.upstream.max_wait``, within
   ``retries.deadline``), then the attempt, whose body is read inside it under the call's
   byte-budget lease; the outcome feeds the budget (429s, ``retry-after``,
   ``x-ratelimit-*``) and the breaker (errors and 5xx).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

import aiohttp
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from cachetools import TTLCache

from ..errors import Unavailable
from ..observe import observe_into
from .breaker import BREAKER_CODES, Breaker
from .budget import parse_rate_headers
from .client import Call, Caller, Ticket, UpstreamRequest, read_body
from .csrf import Csrf
from .inflight import ByteBudget
from .limiter import Limiter
from .retry import RETRY_STATUSES, RetryBudget, full_jitter, parse_retry_after, retry_delay

if TYPE_CHECKING:
    from ..config import Config
    from ..observe import Metrics
    from .shared import SharedBudgets

__all__ = ["Guard", "ServiceState"]

log = logging.getLogger("bloxproxy.upstream")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class ServiceState:
    breaker: Breaker
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
        shared: SharedBudgets | None = None,
        metrics: Metrics | None = None,
        bodies: ByteBudget | None = None,
    ) -> None:
        self._config = config
        self.metrics = metrics
        self._clock, self._wall, self._sleep, self._rand = clock, wall, sleep, rand
        self.limiter = Limiter(config, clock=clock, sleep=sleep, shared=shared)
        self.bodies = bodies  # bytes of upstream bodies held at once, all services
        self.services: dict[str, ServiceState] = {}
        secret = config.cache.credential_secret
        self.csrf = Csrf(secret.encode() if secret else os.urandom(32), clock)

    async def close(self) -> None:
        """Stop what waits for budget (the app's cleanup)."""
        await self.limiter.close()

    @property
    def csrf_tokens(self) -> TTLCache[str, str]:
        return self.csrf.tokens

    def reload(self, config: Config) -> None:
        """New limits and retry settings. When they changed, per-service state (breakers,
        retry budgets) starts over with the new numbers; the learned budgets keep what they
        learned, within the new ones."""
        old, self._config = self._config, config
        self.limiter.reload(config)
        if (
            old.limits.upstream != config.limits.upstream
            or old.limits.breaker != config.limits.breaker
            or old.retries != config.retries
        ):
            self.services.clear()

    def state(self, service: str) -> ServiceState:
        st = self.services.get(service)
        if st is None:
            b = self._config.limits.breaker
            r = self._config.retries
            st = self.services[service] = ServiceState(
                Breaker(b.failures, b.open_for), RetryBudget(r.budget, r.budget_reserve)
            )
            if self.metrics is not None:
                st.waits = self.metrics.limiter_waits(service)
                st.latency = self.metrics.upstream_latency(service)
        return st

    # -- retry --------------------------------------------------------------------------

    async def middleware(
        self, call: Call, req: ClientRequest, handler: ClientHandlerType
    ) -> ClientResponse:
        """retry → csrf → admission and the attempt, for one :class:`Call`."""
        ureq = call.req
        st = self.state(ureq.service)
        st.budget.earn()
        r = self._config.retries
        # safe_read: GET/HEAD, and POSTs a rule marks as documented reads. Never mutations.
        attempts = r.attempts if ureq.safe_read else 1
        start = self._clock()
        deadline = self._deadline(call.caller, start)

        async def attempt(req: ClientRequest) -> ClientResponse:
            return await self._attempt(call, st, req, handler, deadline)

        for n in range(1, attempts + 1):
            last = n == attempts
            try:
                resp = await self.csrf.send(req, attempt)
            except (aiohttp.ClientError, TimeoutError) as exc:
                if last:
                    _give_up(exc)
                delay = full_jitter(n, r.backoff_base, r.backoff_max, self._rand)
                if not self._may_retry(st, start, delay):
                    _give_up(exc)
            else:
                if last or resp.status not in RETRY_STATUSES:
                    return resp
                after = parse_retry_after(resp.headers.get("Retry-After"), self._wall())
                held = self.limiter.hold_left(ureq.scope) if resp.status == 429 else 0.0
                jitter = full_jitter(n, r.backoff_base, r.backoff_max, self._rand)
                delay = retry_delay(jitter, after, held)
                if not self._may_retry(st, start, delay):
                    return resp
                resp.release()  # the discarded answer gives its connection back
            st.retries += 1
            if self.metrics is not None:
                self.metrics.retries.labels(ureq.service).inc()
            await self._sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _deadline(self, caller: Caller, start: float) -> float:
        """Until when a call begun at ``start`` may wait for budget, all its attempts
        together (and a slot reserved for it: :meth:`reserve`)."""
        return start + min(self.limiter.wait_bound(caller), self._config.retries.deadline)

    async def reserve(self, req: UpstreamRequest, caller: Caller, within: float) -> Ticket:
        """A slot of ``req``'s scope for the first attempt of a call not made up yet (a
        batch that gathers ids while it waits), waited for in ``caller``'s share for at
        most ``within`` seconds (and the call's own bound); the call then goes with it
        (:class:`~bloxproxy.upstream.client.Call`'s ``ticket``). Unavailable when none comes.
        The breaker is asked when the attempt is made, as for any call."""
        now = self._clock()
        deadline = min(now + within, self._deadline(caller, now))
        return await self.limiter.acquire(req.scope, caller, deadline, tentative=True)

    def _may_retry(self, st: ServiceState, start: float, delay: float) -> bool:
        left = self._config.retries.deadline - (self._clock() - start)
        return delay < left and st.budget.spend()

    # -- admission and the attempt ------------------------------------------------------------

    async def _attempt(
        self,
        call: Call,
        st: ServiceState,
        req: ClientRequest,
        handler: ClientHandlerType,
        deadline: float,
    ) -> ClientResponse:
        ureq = call.req
        service = ureq.service
        try:
            st.breaker.before(self._clock(), service)
        except Unavailable as exc:
            self._count(st, service, exc.code)  # refused without a call, under its reason
            raise
        finally:
            self._breaker_gauge(st, service)
        started = time.perf_counter()
        try:
            ticket, call.ticket = call.ticket, None  # a slot reserved for its first attempt
            if ticket is None:
                ticket = await self.limiter.acquire(ureq.scope, call.caller, deadline)
        except BaseException as exc:
            st.breaker.neutral()
            if isinstance(exc, Unavailable):
                self._rejected(service, st)
            raise
        sent = time.perf_counter()
        if st.waits is not None:
            observe_into(st.waits, sent - started)
        up = self._config.upstream
        try:
            # Each attempt is bounded by the session's sock_connect/sock_read timeouts
            # (upstream.timeout), all attempts together by its total (retries.deadline).
            resp = await handler(req)
            # The body is part of the attempt: a cut mid-body is retried and counted.
            try:
                await read_body(
                    resp, up.max_response_size, call.lease, self._config.limits.upstream.max_wait
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
        await self._outcome(ticket, service, st, resp)
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
        code = BREAKER_CODES[st.breaker.state]
        if self.metrics is not None and code != st.gauge:
            self.metrics.breaker_state.labels(service).set(code)
            st.gauge = code

    async def _outcome(
        self, ticket: Ticket, service: str, st: ServiceState, resp: ClientResponse
    ) -> None:
        """Feed one answer to its scope's budget (429, rate-limit headers) and to the
        service's breaker (5xx)."""
        said = parse_rate_headers(resp.headers)
        if said is not None:
            await self.limiter.on_headers(ticket.scope, said)
        if resp.status == 429:
            after = parse_retry_after(resp.headers.get("Retry-After"), self._wall())
            hold = await self.limiter.on_429(ticket, after)
            log.warning(
                "%s answered 429; %s's budget is now %.2f/s%s",
                service,
                ticket.scope,
                self.limiter.rate(ticket.scope),
                f", holding for {hold:.1f}s" if hold > 0 else "",
                extra={"event": "upstream_429", "service": service, "scope": ticket.scope},
            )
            st.breaker.neutral()
        elif resp.status >= 500:
            st.breaker.failure(self._clock(), service)
        else:
            st.breaker.success()

    def _rejected(self, service: str, st: ServiceState) -> None:
        st.rejected += 1
        if self.metrics is not None:
            self.metrics.limiter_rejections.labels(service).inc()
