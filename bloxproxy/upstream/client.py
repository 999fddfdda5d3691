"""The upstream client: the one place that sends requests to Roblox (or a stand-in).

:class:`UpstreamRequest` is the canonical description of an upstream call; cache keys,
coalescing and limits are all derived from it, so a clean route and a passthrough call that
mean the same request are the same value. :class:`Upstream` sends it with one shared
``ClientSession`` that never follows redirects, never keeps cookies between callers, and
bounds the body it accepts. Each call carries its own :class:`Call` to the client middleware
(:mod:`bloxproxy.upstream.guard`, given per request): which request it is, and the lease on
the byte budget its body is read under (:mod:`bloxproxy.upstream.inflight`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from ..config import Config
from ..errors import Unavailable, UpstreamError, bad_request
from .inflight import BudgetExhausted, Lease

# RFC 9110 §7.6.1 hop-by-hop headers, plus framing headers we recompute.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Never forwarded from a client to Roblox: framing, our own routing and tracing headers,
# client addresses (privacy), and Roblox-Id (Roblox's game-server identity header, which
# self-hosted proxies strip as well).
_REQUEST_DROP = HOP_BY_HOP | {
    "host",
    "content-length",
    "accept-encoding",
    "roblox-id",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "forwarded",
    "x-real-ip",
    "x-forwarded-server",
    "x-original-forwarded-for",
    "true-client-ip",
    "cf-connecting-ip",
    "cf-connecting-ipv6",
    "x-client-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "client-ip",
    "x-envoy-external-address",
    "via",
    "expect",
    "x-bloxproxy-max-wait",  # ours: the client's wait bound (Caller.max_wait)
}
# Never returned as-is: framing is redone by our server, and the body is already decoded.
_RESPONSE_DROP = HOP_BY_HOP | {"content-length", "content-encoding", "date", "server"}

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One upstream call: ``{base_url(service)}{path}?{query}``.

    ``path`` is already percent-encoded and canonical (no ``.``/``..`` segments, no ``//``).
    ``query`` is the raw query string as it will be sent. ``safe_read`` marks requests that
    read (GET, and POSTs that Roblox documents as reads) — cacheable and retryable.
    """

    service: str
    method: str
    path: str
    query: str = ""
    # (not in the repr: a client's cookie, an API key — the proxy's held one too)
    headers: Headers = field(default=(), repr=False)
    body: bytes | None = None
    safe_read: bool = True

    bucket: str = ""  # the limiter scope it draws from (a rule's limits.bucket); "": service

    @property
    def scope(self) -> str:
        """The limiter scope: the rule's bucket, else the service."""
        return self.bucket or self.service


@dataclass(frozen=True, slots=True)
class Caller:
    """Who an upstream call is made for: the request id (sent upstream as ``X-Request-ID``,
    logged), the client whose share of the upstream budget it draws on (``key:<hash>`` of
    an access key, ``ip:<address>``, or ``""``) and that share's weight (a key given a
    larger share of the budget has more), and how long it may wait for budget (``None``:
    ``limits.upstream.max_wait``). Not part of what is asked: two callers of one request
    share its answer."""

    request_id: str = ""
    client: str = ""
    max_wait: float | None = None
    weight: float = 1.0


NOBODY = Caller()

MAX_WAIT_HEADER = "X-Bloxproxy-Max-Wait"
_MAX_WAIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_MAX_WAIT_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def max_wait_of(value: str) -> float:
    """A client's ``X-Bloxproxy-Max-Wait`` as seconds: ``3s``, ``500ms``, ``1m`` or a
    number of seconds (``2.5``); the limiter caps it at ``limits.upstream.max_wait``.
    Anything else is a 400 problem (a client that asks for a bound should know it was not
    understood)."""
    found = _MAX_WAIT.match(value)
    if found is None:
        shown = value if len(value) <= 32 else value[:32] + "…"
        raise bad_request(
            f"{MAX_WAIT_HEADER}: expected a duration like '3s' or '500ms', got {shown!r}"
        )
    return float(found.group(1)) * _MAX_WAIT_UNITS[found.group(2)]


class Ticket(NamedTuple):
    """A slot given: for which scope, at which rate generation, from which budget (a 429
    for it is fed back there)."""

    scope: str
    gen: int
    shared: bool


