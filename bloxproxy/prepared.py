"""Answers as HTTP: the pipeline's :class:`~bloxproxy.answer.Answer` made into a response
once, remembered hits kept as prepared bytes, and the only use of aiohttp's private API.

- :func:`http_response` turns an answer into the client response: the headers it passes on,
  its content type, the cache headers (:func:`bloxproxy.cache.decide.cache_headers`), the
  ETag, and 304 on a matching ``If-None-Match``.
- :class:`FastEntry` is a remembered hit for one request target, valid while its L1 entry is
  unchanged; its headers come from the same :func:`~bloxproxy.cache.decide.cache_headers`,
  and it keeps its status line and header block as bytes, rebuilt when a whole second of
  ``Age`` or ``Date`` passes, so a hit only appends its request id and ``Server-Timing``.
  :class:`SharedFast` is the same without a body, for L1 off and Redis on: each use reads
  the entry from Redis and renders it again.
- :class:`WireResponse` writes head and body as prepared bytes in one write; :func:`wired`
  turns an ordinary response into one when that sends the very same message.
- :func:`stream_response` and :func:`write_stream` send a streamed answer (a whole list):
  headers first, then each chunk as it is made, chunked.

aiohttp's private API used here, and nowhere else in the front door (aiohttp is pinned
below 4; ``tests/test_prepared.py`` fails loudly if any of it changes):
``aiohttp.http_writer._serialize_headers`` (its C header serializer, which refuses CR/LF),
``StreamResponse``'s ``_payload_writer``, ``_eof_sent``, ``_req``, ``_keep_alive``,
``_headers`` and ``_cookies``, ``Response._body`` (:func:`drop_body`), and
``Application._handle`` (:func:`route_ahead`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus

from aiohttp import HttpVersion11, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_writer import _serialize_headers
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict

from .answer import Answer
from .cache import decide
from .cache.entry import KEPT_HEADERS, Entry, make_etag
from .errors import HTTPProblem

__all__ = [
    "FastEntry",
    "SharedFast",
    "WireResponse",
    "body_size",
    "drop_body",
    "fast_entry",
    "http_response",
    "route_ahead",
    "stream_response",
    "wired",
    "write_stream",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- the answer as a response -------------------------------------------------------------


def http_response(answer: Answer, if_none_match: str | None, now: float) -> web.Response:
    """The client response for ``answer`` at ``now`` (304 when ``If-None-Match`` matches
    a 200's ETag)."""
    fetched = answer.fetched
    etag = answer.etag
    if if_none_match and etag and answer.status == 200 and decide.etag_matches(if_none_match, etag):
        resp = web.Response(status=304)
    else:
        resp = web.Response(status=answer.status, body=answer.body)
        for name, value in answer.headers:
            resp.headers.add(name, value)
        if answer.content_type is not None:
            resp.headers["Content-Type"] = answer.content_type
    if fetched is not None:
        h = resp.headers
        cached = fetched.cached
        for name, value in decide.cache_headers(
            fetched.result,
            fetched.entry,
            now,
            cached=cached,
            shared=fetched.shared,
            stored=fetched.stored,
            detail=fetched.detail,
        ):
            h[name] = value
        if cached and etag:
            h["ETag"] = etag
    return resp


def stream_response(answer: Answer) -> web.StreamResponse:
    """The client response for a streamed ``answer``, before its chunks (:func:`write_stream`):
    no length, so HTTP/1.1 sends it chunked (HTTP/1.0: until the connection closes)."""
    resp = web.StreamResponse(status=answer.status)
    for name, value in answer.headers:
        resp.headers.add(name, value)
    if answer.content_type is not None:
        resp.headers["Content-Type"] = answer.content_type
    return resp


async def write_stream(
    request: web.BaseRequest, resp: web.StreamResponse, chunks: AsyncGenerator[bytes, None]
) -> int:
    """Send ``resp``, then each chunk as ``chunks`` makes it (none for HEAD), then its end;
    the body bytes written. Each write waits while the client's connection is backed up, so a
    slow reader slows the producer instead of piling chunks up. A client that goes away ends
    it; ``chunks`` is closed either way, so its producer stops where it is."""
    written = 0
    try:
        await resp.prepare(request)
        if request.method != "HEAD":
            async for chunk in chunks:
                await resp.write(chunk)
                written += len(chunk)
        await resp.write_eof()
    except ConnectionError:
        pass  # the client went away: nobody to write to
    finally:
        await chunks.aclose()
    return written


def fast_entry(
    answer: Answer, resp: web.Response, l1_on: bool, tag_header: str = ""
) -> FastEntry | SharedFast | None:
    """What the front door may remember of ``answer`` (a fresh hit of a plain GET, answered
    ``resp``): a :class:`FastEntry` with its body, or — with L1 off — a :class:`SharedFast`
    that reads the entry from Redis each time. None when it may not be remembered.
    ``tag_header``: the answer's tag header (``cache.tag_header``), repeated too."""
    fetched = answer.fetched
    if (
        fetched is None
        or not fetched.fast_ok
        or not fetched.shared
        or fetched.result != "HIT"
        or resp.status != 200
        or not fetched.cached
    ):
        return None
    h = resp.headers
    if not l1_on:
        if "Content-Encoding" in h:
            return None  # compressed for this request: nowhere to keep it without L1
        extra = tuple(("Vary", v) for v in h.getall("Vary", ()))
        if tag_header and tag_header in h:
            extra += ((tag_header, h[tag_header]),)
        return SharedFast(fetched.key, answer.route, answer.renderer, answer.content_type, extra)
    kept = _FAST_KEPT | {tag_header.lower()} if tag_header else _FAST_KEPT
    static = [(k, v) for k, v in h.items() if k.lower() in kept]
    if answer.etag:
        static.append(("ETag", answer.etag))
    return FastEntry(
        fetched.key, fetched.entry, resp.status, answer.body, tuple(static), answer.route
    )


# -- remembered hits -------------------------------------------------------------------------

_UNSAFE = re.compile(r"[\r\n\x00]")
# What a remembered answer repeats of the answer it was made from: the stored answer's
# headers, and how it was encoded (server.compression) and for which requests.
_FAST_KEPT = KEPT_HEADERS | {"content-encoding", "vary"}


@functools.lru_cache(maxsize=4)
def _http_date(second: int) -> str:
    return formatdate(second, usegmt=True)


@functools.lru_cache(maxsize=16)
def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class FastEntry:
    """A ready answer for one request target, valid while its L1 entry is unchanged (see
    the module docstring). ``entry`` is the L1 entry it was made from (its version, its
    freshness and its cache headers); ``body`` what the answer sends (a clean route's
    rendering, or the entry's body)."""

    __slots__ = ("body", "entry", "head", "head_key", "key", "length", "route", "static", "status")

    def __init__(
        self,
        key: str,
        entry: Entry,
        status: int,
        body: bytes,
        static: tuple[tuple[str, str], ...],
        route: str,
        length: int = -1,
    ) -> None:
        self.key = key
        self.entry = entry
        self.status = status
        self.body = body
        self.length = len(body) if length < 0 else length  # (a SharedFast's has no body)
        self.static = static  # Content-Type, Content-Language, ETag
        self.route = route
        self.head_key = (-1, -1, -1)
        self.head = b""

    def fresh(self, now: float) -> bool:
        return decide.freshness(self.entry, now) is decide.Freshness.FRESH

    def headers(self, now: float) -> list[tuple[str, str]]:
        """The headers of this answer at ``now``, before the per-request ones."""
        return [
            *self.static,
            *decide.cache_headers("HIT", self.entry, now, cached=True, shared=True),
            ("Content-Length", str(self.length)),
        ]

    def wire(self, now: float) -> bytes | None:
        """Status line and headers up to the per-request ones; None when a header value
        cannot go on the wire as it is (the full pipeline then answers, as aiohttp would)."""
        age = self.entry.age(now)
        head_key = (int(age), int(self.entry.ttl - age), int(now))
        if head_key != self.head_key:
            lines = [f"HTTP/1.1 {self.status} {_reason(self.status)}"]
            for name, value in (*self.headers(now), ("Date", _http_date(int(now)))):
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

    The front door keeps one after a hit the pipeline answered from Redis with
    ``cache.max_entries`` 0. It holds no answer: each use reads the entry from Redis (so a
    purge, an expiry or a refresh by any replica shows at once) and renders the body again
    (a clean route's normalization; a passthrough body is the entry's). What it keeps is
    the key, and the header block of the last answer (a :class:`FastEntry` without a body),
    which stays valid while Redis holds the same entry version, since the same entry
    renders the same body. Anything it cannot answer exactly as the pipeline would —
    missing, stale or non-200 entries, a body the route refuses, Redis trouble — goes to
    the pipeline.
    """

    __slots__ = ("content_type", "extra", "key", "last", "last_source", "render", "route")

    def __init__(
        self,
        key: str,
        route: str,
        render: Callable[[Entry], bytes] | None,
        content_type: str | None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.key = key
        self.route = route
        self.extra = extra  # the answer's Vary (server.compression)
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
        if fe is None or fe.entry.stored_at != entry.stored_at or self.last_source != entry.etag:
            if self.content_type is not None:
                static = [("Content-Type", self.content_type)]
            else:
                static = [(k, v) for k, v in entry.headers if k.lower() in KEPT_HEADERS]
            etag = entry.etag if self.render is None else make_etag(body)
            if etag:
                static.append(("ETag", etag))
            static.extend(self.extra)
            fe = FastEntry(self.key, entry, entry.status, b"", tuple(static), self.route, len(body))
            self.last, self.last_source = fe, entry.etag
        return fe


# -- writing prepared bytes ------------------------------------------------------------------

_JOIN_MAX = 64 * 1024


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


def wired(request: web.BaseRequest, resp: web.StreamResponse, now: float) -> web.StreamResponse:
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
        headers["Date"] = _http_date(int(now))
    if "Server" not in headers:
        headers["Server"] = SERVER_SOFTWARE
    try:  # aiohttp's own serializer (C), which refuses CR/LF in a name or value
        head = _serialize_headers(f"HTTP/1.1 {status} {resp.reason}", headers)
    except ValueError:
        return resp  # aiohttp refuses it the same way, as a 500
    return WireResponse(status, head, body, headers)


def body_size(resp: web.StreamResponse) -> int:
    """The bytes of a fixed body ``resp`` will send (0 when it streams or has none)."""
    if type(resp) is WireResponse:
        return len(resp._wire_body)
    if isinstance(resp, web.Response) and isinstance(resp.body, bytes):
        return len(resp.body)
    return 0


def drop_body(resp: web.StreamResponse) -> None:
    """Let go of an answer's body once it has been written out: aiohttp keeps a keep-alive
    connection's last response (its handler's result) until the next request comes, so an
    idle connection would otherwise pin a large body in memory for as long as it stays."""
    if not resp.prepared:
        return
    if type(resp) is WireResponse:
        resp._wire_body = b""
    elif isinstance(resp, web.Response):
        resp._body = None


def route_ahead(app: web.Application, dispatch: Handler) -> Handler:
    """Make ``dispatch`` the app's request handler, ahead of aiohttp's router, and return
    the router (``dispatch`` calls it for what it does not answer itself).

    The server an aiohttp runner builds for ``app`` calls ``app._handle`` for every request
    (routing, then the handler); replacing it on the instance answers a remembered hit
    without routing (about a sixth of a hit's cost).
    """
    routed: Handler = app._handle
    vars(app)["_handle"] = dispatch
    return routed
