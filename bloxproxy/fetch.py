"""What the pipeline hands to the cache layer, and what it gets back.

:class:`Policy` is a route's caching decision input (computed once per route);
:class:`Fetched` is an answer — fresh from upstream or from the cache — and knows how to
become the client response with ``X-Cache``, ``Age``, ``Cache-Control``, ``Cache-Status``
and ``ETag`` (304 on a matching ``If-None-Match``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from aiohttp import web

from .cache import decide
from .cache.entry import KEPT_HEADERS, Entry, make_etag
from .cache.store import MemoryStore
from .front import FastEntry, SharedFast
from .observe import INFO

if TYPE_CHECKING:
    from .config import Config
    from .rules import CacheCondition, Route

# Headers varied on by passthrough GETs (Roblox localizes some answers; thumbnails and
# avatar endpoints take a place id): the only client headers a shared passthrough read
# sends upstream, and all of them part of its key. Everything else a client sends is
# dropped from it (cache.decide.shared_request).
PASSTHROUGH_VARY = ("accept-language", "roblox-place-id")
_FAST_SAFE_VARY = frozenset(PASSTHROUGH_VARY)


@dataclass(frozen=True, slots=True)
class Policy:
    """How one kind of request may be cached (from its rule, or the passthrough default)."""

    ttl: float
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    not_found_ttl: float = 0.0
    negative_statuses: frozenset[int] = frozenset({404, 410})
    conditions: tuple[CacheCondition, ...] = ()
    credentials: Literal["bypass", "per_credential"] = "bypass"
    vary: tuple[str, ...] = ()
    route_id: str = ""
    # The request headers a shared (anonymous, cached) request may send upstream, lower-case:
    # the varied ones and those the rule sets itself (``backend.headers``, a body's type).
    send: frozenset[str] = frozenset()

    @property
    def cacheable(self) -> bool:
        return self.ttl > 0 or self.not_found_ttl > 0

    @property
    def fast_ok(self) -> bool:
        """Answers may be remembered by the front door: every header they vary on is one
        that sends a request to the full pipeline (front._NOT_FAST)."""
        return all(name.lower() in _FAST_SAFE_VARY for name in self.vary)

    @classmethod
    def for_route(cls, route: Route, config: Config) -> Policy:
        c = route.cache
        if not c.enabled or not config.cache.enabled:
            return cls(ttl=0.0, route_id=route.id)
        nf = c.not_found_ttl if c.not_found_ttl is not None else config.cache.negative_ttl
        # An upstream status the rule maps to 404 ("user does not exist" as a 400) is a
        # negative answer too, and cached as one.
        negative = frozenset(
            {404, 410} | {s for s, ours in route.status_map.items() if ours in (404, 410)}
        )
        return cls(
            c.ttl,
            c.stale_while_revalidate,
            c.stale_if_error,
            nf,
            negative,
            c.when + _not_found_conditions(route, nf),
            c.credentials,
            route.backend.forward_headers,
            route.id,
            frozenset(
                {
                    *route.backend.forward_headers,
                    *(name.lower() for name, _ in route.backend.headers),
                    *(("content-type",) if route.backend.body is not None else ()),
                }
            ),
        )

    @classmethod
    def for_passthrough(cls, safe_read: bool, config: Config) -> Policy:
        if not config.cache.enabled or not safe_read:
            return cls(ttl=0.0)
        return cls(
            config.cache.passthrough_ttl,
            not_found_ttl=config.cache.negative_ttl,
            vary=PASSTHROUGH_VARY,
            send=frozenset(PASSTHROUGH_VARY),
        )


def _not_found_conditions(route: Route, ttl: float) -> tuple[CacheCondition, ...]:
    """A 200 that the route turns into 404 (``require``, ``empty: not_found``) is a
    negative answer and is kept for the not-found TTL, not the route's TTL."""
    from .rules import CacheCondition

    out = [CacheCondition(path, (None,), ttl, "require") for path in route.require]
    pick = route.plan.pick
    if route.plan.empty_is_404 and pick is not None and route.plan.pagination is None:
        if pick and isinstance(pick[-1], int):  # data[0]: empty when the list is empty
            out.append(CacheCondition(pick[:-1], ([],), ttl, "empty"))
        else:
            out.append(CacheCondition(pick, (None, [], {}), ttl, "empty"))
    return tuple(out)


