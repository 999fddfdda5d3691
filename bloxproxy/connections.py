"""Client connections: errors before any handler, deadlines, a cap, and clients that go away.

aiohttp answers a request line or header beyond the limits, or bytes that are not HTTP,
itself, in plain text; :class:`ProblemRequestHandler` keeps the promise that every error a
client sees has our shape (:mod:`bloxproxy.errors`).

aiohttp's connection handler has an idle keep-alive timeout and nothing else: a client
that sends half a head, or a body slower than it announced, holds its connection (and its
file descriptor) for as long as it likes, and there is no bound on how many it opens.
:class:`GuardedRequestHandler`, the connection handler of ``serve``'s runner
(:func:`start_runner`), adds what a server facing the internet needs:

- **header deadline** (``server.header_timeout``): a request's head must be complete within
  it, counted from the connection's opening or, between two requests, from the head's first
  byte — a total, so dripping a byte at a time does not extend it. Past it, a 408 problem
  and the connection closed; a connection that sent nothing at all is just closed.
  (Between requests, an idle connection is aiohttp's keep-alive timeout's,
  ``server.keepalive_timeout``; a partial head pipelined behind a request too.)
- **body deadline** (``server.body_timeout``): the whole body within it after its head. A
  handler reading it gets :class:`BodyTimeout` (a 408 problem); a body nobody reads is
  not waited for past the deadline either.
- **a cap on connections** (``server.max_connections``, lowered to fit the open-file limit
  by :func:`bloxproxy.files.connection_cap`): a connection past it is answered a 503 problem with
  ``Retry-After`` and closed at once, so the process never runs out of descriptors for its
  upstream and Redis connections, nor for accepting at all. (Out of descriptors, asyncio's
  accept loop logs a traceback per attempt, thousands a second, and serves nobody.)
- **a client that goes away**: aiohttp fails a body read with a bare
  ``ConnectionResetError``, which the code mapping errors cannot tell from a fault of ours
  (it was logged with a traceback and counted as a 500); here the read fails with
  :class:`ClientGone`, a 499 problem (nginx's "client closed request") that the front
  handler records in the access log and metrics like any answer, with nothing logged.

A body that failed (gone, timed out, not decodable) is not read on after the answer:
aiohttp's "lingering" read of an unread body would raise the error again outside any
handler and log it as an unhandled exception. The counts (open connections, refusals,
timeouts) are plain integers, turned into metric families at scrape time
(:class:`ConnectionStats`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import PROBLEM_JSON, HTTPProblem, problem_body, problem_response
from .requestids import REQUEST_ID_HEADER

log = logging.getLogger("bloxproxy.connections")

CLIENT_CLOSED = 499  # nginx's code; not in the IANA registry, never sent to anyone


class ClientGone(HTTPProblem):
    """The client closed its connection before its request was read: its doing, not ours."""

    def __init__(self) -> None:
        super().__init__(
            CLIENT_CLOSED,
            "the client closed the connection before sending the whole request",
            code="client_closed_request",
            title="Client Closed Request",
        )


class BodyTimeout(HTTPProblem):
    """The request body did not arrive within ``server.body_timeout`` of its head."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            408,
            f"the request body did not arrive within {seconds:g} s of its head",
            code="body_timeout",
            headers={"Connection": "close"},
        )


@dataclass(frozen=True, slots=True)
class Limits:
    """What one listener allows its clients (0: no deadline)."""

    header_timeout: float
    body_timeout: float
    max_connections: int


class Counts:
    """One listener's connection counts, for :class:`ConnectionStats`."""

    __slots__ = ("body_timeouts", "full", "header_timeouts", "open", "refused")

    def __init__(self) -> None:
        self.open = 0
        self.refused = 0
        self.header_timeouts = 0
        self.body_timeouts = 0
        self.full = False  # at the cap (logged once each time it gets there)


