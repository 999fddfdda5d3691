"""The one exception tree of bloxproxy, and the one place it becomes HTTP.

::

    BloxproxyError
    ├── ConfigError            config or rule files are invalid (a list of file:line problems)
    ├── StoreUnavailable       Redis failed; the caller degrades (L1, local limits), never fails
    └── HTTPProblem            an answer to the client as RFC 9457 application/problem+json
        ├── UpstreamError      Roblox could not be reached or answered nonsense (502/504)
        │   └── Unavailable    the proxy will not call Roblox right now (503 + Retry-After)
        └── UpstreamStatus     Roblox answered an error status on a clean route

Handlers raise; the front door turns whatever they raise into an answer with
:func:`error_response`, and the connection handler (:mod:`bloxproxy.connections`) does the
same for requests too malformed to reach a handler. Nothing else builds error responses, so
every error a client sees has the same shape: ``type``, ``title``, ``status``, ``detail``,
``instance``, ``request_id``, and where they exist ``upstream_status`` and Roblox's
``errors``. An unexpected exception is logged with its traceback and answered as a bare 500
problem — a client never sees a stack trace.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

PROBLEM_JSON = "application/problem+json"

log = logging.getLogger("bloxproxy")


class BloxproxyError(Exception):
    """Root of every error bloxproxy raises on purpose."""


@dataclass(frozen=True, slots=True)
class Where:
    """A place in a source file, printed as ``file:line``."""

    file: str
    line: int  # 1-based

    def __str__(self) -> str:
        # line 0 means "not in a file" (an environment variable, a command-line flag)
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a config or rule file."""

    where: Where
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class ConfigError(BloxproxyError):
    """Config or rules failed validation; ``problems`` lists every error found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class StoreUnavailable(BloxproxyError):
    """The backing store (Redis) failed; the caller decides how to degrade (L1, local
    limits). Never answered to a client as it is."""


class NodeUnavailable(StoreUnavailable):
    """One node of a Redis Cluster failed (or is in its back-off): the keys of its slots
    are misses for now, the other nodes' keys work; not a reason to stop using Redis."""


class HTTPProblem(BloxproxyError):
    """An error answered to the client as problem+json.

    ``code`` is a stable machine-readable slug (``invalid_parameter``, ``unknown_service``…);
    ``extra`` adds members to the body; ``headers`` are sent with it (e.g. ``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str = "",
        title: str | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code or _default_code(status)
        self.title = title or _reason(status)
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


class UpstreamError(HTTPProblem):
    """Roblox (or the configured upstream) failed: unreachable, timed out, or malformed."""


class Unavailable(UpstreamError):
    """The proxy refuses to call a service right now (paused, breaker open, limiter or body
    budget full); a stale entry may still answer (the cache layer treats it like an
    upstream failure)."""

    def __init__(self, detail: str, code: str, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            503,
            detail,
            code=code,
            headers={"Retry-After": str(seconds)},
            extra={"retry_after": seconds},
        )


class UpstreamStatus(HTTPProblem):
    """Roblox answered an error status for a clean route; carries its ``errors`` list."""


def bad_request(detail: str, *, invalid: Sequence[Mapping[str, str]] = ()) -> HTTPProblem:
    """400 for a malformed path, query or body, listing each invalid parameter."""
    extra = {"invalid_params": list(invalid)} if invalid else None
    return HTTPProblem(400, detail, code="invalid_request", extra=extra)


def only_get(request: web.BaseRequest) -> None:
    """A 405 problem for anything but GET and HEAD (the proxy's own read-only pages)."""
    if request.method not in ("GET", "HEAD"):
        raise HTTPProblem(
            405,
            f"{request.method} is not allowed here (allowed: GET, HEAD)",
            headers={"Allow": "GET, HEAD"},
        )


def not_found(detail: str, code: str = "not_found") -> HTTPProblem:
    return HTTPProblem(404, detail, code=code)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _default_code(status: int) -> str:
    return _reason(status).lower().replace(" ", "_").replace("-", "_")


def problem_body(problem: HTTPProblem, *, instance: str, request_id: str) -> bytes:
    """Serialize a problem; public so tests and the OpenAPI examples share it."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": instance,
        "code": problem.code,
        "request_id": request_id,
    }
    body.update(problem.extra)
    return orjson.dumps(body)


def problem_response(problem: HTTPProblem, *, instance: str, request_id: str) -> web.Response:
    resp = web.Response(
        status=problem.status,
        body=problem_body(problem, instance=instance, request_id=request_id),
        content_type=PROBLEM_JSON,
    )
    for name, value in problem.headers.items():
        resp.headers[name] = value
    return resp


def instance_of(raw_path: str) -> str:
    """A problem's ``instance``: the request path, cut to 512 characters."""
    return raw_path if len(raw_path) <= 512 else raw_path[:509] + "..."


def error_response(exc: Exception, raw_path: str, request_id: str) -> web.Response:
    """The problem+json answer for an exception raised while handling a request.

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
        log.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
        problem = HTTPProblem(
            500,
            f"the proxy failed to handle this request; it was logged under request id {request_id}",
            code="internal_error",
        )
    return problem_response(problem, instance=instance_of(raw_path), request_id=request_id)
