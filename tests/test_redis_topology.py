"""The shared cache, limits, purges and invalidations on one Redis, on Sentinel and on a
Redis Cluster: real processes from the one redis-server binary (tests/redis_topology.py),
the clients made by the app's own factory (bloxproxy.redisconn).

The store's contract runs on all three; on the Cluster, the keys really are spread over
its three primaries (so every multi-key step is seen to work per slot). The failover
tests kill a Sentinel's primary and a Cluster node under load (test_redis_failover.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from bloxproxy.cache import decide
from bloxproxy.cache.entry import Entry
from bloxproxy.cache.redis_store import RedisStore
from bloxproxy.cache.resp import ClusterGet, PipelinedGet
from bloxproxy.ratelimit import RedisBuckets
from bloxproxy.redis_url import ClusterTopology, SentinelTopology, Single, parse
from bloxproxy.redisconn import RedisConnections, connect
from bloxproxy.upstream.budget import Tuning
from bloxproxy.upstream.shared import SharedBudgets
from tests.conftest import ProxyFactory, fetcher_of
from tests.redis_topology import ClusterSetup
from tests.test_cache import TOKEN, get, purge, settle

NOW = 1_800_000_000.0
TOPOLOGIES = ["single", "sentinel", "cluster"]


@pytest.fixture(params=TOPOLOGIES)
def topo_url(request: pytest.FixtureRequest) -> str:
    name = {"single": "redis_url", "sentinel": "sentinel_url", "cluster": "cluster_url"}
    url: str = request.getfixturevalue(name[request.param])
    return url


@pytest.fixture
async def conns(topo_url: str) -> AsyncIterator[RedisConnections]:
    c = connect(parse(topo_url), 16, 2.0)
    try:
        yield c
    finally:
        await c.aclose()


async def getter_of(c: RedisConnections) -> PipelinedGet | ClusterGet:
    """The pipelined GET the app would use."""
    if isinstance(c.topology, Single):
        return PipelinedGet(c.topology.url, 2.0)
    if isinstance(c.topology, SentinelTopology):
        return PipelinedGet("redis://", 2.0, resolve=c.primary)
    assert isinstance(c.client, RedisCluster)
    return ClusterGet(c.client, 2.0)


def test_the_factory_builds_the_right_client(redis_url: str, cluster_url: str) -> None:
    assert isinstance(connect(parse(redis_url), 4, 1.0).client, aioredis.Redis)
    cluster = connect(parse(cluster_url), 4, 1.0)
    assert isinstance(cluster.client, RedisCluster) and cluster.listener is cluster.client


async def test_store_contract(conns: RedisConnections) -> None:
    """Get/set (through the pipelined GET where the app uses one), tags, a hard and a soft
    tag purge, a prefix purge and clear: the same answers on every topology."""
    getter = await getter_of(conns)
    store = RedisStore(conns.client, "t:", lambda: NOW, getter=getter, batch_size=7)
    try:
        keys = [f"GET users/v1/users/{i}" for i in range(40)]
        for i, key in enumerate(keys):
            tags = ("user:all",) + (("user:odd",) if i % 2 else ())
            await store.set(key, Entry(200, (), b"v%d" % i, NOW, 600, 60), tags)
        await store.set("GET other", Entry(200, (), b"o", NOW, 600))
        assert [(await store.get(k)) for k in keys[:3]] == [
            Entry(200, (), b"v%d" % i, NOW, 600, 60) for i in range(3)
        ]
        assert await store.get("GET absent") is None
        if isinstance(conns.client, RedisCluster):
            spread = {conns.client.get_node_from_key("t:" + k).name for k in keys}
            assert len(spread) == 3  # entries on every primary: the purges work per slot
        # hard purge of the odd ones, across slots
        assert await store.delete_tag("user:odd") == 20
        assert [await store.get(k) is None for k in keys[:4]] == [False, True, False, True]
        assert await store.delete_tag("user:odd") == 0  # the set went with them
        # soft purge of the rest: made stale, not gone
        assert await store.soften_tag("user:all", lambda e: decide.marked_stale(e, NOW)) == 20
        softened = await store.get(keys[0])
        assert softened is not None and softened.body == b"v0"
        assert decide.marked_stale(softened, NOW) is None  # already stale
        # prefix purge scans every primary
        assert await store.delete_prefix("GET users/") == 20
        assert await store.get(keys[0]) is None
        assert await store.get("GET other") is not None
        assert await store.clear() >= 1
        assert await store.get("GET other") is None
    finally:
        await getter.aclose()


async def test_limits_and_budgets_touch_one_slot_each(conns: RedisConnections) -> None:
    """The client buckets and the shared upstream budgets run their scripts on every
    topology (on a Cluster a script whose keys crossed slots would fail with CROSSSLOT)."""
    buckets = RedisBuckets(conns.client, "t:rl:client:")
    first = await buckets.take("1.2.3.4", 1.0, 2)
    assert first.allowed
    assert (await buckets.take("1.2.3.4", 1.0, 2)).allowed
    assert not (await buckets.take("1.2.3.4", 1.0, 2)).allowed
    budgets = SharedBudgets(conns.client, "t:", "eu-1")
    tuning = Tuning(ceiling=5.0, floor=1.0)
    slots = [await budgets.take(scope, tuning, now=NOW) for scope in ("users", "games")]
    assert all(s.allowed for s in slots)
    rate, _hold = await budgets.on_429("users", tuning, slots[0].gen, 2.0, now=NOW)
    assert rate < 5.0
    assert (await budgets.state("users"))["r"] == rate
    assert (await budgets.state("games"))["r"] == 5.0


async def test_invalidations_reach_the_other_replica(conns: RedisConnections) -> None:
    """A PUBLISH through the factory's client reaches a subscription made by it (on a
    Cluster: a plain connection to one node; the Cluster delivers it there)."""
    pubsub = await conns.pubsub()
    try:
        await pubsub.subscribe("t:invalidate")
        assert (await pubsub.get_message(timeout=2.0) or {}).get("type") == "subscribe"
        await conns.publish("t:invalidate", b"hello")
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
        assert msg is not None and msg["data"] == b"hello"
    finally:
        await pubsub.aclose()


async def test_the_cluster_subscription_moves_on_to_the_next_node(cluster_url: str) -> None:
    c = connect(parse(cluster_url), 4, 2.0)
    try:
        assert isinstance(c.topology, ClusterTopology)
        await c.client.ping()  # the node list comes from the client
        ports = []
        for _ in range(3):
            pubsub = await c.pubsub()
            await pubsub.subscribe("t:x")
            assert pubsub.connection is not None
            ports.append(pubsub.connection.port)
            await pubsub.aclose()
        assert sorted(ports) == sorted(n.port for n in c.topology.nodes)
    finally:
        await c.aclose()


# -- the app on each topology: two replicas share L2, purges reach both ------------------------


async def test_the_app_shares_l2_and_purges_on_each_topology(
    make_proxy: ProxyFactory, topo_url: str
) -> None:
    env = {"BLOXPROXY_CACHE_REDIS_URL": topo_url, "BLOXPROXY_SERVER_ADMIN_TOKEN": TOKEN}
    a, b = await make_proxy(**env), await make_proxy(**env)
    for client in (a, b):
        shared = fetcher_of(client).shared
        assert shared is not None
        await asyncio.wait_for(shared.listening.wait(), 5.0)
    paths = [f"/v1/users/{i}" for i in range(1, 13)]
    for path in paths:
        assert (await get(a, path)).headers["X-Cache"] == "MISS"
    await settle(a)
    for path in paths:  # L2 fills B's L1
        assert (await get(b, path)).headers["X-Cache"] == "HIT"
    assert (await get(b, paths[0])).headers["X-Cache"] == "HIT"
    # a purge by tag on A: gone from L2 and from B's L1 (the invalidation event)
    resp = await purge(a, {"tag": "user:1"})
    assert resp.status == 200, resp.body
    for _ in range(200):
        if (await get(b, paths[0])).headers["X-Cache"] == "MISS":
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the purge never reached replica B")
    # a route purge (prefix) reaches every primary and replica B
    resp = await purge(a, {"prefix": "GET users/v1/users/"})
    assert resp.status == 200, resp.body
    assert b"warning" not in resp.body
    await settle(b)
    for _ in range(200):
        if (await get(b, paths[5])).headers["X-Cache"] == "MISS":
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the prefix purge never reached replica B")


def test_cluster_nodes_really_split_the_slots(redis_cluster: ClusterSetup) -> None:
    owners = {redis_cluster.node_of(f"k{i}").port for i in range(30)}
    assert owners == {n.port for n in redis_cluster.nodes}
    with redis.Redis(port=redis_cluster.nodes[0].port) as c:
        assert c.cluster("INFO")["cluster_state"] == "ok"


async def test_scripts_are_loaded_again_where_their_keys_are(conns: RedisConnections) -> None:
    """After SCRIPT FLUSH (a restarted node forgets its scripts) every script still runs:
    EVALSHA's NOSCRIPT is answered with an EVAL on the key's own node (redis-py's Script
    would SCRIPT LOAD on every primary, and fail while one is down)."""
    store = RedisStore(conns.client, "t:", lambda: NOW)
    buckets = RedisBuckets(conns.client, "t:rl:")
    for _ in range(2):
        await conns.client.script_flush()  # (on a Cluster: every primary)
        await store.set("GET a", Entry(200, (), b"a", NOW, 600), ("user:1",))
        assert (await buckets.take("k", 1.0, 5)).allowed
        assert await store.delete_tag("user:1") == 1


async def test_the_cluster_get_follows_a_moved_slot(
    redis_cluster: ClusterSetup, cluster_url: str
) -> None:
    """A slot moved to another node after redis-py read the map: the pipelined GET to the
    old node answers MOVED, the GET is asked through redis-py (which follows it and reads
    the map again), and the next GET goes to the new node's pipelined connection."""
    c = connect(parse(cluster_url), 4, 2.0)
    assert isinstance(c.client, RedisCluster)
    getter = ClusterGet(c.client, 2.0)
    key = "t:moving"
    old, new = redis_cluster.node_of(key), redis_cluster.nodes[0]
    if old is new:
        new = redis_cluster.nodes[1]
    direct = {n.port: redis.Redis(port=n.port) for n in redis_cluster.nodes}
    slot = int(direct[old.port].cluster("KEYSLOT", key))
    new_id, old_id = direct[new.port].cluster("MYID"), direct[old.port].cluster("MYID")
    try:
        await c.client.initialize()  # the map before the move
        assert c.client.get_node_from_key(key).port == old.port
        for d in direct.values():  # an empty slot moves by being given to the other node
            d.cluster("SETSLOT", slot, "NODE", new_id)
        direct[new.port].set(key, b"here")
        assert await getter.get(key) == b"here"  # MOVED, then through redis-py
        assert c.client.get_node_from_key(key).port == new.port  # the map read again
        assert await getter.get(key) == b"here"
        assert f"127.0.0.1:{new.port}" in getter._getters  # the new node's own connection
    finally:
        direct[new.port].delete(key)
        for d in direct.values():
            d.cluster("SETSLOT", slot, "NODE", old_id)
            d.close()
        await getter.aclose()
        await c.aclose()


async def test_a_busy_cluster_client_waits_for_a_connection(cluster_url: str) -> None:
    """More concurrent commands than the pool holds wait their turn (as the one-Redis
    BlockingConnectionPool does) instead of failing with MaxConnectionsError, which the
    store would take for a node failure; redis-py's RedisCluster alone fails them."""
    bounded = connect(parse(cluster_url), 2, 2.0)
    first = cluster_url.removeprefix("redis+cluster://").split(",")[0]
    plain = RedisCluster.from_url(f"redis://{first}", max_connections=2)
    names = [f"t:busy:{i}" for i in range(60)]
    try:
        assert isinstance(bounded.client, RedisCluster)
        bc = bounded.client
        await asyncio.gather(*(bc.set(n, b"x") for n in names))
        await asyncio.gather(*(bc.mget_nonatomic(names[i : i + 9]) for i in range(0, 60, 3)))
        assert await asyncio.gather(*(bc.get(n) for n in names)) == [b"x"] * 60
        outcomes = await asyncio.gather(*(plain.get(n) for n in names), return_exceptions=True)
        assert any(isinstance(o, redis.exceptions.MaxConnectionsError) for o in outcomes)
    finally:
        await plain.aclose()
        await bounded.aclose()
