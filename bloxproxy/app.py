"""The app factory shared by ``bloxproxy serve`` and the tests.

Resources have one owner each: the Redis clients are made here and closed in
``cleanup_ctx``, which also opens and closes the upstream session (with the retry/CSRF/guard
client middlewares) and the fetcher built on it. Routes: the reserved ``/_bloxproxy/``
prefix for the proxy's own endpoints, and one catch-all for the clean API and passthrough.
Time is injectable: ``clock`` (wall, cache ages), ``monotonic`` (pauses, breakers, client
buckets) and ``sleep`` (retry backoff), so tests move time instead of waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import HttpVersion11, web
from prometheus_client import Counter
from redis.asyncio.cluster import RedisCluster

from . import admin, docs_page, ops, status_page
from .appkeys import (
    ACCESS_LOG,
    AUTH_THROTTLE,
    CONFIG,
    CONNECTIONS,
    FETCHER,
    FRONT,
    GUARD,
    METRICS,
    PIPELINE,
    RULES,
    RUNTIME,
    UPSTREAM,
    Runtime,
)
from .authn import FailureThrottle
from .cache.cluster_batch import Collectors
from .cache.fetcher import Fetcher
from .cache.lease import Leases
from .cache.redis_store import RedisStore
from .cache.resp import ClusterGet, PipelinedGet
from .cache.shared import SharedCache
from .clients import ClientGate, client_ip
from .config import Config
from .connections import ConnectionStats
from .errors import HTTPProblem, not_found, problem_response
from .front import Front
from .observe import AccessLog, Metrics
from .pipeline import Pipeline, owner_seeds
from .ratelimit import RedisBuckets
from .redis_url import ClusterTopology, SentinelTopology, Single
from .redis_url import parse as parse_redis_url
from .redisconn import RedisClient, connect
from .requestids import REQUEST_ID_HEADER
from .rules import RuleSet, load_configured
from .upstream.client import Upstream, create_session
from .upstream.guard import Guard
from .upstream.inflight import ByteBudget, release_free_memory
from .upstream.shared import SharedBudgets

RESERVED_PREFIX = "/_bloxproxy/"


def create_app(
    config: Config,
    *,
    rules: RuleSet | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    background_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> web.Application:
    """Build the proxy app; ``rules`` defaults to loading ``config``'s rule paths. Time is
    injectable (see the module docstring); ``background_sleep`` is the wait of work no
    request waits for (re-polls), apart from ``sleep`` so that a test's clock moves only
    where it means to."""
    redis_cfg = config.cache.redis
    client = conns = None
    if redis_cfg.url:
        # One Redis, Sentinel or Cluster (redis_url); pub/sub on a client of its own.
        conns = connect(
            parse_redis_url(redis_cfg.url), redis_cfg.max_connections, redis_cfg.timeout
        )
        client = conns.client
    metrics = Metrics()
    access = None
    if config.logging.access_log:
        hops = config.limits.clients.forwarded_for_hops
        access = AccessLog(
            fmt=config.logging.format,
            fields=config.logging.access_fields,
            # the address the client limits use: behind trusted proxies, X-Forwarded-For's
            client=(lambda r: client_ip(r, hops)) if hops else (lambda r: r.remote or ""),
        )
    client_buckets = RedisBuckets(client, redis_cfg.prefix + "rl:client:") if client else None
    throttle = _failure_throttle(config, client, metrics, monotonic)
    # No aiohttp middlewares: the Front handler does their work (see front.py for why).
    front = Front(
        metrics=metrics,
        access=access,
        gate=ClientGate.build(
            config, client_buckets, monotonic, throttle, _roblox_id_counts(config, metrics)
        ),
        clock=clock,
        host_routing=bool(config.server.host_suffix),
    )
    front.configure(config)
    app = web.Application(client_max_size=config.server.max_body_size)
    app[CONFIG] = config
    app[AUTH_THROTTLE] = throttle
    app[RULES] = rules if rules is not None else load_configured(config)
    app[RUNTIME] = Runtime(clock, monotonic, sleep, client, conns, background_sleep)
    app[METRICS] = metrics
    app[CONNECTIONS] = connections = ConnectionStats()  # counted by serve's runner
    metrics.registry.register(connections)
    app[FRONT] = front
    if access is not None:
        app[ACCESS_LOG] = access
    app.cleanup_ctx.append(_pipeline)
    own = front.wrap  # the proxy's own endpoints: no access key, no client limit
    # healthz open; readyz's checks and metrics behind the access keys when they are on
    app.router.add_get(RESERVED_PREFIX + "healthz", own(ops.healthz, gated=False))
    app.router.add_get(RESERVED_PREFIX + "readyz", own(ops.readyz(app, keyed=True), gated=False))
    app.router.add_get(RESERVED_PREFIX + "metrics", own(ops.metrics(app, keyed=True), gated=False))
    app.router.add_post(RESERVED_PREFIX + "admin/purge", own(admin.purge, gated=False))
    docs_page.add_routes(app, own)  # /openapi.json, /docs (and under /_bloxproxy/)
    status_page.add_routes(app, own)  # /_bloxproxy/ and status.json, keyed when keys are on
    app.router.add_route("*", "/", own(_root, gated=True))  # gated, like the top-level /docs
    app.router.add_route("*", RESERVED_PREFIX + "{tail:[\\s\\S]*}", own(_reserved, gated=False))
    app.router.add_route("*", "/{tail:[\\s\\S]*}", front.handle, expect_handler=_expect)
    front.install(app)  # the fast hit path, ahead of routing
    return app


def _ignore(exc: BaseException) -> None:
    """A failure that needs no one's back-off (see ``_pipeline``)."""