@dataclass(slots=True)
class Call:
    """One upstream call as the client middleware sees it: the request, who it is for, the
    lease its answer's body is read under (None: no byte budget), and the budget's slot its
    first attempt already holds (None: it takes one; see :meth:`UpstreamClient.reserve`)."""

    req: UpstreamRequest
    caller: Caller = NOBODY
    lease: Lease | None = None
    ticket: Ticket | None = None


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: Headers
    body: bytes


def forwardable_request_headers(
    headers: Mapping[str, str] | CIMultiDictProxy[str], extra_drop: tuple[str, ...] = ()
) -> Headers:
    """Client headers that passthrough sends on (everything but hop-by-hop and ours)."""
    drop = _drop_set(extra_drop)
    connection = headers.get("Connection", "")
    if connection:  # headers named in Connection are hop-by-hop too (RFC 9110 §7.6.1)
        drop = drop | {h.strip().lower() for h in connection.split(",")}
    return tuple((k, v) for k, v in headers.items() if k.lower() not in drop)


@functools.lru_cache(maxsize=16)  # a proxy has two (cacheable reads and the rest)
def _drop_set(extra_drop: tuple[str, ...]) -> frozenset[str]:
    return _REQUEST_DROP | {h.lower() for h in extra_drop}


# The limiter's "a slot of this request's budget for this caller within so many seconds"
# (:meth:`bloxproxy.upstream.guard.Guard.reserve`; raises Unavailable when none comes).
Reserve = Callable[["UpstreamRequest", Caller, float], Awaitable[Ticket]]

CallMiddleware = Callable[
    [Call, aiohttp.ClientRequest, aiohttp.ClientHandlerType], Awaitable[aiohttp.ClientResponse]
]


