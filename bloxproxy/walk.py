"""Whole lists: ``?all=true`` on a paginated clean route walks the list server-side.

What every bot writes for itself — follow ``next_cursor`` until it is null — done once, here:
the walk asks the route's pages one after another, each one exactly as a client asking for it
would (:meth:`Pipeline.route_answer <bloxproxy.pipeline.Pipeline.route_answer>`: its own
cache entry, its retries, a slot of the upstream limiter, which paces the walk), and streams
the items as each page comes. It holds one page at a time: a page's items are written, then
dropped, and each write waits while the client's connection is backed up, so memory stays
flat however long the list.

- **Which routes**: every route with ``response.pagination`` and a ``cursor`` query
  parameter. ``all`` is reserved (:data:`bloxproxy.rules.WALK_PARAM`; ``check`` refuses a
  rule declaring it); ``all=false`` is the plain page; on a route without pagination it is
  ignored, like any parameter the route does not declare.
- **Pages**: the route's own parameters, with the client's ``limit`` or else the largest page
  the route's ``limit`` allows; from the client's ``cursor`` when it sent one (to go on with
  a walk that stopped), else from the first page.
- **Formats**, by ``Accept``: NDJSON (``application/x-ndjson``, the default) is one item per
  line, then one trailer line ``{"_end": {...}}``; ``application/json`` (preferred over
  NDJSON) is one object streamed as ``{"data": [...], "next_cursor", "previous_cursor",
  "_end": {...}}``. The trailer (:func:`trailer`) says how the walk ended. No item line of
  NDJSON is ever an object with an ``_end`` key: a page holding such an item ends the walk
  with an error trailer instead.
- **Bounds**: ``limits.walk.max_items`` cuts the list (``capped``), ``limits.walk.deadline``
  stops asking for pages (``timed_out``); either way the trailer says where to go on.
- **Errors**: a first page that fails is the ordinary answer of that page (a 404 problem for
  an unknown group, with its cache headers): nothing has been sent yet. A later page that
  fails ends the stream with ``done: false`` and the problem in the trailer (the items
  before it were sent; ``next_cursor`` is the failed page's, to try again).
- **A client that goes away** stops the walk: no page is asked once its connection is
  closing, and the write that finds it gone closes this generator where it is.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web
from multidict import MultiMapping

from .answer import Answer
from .cache import decide
from .cache.fetcher import Fetcher
from .clean import JSON
from .config import Config
from .errors import HTTPProblem, UpstreamError, bad_request, instance_of, problem_body
from .params import Param, ParamError
from .rules import WALK_PARAM, Route
from .upstream.client import Caller


class Pipeline(Protocol):
    """What a walk needs of the pipeline that calls it (``bloxproxy/pipeline.py``'s
    ``Pipeline``): described here, so that imports point one way (pipeline -> walk)."""

    config: Config
    fetcher: Fetcher
    monotonic: Callable[[], float]

    async def route_answer(
        self,
        route: Route,
        values: dict[str, Any],
        headers: MultiMapping[str],
        caller: Caller,
        credential: str,
        instance: str,
        owner: str = "",
    ) -> Answer: ...


__all__ = ["NDJSON", "asked", "trailer", "walkable", "wants_json", "whole_list"]

log = logging.getLogger("bloxproxy")

NDJSON = "application/x-ndjson"
END = "_end"  # the trailer's one key (NDJSON), or its member of the JSON object
CURSOR = "cursor"  # the clean query parameter that carries the page cursor
LIMIT = "limit"  # the clean query parameter that carries the page size
_ALL = Param(WALK_PARAM, "query", "bool")


def asked(query: MultiMapping[str]) -> bool:
    """Does the request ask for the whole list (``?all=true``)? A 400 when ``all`` is not a
    boolean or is given twice."""
    if WALK_PARAM not in query:
        return False
    try:
        return bool(_ALL.parse(query.getall(WALK_PARAM)))
    except ParamError as exc:
        invalid = [{"name": exc.name, "in": "query", "reason": exc.reason}]
        raise bad_request(f"invalid parameters: {exc.name} {exc.reason}", invalid=invalid) from None


def walkable(route: Route) -> bool:
    """Can ``?all=true`` walk this route: paginated, with a ``cursor`` query parameter?"""
    return route.plan.pagination is not None and any(p.name == CURSOR for p in route.query_params)


def page_size(route: Route) -> int | None:
    """The largest page the route's ``limit`` allows: its largest ``enum`` value, else its
    ``max``, else its default (None: the route has no ``limit``)."""
    param = next((p for p in route.query_params if p.name == LIMIT), None)
    if param is None or param.type != "int":
        return None
    if param.enum:
        return max(int(v) for v in param.enum)
    return param.max if param.max is not None else param.default


def wants_json(accept: str) -> bool:
    """Does ``Accept`` prefer ``application/json`` to ``application/x-ndjson``? (A tie, or
    neither named, is NDJSON: the default.)"""
    best = {"application/json": 0.0, NDJSON: 0.0}
    for part in accept.split(","):
        mime, *params = (x.strip() for x in part.split(";"))
        mime = mime.lower()
        if mime not in best:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best[mime] = max(best[mime], q)
    return best["application/json"] > best[NDJSON]


class _PageFailed(Exception):
    """A page came back as a problem answer (an upstream error status, or nothing found)."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


