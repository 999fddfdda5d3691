"""Tests for bloxproxy.config (and the YAML loading and readers it is built on)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pytest

from bloxproxy import config as config_mod
from bloxproxy import schema
from bloxproxy.cloudkeys import HeldKey
from bloxproxy.config import DEFAULT_SERVICES, Config, load, reference_markdown
from bloxproxy.errors import ConfigError
from bloxproxy.keyconfig import HTTPSERVICE_PER_SERVER, NamedClient
from bloxproxy.yamlsrc import MarkedDict, load_file

ROOT = Path(__file__).resolve().parent.parent
KEY_PATHS = sorted(config_mod._env_paths().values())


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def problems(path: str | None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc_info:
        load(path, env=env or {})
    return [str(p) for p in exc_info.value.problems]


def value_at(cfg: Config, path: tuple[str, ...]) -> Any:
    value: Any = cfg
    for name in path:
        value = getattr(value, name)
    return value


def nested_yaml(path: tuple[str, ...], text: str) -> str:
    lines = [f"{'  ' * i}{name}:" for i, name in enumerate(path[:-1])]
    lines.append(f"{'  ' * (len(path) - 1)}{path[-1]}: {text}")
    return "\n".join(lines) + "\n"


# --- defaults -------------------------------------------------------------------------------


def test_embedded_defaults() -> None:
    cfg = load(None, env={})
    assert cfg == Config()
    assert cfg.source == ""
    assert cfg.server.host == "127.0.0.1"
    assert cfg.server.port == 8080
    assert cfg.server.max_body_size == 1024**2
    assert cfg.upstream.base_url == "https://{service}.roblox.com"
    assert cfg.upstream.services == {}
    assert cfg.upstream.allowed_services == DEFAULT_SERVICES
    assert cfg.upstream.timeout == 10.0
    assert cfg.upstream.max_response_size == 8 * 1024**2
    assert cfg.rules.paths == ()
    assert cfg.cache.enabled is True
    assert cfg.cache.max_bytes == 256 * 1024**2
    assert cfg.cache.negative_ttl == 30.0
    assert cfg.cache.redis.url == ""
    assert cfg.cache.redis.timeout == 0.25
    assert cfg.limits.upstream.rate == 20.0
    assert cfg.retries.attempts == 3
    assert cfg.retries.backoff_base == pytest.approx(0.1)
    assert cfg.logging.level == "INFO"


def test_config_is_frozen() -> None:
    cfg = load(None, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.port = 1  # type: ignore[misc]


def test_shipped_config_yaml_equals_embedded_defaults() -> None:
    from_file = load(str(ROOT / "config.yaml"), env={})
    assert from_file.source == str(ROOT / "config.yaml")
    assert dataclasses.replace(from_file, source="") == load(None, env={})


def test_shipped_config_yaml_writes_every_key() -> None:
    data = load_file(str(ROOT / "config.yaml"), env={})
    written: list[tuple[str, ...]] = []

    def walk(node: MarkedDict, prefix: tuple[str, ...]) -> None:
        for name, value in node.items():
            section = isinstance(value, MarkedDict) and (*prefix, name) not in KEY_PATHS
            if section:
                walk(value, (*prefix, name))
            else:
                written.append((*prefix, name))

    walk(data, ())
    assert sorted(written) == KEY_PATHS


def test_shipped_config_yaml_documents_env_overrides() -> None:
    text = (ROOT / "config.yaml").read_text(encoding="utf-8")
    assert "BLOXPROXY_<SECTION>_<KEY>" in text
    assert "http://127.0.0.1:9000/{service}" in text  # the local fake example
    assert "redis://" in text


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing here\n")
    assert dataclasses.replace(load(path, env={}), source="") == Config()


def test_null_section_and_null_key_are_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\ncache:\n  max_entries:\n")
    assert dataclasses.replace(load(path, env={}), source="") == Config()


# --- every key from a file, and from the environment ----------------------------------------

# (key path, as written in a file, as set in the environment, typed value)
OVERRIDES: list[tuple[tuple[str, ...], str, str, Any]] = [
    (("server", "host"), "0.0.0.0", "0.0.0.0", "0.0.0.0"),
    (("server", "allow_open"), "true", "true", True),
    (("server", "port"), "9090", "9090", 9090),
    (
        ("server", "host_suffix"),
        "Roblox.Proxy.Internal.",
        "Roblox.Proxy.Internal.",
        "roblox.proxy.internal",
    ),
    (("server", "max_body_size"), "2KiB", "2KiB", 2048),
    (("server", "workers"), "2", "2", 2),
    (("server", "shutdown_grace"), "30s", "30s", 30.0),
    (("server", "admin_token"), "'s3cret: 1'", "s3cret: 1", "s3cret: 1"),
    (("server", "header_timeout"), "2s", "2s", 2.0),
    (("server", "body_timeout"), "0", "0", 0.0),
    (("server", "keepalive_timeout"), "5m", "5m", 300.0),
    (("server", "max_connections"), "100", "100", 100),
    (("server", "ops_host"), "10.0.0.5", "10.0.0.5", "10.0.0.5"),
    (("server", "ops_port"), "9102", "9102", 9102),
    (("server", "cors", "enabled"), "true", "true", True),
    (
        ("server", "cors", "origins"),
        "[https://A.example.com, https://b.example.com:8443]",
        "https://A.example.com, https://b.example.com:8443",
        ("https://a.example.com", "https://b.example.com:8443"),
    ),
    (("server", "cors", "methods"), "[get, PUT]", "get,PUT", ("GET", "PUT")),
    (("server", "cors", "headers"), "[X-A]", "X-A", ("X-A",)),
    (("server", "cors", "expose_headers"), "[ETag]", "ETag", ("ETag",)),
    (("server", "cors", "max_age"), "1h", "1h", 3600.0),
    (("server", "cors", "allow_credentials"), "true", "true", True),
    (("server", "compression", "enabled"), "true", "true", True),
    (("server", "compression", "encodings"), "[gzip]", "GZIP", ("gzip",)),
    (("server", "compression", "min_size"), "2KiB", "2KiB", 2048),
    (("server", "compression", "gzip_level"), "9", "9", 9),
    (("server", "compression", "brotli_quality"), "11", "11", 11),
    (
        ("upstream", "base_url"),
        "http://127.0.0.1:9000/{service}/",
        "http://127.0.0.1:9000/{service}/",
        "http://127.0.0.1:9000/{service}",
    ),
    (
        ("upstream", "services"),
        "{apis: 'http://127.0.0.1:9001/apis/'}",
        "{apis: 'http://127.0.0.1:9001/apis/'}",
        {"apis": "http://127.0.0.1:9001/apis"},
    ),
    (("upstream", "allowed_services"), "[users, games]", "users,games", ("users", "games")),
    (("upstream", "timeout"), "1.5s", "1.5s", 1.5),
    (("upstream", "connect_timeout"), "500ms", "500ms", 0.5),
    (("upstream", "max_connections"), "10", "10", 10),
    (("upstream", "max_response_size"), "1MB", "1MB", 1_000_000),
    (("upstream", "max_inflight_bytes"), "1GiB", "1GiB", 1024**3),
    (("upstream", "user_agent"), "my-bot/1.0", "my-bot/1.0", "my-bot/1.0"),
    (("upstream", "egress_id"), "node-7", "node-7", "node-7"),
    (
        ("rules", "paths"),
        "[my-rules, extra.yaml]",
        "my-rules, extra.yaml",
        ("my-rules", "extra.yaml"),
    ),
    (("rules", "shipped"), "false", "false", False),
    (("cache", "enabled"), "false", "false", False),
    (("cache", "max_bytes"), "1GiB", "1GiB", 1024**3),
    (("cache", "max_entries"), "0", "0", 0),
    (("cache", "passthrough_ttl"), "0", "0", 0.0),
    (("cache", "negative_ttl"), "1m", "1m", 60.0),
    (("cache", "coalesce_timeout"), "1h", "1h", 3600.0),
    (("cache", "credential_secret"), "k3y", "k3y", "k3y"),
    (("cache", "tag_header"), "Surrogate-Key", "Surrogate-Key", "Surrogate-Key"),
    (
        ("cache", "redis", "url"),
        "redis://127.0.0.1:6379/0",
        "redis://127.0.0.1:6379/0",
        "redis://127.0.0.1:6379/0",
    ),
    (("cache", "redis", "prefix"), "'bp:'", "bp:", "bp:"),
    (("cache", "redis", "timeout"), "1s", "1s", 1.0),
    (("cache", "redis", "max_connections"), "8", "8", 8),
    (("cache", "redis", "cluster_coalescing"), "false", "false", False),
    (("cache", "redis", "lease_ttl"), "500ms", "500ms", 0.5),
    (("cache", "redis", "cluster_wait"), "2s", "2s", 2.0),
    (("cache", "redis", "cluster_batches"), "false", "false", False),
    (("cache", "redis", "collect_for"), "300ms", "300ms", 0.3),
    (("auth", "keys"), "[k1, k2]", "k1,k2", ("k1", "k2")),
    (("auth", "header"), "X-Proxy-Key", "X-Proxy-Key", "X-Proxy-Key"),
    (
        ("auth", "clients"),
        "{game: {key: g4me, places: [1818]}}",
        "{game: {key: g4me, places: [1818]}}",
        (NamedClient("game", "g4me", (1818,), per_server=HTTPSERVICE_PER_SERVER),),
    ),
    (("limits", "upstream", "rate"), "2.5", "2.5", 2.5),
    (
        ("limits", "upstream", "rates"),
        "{thumbnails: 5, friends: 0.5}",
        "{thumbnails: 5, friends: 0.5}",
        {"thumbnails": 5.0, "friends": 0.5},
    ),
    (("limits", "upstream", "learn"), "false", "false", False),
    (("limits", "upstream", "decrease"), "0.7", "0.7", 0.7),
    (("limits", "upstream", "increase"), "2", "2", 2.0),
    (("limits", "upstream", "increase_every"), "5s", "5s", 5.0),
    (("limits", "upstream", "floor"), "0.01", "0.01", 0.01),
    (("limits", "upstream", "max_wait"), "1d", "1d", 86400.0),
    (("limits", "upstream", "shared"), "true", "true", True),
    (("limits", "upstream", "pause_base"), "2s", "2s", 2.0),
    (("limits", "upstream", "pause_max"), "5m", "5m", 300.0),
    (("limits", "breaker", "failures"), "2", "2", 2),
    (("limits", "breaker", "open_for"), "1m", "1m", 60.0),
    (("limits", "clients", "rate"), "100", "100", 100.0),
    (("limits", "clients", "burst"), "200", "200", 200),
    (("limits", "clients", "forwarded_for_hops"), "1", "1", 1),
    (("limits", "auth_failures", "rate"), "0", "0", 0.0),
    (("limits", "auth_failures", "burst"), "5", "5", 5),
    (("limits", "walk", "max_items"), "500", "500", 500),
    (("limits", "walk", "deadline"), "2m", "2m", 120.0),
    (("retries", "attempts"), "1", "1", 1),
    (("retries", "backoff_base"), "10ms", "10ms", pytest.approx(0.01)),
    (("retries", "backoff_max"), "5s", "5s", 5.0),
    (("retries", "deadline"), "1m", "1m", 60.0),
    (("retries", "budget"), "0", "0", 0.0),
    (("retries", "budget_reserve"), "0", "0", 0.0),
    (("logging", "level"), "DEBUG", "DEBUG", "DEBUG"),
    (("logging", "format"), "text", "text", "text"),
    (("logging", "access_log"), "false", "false", False),
    (("logging", "access_fields"), "[status, path]", "status,path", ("status", "path")),
    (("logging", "repeat_limit"), "0", "0", 0),
    (("logging", "repeat_window"), "10s", "10s", 10.0),
    (
        ("opencloud", "keys"),
        "{main: {key: k3y, owner: 'group:7'}}",
        "{main: {key: k3y, owner: 'group:7'}}",
        (HeldKey("main", "k3y", "group:7"),),
    ),
]
OVERRIDE_IDS = [".".join(o[0]) for o in OVERRIDES]


def test_override_table_covers_every_key() -> None:
    assert sorted(o[0] for o in OVERRIDES) == KEY_PATHS


@pytest.mark.parametrize(("path", "text", "env_text", "expected"), OVERRIDES, ids=OVERRIDE_IDS)
def test_every_key_from_a_file(
    tmp_path: Path, path: tuple[str, ...], text: str, env_text: str, expected: Any
) -> None:
    cfg = load(write(tmp_path, nested_yaml(path, text)), env={})
    assert value_at(cfg, path) == expected
    assert value_at(cfg, path) != value_at(Config(), path)
    # every other key keeps its default
    for other in KEY_PATHS:
        if other != path:
            assert value_at(cfg, other) == value_at(Config(), other), other


@pytest.mark.parametrize(("path", "text", "env_text", "expected"), OVERRIDES, ids=OVERRIDE_IDS)
def test_every_key_from_the_environment(
    path: tuple[str, ...], text: str, env_text: str, expected: Any
) -> None:
    var = "BLOXPROXY_" + "_".join(path).upper()
    cfg = load(None, env={var: env_text})
    assert value_at(cfg, path) == expected


def test_all_keys_from_one_file(tmp_path: Path) -> None:
    tree: dict[str, Any] = {}
    for path, text, _, _ in OVERRIDES:
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = text

    def emit(node: dict[str, Any], depth: int) -> str:
        pad = "  " * depth
        return "".join(
            f"{pad}{k}:\n{emit(v, depth + 1)}" if isinstance(v, dict) else f"{pad}{k}: {v}\n"
            for k, v in node.items()
        )

    cfg = load(write(tmp_path, emit(tree, 0)), env={})
    for path, _, _, expected in OVERRIDES:
        assert value_at(cfg, path) == expected, path


# --- environment overrides ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "path", "expected"),
    [
        (
            {"BLOXPROXY_UPSTREAM_BASE_URL": "http://127.0.0.1:9000/{service}"},
            ("upstream", "base_url"),
            "http://127.0.0.1:9000/{service}",
        ),
        (
            # a template YAML would read as a mapping: string keys take the text verbatim
            {"BLOXPROXY_UPSTREAM_BASE_URL": "https://{service}.example"},
            ("upstream", "base_url"),
            "https://{service}.example",
        ),
        (
            {"BLOXPROXY_CACHE_REDIS_URL": "redis://:pw@127.0.0.1:6379/0"},
            ("cache", "redis", "url"),
            "redis://:pw@127.0.0.1:6379/0",
        ),
        ({"BLOXPROXY_SERVER_PORT": "8081"}, ("server", "port"), 8081),
        ({"BLOXPROXY_SERVER_HOST": "::1"}, ("server", "host"), "::1"),  # verbatim, not YAML
        ({"BLOXPROXY_SERVER_ADMIN_TOKEN": "123"}, ("server", "admin_token"), "123"),
        (
            {"BLOXPROXY_UPSTREAM_ALLOWED_SERVICES": "users,games"},
            ("upstream", "allowed_services"),
            ("users", "games"),
        ),
        (
            {"BLOXPROXY_UPSTREAM_ALLOWED_SERVICES": "[users, games]"},
            ("upstream", "allowed_services"),
            ("users", "games"),
        ),
        (
            {"BLOXPROXY_UPSTREAM_SERVICES": "{apis: http://x/apis}"},
            ("upstream", "services"),
            {"apis": "http://x/apis"},
        ),
        ({"BLOXPROXY_CACHE_ENABLED": "false"}, ("cache", "enabled"), False),
        ({"BLOXPROXY_CONFIG": "/nowhere.yaml"}, ("server", "port"), 8080),
        ({"BLOXPROXY_SOMETHING_ELSE": "x"}, ("server", "port"), 8080),
        ({"OTHER_SERVER_PORT": "1"}, ("server", "port"), 8080),
    ],
)
def test_env_overrides(env: dict[str, str], path: tuple[str, ...], expected: Any) -> None:
    assert value_at(load(None, env=env), path) == expected


def test_env_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 9000\n  host: 0.0.0.0\n")
    cfg = load(path, env={"BLOXPROXY_SERVER_PORT": "8081"})
    assert cfg.server.port == 8081
    assert cfg.server.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"BLOXPROXY_CACHE_NOPE": "1"},
            ["$BLOXPROXY_CACHE_NOPE: unknown configuration variable"],
        ),
        (
            {"BLOXPROXY_CACHE_REDIS": "redis://x"},
            ["$BLOXPROXY_CACHE_REDIS: unknown configuration variable"],
        ),
        (
            {"BLOXPROXY_SERVER_PORT": "eighty"},
            ["$BLOXPROXY_SERVER_PORT: server.port: expected an integer, got 'eighty'"],
        ),
        (
            {"BLOXPROXY_SERVER_PORT": "[1"},
            ["$BLOXPROXY_SERVER_PORT: cannot read value '[1'"],
        ),
        (
            {"BLOXPROXY_SERVER_OPS_PORT": "8080"},
            [
                "$BLOXPROXY_SERVER_OPS_PORT: server.ops_port: must differ from server.port "
                "(it asks for no key)"
            ],
        ),
        (
            {"BLOXPROXY_UPSTREAM_ALLOWED_SERVICES": "users,Games"},
            [
                "$BLOXPROXY_UPSTREAM_ALLOWED_SERVICES: upstream.allowed_services: 'Games' is "
                "not a service name (lower-case letters, digits, -)"
            ],
        ),
        (
            {"BLOXPROXY_UPSTREAM_BASE_URL": "http://127.0.0.1:9000"},
            [
                "$BLOXPROXY_UPSTREAM_BASE_URL: upstream.base_url: expected an http(s) URL "
                "template with {service}, got 'http://127.0.0.1:9000'"
            ],
        ),
        (
            {"BLOXPROXY_CACHE_NOPE": "1", "BLOXPROXY_RETRIES_ATTEMPTS": "0"},
            [
                "$BLOXPROXY_CACHE_NOPE: unknown configuration variable",
                "$BLOXPROXY_RETRIES_ATTEMPTS: retries.attempts: expected an integer >= 1, got 0",
            ],
        ),
    ],
)
def test_env_errors(env: dict[str, str], expected: list[str]) -> None:
    assert problems(None, env) == expected


# --- errors in files, with file and line ----------------------------------------------------

HTTP_URL = "expected an http:// or https:// URL"
URL_TEMPLATE = "expected an http(s) URL template with {service}"
NOT_SERVICE = "is not a service name (lower-case letters, digits, -)"
SIZE = "expected a size like '64MiB', '512KiB' or a byte count"
UNKNOWN_ALLOWED_TOP = "auth, cache, limits, logging, opencloud, retries, rules, server, upstream"
UNKNOWN_ALLOWED_SERVER = (
    "admin_token, allow_open, body_timeout, compression, cors, header_timeout, host, "
    "host_suffix, keepalive_timeout, max_body_size, max_connections, ops_host, ops_port, "
    "port, shutdown_grace, workers"
)
UNKNOWN_ALLOWED_REDIS = (
    "cluster_batches, cluster_coalescing, cluster_wait, collect_for, lease_ttl, "
    "max_connections, prefix, timeout, url"
)

FILE_ERRORS = [
    # (yaml, [(line, message)])
    pytest.param(
        "nope: 1\n", [(1, f"nope: unknown key (allowed: {UNKNOWN_ALLOWED_TOP})")], id="unknown-top"
    ),
    pytest.param(
        "server:\n  port: 1\n  prot: 2\n",
        [(3, f"server.prot: unknown key (allowed: {UNKNOWN_ALLOWED_SERVER})")],
        id="unknown-section-key",
    ),
    pytest.param(
        "cache:\n  redis:\n    url: ''\n    uri: x\n",
        [(4, f"cache.redis.uri: unknown key (allowed: {UNKNOWN_ALLOWED_REDIS})")],
        id="unknown-nested-key",
    ),
    pytest.param("_note: free text\nserver:\n  _also: ok\n", [], id="underscore-keys-are-comments"),
    pytest.param(
        "server: 5\n", [(1, "server: expected a mapping, got 5")], id="section-not-mapping"
    ),
    pytest.param(
        "cache:\n  redis: [a]\n", [(2, "cache.redis: expected a mapping, got ['a']")],
        id="nested-section-not-mapping",
    ),
    pytest.param(
        "server:\n  host: x\n  port: eighty\n",
        [(3, "server.port: expected an integer, got 'eighty'")],
        id="int",
    ),
    pytest.param(
        "server:\n  port: 70000\n", [(2, "server.port: expected an integer <= 65535, got 70000")],
        id="int-range",
    ),
    pytest.param(
        "server:\n  port: true\n", [(2, "server.port: expected an integer, got True")],
        id="bool-is-not-int",
    ),
    pytest.param(
        "upstream:\n  timeout: thirty\n",
        [(2, "upstream.timeout: expected a duration like '30s', '500ms' or '5m', got 'thirty'")],
        id="duration-word",
    ),
    pytest.param(
        "upstream:\n  timeout: 30\n",
        [(2, "upstream.timeout: expected a duration like '30s', '500ms' or '5m', got 30")],
        id="duration-without-unit",
    ),
    pytest.param(
        "upstream:\n  timeout: -1s\n",
        [(2, "upstream.timeout: expected a duration like '30s', '500ms' or '5m', got '-1s'")],
        id="duration-negative",
    ),
    pytest.param(
        "cache:\n  max_bytes: 1TB\n",
        [(2, "cache.max_bytes: expected a size like '64MiB', '512KiB' or a byte count, got '1TB'")],
        id="size",
    ),
    pytest.param(
        "cache:\n  max_bytes: -1\n",
        [(2, "cache.max_bytes: expected a size like '64MiB', '512KiB' or a byte count, got -1")],
        id="size-negative",
    ),
    pytest.param(
        "cache:\n  enabled: 'yes'\n", [(2, "cache.enabled: expected true or false, got 'yes'")],
        id="bool",
    ),
    pytest.param(
        "logging:\n  level: info\n",
        [(2, "logging.level: expected one of DEBUG, INFO, WARNING, ERROR, got 'info'")],
        id="choice",
    ),
    pytest.param(
        "retries:\n  budget: 2\n",
        [(2, "retries.budget: expected a number between 0.0 and 1.0, got 2")],
        id="number-range",
    ),
    pytest.param(
        "limits:\n  upstream:\n    rate: 0\n",
        [(3, "limits.upstream.rate: expected a number >= 0.001, got 0")],
        id="number-min",
    ),
    pytest.param(
        "limits:\n  upstream:\n    rates: {friends: fast}\n",
        [(3, "limits.upstream.rates: expected a number, got 'fast'")],
        id="rates-value",
    ),
    pytest.param(
        "limits:\n  upstream:\n    rates: [friends]\n",
        [(3, "limits.upstream.rates: expected a mapping, got ['friends']")],
        id="rates-not-mapping",
    ),
    pytest.param(
        "upstream:\n  base_url: ftp://{service}.roblox.com\n",
        [(2, f"upstream.base_url: {HTTP_URL}, got 'ftp://{{service}}.roblox.com'")],
        id="url-scheme",
    ),
    pytest.param(
        "upstream:\n  base_url: https://roblox.com\n",
        [(2, f"upstream.base_url: {URL_TEMPLATE}, got 'https://roblox.com'")],
        id="url-without-service",
    ),
    pytest.param(
        "upstream:\n  services:\n    apis: apis.roblox.com\n",
        [(3, f"upstream.services: apis: {HTTP_URL}, got 'apis.roblox.com'")],
        id="service-url",
    ),
    pytest.param(
        "upstream:\n  services: {Apis: 'https://apis.roblox.com'}\n",
        [(2, f"upstream.services: 'Apis' {NOT_SERVICE}")],
        id="service-url-name",
    ),
    pytest.param(
        "upstream:\n  allowed_services:\n    - users\n    - roblox.com\n",
        [(3, f"upstream.allowed_services: 'roblox.com' {NOT_SERVICE}")],
        id="service-name",
    ),
    pytest.param(
        "upstream:\n  allowed_services: [users, 5]\n",
        [(2, "upstream.allowed_services: expected a list of strings, got ['users', 5]")],
        id="service-list",
    ),
    pytest.param(
        "server:\n  host_suffix: 'proxy internal'\n",
        [
            (
                2,
                "server.host_suffix: expected a DNS suffix like 'roblox.proxy.internal', "
                "got 'proxy internal'",
            )
        ],
        id="host-suffix",
    ),
    pytest.param(
        "server:\n  port: 1\n  port: 2\n", [(3, "port: duplicate key (first at line 2)")],
        id="duplicate-key",
    ),
    pytest.param(
        "server:\n  port: 1\nserver:\n  host: x\n",
        [(3, "server: duplicate key (first at line 1)")],
        id="duplicate-section",
    ),
    pytest.param(
        "server:\n  port: 1\n\thost: x\n",
        [
            (
                3,
                "invalid YAML: while scanning for the next token, found character '\\t' that "
                "cannot start any token",
            )
        ],
        id="tab",
    ),
    pytest.param(
        "upstream:\n  allowed_services: [users,\nlogging:\n  level: INFO\n",
        [(4, "invalid YAML: while parsing a flow sequence at line 2, expected ',' or ']', but "
             "got ':'")],
        id="unclosed-bracket",
    ),
    pytest.param(
        "server: {port: 1\n",
        [(2, "invalid YAML: while parsing a flow mapping at line 1, expected ',' or '}', but "
             "got '<stream end>'")],
        id="unclosed-brace-at-end",
    ),
    pytest.param(
        "server:\n  port: 1\n---\nserver: {}\n",
        [(3, "invalid YAML: expected a single document in the stream at line 1, but found "
             "another document")],
        id="two-documents",
    ),
    pytest.param(
        "x: !!python/object:os.system {}\n",
        [(1, "invalid YAML: could not determine a constructor for the tag "
             "'tag:yaml.org,2002:python/object:os.system'")],
        id="python-tag",
    ),
    pytest.param("- server\n", [(1, "expected a mapping of sections")], id="top-list"),
    pytest.param("just text\n", [(1, "expected a mapping of sections")], id="top-scalar"),
    pytest.param(
        # every problem of the file at once, in file order
        """\
        server:
          port: eighty
          max_body_size: lots
        upstream:
          timeout: 10
        cache:
          redis:
            prefix: 5
        logging:
          format: xml
        """,
        [
            (2, "server.port: expected an integer, got 'eighty'"),
            (3, f"server.max_body_size: {SIZE}, got 'lots'"),
            (5, "upstream.timeout: expected a duration like '30s', '500ms' or '5m', got 10"),
            (8, "cache.redis.prefix: expected a string, got 5"),
            (10, "logging.format: expected one of json, text, got 'xml'"),
        ],
        id="every-problem-reported",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), FILE_ERRORS)
def test_file_errors(tmp_path: Path, text: str, expected: list[tuple[int, str]]) -> None:
    path = write(tmp_path, text)
    if not expected:
        load(path, env={})
        return
    assert problems(path) == [f"{path}:{line}: {message}" for line, message in expected]


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    assert problems(path) == [f"{path}:1: cannot read: No such file or directory"]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"server:\n  host: \xff\n")
    (message,) = problems(str(path))
    assert message.startswith(f"{path}:1: not UTF-8 text")


def test_file_and_env_problems_together(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: x\n")
    assert problems(path, {"BLOXPROXY_CACHE_NOPE": "1"}) == [
        "$BLOXPROXY_CACHE_NOPE: unknown configuration variable",
        f"{path}:2: server.port: expected an integer, got 'x'",
    ]


# --- ${VAR} ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("${BIND}", {"BIND": "0.0.0.0"}, "0.0.0.0"),
        ("${BIND:-10.0.0.1}", {}, "10.0.0.1"),
        ("${BIND:-10.0.0.1}", {"BIND": "10.0.0.2"}, "10.0.0.2"),
        ("${BIND:-}", {}, ""),
        ("'${A}.${B}'", {"A": "x", "B": "y"}, "x.y"),
        ("'pre-${A}-post'", {"A": "mid"}, "pre-mid-post"),
        ("'$A {A} $${A}'", {"A": "v"}, "$A {A} $v"),  # only ${NAME} is special
    ],
)
def test_env_substitution(tmp_path: Path, value: str, env: dict[str, str], expected: str) -> None:
    path = write(tmp_path, f"server:\n  host: {value}\n")
    assert load(path, env=env).server.host == expected


def test_env_substitution_in_nested_and_list_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        cache:
          redis:
            url: ${REDIS_URL}
        upstream:
          allowed_services: [users, "${EXTRA}"]
        """,
    )
    cfg = load(path, env={"REDIS_URL": "redis://r:6379/1", "EXTRA": "games"})
    assert cfg.cache.redis.url == "redis://r:6379/1"
    assert cfg.upstream.allowed_services == ("users", "games")


