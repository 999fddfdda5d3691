"""The fake Roblox upstream as an aiohttp application.

Every Roblox service is served under one host as ``/{service}/{path}``: ``GET
/users/v1/users/1`` stands for ``https://users.roblox.com/v1/users/1``.  Duplicate slashes
are collapsed before matching and literal segments match case-insensitively.  Unknown
service/path -> 404 ``{"errors":[{"code":0,"message":"NotFound"}]}``.  ``HEAD`` of a GET route
gets the GET's status and headers, without the body.

Per request, in order: record it; charge it to the per-client-IP limit when one is set
(``state.ip_limit``; refused -> the endpoint's 429, no scripted fault consumed); take the
next scripted fault; sleep ``state.latency``; sleep the fault's ``delay``; answer the fault
(or normally); then -- for JSON object answers to a request carrying a credential (non-empty
``.ROBLOSECURITY`` cookie, ``x-api-key`` or ``Authorization``) -- add ``"_fakeViewer": <first
16 hex of sha256(credential)>``.  That includes error bodies and ``status`` faults; verbatim
fault bodies (``malformed_json``, ``body``, ``body_size``) are left untouched.  Answers on
Open Cloud paths (``apis`` ``/cloud/...``) carry ``x-ratelimit-limit``/``-remaining``/
``-reset`` while a limit is set, and ``retry-after`` on its 429; legacy 429s carry neither.

CSRF (the X-CSRF-TOKEN handshake Roblox documents on its mutating endpoints): POST/PATCH/
PUT/DELETE with a non-empty ``.ROBLOSECURITY`` cookie (and catalog items/details always)
need ``X-CSRF-TOKEN: state.csrf_token(cookie)``; otherwise 403 "Token Validation Failed" with
the valid token in the ``x-csrf-token`` response header.  The documented reads POST users
/v1/users, /v1/usernames/users, presence /v1/presence/users and thumbnails /v1/batch are
exempt.

:func:`answer` computes the normal answer to a request in-process (what a direct call with
no limit or fault gets), for load generators that check what a proxy returned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiohttp import web

from .common import NOT_FOUND, RATE_LIMITED, TOKEN_FAILED_BODY, Ctx, Reply, Route, is_digits
from .control import handle_control
from .faults import JSON_CT, Fault, extra_headers, fault_response
from .limits import IpLimit, Verdict
from .routes_cloud import CLOUD_RATE_LIMITED
from .routes_cloud import ROUTES as CLOUD_ROUTES
from .routes_content import ROUTES as CONTENT_ROUTES
from .routes_media import ROUTES as MEDIA_ROUTES
from .routes_thumbnails import ROUTES as THUMBNAIL_ROUTES
from .routes_users import ROUTES as USER_ROUTES
from .state import DEFAULT_LOG_LIMIT, FakeRoblox, Recorded, viewer_tag

FAKE_STATE: web.AppKey[FakeRoblox] = web.AppKey("FAKE_STATE", FakeRoblox)

ALL_ROUTES: tuple[Route, ...] = (
    *USER_ROUTES,
    *CONTENT_ROUTES,
    *MEDIA_ROUTES,
    *THUMBNAIL_ROUTES,
    *CLOUD_ROUTES,
)
MUTATING = frozenset({"POST", "PATCH", "PUT", "DELETE"})
_BASE_HEADERS = {"Content-Type": JSON_CT, "Cache-Control": "no-cache"}

# A pattern segment: "" = an integer parameter, ":verb" = an integer parameter followed by
# ":verb" (Open Cloud's custom methods, ``users/{userId}:generateThumbnail``), else literal.
_Pattern = tuple[Route, tuple[str, ...]]


def _shape_of(segment: str) -> str:
    if not segment.startswith("{"):
        return segment.lower()
    _, _, verb = segment.partition("}")
    return verb.lower()  # "" or ":verb"


def _fits(shape: str, segment: str) -> bool:
    if not shape:
        return is_digits(segment)
    if shape.startswith(":"):
        return segment.endswith(shape) and is_digits(segment[: -len(shape)])
    return shape == segment


class Router:
    """Matches ``(service, method, segments)`` against routes; literal routes win."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._literal: dict[tuple[str, str, tuple[str, ...]], Route] = {}
        self._dynamic: dict[tuple[str, str, int], list[tuple[Route, tuple[str, ...]]]] = {}
        self._names: dict[Route, tuple[tuple[int, str, int], ...]] = {}
        for route in routes:
            segs = tuple(s for s in route.pattern.split("/") if s)
            names = tuple(
                (i, s[1 : s.index("}")], len(s) - s.index("}") - 1)
                for i, s in enumerate(segs)
                if s.startswith("{")
            )
            if not names:
                self._literal[(route.service, route.method, tuple(s.lower() for s in segs))] = route
                continue
            shape = tuple(_shape_of(s) for s in segs)
            self._names[route] = names
            self._dynamic.setdefault((route.service, route.method, len(segs)), []).append(
                (route, shape)
            )

    def match(
        self, service: str, method: str, segments: list[str]
    ) -> tuple[Route, dict[str, int]] | None:
        """The matching route and its integer path parameters, or None."""
        lowered = tuple(s.lower() for s in segments)
        route = self._literal.get((service, method, lowered))
        if route is not None:
            return route, {}
        for route, shape in self._dynamic.get((service, method, len(lowered)), ()):
            if all(_fits(p, s) for p, s in zip(shape, lowered, strict=True)):
                return route, {
                    name: int(lowered[i][: len(lowered[i]) - cut])
                    for i, name, cut in self._names[route]
                }
        return None