@dataclass(slots=True)
class _Page:
    """One page of the list, parsed: the only one a walk holds."""

    items: list[Any]
    next_cursor: str | None


class _Walk:
    """One walk: asks the pages, turns each into a chunk, and knows how far it got."""

    def __init__(
        self,
        pipeline: Pipeline,
        route: Route,
        values: dict[str, Any],
        request: web.Request,
        caller: Caller,
        credential: str,
        instance: str,
        headers: MultiMapping[str] | None = None,
        owner: str = "",
    ) -> None:
        self.pipeline, self.route, self.values = pipeline, route, values
        self.request, self.caller, self.credential = request, caller, credential
        self.instance = instance
        self.headers = request.headers if headers is None else headers
        self.owner = owner
        limits = pipeline.config.limits.walk
        self.max_items = limits.max_items
        self.deadline = pipeline.monotonic() + limits.deadline
        self.json_form = wants_json(request.headers.get("Accept", ""))
        # how far it got (what the trailer says)
        self.count = 0  # items sent
        self.pages = 0  # pages read
        self.cursor: str | None = values.get(CURSOR)  # the page being read (None: the first)
        self.next_cursor: str | None = None  # where to go on
        self.skip = 0  # items of the page at next_cursor already sent
        self.complete = self.capped = self.timed_out = False
        self.error: dict[str, Any] | None = None

    async def page(self, cursor: str | None) -> tuple[_Page, Answer]:
        """The page at ``cursor``, as a client asking for it would get it."""
        answer = await self.pipeline.route_answer(
            self.route,
            {**self.values, CURSOR: cursor},
            self.headers,
            self.caller,
            self.credential,
            self.instance,
            self.owner,
        )
        if answer.status != 200:
            raise _PageFailed(answer)  # its lease goes with it, to whoever answers it
        _release(answer)  # rendered: the upstream body behind it is not needed any more
        body = orjson.loads(answer.body)  # the route's list envelope (normalize.apply)
        return _Page(body["data"], body["next_cursor"]), answer

    def take(self, page: _Page) -> tuple[bytes, bool]:
        """The chunk of ``page``'s items the walk sends, and whether the walk ends with it."""
        items = page.items
        if not self.json_form and any(type(i) is dict and END in i for i in items):
            self.fail(
                UpstreamError(
                    502,
                    f"an item of this page has the key {END!r}, which only the trailer may have",
                    code="upstream_bad_response",
                )
            )
            self.next_cursor, self.skip = self.cursor, 0
            return b"", True
        room = self.max_items - self.count
        taken = items if len(items) <= room else items[:room]
        if self.json_form:
            chunk = b",".join(orjson.dumps(i) for i in taken)
            if chunk and self.count:
                chunk = b"," + chunk
        else:
            chunk = b"".join(orjson.dumps(i, option=orjson.OPT_APPEND_NEWLINE) for i in taken)
        self.count += len(taken)
        self.pages += 1
        if len(taken) < len(items):  # the cap fell inside this page
            self.capped = True
            self.next_cursor, self.skip = self.cursor, len(taken)
            return chunk, True
        self.next_cursor, self.skip = page.next_cursor, 0
        if page.next_cursor is None:
            self.complete = True
            return chunk, True
        if page.next_cursor == self.cursor:
            self.fail(
                UpstreamError(
                    502,
                    f"{self.route.backend.service} answered the same cursor again",
                    code="upstream_bad_response",
                )
            )
            return chunk, True
        if self.count >= self.max_items:  # the cap fell at this page's end, with more to come
            self.capped = True
            return chunk, True
        return chunk, False

    def fail(self, problem: HTTPProblem) -> None:
        body = problem_body(
            problem, instance=instance_of(self.instance), request_id=self.caller.request_id
        )
        self.error = orjson.loads(body)

    def gone(self) -> bool:
        """Has the client's connection gone, or begun to close?"""
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def chunks(self, first: _Page) -> AsyncGenerator[bytes, None]:
        """The body: each page's chunk as it comes, then the trailer."""
        if self.json_form:
            yield b'{"data":['
        page: _Page | None = first
        del first  # one page at a time: each is dropped once its chunk is made...
        try:
            while page is not None:
                chunk, last = self.take(page)
                page = None
                if chunk:
                    yield chunk
                del chunk  # ...and each chunk once written, before the next page is asked
                if last:
                    break
                if self.pipeline.monotonic() >= self.deadline:
                    self.timed_out = True
                    break
                if self.gone():
                    return  # nobody to read the rest, nor the trailer
                self.cursor = self.next_cursor
                try:
                    page = (await self.page(self.cursor))[0]
                except _PageFailed as failed:  # its problem+json body, as a client gets it
                    _release(failed.answer)
                    self.error = orjson.loads(failed.answer.body)
                except HTTPProblem as problem:
                    self.fail(problem)
        except Exception as exc:  # a bug of ours: still a clean end, and a logged one
            log.error(
                "whole-list walk failed", exc_info=exc, extra={"request_id": self.caller.request_id}
            )
            self.next_cursor, self.skip = self.cursor, 0
            self.fail(
                HTTPProblem(
                    500,
                    "the proxy failed to finish this list; it was logged under request id "
                    f"{self.caller.request_id}",
                    code="internal_error",
                )
            )
        end = trailer(self)
        if self.json_form:
            tail = {"next_cursor": self.next_cursor, "previous_cursor": None, END: end}
            yield b"]," + orjson.dumps(tail)[1:]
        else:
            yield orjson.dumps({END: end}, option=orjson.OPT_APPEND_NEWLINE)