class Fetched:
    """An upstream answer (fresh or cached) and what the cache did to get it."""

    __slots__ = (
        "cache_time",
        "clock",
        "detail",
        "entry",
        "fast_ok",
        "key",
        "l1",
        "renderer",
        "result",
        "shared",
        "stored",
        "upstream",
    )

    def __init__(
        self,
        entry: Entry,
        result: str,
        *,
        key: str = "",
        stored: bool = False,
        shared: bool = True,
        l1: MemoryStore | None = None,
        clock: Callable[[], float] | None = None,
        detail: str = "",
    ) -> None:
        self.entry = entry
        self.result = result  # HIT | MISS | STALE | BYPASS | COALESCED
        self.key = key  # set when the entry is (or was just) in the cache
        self.stored = stored
        self.shared = shared
        self.l1 = l1
        self.clock = clock
        self.detail = detail
        self.upstream = 0.0  # seconds the upstream call behind this answer took (0: none)
        self.fast_ok = False  # may the front door remember this answer (front.FastEntry)?
        self.cache_time = 0.0  # seconds the L1/L2 lookup took
        # A clean route's body from any entry of this key (None: passthrough, the body as is)
        self.renderer: Callable[[Entry], bytes] | None = None

    @property
    def response(self) -> Entry:
        return self.entry

    def coalesced(self) -> Fetched:
        # A waiter handed the stale-if-error stand-in got stale content: it must say so.
        result = "STALE" if self.result == "STALE" else "COALESCED"
        out = Fetched(
            self.entry.for_another_caller(),
            result,
            key=self.key,
            stored=self.stored,
            shared=self.shared,
            l1=self.l1,
            clock=self.clock,
            detail=self.detail,
        )
        out.upstream = self.upstream
        out.cache_time = self.cache_time
        return out

    def render(
        self, route_id: str, requested: Sequence[object] | None, fn: Callable[[], bytes]
    ) -> tuple[bytes, str]:
        """The normalized body of a clean route and its ETag.

        Memoized in L1 beside the entry it came from (same key prefix, so a purge of the
        entry purges its renderings), so a hit does not parse and normalize again.
        """
        entry = self.entry
        if not self.key or self.l1 is None or entry.ttl <= 0:
            return fn(), ""
        rkey = f"{self.key} |render={route_id}"
        if requested:
            rkey += "|" + ",".join(map(str, requested))
        cached = self.l1.get_nowait(rkey)
        if cached is not None and cached.stored_at == entry.stored_at:
            return cached.body, cached.etag
        # A right-sized copy: orjson's output keeps a buffer of at least a few KiB behind a
        # small body, which would make every cached rendering cost several times its size.
        body = memoryview(fn()).tobytes()
        etag = make_etag(body)
        self.l1.set_nowait(
            rkey,
            Entry(
                200,
                (),
                body,
                entry.stored_at,
                entry.ttl,
                entry.stale_while_revalidate,
                entry.stale_if_error,
                etag,
            ),
        )
        return body, etag

    def respond(
        self,
        request: web.Request,
        status: int,
        body: bytes,
        headers: Sequence[tuple[str, str]] = (),
        etag: str = "",
        content_type: str | None = None,
    ) -> web.Response:
        """The client response with cache headers; 304 when ``If-None-Match`` matches."""
        now = self.clock() if self.clock is not None else self.entry.stored_at
        cached = bool(self.key) and self.entry.ttl > 0
        if cached and not etag and status == self.entry.status:
            etag = self.entry.etag
        inm = request.headers.get("If-None-Match")
        if inm and etag and status == 200 and decide.etag_matches(inm, etag):
            resp = web.Response(status=304)
        else:
            resp = web.Response(status=status, body=body)
            for name, value in headers:
                resp.headers.add(name, value)
            if content_type is not None:
                resp.headers["Content-Type"] = content_type
        h = resp.headers
        h["X-Cache"] = self.result
        h["Cache-Control"] = decide.cache_control(self.entry if cached else None, now, self.shared)
        h["Cache-Status"] = decide.cache_status(
            self.result, self.entry, now, self.stored, self.detail
        )
        if cached:
            h["Age"] = str(int(self.entry.age(now)))
            if etag:
                h["ETag"] = etag
            # Offered on a hit only: a key asked for once (a stream of misses) costs no
            # remembered answer, and the second request makes the third one fast.
            if self.fast_ok and resp.status == 200 and self.result == "HIT":
                self._offer_fast(request, resp, body, etag, content_type)
        return resp

    def _offer_fast(
        self,
        request: web.Request,
        resp: web.Response,
        body: bytes,
        etag: str,
        content_type: str | None,
    ) -> None:
        """Leave a ready answer for the front door's fast path (see :mod:`.front`)."""
        info = request.get(INFO)
        if not self.shared or self.l1 is None or info is None:
            return
        if not self.l1.max_entries:
            # No L1, so this hit came from Redis: leave how to answer it from Redis (the
            # front door drops it when there is no Redis).
            info.fast = SharedFast(self.key, info.route, self.renderer, content_type)
            return
        e = self.entry
        static = [(k, v) for k, v in resp.headers.items() if k.lower() in KEPT_HEADERS]
        if etag:
            static.append(("ETag", etag))
        info.fast = FastEntry(
            self.key,
            e.stored_at,
            e.ttl,
            e.stale_while_revalidate,
            e.stale_if_error,
            resp.status,
            body,
            tuple(static),
            etag,
            info.route,
            self.shared,
        )
