"""The fake Roblox upstream as an aiohttp application.

Every Roblox service is served under one host as ``/{service}/{path}``: ``GET
/users/v1/users/1`` stands for ``https://users.roblox.com/v1/users/1``.  Duplicate slashes
are collapsed before matching and literal segments match case-insensitively.  Unknown
service/path -> 404 ``{"errors":[{"code":0,"message":"NotFound"}]}``.  ``HEAD`` of a GET route
gets the GET's status and headers, without the body.

Per request, in order: record it, take the next scripted fault, sleep ``state.latency``, sleep
the fault's ``delay``, answer the fault (or normally), then -- for JSON object answers to a
request carrying a credential (non-empty ``.ROBLOSECURITY`` cookie, ``x-api-key`` or
``Authorization``) -- add ``"_fakeViewer": <first 16 hex of sha256(credential)>``.  That
includes error bodies and ``status`` faults; verbatim fault bodies (``malformed_json``,
``body``, ``body_size``) are left untouched.

CSRF (PROTOCOL.md): POST/PATCH/PUT/DELETE with a non-empty ``.ROBLOSECURITY`` cookie (and
catalog items/details always) need ``X-CSRF-TOKEN: state.csrf_token(cookie)``; otherwise 403
"Token Validation Failed" with the valid token in the ``x-csrf-token`` response header.
POST users /v1/users, /v1/usernames/users and presence /v1/presence/users are exempt.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiohttp import web

from .common import NOT_FOUND, TOKEN_FAILED_BODY, Ctx, Reply, Route, is_digits
from .control import handle_control
from .faults import JSON_CT, Fault, extra_headers, fault_response
from .routes_content import ROUTES as CONTENT_ROUTES
from .routes_media import ROUTES as MEDIA_ROUTES
from .routes_users import ROUTES as USER_ROUTES
from .state import DEFAULT_LOG_LIMIT, FakeRoblox, Recorded, viewer_tag

FAKE_STATE: web.AppKey[FakeRoblox] = web.AppKey("FAKE_STATE", FakeRoblox)

ALL_ROUTES: tuple[Route, ...] = (*USER_ROUTES, *CONTENT_ROUTES, *MEDIA_ROUTES)
MUTATING = frozenset({"POST", "PATCH", "PUT", "DELETE"})
_BASE_HEADERS = {"Content-Type": JSON_CT, "Cache-Control": "no-cache"}

_Pattern = tuple[Route, tuple[str, ...]]  # "" in a segment slot = integer parameter


class Router:
    """Matches ``(service, method, segments)`` against routes; literal routes win."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._literal: dict[tuple[str, str, tuple[str, ...]], Route] = {}
        self._dynamic: dict[tuple[str, str, int], list[tuple[Route, tuple[str, ...]]]] = {}
        self._names: dict[Route, tuple[tuple[int, str], ...]] = {}
        for route in routes:
            segs = tuple(s for s in route.pattern.split("/") if s)
            names = tuple((i, s[1:-1]) for i, s in enumerate(segs) if s.startswith("{"))
            if not names:
                self._literal[(route.service, route.method, tuple(s.lower() for s in segs))] = route
                continue
            shape = tuple("" if s.startswith("{") else s.lower() for s in segs)
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
            if all(p == s if p else is_digits(s) for p, s in zip(shape, lowered, strict=True)):
                return route, {name: int(lowered[i]) for i, name in self._names[route]}
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
    method: str,
    service: str,
    segments: list[str],
    request: web.Request,
    body: bytes,
    cookie: str | None,
) -> Reply:
    # HEAD is answered like GET, as aiohttp does for its own GET routes: the same status and
    # headers (Content-Length included), and aiohttp sends no body for a HEAD.
    found = ROUTER.match(service, "GET" if method == "HEAD" else method, segments)
    if found is None:
        return NOT_FOUND
    route, params = found
    if route.csrf == "always" or (route.csrf == "auto" and cookie and method in MUTATING):
        expected = state.csrf_token(cookie)
        if request.headers.get("X-CSRF-TOKEN") != expected:
            return Reply(403, TOKEN_FAILED_BODY, {"x-csrf-token": expected})
    query: dict[str, str] = {}
    for key, value in request.query.items():
        query.setdefault(key.lower(), value)
    return route.handler(Ctx(state, method, params, query, body, cookie))


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
        fault: Fault | None = state.take_fault(method, service, path)
        if state.latency > 0:
            await asyncio.sleep(state.latency)
        cookie = roblosecurity(request.headers.getall("Cookie", ()))
        credential = cookie or headers.get("x-api-key") or headers.get("authorization")
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
                    return special
        reply = _answer(state, method, service, segments, request, body, cookie)
        out = reply.body
        if tag is not None and out[:1] == b"{":
            rest = b"}" if out == b"{}" else b"," + out[1:]
            out = b'{"_fakeViewer":"' + tag + b'"' + rest
        resp_headers = dict(_BASE_HEADERS)
        if reply.headers:
            resp_headers.update(reply.headers)
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
) -> web.Application:
    """Build the fake Roblox app; its :class:`FakeRoblox` state is ``app[FAKE_STATE]``.

    ``clock`` timestamps recorded requests and drives CSRF expiry (``state.csrf_ttl``);
    ``log_limit`` bounds ``state.requests`` (counters are unbounded).
    """
    app = web.Application()
    state = FakeRoblox(latency=latency, clock=clock, log_limit=log_limit)
    app[FAKE_STATE] = state
    app.router.add_route("*", "/{tail:.*}", _make_handler(state))
    return app


async def run_fake(host: str, port: int, latency: float = 0.0) -> None:
    """Serve the fake on ``host:port`` until cancelled (no per-request access log)."""
    runner = web.AppRunner(create_fake_app(latency=latency), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
