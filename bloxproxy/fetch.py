"""Fetching an upstream answer: the step between a built request and a response.

:class:`Fetcher` is where the cache, coalescing and the upstream client meet; handlers only
call :meth:`Fetcher.fetch` and get a :class:`Fetched` back, whatever happened underneath.
:class:`Policy` is the per-route caching decision input, computed once per route.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from aiohttp import web

from .upstream import Upstream, UpstreamRequest, UpstreamResponse

if TYPE_CHECKING:
    from .config import Config
    from .rules import CacheCondition, Route


@dataclass(frozen=True, slots=True)
class Policy:
    """How one kind of request may be cached (from its rule, or the passthrough default)."""

    ttl: float
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    not_found_ttl: float = 0.0
    conditions: tuple[CacheCondition, ...] = ()
    credentials: Literal["bypass", "per_credential"] = "bypass"
    route_id: str = ""

    @classmethod
    def for_route(cls, route: Route, config: Config) -> Policy:
        c = route.cache
        if not c.enabled or not config.cache.enabled:
            return cls(ttl=0.0, route_id=route.id)
        nf = c.not_found_ttl if c.not_found_ttl is not None else config.cache.negative_ttl
        return cls(c.ttl, c.stale_while_revalidate, c.stale_if_error, nf, c.when,
                   c.credentials, route.id)

    @classmethod
    def for_passthrough(cls, req: UpstreamRequest, config: Config) -> Policy:
        if not config.cache.enabled or not req.safe_read:
            return cls(ttl=0.0)
        return cls(config.cache.passthrough_ttl, not_found_ttl=config.cache.negative_ttl)


class Fetched:
    """An upstream answer (fresh or cached) and what the cache did to get it."""

    __slots__ = ("cache_status", "response")

    def __init__(self, response: UpstreamResponse, cache_status: str = "BYPASS") -> None:
        self.response = response
        self.cache_status = cache_status

    def render(self, route_id: str, requested: Sequence[object] | None,
               fn: Callable[[], bytes]) -> bytes:
        """The normalized body of a clean route (memoized per cache entry when cached)."""
        return fn()

    def decorate(self, resp: web.StreamResponse) -> None:
        """Add the cache headers to the client response."""
        resp.headers["X-Cache"] = self.cache_status


class Fetcher:
    """Uncached fetching: every request goes upstream."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    async def fetch(self, req: UpstreamRequest, policy: Policy,
                    request: web.Request) -> Fetched:
        return Fetched(await self.upstream.send(req, request.get("request_id", "")))
