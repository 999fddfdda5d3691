"""What ``cache.redis.url`` names: one Redis, a Sentinel-watched primary, or a Cluster.

A pure description (no I/O, no redis-py): :func:`parse` reads the URL forms below into a
:class:`Single`, :class:`SentinelTopology` or :class:`ClusterTopology`, or raises
``ValueError`` saying what is wrong (the config reports it at the key's file and line).

* ``redis://[[user]:password@]host[:port][/db]``, ``rediss://…``, ``unix:///path.sock``:
  one Redis, the URL handed to redis-py as written (its query options included).
* ``redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/master[/db]``: the
  primary of ``master`` as the listed Sentinels (default port 26379) report it, following
  their failovers. The credentials are the data nodes'; the Sentinels are asked without.
* ``redis+cluster://[[user]:password@]host[:port][,host[:port]…]``: a Redis Cluster found
  from any of the listed nodes (default port 6379). A Cluster has only database 0.
* In a config file, a YAML list of ``host:port`` or ``redis://[[user]:password@]host:port``
  nodes is the Cluster form too (:func:`cluster_url_of`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote

__all__ = [
    "ClusterTopology",
    "Node",
    "SentinelTopology",
    "Single",
    "Topology",
    "cluster_url_of",
    "parse",
    "redacted",
    "url_of",
]

SENTINEL_PORT = 26379
REDIS_PORT = 6379
_HOST_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")
_V6_RE = re.compile(r"^[0-9A-Fa-f:.]+$")
_MASTER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Node:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Single:
    """One Redis; ``url`` as written (redis-py's ``from_url`` reads it)."""

    url: str


@dataclass(frozen=True, slots=True)
class SentinelTopology:
    sentinels: tuple[Node, ...]
    master: str
    db: int = 0
    username: str = ""
    password: str = ""


@dataclass(frozen=True, slots=True)
class ClusterTopology:
    nodes: tuple[Node, ...]
    username: str = ""
    password: str = ""


Topology = Single | SentinelTopology | ClusterTopology


def parse(url: str) -> Topology:
    """The topology ``url`` names (see the module docstring); ValueError if it names none."""
    if not isinstance(url, str) or not url:
        raise ValueError("expected a Redis URL")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ValueError("a Redis URL has no spaces or control characters")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"expected a URL like redis://host:6379/0, got {_shown(url)}")
    if scheme in ("redis", "rediss", "unix"):
        return Single(url)
    if scheme not in ("redis+sentinel", "redis+cluster"):
        raise ValueError(
            f"unknown scheme {scheme}:// (redis, rediss, unix, redis+sentinel, redis+cluster)"
        )
    netloc, path, query = _split(rest)
    if query:
        names = ", ".join(sorted(parse_qs(query, keep_blank_values=True))) or query
        raise ValueError(f"{scheme}:// URLs take no query options, got {names}")
    username, password, hosts = _userinfo(netloc)
    if scheme == "redis+sentinel":
        nodes = _nodes(hosts, SENTINEL_PORT)
        parts = [p for p in path.split("/") if p]
        if not parts:
            raise ValueError("redis+sentinel:// needs the master's name: …/mymaster[/db]")
        if len(parts) > 2:
            raise ValueError(f"expected /master[/db] after the Sentinels, got {_shown(path)}")
        master = unquote(parts[0])
        if not _MASTER_RE.match(master):
            raise ValueError(f"{_shown(master)} is not a master name (letters, digits, ._-)")
        db = _db(parts[1]) if len(parts) == 2 else 0
        return SentinelTopology(nodes, master, db, username, password)
    nodes = _nodes(hosts, REDIS_PORT)
    if path.strip("/") not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0, got {_shown(path)}")
    return ClusterTopology(nodes, username, password)


