"""The clean front door's steps, as functions of a compiled route (:mod:`bloxproxy.rules`).

Every parameter is parsed at once (all failures reported together, 400, no upstream call);
the route's templates build the :class:`~bloxproxy.upstream.client.UpstreamRequest` (id
lists sorted when the answer is put back in the client's order, so every permutation is
one upstream call); an upstream 2xx is normalized by the route's plan; an upstream error
status becomes problem+json with ``upstream_status`` and Roblox's own ``errors`` list.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import orjson
from multidict import MultiMapping

from . import normalize
from .cache.entry import Entry
from .errors import HTTPProblem, UpstreamError, UpstreamStatus, bad_request, not_found
from .params import ParamError
from .rules import Composite, Route
from .upstream.client import UpstreamRequest

__all__ = [
    "JSON",
    "operation_request",
    "render",
    "upstream_problem",
    "upstream_request",
    "values_of",
]

JSON = "application/json; charset=utf-8"
_CREDENTIAL_HEADERS = ("cookie", "authorization", "x-api-key")


def values_of(
    route: Route | Composite, raw: dict[str, str], query: MultiMapping[str]
) -> dict[str, Any]:
    """Every parameter of ``route`` (or of a composite route) parsed; one 400 listing every
    invalid one."""
    values: dict[str, Any] = {}
    invalid: list[dict[str, str]] = []
    for p in route.path_params:
        try:
            values[p.name] = p.parse([raw[p.name]])
        except ParamError as exc:
            invalid.append({"name": exc.name, "in": "path", "reason": exc.reason})
    for p in route.query_params:
        try:
            values[p.name] = p.parse(query.getall(p.name, ()))
        except ParamError as exc:
            invalid.append({"name": exc.name, "in": "query", "reason": exc.reason})
    if invalid:
        detail = "; ".join(f"{i['name']} {i['reason']}" for i in invalid)
        raise bad_request(f"invalid parameters: {detail}", invalid=invalid)
    return values


def upstream_request(
    route: Route, values: dict[str, Any], client_headers: MultiMapping[str]
) -> UpstreamRequest:
    """The upstream request ``route`` makes of ``values`` (nothing is forwarded unless
    the rule lists it)."""
    b = route.backend
    if route.order_param and values.get(route.order_param):
        # The response is put back in the client's order (order_by), so the upstream
        # request can use one canonical order: one cache entry for every permutation.
        values = dict(values)
        values[route.order_param] = tuple(sorted(values[route.order_param]))
    headers = list(b.headers)
    for name in b.forward_headers:
        value = client_headers.get(name)
        if value is not None:
            headers.append((name, value))
    if b.credentials == "forward":
        for name in _CREDENTIAL_HEADERS:
            value = client_headers.get(name)
            if value:
                headers.append((name, value))
    elif b.credentials == "api_key":
        value = client_headers.get("x-api-key")
        if value:
            headers.append(("x-api-key", value))
    body = None
    if b.body is not None:
        body = orjson.dumps(b.body(values), option=orjson.OPT_SORT_KEYS)  # one spelling
        headers.append(("Content-Type", "application/json"))
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe=',')}" for k, v in b.query.render(values))
    return UpstreamRequest(
        b.service,
        b.method,
        b.path.render(values),
        query,
        tuple(headers),
        body,
        b.safe_read,
        route.bucket if route.bucket != b.service else "",
    )


# An Open Cloud resource name (``users/156/operations/abc-123``): segments of unreserved
# characters, none of them "." or "..", so the poll path needs no encoding and cannot climb.
_OPERATION_NAME = re.compile(r"^[A-Za-z0-9_~-][A-Za-z0-9._~-]*(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)*$")
OPERATION_PREFIX = "/cloud/v2/"


def operation_request(
    asked: UpstreamRequest, name_path: normalize.Path, resp: Entry
) -> UpstreamRequest | None:
    """The poll of the long-running Operation ``resp`` describes (its name at
    ``name_path``): ``GET /cloud/v2/<name>`` with the same service, credentials and bucket;
    None when the body names none we can ask for (not JSON, no name, a name that is not
    a plain resource path)."""
    try:
        data = orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        return None
    name = normalize.get_path(data, name_path)
    if not isinstance(name, str) or len(name) > 512 or not _OPERATION_NAME.match(name):
        return None
    headers = tuple((k, v) for k, v in asked.headers if k.lower() != "content-type")
    return UpstreamRequest(
        asked.service, "GET", OPERATION_PREFIX + name, "", headers, None, True, asked.bucket
    )


def render(route: Route, requested: Sequence[object] | None, resp: Entry) -> bytes:
    """A clean route's body from an upstream 2xx answer; raises the problem it makes
    (not JSON, invalid JSON, a required field missing, an unexpected shape)."""
    ctype = _header(resp.headers, "content-type")
    if ctype is not None and not _is_json_type(ctype):
        shown = ctype if len(ctype) <= 64 else ctype[:61] + "..."
        raise UpstreamError(
            502,
            f"{route.backend.service} answered {shown!r}, not JSON",
            code="upstream_bad_response",
        )
    try:
        data = orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        raise UpstreamError(
            502,
            f"{route.backend.service} answered with invalid JSON",
            code="upstream_bad_response",
        ) from None
    for path in route.require:
        if normalize.get_path(data, path) in (None, normalize.MISSING):
            raise not_found("nothing found", code="not_found")
    try:
        result = normalize.apply(route.plan, data, requested)
    except normalize.EmptyResult:
        raise not_found("nothing found", code="not_found") from None
    except normalize.ShapeError as exc:
        raise UpstreamError(
            502,
            f"{route.backend.service} answered with an unexpected shape: {exc}",
            code="upstream_bad_response",
        ) from None
    return orjson.dumps(result)


def _header(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


@functools.lru_cache(maxsize=64)  # a handful of spellings, asked on every clean answer
def _is_json_type(content_type: str) -> bool:
    """``application/json`` or a ``+json`` type (RFC 6839), parameters ignored."""
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )


def upstream_problem(
    route: Route, status: int, body: bytes, headers: tuple[tuple[str, str], ...]
) -> HTTPProblem:
    """Roblox's error status as problem+json, with Roblox's ``errors`` list kept (an Open
    Cloud error, ``{"code": "NOT_FOUND", "message": ...}``, as ``upstream_error``)."""
    errors: Any = None
    detail = f"{route.backend.service} answered {status}"
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    cloud_error: dict[str, str] | None = None
    if isinstance(parsed, dict) and isinstance(parsed.get("errors"), list):
        errors = parsed["errors"]
        first = errors[0] if errors else None
        if isinstance(first, dict) and isinstance(first.get("message"), str):
            detail = f"{detail}: {first['message']}"
    elif isinstance(parsed, dict) and isinstance(parsed.get("code"), str):
        # Open Cloud's own errors: {"code": "NOT_FOUND", "message": "..."} (kept as sent)
        cloud_error = {"code": parsed["code"][:100]}
        message = parsed.get("message")
        if isinstance(message, str):
            cloud_error["message"] = message[:1000]
            detail = f"{detail}: {message[:200]}"
        else:
            detail = f"{detail}: {cloud_error['code']}"
    if 300 <= status < 400:
        ours = 502
        detail = f"{route.backend.service} answered a redirect ({status}), which is not followed"
    elif status >= 500 and status not in (503, 504):
        ours = 502
    else:
        ours = route.status_map.get(status, status)
    extra: dict[str, Any] = {"upstream_status": status}
    if errors is not None:
        extra["errors"] = errors
    if cloud_error is not None:
        extra["upstream_error"] = cloud_error
    keep = {}
    for name, value in headers:
        if name.lower() == "retry-after":
            keep["Retry-After"] = value
    return UpstreamStatus(ours, detail, code="upstream_error", extra=extra, headers=keep)
