"""Upstream access: the one place that talks to Roblox (or whatever stands in for it).

:class:`UpstreamRequest` is the canonical description of an upstream call; cache keys,
coalescing and limits are all derived from it, so a clean route and a passthrough call that
mean the same request are the same value. :class:`Upstream` sends it with one shared
``ClientSession`` that never follows redirects, never keeps cookies between callers, and
bounds the body it accepts.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from .config import Config
from .errors import Unavailable, UpstreamError
from .inflight import BudgetExhausted, ByteBudget

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
    headers: Headers = ()
    body: bytes | None = None
    safe_read: bool = True


# The upstream call in progress, for the client middlewares (guard.py) to know whose it is.
CURRENT: contextvars.ContextVar[UpstreamRequest | None] = contextvars.ContextVar(
    "bloxproxy_upstream_request", default=None
)


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


class Upstream:
    """Sends :class:`UpstreamRequest`\\ s through one ``ClientSession``."""

    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        self._config = config
        self._session = session
        self._max = config.upstream.max_response_size
        self._bases: dict[str, str] = {}

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

    async def send(self, req: UpstreamRequest, request_id: str = "") -> UpstreamResponse:
        headers = list(req.headers)
        if request_id:
            headers.append(("X-Request-ID", request_id))
        token = CURRENT.set(req)  # tells the client middlewares (guard.py) whose call this is
        try:
            async with self._session.request(
                req.method,
                self.url(req),
                headers=headers,
                data=req.body,
                allow_redirects=False,
            ) as resp:
                body = await self._read(resp)
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
        finally:
            CURRENT.reset(token)

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        return await read_body(resp, self._max)


async def read_body(
    resp: aiohttp.ClientResponse,
    limit: int,
    budget: ByteBudget | None = None,
    wait: float = 0.0,
) -> bytes:
    """The whole body, at most ``limit`` decoded bytes (502 problem above), read once.

    The guard middleware reads it inside the attempt, so a connection cut mid-body is an
    attempt failure (retried for safe reads, counted by the breaker); the pipeline then
    gets the same bytes again from here. While it is read, its bytes are reserved in
    ``budget`` (all upstream bodies being read at once; see :mod:`bloxproxy.inflight`):
    the ``Content-Length``, or ``limit`` when the decoded size is not known in advance (no
    length, or compressed). A read never waits for more room while holding some, which
    would deadlock a burst; no room within ``wait`` seconds is a 503
    :class:`~bloxproxy.errors.Unavailable`.
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
    reserved = 0
    if budget is not None:
        reserved = await _reserve(budget, length if sized and length is not None else limit, wait)
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
    finally:
        if budget is not None:
            budget.give(reserved)


async def _reserve(budget: ByteBudget, n: int, wait: float) -> int:
    try:
        return await budget.take(n, wait)
    except BudgetExhausted:
        raise Unavailable(
            "too many upstream answers are being read at once", "upstream_busy", 1.0
        ) from None


def create_session(
    config: Config, middlewares: Sequence[aiohttp.ClientMiddlewareType] = ()
) -> aiohttp.ClientSession:
    """The shared upstream session: bounded pool, no cookie jar, our User-Agent, and the
    retry/CSRF/guard middlewares. ``total`` bounds all attempts of one call together
    (``retries.deadline``); each attempt has ``upstream.timeout`` (in ``guard``)."""
    up = config.upstream
    connector = aiohttp.TCPConnector(limit=up.max_connections, limit_per_host=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=config.retries.deadline, sock_connect=up.connect_timeout, sock_read=up.timeout
        ),
        middlewares=tuple(middlewares),
        # One jar for every client would hand one caller's Set-Cookie to the next.
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": up.user_agent},
        auto_decompress=True,
        trust_env=False,
        raise_for_status=False,
    )
