"""The Redis clients of one :mod:`redis_url` topology, made in one place (``app.py`` asks).

* :class:`~.redis_url.Single`: a ``redis.asyncio.Redis`` on a ``BlockingConnectionPool``
  (a plain redis-py 8 ``ConnectionPool`` raises ``MaxConnectionsError`` when exhausted
  instead of waiting).
* :class:`~.redis_url.SentinelTopology`: redis-py's ``Sentinel``; the clients are its
  ``master_for`` clients on a blocking Sentinel pool, so every new connection goes to the
  primary the Sentinels name now, and connections to a primary that went away fail and are
  replaced by ones to the promoted replica. :meth:`RedisConnections.primary` tells the
  pipelined GET where the primary is.
* :class:`~.redis_url.ClusterTopology`: redis-py's ``RedisCluster`` (slot-aware: each key's
  command goes to its slot's primary, multi-key commands are split per slot) with
  ``require_full_coverage`` off, so the slots of the nodes still up keep working while one
  is down. Pub/sub is a plain connection to one node (Redis Cluster delivers a ``PUBLISH``
  to the subscribers of every node), moved to the next known node when it fails.

No client retries a command (``Retry(NoBackoff(), 0)``): a request must not stall on a dead
Redis, it degrades to L1 (the cluster client retries once, after refreshing its slot map,
so that a moved slot costs one round trip, not an outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import MaxConnectionsError, NoScriptError, RedisClusterException, RedisError

from .redis_url import ClusterTopology, Node, SentinelTopology, Single, Topology, url_of

__all__ = ["REDIS_ERRORS", "RedisClient", "RedisConnections", "SlotScript", "connect", "describe"]

log = logging.getLogger("bloxproxy.cache")

RedisClient = aioredis.Redis | RedisCluster
# What a failing Redis raises: redis-py's errors (a Cluster's SlotNotCoveredError and
# RedisClusterUnreachableError are not RedisErrors) and socket errors (TimeoutError is one).
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)
_WATCH_ERRORS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, TimeoutError)


def describe(exc: BaseException) -> str:
    """``exc`` for a log line: redis-py's ``MasterNotFoundError`` text carries the repr of
    a whole client (a few hundred characters); the rest as they are."""
    text = str(exc)
    if isinstance(exc, MasterNotFoundError):
        head, _, rest = text.partition(" : ")
        cause = rest.rpartition(" - ")[2] if " - " in rest else ""
        return f"{head} ({cause})" if cause else head
    return text


class SlotScript:
    """A Lua script run where its keys are: ``EVALSHA``, and on ``NOSCRIPT`` an ``EVAL``
    (which caches it on that node). redis-py's own ``Script`` answers ``NOSCRIPT`` with a
    ``SCRIPT LOAD`` that a Cluster client sends to every primary, so with one primary down
    the first call of a script on any node would fail."""

    __slots__ = ("_client", "_sha", "_text")

    def __init__(self, client: RedisClient, text: str) -> None:
        self._client = client
        self._text = text
        self._sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(
        self, keys: Sequence[str], args: Sequence[str | int | float | bytes] = ()
    ) -> Any:
        client = self._client
        try:
            return await client.evalsha(self._sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self._text, len(keys), *keys, *args)


class BoundedCluster(RedisCluster):
    """redis-py's ``RedisCluster`` with at most ``max_connections`` commands in flight, the
    rest waiting their turn (up to ``wait``): its nodes' pools raise ``MaxConnectionsError``
    when exhausted, which would count as the node failing. A command, or a multi-slot one
    (``MGET``/``UNLINK`` split per slot, one pipeline), takes one turn and at most one
    connection per node, so no node's pool runs out."""

    def __init__(self, *args: Any, wait: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._turns = asyncio.Semaphore(int(kwargs.get("max_connections", 100)))
        self._wait = wait

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._turn():
            return await super().execute_command(*args, **kwargs)

    async def _execute_pipeline_by_slot(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        async with self._turn():
            return await super()._execute_pipeline_by_slot(*args, **kwargs)

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._wait):
                await self._turns.acquire()
        except TimeoutError:
            raise MaxConnectionsError(f"no free connection within {self._wait:g}s") from None
        try:
            yield
        finally:
            self._turns.release()


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool that waits for a free connection (up to ``timeout``)
    instead of raising ``MaxConnectionsError``."""


def _no_maint() -> dict[str, Any]:
    extra: dict[str, Any] = {}
    with contextlib.suppress(ImportError):  # redis-py >= 7
        from redis.maint_notifications import MaintNotificationsConfig

        # "auto" (the default) turns off the pool's dead-connection check, so the first
        # command after a Redis restart would fail on a stale pooled connection.
        extra["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    return extra


def _timeouts(timeout: float | None) -> dict[str, Any]:
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout or 2.0,
        "health_check_interval": 10 if timeout is None else 0,
    }


@dataclass(eq=False)
class RedisConnections:
    """The clients of one topology: ``client`` for commands (each bounded by the command
    timeout), ``listener`` for pub/sub (no read timeout; on a Cluster the command client,
    whose node list :meth:`pubsub` uses); :meth:`pubsub` a fresh subscription;
    :meth:`aclose` closes all.

    With Sentinel, :meth:`start` watches the primary (every ``recheck`` seconds): redis-py
    asks the Sentinels only for a new connection, so after a switchover whose old primary
    stays up (and a master until the Sentinels reconfigure it, up to ~10 s later) the
    pooled and the pub/sub connections would keep writing and listening there. When the
    Sentinels name another primary, both pools are disconnected: every next command and
    the listener's next subscription go to the new one (the listener, having lost its
    subscription, drops L1 as after any reconnect)."""

    topology: Topology
    client: RedisClient
    listener: RedisClient
    sentinel: Sentinel | None = None
    recheck: float = 1.0
    _node_clients: dict[Node, aioredis.Redis] = field(default_factory=dict)
    _turn: itertools.count[int] = field(default_factory=itertools.count)
    _watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Watch the Sentinels' primary (nothing to do for the other topologies)."""
        if self.sentinel is not None and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch_primary(), name="bloxproxy-sentinel-watch"
            )

    async def _watch_primary(self) -> None:
        assert self.sentinel is not None and isinstance(self.topology, SentinelTopology)
        known: tuple[str, int] | None = None
        while True:
            try:
                async with asyncio.timeout(2.0):
                    host, port = await self.sentinel.discover_master(self.topology.master)
            except _WATCH_ERRORS:
                await asyncio.sleep(self.recheck)
                continue  # no answer: the connections' own failures tell the story
            now = (str(host), int(port))
            if known is not None and now != known:
                log.warning(
                    "the Sentinels name %s:%d the primary of %s now; reconnecting",
                    *now,
                    self.topology.master,
                )
                for c in (self.client, self.listener):
                    if isinstance(c, aioredis.Redis):
                        with contextlib.suppress(*REDIS_ERRORS):
                            await c.connection_pool.disconnect()
            known = now
            await asyncio.sleep(self.recheck)

    async def pubsub(self) -> PubSub:
        """A pub/sub on the listener (on a Cluster: a connection to the next node, in
        turn, so a node that is down is not tried forever)."""
        listener = self.listener
        if isinstance(listener, aioredis.Redis):
            return listener.pubsub()
        assert isinstance(self.topology, ClusterTopology)
        # The nodes the command client knows (the listener is that client: it subscribes
        # through a plain connection of its own per node).
        nodes = [Node(n.host, int(n.port)) for n in listener.get_nodes()]
        if not nodes:
            nodes = list(self.topology.nodes)
        node = nodes[next(self._turn) % len(nodes)]
        client = self._node_clients.get(node)
        if client is None:
            client = self._node_clients[node] = aioredis.Redis(
                host=node.host,
                port=node.port,
                username=self.topology.username or None,
                password=self.topology.password or None,
                retry=Retry(NoBackoff(), 0),
                **_timeouts(None),
                **_no_maint(),
            )
        return client.pubsub()

    async def primary(self) -> str | None:
        """A ``redis://`` URL of the node the pipelined GET should read: the one Redis, the
        Sentinels' primary now (asked each time: after a failover, the promoted replica);
        None on a Cluster (its GET is a ClusterGet, per node). Raises redis-py's
        errors (``MasterNotFoundError``) when the Sentinels know no primary."""
        topology = self.topology
        if isinstance(topology, Single):
            return topology.url
        if isinstance(topology, SentinelTopology):
            assert self.sentinel is not None
            host, port = await self.sentinel.discover_master(topology.master)
            node = Node(str(host), int(port))
            return url_of(node, topology.username, topology.password, topology.db)
        return None

    async def publish(self, channel: str, message: bytes) -> None:
        """PUBLISH with the command client (on a Cluster: to the first primary that takes
        it; every node's subscribers get it). Raises redis-py's errors."""
        client = self.client
        if isinstance(client, aioredis.Redis):
            await client.publish(channel, message)
            return
        if not client.get_nodes():
            await client.initialize()
        nodes = client.get_primaries()
        for i, node in enumerate(nodes):
            try:
                await client.publish(channel, message, target_nodes=node)
                return
            except REDIS_ERRORS:
                if i == len(nodes) - 1:
                    raise

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.wait([self._watcher])
        clients = [self.client]
        if self.listener is not self.client:
            clients.append(self.listener)
        for c in (*clients, *self._node_clients.values()):
            await c.aclose()
            if isinstance(c, aioredis.Redis):
                # The pool was handed to the client, which therefore does not own it.
                await c.connection_pool.disconnect()
        if self.sentinel is not None:
            await self.sentinel.aclose()


