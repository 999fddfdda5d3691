"""The shared L2 store on Redis.

Keys are ``prefix + key``, values :meth:`Entry.to_bytes`, and every key carries its own
expiry ``PX = ceil((hard_expiry - now) * 1000)``, so Redis drops entries nobody may use.
Every Redis failure surfaces as :class:`StoreUnavailable`; degrading to L1 is the caller's
decision. The client is injected (the app builds it on a ``BlockingConnectionPool``: a plain
redis-py 8 ``ConnectionPool`` raises ``MaxConnectionsError`` when exhausted instead of
waiting) and must not decode responses. ``close()`` leaves it open unless ``owns_client``.

The hot read, ``GET``, may go through a :class:`~bloxproxy.cache.resp.PipelinedGet`
(``getter``; on a Cluster a :class:`~bloxproxy.cache.resp.ClusterGet`, one per node)
instead of redis-py: a fraction of the CPU per call. Everything else stays on
the client. The getter belongs to whoever owns the client: ``close()`` closes both when
``owns_client``, neither otherwise.

On Redis Cluster (a ``RedisCluster`` client) every command still touches one slot: an
entry and its tag sets are not in one slot, so storing a tagged entry is a ``SET`` and then
one script per tag set, and a tag purge takes the set away atomically (its own slot) and
then unlinks its entries per slot. Without the one script over all of them, a purge racing
the store of an entry of the same tag may miss that one entry (it was fetched before the
purge; its TTL ends it). A prefix purge SCANs every primary, one by one, and
purges the primaries that answer. A node that fails is skipped for a back-off (0.25 s,
doubling per failed retry up to 30 s): its keys raise
:class:`~bloxproxy.errors.NodeUnavailable` (a miss; one warning per incident), the other
nodes' keys keep working; a purge that could not reach a node purges the others and then
raises it (:meth:`down_nodes` names them).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from ..errors import NodeUnavailable, StoreUnavailable
from ..redisconn import REDIS_ERRORS, SlotScript, describe
from .entry import Entry
from .resp import ClusterGet, PipelinedGet

__all__ = ["RedisStore", "Then", "escape_glob"]

# An entry and its tags at once: SET the entry; add its key to each tag's set, whose expiry
# is pushed out to the entry's if that is later (a set lives as long as its longest-lived
# entry may, so it never outlives what it lists for long). KEYS[1]: the entry, KEYS[2..]:
# the tag sets; ARGV: value, PX, the entry's key (unprefixed).
_SET_TAGGED = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local px = tonumber(ARGV[2])
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[3])
  if redis.call('PTTL', KEYS[i]) < px then redis.call('PEXPIRE', KEYS[i], px) end
end
return 1
"""
# Every entry of a tag, and its set, at once (atomic: an entry stored meanwhile is either
# gone too or listed in a new set). KEYS[1]: the set; ARGV[1]: the key prefix. One Redis
# only: the entries it unlinks are not in KEYS[] (a Cluster takes _CLAIM_TAG, then UNLINKs).
_DROP_TAG = """
local members = redis.call('SMEMBERS', KEYS[1])
local n = 0
for i = 1, #members, 500 do
  local batch = {}
  for j = i, math.min(i + 499, #members) do batch[#batch + 1] = ARGV[1] .. members[j] end
  n = n + redis.call('UNLINK', unpack(batch))
end
redis.call('UNLINK', KEYS[1])
return n
"""
# One tag set (Redis Cluster: the entry is in another slot, SET on its own). KEYS[1]: the
# set; ARGV: PX, the entry's key (unprefixed).
_ADD_TO_TAG = """
redis.call('SADD', KEYS[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
"""
# A tag set's members, and the set gone, at once (Redis Cluster: the entries, in other
# slots, are unlinked after). KEYS[1]: the set.
_CLAIM_TAG = """
local members = redis.call('SMEMBERS', KEYS[1])
redis.call('UNLINK', KEYS[1])
return members
"""
# Replace a value only if it is still the one read (a soft purge must not overwrite a
# refresh that landed meanwhile). ARGV: the value read, the new one, its PX (0: delete).
_SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('UNLINK', KEYS[1])
end
return 1
"""

log = logging.getLogger(__name__)

# TimeoutError is asyncio.TimeoutError since 3.11 and an OSError; listed for clarity.
_ERRORS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, TimeoutError)
_GET_ERRORS: tuple[type[BaseException], ...] = (StoreUnavailable, *_ERRORS)  # and a getter's
# Commands queued after a SET, in the same write (RedisStore.set's ``then``): on a pipeline
# of one Redis, or of a Cluster (redis-py's ClusterPipeline, which sends each to its node).
Then = Callable[[Any], Awaitable[object]]
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def escape_glob(text: str) -> str:
    """Escape Redis glob metacharacters so ``text`` matches only itself in SCAN MATCH."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def _unavailable(op: str, exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"redis {op} failed: {type(exc).__name__}: {describe(exc)}")


