"""Server middlewares: request ids, and every error answered as problem+json.

This is the one place the exception tree of :mod:`bloxproxy.errors` becomes HTTP; an
unexpected exception is logged with its traceback and answered as a bare 500 problem —
a client never sees a stack trace.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from .errors import HTTPProblem, problem_response

log = logging.getLogger("bloxproxy")

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = web.RequestKey("request_id", str)
# Accepted from clients only when short and plain, so it is safe in logs and headers.
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:@+=-]{1,128}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id_of(request: web.Request) -> str:
    rid: str = request.get(REQUEST_ID, "")
    return rid


def _instance(request: web.Request) -> str:
    path = request.rel_url.raw_path
    return path if len(path) <= 512 else path[:509] + "..."


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Assign the request id, and turn every error into problem+json."""
    rid = request.headers.get(REQUEST_ID_HEADER, "")
    if not REQUEST_ID_RE.match(rid):
        rid = secrets.token_hex(8)
    request[REQUEST_ID] = rid
    try:
        resp = await handler(request)
    except HTTPProblem as exc:
        resp = problem_response(exc, instance=_instance(request), request_id=rid)
    except web.HTTPException as exc:
        # aiohttp's own errors (e.g. 413 from client_max_size) get our shape too.
        if exc.status < 400:
            raise
        problem = HTTPProblem(exc.status, exc.text or exc.reason)
        resp = problem_response(problem, instance=_instance(request), request_id=rid)
    except Exception:
        log.exception("unhandled error", extra={"request_id": rid})
        problem = HTTPProblem(500, "the proxy failed to handle this request; it was logged "
                              f"under request id {rid}", code="internal_error")
        resp = problem_response(problem, instance=_instance(request), request_id=rid)
    resp.headers[REQUEST_ID_HEADER] = rid
    return resp
