"""Cluster-wide coalescing: one upstream call per cold key across every replica on one Redis.

Per process, the fetcher already makes one call per key (the key's in-flight task). With
``cache.redis.cluster_coalescing`` on, that task first claims the key's *lease* in Redis:

- ``SET <lease> <token> NX PX <ttl>`` wins → this replica leads: it calls upstream, renews
  the lease every third of its TTL while the call runs (compare-and-``PEXPIRE``), stores the
  entry in L2, then releases the lease and publishes ``stored <lease>`` on the coalescing
  channel — one Lua script behind the entry's ``SET``, in one write. The release leaves a
  marker in the lease's place for a second (:data:`STORED_MARK_MS`): a replica whose L2
  read came just before the entry, and whose claim just after, reads L2 again instead of
  asking Roblox a second time.
- the lease is held by another replica → this one waits for that word. The word comes on
  the channel the invalidations use, on the same subscription (one per process, a dict of
  lease → futures): no Redis command while waiting, no polling. Woken by ``stored`` it reads
  the entry from L2. A stale entry is served at once instead of waiting, when one exists.
- the leader gives up (its call was cancelled, its replica is shutting down) → it publishes
  ``gone``, and one waiter takes the lease over (``SET NX`` again; the others keep waiting).
  A leader that dies without a word stops renewing: at the lease's expiry (the waiter knows
  its remaining ``PTTL`` from the claim) the waiter claims it again — one command per lease
  TTL while a live leader works, never more.
- a wait past ``cache.redis.cluster_wait`` → the waiter calls upstream itself, and that
  answer is stored (and announced) like a leader's.
- Redis down (a command fails, or the subscription is lost) → coalescing falls back to per
  process: the task calls upstream itself. Nothing fails because of Redis.

A micro-batch does the same per entity (:meth:`Leases.claim_many`: its ids' claims in one
write; the fetcher asks Roblox only for the ids it won).

What to do at each step is decided by the pure functions :func:`on_claim`, :func:`on_wake`
and :func:`on_read` (tested as tables); :class:`Leases` performs it. A lease key is
``<prefix>lease:{<digest of the cache key>}``: its hash tag is the whole digest, and every
script touches that one key only, so it runs on Redis Cluster as on one server. The entry's
``SET`` and the release go in one *pipeline*, not one script, so the entry key (not
hash-tagged) need not share the lease's slot.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio.client import Pipeline

from ..redisconn import REDIS_ERRORS, RedisClient, SlotScript

__all__ = [
    "STORED_MARK_MS",
    "Act",
    "Claim",
    "ClaimResult",
    "Leases",
    "Wake",
    "lease_key",
    "on_claim",
    "on_read",
    "on_wake",
]

log = logging.getLogger("bloxproxy.cache")


class Claim(enum.Enum):
    """What ``SET NX`` on a key's lease gave."""

    ACQUIRED = "acquired"  # this replica leads
    HELD = "held"  # another replica leads
    STORED = "stored"  # another replica stored the entry a moment ago (the lease's marker)
    DOWN = "down"  # Redis (or the subscription that would wake us) is unavailable


class Wake(enum.Enum):
    """Why a waiter stopped waiting."""

    STORED = "stored"  # the leader stored the entry in L2
    EMPTY = "empty"  # the leader finished without storing (an error, or not storable)
    GONE = "gone"  # the leader gave up its lease (cancelled, shutting down)
    EXPIRED = "expired"  # the lease's time ran out without a word: the leader may be dead
    DEADLINE = "deadline"  # waited ``cluster_wait`` and no answer
    LOST = "lost"  # the subscription was lost (Redis down): no word can come


class Act(enum.Enum):
    """What the fetcher does next."""

    LEAD = "lead"  # call upstream, renewing the lease; store; announce
    WAIT = "wait"  # wait for the leader's word
    STALE = "stale"  # serve the stale entry now
    READ = "read"  # read the leader's entry from L2 (absent: FETCH)
    CLAIM = "claim"  # claim the lease again: one waiter takes over
    FETCH = "fetch"  # call upstream here, without a lease; store as usual