def connect(topology: Topology, max_connections: int, timeout: float | None) -> RedisConnections:
    """The clients of ``topology`` (no I/O yet: each connects on first use)."""
    if isinstance(topology, Single):
        return RedisConnections(
            topology,
            _single(topology.url, max_connections, timeout),
            _single(topology.url, 2, None),
        )
    if isinstance(topology, SentinelTopology):
        sentinel = Sentinel(
            [(n.host, n.port) for n in topology.sentinels],
            # Asking the Sentinels: bounded, once (redis-py tries the next Sentinel itself).
            sentinel_kwargs={
                "socket_timeout": timeout or 2.0,
                "socket_connect_timeout": timeout or 2.0,
                "retry": Retry(NoBackoff(), 0),
            },
        )
        return RedisConnections(
            topology,
            _sentinel_client(sentinel, topology, max_connections, timeout),
            _sentinel_client(sentinel, topology, 2, None),
            sentinel,
        )
    cluster = _cluster(topology, max_connections, timeout)
    return RedisConnections(topology, cluster, cluster)


def _single(url: str, max_connections: int, timeout: float | None) -> aioredis.Redis:
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout or 5.0,
        **_timeouts(timeout),
        **_no_maint(),
    )
    return aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


def _sentinel_client(
    sentinel: Sentinel, topology: SentinelTopology, max_connections: int, timeout: float | None
) -> aioredis.Redis:
    client: aioredis.Redis = sentinel.master_for(
        topology.master,
        redis_class=aioredis.Redis,
        connection_pool_class=BlockingSentinelPool,
        max_connections=max_connections,
        timeout=timeout or 5.0,  # waiting for a pooled connection
        db=topology.db,
        username=topology.username or None,
        password=topology.password or None,
        retry=Retry(NoBackoff(), 0),
        **_timeouts(timeout),
        **_no_maint(),
    )
    return client


def _cluster(
    topology: ClusterTopology, max_connections: int, timeout: float | None
) -> RedisCluster:
    return BoundedCluster(
        wait=timeout or 5.0,
        startup_nodes=[ClusterNode(n.host, n.port) for n in topology.nodes],
        require_full_coverage=False,
        max_connections=max_connections,
        retry=Retry(NoBackoff(), 1),
        username=topology.username or None,
        password=topology.password or None,
        socket_timeout=timeout,
        socket_connect_timeout=timeout or 2.0,
        **_no_maint(),
    )
