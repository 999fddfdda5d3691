"""Batches across replicas: one upstream batch call for the ids every replica asks at once.

Each replica's micro-batcher (:mod:`.batcher`) merges its own callers' ids; with two replicas
each would still send its own half-full batch. With Redis, a batch that opens takes its
variant's *collector lease* (``SET NX PX``) — it is then the one batch of the cluster that
collects — or, when another replica's batch holds it, becomes a *follower*. A follower does
not call Roblox: as soon as it knows, it puts its ids in the collector's box (a list
beside the lease, in one script that checks the lease is still held) and waits; the
collector, when it goes, takes the box (atomically with releasing its lease), asks its own
ids and the box's in one call, claiming each id's lease and announcing each stored entity
as cluster coalescing does (:mod:`.lease`); the follower's waiters wake on that word (not
by polling) and read their entities from Redis. A collector about to go waits for its
call's slot of the budget before it takes the box, its lease still held (:func:`slot_first`),
so the ids asked meanwhile still ride in that call; and the cluster's arrival rate of the
variant's ids is kept beside the lease (fed by every join and take, read by every lease
claim), so a collector waits for companions as long as the whole cluster's demand says, not
only what its replica saw. When the collector is gone by the time a
follower would join, the follower collects itself (taking what is in the box with it); when
a collector dies after taking ids, its followers claim those ids again once its lease and
one lease TTL have passed without their word, as they would for any entity whose leader
died; when Redis is down, every replica batches on its own.

The three keys of a variant (lease, box, rate) share one hash tag, so the scripts run on
Redis Cluster too. This
module holds the pure parts (keys, the box's item format, how remote ids join a batch),
tested as tables, and :class:`Collectors`, the Redis side (three scripts: the lease with the
rate, the take, the join); the fetcher performs it (``Fetcher._run_batch``), and a follower
waits for each id's word as for an entity another replica leads (:mod:`.lease`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence

import orjson

from ..redisconn import REDIS_ERRORS, RedisClient, SlotScript
from .batcher import RATE_TAU

__all__ = ["TAKE_MARGIN", "Collectors", "box_item", "keys", "merged", "read_box_item", "slot_first"]

log = logging.getLogger("bloxproxy.cache")
_ERRORS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, TimeoutError)

# The cluster's arrival rate of a variant's ids (a hash beside its lease, same hash tag):
# the batcher's decaying count (batcher.arrival_rate) kept in Redis, on Redis's clock, fed
# by every batch of every replica with its ids as it goes (a follower's at its join, a
# collector's own at its take: each id once), so that a replica picks a batch's window from
# what the whole cluster asks, not only what it sees. rate(key, n, tau_us, ttl_ms): the rate
# now after n more ids (n = 0: only read).
_RATE = """
local function rate(key, n, tau_us, ttl_ms)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local v = redis.call('HMGET', key, 'r', 't')
  local r, last = tonumber(v[1]) or 0, tonumber(v[2]) or now
  r = r * math.exp(-math.max(0, now - last) / tau_us) + n * 1000000 / tau_us
  if n > 0 then
    redis.call('HSET', key, 'r', tostring(r), 't', tostring(now))
    redis.call('PEXPIRE', key, ttl_ms)
  end
  return tostring(r)
end
"""
# A batch opening: take the variant's collector lease if nobody holds it (KEYS[1], ARGV[1]
# our token, ARGV[2] its ms), and read the cluster's rate (KEYS[2], ARGV[3] tau in µs).
_LEAD = (
    _RATE
    + """
local got = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
return {got and 1 or 0, rate(KEYS[2], 0, tonumber(ARGV[3]), 0)}
"""
)
# KEYS[1]: a variant's collector lease, KEYS[2]: its box, KEYS[3]: its rate (one hash tag).
# The collector going: take the box and release the lease (if still its own) at once, so
# that an id is either in the box it takes or finds no lease. ARGV[1]: the collector's
# token; ARGV[2]: how many ids of its own it asks, ARGV[3] tau (µs), ARGV[4] the rate's ms.
_TAKE = (
    _RATE
    + """
