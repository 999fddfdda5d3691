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

import copy
import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import schema
from .errors import ConfigError, Problem
from .yamlsrc import MarkedDict, Where, load_file

ENV_PREFIX = "BLOXPROXY_"

# Roblox's public web API hosts (``{service}.roblox.com``) that passthrough may reach.
DEFAULT_SERVICES = (
    "accountinformation", "accountsettings", "apis", "assetdelivery", "auth", "avatar",
    "badges", "catalog", "chat", "clientsettings", "contacts", "develop", "economy",
    "engagementpayouts", "followings", "friends", "gameinternationalization", "games",
    "groups", "inventory", "itemconfiguration", "locale", "localizationtables", "notifications",
    "points", "premiumfeatures", "presence", "privatemessages", "publish", "thumbnails",
    "trades", "translationroles", "twostepverification", "users",
)

SERVICE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def opt(default: Any, reader: Callable[[object], Any], doc: str) -> Any:
    """A config key: its default (written the way a user writes it, ``"10s"``), how to read
    it, and its reference text."""

    def factory() -> Any:
        return reader(default) if isinstance(default, str) else copy.copy(default)

    return field(default_factory=factory, metadata={"reader": reader, "doc": doc,
                                                    "default": default})


def section(cls: type, doc: str) -> Any:
    return field(default_factory=cls, metadata={"section": cls, "doc": doc})


def _base_url(value: object) -> str:
    text = schema.string(value)
    if "{service}" not in text and not text.startswith(("http://", "https://")):
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


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = opt("127.0.0.1", schema.string, "Address to listen on.")
    port: int = opt(8080, schema.integer(0, 65535), "TCP port to listen on.")
    host_suffix: str = opt(
        "", _host_suffix,
        "Host-header routing: with `roblox.proxy.internal`, a request for "
        "`Host: users.roblox.proxy.internal` is passthrough to service `users`. Empty: off.",
    )
    max_body_size: int = opt("1MiB", schema.size, "Largest request body accepted (413 above).")
    admin_token: str = opt(
        "", schema.string,
        "Bearer token for the `/_bloxproxy/admin/*` endpoints. Empty: admin endpoints are off. "
        "Use `${VAR}` or `BLOXPROXY_SERVER_ADMIN_TOKEN` rather than writing it in the file.",
    )


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    base_url: str = opt(
        "https://{service}.roblox.com", _base_url,
        "Template of the upstream URL; `{service}` is replaced by the service name "
        "(`http://127.0.0.1:9000/{service}` sends everything to a local fake).",
    )
    services: dict[str, str] = opt(
        {}, _service_urls,
        "Per-service base URL overrides, e.g. `{apis: https://apis.roblox.com}`.",
    )
    allowed_services: tuple[str, ...] = opt(
        DEFAULT_SERVICES, _services,
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
    user_agent: str = opt("bloxproxy/0.1", schema.string, "User-Agent sent upstream.")


@dataclass(frozen=True, slots=True)
class RulesConfig:
    paths: tuple[str, ...] = opt(
        (), schema.string_list,
        "Rule files or directories of `*.yaml`, relative to the config file. "
        "Empty: the rules shipped with bloxproxy.",
    )


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str = opt("", schema.string, "Redis URL enabling the shared L2 cache. Empty: L1 only.")
    prefix: str = opt("bloxproxy:", schema.string, "Prefix of every Redis key bloxproxy writes.")
    timeout: float = opt("250ms", schema.duration, "Deadline for one Redis command.")
    max_connections: int = opt(64, schema.integer(1, 10_000), "Size of the Redis pool.")


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = opt(True, schema.boolean, "Turn caching off entirely (every request a miss).")
    max_bytes: int = opt("256MiB", schema.size, "Byte budget of the in-process L1 cache.")
    max_entries: int = opt(100_000, schema.integer(0), "Entry bound of the L1 cache.")
    passthrough_ttl: float = opt(
        "30s", schema.duration,
        "TTL of passthrough GETs that no rule matches (`0` disables caching them).",
    )
    negative_ttl: float = opt(
        "30s", schema.duration, "TTL of 404 answers when the rule does not say."
    )
    coalesce_timeout: float = opt(
        "15s", schema.duration,
        "How long a request waits for an identical in-flight miss before giving up.",
    )
    credential_secret: str = opt(
        "", schema.string,
        "HMAC secret for per-credential cache keys. Empty: a random one per process "
        "(per-credential entries are then not shared between replicas).",
    )
    redis: RedisConfig = section(RedisConfig, "Optional shared L2 cache.")


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    default_rate: float = opt(
        20.0, schema.number(0.001), "Upstream requests per second per service (default)."
    )
    rates: dict[str, float] = opt(
        {}, lambda v: {k: schema.number(0.001)(x) for k, x in schema_map(v).items()},
        "Per-service upstream request rates, e.g. `{thumbnails: 5, friends: 2}`.",
    )
    max_wait: float = opt(
        "2s", schema.duration,
        "A request that would wait longer than this for the upstream limiter gets 503.",
    )


@dataclass(frozen=True, slots=True)
class RetriesConfig:
    attempts: int = opt(3, schema.integer(1, 10), "Upstream attempts per request, first included.")
    backoff_base: float = opt("100ms", schema.duration, "First backoff step (full jitter).")
    backoff_max: float = opt("2s", schema.duration, "Cap of one backoff step.")
    budget: float = opt(
        0.2, schema.number(0.0, 1.0),
        "Retries may add at most this share of upstream traffic.",
    )


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = opt(
        "INFO", schema.choice("DEBUG", "INFO", "WARNING", "ERROR"), "Log level."
    )
    format: str = opt("json", schema.choice("json", "text"), "Log line format.")
    access_log: bool = opt(True, schema.boolean, "One log line per request.")


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = section(ServerConfig, "Listening socket and front-door options.")
    upstream: UpstreamConfig = section(UpstreamConfig, "Where Roblox (or a stand-in) is.")
    rules: RulesConfig = section(RulesConfig, "Which rule files define the clean API.")
    cache: CacheConfig = section(CacheConfig, "In-process L1 and optional Redis L2 cache.")
    limits: LimitsConfig = section(LimitsConfig, "Upstream rate limits per Roblox service.")
    retries: RetriesConfig = section(RetriesConfig, "Upstream retries with backoff.")
    logging: LoggingConfig = section(LoggingConfig, "Log level and format.")
    # Not keys: where the file was, to resolve relative rule paths.
    source: str = field(default="", metadata={"internal": True})

    def base_url_for(self, service: str) -> str:
        """The upstream base URL of one service (override, else the template)."""
        override = self.upstream.services.get(service)
        return override if override else self.upstream.base_url.replace("{service}", service)

    def rule_paths(self) -> list[Path]:
        if not self.rules.paths:
            return [shipped_rules_dir()]
        base = Path(self.source).parent if self.source else Path.cwd()
        return [(base / p) for p in self.rules.paths]


def schema_map(value: object) -> dict[str, object]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"expected a mapping, got {schema.show(value)}")
    return dict(value)


