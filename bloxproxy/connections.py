"""Client connections: what happens when a client goes away in the middle of a request.

aiohttp tells a handler reading the body of a client that hung up with a bare
``ConnectionResetError`` raised by ``request.read()`` — indistinguishable, for the code that
maps errors, from a fault of ours, so it was logged as an "unhandled error" with its
traceback and counted as a 500. :class:`GuardedRequestHandler` (the connection handler of
``serve``'s runner) fails that read with :class:`ClientGone` instead: a problem of status
499 (nginx's "client closed request"), which the front handler records in the access log
and the metrics like any answer, with nothing logged. The answer itself goes nowhere.

A body that failed (the client went away, or it did not decode) is not read any further
after the answer: aiohttp's "lingering" read of an unread body would raise the same error
again, outside any handler, and log it as an unhandled exception.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .errors import HTTPProblem
from .middlewares import ProblemRequestHandler, ProblemServer

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


class GuardedRequestHandler(ProblemRequestHandler):
    """aiohttp's connection handler, telling a vanished client apart from a fault."""

    __slots__ = ()

    def connection_lost(self, exc: BaseException | None) -> None:
        request = self._current_request
        if request is not None and not request.content.is_eof():
            # aiohttp would fail the body read with a bare ConnectionResetError; it leaves
            # the request alone once this is None (the handler's own finally clears it too).
            self._current_request = None
            request.content.set_exception(ClientGone())
        super().connection_lost(exc)

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if request.content.exception() is not None:
            # A failed body is not read on: the connection closes after this answer.
            self._lingering_time = 0.0
        return await super().finish_response(request, resp, start_time)


class GuardedServer(ProblemServer):
    """``web.Server`` whose connections use :class:`GuardedRequestHandler`."""

    __slots__ = ()

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)


def guard_connections(runner: web.AppRunner) -> None:
    """Make a set-up runner's connections :class:`GuardedRequestHandler`\\ s."""
    server: Any = runner.server
    assert server is not None and type(server) in (web.Server, ProblemServer)
    server.__class__ = GuardedServer
