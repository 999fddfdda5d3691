"""Request ids, and every error answered as problem+json.

This is the one place the exception tree of :mod:`bloxproxy.errors` becomes HTTP: for
errors raised while handling a request (:func:`error_response`, called by the front
handler) and for requests too malformed to reach a handler (:class:`ProblemRequestHandler`).
An unexpected exception is logged with its traceback and answered as a bare 500 problem —
a client never sees a stack trace.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest

from .errors import HTTPProblem, problem_response

log = logging.getLogger("bloxproxy")

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = web.RequestKey("request_id", str)
# Accepted from clients only when short and plain, so it is safe in logs and headers.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@+=-]{1,128}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id_of(request: web.Request) -> str:
    rid: str = request.get(REQUEST_ID, "")
    return rid


def _instance(request: web.Request) -> str:
    path = request.rel_url.raw_path
    return path if len(path) <= 512 else path[:509] + "..."


def error_response(exc: Exception, request: web.Request, rid: str) -> web.Response:
    """The problem+json answer for an exception raised while handling ``request``.

    Our :class:`HTTPProblem`\\ s as they are; aiohttp's own HTTP errors (413 from
    ``client_max_size``…) in our shape; anything else logged with its traceback and
    answered as a bare 500 — never a stack trace.
    """
    if isinstance(exc, HTTPProblem):
        problem = exc
    elif isinstance(exc, web.HTTPException) and exc.status >= 400:
        problem = HTTPProblem(exc.status, exc.text or exc.reason)
    elif isinstance(exc, RequestPayloadError):  # the client's body does not decode
        problem = HTTPProblem(400, "malformed request body", code="bad_http")
    else:
        log.error("unhandled error", exc_info=exc, extra={"request_id": rid})
        problem = HTTPProblem(
            500,
            f"the proxy failed to handle this request; it was logged under request id {rid}",
            code="internal_error",
        )
    return problem_response(problem, instance=_instance(request), request_id=rid)


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