ROUTER = Router(ALL_ROUTES)


def roblosecurity(cookie_headers: Iterable[str]) -> str | None:
    """The non-empty ``.ROBLOSECURITY`` value from ``Cookie`` headers, else None."""
    for header in cookie_headers:
        if ".ROBLOSECURITY" not in header:
            continue
        for part in header.split(";"):
            name, _, value = part.strip().partition("=")
            if name == ".ROBLOSECURITY":
                return value.strip() or None
    return None


def _answer(
    state: FakeRoblox,
    found: tuple[Route, dict[str, int]] | None,
    method: str,
    query_items: Iterable[tuple[str, str]],
    body: bytes,
    cookie: str | None,
    api_key: str | None,
    csrf_header: str | None,
) -> Reply:
    if found is None:
        return NOT_FOUND
    route, params = found
    if route.csrf == "always" or (route.csrf == "auto" and cookie and method in MUTATING):
        expected = state.csrf_token(cookie)
        if csrf_header != expected:
            return Reply(403, TOKEN_FAILED_BODY, {"x-csrf-token": expected})
    query: dict[str, str] = {}
    for key, value in query_items:
        query.setdefault(key.lower(), value)
    return route.handler(Ctx(state, method, params, query, body, cookie, api_key))


def answer(
    state: FakeRoblox,
    method: str,
    service: str,
    path: str,
    query: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    cookie: str | None = None,
    api_key: str | None = None,
    csrf_token: str | None = None,
) -> Reply:
    """The fake's normal answer to ``method /{service}{path}?query`` computed in-process:
    no recording, rate limit, fault, latency or ``_fakeViewer`` tag.  Thumbnail states
    scripted on ``state`` are consumed as by a real request."""
    segments = [s for s in path.split("/") if s]
    found = ROUTER.match(service.lower(), method.upper(), segments)
    return _answer(state, found, method.upper(), query, body, cookie, api_key, csrf_token)


def key_owner(state: FakeRoblox, api_key: str) -> str:
    """Who an API key belongs to: its registered owner, else the key itself."""
    key = state.cloud.key(api_key)
    return key.owner if key is not None else f"keys/{viewer_tag(api_key)}"


def _is_cloud(service: str, segments: list[str]) -> bool:
    """Open Cloud: ``apis`` ``/cloud/...`` and the ``/legacy-<family>/...`` API-key routes."""
    if service != "apis" or not segments:
        return False
    first = segments[0].lower()
    return first == "cloud" or first.startswith("legacy-")


def _rate_headers(limit: IpLimit, verdict: Verdict) -> dict[str, str]:
    """Open Cloud's rate-limit headers for one answer."""
    headers = {
        "x-ratelimit-limit": limit.limit_header(),
        "x-ratelimit-remaining": str(verdict.remaining),
        "x-ratelimit-reset": str(verdict.reset),
    }
    if not verdict.allowed:
        headers["retry-after"] = str(verdict.retry_after)
    return headers


async def _reset_mid_body(
    request: web.Request, status: int, body: bytes, headers: Mapping[str, str]
) -> web.StreamResponse:
    """Send status, headers and half of ``body`` (declared in full), then close the socket."""
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = max(len(body), 1)
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return resp