def test_missing_env_var_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  host: x\n  admin_token: ${NOPE}\n  host_suffix: ${ALSO}\n")
    assert problems(path) == [
        f"{path}:3: environment variable NOPE is not set",
        f"{path}:4: environment variable ALSO is not set",
    ]


# --- helpers of Config ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "service", "url"),
    [
        ({}, "users", "https://users.roblox.com"),
        ({}, "apis", "https://apis.roblox.com"),
        (
            {"BLOXPROXY_UPSTREAM_BASE_URL": "http://127.0.0.1:9000/{service}"},
            "games",
            "http://127.0.0.1:9000/games",
        ),
        (
            {
                "BLOXPROXY_UPSTREAM_BASE_URL": "http://127.0.0.1:9000/{service}",
                "BLOXPROXY_UPSTREAM_SERVICES": "{apis: 'http://127.0.0.1:9001/open-cloud/'}",
            },
            "apis",
            "http://127.0.0.1:9001/open-cloud",
        ),
        (
            {
                "BLOXPROXY_UPSTREAM_BASE_URL": "http://127.0.0.1:9000/{service}",
                "BLOXPROXY_UPSTREAM_SERVICES": "{apis: 'http://127.0.0.1:9001/open-cloud'}",
            },
            "users",
            "http://127.0.0.1:9000/users",
        ),
    ],
)
def test_base_url_for(env: dict[str, str], service: str, url: str) -> None:
    assert load(None, env=env).base_url_for(service) == url


