"""``cache.redis.url``'s forms (bloxproxy.redis_url), as a table; hostile ones as config
errors at their file and line, never echoing a password."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio.sentinel import MasterNotFoundError

from bloxproxy.config import load
from bloxproxy.errors import ConfigError
from bloxproxy.redis_url import (
    ClusterTopology,
    Node,
    SentinelTopology,
    Single,
    Topology,
    cluster_url_of,
    parse,
    redacted,
    url_of,
)
from bloxproxy.redisconn import describe

N = Node

GOOD: list[tuple[str, Topology]] = [
    ("redis://127.0.0.1:6379/0", Single("redis://127.0.0.1:6379/0")),
    ("rediss://:pw@cache.internal:6380/2", Single("rediss://:pw@cache.internal:6380/2")),
    ("unix:///run/redis.sock?db=1", Single("unix:///run/redis.sock?db=1")),
    ("REDIS://h", Single("REDIS://h")),
    (
        "redis+sentinel://10.0.0.1,10.0.0.2:26380,[::1]/mymaster",
        SentinelTopology((N("10.0.0.1", 26379), N("10.0.0.2", 26380), N("::1", 26379)), "mymaster"),
    ),
    (
        "redis+sentinel://app:s%40cret@s1:5000/cache.main/3",
        SentinelTopology((N("s1", 5000),), "cache.main", 3, "app", "s@cret"),
    ),
    (
        "redis+sentinel://pw@s1/m/",  # a password without a user name, as in redis-py
        SentinelTopology((N("s1", 26379),), "m", 0, "", "pw"),
    ),
    (
        "redis+cluster://n1:7000,n2:7001,n3",
        ClusterTopology((N("n1", 7000), N("n2", 7001), N("n3", 6379))),
    ),
    ("redis+cluster://:pw@n1:7000/0", ClusterTopology((N("n1", 7000),), "", "pw")),
    ("redis+cluster://u:p@n1/", ClusterTopology((N("n1", 6379),), "u", "p")),
]


@pytest.mark.parametrize(("url", "expected"), GOOD, ids=[u for u, _ in GOOD])
def test_good_urls(url: str, expected: Topology) -> None:
    assert parse(url) == expected


BAD: list[tuple[str, str]] = [
    ("", "expected a Redis URL"),
    ("127.0.0.1:6379", "expected a URL like redis://host:6379/0"),
    ("http://h:6379", "unknown scheme http://"),
    ("redis+sentinel://s1", "needs the master's name"),
    ("redis+sentinel://s1/", "needs the master's name"),
    ("redis+sentinel://s1/m/0/x", "expected /master[/db]"),
    ("redis+sentinel://s1/m/x", "the database must be a number"),
    ("redis+sentinel://s1/m/99999999", "the database must be a number"),
    ("redis+sentinel://s1/m%20x", "is not a master name"),
    ("redis+sentinel:///m", "expected at least one host[:port]"),
    ("redis+sentinel://s1,,s2/m", "an empty host in the list"),
    ("redis+sentinel://s1,/m", "an empty host in the list"),
    ("redis+sentinel://s1:0/m", "the port must be 1-65535"),
    ("redis+sentinel://s1:65536/m", "the port must be 1-65535"),
    ("redis+sentinel://s1:/m", "the port must be 1-65535"),
    ("redis+sentinel://s1:x/m", "the port must be 1-65535"),
    ("redis+sentinel://s1,s1:26379/m", "listed twice"),
    ("redis+sentinel://s1/m?db=1", "take no query options, got db"),
    ("redis+sentinel://s1/m#x", "no #fragment"),
    ("redis+sentinel://::1/m", "an IPv6 address goes in brackets"),
    ("redis+sentinel://[::1/m", "is not a host[:port]"),
    ("redis+sentinel://[zz]:1/m", "is not a host[:port]"),
    ("redis+sentinel://h$t/m", "is not a host[:port]"),
    ("redis+sentinel://s 1/m", "no spaces or control characters"),
    ("redis+sentinel://s1/m\r\nFLUSHALL", "no spaces or control characters"),
    ("redis+cluster://n1/1", "only database 0"),
    ("redis+cluster://n1?ssl=true", "take no query options, got ssl"),
    ("redis+cluster://", "expected at least one host[:port]"),
    ("redis+cluster://" + "a" * 300, "is not a host[:port]"),
]


@pytest.mark.parametrize(("url", "message"), BAD, ids=[u[:40] for u, _ in BAD])
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError) as exc_info:
        parse(url)
    assert message in str(exc_info.value)


def test_errors_never_show_the_password() -> None:
    for url in ("redis+sentinel://u:hunter2@s1:x/m", "redis+cluster://:hunter2@n1/5"):
        with pytest.raises(ValueError) as exc_info:
            parse(url)
        assert "hunter2" not in str(exc_info.value)
    assert "hunter2" not in redacted(parse("redis://:hunter2@h:1/0"))
    assert "hunter2" not in redacted(parse("redis+sentinel://:hunter2@s1/m"))
    assert redacted(parse("redis+cluster://:pw@n1,n2:7")) == "redis+cluster://n1:6379,n2:7"


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        (["n1:7000", "n2:7001"], "redis+cluster://n1:7000,n2:7001"),
        (["redis://:pw@n1:7000", "redis://:pw@n2:7001/0"], "redis+cluster://:pw@n1:7000,n2:7001"),
    ],
)
def test_a_list_of_nodes_is_a_cluster(nodes: list[str], expected: str) -> None:
    assert cluster_url_of(nodes) == expected
    assert isinstance(parse(expected), ClusterTopology)


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ([], "non-empty list"),
        ([1], "non-empty list"),
        (["rediss://n1:1"], "host:port or redis://host:port"),
        (["redis://n1:1/2"], "no path or options"),
        (["n1:1,n2:2"], "one node per list item"),
        (["redis://:a@n1:1", "redis://:b@n2:2"], "different credentials"),
        (["n1:1", "n1:1"], "listed twice"),
        (["n1:99999"], "the port must be 1-65535"),
    ],
)
def test_bad_node_lists(nodes: list[object], message: str) -> None:
    with pytest.raises(ValueError) as exc_info:
        cluster_url_of(nodes)
    assert message in str(exc_info.value)


def test_url_of_a_node() -> None:
    assert url_of(N("::1", 7000), "u", "p@ss", 2) == "redis://u:p%40ss@[::1]:7000/2"
    assert url_of(N("h", 1)) == "redis://h:1/0"


# -- in a config file: at the key's file and line -------------------------------------------


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc_info:
        load(str(path), env={})
    return [str(p) for p in exc_info.value.problems]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("redis+sentinel://s1", "needs the master's name"),
        ("redis+cluster://n1/3", "only database 0"),
        ("'memcached://h'", "unknown scheme memcached://"),
        ("[n1:1, 5]", "non-empty list"),
        ("{a: 1}", "expected a string"),
    ],
)
def test_config_errors_at_file_and_line(tmp_path: Path, value: str, message: str) -> None:
    text = f"server:\n  port: 8080\ncache:\n  redis:\n    url: {value}\n"
    (problem,) = _problems(tmp_path, text)
    assert problem.startswith(f"{tmp_path / 'c.yaml'}:5: cache.redis.url: "), problem
    assert message in problem


def test_config_takes_each_form(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cache:\n  redis:\n    url: [n1:7000, 'redis://n2:7001']\n")
    assert load(str(path), env={}).cache.redis.url == "redis+cluster://n1:7000,n2:7001"
    env = {"BLOXPROXY_CACHE_REDIS_URL": "redis+sentinel://s1,s2/mymaster/1"}
    assert load(None, env=env).cache.redis.url == "redis+sentinel://s1,s2/mymaster/1"
    with pytest.raises(ConfigError) as exc_info:
        load(None, env={"BLOXPROXY_CACHE_REDIS_URL": "redis+sentinel://s1"})
    assert "needs the master's name" in str(exc_info.value.problems[0])


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (
            MasterNotFoundError(
                "No master found for 'm' : <redis.asyncio.client.Redis(<ConnectionPool("
                "<Connection(host=127.0.0.1,port=1,password=<REDACTED>)>)>)> - "
                "network:ConnectionError: Error 111 connecting to 127.0.0.1:1."
            ),
            "No master found for 'm' (network:ConnectionError: Error 111 connecting to "
            "127.0.0.1:1.)",
        ),
        (MasterNotFoundError("No master found for 'm'"), "No master found for 'm'"),
        (ConnectionError("Error 111"), "Error 111"),
    ],
)
def test_log_lines_leave_out_redis_pys_client_repr(exc: Exception, text: str) -> None:
    assert describe(exc) == text
