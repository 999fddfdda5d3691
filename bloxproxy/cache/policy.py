"""How one kind of upstream request may be cached: the :class:`Policy` a rule (or the
passthrough default) gives it, computed once per rule set.

The pipeline picks the policy for each upstream request — a rule's when one describes that
request, from either front door, else the passthrough default — and the fetcher decides
with it (:mod:`bloxproxy.cache.decide`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..rules import CacheCondition, Route
from ..tagging import TagTemplate

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["PASSTHROUGH_VARY", "Policy"]

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
    # Its entries' tag templates (``cache.tags``) and the upstream path template they are
    # filled from when a passthrough request gets this policy (tagging.path_values).
    tags: tuple[TagTemplate, ...] = ()
    backend_path: str = ""

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
            c.tags,
            route.backend.path.text,
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
    out = [CacheCondition(path, (None,), ttl, "require") for path in route.require]
    pick = route.plan.pick
    if route.plan.empty_is_404 and pick is not None and route.plan.pagination is None:
        if pick and isinstance(pick[-1], int):  # data[0]: empty when the list is empty
            out.append(CacheCondition(pick[:-1], ([],), ttl, "empty"))
        else:
            out.append(CacheCondition(pick, (None, [], {}), ttl, "empty"))
    return tuple(out)
