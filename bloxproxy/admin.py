"""Admin endpoints under ``/_bloxproxy/admin/`` (off unless ``server.admin_token`` is set).

``POST /_bloxproxy/admin/purge`` with ``Authorization: Bearer <token>`` and one of:

- ``{"url": "/v1/users/156"}`` — the entry an anonymous GET of that clean or passthrough URL
  uses (one key, with its normalized renderings);
- ``{"key": "GET users/v1/users/156"}`` — one raw cache key;
- ``{"route": "users.get"}`` — every entry under the route's upstream path prefix (the path
  up to its first parameter: neighbours under the same prefix go too, which only costs a
  refetch);
- ``{"prefix": "GET thumbnails/"}`` — every key with this prefix;
- ``{"tag": "user:156"}`` — every entry tagged with this entity (:mod:`bloxproxy.tagging`):
  single answers, entity entries of batches, thumbnails; with ``"soft": true`` they are
  marked stale instead of removed (served STALE while one refresh runs);
- ``{"all": true}`` — everything.

The purge runs on L1 and L2 and is published on the invalidation channel, so every replica
drops it from its L1 at once. Answer: ``{"purged": N, "scope": ..., "target": ...}`` (and
``"soft"`` for a tag). Which purge a body asks for is :func:`purge_order` (pure).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import orjson
from aiohttp import web
from multidict import MultiDict

from .appkeys import AUTH_THROTTLE, CONFIG, FETCHER, PIPELINE
from .authn import bearer, digests, matches
from .clients import client_ip
from .errors import HTTPProblem, bad_request, not_found
from .rules import Composite
from .tagging import MAX_TAG_LENGTH, valid_tag

SCOPES = ("url", "key", "route", "prefix", "tag", "all")
_EXPECTED = "expected exactly one of url, key, route, prefix, tag, all (and soft with tag)"


@dataclass(frozen=True, slots=True)
class PurgeOrder:
    """What a purge body asks for: a scope, its target ("" for all), soft or not."""

    scope: str
    target: str = ""
    soft: bool = False


def purge_order(body: object) -> PurgeOrder:
    """The purge a parsed JSON body asks for; ValueError (its message for the client) when
    it asks for none, several, or something unknown."""
    if not isinstance(body, dict):
        raise ValueError('expected a JSON object like {"tag": "user:156"}')
    unknown = [k for k in body if k not in SCOPES and k != "soft"]
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:3])
        raise ValueError(f"unknown field {shown}: {_EXPECTED}")
    scopes = [k for k in SCOPES if k in body]
    if len(scopes) != 1:
        raise ValueError(_EXPECTED)
    scope, target = scopes[0], body[scopes[0]]
    soft = body.get("soft", False)
    if not isinstance(soft, bool):
        raise ValueError("soft: expected true or false")
    if soft and scope != "tag":
        raise ValueError("soft: only a purge by tag can be soft")
    if scope == "all":
        if target is not True:
            raise ValueError("all: expected true")
        return PurgeOrder("all")
    if not isinstance(target, str) or not target:
        raise ValueError(f"{scope}: expected a non-empty string")
    if scope == "tag" and not valid_tag(target):
        raise ValueError(
            f"tag: expected 1 to {MAX_TAG_LENGTH} characters of A-Z a-z 0-9 _ . : @ / + = - "
            "(like user:156)"
        )
    return PurgeOrder(scope, target, soft)


async def _authorize(request: web.Request, token: str) -> None:
    if not token:
        raise not_found("admin endpoints are disabled (set server.admin_token)", code="no_route")
    # Compared as bytes in constant time (authn.matches): a token that is not UTF-8 is a
    # wrong token, and the answer's timing says nothing about the right one. A wrong one
    # is a failed attempt: too many from one address and it gets 429s, whatever it sends.
    ok = matches(bearer(request.headers.get("Authorization", "")), digests((token,)))
    hops = request.app[CONFIG].limits.clients.forwarded_for_hops
    await request.app[AUTH_THROTTLE].check(client_ip(request, hops), ok)
    if not ok:
        raise HTTPProblem(
            401,
            "missing or wrong admin token",
            code="unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="bloxproxy-admin"'},
        )


async def purge(request: web.Request) -> web.Response:
    await _authorize(request, request.app[CONFIG].server.admin_token)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise bad_request(
            'the body is not JSON (UTF-8): expected an object like {"tag": "user:156"}'
        ) from None
    try:
        order = purge_order(body)
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    scope, target = order.scope, order.target
    fetcher, pipeline = request.app[FETCHER], request.app[PIPELINE]
    answer: dict[str, object] = {}
    if scope == "all":
        n = await fetcher.purge_all()
    elif scope == "tag":
        n = await fetcher.purge_tag(target, soft=order.soft)
        answer["soft"] = order.soft
    else:
        if scope == "url":
            parts = urlsplit(target)
            if parts.scheme or parts.netloc or not parts.path.startswith("/"):
                raise bad_request("url: expected a path like /v1/users/156?x=1")
            query: MultiDict[str] = MultiDict()
            for k, v in parse_qsl(parts.query, keep_blank_values=True):
                query.add(k, v)
            key = pipeline.cache_key_for(parts.path, query)
            matched, _, _ = pipeline.rules.clean_router.match("GET", parts.path)
            if isinstance(matched, Composite):
                raise _composite(matched)
            if key is None:
                raise not_found(f"no route or service matches {parts.path}", code="no_route")
            n = await fetcher.purge_key(key)
            target = key
        elif scope == "key":
            n = await fetcher.purge_key(target)
        elif scope == "route":
            route = pipeline.rules.by_id(target)
            composite = next((c for c in pipeline.rules.composites if c.id == target), None)
            if composite is not None:
                raise _composite(composite)
            if route is None:
                raise not_found(f"no route with id {target!r}", code="no_route")
            target = pipeline.route_prefix(route)
            n = await fetcher.purge_prefix(target)
        else:
            n = await fetcher.purge_prefix(target)
    shown: object = True if scope == "all" else target
    body = {"purged": n, "scope": scope, "target": shown, **answer}
    if fetcher.shared is not None and not fetcher.shared.healthy:
        # L1 was purged; Redis and the other replicas could not be told.
        body["warning"] = "redis unavailable: purged this replica's L1 only"
    elif fetcher.shared is not None and (down := fetcher.shared.down_nodes()):
        # L1, the other replicas and the nodes up were purged; the nodes down could not be.
        body["warning"] = (
            f"redis cluster node(s) {', '.join(down)} unavailable: their entries may be left"
        )
    return web.json_response(body, dumps=lambda v: orjson.dumps(v).decode())


def _composite(composite: Composite) -> HTTPProblem:
    """Nothing of a composite route is cached but its parts' own entries: say which."""
    parts = ", ".join(sorted({p.route.id for p in composite.parts}))
    return bad_request(
        f"{composite.id} is a composite route: only its parts are cached; purge their "
        f"routes ({parts}) or their urls"
    )