def trailer(walk: _Walk) -> dict[str, Any]:
    """How a walk ended, the same object in both formats: ``done`` (false: a page failed,
    ``error`` is its problem), ``complete`` (every item was sent), ``capped`` (``max_items``
    cut the list), ``timed_out`` (the deadline did), ``count`` (items sent), ``pages`` (pages
    read) and where to go on: ``?all=true&cursor=<next_cursor>`` with the same parameters
    sends the rest, the first ``skip`` of them again (``next_cursor`` null and ``complete``
    false: from the first page)."""
    out: dict[str, Any] = {
        "done": walk.error is None,
        "complete": walk.complete,
        "capped": walk.capped,
        "timed_out": walk.timed_out,
        "count": walk.count,
        "pages": walk.pages,
        "next_cursor": walk.next_cursor,
        "skip": walk.skip,
    }
    if walk.error is not None:
        out["error"] = walk.error
    return out


async def whole_list(
    pipeline: Pipeline,
    route: Route,
    values: dict[str, Any],
    request: web.Request,
    caller: Caller,
    credential: str,
    instance: str,
    headers: MultiMapping[str] | None = None,
    owner: str = "",
) -> Answer:
    """The answer to ``?all=true`` on ``route`` for its parsed ``values`` (``headers``:
    what the route is built from, the request's by default; ``owner``: see
    :meth:`Pipeline.route_answer`). Its first page is
    asked here, so a list that fails at once is answered as that page is (a 404 problem for
    an unknown group); the rest are asked while the answer streams."""
    if not pipeline.config.limits.walk.max_items:
        raise bad_request("whole-list walks are turned off here (limits.walk.max_items: 0)")
    if not walkable(route):
        raise bad_request(
            f"{route.id} cannot be walked with ?{WALK_PARAM}=true: it has no {CURSOR!r} parameter"
        )
    values = dict(values)
    if LIMIT not in request.rel_url.query:
        size = page_size(route)
        if size is not None:
            values[LIMIT] = size
    walk = _Walk(pipeline, route, values, request, caller, credential, instance, headers, owner)
    try:
        first, answer = await walk.page(walk.cursor)
    except _PageFailed as failed:
        return failed.answer  # nothing sent yet: the page's own answer, cache facts and all
    return Answer(
        200,
        b"",
        headers=_cache_headers(pipeline, answer),
        content_type=JSON if walk.json_form else NDJSON,
        route=route.id,
        stream=walk.chunks(first),
    )


def _release(answer: Answer) -> None:
    """Give back the byte budget's hold on the upstream body behind ``answer`` (once)."""
    fetched = answer.fetched
    if fetched is not None and fetched.lease is not None:
        lease, fetched.lease = fetched.lease, None
        lease.release()


def _cache_headers(pipeline: Pipeline, first: Answer) -> tuple[tuple[str, str], ...]:
    """``X-Cache`` and ``Cache-Status`` of the first page (each page is its own entry), and
    ``Cache-Control: no-store``: the whole list is made anew for each walk."""
    kept: list[tuple[str, str]] = []
    f = first.fetched
    if f is not None:
        now = pipeline.fetcher.clock()
        for name, value in decide.cache_headers(
            f.result, f.entry, now, cached=f.cached, shared=f.shared, stored=f.stored
        ):
            if name in ("X-Cache", "Cache-Status"):
                kept.append((name, value))
    return (*kept, ("Cache-Control", "no-store"))