local items = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
rate(KEYS[3], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
return items
"""
)
# A follower joining: while the lease is held, its ids (ARGV[4]...) go into the box (which
# lives as long as the lease, plus ARGV[1] ms) and the answer is the ms the lease has left;
# else it takes what is in the box (a collector's that died before taking it) and the
# answer is -1 and those items: the follower collects itself. Its ids count in the rate
# either way (ARGV[2] tau in µs, ARGV[3] the rate's ms).
_JOIN = (
    _RATE
    + """
rate(KEYS[3], #ARGV - 3, tonumber(ARGV[2]), tonumber(ARGV[3]))
local left = redis.call('PTTL', KEYS[1])
if left > 0 then
  for i = 4, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
  redis.call('PEXPIRE', KEYS[2], left + tonumber(ARGV[1]))
  return {left, {}}
end
local items = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
return {-1, items}
"""
)

_MAX_ITEM = 512  # bytes: an id (a number or a username) with its spelling is far shorter


def keys(prefix: str, variant_key: str) -> tuple[str, str, str]:
    """The collector lease, the box and the cluster's arrival rate of one batch variant (one
    hash tag: one slot)."""
    tag = hashlib.sha1(variant_key.encode(), usedforsecurity=False).hexdigest()[:20]
    base = f"{prefix}batch:{{{tag}}}:"
    return base + "lease", base + "box", base + "rate"


TAKE_MARGIN = 0.05  # s: a collector takes its box this long before its lease ends


def slot_first(now: float, lease_end: float, slot_in: float, margin: float = TAKE_MARGIN) -> float:
    """How long a collector about to go may wait for its call's slot *before* it takes its
    box (seconds; 0.0: it takes the box now and the call waits for its slot, as any call).

    While it waits it still holds its lease, so every id another replica asks meanwhile
    joins its box and rides in its call: a batch that must wait for its budget anyway
    gathers the cluster's ids for that long, as one replica's next batch fills while its
    previous one is out. It may wait until its lease ends (``lease_end``, less ``margin``
    for the take itself: a box taken after its lease would find its followers gone
    collecting for themselves), unless the limiter already knows the next slot (``slot_in``
    from ``now``) comes later than that. With a shared budget the limiter's estimate only
    knows what Redis said last (another replica may have taken the slot since), so a free
    slot by the estimate is asked all the same: it comes at once, or is waited for."""
    within = lease_end - margin - now
    if within <= 0.0 or slot_in > within:
        return 0.0
    return within


def box_item(norm: str, spelled: str) -> bytes:
    """One id as a follower puts it in the box: its normalized form and its spelling."""
    return orjson.dumps([norm, spelled])


def read_box_item(raw: object) -> tuple[str, str] | None:
    """A box item back, or None for anything that is not one (the box is in Redis: whatever
    is there is read defensively)."""
    if not isinstance(raw, bytes | str) or len(raw) > _MAX_ITEM:
        return None
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) and x for x in item):
        return item[0], item[1]
    return None


def merged(
    own: Mapping[str, str], remote: Sequence[tuple[str, str]], cap: int
) -> tuple[dict[str, str], list[str], list[str]]:
    """The ids a collector asks (``own`` first, then the box's, up to ``cap``), the remote
    ids it carries, and the remote ids left over (past the cap: their followers are told
    to ask themselves). An id both own and remote is asked once and counts as carried."""
    ids = dict(own)
    carried: list[str] = []
    left: list[str] = []
    for norm, spelled in remote:
        if norm in ids:
            if norm not in carried:
                carried.append(norm)
            continue
        if len(ids) >= cap:
            if norm not in left:
                left.append(norm)
            continue
        ids[norm] = spelled
        carried.append(norm)
    return ids, carried, left


class Collectors:
    """The Redis side of batches across replicas. Every failure degrades to "this replica
    batches on its own": :meth:`lead` says so with None, :meth:`take` with an empty box,
    :meth:`join` with -1 (collect yourself)."""

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        lease_ms: int,
        grace_ms: int,
        usable: Callable[[], bool] = lambda: True,
        failed: Callable[[BaseException], None] = lambda exc: None,
        rate_tau: float = RATE_TAU,
    ) -> None:
        self._client = client
        self.prefix = prefix
        self.lease_ms = lease_ms  # how long a batch may collect for the cluster
        self.grace_ms = grace_ms  # a box outlives its lease by this: the collector's take
        self._usable = usable
        self._failed = failed
        self._tau_us = max(1, round(rate_tau * 1_000_000))
        self._rate_ms = max(1, round(rate_tau * 5000))  # forgotten once long decayed
        self._lead = SlotScript(client, _LEAD)
        self._take = SlotScript(client, _TAKE)
        self._join = SlotScript(client, _JOIN)
        self.joined = 0  # follower batches whose ids went into another's box (tests, bench)
        self.carried = 0  # remote ids a collector of ours took along

    async def lead(self, variant_key: str) -> tuple[str | None, float]:
        """Take the variant's collector lease: our token; "" when another replica's batch
        holds it (we follow); None when Redis is not there (we batch alone). With it, the
        cluster's arrival rate of the variant's ids (per second; 0.0 unknown)."""
        if not self._usable():
            return None, 0.0
        lease, _, rates = keys(self.prefix, variant_key)
        token = os.urandom(12).hex()
        try:
            got, rate = await self._lead(
                keys=[lease, rates],
                args=[token, self.lease_ms, self._tau_us],
            )
        except _ERRORS as exc:
            log.debug("batch lease failed: %s", exc)
            self._failed(exc)
            return None, 0.0
        return (token if int(got) else ""), _rate(rate)

    async def take(self, variant_key: str, token: str, own: int) -> list[tuple[str, str]]:
        """The collector going with ``own`` ids of its own: what followers put in its box
        (its lease released)."""
        names = keys(self.prefix, variant_key)  # the lease, the box, the rate
        try:
            raw = await self._take(
                keys=names,
                args=[token, own, self._tau_us, self._rate_ms],
            )
        except _ERRORS as exc:
            log.debug("batch take failed: %s", exc)
            self._failed(exc)
            return []
        return _items(raw)

    async def join(
        self, variant_key: str, ids: Mapping[str, str]
    ) -> tuple[float, list[tuple[str, str]]]:
        """A follower's ids into the collector's box: (seconds its lease has left, []) once
        joined; (-1, leftovers taken from the box) when it must collect itself."""
        names = keys(self.prefix, variant_key)  # the lease, the box, the rate
        items = [box_item(n, s) for n, s in ids.items()]
        try:
            left, raw = await self._join(
                keys=names,
                args=[self.grace_ms, self._tau_us, self._rate_ms, *items],
            )
        except _ERRORS as exc:
            log.debug("batch join failed: %s", exc)
            self._failed(exc)
            return -1.0, []
        if int(left) > 0:
            self.joined += 1
            return int(left) / 1000, []
        return -1.0, _items(raw)


def _rate(raw: object) -> float:
    """The rate a script answered (a number as text), read defensively."""
    try:
        rate = float(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ValueError:
        return 0.0
    return rate if 0.0 <= rate < 1e9 else 0.0


def _items(raw: object) -> list[tuple[str, str]]:
    if not isinstance(raw, list):
        return []
    return [item for item in map(read_box_item, raw) if item is not None]
