"""The pipeline: one handler for both front doors, from the client request to an answer.

``/v<N>/...`` is the clean API (a rule, :mod:`bloxproxy.clean`); ``/{service}/...`` is
passthrough to an allow-listed Roblox service (or ``Host: {service}.<host_suffix>``,
:mod:`bloxproxy.passthrough`). Both turn the client request into an
:class:`~bloxproxy.upstream.client.UpstreamRequest`, pick its cache
:class:`~bloxproxy.cache.policy.Policy` — the rule's whenever a rule describes that upstream
request, from either door, so both store it alike — hand both to the fetcher (cache →
coalescing → upstream) and give the front door back an :class:`~bloxproxy.answer.Answer`:
passthrough with Roblox's status, headers and body unchanged; clean routes with the
normalized body, or a problem+json carrying the same cache facts when Roblox answered an
error. The pipeline never builds an HTTP response itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import orjson
from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from . import clean, cloudkeys, compose, normalize, passthrough, tagging, walk
from .answer import Answer
from .cache import decide
from .cache.entry import Entry
from .cache.fetcher import Fetcher
from .cache.policy import Policy
from .cache.result import Fetched
from .cloudkeys import HeldKey, PassUse
from .config import Config
from .credentials import credential_of
from .errors import (
    PROBLEM_JSON,
    HTTPProblem,
    UpstreamError,
    bad_request,
    instance_of,
    not_found,
    problem_body,
)
from .observe import RequestInfo
from .router import DuplicateRoute, Router
from .rules import BatchSpec, Composite, Hold, Redirect, Route, RuleSet
from .upstream.client import MAX_WAIT_HEADER, Caller, UpstreamRequest, max_wait_of

__all__ = ["Pipeline"]

_CLEAN_PREFIX = re.compile(r"^/v[0-9]+(/|$)")
_PARAM = re.compile(r"\{[^}]*\}")


def described_requests(
    routes: tuple[Route, ...], policies: dict[str, Policy]
) -> dict[str, Router[Policy]]:
    """Per service, the upstream reads the rules describe (their backend method and path
    template: GETs, and POSTs marked ``safe_read``), each with its rule's policy; the first
    rule wins when several describe one request."""
    out: dict[str, Router[Policy]] = {}
    for route in routes:
        b = route.backend
        if not b.safe_read:
            continue
        template = _PARAM.sub("{p}", b.path.text)  # one name per position, whatever the rule's
        try:
            out.setdefault(b.service, Router()).add(b.method, template, policies[route.id])
        except DuplicateRoute:
            continue
    return out


def batch_endpoints(routes: tuple[Route, ...]) -> dict[tuple[str, str, str], BatchSpec]:
    """The upstream batch endpoints the rules describe (``backend.batch``), by service,
    method and path; the first rule's description wins."""
    out: dict[tuple[str, str, str], BatchSpec] = {}
    for route in routes:
        spec = route.backend.batch
        if spec is not None:
            out.setdefault((spec.service, spec.method, spec.path), spec)
    return out


