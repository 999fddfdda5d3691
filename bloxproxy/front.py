"""The front door: one handler in front of the pipeline, and the fast hit path.

Every request is handled by :class:`Front` — there are no aiohttp middlewares, since each
layer costs a coroutine frame and a wrapper on a path where a whole cache hit is meant to
cost a few microseconds more than a bare handler (PERF-NOTES). ``Front`` does what the
middlewares did: the request id, access keys and client limits (:mod:`bloxproxy.clients`),
errors → problem+json (:mod:`bloxproxy.middlewares`), ``Server-Timing``, metrics and the
access line (:mod:`bloxproxy.observe`).

**The fast path.** A fresh cache hit for an anonymous GET repeats the same work each time:
route, parse, build the upstream request, derive the key, render, format headers. When the
pipeline answers such a request from a stored entry, it leaves a :class:`FastEntry` keyed by
the raw request target (and host, with host routing). The next identical request is served
from it after three checks: no credential, conditional or varied header in the request; the
entry still fresh; and the same entry version still in L1 (so a purge, an eviction or a
refresh sends it back to the full pipeline). Anything else — stale, missing, credentialed —
takes the full pipeline, which decides exactly as before.

With L1 off (``cache.max_entries: 0``) and Redis on, a hit leaves a :class:`SharedFast`
instead, which keeps no body: each use reads the entry from Redis and renders it again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING

from aiohttp import HttpVersion11, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_writer import _serialize_headers
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict

from .cache.entry import KEPT_HEADERS, Entry, make_etag
from .errors import HTTPProblem
from .middlewares import REQUEST_ID, REQUEST_ID_HEADER, REQUEST_ID_RE, error_response
from .observe import INFO, AccessLog, Metrics, RequestInfo, body_bytes

if TYPE_CHECKING:
    from .cache.layer import SharedCache
    from .cache.store import MemoryStore
    from .clients import ClientGate
    from .ratelimit import Decision

log = logging.getLogger("bloxproxy")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FAST_MAX = 8192  # targets remembered; bodies are shared with L1, so this bounds the extra
# Headers that change what an answer may be (credentials, conditionals, varied headers):
# a request carrying any of them takes the full pipeline.
_NOT_FAST = (
    "Cookie",
    "Authorization",
    "X-Api-Key",
    "If-None-Match",
    "Range",
    "Accept-Language",
    "Roblox-Place-Id",
    "Expect",  # answered by the route's expect handler (app._expect)
)


class FastEntry:
    """A ready answer for one request target, valid while its L1 entry is unchanged.

    The answer is kept serialized: status line and headers as bytes, rebuilt when the whole
    seconds of ``Age`` or of the ``Date`` clock change (about once a second), so a hit only
    appends its request id and ``Server-Timing`` (:meth:`wire`).
    """

    __slots__ = (
        "body",
        "etag",
        "head",
        "head_key",
        "key",
        "length",
        "route",
        "shared",
        "sie",
        "static",
        "status",
        "stored_at",
        "swr",
        "ttl",
    )

    def __init__(
        self,
        key: str,
        stored_at: float,
        ttl: float,
        swr: float,
        sie: float,
        status: int,
        body: bytes,
        static: tuple[tuple[str, str], ...],
        etag: str,
        route: str,
        shared: bool,
        length: int = -1,
    ) -> None:
        self.key = key
        self.stored_at = stored_at
        self.ttl, self.swr, self.sie = ttl, swr, sie
        self.status = status
        self.body = body
        self.length = len(body) if length < 0 else length  # (a SharedFast's has no body)
        self.static = static  # Content-Type, ETag, kept upstream headers
        self.etag = etag
        self.route = route
        self.shared = shared
        self.head_key = (-1, -1, -1)
        self.head = b""

    def headers(self, age: float) -> list[tuple[str, str]]:
        """The headers of an answer ``age`` seconds old, before the per-request ones."""
        left = int(self.ttl - age)
        cc = f"{'public' if self.shared else 'private'}, max-age={max(0, left)}"
        if self.swr:
            cc += f", stale-while-revalidate={int(self.swr)}"
        if self.sie:
            cc += f", stale-if-error={int(self.sie)}"
        return [
            *self.static,
            ("X-Cache", "HIT"),
            ("Cache-Control", cc),
            ("Cache-Status", f"bloxproxy; hit; ttl={left}"),
            ("Age", str(int(age))),
            ("Content-Length", str(self.length)),
        ]

    def wire(self, age: float, wall: float) -> bytes | None:
        """Status line and headers up to the per-request ones; None when a header value
        cannot go on the wire as it is (the full pipeline then answers, as aiohttp would)."""
        head_key = (int(age), int(self.ttl - age), int(wall))
        if head_key != self.head_key:
            lines = [f"HTTP/1.1 {self.status} {_reason(self.status)}"]
            for name, value in (*self.headers(age), ("Date", _http_date(int(wall)))):
                if _UNSAFE.search(name) or _UNSAFE.search(value):
                    return None
                lines.append(f"{name}: {value}")
            lines.append(f"Server: {SERVER_SOFTWARE}\r\n")
            try:
                self.head = "\r\n".join(lines).encode()
            except UnicodeEncodeError:  # undecodable upstream bytes (surrogates) in a value
                return None
            self.head_key = head_key
        return self.head


class SharedFast:
    """How to answer one request target from its entry in Redis, when there is no L1.

    The pipeline leaves one after a hit it answered from Redis with ``cache.max_entries``
    0. It holds no answer: each use reads the entry from Redis (so a purge, an expiry or a
    refresh by any replica shows at once) and renders the body again (a clean route's
    normalization; a passthrough body is the entry's). What it keeps is the key, and the
    header block of the last answer (a :class:`FastEntry` without a body), which stays
    valid while Redis holds the same entry version, since the same entry renders the same
    body. Anything it cannot answer exactly as the pipeline would — missing, stale or
    non-200 entries, a body the route refuses, Redis trouble — goes to the pipeline.
    """

    __slots__ = ("content_type", "key", "last", "last_source", "render", "route")

    def __init__(
        self,
        key: str,
        route: str,
        render: Callable[[Entry], bytes] | None,
        content_type: str | None,
    ) -> None:
        self.key = key
        self.route = route
        self.render = render  # None: the entry's body as it is (passthrough)
        self.content_type = content_type  # None: the entry's own (passthrough)
        self.last: FastEntry | None = None
        self.last_source = ""  # the ETag of the entry ``last`` was made from

    def body(self, entry: Entry) -> bytes | None:
        if self.render is None:
            return entry.body
        try:
            return self.render(entry)
        except HTTPProblem:
            return None  # the pipeline answers (and explains) it

    def answer(self, entry: Entry, body: bytes) -> FastEntry:
        """The answer's headers for ``entry`` (made once per entry version)."""
        fe = self.last
        if fe is None or fe.stored_at != entry.stored_at or self.last_source != entry.etag:
            if self.content_type is not None:
                static = [("Content-Type", self.content_type)]
            else:
                static = [(k, v) for k, v in entry.headers if k.lower() in KEPT_HEADERS]
            etag = entry.etag if self.render is None else make_etag(body)
            if etag:
                static.append(("ETag", etag))
            fe = FastEntry(
                self.key,
                entry.stored_at,
                entry.ttl,
                entry.stale_while_revalidate,
                entry.stale_if_error,
                entry.status,
                b"",
                tuple(static),
                etag,
                self.route,
                True,
                len(body),
            )
            self.last, self.last_source = fe, entry.etag
        return fe


_UNSAFE = re.compile(r"[\r\n\x00]")


@functools.lru_cache(maxsize=4)
def _http_date(second: int) -> str:
    return formatdate(second, usegmt=True)


@functools.lru_cache(maxsize=16)
def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class WireResponse(web.StreamResponse):
    """An HTTP/1.1 answer written as prepared bytes: status line, headers and body in one
    write, without aiohttp's per-response header handling (the fast path's answer).

    Only for keep-alive HTTP/1.1 requests with a body-bearing status (the caller checks),
    which is all aiohttp's header preparation would have had to consider.
    """

    def __init__(
        self, status: int, head: bytes, body: bytes, headers: CIMultiDict[str] | None = None
    ) -> None:
        super().__init__(status=status)
        if headers is not None:  # what ``head`` says, for whoever looks at the response
            self._headers = headers
        self._wire_head = head
        self._wire_body = body

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        writer = self._payload_writer
        if writer is None and not self._eof_sent:
            self._req = request
            self._keep_alive = True
            writer = self._payload_writer = request.writer
        return writer

    async def write_eof(self, data: bytes = b"") -> None:
        if self._eof_sent:
            return
        writer = self._payload_writer
        assert writer is not None, "Response has not been started"
        self._eof_sent = True
        head, body = self._wire_head, self._wire_body
        if len(body) <= _JOIN_MAX:
            await writer.write(head + body)  # one send
        else:
            await writer.write(head)  # no copy of a large body
            await writer.write(body)
        await writer.write_eof()


# The proxy's own routes (app.py, docs_page.py); every other path is the catch-all's.
_OWN_PREFIX = "/_bloxproxy/"
_OWN_PATHS = frozenset({"/openapi.json", "/docs", "/"})


def wired(request: web.BaseRequest, resp: web.StreamResponse) -> web.StreamResponse:
    """``resp`` as a :class:`WireResponse` when that sends the very same message, else
    ``resp`` itself (for aiohttp to prepare and send the usual way).

    aiohttp's preparation of an ordinary response (a fixed ``bytes`` body, no cookies,
    compression or chunking) only adds ``Content-Length``, a default ``Content-Type``,
    ``Date`` and ``Server``; writing them here costs a fraction of its several coroutine
    layers. Anything else — HEAD, HTTP/1.0 or a closing connection, 1xx/204/304, cookies,
    streaming, a header value with a line break — is left to aiohttp.
    """
    if type(resp) is not web.Response or resp.prepared or resp.keep_alive is False:
        return resp
    if request.version != HttpVersion11 or not request.keep_alive or request.method == "HEAD":
        return resp
    status = resp.status
    body = resp.body
    if body is None:
        body = b""
    if (
        status < 200
        or status in (204, 304)
        or type(body) is not bytes
        or resp.chunked
        or resp.compression
        or getattr(resp, "_cookies", None)  # (we never set any; aiohttp would add them)
    ):
        return resp
    headers = resp.headers
    if "Transfer-Encoding" in headers or "Connection" in headers or "Content-Length" in headers:
        return resp
    headers["Content-Length"] = str(len(body))
    if body and "Content-Type" not in headers:
        headers["Content-Type"] = "application/octet-stream"
    if "Date" not in headers:
        headers["Date"] = _http_date(int(time.time()))
    if "Server" not in headers:
        headers["Server"] = SERVER_SOFTWARE
    try:  # aiohttp's own serializer (C), which refuses CR/LF in a name or value
        head = _serialize_headers(f"HTTP/1.1 {status} {resp.reason}", headers)
    except ValueError:
        return resp  # aiohttp refuses it the same way, as a 500
    return WireResponse(status, head, body, headers)


def _may_differ(request: web.BaseRequest) -> bool:
    """Does ``request`` carry a header that could change its answer (``_NOT_FAST``)?"""
    headers = request.headers
    for name in _NOT_FAST:
        if name in headers:
            return True
    return False


def _plain(request: web.Request) -> bool:
    """May ``request`` have a remembered answer: no header that could change the answer,
    and HTTP/1.1 keep-alive (the answer's bytes are written for that)."""
    return not _may_differ(request) and request.version == HttpVersion11 and request.keep_alive


_JOIN_MAX = 64 * 1024
# The per-request headers of a fast answer, and the end of the header block.
_TAIL = b"X-Request-ID: %s\r\nServer-Timing: cache;desc=HIT;dur=%.2f, total;dur=%.1f\r\n\r\n"


class Front:
    """The one request handler (see the module docstring)."""

    def __init__(
        self,
        *,
        metrics: Metrics | None,
        access: AccessLog | None,
        gate: ClientGate | None,
        clock: Callable[[], float],
        host_routing: bool,
    ) -> None:
        self.metrics = metrics
        self.access = access
        self.gate = gate
        self.clock = clock
        self.l1: MemoryStore | None = None  # set once the pipeline is up
        self.shared: SharedCache | None = None  # Redis, when configured (same)
        self.inner: Handler | None = None
        self.fast: dict[str, FastEntry | SharedFast] = {}
        self.fast_answers = 0  # answers the fast path gave (tests look at it)
        self._routed: Handler | None = None  # aiohttp's router, once install() ran
        self.generation = 0  # bumped by forget_all() on reload
        self._host_routing = host_routing
        self._rid_prefix = secrets.token_hex(4)
        self._rid_count = 0

    # -- request ids -------------------------------------------------------------------

    def request_id(self, request: web.Request) -> str:
        rid = request.headers.get(REQUEST_ID_HEADER)
        if rid is not None and REQUEST_ID_RE.fullmatch(rid):
            return rid
        # Unique without a syscall per request: a random per-process prefix and a counter.
        self._rid_count += 1
        return f"{self._rid_prefix}{self._rid_count:08x}"

    # -- the handlers ------------------------------------------------------------------

    def install(self, app: web.Application) -> None:
        """Put the fast path in front of aiohttp's router.

        The server an aiohttp runner builds for ``app`` calls ``app._handle`` for every
        request (routing, then the handler). Here the app's own ``_handle`` becomes
        :meth:`dispatch`, which answers a remembered hit without routing (about a sixth of
        a hit's cost) and hands everything else to the router (aiohttp is pinned below 4;
        tests/test_front.py fails if the hook stops being used).
        """
        self._routed = app._handle
        vars(app)["_handle"] = self.dispatch

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Every request, before routing (see :meth:`install`).

        A remembered hit is answered here. A request for the catch-all (everything but the
        proxy's own paths) goes to :meth:`handle` without the router, which would only
        find the catch-all after trying the others; the rest is routed as usual.
        """
        if self.gate is None and request.method == "GET":
            fe = self.fast.get(self._target(request))
            if fe is not None:
                start = time.perf_counter()
                if type(fe) is FastEntry:
                    resp = self._fast(request, fe, start)
                else:
                    assert type(fe) is SharedFast
                    resp = await self._fast_shared(request, fe, start)
                if resp is not None:
                    return resp
        if self.inner is not None and "Expect" not in request.headers:  # Expect: the route's
            path = request.rel_url.path  # decoded: the router matches on no more than this
            if not path.startswith(_OWN_PREFIX) and path not in _OWN_PATHS:
                return await self.handle(request)
        assert self._routed is not None
        return await self._routed(request)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The catch-all: clean routes and passthrough."""
        assert self.inner is not None
        return await self._run(request, self.inner, time.perf_counter(), gated=True)

    def wrap(self, handler: Handler, *, gated: bool) -> Handler:
        """The same treatment for the proxy's own endpoints (``gated``: keys and limits)."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            return await self._run(request, handler, time.perf_counter(), gated=gated)

        return wrapped

    async def _run(
        self, request: web.Request, handler: Handler, start: float, *, gated: bool
    ) -> web.StreamResponse:
        generation = self.generation
        rid = self.request_id(request)
        request[REQUEST_ID] = rid
        info = RequestInfo()
        request[INFO] = info
        decision: Decision | None = None
        try:
            if gated and self.gate is not None:
                decision = await self.gate.check(request)
            resp = await handler(request)
        except asyncio.CancelledError:
            # Cut off with no answer sent (the shutdown grace ran out): still one line and
            # one count, as 499 (nginx's "client closed request").
            self._record(request, rid, info, 499, time.perf_counter() - start)
            raise
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # a redirect or a 304 raised on purpose is an answer, not an error
            resp = error_response(exc, request, rid)
        except Exception as exc:
            resp = error_response(exc, request, rid)
        if decision is not None and self.gate is not None:
            self.gate.decorate(resp, decision)
        total = time.perf_counter() - start
        h = resp.headers
        h[REQUEST_ID_HEADER] = rid
        timing = f"total;dur={total * 1000:.1f}"
        if info.upstream:
            timing = f"upstream;dur={info.upstream * 1000:.1f}, {timing}"
        if info.cache:
            timing = f"cache;desc={info.cache};dur={info.cache_time * 1000:.2f}, {timing}"
        h["Server-Timing"] = timing
        if info.fast is not None and generation == self.generation:
            self._remember(request, info.fast)  # unless the rules changed meanwhile
        self._record(request, rid, info, resp.status, total, body_bytes(request, resp))
        return wired(request, resp)

    def _record(
        self,
        request: web.Request,
        rid: str,
        info: RequestInfo,
        status: int,
        total: float,
        nbytes: int | None = 0,
    ) -> None:
        if self.metrics is not None:
            self.metrics.observe_request(info.route, status, info.cache, total)
        if self.access is not None:
            path = request.rel_url.raw_path  # percent-encoded: no raw control characters
            self.access.write(
                rid,
                request.method,
                path[:512],
                info.route,
                status,
                info.cache,
                info.upstream,
                total,
                request,
                nbytes,
            )

    # -- the fast path ------------------------------------------------------------------

    def forget_all(self) -> None:
        """Drop every remembered answer, including those of requests still in flight."""
        self.fast.clear()
        self.generation += 1

    def _target(self, request: web.Request) -> str:
        raw = request.raw_path
        if self._host_routing:
            return f"{request.host}\x00{raw}"
        return raw

    def _fast(self, request: web.Request, fe: FastEntry, start: float) -> WireResponse | None:
        if not _plain(request):
            return None
        age = self.clock() - fe.stored_at
        if age >= fe.ttl:
            return None  # stale: the pipeline decides (revalidate, serve stale, refetch)
        assert self.l1 is not None
        stored_at = self.l1.stored_at_nowait(fe.key)  # also keeps the entry hot in the LRU
        if stored_at != fe.stored_at:
            return None  # purged, evicted or refreshed since
        return self._answer(request, fe, fe.body, age, start)

    async def _fast_shared(
        self, request: web.Request, sf: SharedFast, start: float
    ) -> WireResponse | None:
        shared = self.shared
        if shared is None or not _plain(request):
            return None
        entry = await shared.get(sf.key)  # None also when Redis is away (the pipeline copes)
        if entry is None or entry.status != 200:
            return None
        age = self.clock() - entry.stored_at
        if not 0.0 <= age < entry.ttl:
            return None  # stale (or from a replica whose clock runs ahead): the pipeline
        body = sf.body(entry)
        if body is None:
            return None
        return self._answer(request, sf.answer(entry, body), body, age, start)

    def _answer(
        self, request: web.Request, fe: FastEntry, body: bytes, age: float, start: float
    ) -> WireResponse | None:
        head = fe.wire(age, time.time())
        if head is None:
            return None
        rid = self.request_id(request)
        total = time.perf_counter() - start
        ms = total * 1000
        head += _TAIL % (rid.encode(), ms, ms)
        self.fast_answers += 1
        if self.metrics is not None:
            self.metrics.observe_request(fe.route, fe.status, "HIT", total)
        if self.access is not None:
            self.access.write(
                rid,
                "GET",
                request.rel_url.raw_path[:512],
                fe.route,
                fe.status,
                "HIT",
                0.0,
                total,
                request,
                len(body),
            )
        return WireResponse(fe.status, head, body)

    def _remember(self, request: web.Request, fe: FastEntry | SharedFast) -> None:
        if request.method != "GET" or (type(fe) is SharedFast and self.shared is None):
            return
        if _may_differ(request):
            return
        fast = self.fast
        if len(fast) >= FAST_MAX:
            # Forget the oldest eighth (dicts keep insertion order): cheap, and hot targets
            # come straight back on their next hit.
            for key in list(fast)[: FAST_MAX // 8]:
                del fast[key]
        fast[self._target(request)] = fe


__all__ = ["FastEntry", "Front", "SharedFast"]
