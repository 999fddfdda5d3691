"""Admin endpoints under ``/_bloxproxy/admin/`` (off unless ``server.admin_token`` is set).

``POST /_bloxproxy/admin/purge`` with ``Authorization: Bearer <token>`` and one of:

- ``{"url": "/v1/users/156"}`` — the entry an anonymous GET of that clean or passthrough URL
  uses (one key, with its normalized renderings);
- ``{"key": "GET users/v1/users/156"}`` — one raw cache key;
- ``{"route": "users.get"}`` — every entry under the route's upstream path prefix (the path
  up to its first parameter: neighbours under the same prefix go too, which only costs a
  refetch);
- ``{"prefix": "GET thumbnails/"}`` — every key with this prefix;
- ``{"all": true}`` — everything.

The purge runs on L1 and L2 and is published on the invalidation channel, so every replica
drops it from its L1 at once. Answer: ``{"purged": N, "scope": ..., "target": ...}``.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import orjson
from aiohttp import web
from multidict import MultiDict

from .appkeys import AUTH_THROTTLE, CONFIG, FETCHER, PIPELINE
from .authn import bearer, digests, matches
from .clients import client_ip
from .errors import HTTPProblem, bad_request, not_found
from .rules import Composite


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
        raise bad_request('expected a JSON object like {"url": "/v1/users/156"}') from None
    if not isinstance(body, dict) or len(body) != 1:
        raise bad_request("expected exactly one of url, key, route, prefix, all")
    ((scope, target),) = body.items()
    fetcher, pipeline = request.app[FETCHER], request.app[PIPELINE]
    if scope == "all" and target is True:
        n = await fetcher.purge_all()
    elif scope in ("url", "key", "route", "prefix") and isinstance(target, str) and target:
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
    else:
        raise bad_request(f"{scope}: expected a non-empty string (or all: true)")
    body = {"purged": n, "scope": scope, "target": target}
    if fetcher.shared is not None and not fetcher.shared.healthy:
        # L1 was purged; Redis and the other replicas could not be told.
        body["warning"] = "redis unavailable: purged this replica's L1 only"
    return web.json_response(body, dumps=lambda v: orjson.dumps(v).decode())


def _composite(composite: Composite) -> HTTPProblem:
    """Nothing of a composite route is cached but its parts' own entries: say which."""
    parts = ", ".join(sorted({p.route.id for p in composite.parts}))
    return bad_request(
        f"{composite.id} is a composite route: only its parts are cached; purge their "
        f"routes ({parts}) or their urls"
    )