def _roblox_id_counts(config: Config, metrics: Metrics) -> Callable[[str, str], None] | None:
    """Counts the ``Roblox-Id`` checks of access keys bound to places, by client name and
    outcome (bloxproxy/robloxid.py); None when no key is bound."""
    if not any(client.bound for client in config.auth.clients):
        return None
    checks = Counter(
        "bloxproxy_roblox_id",
        "Roblox-Id checks of access keys bound to places (auth.clients), by client and "
        "outcome: match, mismatch (another place), missing, malformed.",
        ["client", "outcome"],
        registry=metrics.registry,
    )
    return lambda client, outcome: checks.labels(client, outcome).inc()


def _failure_throttle(
    config: Config,
    client: RedisClient | None,
    metrics: Metrics,
    monotonic: Callable[[], float],
) -> FailureThrottle:
    """Failed authentication per client address, one budget for keys and the admin token
    (in Redis when configured: the replicas share it), counted in the metrics."""
    failures = Counter(
        "bloxproxy_auth_failures_total",
        "Failed authentication (a wrong or missing access key, a wrong admin token) by "
        "outcome: unauthorized (401) or throttled (429).",
        ["outcome"],
        registry=metrics.registry,
    )
    lim = config.limits.auth_failures
    buckets = RedisBuckets(client, config.cache.redis.prefix + "rl:auth:") if client else None
    return FailureThrottle(
        lim.rate, lim.burst, buckets, monotonic, lambda outcome: failures.labels(outcome).inc()
    )