class ConnectionStats(Collector):
    """``bloxproxy_client_connections{listener}``, ``…_refused_total{listener}`` and
    ``bloxproxy_client_timeouts_total{listener,phase}``, from each listener's counts."""

    def __init__(self) -> None:
        self._counts: dict[str, Counts] = {}

    def counts(self, listener: str) -> Counts:
        return self._counts.setdefault(listener, Counts())

    def collect(self) -> Iterator[Metric]:
        open_ = GaugeMetricFamily(
            "bloxproxy_client_connections", "Client connections open.", labels=["listener"]
        )
        refused = CounterMetricFamily(
            "bloxproxy_client_connections_refused",
            "Client connections refused at server.max_connections (503).",
            labels=["listener"],
        )
        timeouts = CounterMetricFamily(
            "bloxproxy_client_timeouts",
            "Client connections cut off by a deadline (header, body).",
            labels=["listener", "phase"],
        )
        for name, c in sorted(self._counts.items()):
            open_.add_metric([name], c.open)
            refused.add_metric([name], c.refused)
            timeouts.add_metric([name, "header"], c.header_timeouts)
            timeouts.add_metric([name, "body"], c.body_timeouts)
        yield open_
        yield refused
        yield timeouts


def canned(status: int, detail: str, code: str, *headers: str) -> bytes:
    """A whole problem+json answer that closes the connection, for when there is no
    request to answer (a head that never ended, a connection past the cap)."""
    rid = secrets.token_hex(8)
    body = problem_body(HTTPProblem(status, detail, code=code), instance="", request_id=rid)
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        f"Content-Type: {PROBLEM_JSON}",
        f"Content-Length: {len(body)}",
        f"{REQUEST_ID_HEADER}: {rid}",
        "Connection: close",
        *headers,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class ProblemRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering protocol-level errors as problem+json.

    Requests too malformed to reach any middleware (a request line or header beyond the
    limits, bytes that are not HTTP) are answered by aiohttp itself with plain text; this
    keeps the promise that every error a client sees has our shape. The connection is closed
    afterwards, as aiohttp does.
    """

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        rid = secrets.token_hex(8)
        if status >= 500:
            log.error("error handling request", exc_info=exc, extra={"request_id": rid})
            detail = f"the proxy failed to handle this request; logged under request id {rid}"
        else:
            log.debug("malformed request", extra={"request_id": rid})
            # aiohttp's message quotes the offending bytes (a header may carry a cookie):
            # say what kind of problem it was, never echo the request.
            too_long = bool(message) and "Got more than" in str(message)
            detail = (
                "malformed HTTP request: the request line or a header is too long (16 KiB at most)"
                if too_long
                else "malformed HTTP request"
            )
        problem = HTTPProblem(status, detail, code="bad_http" if status < 500 else "internal_error")
        resp = problem_response(problem, instance="", request_id=rid)
        resp.headers[REQUEST_ID_HEADER] = rid
        resp.force_close()
        return resp


class ProblemServer(web.Server):
    """``web.Server`` whose connections use :class:`ProblemRequestHandler`."""

    __slots__ = ()

    def __call__(self) -> RequestHandler:
        return ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


def use_problem_errors(runner: web.AppRunner) -> None:
    """Make a set-up runner's server answer protocol errors as problem+json."""
    server = runner.server
    if server is not None and type(server) is web.Server:
        server.__class__ = ProblemServer


