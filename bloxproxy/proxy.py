"""The service pipeline: one handler for both front doors.

``/v<N>/...`` is the clean API (a rule from :mod:`bloxproxy.rules`); ``/{service}/...`` is
passthrough to an allow-listed Roblox service (or ``Host: {service}.<host_suffix>``). Both
turn the client request into an :class:`~bloxproxy.upstream.UpstreamRequest`, hand it to the
fetcher (cache → coalescing → upstream) and answer: passthrough with Roblox's status, headers
and body unchanged; clean routes with the normalized body or a problem+json error.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, unquote_to_bytes

import orjson
from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from . import normalize
from .cache import decide
from .cache.entry import Entry
from .cache.layer import Fetcher
from .config import Config
from .errors import HTTPProblem, UpstreamError, UpstreamStatus, bad_request, not_found
from .fetch import Fetched, Policy
from .observe import INFO
from .params import ParamError
from .rules import Route, RuleSet
from .upstream import UpstreamRequest, forwardable_request_headers

JSON = "application/json; charset=utf-8"
_CLEAN_PREFIX = re.compile(r"^/v[0-9]+(/|$)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SEGMENT_SAFE = "-._~!$&'()*+,;=:@"
_CREDENTIAL_HEADERS = ("authorization", "x-api-key")
_SURROGATE = re.compile("[\udc80-\udcff]")
# A path that canonical_path() leaves as it is: non-empty segments of characters that
# quote(safe=_SEGMENT_SAFE) keeps (no ``%``), none of them ``.`` or ``..``.
_CANONICAL = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9\-._~!$&'()*+,;=:@]+)+")


@dataclass(frozen=True, slots=True)
class Credential:
    """What identifies the caller to Roblox; empty when anonymous."""

    value: str

    @classmethod
    def of(cls, request: web.Request) -> Credential:
        headers = request.headers
        if (
            "Cookie" not in headers
            and "Authorization" not in headers
            and "X-Api-Key" not in headers
        ):
            return _ANONYMOUS  # (most requests: spare the parsing below)
        # Every occurrence counts: passthrough forwards repeated headers as they are, and
        # the upstream may read any of them (a second `Cookie` header, a later duplicate
        # `.ROBLOSECURITY`, `Authorization: ` then `Authorization: Bearer …`). Looking at
        # the first one only would take a credentialed request for an anonymous one and
        # put its answer in the shared cache.
        parts = [f"cookie={value}" for value in _roblosecurity_values(request.headers)]
        for name in _CREDENTIAL_HEADERS:
            for value in request.headers.getall(name, ()):
                if value.strip():
                    parts.append(f"{name}={value}")
        value = "\n".join(parts)
        if _SURROGATE.search(value):
            # aiohttp decodes header bytes that are not UTF-8 with surrogateescape; such a
            # value cannot be encoded for the per-credential HMAC. NUL never survives the
            # HTTP parser, so this spelling cannot collide with a real header value.
            value = "\x00raw:" + value.encode("utf-8", "surrogateescape").hex()
        return cls(value)


_ANONYMOUS = Credential("")


def _roblosecurity_values(headers: MultiMapping[str]) -> list[str]:
    """Non-empty ``.ROBLOSECURITY`` values in every ``Cookie`` header, the name matched
    case-insensitively (some servers do), cookies split on ``;`` and also found after a
    ``,`` (old-style lists). A value is kept whole up to its ``;``, so two cookies that
    differ after a comma never share a per-credential entry. An empty ``.ROBLOSECURITY=``
    is anonymous (some clients always send one)."""
    out = []
    for header in headers.getall("Cookie", ()):
        for part in header.split(";"):
            for piece in (part, *part.split(",")[1:]):
                name, eq, value = piece.partition("=")
                value = value.strip().strip('"').strip()
                if eq and value and name.strip().lower() == ".roblosecurity":
                    out.append(value)
    return out


class Proxy:
    """Holds what the pipeline needs; ``rules`` is swapped whole on reload."""

    def __init__(self, config: Config, rules: RuleSet, fetcher: Fetcher) -> None:
        self.config = config
        self.rules = rules
        self.fetcher = fetcher
        self._allowed = frozenset(config.upstream.allowed_services)
        self._suffix = ("." + config.server.host_suffix) if config.server.host_suffix else ""
        self._max_body = config.server.max_body_size
        self._drop = (config.auth.header,)  # our access key never goes to Roblox
        self._drop_cacheable = (
            *self._drop,
            "if-none-match",
            "if-modified-since",
            "if-match",
            "if-unmodified-since",
            "if-range",
            "range",
        )
        self._policies = {r.id: Policy.for_route(r, config) for r in rules.routes}
        self._pass_policies = {safe: Policy.for_passthrough(safe, config) for safe in (True, False)}

    def swap(self, config: Config, rules: RuleSet) -> None:
        """Take a validated config and rule set (hot reload). Routing, parameter parsing and
        request building run without an await in between, so a request in flight keeps the
        route it matched, and nothing here is ever half-swapped from its point of view."""
        self.__init__(config, rules, self.fetcher)  # type: ignore[misc]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        if self._suffix:
            host = (request.host or "").split(":", 1)[0].lower()
            if host.endswith(self._suffix):
                service = host[: -len(self._suffix)]
                return await self._passthrough(request, service, raw_path)
        if _CLEAN_PREFIX.match(raw_path):
            return await self._clean(request, raw_path)
        service, _, rest = raw_path.lstrip("/").partition("/")
        return await self._passthrough(request, service, "/" + rest)

    # -- clean routes ------------------------------------------------------------------

    async def _clean(self, request: web.Request, raw_path: str) -> web.StreamResponse:
        try:
            route, raw_params, exists = self.rules.router.match(request.method, raw_path)
        except UnicodeDecodeError:
            raise bad_request("the path is not valid UTF-8") from None
        if route is None:
            if exists:
                methods = self.rules.router.methods(raw_path)
                if "GET" in methods and "HEAD" not in methods:
                    methods = [*methods, "HEAD"]  # the router answers HEAD with GET
                allowed = ", ".join(methods)
                raise HTTPProblem(
                    405,
                    f"{request.method} is not allowed here (allowed: {allowed})",
                    headers={"Allow": allowed},
                )
            raise not_found(f"no route matches {raw_path}", code="no_route")
        raw_query = request.rel_url.raw_query_string
        try:
            # aiohttp decodes invalid UTF-8 in the query to U+FFFD, which would silently
            # send a different value upstream: refuse it like an invalid path.
            unquote_to_bytes(raw_query).decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request("the query string is not valid UTF-8") from None
        info = request.get(INFO)
        if info is not None:
            info.route = route.id
        values = self._params(route, raw_params, request.rel_url.query)
        ureq = self._upstream_request(route, values, request.headers)
        fetched = await self.fetcher.fetch(
            ureq, self._policies[route.id], request, Credential.of(request).value
        )
        if info is not None:
            info.cache, info.upstream = fetched.result, fetched.upstream
            info.cache_time = fetched.cache_time
        try:
            return self._clean_response(route, values, fetched, request)
        except UpstreamError:
            # A 200 we cannot use (not JSON, unexpected shape) must not stay in the cache
            # for the route's whole TTL: drop it, so the next request asks Roblox again.
            if fetched.key and fetched.entry.ttl > 0:
                await self.fetcher.purge_key(fetched.key)
            raise

    def cache_key_for(self, raw_path: str, query: MultiMapping[str]) -> str | None:
        """The cache key an anonymous GET of this URL uses (for purging one URL)."""
        if _CLEAN_PREFIX.match(raw_path):
            route, raw_params, _ = self.rules.router.match("GET", raw_path)
            if route is None:
                return None
            values = self._params(route, raw_params, query)
            send = self._policies[route.id].send
            return decide.cache_key(self._upstream_request(route, values, CIMultiDict()), send)
        service, _, rest = raw_path.lstrip("/").partition("/")
        if service not in self._allowed:
            return None
        qs = "&".join(f"{quote(k, safe='')}={quote(v, safe=',')}" for k, v in query.items())
        ureq = UpstreamRequest(service, "GET", canonical_path("/" + rest), qs)
        return decide.cache_key(ureq)

    def route_prefix(self, route: Route) -> str:
        b = route.backend
        return decide.route_prefix(b.method, b.service, b.path.text)

    def _params(
        self, route: Route, raw: dict[str, str], query: MultiMapping[str]
    ) -> dict[str, Any]:
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

    def _upstream_request(
        self, route: Route, values: dict[str, Any], client_headers: MultiMapping[str]
    ) -> UpstreamRequest:
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
            for name in ("cookie", *_CREDENTIAL_HEADERS):
                value = client_headers.get(name)
                if value:
                    headers.append((name, value))
        body = None
        if b.body is not None:
            body = orjson.dumps(b.body(values))
            headers.append(("Content-Type", "application/json"))
        query = "&".join(
            f"{quote(k, safe='')}={quote(v, safe=',')}" for k, v in b.query.render(values)
        )
        return UpstreamRequest(
            b.service, b.method, b.path.render(values), query, tuple(headers), body, b.safe_read
        )

    def _clean_response(
        self, route: Route, values: dict[str, Any], fetched: Fetched, request: web.Request
    ) -> web.StreamResponse:
        resp = fetched.response
        if resp.status >= 400 or resp.status < 200 or 300 <= resp.status < 400:
            raise _upstream_problem(route, resp.status, resp.body, resp.headers)
        requested = values.get(route.order_param) if route.order_param else None
        # How any entry of this key becomes this answer's body (the front door's fast path
        # from Redis renders with it too: see front.SharedFast).
        renderer = fetched.renderer = functools.partial(render_clean, route, requested)
        body, etag = fetched.render(route.id, requested, functools.partial(renderer, resp))
        return fetched.respond(request, 200, body, etag=etag, content_type=JSON)

    # -- passthrough -------------------------------------------------------------------

    async def _passthrough(
        self, request: web.Request, service: str, raw_path: str
    ) -> web.StreamResponse:
        if service not in self._allowed:
            shown = service if len(service) <= 64 else service[:61] + "..."
            raise not_found(
                f"unknown service {shown!r}; passthrough serves: "
                f"{', '.join(sorted(self._allowed))}",
                code="unknown_service",
            )
        path = canonical_path(raw_path)
        body: bytes | None = None
        if request.body_exists:
            if request.content_length is not None and request.content_length > self._max_body:
                raise HTTPProblem(413, f"request body exceeds {self._max_body} bytes")
            body = await request.read()
        method = request.method
        safe = method in ("GET", "HEAD")
        # Conditional and range headers are answered by the proxy (ETag/304) on cacheable
        # reads; sent upstream they would make Roblox's 304/206 the shared answer.
        drop = self._drop_cacheable if safe and self.config.cache.enabled else self._drop
        ureq = UpstreamRequest(
            service,
            method,
            path,
            request.rel_url.raw_query_string,
            forwardable_request_headers(request.headers, drop),
            body,
            safe_read=safe,
        )
        info = request.get(INFO)
        if info is not None:
            info.route = "passthrough:" + service
        fetched = await self.fetcher.fetch(
            ureq, self._pass_policies[safe], request, Credential.of(request).value
        )
        if info is not None:
            info.cache, info.upstream = fetched.result, fetched.upstream
            info.cache_time = fetched.cache_time
        resp = fetched.response
        return fetched.respond(request, resp.status, resp.body, resp.headers)


def render_clean(route: Route, requested: Sequence[object] | None, resp: Entry) -> bytes:
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


def _upstream_problem(
    route: Route, status: int, body: bytes, headers: tuple[tuple[str, str], ...]
) -> UpstreamStatus:
    """Roblox's error status as problem+json, with Roblox's ``errors`` list kept."""
    errors: Any = None
    detail = f"{route.backend.service} answered {status}"
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("errors"), list):
        errors = parsed["errors"]
        first = errors[0] if errors else None
        if isinstance(first, dict) and isinstance(first.get("message"), str):
            detail = f"{detail}: {first['message']}"
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
    keep = {}
    for name, value in headers:
        if name.lower() == "retry-after":
            keep["Retry-After"] = value
    return UpstreamStatus(ours, detail, code="upstream_error", extra=extra, headers=keep)
