"""The passthrough front door's steps: ``/{service}/{path}`` ≡
``https://{service}.roblox.com/{path}``, made into an upstream request.

The path is re-encoded segment by segment (``//`` collapsed, ``.``/``..`` refused); query
and body go through unchanged; hop-by-hop, our own and client-address headers are dropped
(:func:`bloxproxy.upstream.client.forwardable_request_headers`), and so are conditional and
range headers on cacheable reads, which the proxy answers itself (ETag, 304). A ``HEAD`` is
asked upstream as the ``GET`` it describes, so it shares the ``GET``'s entry (the server
sends no body for a HEAD).
"""

from __future__ import annotations

import dataclasses
import re
from urllib.parse import quote, unquote

import orjson
from aiohttp import web

from .errors import HTTPProblem, bad_request, not_found
from .upstream.client import UpstreamRequest, forwardable_request_headers

__all__ = [
    "CONDITIONAL",
    "as_read",
    "canonical_path",
    "unknown_service",
    "upstream_request",
    "with_api_key",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SEGMENT_SAFE = "-._~!$&'()*+,;=:@"
# A path that canonical_path() leaves as it is: non-empty segments of characters that
# quote(safe=_SEGMENT_SAFE) keeps (no ``%``), none of them ``.`` or ``..``.
_CANONICAL = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9\-._~!$&'()*+,;=:@]+)+")
# Answered by the proxy on cacheable reads (ETag/304); sent upstream they would make
# Roblox's 304/206 the shared answer.
CONDITIONAL = (
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
    "range",
)


def unknown_service(service: str, allowed: frozenset[str]) -> HTTPProblem:
    shown = service if len(service) <= 64 else service[:61] + "..."
    return not_found(
        f"unknown service {shown!r}; passthrough serves: {', '.join(sorted(allowed))}",
        code="unknown_service",
    )


async def upstream_request(
    request: web.Request,
    service: str,
    raw_path: str,
    *,
    max_body: int,
    drop: tuple[str, ...],
    drop_cacheable: tuple[str, ...],
) -> UpstreamRequest:
    """The upstream request a passthrough client request becomes: without the headers in
    ``drop`` (our own), or in ``drop_cacheable`` for a GET when caching is on (ours and the
    conditionals)."""
    path = canonical_path(raw_path)
    body: bytes | None = None
    if request.body_exists:
        if request.content_length is not None and request.content_length > max_body:
            raise HTTPProblem(413, f"request body exceeds {max_body} bytes")
        body = await request.read()
    method = "GET" if request.method == "HEAD" else request.method
    safe = method == "GET"
    return UpstreamRequest(
        service,
        method,
        path,
        request.rel_url.raw_query_string,
        forwardable_request_headers(request.headers, drop_cacheable if safe else drop),
        body,
        safe_read=safe,
    )


def as_read(ureq: UpstreamRequest) -> UpstreamRequest:
    """A passthrough POST that a rule documents as a read (users by ids, usernames,
    presence…), made cacheable: its JSON body in one canonical spelling (keys sorted, no
    spaces) sent with ``Content-Type: application/json``, so that every spelling of one
    question is one cache entry and one upstream call. A body that is not JSON stays as it
    is, and not cached."""
    try:
        data = orjson.loads(ureq.body or b"")
    except orjson.JSONDecodeError:
        return ureq
    headers = tuple((k, v) for k, v in ureq.headers if k.lower() != "content-type")
    return dataclasses.replace(
        ureq,
        body=orjson.dumps(data, option=orjson.OPT_SORT_KEYS),
        headers=(*headers, ("Content-Type", "application/json")),
        safe_read=True,
    )


# Dropped when the proxy sends a held API key instead (with the key's own, lower-case).
_NOT_WITH_HELD_KEY = frozenset({"cookie", "x-api-key", "authorization"})


def with_api_key(ureq: UpstreamRequest, key: str) -> UpstreamRequest:
    """``ureq`` sent with the Open Cloud key ``key`` the proxy holds: the client's
    ``Cookie`` (a ``.ROBLOSECURITY``) and any blank ``x-api-key`` / ``Authorization``
    dropped, so Roblox sees the held key and nothing else of the client's identity."""
    kept = tuple((k, v) for k, v in ureq.headers if k.lower() not in _NOT_WITH_HELD_KEY)
    return dataclasses.replace(ureq, headers=(*kept, ("x-api-key", key)))


def canonical_path(raw_path: str) -> str:
    """Re-encode a client path segment by segment for the upstream URL.

    ``//`` collapses (ro.py sends one); ``.`` and ``..`` segments, also percent-encoded, are
    refused rather than resolved; each segment is percent-decoded and encoded again, so
    backslashes, spaces and ``%2F`` stay *inside* their segment and every spelling of one
    path gives one upstream URL and one cache key.
    """
    if _CANONICAL.fullmatch(raw_path):
        return raw_path  # only characters that decode and encode to themselves: as it is
    out = []
    for raw in raw_path.split("/"):
        if not raw:
            continue
        try:
            segment = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise bad_request("the path is not valid UTF-8") from None
        if segment in (".", ".."):
            raise bad_request("'.' and '..' path segments are not allowed")
        if _CONTROL.search(segment):
            raise bad_request("control characters are not allowed in the path")
        out.append(quote(segment, safe=_SEGMENT_SAFE))
    return "/" + "/".join(out)