class Pipeline:
    """Holds what the pipeline needs; ``rules`` is swapped whole on reload."""

    def __init__(
        self,
        config: Config,
        rules: RuleSet,
        fetcher: Fetcher,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.monotonic = monotonic  # whole-list walks' deadlines (walk.py)
        self.rules = rules
        self.fetcher = fetcher
        self._sleep = sleep  # a held answer's waits (injected: tests move their clock)
        self._allowed = frozenset(config.upstream.allowed_services)
        self._suffix = ("." + config.server.host_suffix) if config.server.host_suffix else ""
        self._max_body = config.server.max_body_size
        self._drop = (config.auth.header,)  # our access key never goes to Roblox
        cacheable = config.cache.enabled
        self._drop_cacheable = (*self._drop, *passthrough.CONDITIONAL) if cacheable else self._drop
        self._policies = {r.id: Policy.for_route(r, config) for r in rules.routes}
        self._pass_policies = {safe: Policy.for_passthrough(safe, config) for safe in (True, False)}
        self._described = described_requests(rules.routes, self._policies)
        self._batches = batch_endpoints(rules.routes)
        held = {k.name: k for k in config.opencloud.keys}
        self._held = {c.name: held[c.opencloud_key] for c in config.auth.clients if c.opencloud_key}
        # opencloud_passthrough: the held key and the methods it goes with on passthrough
        self._pass_held = {
            c.name: (held[c.opencloud_key], frozenset(c.opencloud_passthrough))
            for c in config.auth.clients
            if c.opencloud_key and c.opencloud_passthrough
        }
        self._owner_buckets = {r.id: r.owner_bucket for r in rules.routes}

    def swap(self, config: Config, rules: RuleSet) -> None:
        """Take a validated config and rule set (hot reload). Routing, parameter parsing and
        request building run without an await in between, so a request in flight keeps the
        route it matched, and nothing here is ever half-swapped from its point of view."""
        self.__init__(  # type: ignore[misc]
            config, rules, self.fetcher, sleep=self._sleep, monotonic=self.monotonic
        )

    async def handle(self, request: web.Request, info: RequestInfo) -> Answer:
        raw_path = request.rel_url.raw_path
        credential = credential_of(request.headers)  # "": anonymous
        if self._suffix:
            host = (request.host or "").split(":", 1)[0].lower()
            if host.endswith(self._suffix):
                service = host[: -len(self._suffix)]
                return await self._passthrough(request, info, credential, service, raw_path)
        if _CLEAN_PREFIX.match(raw_path):
            return await self._clean(request, info, credential, raw_path)
        service, _, rest = raw_path.lstrip("/").partition("/")
        return await self._passthrough(request, info, credential, service, "/" + rest)

    # -- clean routes ------------------------------------------------------------------

    async def _clean(
        self, request: web.Request, info: RequestInfo, credential: str, raw_path: str
    ) -> Answer:
        route, raw_params = self._match(request.method, raw_path)
        raw_query = request.rel_url.raw_query_string
        try:
            # aiohttp decodes invalid UTF-8 in the query to U+FFFD, which would silently
            # send a different value upstream: refuse it like an invalid path.
            unquote_to_bytes(raw_query).decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request("the query string is not valid UTF-8") from None
        info.route = route.id
        values = clean.values_of(route, raw_params, request.rel_url.query)
        if isinstance(route, Composite):  # made of other routes' answers (compose.py)
            info.cache = "COMPOSE"
            return await compose.composite_answer(
                self,
                route,
                values,
                request.rel_url.query,
                request.headers,
                self._caller(request, info),
                credential,
                raw_path,
            )
        headers: MultiMapping[str] = request.headers
        owner = ""
        if route.backend.credentials == "api_key":
            headers, credential, owner = self._api_key(request.headers, info, credential)
        if route.plan.pagination is not None and walk.asked(request.rel_url.query):
            caller = self._caller(request, info)  # ?all=true: the whole list, streamed
            info.cache = "WALK"  # (a first page that fails says what the cache did instead)
            return await walk.whole_list(
                self, route, values, request, caller, credential, raw_path, headers, owner
            )
        return await self.route_answer(
            route,
            values,
            headers,
            self._caller(request, info),
            credential,
            raw_path,
            owner,
        )

    def _api_key(
        self, headers: MultiMapping[str], info: RequestInfo, credential: str
    ) -> tuple[MultiMapping[str], str, str]:
        """An Open Cloud route's key (``backend.credentials: api_key``): the caller's own
        ``x-api-key``, else the key the proxy holds for its named access key
        (``opencloud.keys``), else a 401 problem (Roblox would refuse it anyway). Returns
        the headers the route is built from, the credential its cache entries are private
        to (an HMAC of it keys them) and the key owner whose budget it draws on (``""``: a
        client's own key, whose owner the proxy cannot know)."""
        if any(v.strip() for v in headers.getall("x-api-key", ())):
            return headers, credential, ""
        held = self._held.get(info.key_name) if info.key_name else None
        if held is None:
            raise HTTPProblem(
                401,
                "this route needs an Open Cloud API key: send it in x-api-key, or use an "
                "access key the proxy holds one for (opencloud.keys)",
                code="api_key_required",
            )
        keyed = CIMultiDict(headers)
        keyed["x-api-key"] = held.key
        # (Such answers are private to the key: per-credential entries are never shared,
        # and the front door's remembered hits need a shared entry and no client gate.)
        return keyed, credential_of(keyed), held.owner_label

    async def route_answer(
        self,
        route: Route,
        values: dict[str, Any],
        headers: MultiMapping[str],
        caller: Caller,
        credential: str,
        instance: str,
        owner: str = "",
    ) -> Answer:
        """The answer of one clean route for its parsed ``values``: what the clean door
        gives a client, and what a route made of other routes uses for each of its parts
        (``headers``: the client's, for what the rule forwards; ``instance``: the path its
        problems name; ``owner``: the Open Cloud key owner whose budget it draws on, one
        scope per route bucket and owner)."""
        ureq = clean.upstream_request(route, values, headers)
        if owner:
            ureq = dataclasses.replace(ureq, bucket=owner_scope(route.owner_bucket, owner))
        policy = self._policies[route.id]
        tags = tagging.render_tags(policy.tags, values) if policy.tags else ()
        fetched = await self._fetch(ureq, policy, caller, credential, tags=tags)
        polled = False
        if route.hold is not None:
            first = fetched
            fetched = await self._hold(route.hold, ureq, policy, caller, credential, fetched, tags)
            polled = fetched is not first and route.hold.operation is not None
        try:
            answer = await self._clean_answer(route, values, fetched, instance, caller.request_id)
        except BaseException:
            if fetched.lease is not None:
                fetched.lease.release()  # no answer will be written
            raise
        if polled and answer.status < 400 and _kept_for_start(route, fetched):
            # The finished operation, fetched by a poll, is the answer to the request that
            # started it too: kept under that request's key (private to the same
            # credential), the next request for it asks Roblox nothing.
            self.fetcher.keep_as(ureq, policy, credential, fetched, tags)
        return answer

    def _match(self, method: str, raw_path: str) -> tuple[Route | Composite, dict[str, str]]:
        router = self.rules.clean_router  # the routes and the composite routes
        try:
            route, raw_params, exists = router.match(method, raw_path)
        except UnicodeDecodeError:
            raise bad_request("the path is not valid UTF-8") from None
        if route is not None:
            return route, raw_params
        if exists:
            methods = router.methods(raw_path)
            if "GET" in methods and "HEAD" not in methods:
                methods = [*methods, "HEAD"]  # the router answers HEAD with GET
            allowed = ", ".join(methods)
            raise HTTPProblem(
                405,
                f"{method} is not allowed here (allowed: {allowed})",
                headers={"Allow": allowed},
            )
        raise not_found(f"no route matches {raw_path}", code="no_route")

    async def _hold(
        self,
        hold: Hold,
        ureq: UpstreamRequest,
        policy: Policy,
        caller: Caller,
        credential: str,
        fetched: Fetched,
        tags: tuple[str, ...],
    ) -> Fetched:
        """``response.hold``: while the answer's value at ``hold.path`` is not one of
        ``hold.until`` (a ``Pending`` thumbnail), ask again every ``hold.every`` — past the
        cached not-yet answer — for at most ``hold.within``; then the answer as it stands."""
        clock, started = self.fetcher.clock, self.fetcher.clock()
        asked = ureq
        while not _settled(hold, fetched.entry) and (clock() - started + hold.every <= hold.within):
            if hold.operation is not None:
                poll = clean.operation_request(ureq, hold.operation, fetched.entry)
                if poll is None:
                    break  # no usable operation name: answered as it stands
                asked = poll
            if fetched.lease is not None:
                fetched.lease.release()  # this answer will not be written
            await self._sleep(hold.every)
            fetched = await self._fetch(asked, policy, caller, credential, clock(), tags)
        return fetched

    async def _clean_answer(
        self,
        route: Route,
        values: dict[str, Any],
        fetched: Fetched,
        instance: str,
        request_id: str,
    ) -> Answer:
        entry = fetched.entry
        if not 200 <= entry.status < 300:
            problem = clean.upstream_problem(route, entry.status, entry.body, entry.headers)
            return _problem(problem, fetched, instance, request_id, route.id)
        hold = route.hold
        if hold is not None and hold.operation is not None and not _settled(hold, entry):
            return _pending(route, hold, fetched)
        if route.redirect is not None:
            return _redirect(route, route.redirect, fetched, instance, request_id)
        requested = values.get(route.order_param) if route.order_param else None
        # How any entry of this key becomes this answer's body (the front door's fast path
        # from Redis renders with it too: see prepared.SharedFast).
        renderer = functools.partial(clean.render, route, requested)
        try:
            body, etag = self.fetcher.rendered(fetched, route.id, requested, renderer)
        except UpstreamError:
            # A 200 we cannot use (not JSON, unexpected shape) must not stay in the cache
            # for the route's whole TTL: drop it, so the next request asks Roblox again.
            if fetched.cached:
                await self.fetcher.purge_key(fetched.key)
            raise
        except HTTPProblem as problem:  # the route found nothing in it (require, empty)
            return _problem(problem, fetched, instance, request_id, route.id)
        return Answer(
            200,
            body,
            content_type=clean.JSON,
            etag=etag,
            fetched=fetched,
            route=route.id,
            renderer=renderer,
        )

    @staticmethod
    def _caller(request: web.Request, info: RequestInfo) -> Caller:
        """Who the upstream calls of this request are for (see ``Caller``), and how long
        they may wait for budget (``X-Bloxproxy-Max-Wait``; the limiter caps it)."""
        bound = request.headers.get(MAX_WAIT_HEADER)
        return Caller(
            info.request_id,
            info.client or f"ip:{request.remote or ''}",
            None if bound is None else max_wait_of(bound),
            weight=info.weight,
        )

    def cache_key_for(self, raw_path: str, query: MultiMapping[str]) -> str | None:
        """The cache key an anonymous GET of this URL uses (for purging one URL)."""
        if _CLEAN_PREFIX.match(raw_path):
            route, raw_params, _ = self.rules.router.match("GET", raw_path)
            if route is None:
                return None
            values = clean.values_of(route, raw_params, query)
            send = self._policies[route.id].send
            return decide.cache_key(clean.upstream_request(route, values, CIMultiDict()), send)
        service, _, rest = raw_path.lstrip("/").partition("/")
        if service not in self._allowed:
            return None
        qs = "&".join(f"{quote(k, safe='')}={quote(v, safe=',')}" for k, v in query.items())
        ureq = UpstreamRequest(service, "GET", passthrough.canonical_path("/" + rest), qs)
        return decide.cache_key(ureq)

    def route_prefix(self, route: Route) -> str:
        b = route.backend
        return decide.route_prefix(b.method, b.service, b.path.text)

    # -- passthrough -------------------------------------------------------------------

    async def _passthrough(
        self,
        request: web.Request,
        info: RequestInfo,
        credential: str,
        service: str,
        raw_path: str,
    ) -> Answer:
        if service not in self._allowed:
            raise passthrough.unknown_service(service, self._allowed)
        held = self._passthrough_key(request, info, service, raw_path)
        ureq = await passthrough.upstream_request(
            request,
            service,
            raw_path,
            max_body=self._max_body,
            drop=self._drop,
            drop_cacheable=self._drop_cacheable,
        )
        info.route = "passthrough:" + service
        if held is not None:
            ureq = passthrough.with_api_key(ureq, held.key)
            # private to the held key (an HMAC of it keys its entries), never shared
            credential = credential_of(CIMultiDict(ureq.headers))
        policy = self.policy_for(ureq)
        if policy.cacheable and ureq.method == "POST":
            ureq = passthrough.as_read(ureq)  # a documented read: cached like a GET
        if held is not None:  # the key owner's budget: its rule's operation, else the host's
            base = self._owner_buckets.get(policy.route_id) or service
            ureq = dataclasses.replace(ureq, bucket=owner_scope(base, held.owner_label))
        caller = self._caller(request, info)
        tags: tuple[str, ...] = ()
        if policy.tags:  # a rule's: filled from the upstream path the rule describes
            values = tagging.path_values(policy.backend_path, ureq.path)
            tags = tagging.render_tags(policy.tags, values)
        fetched = await self._fetch(ureq, policy, caller, credential, tags=tags)
        entry = fetched.entry
        return Answer(
            entry.status,
            entry.body,
            headers=entry.headers,
            etag=entry.etag if fetched.cached else "",
            fetched=fetched,
            route=info.route,
        )

    def _passthrough_key(
        self, request: web.Request, info: RequestInfo, service: str, raw_path: str
    ) -> HeldKey | None:
        """The held Open Cloud key a passthrough request goes out with (its client's
        ``opencloud_passthrough``: :func:`cloudkeys.passthrough_use` decides), or None; a
        method the client may not send it with is a 403 problem, before the body is read."""
        found = self._pass_held.get(info.key_name) if info.key_name else None
        if found is None:
            return None
        held, methods = found
        headers = request.headers
        own = any(v.strip() for name in _OWN for v in headers.getall(name, ()))
        path = passthrough.canonical_path(raw_path)
        use = cloudkeys.passthrough_use(methods, service, path, request.method, own)
        if use is PassUse.AS_IS:
            return None
        if use is PassUse.REFUSED:
            info.route = "passthrough:" + service
            allowed = sorted(methods)
            raise HTTPProblem(
                403,
                f"{request.method} is not sent to Open Cloud with the key the proxy holds for "
                f"this access key (it sends: {', '.join(allowed)}); send an x-api-key of your "
                "own for it",
                code="held_key_method",
                extra={"allowed_methods": allowed},
            )
        return held

    def policy_for(self, ureq: UpstreamRequest) -> Policy:
        """The policy of a passthrough request: its rule's when a rule describes the same
        upstream read (a GET, or a POST the rule marks ``safe_read``), else the passthrough
        default (which caches GETs only)."""
        default = self._pass_policies[ureq.safe_read]
        described = self._described.get(ureq.service)
        if described is None or ureq.method not in ("GET", "POST"):
            return default
        policy, _, _ = described.match(ureq.method, ureq.path)
        return policy if policy is not None else default

    async def _fetch(
        self,
        ureq: UpstreamRequest,
        policy: Policy,
        caller: Caller,
        credential: str,
        newer_than: float = 0.0,
        tags: tuple[str, ...] = (),
    ) -> Fetched:
        """The fetch of ``ureq``: from its ids' entries when it asks a batch endpoint a rule
        describes, else as one request; ``tags``: its entry's (the rule's ``cache.tags``)."""
        spec = self._batches.get((ureq.service, ureq.method, ureq.path))
        if spec is not None:
            return await self.fetcher.fetch_entities(
                ureq, spec, policy, caller, credential, newer_than, tags
            )
        return await self.fetcher.fetch(ureq, policy, caller, credential, newer_than, tags)


def _problem(
    problem: HTTPProblem, fetched: Fetched, instance: str, request_id: str, route_id: str
) -> Answer:
    """A problem answer that still says how the cache got it (``X-Cache``, ``Age``…). Its
    body names the request, so its ETag is weak: the entry's, not the bytes'."""
    body = problem_body(problem, instance=instance_of(instance), request_id=request_id)
    etag = f"W/{fetched.entry.etag}" if fetched.cached and fetched.entry.etag else ""
    return Answer(
        problem.status,
        body,
        headers=tuple(problem.headers.items()),
        content_type=PROBLEM_JSON,
        etag=etag,
        fetched=fetched,
        route=route_id,
    )


# A client's own Open Cloud credential: with either, a held key is never added.
_OWN = ("x-api-key", "authorization")


def owner_scope(base: str, owner: str) -> str:
    """The limiter scope of a route for one Open Cloud key owner: ``opencloud-user@group-7``
    (Roblox counts a key's requests against its owner, per operation); its seed is the
    base's (:meth:`bloxproxy.upstream.limiter.Limiter.seed`)."""
    return f"{base}@{owner}"


def owner_seeds(rules: RuleSet) -> dict[str, float]:
    """Where each route's per-owner scopes start: its ``limits.per_key_owner``."""
    return {r.owner_bucket: r.owner_limit.per_second for r in rules.routes if r.owner_limit}


def _settled(hold: Hold, entry: Entry) -> bool:
    """Is a held answer done: an error (nothing to wait for), its value in ``until``, or
    (an Open Cloud Operation) its ``done`` true."""
    if not 200 <= entry.status < 300:
        return True
    try:
        data = orjson.loads(entry.body)
    except orjson.JSONDecodeError:
        return True
    if hold.operation is not None:
        return not isinstance(data, dict) or data.get("done") is not False
    assert hold.path is not None
    return normalize.get_path(data, hold.path) in hold.until


def _kept_for_start(route: Route, fetched: Fetched) -> bool:
    """May a poll's answer stand for the request that started the operation: a success
    that is done (a 2xx whose ``done`` is not false; whether it was stored, and may be
    kept, is the fetcher's to say: ``Fetcher.keep_as``)."""
    entry = fetched.entry
    hold = route.hold
    return hold is not None and 200 <= entry.status < 300 and _settled(hold, entry)


def _pending(route: Route, hold: Hold, fetched: Fetched) -> Answer:
    """An Operation still running after ``hold.within``: 202, its name and when to ask
    again; never stored (the entry's ``when`` keeps a not-done Operation out of the cache)."""
    assert hold.operation is not None
    poll = clean.operation_request(UpstreamRequest("", "GET", ""), hold.operation, fetched.entry)
    name = poll.path.removeprefix(clean.OPERATION_PREFIX) if poll is not None else None
    retry = max(1, math.ceil(hold.every))
    body = orjson.dumps({"done": False, "operation": name, "retry_after": retry})
    return Answer(
        202,
        body,
        headers=(("Retry-After", str(retry)),),
        content_type=clean.JSON,
        etag="",
        fetched=fetched,
        route=route.id,
    )


def _redirect(
    route: Route, redirect: Redirect, fetched: Fetched, instance: str, request_id: str
) -> Answer:
    """``response.redirect``: a 302 to the URL in the upstream body (an image's CDN URL),
    with the cache headers of the entry it came from; no URL: the placeholder, or a 404
    problem naming the state (``Pending``: ask again in a moment)."""
    try:
        data = orjson.loads(fetched.entry.body)
    except orjson.JSONDecodeError:
        raise UpstreamError(
            502, f"{route.backend.service} answered with invalid JSON", code="upstream_bad_response"
        ) from None
    url = normalize.get_path(data, redirect.url)
    if not (isinstance(url, str) and url.startswith(("https://", "http://"))):
        if redirect.placeholder is not None:
            url = redirect.placeholder
        else:
            state = normalize.get_path(data, redirect.state) if redirect.state else None
            shown = state if isinstance(state, str) else None
            extra = {"state": shown} if shown else None
            headers = {"Retry-After": "2"} if shown == "Pending" else None
            detail = "no image for this request" + (f" (its state: {shown})" if shown else "")
            problem = HTTPProblem(404, detail, code="no_image", extra=extra, headers=headers)
            return _problem(problem, fetched, instance, request_id, route.id)
    return Answer(
        302,
        b"",
        headers=(("Location", url),),
        etag="",
        fetched=fetched,
        route=route.id,
    )