def on_claim(claim: Claim, stale_usable: bool) -> Act:
    """The step after a claim. ``stale_usable``: a stale entry of the key may stand in."""
    if claim is Claim.ACQUIRED:
        return Act.LEAD
    if claim is Claim.STORED:
        return Act.READ  # our L2 read came just before that entry: read again
    if claim is Claim.DOWN:
        return Act.FETCH  # per-process coalescing: this process's one call
    return Act.STALE if stale_usable else Act.WAIT


def on_wake(wake: Wake, stale_usable: bool) -> Act:
    """The step after a wait ended for ``wake``."""
    if wake is Wake.STORED:
        return Act.READ
    if wake is Wake.EMPTY:
        # The leader's answer was not stored (Roblox failed, or said something not kept):
        # a stale entry stands in as it would for our own failed call; else ask ourselves.
        return Act.STALE if stale_usable else Act.FETCH
    if wake in (Wake.GONE, Wake.EXPIRED):
        return Act.CLAIM
    return Act.FETCH  # DEADLINE (the fallback is stored), LOST (Redis down: per process)


def on_read(found: bool, marked: bool) -> Act | None:
    """The step after reading the leader's entry from L2: None when it was ``found`` (done);
    when not, a claim that met the "stored" marker (``marked``) claims again, over the
    marker — else ask upstream (the entry is gone: evicted, purged, or Redis away)."""
    if found:
        return None
    return Act.CLAIM if marked else Act.FETCH


def lease_key(prefix: str, key: str) -> str:
    """The Redis key of ``key``'s lease: hash-tagged by a digest of the cache key."""
    digest = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    return f"{prefix}lease:{{{digest}}}"


@dataclass(frozen=True, slots=True)
class ClaimResult:
    claim: Claim
    lease: str  # the lease's Redis key
    token: str  # ours when ACQUIRED, else ""
    pttl: float  # HELD: seconds the other's lease has left (0 unknown)


#: How long a released lease's place says "stored" (ms): longer than a replica takes from
#: its L2 read to its claim, short enough that a purged key is coalesced again soon.
STORED_MARK_MS = 1000

# KEYS[1] lease; ARGV token, ttl_ms, take ('1': a marker counts as free). -10: acquired;
# -13: just stored (the marker, never a token: tokens are hex); else the holder's PTTL in
# ms (-1 when a foreign hand set it without one).
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return -10 end
if redis.call('GET', KEYS[1]) == '!stored' then
  if ARGV[3] == '1' then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return -10
  end
  return -13
end
return redis.call('PTTL', KEYS[1])
"""
_ACQUIRED, _JUST_STORED = -10, -13
# KEYS[1] lease; ARGV token, ttl_ms. 1: still ours, renewed.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] lease; ARGV token ('' none), channel, message, mark_ms ('' none). Releases the
# lease if it is ours (into the "stored" marker when mark_ms is given), then publishes the
# word (also when it is not ours: a stored entry is news to any waiter).
_DONE = """
local released = 0
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) == ARGV[1] then
  released = 1
  if ARGV[4] ~= '' then
    redis.call('SET', KEYS[1], '!stored', 'PX', ARGV[4])
  else
    redis.call('DEL', KEYS[1])
  end
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return released
"""

_ERRORS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, TimeoutError)


def _claimed(lease: str, token: str, got: int) -> ClaimResult:
    """What the claim script's answer ``got`` means."""
    if got == _ACQUIRED:
        return ClaimResult(Claim.ACQUIRED, lease, token, 0.0)
    if got == _JUST_STORED:
        return ClaimResult(Claim.STORED, lease, "", 0.0)
    # else the holder's PTTL; -1: none (a foreign hand's value: waited for as one lease TTL)
    return ClaimResult(Claim.HELD, lease, "", max(0, got) / 1000)