async def _pipeline(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    rt = app[RUNTIME]
    redis_cfg = config.cache.redis
    budgets = None
    if rt.redis is not None and config.limits.upstream.shared:
        budgets = SharedBudgets(rt.redis, redis_cfg.prefix, config.upstream.egress_id)
    metrics = app[METRICS]
    guard = Guard(
        config,
        clock=rt.monotonic,
        wall=rt.clock,
        sleep=rt.sleep,
        shared=budgets,
        metrics=metrics,
    )
    metrics.bind_budgets(guard.limiter.rows)
    guard.limiter.seed(owner_seeds(app[RULES]))  # Open Cloud routes' limits per key owner
    session = create_session(config)
    upstream = Upstream(
        config,
        session,
        guard.middleware,
        next_slot_in=guard.limiter.next_slot_in,
        reserve=guard.reserve,
    )
    bodies = ByteBudget(config.upstream.max_inflight_bytes, on_idle=release_free_memory)
    fetcher = Fetcher(
        upstream,
        config,
        clock=rt.clock,
        bodies=bodies,
        sleep=rt.background_sleep,
    )
    shared = None
    getter: PipelinedGet | ClusterGet | None = None
    conns = rt.connections
    if rt.redis is not None and conns is not None and config.cache.enabled:
        # The L2 read on one pipelined connection (a fraction of redis-py's CPU per GET):
        # to the one Redis, to the Sentinels' primary (asked again at each reconnect), or
        # to each key's Cluster node; URLs with options only redis-py understands keep it
        # on redis-py.
        topology = conns.topology
        if isinstance(topology, Single) and PipelinedGet.supports(topology.url):
            getter = PipelinedGet(topology.url, redis_cfg.timeout)
        elif isinstance(topology, SentinelTopology):
            getter = PipelinedGet("redis://", redis_cfg.timeout, resolve=conns.primary)
        elif isinstance(topology, ClusterTopology) and isinstance(rt.redis, RedisCluster):
            # one pipelined connection per node, each key's GET to its slot's node
            getter = ClusterGet(rt.redis, redis_cfg.timeout, topology.username, topology.password)
        shared = SharedCache(
            RedisStore(rt.redis, redis_cfg.prefix, rt.clock, getter=getter),
            conns.pubsub,
            redis_cfg.prefix + "invalidate",
            fetcher.drop_l1,
            fetcher.apply_event,
            conns.publish,
        )
        fetcher.shared = shared
        # A lease's or a collector's failed command counts toward L2's back-off; on a
        # Cluster it is one node's, which the store backs off alone (its other nodes serve).
        failed = shared.note_failure if not isinstance(topology, ClusterTopology) else _ignore
        if redis_cfg.cluster_coalescing:
            # One call per cold key for all replicas; the word on the one subscription.
            leases = Leases(
                rt.redis,
                redis_cfg.prefix,
                redis_cfg.lease_ttl,
                min(redis_cfg.cluster_wait, config.cache.coalesce_timeout / 2),
                listening=shared.listening.is_set,
                usable=shared.usable,
                failed=failed,
            )
            leases.counts = metrics.coalescing
            shared.also_listen(leases.channel, leases.on_message, leases.on_lost)
            fetcher.leases = leases
            if redis_cfg.cluster_batches:
                fetcher.collectors = Collectors(
                    rt.redis,
                    redis_cfg.prefix,
                    max(1, round(redis_cfg.collect_for * 1000)),
                    max(1, round(redis_cfg.lease_ttl * 1000)),
                    # (no subscription, no word for a follower: alone then)
                    usable=lambda: shared.usable() and shared.listening.is_set(),
                    failed=failed,
                )
        shared.start()
    if conns is not None:
        conns.start()  # (Sentinel: follows a switchover whose old primary stays up)
    app[GUARD] = guard
    app[FETCHER] = fetcher
    pipeline = app[PIPELINE] = Pipeline(
        config, app[RULES], fetcher, sleep=rt.sleep, monotonic=rt.monotonic
    )
    front = app[FRONT]
    front.l1, front.shared, front.inner = fetcher.l1, shared, pipeline.handle
    front.encoded = fetcher.encoded
    fetcher.on_soft_purge.append(front.forget_all)  # remembered answers were fresh
    app[UPSTREAM] = upstream
    metrics.bind_l1(lambda: len(fetcher.l1), lambda: fetcher.l1.bytes_used)
    metrics.bind_inflight(lambda: bodies.used, lambda: bodies.peak)
    metrics.bind_batches(lambda: fetcher.batcher.sent, lambda: fetcher.waiting)
    access = app.get(ACCESS_LOG)
    if access is not None:
        access.start()
    try:
        yield
    finally:
        if access is not None:
            await access.stop()
        await fetcher.close()
        await guard.close()
        if shared is not None:
            await shared.stop()
        if getter is not None:
            await getter.aclose()
        if conns is not None:
            await conns.aclose()
        await session.close()


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` as aiohttp does it; any other expectation is a 417 problem
    (aiohttp's default answers it in plain text, before any handler of ours runs)."""
    expect = request.headers.get("Expect", "")
    if request.version == HttpVersion11:
        if expect.lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
            return None
        problem = HTTPProblem(
            417, "only 'Expect: 100-continue' is supported", code="expectation_failed"
        )
        rid = request.app[FRONT].request_id(request)
        resp = problem_response(problem, instance=request.rel_url.raw_path[:512], request_id=rid)
        resp.headers[REQUEST_ID_HEADER] = rid
        return resp
    return None


def apply_reload(app: web.Application, config: Config, rules: RuleSet) -> None:
    """Swap in a validated config and rule set (see :mod:`bloxproxy.serve`).

    ``app[CONFIG]`` stays the config the app started with; the live one is
    ``app[PIPELINE].config``."""
    app[PIPELINE].swap(config, rules)
    app[FRONT].forget_all()  # remembered answers were rendered by the old rules
    app[FRONT].configure(config)  # server.cors, server.compression, cache.tag_header
    app[FETCHER].tag_header = config.cache.tag_header
    app[GUARD].reload(config)
    app[GUARD].limiter.seed(owner_seeds(rules))
    app[UPSTREAM].reload(config)


async def _root(request: web.Request) -> web.StreamResponse:
    """``/`` is no route: say where the routes are (a browser pointed at the proxy lands here)."""
    raise not_found(
        "nothing is served at /: the clean API's routes are listed at /docs "
        "(OpenAPI document: /openapi.json); passthrough is /{service}/{path}, "
        "e.g. /users/v1/users/1",
        code="no_route",
    )


_RESERVED_METHODS = {
    RESERVED_PREFIX + "healthz": "GET, HEAD",
    RESERVED_PREFIX + "readyz": "GET, HEAD",
    RESERVED_PREFIX + "metrics": "GET, HEAD",
    RESERVED_PREFIX + "admin/purge": "POST",
    RESERVED_PREFIX: "GET, HEAD",
    RESERVED_PREFIX + "status.json": "GET, HEAD",
}


async def _reserved(request: web.Request) -> web.StreamResponse:
    allowed = _RESERVED_METHODS.get(request.rel_url.raw_path)
    if allowed is not None:
        raise HTTPProblem(
            405,
            f"{request.method} is not allowed here (allowed: {allowed})",
            headers={"Allow": allowed},
        )
    raise not_found(f"no proxy endpoint at {request.rel_url.raw_path}", code="no_route")
