"""Observability: Prometheus metrics, one access-log line per request, Server-Timing.

The front door (:mod:`bloxproxy.front`) keeps a :class:`RequestInfo` per request — the
pipeline names the route in it, the front door copies the cache result and upstream time
from the answer — and once the answer is ready it adds ``Server-Timing``, counts the
request, and writes the access line. All of it is cheap on
purpose — a cache hit costs a few tens of µs in all, so every microsecond here shows
(docs/PERFORMANCE.md: aiohttp's default access logger cut throughput by 60 %): the counts of every
request and every upstream attempt are plain rows turned into metric families only at
scrape time (:class:`RequestCollector`, :class:`UpstreamCollector`), and access lines are
formatted by hand into a buffer flushed a few times a second, never through
:mod:`logging` per request. Nothing secret is logged: no query strings, no headers but the
``User-Agent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import sys
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Protocol

import orjson
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .config import ACCESS_FIELDS
from .metricsview import WORKERS_DOC

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
CACHE_RESULTS = ("HIT", "MISS", "STALE", "BYPASS", "COALESCED")


class RequestInfo:
    """What the front door learns about one request, for metrics and the access log."""

    __slots__ = (
        "cache",
        "cache_time",
        "client",
        "key_name",
        "luau",
        "request_id",
        "route",
        "upstream",
        "weight",
    )

    def __init__(self, request_id: str = "") -> None:
        self.request_id = request_id
        # Who the client is, for its share of the upstream budget: ``key:<hash>`` of its
        # access key or ``ip:<address>`` when the client gate knows; "" else (the peer's).
        self.client = ""
        self.weight = 1.0  # that share's weight (a named access key's ``weight``)
        self.key_name = ""  # the named access key's name (auth.clients), "" for any other
        self.luau = False  # answers in the Luau envelope (``answer_mode: luau``, luau.py)
        self.route = "none"  # route id, "passthrough:<service>", or "none"
        self.cache = ""  # X-Cache result when the pipeline got that far
        self.cache_time = 0.0  # seconds spent looking in L1/L2
        self.upstream = 0.0  # seconds spent on the upstream call(s) this answer needed


class Metrics:
    """The proxy's Prometheus metrics, on a registry of its own (one per app)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created: scrape noise
        r = self.registry = registry or CollectorRegistry(auto_describe=True)
        # Client requests are counted in plain dicts and turned into metric families at
        # scrape time (RequestCollector): ~0.3 µs a request instead of ~2 µs for three
        # prometheus_client children.
        self._requests: dict[tuple[str, int, str], list[float]] = {}
        r.register(RequestCollector(self._requests))
        # The upstream attempt counts and latencies are plain rows too (UpstreamCollector),
        # handed out per service to the guard, which adds to them on every attempt.
        self._attempts: dict[tuple[str, str], list[float]] = {}
        self._upstream_latency: dict[str, list[float]] = {}
        self._limiter_waits: dict[str, list[float]] = {}
        r.register(UpstreamCollector(self._attempts, self._upstream_latency, self._limiter_waits))
        # Each scope's learned budget, read from the limiter at scrape time (bind_budgets).
        self._budgets: Callable[[], Sequence[BudgetRowLike]] = list
        r.register(BudgetCollector(lambda: self._budgets()))
        # The micro-batcher's batches per endpoint, read at scrape time (bind_batches).
        self._batches: Callable[[], Mapping[str, Sequence[int]]] = dict
        r.register(BatchCollector(lambda: self._batches()))
        self.coalesce_waiting = Gauge(
            "bloxproxy_coalesce_waiting",
            "Client requests waiting for an identical request's upstream call.",
            registry=r,
        )
        # Cluster coalescing's outcomes per key (or entity), counted by cache.lease.Leases.
        self.coalescing: dict[str, float] = {}
        r.register(CoalescingCollector(self.coalescing))
        self.retries = Counter(
            "bloxproxy_upstream_retries_total", "Upstream retries.", ["service"], registry=r
        )
        self.limiter_rejections = Counter(
            "bloxproxy_limiter_rejections_total",
            "Requests refused by the upstream limiter.",
            ["service"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "bloxproxy_breaker_state",
            "Circuit state per service: 0 closed, 1 half-open, 2 open.",
            ["service"],
            registry=r,
        )
        self.l1_entries = Gauge(
            "bloxproxy_cache_l1_entries", "Entries in the L1 cache.", registry=r
        )
        self.l1_bytes = Gauge(
            "bloxproxy_cache_l1_bytes", "Approximate bytes held by L1.", registry=r
        )
        self.inflight_bytes = Gauge(
            "bloxproxy_upstream_inflight_bytes",
            "Bytes of upstream bodies being read now (bounded by upstream.max_inflight_bytes).",
            registry=r,
        )
        self.inflight_peak = Gauge(
            "bloxproxy_upstream_inflight_bytes_peak",
            "The most bytes of upstream bodies ever being read at once.",
            registry=r,
        )
        self.tasks = Gauge(
            "bloxproxy_asyncio_tasks",
            "asyncio tasks alive in this process (a steady climb is a task leak).",
            registry=r,
        )
        self.tasks.set_function(lambda: len(asyncio.all_tasks()))
        self.compressions = Counter(
            "bloxproxy_compressions_total",
            "Answer bodies compressed, by encoding (a cached answer's once per entry version "
            "and encoding).",
            ["encoding"],
            registry=r,
        )
        self.reloads = Counter(
            "bloxproxy_reloads_total", "Config/rule reloads by result.", ["result"], registry=r
        )
        # One process: itself. With --workers N, the merged view (metricsview.merge) counts
        # the workers that answered the scrape instead.
        self.workers = Gauge("bloxproxy_workers", WORKERS_DOC, ["state"], registry=r)
        self.workers.labels("answered").set(1)
        self.workers.labels("missing").set(0)

    def observe_request(self, route: str, status: int, cache: str, seconds: float) -> None:
        row = self._requests.get((route, status, cache))
        if row is None:
            row = self._requests[(route, status, cache)] = _histogram_row()
        observe_into(row, seconds)

    def request_counts(self) -> list[tuple[str, int, str, float, float]]:
        """Every (route, status, cache result) row: answers counted, seconds in all."""
        return [(*key, row[0], row[1]) for key, row in list(self._requests.items())]

    def attempt_counts(self) -> dict[tuple[str, str], float]:
        """Upstream attempts by (service, status or ``"error"`` or a refusal's reason)."""
        return {key: row[0] for key, row in list(self._attempts.items())}

    def attempts(self, service: str, status: int | str) -> list[float]:
        """The row counting ``service``'s upstream attempts that ended in ``status`` (or
        ``"error"``, or a refusal's reason): add to its first item."""
        key = (service, str(status))
        row = self._attempts.get(key)
        if row is None:
            row = self._attempts[key] = [0.0]
        return row

    def upstream_latency(self, service: str) -> list[float]:
        """``service``'s histogram row of attempt latencies, for :func:`observe_into`."""
        return self._upstream_latency.setdefault(service, _histogram_row())

    def limiter_waits(self, service: str) -> list[float]:
        """``service``'s histogram row of limiter waits, for :func:`observe_into`."""
        return self._limiter_waits.setdefault(service, _histogram_row())

    def bind_l1(self, entries: Callable[[], float], nbytes: Callable[[], float]) -> None:
        """Read L1 size at scrape time (no per-request cost)."""
        self.l1_entries.set_function(entries)
        self.l1_bytes.set_function(nbytes)

    def bind_inflight(self, used: Callable[[], float], peak: Callable[[], float]) -> None:
        """Read the upstream body budget at scrape time."""
        self.inflight_bytes.set_function(used)
        self.inflight_peak.set_function(peak)

    def bind_budgets(self, rows: Callable[[], Sequence[BudgetRowLike]]) -> None:
        """Read the upstream budgets (``Limiter.rows``) at scrape time."""
        self._budgets = rows

    def bind_batches(
        self, sent: Callable[[], Mapping[str, Sequence[int]]], waiting: Callable[[], float]
    ) -> None:
        """Read the micro-batcher's counts (``Batcher.sent``) and the coalesced waiters at
        scrape time."""
        self._batches = sent
        self.coalesce_waiting.set_function(waiting)


_BOUNDS = LATENCY_BUCKETS


def _histogram_row() -> list[float]:
    """[count, sum of seconds, count per latency bucket (the last one: above them all)]."""
    return [0.0] * (2 + len(_BOUNDS) + 1)


def observe_into(row: list[float], seconds: float) -> None:
    """One observation in a histogram row (what ``Histogram.observe`` does, ~0.3 µs)."""
    row[0] += 1
    row[1] += seconds
    row[2 + bisect_left(_BOUNDS, seconds)] += 1


def _buckets(row: list[float]) -> list[tuple[str, float]]:
    """A histogram row's cumulative buckets, as ``HistogramMetricFamily`` takes them."""
    cumulative, buckets = 0.0, []
    for bound, n in zip((*_BOUNDS, float("inf")), row[2:], strict=True):
        cumulative += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return buckets


class RequestCollector(Collector):
    """``bloxproxy_requests_total{route,status}``, ``bloxproxy_cache_results_total{route,
    result}`` and ``bloxproxy_request_duration_seconds{route}``, from the plain counts."""

    def __init__(self, rows: dict[tuple[str, int, str], list[float]]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "bloxproxy_requests", "Client requests answered.", labels=["route", "status"]
        )
        cache = CounterMetricFamily(
            "bloxproxy_cache_results", "Cache results by route.", labels=["route", "result"]
        )
        latency = HistogramMetricFamily(
            "bloxproxy_request_duration_seconds", "Client-facing latency.", labels=["route"]
        )
        by_status: dict[tuple[str, str], float] = {}
        by_cache: dict[tuple[str, str], float] = {}
        by_route: dict[str, list[float]] = {}
        for (route, status, result), row in list(self._rows.items()):
            key = (route, str(status))
            by_status[key] = by_status.get(key, 0.0) + row[0]
            if result:
                by_cache[(route, result)] = by_cache.get((route, result), 0.0) + row[0]
            acc = by_route.setdefault(route, [0.0] * len(row))
            for i, value in enumerate(row):
                acc[i] += value
        for labels, value in sorted(by_status.items()):
            requests.add_metric(list(labels), value)
        for labels, value in sorted(by_cache.items()):
            cache.add_metric(list(labels), value)
        for route, acc in sorted(by_route.items()):
            latency.add_metric([route], _buckets(acc), sum_value=acc[1])
        yield requests
        yield cache
        yield latency


class UpstreamCollector(Collector):
    """``bloxproxy_upstream_requests_total{service,status}``,
    ``bloxproxy_upstream_duration_seconds{service}`` and
    ``bloxproxy_limiter_wait_seconds{service}``, from the guard's plain rows."""

    def __init__(
        self,
        attempts: dict[tuple[str, str], list[float]],
        latency: dict[str, list[float]],
        waits: dict[str, list[float]],
    ) -> None:
        self._attempts, self._latency, self._waits = attempts, latency, waits

    def collect(self) -> Iterator[Metric]:
        attempts = CounterMetricFamily(
            "bloxproxy_upstream_requests",
            "Upstream attempts by service and status (or 'error').",
            labels=["service", "status"],
        )
        for labels, row in sorted(list(self._attempts.items())):
            attempts.add_metric(list(labels), row[0])
        yield attempts
        for name, doc, rows in (
            (
                "bloxproxy_upstream_duration_seconds",
                "Latency of one upstream attempt.",
                self._latency,
            ),
            (
                "bloxproxy_limiter_wait_seconds",
                "Time spent waiting for the upstream limiter.",
                self._waits,
            ),
        ):
            family = HistogramMetricFamily(name, doc, labels=["service"])
            for service, row in sorted(list(rows.items())):
                family.add_metric([service], _buckets(row), sum_value=row[1])
            yield family


class BudgetRowLike(Protocol):
    """One scope's upstream budget (``bloxproxy.upstream.limiter.BudgetRow``)."""

    @property
    def scope(self) -> str: ...
    @property
    def rate(self) -> float: ...
    @property
    def ceiling(self) -> float: ...
    @property
    def limit(self) -> float: ...
    @property
    def hold(self) -> float: ...
    @property
    def slots(self) -> int: ...
    @property
    def waiting(self) -> int: ...
    @property
    def waits(self) -> int: ...
    @property
    def refusals(self) -> int: ...


_BUDGET_GAUGES = (
    ("rate", "rate", "The learned upstream rate of a scope, requests/s."),
    (
        "ceiling",
        "ceiling",
        "The configured upstream rate of a scope (where learning starts "
        "and the most it grows to), requests/s.",
    ),
    (
        "limit",
        "limit",
        "Roblox's own limit for a scope (the tightest x-ratelimit-limit "
        "window), requests/s; 0 when it sent none.",
    ),
    (
        "hold_seconds",
        "hold",
        "Seconds left of a scope's hold (after a 429's Retry-After, "
        "repeated 429s or x-ratelimit-remaining: 0).",
    ),
    ("waiting", "waiting", "Requests waiting in line for a slot of a scope now."),
)
_BUDGET_COUNTERS = (
    ("slots", "slots", "Slots of a scope's budget given (upstream attempts admitted)."),
    ("waits", "waits", "Requests that waited in line for a slot of a scope."),
    (
        "refusals",
        "refusals",
        "Requests refused (503 or stale) for want of a slot of a scope within their deadline.",
    ),
)


class CoalescingCollector(Collector):
    """``bloxproxy_cluster_coalescing_total{outcome}`` from its plain counts."""

    def __init__(self, counts: dict[str, float]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "bloxproxy_cluster_coalescing",
            "Cold keys (a batch: entities) with Redis's cluster coalescing, by what this "
            "replica did: led (asked for all), took_over (from a leader gone or dead), waited "
            "(got another replica's entry), stale (served one meanwhile), fallback (asked "
            "itself: the wait's deadline, or the leader stored nothing), local (Redis down).",
            labels=["outcome"],
        )
        for outcome, n in sorted(list(self._counts.items())):
            family.add_metric([outcome], n)
        yield family


class BudgetCollector(Collector):
    """``bloxproxy_upstream_budget_*{scope}``: each scope's learned budget, its line and
    what it gave, read from the limiter's plain counters at scrape time."""

    def __init__(self, rows: Callable[[], Sequence[BudgetRowLike]]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        rows = self._rows()
        for name, attr, doc in _BUDGET_GAUGES:
            gauge = GaugeMetricFamily(f"bloxproxy_upstream_budget_{name}", doc, labels=["scope"])
            for row in rows:
                gauge.add_metric([row.scope], getattr(row, attr))
            yield gauge
        for name, attr, doc in _BUDGET_COUNTERS:
            counter = CounterMetricFamily(
                f"bloxproxy_upstream_budget_{name}", doc, labels=["scope"]
            )
            for row in rows:
                counter.add_metric([row.scope], getattr(row, attr))
            yield counter


class BatchCollector(Collector):
    """``bloxproxy_batch_{calls,ids,capacity}_total{endpoint}``: the micro-batcher's upstream
    batch calls per batch endpoint, the ids they carried and the ids they could have carried
    (their caps): ``ids / capacity`` is the fill ratio, ``ids / calls`` the ids per call."""

    def __init__(self, sent: Callable[[], Mapping[str, Sequence[int]]]) -> None:
        self._sent = sent

    def collect(self) -> Iterator[Metric]:
        sent = self._sent()
        for i, (name, doc) in enumerate(_BATCH_COUNTERS):
            counter = CounterMetricFamily(f"bloxproxy_batch_{name}", doc, labels=["endpoint"])
            for endpoint, row in sorted(sent.items()):
                counter.add_metric([endpoint], row[i])
            yield counter


_BATCH_COUNTERS = (
    ("calls", "Upstream batch calls made by the micro-batcher."),
    ("ids", "Ids carried by the micro-batcher's upstream batch calls."),
    ("capacity", "Ids the micro-batcher's batch calls could have carried (their caps)."),
)


# The access line's fields (``logging.access_fields`` picks and orders them), each as a
# %-format fragment of a JSON line and of a text line. ``write`` computes the values in
# ACCESS_FIELDS order; a template built once from the chosen fields formats them (%-format:
# about half the cost of str.format, and no per-request work for the choice itself).
_ACCESS_JSON = {
    "time": '"time":"%s"',
    "request_id": '"request_id":"%s"',
    "client": '"client":%s',
    "method": '"method":"%s"',
    "path": '"path":%s',
    "route": '"route":"%s"',
    "status": '"status":%d',
    "bytes": '"bytes":%s',
    "cache": '"cache":"%s"',
    "upstream_ms": '"upstream_ms":%.2f',
    "total_ms": '"total_ms":%.2f',
    "user_agent": '"user_agent":%s',
}
_ACCESS_TEXT = {
    "time": "%s",
    "request_id": "%s",
    "client": "%s",
    "method": "%s",
    "path": "%s",
    "route": "%s",
    "status": "%d",
    "bytes": "%s",
    "cache": "%s",
    "upstream_ms": "%.1fms",
    "total_ms": "%.1fms",
    "user_agent": "%s",
}
USER_AGENT_MAX = 256  # characters of User-Agent kept in the access line
_ADDRESS_MAX = 64  # characters of a client address that is not a bare address
_SEEN_MAX = 1024  # client-sent values remembered in their shown form
_PLAIN_ADDRESS = frozenset("0123456789abcdefABCDEF.:")


def _peer(request: web.Request) -> str:
    return request.remote or ""


def body_bytes(request: web.BaseRequest, resp: web.StreamResponse) -> int | None:
    """The body bytes an answer sends: none for HEAD, 1xx, 204 and 304; None when not known
    before it is sent (a streamed body)."""
    status = resp.status
    if request.method == "HEAD" or status < 200 or status in (204, 304):
        return 0
    return resp.content_length


class AccessLog:
    """JSON (or text) access lines, buffered and flushed every ``interval`` seconds.

    ``fields`` chooses the line's fields and their order (``logging.access_fields``); the
    line's template is built from them once, here. A JSON line also says ``"type":"access"``
    (after ``time`` when that comes first). Values that come from the client — the path (kept
    percent-encoded), the client address from ``X-Forwarded-For`` and the ``User-Agent``
    (cut to ``USER_AGENT_MAX`` characters, invalid UTF-8 replaced) — are JSON strings, escaped,
    in both formats (in text: quoted when they are not plain, ``-`` when absent); the request
    id, method, route and cache result come from closed character sets.
    """

    def __init__(
        self,
        stream: IO[bytes] | None = None,
        fmt: str = "json",
        interval: float = 0.2,
        max_buffer: int = 1 << 16,
        fields: Sequence[str] = ACCESS_FIELDS,
        client: Callable[[web.Request], str] = _peer,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr.buffer
        self._json = fmt == "json"
        unknown = set(fields) - set(ACCESS_FIELDS)
        if unknown or not fields:
            raise ValueError(f"access log fields: {sorted(unknown) or 'none'}")
        if self._json:
            parts = [_ACCESS_JSON[f] for f in fields]
            parts.insert(1 if fields[0] == "time" else 0, '"type":"access"')
            self._template = "{" + ",".join(parts) + "}\n"
        else:
            self._template = " ".join(_ACCESS_TEXT[f] for f in fields) + "\n"
        order = [ACCESS_FIELDS.index(f) for f in fields]
        # the values of the chosen fields, in their order, from all of them in ACCESS_FIELDS's
        self._pick: Callable[[tuple[object, ...]], tuple[object, ...]] | None = None
        if len(order) == 1:
            self._pick = lambda values, i=order[0]: (values[i],)
        elif order != list(range(len(ACCESS_FIELDS))):
            self._pick = operator.itemgetter(*order)
        self._want_client = "client" in fields
        self._want_agent = "user_agent" in fields
        self._client = client
        self._clients: dict[str, str] = {}  # shown forms of recent addresses, user agents
        self._agents: dict[str, str] = {}
        self._second = -1
        self._stamp = ""
        self._buf: list[bytes] = []
        self._size = 0
        self._interval = interval
        self._max = max_buffer
        self._task: asyncio.Task[None] | None = None

    def write(
        self,
        rid: str,
        method: str,
        path: str,
        route: str,
        status: int,
        cache: str,
        upstream: float,
        total: float,
        request: web.Request | None = None,
        nbytes: int | None = None,
    ) -> None:
        now = time.time()
        if int(now) != self._second:  # the date part changes once a second
            self._second = int(now)
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        stamp = f"{self._stamp}.{int(now * 1000) % 1000:03d}Z"
        client = agent = "null" if self._json else "-"
        if request is not None:
            if self._want_client:
                address = self._client(request)
                if address:
                    client = self._shown(self._clients, address, _ADDRESS_MAX, not self._json)
            if self._want_agent:
                ua = request.headers.get("User-Agent")
                if ua is not None:
                    agent = self._shown(self._agents, ua, USER_AGENT_MAX)
        if self._json:
            values: tuple[object, ...] = (
                stamp,
                rid,
                client,
                method,
                orjson.dumps(path).decode(),
                route,
                status,
                "null" if nbytes is None else nbytes,
                cache,
                upstream * 1000,
                total * 1000,
                agent,
            )
        else:
            values = (
                stamp,
                rid,
                client,
                method,
                path,
                route,
                status,
                "-" if nbytes is None else nbytes,
                cache or "-",
                upstream * 1000,
                total * 1000,
                agent,
            )
        line = self._template % (values if self._pick is None else self._pick(values))
        data = line.encode()
        self._buf.append(data)
        self._size += len(data)
        if self._size >= self._max:
            self.flush()

    @staticmethod
    def _shown(seen: dict[str, str], text: str, limit: int, plain: bool = False) -> str:
        """A client-sent value as the line shows it: a JSON string (cut to ``limit``, valid
        UTF-8), or as is with ``plain`` when it is a bare address. Remembered: clients send
        the same few user agents and addresses again and again."""
        shown = seen.get(text)
        if shown is None:
            if plain and _PLAIN_ADDRESS.issuperset(text):
                shown = text
            else:
                cut = text[:limit]
                if not cut.isascii():  # aiohttp keeps undecodable bytes as surrogates
                    try:
                        raw = cut.encode("utf-8", "surrogateescape")
                    except UnicodeEncodeError:  # a surrogate that stands for no byte
                        raw = cut.encode("utf-8", "replace")
                    cut = raw.decode("utf-8", "replace")
                shown = orjson.dumps(cut).decode()
            if len(seen) >= _SEEN_MAX:
                seen.clear()
            seen[text] = shown
        return shown

    def flush(self) -> None:
        if self._buf:
            data = b"".join(self._buf)
            self._buf.clear()
            self._size = 0
            with contextlib.suppress(OSError, ValueError):
                self._stream.write(data)
                self._stream.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.flush()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bloxproxy-access-log")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()