def test_rule_paths_default_to_the_shipped_rules() -> None:
    assert load(None, env={}).rule_paths() == [ROOT / "rules"]
    assert config_mod.shipped_rules_dir() == ROOT / "rules"


def test_rule_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = write(
        tmp_path, "rules:\n  paths: [rules, ../common/extra.yaml, /abs/r]\n", "conf/c.yaml"
    )
    mine = [tmp_path / "conf" / "rules", tmp_path / "conf" / "../common/extra.yaml", Path("/abs/r")]
    cfg = load(path, env={})
    assert cfg.user_rule_paths() == mine
    assert cfg.rule_paths() == [ROOT / "rules", *mine]  # beside the shipped rules


def test_rule_paths_without_a_file_are_relative_to_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load(None, env={"BLOXPROXY_RULES_PATHS": "mine"})
    assert cfg.rule_paths() == [ROOT / "rules", tmp_path / "mine"]


def test_rules_shipped_false_leaves_only_the_users_rules(tmp_path: Path) -> None:
    path = write(tmp_path, "rules:\n  paths: [mine]\n  shipped: false\n")
    cfg = load(path, env={})
    assert cfg.shipped_rule_paths() == []
    assert cfg.rule_paths() == [tmp_path / "mine"]


# --- schema readers (the wording every config and rule error uses) --------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(0, 0.0), ("0", None), ("0s", 0.0), ("500ms", 0.5), ("30s", 30.0), ("1.5s", 1.5),
     ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0), (" 2 s ", 2.0), ("30", None),
     ("1w", None), ("1S", None), (False, None), (1.5, None), ("", None)],
)  # fmt: skip
def test_duration_reader(text: object, seconds: float | None) -> None:
    if seconds is None:
        with pytest.raises(ValueError, match="expected a duration"):
            schema.duration(text)
    else:
        assert schema.duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [(0, 0), (1024, 1024), ("1024", 1024), ("1B", 1), ("1KB", 1000), ("1KiB", 1024),
     ("2MB", 2_000_000), ("2MiB", 2 * 1024**2), ("1GB", 10**9), ("1GiB", 1024**3),
     ("1kb", None), ("1.5MiB", None), (-1, None), (True, None), ("MiB", None)],
)  # fmt: skip
def test_size_reader(text: object, size: int | None) -> None:
    if size is None:
        with pytest.raises(ValueError, match="expected a size"):
            schema.size(text)
    else:
        assert schema.size(text) == size


# --- the generated reference ----------------------------------------------------------------


def test_docs_config_md_is_the_generated_reference() -> None:
    # regenerate with: python -m bloxproxy.config > docs/CONFIG.md
    assert (ROOT / "docs" / "CONFIG.md").read_text(encoding="utf-8") == reference_markdown()


def test_reference_lists_every_key_and_env_var() -> None:
    text = reference_markdown()
    for var, path in config_mod._env_paths().items():
        assert f"| `{'.'.join(path)}` |" in text
        assert f"`{var}`" in text