class Leases:
    """The I/O of cluster coalescing (see the module docstring).

    ``client`` carries the commands (with the command timeout); the word arrives through
    :meth:`on_message`, which the owner of the one subscription calls with every message of
    :attr:`channel`, and :meth:`on_lost` when that subscription is lost. ``listening`` says
    whether it is up now (no subscription, no waiting: the claim says DOWN).
    """

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        ttl: float,
        wait: float,
        listening: Callable[[], bool],
        usable: Callable[[], bool] = lambda: True,
        failed: Callable[[BaseException], None] = lambda exc: None,
    ) -> None:
        self._client = client
        self.prefix = prefix
        self.channel = prefix + "coalesce"
        self.ttl = ttl
        self.max_wait = wait
        self._ttl_ms = max(1, round(ttl * 1000))
        self._listening = listening
        self._usable = usable
        self._failed = failed  # a claim that failed: Redis's back-off applies to L2 too
        self._claim = SlotScript(client, _CLAIM)
        self._renew = SlotScript(client, _RENEW)
        self._done = SlotScript(client, _DONE)
        self._waiters: dict[str, list[asyncio.Future[Wake]]] = {}
        # what became of each key (observe.CoalescingCollector reads it; the app binds it)
        self.counts: dict[str, float] = {}

    def count(self, outcome: str, n: int = 1) -> None:
        """One more key (or ``n`` entities) that ended in ``outcome`` (``led``,
        ``took_over``, ``waited``, ``stale``, ``fallback``, ``local``)."""
        if n:
            self.counts[outcome] = self.counts.get(outcome, 0) + n

    # -- the word -------------------------------------------------------------------------

    def on_message(self, data: object) -> None:
        """A message of the coalescing channel: ``<wake> <lease>``; anything else ignored."""
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, bytes):
            return
        word, _, lease = data.partition(b" ")
        try:
            wake = Wake(word.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return
        if wake not in (Wake.STORED, Wake.EMPTY, Wake.GONE):
            return
        for fut in self._waiters.pop(lease.decode("ascii", "replace"), ()):
            if not fut.done():
                fut.set_result(wake)

    def on_lost(self) -> None:
        """The subscription is gone: every waiter stops (and asks upstream itself)."""
        waiters, self._waiters = self._waiters, {}
        for futs in waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(Wake.LOST)

    @property
    def waiting(self) -> int:
        """Waiters registered now (for tests and metrics)."""
        return sum(len(f) for f in self._waiters.values())

    # -- the commands ---------------------------------------------------------------------

    def interest(self, lease: str) -> asyncio.Future[Wake]:
        """A future the next word on ``lease`` resolves; registered *before* the claim, so a
        word published between the claim and the wait is not missed."""
        fut: asyncio.Future[Wake] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(lease, []).append(fut)
        return fut

    def forget(self, lease: str, fut: asyncio.Future[Wake]) -> None:
        futs = self._waiters.get(lease)
        if futs is not None:
            if fut in futs:
                futs.remove(fut)
            if not futs:
                del self._waiters[lease]

    async def claim(self, lease: str, take_mark: bool = False) -> ClaimResult:
        """``SET NX`` the lease with a new token; DOWN when Redis or the subscription is not
        there (per-process coalescing then). ``take_mark``: a "stored" marker counts as no
        lease (its entry was not there after all)."""
        if not (self._listening() and self._usable()):
            return ClaimResult(Claim.DOWN, lease, "", 0.0)
        token = os.urandom(12).hex()
        try:
            take = "1" if take_mark else ""
            got = int(await self._claim(keys=[lease], args=[token, self._ttl_ms, take]))
        except _ERRORS as exc:
            log.debug("lease claim failed: %s", exc)
            self._failed(exc)
            return ClaimResult(Claim.DOWN, lease, "", 0.0)
        return _claimed(lease, token, got)

    async def wait(self, fut: asyncio.Future[Wake], pttl: float, deadline: float) -> Wake:
        """Wait for the word on ``fut``: at most until the held lease's expiry (``pttl``
        seconds from now, plus a little) or the loop time ``deadline``, whichever first."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        expiry = now + (pttl if pttl > 0 else self.ttl) + 0.01
        until = min(expiry, deadline)
        if not fut.done():
            wake = Wake.EXPIRED if expiry < deadline else Wake.DEADLINE

            def ring() -> None:
                if not fut.done():
                    fut.set_result(wake)

            timer = loop.call_at(until, ring)
            try:
                await fut
            finally:
                timer.cancel()
        return fut.result()

    def renewing(self, *results: ClaimResult) -> asyncio.Task[None]:
        """A task renewing the leases of ``results`` every third of their TTL until
        cancelled (several: one pipelined write each time)."""
        held = [r for r in results if r.claim is Claim.ACQUIRED]

        async def renew() -> None:
            while held:
                await asyncio.sleep(self.ttl / 3)
                try:
                    if len(held) == 1:
                        kept = [
                            await self._renew(
                                keys=[held[0].lease], args=[held[0].token, self._ttl_ms]
                            )
                        ]
                    else:
                        async with self._client.pipeline(transaction=False) as pipe:
                            for r in held:
                                pipe.eval(_RENEW, 1, r.lease, r.token, self._ttl_ms)
                            kept = await pipe.execute()
                except _ERRORS as exc:
                    log.debug("lease renewal failed: %s", exc)
                    continue
                # a lease lost (expired and taken): its call goes on, unannounced
                held[:] = [r for r, ok in zip(held, kept, strict=True) if ok]

        return asyncio.get_running_loop().create_task(renew())

    async def claim_many(self, leases: list[str]) -> list[ClaimResult]:
        """:meth:`claim` for several leases in one pipelined write (a batch's ids)."""
        if len(leases) == 1:
            return [await self.claim(leases[0])]
        if not (self._listening() and self._usable()):
            return [ClaimResult(Claim.DOWN, lease, "", 0.0) for lease in leases]
        tokens = [os.urandom(12).hex() for _ in leases]
        try:
            # (async with: a pipeline left unreset when Redis fails warns when collected)
            async with self._client.pipeline(transaction=False) as pipe:
                for lease, token in zip(leases, tokens, strict=True):
                    pipe.eval(_CLAIM, 1, lease, token, self._ttl_ms, "")
                got = await pipe.execute()
        except _ERRORS as exc:
            log.debug("lease claim failed: %s", exc)
            self._failed(exc)
            return [ClaimResult(Claim.DOWN, lease, "", 0.0) for lease in leases]
        return [
            _claimed(lease, token, int(n))
            for lease, token, n in zip(leases, tokens, got, strict=True)
        ]

    async def queue_done(self, pipe: Pipeline, lease: str, token: str, wake: Wake) -> None:
        """:meth:`done` queued on ``pipe`` (behind the entry's ``SET``: one write)."""
        # EVAL, not the Script: a pipeline holding a Script object first asks SCRIPT EXISTS,
        # one more round trip per write; EVAL of a script Redis has seen is looked up by
        # its digest, and never fails with NOSCRIPT after a restart.
        pipe.eval(_DONE, 1, lease, *self._done_args(token, wake, lease))

    def _done_args(self, token: str, wake: Wake, lease: str) -> list[str | int]:
        mark: str | int = STORED_MARK_MS if wake is Wake.STORED else ""
        return [token, self.channel, f"{wake.value} {lease}", mark]

    async def done(self, lease: str, token: str, wake: Wake) -> None:
        """Release the lease if ``token`` still holds it and publish ``wake`` (best effort:
        Redis down, the lease expires on its own)."""
        try:
            await self._done(keys=[lease], args=self._done_args(token, wake, lease))
        except _ERRORS as exc:
            log.debug("lease release failed: %s", exc)