def _make_handler(state: FakeRoblox) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        raw_path = request.path
        segments = [s for s in raw_path.split("/") if s]
        if segments and segments[0] == "_fake":
            return await handle_control(request, state, "/".join(segments[1:]))
        method = request.method
        body = await request.read() if request.body_exists else b""
        service = segments[0].lower() if segments else ""
        segments = segments[1:]
        path = "/" + "/".join(segments)
        headers = {k.lower(): v for k, v in request.headers.items()}
        query = tuple(request.query.items())
        state.record(Recorded(method, service, path, query, headers, body, raw_path, state.clock()))
        # HEAD is answered like GET, as aiohttp does for its own GET routes: the same status
        # and headers (Content-Length included), and aiohttp sends no body for a HEAD.
        found = ROUTER.match(service, "GET" if method == "HEAD" else method, segments)
        limit = state.ip_limit
        verdict = state.take_token(request.remote or "", service)
        refused = verdict is not None and not verdict.allowed
        cloud = _is_cloud(service, segments)
        rate = _rate_headers(limit, verdict) if cloud and limit and verdict else {}
        cookie = roblosecurity(request.headers.getall("Cookie", ()))
        api_key = headers.get("x-api-key") or headers.get("authorization") or None
        owner_limit = state.cloud.owner_limit
        if cloud and api_key and owner_limit is not None and not refused:
            # Open Cloud counts an API key's requests against its owner (every key of one
            # owner shares the limit); the owner's headers replace the per-IP ones.
            owner_verdict = state.cloud.take(key_owner(state, api_key))
            if owner_verdict is not None:
                refused = not owner_verdict.allowed
                rate = _rate_headers(owner_limit, owner_verdict)
        fault: Fault | None = None if refused else state.take_fault(method, service, path)
        if state.latency > 0:
            await asyncio.sleep(state.latency)
        credential = cookie or api_key
        tag = viewer_tag(credential).encode() if credential else None
        if fault is not None:
            if fault.delay > 0:
                await asyncio.sleep(fault.delay)
            if fault.drop:
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=499)  # never sent: the socket is closed
            if not fault.reset_mid_body:
                special = fault_response(fault, tag)
                if special is not None:
                    special.headers.update(rate)
                    state.note_status(special.status)
                    return special
        if refused:
            route_429 = found[0].too_many if found is not None else None
            reply = route_429 or (CLOUD_RATE_LIMITED if cloud else RATE_LIMITED)
        else:
            csrf = request.headers.get("X-CSRF-TOKEN")
            reply = _answer(state, found, method, query, body, cookie, api_key, csrf)
        out = reply.body
        if tag is not None and out[:1] == b"{":
            rest = b"}" if out == b"{}" else b"," + out[1:]
            out = b'{"_fakeViewer":"' + tag + b'"' + rest
        resp_headers = dict(_BASE_HEADERS)
        if reply.headers:
            resp_headers.update(reply.headers)
        resp_headers.update(rate)
        state.note_status(reply.status)
        if fault is not None:
            resp_headers.update(extra_headers(fault))
            if fault.reset_mid_body:
                return await _reset_mid_body(request, reply.status, out, resp_headers)
        return web.Response(status=reply.status, body=out, headers=resp_headers)

    return handle


def create_fake_app(
    *,
    latency: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    log_limit: int = DEFAULT_LOG_LIMIT,
    ip_limit: IpLimit | None = None,
) -> web.Application:
    """Build the fake Roblox app; its :class:`FakeRoblox` state is ``app[FAKE_STATE]``.

    ``clock`` timestamps recorded requests, drives CSRF expiry (``state.csrf_ttl``) and
    refills the per-client-IP limit ``ip_limit`` (None = off; ``state.ip_limit`` changes
    it later); ``log_limit`` bounds ``state.requests`` (counters are unbounded).
    """
    app = web.Application()
    state = FakeRoblox(latency=latency, clock=clock, log_limit=log_limit, ip_limit=ip_limit)
    app[FAKE_STATE] = state
    app.router.add_route("*", "/{tail:.*}", _make_handler(state))
    return app


async def run_fake(
    host: str, port: int, latency: float = 0.0, *, ip_limit: IpLimit | None = None
) -> None:
    """Serve the fake on ``host:port`` until cancelled (no per-request access log)."""
    runner = web.AppRunner(create_fake_app(latency=latency, ip_limit=ip_limit), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
