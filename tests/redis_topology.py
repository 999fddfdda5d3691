"""A real Sentinel setup and a real Redis Cluster for tests, from the one redis-server binary.

* :class:`SentinelSetup`: a primary, a replica of it and one Sentinel watching them (quorum
  1, ``down-after-milliseconds`` 300, so a killed primary is replaced within ~2 s).
* :class:`ClusterSetup`: three cluster-enabled primaries (no replicas), the 16384 slots
  split between them with ``CLUSTER ADDSLOTS`` and joined with ``CLUSTER MEET`` (redis 6.2
  has no ADDSLOTSRANGE, and ``redis-cli --cluster create`` is not needed), with
  ``cluster-require-full-coverage no``, so the slots of the nodes up keep answering while
  one is down, and ``cluster-node-timeout`` 500 ms.

Both start in well under a second or two and stop every process they started.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

import redis

from tests.redis_server import RedisServer, RedisServerError

__all__ = ["MASTER", "ClusterSetup", "SentinelSetup"]

MASTER = "mymaster"
SLOTS = 16384


def _wait(what: str, condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RedisServerError(f"{what}: not within {within:g}s")
        time.sleep(0.02)


def _client(server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2.0)


class _Processes:
    """Servers started together: ``with`` starts them all (stopping those started if one
    fails) and stops them all."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SentinelSetup(_Processes):
    """A primary, one replica, one Sentinel (see the module docstring)."""

    def __init__(self) -> None:
        self.primary = RedisServer()
        self.replica = RedisServer()
        self.sentinel: RedisServer | None = None

    @property
    def url(self) -> str:
        assert self.sentinel is not None
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{MASTER}/0"

    def start(self) -> None:
        self.primary.start()
        self.replica.args = ("--replicaof", "127.0.0.1", str(self.primary.port))
        self.replica.start()
        with _client(self.replica) as r:
            _wait("replica in sync", lambda: r.info("replication")["master_link_status"] == "up")
        self.sentinel = RedisServer(
            config=(
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 1\n"
                f"sentinel down-after-milliseconds {MASTER} 300\n"
                f"sentinel failover-timeout {MASTER} 2000\n"
            ),
            args=("--sentinel",),
        )
        self.sentinel.start()
        with _client(self.sentinel) as s:
            _wait("sentinel sees the replica", lambda: _replica_ready(s))

    def primary_port(self) -> int:
        """The port of the primary the Sentinel names now."""
        assert self.sentinel is not None
        with _client(self.sentinel) as s:
            _host, port = s.sentinel_get_master_addr_by_name(MASTER)
            return int(port)

    def sentinel_port(self) -> int:
        assert self.sentinel is not None
        return self.sentinel.port

    def kill_primary_and_wait_for_promotion(self, within: float = 10.0) -> float:
        """SIGKILL the primary; wait until the Sentinel names the replica and the replica
        says it is a primary. How long that took (seconds)."""
        start = time.monotonic()
        self.primary.kill()
        self.wait_for_primary(self.replica.port, within)
        return time.monotonic() - start

    def wait_for_primary(self, port: int, within: float = 10.0) -> None:
        """Until the Sentinel names the server on ``port`` and it says it is a primary."""
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0) as r:
            _wait("promotion", lambda: self.primary_port() == port, within)
            _wait("promoted is primary", lambda: r.info("replication")["role"] == "master")

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.primary):
            if server is not None:
                server.stop()


class ClusterSetup(_Processes):
    """Three primaries sharing the slots (see the module docstring)."""

    def __init__(self, size: int = 3) -> None:
        args = (
            "--cluster-enabled", "yes",
            "--cluster-node-timeout", "500",
            "--cluster-require-full-coverage", "no",
        )  # fmt: skip
        self.nodes = [RedisServer(args=args) for _ in range(size)]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            _start_cluster_node(node)
        clients = [_client(n) for n in self.nodes]
        try:
            share = SLOTS // len(self.nodes)
            for i, c in enumerate(clients):
                end = SLOTS if i == len(clients) - 1 else (i + 1) * share
                c.execute_command("CLUSTER ADDSLOTS", *range(i * share, end))
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port)
            for c in clients:
                _wait("cluster_state:ok", lambda c=c: _cluster_ok(c, len(clients)))
        finally:
            for c in clients:
                c.close()

    def node_of(self, key: str) -> RedisServer:
        """The node holding ``key``'s slot."""
        with _client(self.nodes[0]) as c:
            slot = int(c.execute_command("CLUSTER KEYSLOT", key))
        share = SLOTS // len(self.nodes)
        return self.nodes[min(slot // share, len(self.nodes) - 1)]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _replica_ready(sentinel: redis.Redis) -> bool:
    """The Sentinel has a fresh INFO from the replica (else it finds no replica to promote:
    NOGOODSLAVE)."""
    replicas = sentinel.sentinel_slaves(MASTER)
    return bool(replicas) and all(
        not r["is_disconnected"]
        and r["master-link-status"] == "ok"
        and int(r["info-refresh"]) < 2000
        for r in replicas
    )


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start_cluster_node(node: RedisServer) -> None:
    """Start on a port with its cluster bus port (port + 10000) free too, both <= 65535."""
    for _ in range(50):
        port = random.randint(20000, 45000)
        if _bindable(port) and _bindable(port + 10000):
            try:
                node.start_on(port)
                return
            except RedisServerError as exc:
                if "already in use" not in str(exc):
                    raise
    raise RedisServerError("no free port pair for a cluster node")


def _cluster_ok(client: redis.Redis, size: int) -> bool:
    fields = client.cluster("INFO")  # redis-py parses it into a dict of strings
    return (
        fields.get("cluster_state") == "ok"
        and fields.get("cluster_known_nodes") == str(size)
        and fields.get("cluster_slots_assigned") == str(SLOTS)
    )