def cluster_url_of(nodes: object) -> str:
    """The ``redis+cluster://`` URL of a list of nodes (``host:port`` or
    ``redis://[[user]:password@]host:port``, credentials alike on all)."""
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
        raise ValueError("expected a Redis URL, or a non-empty list of cluster nodes")
    creds: set[str] = set()
    hosts: list[str] = []
    for item in nodes:
        text = item.strip()
        if "://" in text:
            scheme, _, rest = text.partition("://")
            if scheme.lower() != "redis":
                raise ValueError(f"a cluster node is host:port or redis://host:port, got {text!r}")
            netloc, path, query = _split(rest)
            if path.strip("/") not in ("", "0") or query:
                raise ValueError(f"a cluster node has no path or options, got {text!r}")
            user, _, host = netloc.rpartition("@")
            creds.add(user)
        else:
            host = text
        if "," in host or not host:
            raise ValueError(f"one node per list item, got {text!r}")
        hosts.append(host)
    if len(creds) > 1:
        raise ValueError("the cluster nodes name different credentials")
    user = creds.pop() if creds else ""
    url = "redis+cluster://" + (user + "@" if user else "") + ",".join(hosts)
    parse(url)  # the same checks as the URL form
    return url


def redacted(topology: Topology) -> str:
    """The topology for a log line, without its password."""
    if isinstance(topology, Single):
        scheme, sep, rest = topology.url.partition("://")
        netloc, _, tail = rest.partition("/")
        if "@" in netloc:
            netloc = "***@" + netloc.rpartition("@")[2]
        return f"{scheme}{sep}{netloc}" + (f"/{tail}" if tail else "")
    nodes = ",".join(str(n) for n in (_nodes_of(topology)))
    if isinstance(topology, SentinelTopology):
        return f"redis+sentinel://{nodes}/{topology.master}/{topology.db}"
    return f"redis+cluster://{nodes}"


def _nodes_of(topology: SentinelTopology | ClusterTopology) -> tuple[Node, ...]:
    return topology.sentinels if isinstance(topology, SentinelTopology) else topology.nodes


def _split(rest: str) -> tuple[str, str, str]:
    cut = len(rest)
    for mark in ("/", "?", "#"):
        at = rest.find(mark)
        if at >= 0:
            cut = min(cut, at)
    netloc, tail = rest[:cut], rest[cut:]
    if "#" in tail:
        raise ValueError("a Redis URL has no #fragment")
    path, _, query = tail.partition("?")
    return netloc, path, query


def _userinfo(netloc: str) -> tuple[str, str, str]:
    user, at, hosts = netloc.rpartition("@")
    if not at:
        return "", "", netloc
    name, colon, password = user.partition(":")
    if not colon:  # redis-py: "redis://secret@host" is a password without a user name
        name, password = "", name
    return unquote(name), unquote(password), hosts


def _nodes(hosts: str, default_port: int) -> tuple[Node, ...]:
    if not hosts:
        raise ValueError("expected at least one host[:port]")
    nodes: list[Node] = []
    for part in hosts.split(","):
        node = _node(part.strip(), default_port)
        if node in nodes:
            raise ValueError(f"{node} is listed twice")
        nodes.append(node)
    return tuple(nodes)


def _node(text: str, default_port: int) -> Node:
    if not text:
        raise ValueError("an empty host in the list (two commas, or a trailing one)")
    if text.startswith("["):
        host, close, tail = text[1:].partition("]")
        if not close or not _V6_RE.match(host) or (tail and not tail.startswith(":")):
            raise ValueError(f"{_shown(text)} is not a host[:port]")
        port_text = tail[1:] if tail else ""
    else:
        host, _, port_text = text.partition(":")
        if ":" in port_text:
            raise ValueError(f"{_shown(text)}: an IPv6 address goes in brackets, [::1]:6379")
        if not _HOST_RE.match(host):
            raise ValueError(f"{_shown(text)} is not a host[:port]")
    port = default_port
    if port_text or text.endswith(":"):
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{_shown(text)}: the port must be 1-65535")
        port = int(port_text)
    return Node(host, port)


def _db(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"the database must be a number, got {_shown(text)}")
    return int(text)


def _shown(text: str, limit: int = 60) -> str:
    # Never echo a password: what is shown is cut before any "@".
    if "@" in text:
        text = "…@" + text.rpartition("@")[2]
    return repr(text if len(text) <= limit else text[:limit] + "…")


def url_of(node: Node, username: str = "", password: str = "", db: int = 0) -> str:
    """A ``redis://`` URL of one node (for the pipelined GET of a Sentinel's primary)."""
    auth = ""
    if password or username:
        auth = f"{quote(username, safe='')}:{quote(password, safe='')}@"
    host = f"[{node.host}]" if ":" in node.host else node.host
    return f"redis://{auth}{host}:{node.port}/{db}"