class RedisStore:
    """:class:`~bloxproxy.cache.store.Store` on a ``redis.asyncio.Redis`` client."""

    __slots__ = (
        "_add_to_tag",
        "_batch",
        "_claim_tag",
        "_client",
        "_clock",
        "_cluster",
        "_down",
        "_drop_tag",
        "_getter",
        "_owns_client",
        "_prefix",
        "_set_tagged",
        "_swap",
    )

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        prefix: str = "bloxproxy:",
        clock: Callable[[], float] = time.time,
        *,
        owns_client: bool = False,
        batch_size: int = 500,
        getter: PipelinedGet | ClusterGet | None = None,
    ) -> None:
        if isinstance(client, RedisCluster):
            kwargs = client.get_connection_kwargs()
        else:
            kwargs = client.connection_pool.connection_kwargs
        if kwargs.get("decode_responses"):
            raise ValueError("RedisStore needs a client with decode_responses=False")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._client = client
        self._prefix = prefix
        self._clock = clock
        self._owns_client = owns_client
        self._batch = batch_size
        self._getter = getter
        self._set_tagged = SlotScript(client, _SET_TAGGED)
        self._drop_tag = SlotScript(client, _DROP_TAG)
        self._swap = SlotScript(client, _SWAP)
        self._cluster = isinstance(client, RedisCluster)
        # Redis Cluster: node name -> (skipped until (monotonic), its back-off)
        self._down: dict[str, tuple[float, float]] = {}
        self._add_to_tag = SlotScript(client, _ADD_TO_TAG)
        self._claim_tag = SlotScript(client, _CLAIM_TAG)

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def getter(self) -> PipelinedGet | ClusterGet | None:
        """The pipelined GET client serving :meth:`get`, if any."""
        return self._getter

    async def get(self, key: str) -> Entry | None:
        name = self._prefix + key
        getter = self._getter
        data: bytes | str | None  # str only if decoding, which __init__ refuses
        if self._cluster:
            node = self._node_of(name, "GET")
            try:
                if getter is not None:
                    data = await getter.get(name)
                else:
                    data = await self._client.get(name)
            except _GET_ERRORS as exc:
                raise self._node_failed(node, "GET", exc) from exc
            self._node_worked(node)
        elif getter is not None:
            data = await getter.get(name)  # raises StoreUnavailable itself
        else:
            try:
                data = await self._client.get(name)
            except _ERRORS as exc:
                raise _unavailable("GET", exc) from exc
        if data is None:
            return None
        try:
            entry = Entry.from_bytes(data)  # type: ignore[arg-type]
        except ValueError as exc:
            # Foreign, corrupt or other-version data: a miss. Deleting it may race with a
            # concurrent SET of a good value, which then just costs one more miss.
            log.warning("dropping unreadable cache value %r: %s", name, exc)
            try:
                await self._client.unlink(name)
            except _ERRORS as del_exc:
                log.debug("could not delete unreadable value %r: %s", name, del_exc)
            return None
        if self._clock() >= entry.hard_expiry():  # clock skew between replicas
            return None
        return entry

    async def set(
        self, key: str, entry: Entry, tags: Sequence[str] = (), then: Then | None = None
    ) -> None:
        """Store ``entry`` until its hard expiry, listed under each of ``tags``;
        ``then(pipeline)`` queues more commands to go in the same write, run by Redis right
        after the ``SET`` (a lease's release and word: no round trip between the entry and
        the news of it)."""
        await self.set_many([(key, entry, tuple(tags))], then)

    async def set_many(
        self,
        items: Sequence[tuple[str, Entry, Sequence[str]]],
        then: Then | None = None,
    ) -> None:
        """:meth:`set` for several entries (a batch's entities), each with its tags, in one
        pipelined write, ``then(pipeline)``'s commands after them. An entry already unusable
        is not stored, and an older value under its key is removed."""
        now = self._clock()
        try:
            if self._cluster:
                # one slot at a time: the entries first, then what follows them
                for key, entry, tags in items:
                    px = math.ceil((entry.hard_expiry() - now) * 1000)
                    if px <= 0:
                        await self.delete(key)
                    else:
                        name = self._prefix + key
                        await self._set_per_slot(name, entry.to_bytes(), px, key, tags)
                if then is not None:
                    async with self._client.pipeline(transaction=False) as pipe:
                        await then(pipe)
                        await pipe.execute()
                return
            if len(items) == 1 and then is None:  # one command: no pipeline
                key, entry, tags = items[0]
                px = math.ceil((entry.hard_expiry() - now) * 1000)
                name = self._prefix + key
                if px <= 0:
                    await self._client.unlink(name)
                elif tags:
                    names = [name, *(self.tag_set(t) for t in tags)]
                    await self._set_tagged(keys=names, args=[entry.to_bytes(), px, key])
                else:
                    await self._client.set(name, entry.to_bytes(), px=px)
                return
            # (async with: a pipeline left unreset when Redis fails warns when collected)
            async with self._client.pipeline(transaction=False) as pipe:
                for key, entry, tags in items:
                    px = math.ceil((entry.hard_expiry() - now) * 1000)
                    name = self._prefix + key
                    if px <= 0:
                        pipe.unlink(name)
                    elif tags:
                        # EVAL, not the Script: in a pipeline a Script first asks SCRIPT
                        # EXISTS, one more round trip per write (cache/lease.py does the same)
                        names = [name, *(self.tag_set(t) for t in tags)]
                        pipe.eval(_SET_TAGGED, len(names), *names, entry.to_bytes(), px, key)
                    else:
                        pipe.set(name, entry.to_bytes(), px=px)
                if then is not None:
                    await then(pipe)
                await pipe.execute()
        except _ERRORS as exc:
            raise _unavailable("SET", exc) from exc

    async def _set_per_slot(
        self, name: str, value: bytes, px: int, key: str, tags: Sequence[str]
    ) -> None:
        node = self._node_of(name, "SET")
        try:
            await self._client.set(name, value, px=px)
        except _ERRORS as exc:
            raise self._node_failed(node, "SET", exc) from exc
        self._node_worked(node)
        for tag in tags:
            tag_set = self.tag_set(tag)
            node = self._node_of(tag_set, "SADD")
            try:
                await self._add_to_tag(keys=[tag_set], args=[px, key])
            except _ERRORS as exc:
                raise self._node_failed(node, "SADD", exc) from exc
            self._node_worked(node)

    # -- Redis Cluster: one node's trouble is its keys' only ------------------------------

    def _node_of(self, name: str, op: str, *, skip_down: bool = True) -> str | None:
        """The name of the node serving ``name`` (None: not known yet); NodeUnavailable
        while that node is in its back-off (unless not ``skip_down``: purges try anyway)."""
        try:
            node = self._client.get_node_from_key(name)  # type: ignore[union-attr]
        except REDIS_ERRORS:
            return None  # (slot map not loaded yet, or the slot not covered)
        if node is None:
            return None
        down = self._down.get(node.name) if skip_down else None
        if down is not None and time.monotonic() < down[0]:
            raise NodeUnavailable(f"redis {op} skipped: cluster node {node.name} is down")
        return str(node.name)

    def _node_failed(self, node: str | None, op: str, exc: BaseException) -> StoreUnavailable:
        if node is None:
            return _unavailable(op, exc)
        now = time.monotonic()
        down = self._down.get(node)
        if down is None:
            log.warning("redis cluster node %s unavailable, its keys are misses: %s", node, exc)
            self._down[node] = (now + 0.25, 0.25)
        elif now >= down[0]:  # a failed retry (not one of the many failing together)
            backoff = min(down[1] * 2, 30.0)
            self._down[node] = (now + backoff, backoff)
        return NodeUnavailable(f"redis {op} failed on cluster node {node}: {exc}")

    def _node_worked(self, node: str | None) -> None:
        if node is not None and self._down and self._down.pop(node, None) is not None:
            log.info("redis cluster node %s is reachable again", node)

    def tag_set(self, tag: str) -> str:
        """The name of the set listing the keys that carry ``tag``."""
        return f"{self._prefix}tag:{tag}"

    async def delete_tag(self, tag: str) -> int:
        """Remove every entry listed under ``tag``, and the list; how many entries went.

        One script on one Redis; on a Cluster the set is claimed atomically, then its
        entries are unlinked (redis-py splits the UNLINK per slot)."""
        try:
            if self._cluster:
                return await self._delete_tag_per_slot(tag)
            n: int = await self._drop_tag(keys=[self.tag_set(tag)], args=[self._prefix])
        except _ERRORS as exc:
            raise _unavailable("tag purge", exc) from exc
        return n

    async def _delete_tag_per_slot(self, tag: str) -> int:
        tag_set = self.tag_set(tag)
        node = self._node_of(tag_set, "tag purge", skip_down=False)
        try:
            members: list[bytes] = await self._claim_tag(keys=[tag_set])
        except _ERRORS as exc:
            raise self._node_failed(node, "tag purge", exc) from exc
        self._node_worked(node)
        by_node: dict[str | None, list[str]] = {}
        for member in members:
            name = self._prefix + member.decode()
            by_node.setdefault(self._node_of(name, "UNLINK", skip_down=False), []).append(name)
        count = 0
        failed: list[str] = []
        for owner, names in by_node.items():
            try:
                for i in range(0, len(names), self._batch):
                    count += await self._client.unlink(*names[i : i + self._batch])
            except _ERRORS as exc:
                self._node_failed(owner, "UNLINK", exc)
                failed.append(owner or "?")
                continue
            self._node_worked(owner)
        if failed:
            raise NodeUnavailable(
                f"tag purge: {len(members)} entries listed, {count} unlinked; cluster "
                f"node(s) {', '.join(failed)} unavailable: their entries are left"
            )
        return count

    async def soften_tag(self, tag: str, mark: Callable[[Entry], Entry | None]) -> int:
        """Replace each fresh entry listed under ``tag`` by ``mark(entry)`` (a soft purge:
        the entry made stale), unless it changed meanwhile; how many were marked."""
        client = self._client
        count = 0
        try:
            # (bytes: __init__ refuses a decoding client)
            members: list[bytes] = sorted(await client.smembers(self.tag_set(tag)))  # type: ignore[arg-type]
            for i in range(0, len(members), self._batch):
                names = [self._prefix + m.decode() for m in members[i : i + self._batch]]
                values: list[bytes | None]
                if isinstance(client, RedisCluster):  # one MGET per slot
                    values = await client.mget_nonatomic(names)
                else:
                    values = await client.mget(names)  # type: ignore[assignment]
                for name, data in zip(names, values, strict=True):
                    if data is None:
                        continue
                    try:
                        entry = Entry.from_bytes(data)
                    except ValueError:
                        continue  # (unreadable: get() drops it when asked)
                    marked = mark(entry)
                    if marked is None:
                        continue
                    px = max(0, math.ceil((marked.hard_expiry() - self._clock()) * 1000))
                    count += await self._swap(keys=[name], args=[data, marked.to_bytes(), px])
        except _ERRORS as exc:
            raise _unavailable("soft tag purge", exc) from exc
        return count

    async def delete(self, key: str) -> bool:
        try:
            return bool(await self._client.unlink(self._prefix + key))
        except _ERRORS as exc:
            raise _unavailable("UNLINK", exc) from exc

    async def delete_prefix(self, prefix: str) -> int:
        """SCAN for ``prefix`` (taken literally) and UNLINK in batches; how many went.

        Not atomic: keys written while the scan runs may survive. On Redis Cluster, every
        primary is scanned (and the UNLINKs split per slot).
        """
        client = self._client
        pattern = escape_glob(self._prefix + prefix) + "*"
        if isinstance(client, RedisCluster):
            return await self._delete_prefix_per_node(client, pattern)
        count = 0
        batch: list[bytes] = []
        try:
            async for name in client.scan_iter(match=pattern, count=self._batch):
                batch.append(name)
                if len(batch) >= self._batch:
                    # UNLINK counts only keys that existed: SCAN duplicates are not counted.
                    count += await client.unlink(*batch)
                    batch.clear()
            if batch:
                count += await client.unlink(*batch)
        except _ERRORS as exc:
            raise _unavailable("SCAN/UNLINK", exc) from exc
        return count

    async def _delete_prefix_per_node(self, client: RedisCluster, pattern: str) -> int:
        """SCAN and UNLINK on each primary in turn: one that fails is skipped (and named in
        the NodeUnavailable raised at the end), the others are purged all the same."""
        try:
            if not client.get_nodes():
                await client.initialize()
            primaries = client.get_primaries()
        except _ERRORS as exc:
            raise _unavailable("SCAN", exc) from exc
        count = 0
        failed: list[str] = []
        for node in primaries:
            batch: list[bytes] = []
            try:
                async for name in client.scan_iter(
                    match=pattern, count=self._batch, target_nodes=node
                ):
                    batch.append(name)
                    if len(batch) >= self._batch:
                        count += await client.unlink(*batch)
                        batch.clear()
                if batch:
                    count += await client.unlink(*batch)
            except _ERRORS as exc:
                self._node_failed(node.name, "SCAN", exc)
                failed.append(node.name)
                continue
            self._node_worked(node.name)
        if failed:
            raise NodeUnavailable(
                f"prefix purge: {count} unlinked; cluster node(s) {', '.join(failed)} "
                "unavailable: their entries are left"
            )
        return count

    def down_nodes(self) -> list[str]:
        """The Redis Cluster nodes that failed their last command (none on one Redis)."""
        return sorted(self._down)

    async def clear(self) -> int:
        """Remove every key under this store's prefix (never FLUSHDB)."""
        return await self.delete_prefix("")

    async def close(self) -> None:
        if self._owns_client:
            if self._getter is not None:
                await self._getter.aclose()
            try:
                await self._client.aclose()
            except _ERRORS as exc:
                raise _unavailable("close", exc) from exc
