"""The server's connection handler: requests too malformed to reach any handler are
answered as problem+json too.

aiohttp answers a request line or header beyond the limits, or bytes that are not HTTP,
itself, in plain text; :class:`ProblemRequestHandler` keeps the promise that every error a
client sees has our shape (:mod:`bloxproxy.errors`). :func:`use_problem_errors` puts it on
a set-up runner's server.
"""

from __future__ import annotations

import logging
import secrets

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .errors import HTTPProblem, problem_response
from .requestids import REQUEST_ID_HEADER

__all__ = ["ProblemRequestHandler", "ProblemServer", "use_problem_errors"]

log = logging.getLogger("bloxproxy")


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
