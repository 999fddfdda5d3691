"""Configuration: frozen dataclasses loaded by one :func:`load`.

Every key has a default (the embedded defaults run the proxy with no file at all), unknown
keys are errors, durations are strings like ``"30s"``, sizes like ``"64MiB"``. Environment
variables override file values: ``BLOXPROXY_<SECTION>_<KEY>`` in upper case, nested keys
joined with ``_`` (``BLOXPROXY_UPSTREAM_BASE_URL``, ``BLOXPROXY_CACHE_REDIS_URL``). Values
from the environment are read as YAML scalars or flow collections (``8080``, ``true``,
``"[users, games]"``, ``"{apis: http://127.0.0.1:9000/apis}"``) except for string keys,
which take the text verbatim. ``${VAR}`` inside YAML values reads the environment too.

Each field's ``doc`` metadata is the config reference; ``docs/CONFIG.md`` is generated from
it (``python -m bloxproxy.config``) and a test keeps the two in step.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import cloudkeys, keyconfig, schema
from .cloudkeys import HeldKey
from .errors import ConfigError, Problem, Where
from .keyconfig import NamedClient
from .redis_url import cluster_url_of
from .redis_url import parse as parse_redis_url
from .yamlsrc import MarkedDict, load_file

ENV_PREFIX = "BLOXPROXY_"

# Roblox's public web API hosts (``{service}.roblox.com``) that passthrough may reach.
DEFAULT_SERVICES = (
    "accountinformation",
    "accountsettings",
    "apis",
    "assetdelivery",
    "auth",
    "avatar",
    "badges",
    "catalog",
    "chat",
    "clientsettings",
    "contacts",
    "develop",
    "economy",
    "engagementpayouts",
    "followings",
    "friends",
    "gameinternationalization",
    "games",
    "groups",
    "inventory",
    "itemconfiguration",
    "locale",
    "localizationtables",
    "notifications",
    "points",
    "premiumfeatures",
    "presence",
    "privatemessages",
    "publish",
    "thumbnails",
    "trades",
    "translationroles",
    "twostepverification",
    "users",
)

SERVICE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def opt(default: Any, reader: Callable[[object], Any], doc: str) -> Any:
    """A config key: its default (written the way a user writes it, ``"10s"``), how to read
    it, and its reference text."""

    def factory() -> Any:
        return reader(default) if isinstance(default, str) else copy.copy(default)

    return field(
        default_factory=factory, metadata={"reader": reader, "doc": doc, "default": default}
    )


def section(cls: type, doc: str) -> Any:
    return field(default_factory=cls, metadata={"section": cls, "doc": doc})


def _base_url(value: object) -> str:
    text = schema.string(value)
    if "{service}" not in text:
        # Without it every service would go to one URL: /users/v1/x and /games/v1/x alike.
        raise ValueError(f"expected an http(s) URL template with {{service}}, got {text!r}")
    if not text.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    return text.rstrip("/")


def _service_urls(value: object) -> dict[str, str]:
    urls = schema.string_map(value)
    for name, url in urls.items():
        if not SERVICE_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a service name (lower-case letters, digits, -)")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{name}: expected an http:// or https:// URL, got {url!r}")
    return {k: v.rstrip("/") for k, v in urls.items()}


def _services(value: object) -> tuple[str, ...]:
    names = schema.string_list(value)
    for name in names:
        if not SERVICE_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a service name (lower-case letters, digits, -)")
    return names


def _host_suffix(value: object) -> str:
    text = schema.string(value).strip().lower().strip(".")
    if text and not re.match(r"^[a-z0-9.-]+$", text):
        raise ValueError(f"expected a DNS suffix like 'roblox.proxy.internal', got {text!r}")
    return text


_ORIGIN_RE = re.compile(r"^[a-z][a-z0-9+.-]*://[a-z0-9.\[\]:-]+$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # RFC 9110 token (methods, names)


def _origins(value: object) -> tuple[str, ...]:
    out = []
    for text in schema.string_list(value):
        origin = text.strip().lower().rstrip("/")
        if origin != "*" and not _ORIGIN_RE.match(origin):
            raise ValueError(
                f"expected '*' or an origin like 'https://dash.example.com' (scheme, host, "
                f"optional port; no path), got {text!r}"
            )
        out.append(origin)
    return tuple(out)


def _methods(value: object) -> tuple[str, ...]:
    names = tuple(m.upper() for m in schema.string_list(value))
    for name in names:
        if not _TOKEN_RE.match(name):
            raise ValueError(f"expected HTTP method names, got {name!r}")
    return names


def _redis_url(value: object) -> str:
    """``cache.redis.url``: "" (off), a URL :func:`redis_url.parse` reads, or a list of
    cluster nodes (made the ``redis+cluster://`` URL)."""
    if isinstance(value, list):
        return cluster_url_of(value)
    text = schema.string(value).strip()
    if text:
        parse_redis_url(text)
    return text


def _tag_header(value: object) -> str:
    """``cache.tag_header``: a header name, or "" (off)."""
    text = schema.string(value)
    if text and not _TOKEN_RE.match(text):
        raise ValueError(f"expected a header name like Surrogate-Key (or empty), got {text!r}")
    return text


def _header_names(value: object) -> tuple[str, ...]:
    names = schema.string_list(value)
    for name in names:
        if not _TOKEN_RE.match(name):
            raise ValueError(f"expected header names, got {name!r}")
    return names


@dataclass(frozen=True, slots=True)
class CorsConfig:
    enabled: bool = opt(
        False,
        schema.boolean,
        "Answer browsers' CORS requests (README, Browser clients). `false`: no CORS headers, "
        "and an `OPTIONS` request is handled as before (a 405 problem on a clean route).",
    )
    origins: tuple[str, ...] = opt(
        (),
        _origins,
        "Origins whose pages may call the proxy, e.g. `[https://dash.example.com]` (scheme, "
        "host, optional port, compared case-insensitively); `*`: any origin (not with "
        "`allow_credentials`). None: every preflight is refused.",
    )
    methods: tuple[str, ...] = opt(
        ("GET", "HEAD", "POST"),
        _methods,
        "Methods a preflight may ask for (`Access-Control-Allow-Methods`).",
    )
    headers: tuple[str, ...] = opt(
        ("Content-Type", "If-None-Match", "X-Request-ID", "X-Bloxproxy-Max-Wait"),
        _header_names,
        "Request headers a preflight may ask for (`Access-Control-Allow-Headers`), besides "
        "the CORS-safelisted ones; `auth.header` is added when access keys are on.",
    )
    expose_headers: tuple[str, ...] = opt(
        (
            "Age",
            "Cache-Status",
            "ETag",
            "RateLimit",
            "RateLimit-Policy",
            "Retry-After",
            "Server-Timing",
            "X-Cache",
            "X-Request-ID",
        ),
        _header_names,
        "Response headers a page's script may read (`Access-Control-Expose-Headers`).",
    )
    max_age: float = opt(
        "10m",
        schema.duration,
        "How long a browser may keep a preflight's answer (`Access-Control-Max-Age`, whole "
        "seconds; browsers cap it: Chromium at 2 hours).",
    )
    allow_credentials: bool = opt(
        False,
        schema.boolean,
        "Let pages send cookies and `Authorization` (`Access-Control-Allow-Credentials`). "
        "Leave it off unless the page's own Roblox credential is meant to go through.",
    )


def _encodings(value: object) -> tuple[str, ...]:
    names = tuple(n.lower() for n in schema.string_list(value))
    for name in names:
        if name not in ("br", "gzip"):
            raise ValueError(f"expected br or gzip, got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"an encoding is named twice in {list(names)}")
    return names


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    enabled: bool = opt(
        False,
        schema.boolean,
        "Compress answers for clients that accept it (`Accept-Encoding`). A cached answer is "
        "compressed once per encoding and kept beside its L1 entry. Off by default: most "
        "HTTP libraries ask for gzip unasked, and next to the game servers CPU costs more "
        "than the bytes saved (bench/RESULTS.md, Compression).",
    )
    encodings: tuple[str, ...] = opt(
        ("br", "gzip"),
        _encodings,
        "Encodings offered (`br`, `gzip`), preferred first when the client ranks them equal.",
    )
    min_size: int = opt(
        "1KiB",
        schema.size,
        "Bodies smaller than this are sent as they are (compression would save little).",
    )
    gzip_level: int = opt(6, schema.integer(1, 9), "gzip level (1 fastest, 9 smallest).")
    brotli_quality: int = opt(
        5, schema.integer(0, 11), "Brotli quality (0 fastest, 11 smallest and very slow)."
    )


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = opt(
        "127.0.0.1",
        schema.string,
        "Address to listen on. Anything but a loopback address (`127.0.0.0/8`, `::1`, "
        "`localhost`) needs `auth.keys`, or `allow_open`.",
    )
    port: int = opt(8080, schema.integer(0, 65535), "TCP port to listen on.")
    allow_open: bool = opt(
        False,
        schema.boolean,
        "Allow listening on a non-loopback address with no `auth.keys`: anyone who reaches "
        "the address can then use the proxy (and spend your Roblox rate limits). `false`: "
        "`serve` refuses to start that way (exit 2); `true`: it starts and logs a warning.",
    )
    host_suffix: str = opt(
        "",
        _host_suffix,
        "Host-header routing: with `roblox.proxy.internal`, a request for "
        "`Host: users.roblox.proxy.internal` is passthrough to service `users`. Empty: off.",
    )
    max_body_size: int = opt("1MiB", schema.size, "Largest request body accepted (413 above).")
    workers: int = opt(
        1,
        schema.integer(1, 64),
        "Processes sharing the port (SO_REUSEPORT), each with its own L1 cache; they share "
        "Redis when configured. A scrape of `/_bloxproxy/metrics` on any of them answers the "
        "sum over all (the README's metrics view; their sockets go in `TMPDIR`). "
        "`serve --workers N` overrides it.",
    )
    shutdown_grace: float = opt(
        "10s",
        schema.duration,
        "On SIGTERM: stop accepting, then give in-flight requests this long to finish.",
    )
    admin_token: str = opt(
        "",
        schema.string,
        "Bearer token for the `/_bloxproxy/admin/*` endpoints. Empty: admin endpoints are off. "
        "Use `${VAR}` or `BLOXPROXY_SERVER_ADMIN_TOKEN` rather than writing it in the file.",
    )
    header_timeout: float = opt(
        "10s",
        schema.duration,
        "Deadline for a request's head (request line and headers), counted from the "
        "connection's opening or, between two requests, from the head's first byte. Past it: "
        "a 408 problem and the connection closed (closed without a word when nothing came "
        "at all). `0`: none.",
    )
    body_timeout: float = opt(
        "30s",
        schema.duration,
        "Deadline for a request's whole body, counted from the end of its head. Past it: a "
        "408 problem and the connection closed. `0`: none.",
    )
    keepalive_timeout: float = opt(
        "75s",
        schema.duration,
        "An idle kept-alive client connection is closed after this long (longer than the "
        "idle timeout of a load balancer in front, so that it is the one to close). "
        "`0`: no keep-alive.",
    )
    max_connections: int = opt(
        4096,
        schema.integer(1, 1_000_000),
        "Client connections open at once, per worker. Past it, a new connection is answered "
        "a 503 problem with `Retry-After` and closed at once. Lowered at start when the "
        "open-file limit cannot hold it beside the upstream and Redis pools (the log says so).",
    )
    ops_host: str = opt(
        "127.0.0.1",
        schema.string,
        "Address of the ops listener (`ops_port`). Keep it private: it asks for no key.",
    )
    ops_port: int = opt(
        0,
        schema.integer(0, 65535),
        "A second listener serving only `/_bloxproxy/healthz`, `readyz` (with its checks) and "
        "`metrics`, without access keys — e.g. for a Prometheus scraper or probes on a "
        "private address — with its own small connection cap, so that probes get through "
        "when the main listener is full. `0`: off.",
    )
    cors: CorsConfig = section(CorsConfig, "CORS for browser clients (off by default).")
    compression: CompressionConfig = section(
        CompressionConfig, "gzip and Brotli answers for clients that accept them."
    )


def _egress_id(value: object) -> str:
    text = schema.string(value)
    if not re.match(r"^[A-Za-z0-9._-]{1,64}$", text):
        raise ValueError(f"expected a name of letters, digits, '.', '_' or '-', got {text!r}")
    return text


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    base_url: str = opt(
        "https://{service}.roblox.com",
        _base_url,
        "Template of the upstream URL; `{service}` is replaced by the service name "
        "(`http://127.0.0.1:9000/{service}` sends everything to a local fake).",
    )
    services: dict[str, str] = opt(
        {},
        _service_urls,
        "Per-service base URL overrides, e.g. `{apis: https://apis.roblox.com}`.",
    )
    allowed_services: tuple[str, ...] = opt(
        DEFAULT_SERVICES,
        _services,
        "Services reachable through passthrough (`/{service}/{path}`). Default: Roblox's "
        "public web API hosts.",
    )
    timeout: float = opt("10s", schema.duration, "Deadline for one upstream attempt.")
    connect_timeout: float = opt("3s", schema.duration, "Deadline for opening a connection.")
    max_connections: int = opt(
        256, schema.integer(1, 100_000), "Size of the upstream connection pool."
    )
    max_response_size: int = opt(
        "8MiB", schema.size, "Largest upstream body accepted (502 problem above)."
    )
    max_inflight_bytes: int = opt(
        "64MiB",
        schema.size,
        "Bytes of upstream bodies being read at once, over all requests (a body larger "
        "than this still goes, alone). A request that cannot get room within "
        "`limits.upstream.max_wait` is answered 503 with `Retry-After` (or from stale cache).",
    )
    user_agent: str = opt("bloxproxy/0.1", schema.string, "User-Agent sent upstream.")
    egress_id: str = opt(
        "shared",
        _egress_id,
        "Which upstream budget this replica draws on with `limits.upstream.shared`: replicas "
        "behind one egress IP (Roblox limits per IP) keep the default and share one; a "
        "replica with its own egress IP gets its own name (e.g. the node's).",
    )


@dataclass(frozen=True, slots=True)
class RulesConfig:
    paths: tuple[str, ...] = opt(
        (),
        schema.string_list,
        "Your rule files or directories of `*.yaml`, relative to the config file, loaded "
        "beside the shipped rules. A route whose `id` is a shipped route's replaces it "
        "(`bloxproxy check` lists each one); any other clash is an error.",
    )
    shipped: bool = opt(
        True,
        schema.boolean,
        "Load the rules shipped with bloxproxy (`rules/` in a checkout). `false`: only "
        "`rules.paths`.",
    )


def _duration_from(low: float, text: str) -> Callable[[object], float]:
    """A duration reader refusing less than ``low`` seconds (``text`` says it)."""

    def read(value: object) -> float:
        seconds = schema.duration(value)
        if seconds < low:
            raise ValueError(f"expected a duration of at least {text}, got {schema.show(value)}")
        return seconds

    return read


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str = opt(
        "",
        _redis_url,
        "Redis enabling the shared L2 cache (and shared limits, purges, invalidation). "
        "Empty: L1 only. One Redis: `redis://[[user]:password@]host[:port][/db]` (or "
        "`rediss://`, `unix://`). Sentinel: `redis+sentinel://[[user]:password@]host[:port]"
        "[,host[:port]...]/master[/db]` (Sentinels' default port 26379; the credentials are "
        "the data nodes'). Cluster: `redis+cluster://[[user]:password@]host[:port]"
        "[,host[:port]...]` (database 0 only), or a list of `host:port` nodes.",
    )
    prefix: str = opt("bloxproxy:", schema.string, "Prefix of every Redis key bloxproxy writes.")
    timeout: float = opt("250ms", schema.duration, "Deadline for one Redis command.")
    max_connections: int = opt(64, schema.integer(1, 10_000), "Size of the Redis pool.")
    cluster_coalescing: bool = opt(
        True,
        schema.boolean,
        "One upstream call per cold key across all replicas on this Redis: one replica holds "
        "the key's lease while it asks, the others wait for its word on pub/sub (no polling) "
        "and read its entry, or serve a stale one. Redis down: one call per key per process, "
        "as with `false`. Shared (anonymous) entries only; costs a miss about two Redis round "
        "trips.",
    )
    lease_ttl: float = opt(
        "3s",
        _duration_from(0.1, "100ms"),  # renewed every third of it: not a busy loop
        "Lifetime of a cold key's lease, renewed every third of it while the call runs: how "
        "soon a waiter takes over when the replica leading the call dies without a word "
        "(at least `100ms`).",
    )
    cluster_wait: float = opt(
        "5s",
        _duration_from(0.001, "1ms"),
        "How long a replica waits for another one's answer before asking upstream itself "
        "(that answer is stored too); at most half of `cache.coalesce_timeout`, so that the "
        "call has time to answer before the waiting requests give up.",
    )
    cluster_batches: bool = opt(
        True,
        schema.boolean,
        "With `cluster_coalescing`: one upstream batch call for the single lookups every "
        "replica merges at once. A batch that opens takes its endpoint's collector lease, "
        "or, when another replica's batch holds it, hands its ids to that one and waits for "
        "their word (docs/ARCHITECTURE.md, *Batches across replicas*). Costs a batch two "
        "Redis round trips.",
    )
    collect_for: float = opt(
        "3s",
        _duration_from(0.01, "10ms"),
        "How long a batch may collect other replicas' ids (its collector lease): past it, "
        "a replica's next batch collects for itself. A batch on a scope that runs at its "
        "budget stays open until its slot comes, often longer than a second: shorter, and "
        "another replica's batch collects beside it. Also how long followers may wait on a "
        "collector that died, plus `lease_ttl`, before they ask for themselves.",
    )


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = opt(True, schema.boolean, "Turn caching off entirely (every request a miss).")
    max_bytes: int = opt("256MiB", schema.size, "Byte budget of the in-process L1 cache.")
    max_entries: int = opt(
        100_000,
        schema.integer(0),
        "Entry bound of the L1 cache; 0 turns L1 off (with Redis, every hit is read from it).",
    )
    passthrough_ttl: float = opt(
        "30s",
        schema.duration,
        "TTL of passthrough GETs that no rule matches (`0` disables caching them).",
    )
    negative_ttl: float = opt(
        "30s", schema.duration, "TTL of 404 answers when the rule does not say."
    )
    coalesce_timeout: float = opt(
        "15s",
        schema.duration,
        "How long a request waits for an identical in-flight miss before giving up.",
    )
    credential_secret: str = opt(
        "",
        schema.string,
        "HMAC secret for per-credential cache keys. Empty: a random one per process "
        "(per-credential entries are then not shared between replicas).",
    )
    tag_header: str = opt(
        "",
        _tag_header,
        "Response header listing an answer's entity tags, space-separated (`Surrogate-Key`, "
        'as CDNs name it): what a purge by tag (`{"tag": "user:156"}`) would drop it by. '
        "Empty: off (entries are tagged and purged by tag all the same).",
    )
    redis: RedisConfig = section(RedisConfig, "Optional shared L2 cache.")


def _rates(value: object) -> dict[str, float]:
    rates = {k: schema.number(0.001)(x) for k, x in schema_map(value).items()}
    for name in rates:
        if not SERVICE_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a service name (lower-case letters, digits, -)")
    return rates


@dataclass(frozen=True, slots=True)
class UpstreamLimitsConfig:
    rate: float = opt(
        20.0,
        schema.number(0.001),
        "Upstream requests per second per scope (a service, or a rule's `limits.bucket`), "
        "bursts up to the same number: where a learned budget starts and the most it grows "
        "to (the default for scopes not in `rates`). Every attempt counts, retries included.",
    )
    rates: dict[str, float] = opt(
        {},
        _rates,
        "Per-scope rates (services or rule buckets), e.g. `{thumbnails: 10, friends: 5}`.",
    )
    learn: bool = opt(
        True,
        schema.boolean,
        "Learn each scope's rate from Roblox's answers: lower it on a 429 (`decrease`), cap "
        "it at the tightest `x-ratelimit-limit` window, raise it again while answers stay "
        "good (`increase`). `false`: the configured rates, fixed (429s still hold the scope).",
    )
    decrease: float = opt(
        0.5,
        schema.number(0.01, 0.99),
        "On a 429, a learned rate is multiplied by this (once per congestion event: the "
        "429s of requests already sent at the old rate do not lower it again).",
    )
    increase: float = opt(
        0.5,
        schema.number(0.0),
        "Requests/s a learned rate grows by after each `increase_every` without a 429 in "
        "which at least half of its slots were used, up to its configured rate.",
    )
    increase_every: float = opt(
        "1s", schema.duration, "The window of `increase` (and of forgiving 429 strikes)."
    )
    floor: float = opt(
        0.1,
        schema.number(0.001),
        "The lowest requests/s a learned rate goes down to (at most the scope's rate).",
    )
    max_wait: float = opt(
        "10s",
        schema.duration,
        "How long a request may wait for a slot of its scope's budget (queued, in its "
        "client's fair share) before it gets 503 with `Retry-After`, or a stale entry. Long "
        "enough for a bot's client, which waits for an answer far longer than that (aiohttp "
        "5 minutes, `requests` and Node's fetch indefinitely): a short wait in line beats a "
        "fast failure it retries anyway. A client with a shorter timeout sends "
        "`X-Bloxproxy-Max-Wait: 3s` (at most this). Within `retries.deadline`.",
    )
    shared: bool = opt(
        False,
        schema.boolean,
        "With `cache.redis.url` set, all replicas with the same `upstream.egress_id` share "
        "each scope's learned budget in Redis (N replicas send `rate`/s together, not N x "
        "`rate`, and a 429 seen by one slows all).",
    )
    pause_base: float = opt(
        "1s",
        schema.duration,
        "From the second 429 in a row without `Retry-After` (no clean `increase_every` "
        "between), a scope holds (requests wait, no calls) this long, doubling with each.",
    )
    pause_max: float = opt(
        "1m",
        schema.duration,
        "Cap of a hold: the one a `Retry-After` or `x-ratelimit-reset` asks for included.",
    )


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failures: int = opt(
        5,
        schema.integer(1, 1000),
        "Consecutive failures (connection errors, timeouts, 5xx) that open a service's "
        "circuit: while open, requests are answered from stale cache or 503.",
    )
    open_for: float = opt(
        "30s", schema.duration, "How long the circuit stays open before one probe goes through."
    )


@dataclass(frozen=True, slots=True)
class ClientLimitsConfig:
    rate: float = opt(
        0.0,
        schema.number(0.0),
        "Requests per second per client (per access key, or per IP when keys are off). "
        "`0`: no client limit.",
    )
    burst: int = opt(0, schema.integer(0), "Bucket size. `0`: the rate rounded up.")
    forwarded_for_hops: int = opt(
        0,
        schema.integer(0, 10),
        "Trusted reverse proxies in front of bloxproxy: the client IP is taken from "
        "`X-Forwarded-For`, this many entries from the right. `0`: the peer address.",
    )


@dataclass(frozen=True, slots=True)
class AuthFailuresConfig:
    rate: float = opt(
        1.0,
        schema.number(0.0),
        "Failed authentication attempts (a wrong or missing access key, a wrong admin token) "
        "per second per client address (as `limits.clients.forwarded_for_hops` finds it). "
        "Past the limit, everything from that address is a 429 problem with `Retry-After`, "
        "the right secret included; successful attempts spend nothing. `0`: no limit.",
    )
    burst: int = opt(
        20, schema.integer(1), "Failed attempts an address may make at once before the limit."
    )


@dataclass(frozen=True, slots=True)
class WalkConfig:
    max_items: int = opt(
        10_000,
        schema.integer(0, 1_000_000),
        "Most items one whole-list walk sends; past it the walk ends with `capped: true` in "
        "its trailer and a cursor to go on from. `0`: no walks (`?all=true` is a 400).",
    )
    deadline: float = opt(
        "60s",
        schema.duration,
        "A walk asks no page after this long (its trailer then says `timed_out: true`); a "
        "page already asked may take `retries.deadline` more.",
    )


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    upstream: UpstreamLimitsConfig = section(
        UpstreamLimitsConfig,
        "Protecting Roblox: a learned upstream budget per scope, shared fairly by clients.",
    )
    breaker: BreakerConfig = section(BreakerConfig, "Per-service circuit breaker.")
    clients: ClientLimitsConfig = section(ClientLimitsConfig, "Protecting us: client limits.")
    auth_failures: AuthFailuresConfig = section(
        AuthFailuresConfig,
        "Protecting secrets: guessing access keys and the admin token is throttled per client "
        "address (in Redis when configured, so replicas share the budget).",
    )
    walk: WalkConfig = section(
        WalkConfig,
        "Whole lists: `?all=true` on a paginated route streams every item, page by page "
        "(docs/RULES.md, Whole lists).",
    )


@dataclass(frozen=True, slots=True)
class RetriesConfig:
    attempts: int = opt(
        3,
        schema.integer(1, 10),
        "Upstream attempts per request, the first included. Only safe reads are retried "
        "(GET/HEAD, and POSTs a rule marks `safe_read`), on connection errors, timeouts, "
        "429 and 502/503/504.",
    )
    backoff_base: float = opt("100ms", schema.duration, "First backoff step (full jitter).")
    backoff_max: float = opt("2s", schema.duration, "Cap of one backoff step.")
    deadline: float = opt(
        "15s", schema.duration, "Total time for all attempts of one upstream call."
    )
    budget: float = opt(
        0.2,
        schema.number(0.0, 1.0),
        "Retries may add at most this share of upstream traffic, per service.",
    )
    budget_reserve: float = opt(
        10.0,
        schema.number(0.0),
        "Retries allowed on top of that share when traffic is low (the budget's bucket size).",
    )


def _header_name(value: object) -> str:
    text = schema.string(value)
    if not re.match(r"^[A-Za-z0-9-]+$", text):
        raise ValueError(f"expected a header name, got {text!r}")
    if text.lower() in ("authorization", "x-api-key", "cookie", "host"):
        raise ValueError(f"{text} belongs to Roblox (it is forwarded); pick another name")
    return text


def _clients(
    value: object, where: Where, problems: list[Problem], ctx: str, section: dict[str, Any]
) -> tuple[NamedClient, ...]:
    return keyconfig.read_clients(value, where, problems, ctx, section.get("keys", ()))


@dataclass(frozen=True, slots=True)
class AuthConfig:
    keys: tuple[str, ...] = opt(
        (),
        schema.string_list,
        "Access keys clients must send (in `auth.header`). Empty: no key needed. "
        "Set them with `BLOXPROXY_AUTH_KEYS=key1,key2` rather than in the file.",
    )
    header: str = opt(
        "X-Bloxproxy-Key",
        _header_name,
        "Header carrying the access key (never forwarded to Roblox; `Authorization` and "
        "`x-api-key` are Roblox's and go through).",
    )
    clients: tuple[NamedClient, ...] = field(
        default_factory=tuple,
        metadata={
            "marked": _clients,
            "block": keyconfig.CLIENT,
            "default": {},
            "doc": "Access keys with properties, by client name (letters, digits, `_.-`): "
            "`{live-game: {key: ${GAME_KEY}, places: [1818], weight: 4, answer_mode: luau}}`. "
            "Each is accepted like a key of `auth.keys`, plus what its entry says (the keys "
            "of one entry: `auth.clients.<name>` below). Game servers: README, Game servers.",
        },
    )

    @property
    def keyed(self) -> bool:
        """Must clients send an access key (``keys`` or ``clients``)?"""
        return bool(self.keys or self.clients)


def _held_keys(
    value: object, where: Where, problems: list[Problem], ctx: str, section: dict[str, Any]
) -> tuple[HeldKey, ...]:
    return cloudkeys.read_held_keys(value, where, problems, ctx)


@dataclass(frozen=True, slots=True)
class OpenCloudConfig:
    keys: tuple[HeldKey, ...] = field(
        default_factory=tuple,
        metadata={
            "marked": _held_keys,
            "block": cloudkeys.HELD_KEY,
            "default": {},
            "doc": "Open Cloud API keys the proxy holds, by name: `{main: {key: ${OC_KEY}, "
            "owner: group:7}}`. A named client (`auth.clients`) with `opencloud_key: main` "
            "that sends an Open Cloud route no `x-api-key` of its own is served with it (with "
            "`opencloud_passthrough`, its passthrough calls to Open Cloud too); the key is "
            "never logged or shown (README, Open Cloud).",
        },
    )

    def by_name(self, name: str) -> HeldKey | None:
        """The held key of this name, or None."""
        for key in self.keys:
            if key.name == name:
                return key
        return None


# What an access line can say, in the default order (bloxproxy/observe.py writes them).
ACCESS_FIELDS = (
    "time",
    "request_id",
    "client",
    "method",
    "path",
    "route",
    "status",
    "bytes",
    "cache",
    "upstream_ms",
    "total_ms",
    "user_agent",
)


def _access_fields(value: object) -> tuple[str, ...]:
    names = schema.string_list(value)
    if not names:
        raise ValueError(
            f"expected at least one of {', '.join(ACCESS_FIELDS)} (to log no line at all, "
            "set access_log: false)"
        )
    for name in names:
        if name not in ACCESS_FIELDS:
            raise ValueError(f"{name!r} is not an access log field ({', '.join(ACCESS_FIELDS)})")
    if len(set(names)) != len(names):
        raise ValueError(f"a field is named twice in {list(names)}")
    return names


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = opt("INFO", schema.choice("DEBUG", "INFO", "WARNING", "ERROR"), "Log level.")
    format: str = opt("json", schema.choice("json", "text"), "Log line format.")
    access_log: bool = opt(True, schema.boolean, "One log line per request.")
    access_fields: tuple[str, ...] = opt(
        ACCESS_FIELDS,
        _access_fields,
        "The access line's fields, in the order given. The default is all of them: `time`, "
        "`request_id`, `client` (the "
        "peer's address, or the `X-Forwarded-For` entry `limits.clients.forwarded_for_hops` "
        "trusts), `method`, `path` (no query string), `route` (route id, "
        "`passthrough:<service>` or `none`), `status`, `bytes` (of the response body), "
        "`cache` (the `X-Cache` result), `upstream_ms`, `total_ms` and `user_agent` (at most "
        '256 characters). A JSON line also has `"type": "access"`; a text line is the '
        "values, space-separated, `-` for none.",
    )
    repeat_limit: int = opt(
        10,
        schema.integer(0),
        "The same log line (logger, level, first line of text) is written at most this many "
        "times per `repeat_window`; then one line says how many were left out. Lines of "
        "every kind together: at most 20 times this per window. `0`: no limit.",
    )
    repeat_window: float = opt(
        "1m", schema.duration, "The window of `repeat_limit` (and of its summary line)."
    )


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = section(ServerConfig, "Listening socket and front-door options.")
    auth: AuthConfig = section(AuthConfig, "Optional access keys for clients of the proxy.")
    upstream: UpstreamConfig = section(UpstreamConfig, "Where Roblox (or a stand-in) is.")
    rules: RulesConfig = section(RulesConfig, "Which rule files define the clean API.")
    cache: CacheConfig = section(CacheConfig, "In-process L1 and optional Redis L2 cache.")
    limits: LimitsConfig = section(LimitsConfig, "Upstream and client rate limits.")
    retries: RetriesConfig = section(RetriesConfig, "Upstream retries with backoff.")
    logging: LoggingConfig = section(LoggingConfig, "Log level and format.")
    opencloud: OpenCloudConfig = section(OpenCloudConfig, "Open Cloud API keys held by the proxy.")
    # Not keys: where the file was, to resolve relative rule paths.
    source: str = field(default="", metadata={"internal": True})

    def base_url_for(self, service: str) -> str:
        """The upstream base URL of one service (override, else the template)."""
        override = self.upstream.services.get(service)
        return override if override else self.upstream.base_url.replace("{service}", service)

    def shipped_rule_paths(self) -> list[Path]:
        """The shipped rules, unless ``rules.shipped`` is false."""
        return [shipped_rules_dir()] if self.rules.shipped else []

    def user_rule_paths(self) -> list[Path]:
        """``rules.paths``, relative to the config file (or the working directory)."""
        base = Path(self.source).parent if self.source else Path.cwd()
        return [(base / p) for p in self.rules.paths]

    def rule_paths(self) -> list[Path]:
        """Every rule path: the shipped rules, then the user's (what ``--watch`` polls)."""
        return [*self.shipped_rule_paths(), *self.user_rule_paths()]


def schema_map(value: object) -> dict[str, object]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"expected a mapping, got {schema.show(value)}")
    return dict(value)


def shipped_rules_dir() -> Path:
    """The rules shipped with bloxproxy: ``rules/`` beside the package in a checkout,
    or the copy installed inside the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "shipped_rules", here.parent / "rules"):
        if candidate.is_dir():
            return candidate
    return here.parent / "rules"


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _materialize(cls: type, data: MarkedDict | None, problems: list[Problem], ctx: str) -> Any:
    """Build a section dataclass from its mapping, defaults for absent keys."""
    values: dict[str, Any] = {}
    fields = _fields(cls)
    if data is not None:
        schema.check_keys(data, fields, problems, ctx)
    for name, f in fields.items():
        sub = f.metadata.get("section")
        key_ctx = f"{ctx}.{name}" if ctx else name
        if sub is not None:
            raw = data.get(name) if data is not None else None
            child = None
            if raw is not None and data is not None:
                child = schema.mapping(raw, data.at(name), key_ctx, problems)
            values[name] = _materialize(sub, child, problems, key_ctx)
            continue
        marked = f.metadata.get("marked")
        if marked is not None:  # a map of declared blocks, read with its file:line marks
            given = data is not None and name in data and data[name] is not None
            if given and data is not None:
                values[name] = marked(data[name], data.at(name), problems, key_ctx, values)
            else:
                values[name] = f.default_factory()  # type: ignore[operator]
            continue
        reader = f.metadata["reader"]
        typed_default = f.default_factory()  # type: ignore[operator]
        if data is not None and name in data and data[name] is not None:
            values[name] = schema.read(data, name, reader, problems, typed_default, ctx)
        else:
            values[name] = typed_default
    return cls(**values)


def _env_paths(cls: type | None = None, prefix: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Every ``BLOXPROXY_...`` name and the key path it sets."""
    cls = cls or Config
    out: dict[str, tuple[str, ...]] = {}
    for name, f in _fields(cls).items():
        path = (*prefix, name)
        sub = f.metadata.get("section")
        if sub is not None:
            out.update(_env_paths(sub, path))
        else:
            out[ENV_PREFIX + "_".join(path).upper()] = path
    return out


def _field_at(path: tuple[str, ...]) -> dataclasses.Field[Any]:
    cls: Any = Config
    f: dataclasses.Field[Any] | None = None
    for name in path:
        f = _fields(cls)[name]
        cls = f.metadata.get("section")
    assert f is not None
    return f


def _apply_env(data: MarkedDict, env: Mapping[str, str], problems: list[Problem]) -> None:
    known = _env_paths()
    sections = tuple(ENV_PREFIX + name.upper() + "_" for name in _fields(Config))
    for var, raw in sorted(env.items()):
        if not var.startswith(sections):
            continue  # other BLOXPROXY_* variables (BLOXPROXY_CONFIG…) are not config keys
        where = Where(f"${var}", 0)
        path = known.get(var)
        if path is None:
            problems.append(Problem(where, "unknown configuration variable"))
            continue
        value: object = raw
        # String keys take the text verbatim, whatever their reader: YAML would turn a
        # base URL template like "{service}.example" into a mapping.
        kind = _field_at(path).type
        # A list of strings written as "a, b" is taken verbatim too (split by its reader),
        # so that "*" or "yes" is not read as YAML (an alias; a boolean); "[...]" is YAML.
        listed = kind == "tuple[str, ...]" and not raw.lstrip().startswith("[")
        if kind not in ("str", str) and not listed:
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                problems.append(Problem(where, f"cannot read value {schema.show(raw)}"))
                continue
        node = data
        for name in path[:-1]:
            child = node.get(name)
            if not isinstance(child, MarkedDict):
                child = MarkedDict()
                child.where, child.key_where = where, {}
                node[name] = child
                node.key_where[name] = where
            node = child
        node[path[-1]] = value
        node.key_where[path[-1]] = where


def load(path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load the config file (or the embedded defaults when ``path`` is None), apply the
    environment, validate everything, and raise one :class:`ConfigError` listing every
    problem as ``file:line: key: message``."""
    env = os.environ if env is None else env
    problems: list[Problem] = []
    data: MarkedDict
    if path is not None:
        raw = load_file(path, env=env)
        if raw is None:
            raw = MarkedDict()
            raw.where, raw.key_where = Where(path, 1), {}
        if not isinstance(raw, MarkedDict):
            raise ConfigError([Problem(Where(path, 1), "expected a mapping of sections")])
        data = raw
    else:
        data = MarkedDict()
        data.where, data.key_where = Where("<defaults>", 0), {}
    _apply_env(data, env, problems)
    config: Config = _materialize(Config, data, problems, "")
    if config.server.ops_port and config.server.ops_port == config.server.port:
        section_data = data.get("server")
        where = section_data.at("ops_port") if isinstance(section_data, MarkedDict) else data.where
        problems.append(
            Problem(where, "server.ops_port: must differ from server.port (it asks for no key)")
        )
    _check_cors(config, data, problems)
    section_data = data.get("auth")
    cloudkeys.check_clients(
        {k.name for k in config.opencloud.keys},
        [(c.name, c.opencloud_key) for c in config.auth.clients],
        section_data.at("clients") if isinstance(section_data, MarkedDict) else data.where,
        problems,
    )
    if problems:
        # in file order (unknown keys are found before bad values); $VARIABLES first
        raise ConfigError(sorted(problems, key=lambda p: (p.where.file, p.where.line)))
    return dataclasses.replace(config, source=path or "")


def _check_cors(config: Config, data: MarkedDict, problems: list[Problem]) -> None:
    """What the CORS keys must say together: no ``*`` origin with credentials."""
    cors = config.server.cors
    server = data.get("server")
    section_data = server.get("cors") if isinstance(server, MarkedDict) else None

    def where(key: str) -> Where:
        if isinstance(section_data, MarkedDict) and key in section_data:
            return section_data.at(key)
        return section_data.where if isinstance(section_data, MarkedDict) else data.where

    if cors.allow_credentials and "*" in cors.origins:
        problems.append(
            Problem(
                where("origins"),
                "server.cors.origins: '*' cannot go with allow_credentials (browsers refuse "
                "it); name the origins",
            )
        )


def salvage_rule_paths(path: str | None, env: Mapping[str, str] | None = None) -> Config:
    """The defaults plus whatever valid ``rules.paths`` and ``rules.shipped`` an invalid
    config file names, so that ``check`` can still validate the rules the user meant
    alongside the config's errors."""
    config = Config(source=path or "")
    if path is None:
        return config
    try:
        section = load_file(path, env=os.environ if env is None else env)["rules"]
    except (ConfigError, KeyError, TypeError):
        return config
    found: dict[str, Any] = {}
    for name, reader in (("paths", schema.string_list), ("shipped", schema.boolean)):
        with contextlib.suppress(KeyError, TypeError, ValueError):
            found[name] = reader(section[name])
    return dataclasses.replace(config, rules=RulesConfig(**found))


def reference_markdown() -> str:
    """The config reference, generated from the field docs."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `bloxproxy/config.py` by `python -m bloxproxy.config`.",
        "",
        "Environment variables override the file: `BLOXPROXY_<SECTION>_<KEY>`.",
        "",
    ]

    def walk(cls: type, prefix: tuple[str, ...]) -> None:
        for name, f in _fields(cls).items():
            path = (*prefix, name)
            sub = f.metadata.get("section")
            if sub is not None:
                if lines[-1]:
                    lines.append("")  # a nested section ends the table of its parent
                lines.extend(
                    [
                        f"## `{'.'.join(path)}`",
                        "",
                        f.metadata["doc"],
                        "",
                        "| key | default | env | meaning |",
                        "|---|---|---|---|",
                    ]
                )
                walk(sub, path)
                if lines[-1]:
                    lines.append("")
                for child in _fields(sub).values():
                    block = child.metadata.get("block")
                    if block is not None:  # the keys of each entry of a map
                        lines.extend([f"### `{block.name}`", "", block.table().rstrip("\n"), ""])
            else:
                env_name = ENV_PREFIX + "_".join(path).upper()
                lines.append(
                    f"| `{'.'.join(path)}` | {_shown_default(f.metadata['default'])} "
                    f"| `{env_name}` | {f.metadata['doc']} |"
                )

    walk(Config, ())
    return "\n".join(lines).rstrip() + "\n"


def _shown_default(default: object) -> str:
    """A default as written in YAML, in a Markdown code span."""
    if default is DEFAULT_SERVICES:
        return f"{len(default)} Roblox services (see `DEFAULT_SERVICES`)"
    return schema.shown_default(default)


if __name__ == "__main__":
    print(reference_markdown(), end="")
