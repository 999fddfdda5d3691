"""The proxy's operational endpoints — ``healthz``, ``readyz``, ``metrics`` — and the ops
listener.

On the main listener, with access keys on (``auth.keys``), the ops data sits behind them:

- ``/_bloxproxy/healthz`` stays open: an orchestrator's liveness probe sends no key, and
  "the process answers" tells nobody anything;
- ``/_bloxproxy/readyz`` answers its bare status (``{"status": "ok"}`` or ``"degraded"``,
  all a readiness probe needs) without a key, and its checks with one; a *wrong* key is a
  401 and a failed attempt for the throttle (else readyz would tell right keys from wrong
  ones at full speed);
- ``/_bloxproxy/metrics`` needs a key.

The key goes in ``auth.header``, or as ``Authorization: Bearer <key>`` (what Prometheus's
``authorization`` scrape setting sends; on these endpoints ``Authorization`` is not
Roblox's). The ops listener (``server.ops_port`` on ``server.ops_host``, see
:func:`bloxproxy.serve.start_ops_runner`) serves the three without keys and nothing else,
for a scraper or probes on a private address.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from .appkeys import CONFIG, FRONT, GUARD, METRICS, PIPELINE, RUNTIME, SIBLINGS
from .authn import bearer
from .errors import not_found
from .metricsview import View
from .siblings import merged

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PREFIX = "/_bloxproxy/"
OPS_MAX_CONNECTIONS = 64  # the ops listener's own cap: probes and scrapers are few


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"status": "ok"})


def readyz(main: web.Application, *, keyed: bool) -> Handler:
    """Ready: config and rules loaded; Redis reachable when configured. Without Redis the
    proxy still serves (L1 and upstream), so that is "degraded" (200), not "down". The
    details add each upstream scope's learned budget (``budgets``)."""

    async def handler(request: web.Request) -> web.Response:
        details = await _key(main, request, required=False) if keyed else True
        status, checks = await _readiness(main)
        body: dict[str, object] = {"status": status}
        if details:
            body["checks"] = checks
            body["budgets"] = _budgets(main)
        return web.json_response(body)

    return handler


def metrics(main: web.Application, *, keyed: bool) -> Handler:
    """Prometheus text format: this process's metrics, or with ``serve --workers N`` every
    worker's merged into one view (:mod:`bloxproxy.siblings`, :mod:`bloxproxy.metricsview`)."""

    async def handler(request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if keyed:
            await _key(main, request, required=True)
        registry = main[METRICS].registry
        siblings = main.get(SIBLINGS)
        if siblings is not None:
            shared = main[RUNTIME].redis is not None and main[CONFIG].limits.upstream.shared
            view = CollectorRegistry(auto_describe=False)
            view.register(View(await merged(siblings, registry, shared_budgets=shared)))
            registry = view
        resp = web.Response(body=generate_latest(registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    return handler


async def _key(main: web.Application, request: web.Request, *, required: bool) -> bool:
    """Did ``request`` bring a valid access key (always, when keys are off)? Raises a 401
    problem for a wrong one, or a missing one when ``required`` (429 past the throttle)."""
    gate = main[FRONT].gate
    if gate is None or not gate.keyed:
        return True
    given = request.headers.get(gate.header) or bearer(request.headers.get("Authorization", ""))
    if not given and not required:
        return False
    await gate.authenticate(request, given)
    return True


async def _readiness(main: web.Application) -> tuple[str, dict[str, str]]:
    checks = {"config": "ok", "rules": f"{len(main[PIPELINE].rules.routes)} routes"}
    status = "ok"
    redis = main[RUNTIME].redis
    if redis is not None:
        try:
            async with asyncio.timeout(1.0):
                await redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:  # any failure here means "not reachable right now"
            checks["redis"] = f"unreachable ({type(exc).__name__})"
            status = "degraded"
    return status, checks


def _budgets(main: web.Application) -> dict[str, dict[str, float]]:
    """Each upstream scope's budget: the learned rate, the configured one, Roblox's own
    limit when it sent one, the hold left and the line."""
    guard = main.get(GUARD)
    if guard is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    for row in guard.limiter.rows():
        entry = {"rate": round(row.rate, 3), "ceiling": row.ceiling}
        if row.limit:
            entry["limit"] = round(row.limit, 3)
        if row.hold:
            entry["hold_seconds"] = round(row.hold, 3)
        entry["waiting"] = row.waiting
        out[row.scope] = entry
    return out


def create_ops_app(main: web.Application) -> web.Application:
    """The ops listener's app: the three endpoints of ``main``, without keys, and a 404
    problem for everything else. Requests go through ``main``'s front handler (request
    ids, errors as problems, metrics and the access line)."""
    own = main[FRONT].wrap
    ops = web.Application()
    ops.router.add_get(PREFIX + "healthz", own(healthz, gated=False))
    ops.router.add_get(PREFIX + "readyz", own(readyz(main, keyed=False), gated=False))
    ops.router.add_get(PREFIX + "metrics", own(metrics(main, keyed=False), gated=False))

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        raise not_found(
            "the ops listener serves only /_bloxproxy/healthz, readyz and metrics",
            code="no_route",
        )

    ops.router.add_route("*", "/{tail:[\\s\\S]*}", own(elsewhere, gated=False))
    return ops
