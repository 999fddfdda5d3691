"""The front door: one handler in front of the pipeline, and the fast hit path.

Every request is handled by :class:`Front` — there are no aiohttp middlewares, since each
layer costs a coroutine frame and a wrapper on a path where a whole cache hit is meant to
cost a few microseconds more than a bare handler (docs/PERFORMANCE.md). ``Front`` does
what the middlewares did: the request id (:mod:`bloxproxy.requestids`), access keys and
client limits (:mod:`bloxproxy.clients`), errors → problem+json
(:func:`bloxproxy.errors.error_response`), ``Server-Timing``, metrics and the access line
(:mod:`bloxproxy.observe`).

The catch-all (clean routes and passthrough) hands the request to the pipeline and gets an
:class:`~bloxproxy.answer.Answer` back, which it makes into HTTP once
(:func:`bloxproxy.prepared.http_response`). When the answer was a fresh cache hit for a
plain anonymous GET, the front door remembers it (:func:`bloxproxy.prepared.fast_entry`),
keyed by the raw request target (and host, with host routing). The next identical request
is served from it after three checks: no credential, conditional or varied header in the
request; the entry still fresh; and the same entry version still in L1 (so a purge, an
eviction or a refresh sends it back to the full pipeline). Anything else takes the full
pipeline, which decides exactly as before. With L1 off and Redis on, a hit leaves a
:class:`~bloxproxy.prepared.SharedFast` instead, which reads the entry from Redis each time.

With ``server.cors`` on, a browser's preflight on a proxied path is answered here and goes
no further (:meth:`Front._preflight`; :mod:`bloxproxy.cors` decides), and every answer on a
proxied path gets its CORS headers (the fast path appends them as bytes). With
``server.compression`` on, an answer is compressed before it becomes HTTP
(:meth:`Front._compressed`; :mod:`bloxproxy.encoding` decides, the fetcher keeps a cached
answer's compressed body beside its entry), and the fast path keeps one remembered answer
per target and encoding.

An answer whose upstream body is held under the byte budget (a large miss) is written out
here, before the budget's lease on it is released (:mod:`bloxproxy.upstream.inflight`).
A streamed answer (a whole list, :mod:`bloxproxy.walk`) is written here too, chunk by chunk
(:func:`bloxproxy.prepared.write_stream`); its access line comes once it has ended.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import HttpVersion11, web

from . import luau
from .answer import Answer
from .cache import decide
from .cors import Cors
from .encoding import Compression
from .errors import HTTPProblem, error_response
from .observe import AccessLog, Metrics, RequestInfo, body_bytes
from .prepared import (
    FastEntry,
    SharedFast,
    WireResponse,
    body_size,
    drop_body,
    fast_entry,
    http_response,
    route_ahead,
    stream_response,
    wired,
    write_stream,
)
from .requestids import REQUEST_ID_HEADER, RequestIds

if TYPE_CHECKING:
    from .cache.result import Fetched
    from .cache.shared import SharedCache
    from .cache.store import MemoryStore
    from .clients import ClientGate, Granted
    from .config import Config
    from .upstream.inflight import Lease

__all__ = ["Front"]

log = logging.getLogger("bloxproxy")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Fetcher.encoded: (fetched, etag, coding, body, encode) -> the compressed body.
Encoded = Callable[["Fetched", str, str, bytes, Callable[[bytes], bytes]], bytes]
# The pipeline: the request and what the front door knows of it, to the answer.
Inner = Callable[[web.Request, RequestInfo], Awaitable[Answer]]

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
# An answer at least this large, whose upstream body is held under the byte budget, is
# written out before the hold ends; smaller ones are written by aiohttp right after.
_WRITE_HERE = 64 * 1024

# The proxy's own routes (app.py, docs_page.py); every other path is the catch-all's.
_OWN_PREFIX = "/_bloxproxy/"
_OWN_PATHS = frozenset({"/openapi.json", "/docs", "/"})
_PREFLIGHT = "Access-Control-Request-Method"  # what makes an OPTIONS a CORS preflight
# The per-request headers of a fast answer, and the end of the header block.
_TAIL = b"X-Request-ID: %s\r\nServer-Timing: cache;desc=HIT;dur=%.2f, total;dur=%.1f\r\n\r\n"


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
        cors: Cors | None = None,
    ) -> None:
        self.metrics = metrics
        self.cors = cors  # server.cors when on (configure() sets it on reload)
        self.compression: Compression | None = None  # server.compression when on (same)
        self.tag_header = ""  # cache.tag_header (same)
        # Fetcher.encoded: a cached answer's compressed body, made once (set with l1)
        self.encoded: Encoded | None = None
        self.compressions = 0  # bodies compressed (tests and bench look at it)
        self.access = access
        self.gate = gate
        self.clock = clock
        self.l1: MemoryStore | None = None  # set once the pipeline is up
        self.shared: SharedCache | None = None  # Redis, when configured (same)
        self.inner: Inner | None = None  # the pipeline (same)
        self.fast: dict[str, FastEntry | SharedFast] = {}
        self.fast_answers = 0  # answers the fast path gave (tests look at it)
        self._routed: Handler | None = None  # aiohttp's router, once install() ran
        self.generation = 0  # bumped by forget_all() on reload
        self._host_routing = host_routing
        self._ids = RequestIds()

    def configure(self, config: Config) -> None:
        """Take the front door's settings of ``config`` (at start and on reload)."""
        self.cors = Cors.build(config)
        self.compression = Compression.build(config.server.compression)
        self.tag_header = config.cache.tag_header

    def request_id(self, request: web.Request) -> str:
        """The request's id: the client's when well-formed, else a new one."""
        return self._ids.of(request.headers)

    # -- the handlers ------------------------------------------------------------------

    def install(self, app: web.Application) -> None:
        """Put the fast path in front of aiohttp's router (:func:`prepared.route_ahead`)."""
        self._routed = route_ahead(app, self.dispatch)

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
                if (
                    request.method == "OPTIONS"
                    and self.cors is not None
                    and _PREFLIGHT in request.headers
                ):
                    return await self._preflight(request, self.cors)
                return await self.handle(request)
        assert self._routed is not None
        return await self._routed(request)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The catch-all: clean routes and passthrough, through the pipeline."""
        return await self._run(request, None, time.perf_counter(), gated=True)

    def wrap(self, handler: Handler, *, gated: bool) -> Handler:
        """The same treatment for the proxy's own endpoints (``gated``: keys and limits)."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            return await self._run(request, handler, time.perf_counter(), gated=gated)

        return wrapped

    async def _run(
        self, request: web.Request, handler: Handler | None, start: float, *, gated: bool
    ) -> web.StreamResponse:
        generation = self.generation
        rid = self.request_id(request)
        info = RequestInfo(rid)
        granted: Granted = ()
        lease: Lease | None = None
        remember: FastEntry | SharedFast | None = None
        stream: AsyncGenerator[bytes, None] | None = None
        try:
            if gated and self.gate is not None:
                granted = await self.gate.check(request, info)
            if handler is not None:
                resp: web.StreamResponse = await handler(request)
            else:
                assert self.inner is not None
                answer = await self.inner(request, info)
                fetched = answer.fetched
                if fetched is not None:
                    lease = fetched.lease
                    info.cache, info.upstream = fetched.result, fetched.upstream
                    info.cache_time = fetched.cache_time
                stream = answer.stream
                if stream is not None:  # a whole list: written below, never remembered
                    resp = stream_response(answer)
                else:
                    vary = False
                    if self.compression is not None and not info.luau:
                        answer, vary = self._compressed(request, answer, self.compression)
                    response = http_response(
                        answer, request.headers.get("If-None-Match"), self.clock()
                    )
                    if vary:
                        response.headers.add("Vary", "Accept-Encoding")
                    if self.tag_header and fetched is not None and fetched.tags:
                        response.headers[self.tag_header] = " ".join(fetched.tags)
                    if request.method == "GET" and not _may_differ(request):
                        remember = fast_entry(answer, response, self._l1_on(), self.tag_header)
                    resp = response
        except asyncio.CancelledError:
            # Cut off with no answer sent (the shutdown grace ran out): still one line and
            # one count, as 499 (nginx's "client closed request").
            if lease is not None:
                lease.release()
            self._record(request, rid, info, 499, time.perf_counter() - start)
            raise
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # a redirect or a 304 raised on purpose is an answer, not an error
            resp = error_response(exc, request.rel_url.raw_path, rid)
        except Exception as exc:
            resp = error_response(exc, request.rel_url.raw_path, rid)
        if granted and self.gate is not None:
            self.gate.decorate(resp, granted)
        total = time.perf_counter() - start
        h = resp.headers
        if handler is None and self.cors is not None:  # proxied paths only, errors too
            for name, value in self.cors.actual(request.headers.get("Origin")):
                h.add(name, value)
        h[REQUEST_ID_HEADER] = rid
        timing = f"total;dur={total * 1000:.1f}"
        if info.upstream:
            timing = f"upstream;dur={info.upstream * 1000:.1f}, {timing}"
        if info.cache:
            timing = f"cache;desc={info.cache};dur={info.cache_time * 1000:.2f}, {timing}"
        h["Server-Timing"] = timing
        if remember is not None and generation == self.generation:
            self._remember(request, remember)  # unless the rules changed meanwhile
        if stream is not None:
            written: int | None = None
            try:
                written = await write_stream(request, resp, stream)
            finally:  # ended, cut short or cancelled: one line, timed over the whole stream
                self._record(request, rid, info, resp.status, time.perf_counter() - start, written)
            return resp
        self._record(request, rid, info, resp.status, total, body_bytes(request, resp))
        if info.luau and isinstance(resp, web.Response):
            resp = luau.envelope(resp)  # this key's answers, errors too, inside a 200
        out = wired(request, resp, self.clock())
        if lease is not None:
            await self._write_then_release(request, out, lease)
        return out

    def _compressed(
        self, request: web.Request, answer: Answer, comp: Compression
    ) -> tuple[Answer, bool]:
        """``answer`` as the client gets it: compressed in the encoding it accepts best, or
        as it is; and whether its encoding depends on ``Accept-Encoding`` (``Vary``).

        Never a streamed or bodiless answer, a small one, one of a type that is compressed
        already, one Roblox sent encoded, or an answer to HEAD. A cached answer's
        compressed body is made once per encoding (:meth:`Fetcher.encoded`); any other is
        compressed for this request alone."""
        content_type = answer.content_type
        for name, value in answer.headers:
            lowered = name.lower()
            if lowered == "content-encoding":
                return answer, False  # as Roblox sent it
            if lowered == "content-type" and content_type is None:
                content_type = value
        if not comp.eligible(answer.status, answer.body, content_type):
            return answer, False
        if request.method == "HEAD":
            return answer, True
        coding = comp.choose(request.headers.get("Accept-Encoding"))
        if not coding:
            return answer, True

        def encode(body: bytes) -> bytes:
            self.compressions += 1
            if self.metrics is not None:
                self.metrics.compressions.labels(coding).inc()
            return comp.compress(body, coding)

        etag, fetched = answer.etag, answer.fetched
        if fetched is not None and self.encoded is not None and answer.status == 200:
            body = self.encoded(
                fetched, "" if etag.startswith("W/") else etag, coding, answer.body, encode
            )
        else:
            body = encode(answer.body)
        encoded = dataclasses.replace(
            answer,
            body=body,
            headers=(*answer.headers, ("Content-Encoding", coding)),
            etag=decide.encoded_etag(etag, coding),
        )
        return encoded, True

    async def _preflight(self, request: web.Request, cors: Cors) -> web.StreamResponse:
        """A browser's CORS preflight on a proxied path, answered here: 204 with the
        ``Access-Control-Allow-*`` headers, or a 403 problem saying what is not allowed.
        No access key is asked (browsers send none), the client limit applies, and
        nothing goes further in: no pipeline, no cache, no upstream call."""
        start = time.perf_counter()
        rid = self.request_id(request)
        info = RequestInfo(rid)
        info.route = "cors:preflight"
        granted: Granted = ()
        resp: web.StreamResponse
        try:
            if self.gate is not None:
                granted = await self.gate.check_preflight(request, info)
            h = request.headers
            decision = cors.preflight(
                h.get("Origin"), h.get(_PREFLIGHT), h.get("Access-Control-Request-Headers")
            )
            if not decision.allowed:
                raise HTTPProblem(
                    403, decision.reason, code="cors_refused", headers=dict(decision.headers)
                )
            resp = web.Response(status=204)
            for name, value in decision.headers:
                resp.headers.add(name, value)
        except Exception as exc:
            resp = error_response(exc, request.rel_url.raw_path, rid)
        if granted and self.gate is not None:
            self.gate.decorate(resp, granted)
        resp.headers[REQUEST_ID_HEADER] = rid
        self._record(request, rid, info, resp.status, time.perf_counter() - start)
        return resp

    async def _write_then_release(
        self, request: web.Request, resp: web.StreamResponse, lease: Lease
    ) -> None:
        """Write a large answer out while its upstream body is still counted in the byte
        budget; then (or at once, for a small one) give the hold back."""
        try:
            if body_size(resp) >= _WRITE_HERE:
                await resp.prepare(request)
                await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away mid-answer: nothing more to write, nothing to keep
        finally:
            drop_body(resp)  # an idle keep-alive connection must not pin it
            lease.release()

    def _l1_on(self) -> bool:
        return self.l1 is not None and bool(self.l1.max_entries)

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
            raw = f"{request.host}\x00{raw}"
        comp = self.compression
        if comp is not None:  # one remembered answer per encoding the target is asked in
            coding = comp.choose(request.headers.get("Accept-Encoding"))
            if coding:
                raw += "\x00" + coding
        return raw

    def _fast(self, request: web.Request, fe: FastEntry, start: float) -> WireResponse | None:
        if not _plain(request):
            return None
        now = self.clock()
        if not fe.fresh(now):
            return None  # stale: the pipeline decides (revalidate, serve stale, refetch)
        assert self.l1 is not None
        stored_at = self.l1.stored_at_nowait(fe.key)  # also keeps the entry hot in the LRU
        if stored_at != fe.entry.stored_at:
            return None  # purged, evicted or refreshed since
        return self._answer(request, fe, fe.body, now, start)

    async def _fast_shared(
        self, request: web.Request, sf: SharedFast, start: float
    ) -> WireResponse | None:
        shared = self.shared
        if shared is None or not _plain(request):
            return None
        entry = await shared.get(sf.key)  # None also when Redis is away (the pipeline copes)
        if entry is None or entry.status != 200:
            return None
        now = self.clock()
        if now < entry.stored_at or decide.freshness(entry, now) is not decide.Freshness.FRESH:
            return None  # stale (or from a replica whose clock runs ahead): the pipeline
        body = sf.body(entry)
        if body is None:
            return None
        return self._answer(request, sf.answer(entry, body), body, now, start)

    def _answer(
        self, request: web.Request, fe: FastEntry, body: bytes, now: float, start: float
    ) -> WireResponse | None:
        head = fe.wire(now)
        if head is None:
            return None
        rid = self.request_id(request)
        total = time.perf_counter() - start
        ms = total * 1000
        if self.cors is not None:
            head += self.cors.wire(request.headers.get("Origin"))
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
        if type(fe) is SharedFast and self.shared is None:
            return
        fast = self.fast
        if len(fast) >= FAST_MAX:
            # Forget the oldest eighth (dicts keep insertion order): cheap, and hot targets
            # come straight back on their next hit.
            for key in list(fast)[: FAST_MAX // 8]:
                del fast[key]
        fast[self._target(request)] = fe