class GuardedRequestHandler(ProblemRequestHandler):
    """aiohttp's connection handler with deadlines, a cap, and vanished clients told apart
    from faults (see the module docstring)."""

    __slots__ = (
        "_body_deadline",
        "_body_payload",
        "_body_timer",
        "_counted",
        "_counts",
        "_head_timer",
        "_limits",
        "_linger",
        "_partial",
    )

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = manager.limits
        self._counts = manager.counts
        self._counted = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._partial = False  # some bytes of a head arrived, not all of it
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_payload: StreamReader | None = None  # the body being received
        self._body_deadline = 0.0
        self._linger = self._lingering_time

    # -- the cap -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        counts, cap = self._counts, self._limits.max_connections
        counts.open += 1
        self._counted = True
        if counts.open > cap:
            counts.refused += 1
            if not counts.full:
                counts.full = True
                log.warning(
                    "%d client connections open (server.max_connections): refusing new ones",
                    cap,
                    extra={"event": "connections_full"},
                )
            self._send_and_close(
                canned(
                    503,
                    "too many connections; retry shortly",
                    "too_many_connections",
                    "Retry-After: 1",
                )
            )
            return
        self._arm_head()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._counts.open -= 1
            if self._counts.open < self._limits.max_connections:
                self._counts.full = False
        self._disarm_head()
        self._disarm_body()
        request = self._current_request
        if request is not None and not request.content.is_eof():
            # aiohttp would fail the body read with a bare ConnectionResetError; it leaves
            # the request alone once this is None (the handler's own finally clears it too).
            self._current_request = None
            request.content.set_exception(ClientGone())
        super().connection_lost(exc)

    def _send_and_close(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)
        self.force_close()

    # -- the header deadline -----------------------------------------------------------

    def _arm_head(self) -> None:
        if self._head_timer is None and self._limits.header_timeout > 0:
            if self._request_count == 0 and self._keepalive_handle is not None:
                # aiohttp's keep-alive timer also starts with the connection (closing it
                # without a word): until the first head, the header deadline is the one.
                self._keepalive_handle.cancel()
                self._keepalive_handle = None
            self._head_timer = self._loop.call_later(
                self._limits.header_timeout, self._head_expired
            )

    def _disarm_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._force_close or self.transport is None:
            return
        if self._request_in_progress or self._messages:
            return  # a request got going: its answer re-arms the deadline if need be
        if self._partial:
            self._counts.header_timeouts += 1
            seconds = self._limits.header_timeout
            self._send_and_close(
                canned(
                    408,
                    f"the request head did not arrive within {seconds:g} s",
                    "request_timeout",
                )
            )
        else:  # nothing asked: nothing to answer
            self.force_close()

    def data_received(self, data: bytes) -> None:
        body = self._body_payload
        in_body = body is not None and not body.is_eof()
        parsed = self._request_count
        super().data_received(data)
        if self._force_close:
            return
        if self._request_count != parsed:  # a head is complete (or more than one)
            self._disarm_head()
            self._partial = False
            _, payload = self._messages[-1]  # only the last one's body can be incomplete
            if not payload.is_eof():
                self._arm_body(payload)
        elif not in_body and data:  # the first bytes of a head, or more of them
            self._partial = True
            if not self._request_in_progress:  # (else once that request is answered)
                self._arm_head()
        if in_body and body is not None and body.is_eof():
            self._disarm_body()

    # -- the body deadline -------------------------------------------------------------

    def _arm_body(self, payload: StreamReader) -> None:
        self._disarm_body()
        seconds = self._limits.body_timeout
        if seconds > 0:
            self._body_payload = payload
            self._body_deadline = self._loop.time() + seconds
            self._body_timer = self._loop.call_later(seconds, self._body_expired)

    def _disarm_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_expired(self) -> None:
        self._body_timer = None
        payload = self._body_payload
        if payload is None or payload.is_eof() or payload.exception() is not None:
            return
        self._counts.body_timeouts += 1
        payload.set_exception(BodyTimeout(self._limits.body_timeout))

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        payload = request.content
        self._lingering_time = self._linger
        if payload.exception() is not None:
            # A failed body is not read on: the connection closes after this answer.
            self._lingering_time = 0.0
        elif payload is self._body_payload and self._body_timer is not None:
            # Answered before its body came: aiohttp reads and drops the rest, for no
            # longer than the body deadline leaves (then the connection closes).
            self._disarm_body()
            left = self._body_deadline - self._loop.time()
            self._lingering_time = max(0.0, min(self._linger, left))
        answered = await super().finish_response(request, resp, start_time)
        if self._partial:  # the next head began while this request was being answered
            self._arm_head()
        return answered


class GuardedServer(ProblemServer):
    """``web.Server`` whose connections are :class:`GuardedRequestHandler`\\ s."""

    __slots__ = ()
    limits: Limits
    counts: Counts

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)


def guard_connections(runner: web.AppRunner, limits: Limits, counts: Counts) -> None:
    """Make a set-up runner's connections :class:`GuardedRequestHandler`\\ s."""
    server = runner.server
    assert server is not None and type(server) in (web.Server, ProblemServer)
    server.__class__ = GuardedServer
    guarded = cast(GuardedServer, server)
    guarded.limits, guarded.counts = limits, counts