def shipped_rules_dir() -> Path:
    """The rules shipped with bloxproxy: ``rules/`` beside the package in a checkout,
    or the copy installed inside the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "rules", here / "shipped_rules"):
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
        reader = f.metadata["reader"]
        typed_default = f.default_factory()  # type: ignore[misc]
        if data is not None and name in data and data[name] is not None:
            values[name] = schema.read(data, name, reader, problems, typed_default, ctx)
        else:
            values[name] = typed_default
    return cls(**values)


def _env_paths(cls: type = None, prefix: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:  # type: ignore[assignment]
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
        if _field_at(path).metadata["reader"] is not schema.string:
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
    config = _materialize(Config, data, problems, "")
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(config, source=path or "")


def reference_markdown() -> str:
    """The config reference, generated from the field docs."""
    lines = ["# Configuration reference", "",
             "Generated from `bloxproxy/config.py` by `python -m bloxproxy.config`.", "",
             "Environment variables override the file: `BLOXPROXY_<SECTION>_<KEY>`.", ""]

    def walk(cls: type, prefix: tuple[str, ...]) -> None:
        for name, f in _fields(cls).items():
            path = (*prefix, name)
            sub = f.metadata.get("section")
            if sub is not None:
                lines.extend([f"## `{'.'.join(path)}`", "", f.metadata["doc"], "",
                              "| key | default | env | meaning |", "|---|---|---|---|"])
                walk(sub, path)
                lines.append("")
            else:
                default = f.metadata["default"]
                shown = ", ".join(default) if isinstance(default, tuple) else default
                if isinstance(default, tuple) and len(default) > 6:
                    shown = f"{len(default)} Roblox services (see `DEFAULT_SERVICES`)"
                env_name = ENV_PREFIX + "_".join(path).upper()
                lines.append(f"| `{'.'.join(path)}` | `{shown!s}` | `{env_name}` | "
                             f"{f.metadata['doc']} |")

    walk(Config, ())
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