class Upstream:
    """Sends :class:`UpstreamRequest`\\ s through one ``ClientSession``, each with its
    :class:`Call` given to ``middleware`` (retries, CSRF, limits: :mod:`.guard`)."""

    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        middleware: CallMiddleware | None = None,
        *,
        next_slot_in: Callable[[str], float] | None = None,
        reserve: Reserve | None = None,
    ) -> None:
        self._config = config
        self._session = session
        self._middleware = middleware
        self._next_slot_in = next_slot_in
        self._reserve = reserve
        self._max = config.upstream.max_response_size
        self._bases: dict[str, str] = {}

    def next_slot_in(self, scope: str) -> float:
        """Seconds until a slot of ``scope``'s upstream budget would be free for a new call
        (``UpstreamRequest.scope``): 0.0 when one is free now and nobody waits. The
        limiter's :meth:`~bloxproxy.upstream.limiter.Limiter.next_slot_in` (cheap,
        synchronous, no I/O), for the cache layer: a call that would wait anyway is a
        moment to gather more into it. 0.0 without a limiter."""
        return 0.0 if self._next_slot_in is None else self._next_slot_in(scope)

    async def reserve(self, req: UpstreamRequest, caller: Caller, within: float) -> Ticket | None:
        """A slot of ``req``'s budget for its first attempt, waited for in ``caller``'s
        share for at most ``within`` seconds, before the call is made up: the cache layer
        gathers more into a batch while it waits (:mod:`bloxproxy.cache.cluster_batch`),
        then sends it with the slot (:meth:`send`'s ``ticket``). None without a limiter,
        or when no slot comes in time (the call then waits for its slot as any other)."""
        if self._reserve is None:
            return None
        try:
            return await self._reserve(req, caller, within)
        except Unavailable:
            return None

    def reload(self, config: Config) -> None:
        """New base URLs and limits apply to the next call."""
        self._config = config
        self._max = config.upstream.max_response_size
        self._bases = {}

    def url(self, req: UpstreamRequest) -> URL:
        base = self._bases.get(req.service)
        if base is None:
            base = self._bases[req.service] = self._config.base_url_for(req.service)
        text = base + req.path + (("?" + req.query) if req.query else "")
        # encoded=True: the path and query are already canonical; yarl must not re-quote
        # them, and nothing in them can change the scheme, host or port of `base`.
        return URL(text, encoded=True)

    async def send(
        self,
        req: UpstreamRequest,
        caller: Caller = NOBODY,
        lease: Lease | None = None,
        ticket: Ticket | None = None,
    ) -> UpstreamResponse:
        """One upstream call (all its attempts) for ``caller``; its body is read under
        ``lease``; ``ticket``: the slot its first attempt holds (:meth:`reserve`)."""
        headers = list(req.headers)
        if caller.request_id:
            headers.append(("X-Request-ID", caller.request_id))
        middleware = self._middleware
        middlewares: tuple[aiohttp.ClientMiddlewareType, ...] = ()
        if middleware is not None:
            middlewares = (functools.partial(middleware, Call(req, caller, lease, ticket)),)
        try:
            async with self._session.request(
                req.method,
                self.url(req),
                headers=headers,
                data=req.body,
                allow_redirects=False,
                middlewares=middlewares,
            ) as resp:
                body = await read_body(resp, self._max)
                out = tuple(
                    (k, v) for k, v in resp.headers.items() if k.lower() not in _RESPONSE_DROP
                )
                return UpstreamResponse(resp.status, out, body)
        except TimeoutError:
            raise UpstreamError(
                504, f"{req.service} did not answer in time", code="upstream_timeout"
            ) from None
        except aiohttp.ClientResponseError as exc:
            raise UpstreamError(
                502,
                f"{req.service} sent an invalid response: {exc.message}",
                code="upstream_bad_response",
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(
                502,
                f"{req.service} could not be reached ({type(exc).__name__})",
                code="upstream_unreachable",
            ) from None


async def read_body(
    resp: aiohttp.ClientResponse, limit: int, lease: Lease | None = None, wait: float = 0.0
) -> bytes:
    """The whole body, at most ``limit`` decoded bytes (502 problem above), read once.

    The guard middleware reads it inside the attempt, so a connection cut mid-body is an
    attempt failure (retried for safe reads, counted by the breaker); the pipeline then
    gets the same bytes again from here. Before the first byte, ``lease`` reserves the
    body's size in the byte budget (:mod:`bloxproxy.upstream.inflight`): the
    ``Content-Length``, or ``limit`` when the decoded size is not known in advance (no
    length, or compressed) — a read never waits for more room while holding some, which
    would deadlock a burst. No room within ``wait`` seconds is a 503
    :class:`~bloxproxy.errors.Unavailable`; a failed read gives its reservation back, a
    complete one keeps it until the lease ends (the answer has been written out).
    """
    if resp._body is not None:  # read already (aiohttp keeps it for read() as well)
        body: bytes = resp._body
        return body
    length = resp.content_length
    if length is not None and length > limit:
        resp.release()
        raise UpstreamError(
            502,
            f"upstream body of {length} bytes exceeds the {limit}-byte limit",
            code="upstream_too_large",
        )
    sized = length is not None and not resp.headers.get("Content-Encoding")
    if lease is not None:
        try:
            await lease.reserve(length if sized and length is not None else limit, wait)
        except BudgetExhausted:
            raise Unavailable(
                "too many upstream answers are being read at once", "upstream_busy", 1.0
            ) from None
    try:
        if sized:
            return await resp.read()
        # No length, or a compressed body whose length says nothing about what it inflates
        # to (auto_decompress): count the decoded bytes as they come.
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(65536):
            size += len(chunk)
            if size > limit:
                raise UpstreamError(
                    502, f"upstream body exceeds the {limit}-byte limit", code="upstream_too_large"
                )
            chunks.append(chunk)
        resp._body = body = b"".join(chunks)
        return body
    except BaseException:
        if lease is not None:
            lease.unreserve()
        raise


def create_session(config: Config) -> aiohttp.ClientSession:
    """The shared upstream session: bounded pool, no cookie jar, our User-Agent. Its
    middleware is given per call (:meth:`Upstream.send`). ``total`` bounds all attempts of
    one call together (``retries.deadline``); each attempt has ``upstream.timeout``."""
    up = config.upstream
    connector = aiohttp.TCPConnector(limit=up.max_connections, limit_per_host=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=config.retries.deadline, sock_connect=up.connect_timeout, sock_read=up.timeout
        ),
        # One jar for every client would hand one caller's Set-Cookie to the next.
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": up.user_agent},
        auto_decompress=True,
        trust_env=False,
        raise_for_status=False,
    )
