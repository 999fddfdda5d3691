"""The fetcher: L1 → L2 → one coalesced upstream call per key, with stale serving.

:class:`Fetcher` is the only thing the pipeline awaits to get an upstream answer. It knows
upstream requests, policies and request ids — not HTTP requests. Per key:

- fresh entry (L1, else L2 which then fills L1) → HIT;
- stale within stale-while-revalidate → served at once (STALE) and exactly one background
  refresh runs (the refresh *is* the in-flight task of the key, so a second cannot start);
- otherwise one upstream call per key and process: the first request starts a task,
  concurrent ones await the same task (COALESCED), each bounded by ``coalesce_timeout``
  (then 504). The task is shielded, so a client that disconnects does not cancel the call
  others wait for. An answer that may not be stored is still handed to every waiter, but
  only its own caller gets the per-caller headers;
- the upstream fails (connection, timeout, 5xx, 429) and a stale entry is within its
  stale-if-error window → STALE;
- with Redis and ``cache.redis.cluster_coalescing``, a shared key's one call is one for
  every replica: its task claims the key's lease first and leads, or waits for the
  replica that does (or serves a stale entry meanwhile) — :mod:`bloxproxy.cache.lease`
  decides, :meth:`Fetcher._clustered` performs; a batch does the same per entity.

Credentialed requests bypass the shared cache unless the policy opts in to per-credential
entries keyed by an HMAC of the credential. A shared request goes upstream with its
policy's allow-listed headers only, all of them in its key. Redis trouble never fails a
request: :class:`~bloxproxy.cache.shared.SharedCache` degrades to L1. What to store and when
stale stands in are decided by :mod:`bloxproxy.cache.decide`; this module performs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from redis.asyncio.client import Pipeline

from ..config import Config
from ..errors import UpstreamError
from ..rules import BatchSpec
from ..tagging import MAX_TAGS, valid_tag
from ..upstream.client import NOBODY, Caller, Upstream, UpstreamRequest
from ..upstream.inflight import ByteBudget, Lease
from . import decide, entities
from .batcher import Batch, Batcher
from .cluster_batch import Collectors, merged, slot_first
from .entry import KEPT_HEADERS, Entry, make_etag
from .lease import (
    Act,
    Claim,
    ClaimResult,
    Leases,
    Wake,
    lease_key,
    on_claim,
    on_read,
    on_wake,
)
from .policy import Policy
from .result import Fetched
from .shared import SharedCache
from .store import MemoryStore
from .tags import TagIndex

__all__ = ["Fetcher"]


class Fetcher:
    """Cache-aware fetching (see the module docstring)."""

    def __init__(
        self,
        upstream: Upstream,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        shared: SharedCache | None = None,
        bodies: ByteBudget | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.upstream = upstream
        self.clock = clock
        self.enabled = config.cache.enabled
        self.l1 = MemoryStore(config.cache.max_bytes, config.cache.max_entries, clock)
        self.shared = shared
        # tag -> L1 keys (purge by tag); a few tags per entry on average fit the bound
        self.tags = TagIndex(max(1024, 8 * config.cache.max_entries))
        self.tag_header = config.cache.tag_header  # "": answers need not know their tags
        # Called after a soft purge marked entries stale in L1 (the front door forgets its
        # remembered answers: they hold the entry's freshness as it was).
        self.on_soft_purge: list[Callable[[], None]] = []
        self.bodies = bodies  # the byte budget every upstream body is read under
        self._timeout = config.cache.coalesce_timeout
        secret = config.cache.credential_secret
        self._secret = secret.encode() if secret else os.urandom(32)
        self._inflight: dict[str, asyncio.Task[Fetched]] = {}
        self.waiting = 0  # callers waiting for another's call of their key (coalesced)
        self._background: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._max_wait = config.limits.upstream.max_wait
        self._sleep = sleep  # (injected: background re-polls wait out a TTL with it)
        self._repolling: set[str] = set()
        # Cluster coalescing (cache/lease.py), set by the app with Redis; None: per process.
        self.leases: Leases | None = None
        # Keys another replica is fetching while a stale entry of ours stands in: their
        # requests get it without a Redis command until that replica's word comes.
        self._elsewhere: set[str] = set()
        # (batch windows and deadlines are real time: the loop's clock, as the timers are)
        # batches fill while the upstream limiter has no slot for them
        self.batcher = Batcher(
            self._run_batch, slot_in=upstream.next_slot_in, on_open=self._batch_opened
        )
        # Batches across replicas (cache/cluster_batch.py), set by the app with Redis and
        # cluster coalescing; None: each replica batches alone.
        self.collectors: Collectors | None = None

    # -- the request path ----------------------------------------------------------------

    async def fetch(
        self,
        req: UpstreamRequest,
        policy: Policy,
        caller: Caller = NOBODY,
        credential: str = "",
        newer_than: float = 0.0,
        tags: tuple[str, ...] = (),
    ) -> Fetched:
        """The answer to ``req`` under ``policy``, for ``caller``, whose credential is
        ``credential`` (``""``: anonymous); an entry stored before ``newer_than`` counts as
        expired (a held answer asking again). A leader's answer carries the lease on its
        body (``Fetched.lease``): the caller releases it once the answer is written out.
        ``tags``: the entity tags of the entry (:mod:`bloxproxy.tagging`), indexed when
        it is stored or read from Redis, and on the answer (``Fetched.tags``)."""
        if not (self.enabled and req.safe_read and policy.cacheable):
            return await self._direct(req, caller)
        if credential and policy.credentials != "per_credential":
            return await self._direct(req, caller, detail="credentialed")
        req, key = self._keyed(req, policy, credential)
        shared = not credential
        looked = time.perf_counter()
        entry = self.l1.get_nowait(key)
        if entry is None and self.shared is not None:
            entry = await self.shared.get(key)
            if entry is not None:
                self.l1.set_nowait(key, entry)
                if tags:
                    self._index(key, tags)
        looked = time.perf_counter() - looked
        if entry is not None and entry.stored_at >= newer_than:
            state = decide.freshness(entry, self.clock())
            if state is decide.Freshness.FRESH:
                hit = Fetched(entry, "HIT", key=key, shared=shared)
                hit.fast_ok, hit.cache_time, hit.tags = policy.fast_ok, looked, tags
                return hit
            if state is decide.Freshness.STALE_WHILE_REVALIDATE:
                if key not in self._inflight and key not in self._elsewhere:
                    self._start(key, req, policy, caller, entry, shared, tags)
                stale = Fetched(entry, "STALE", key=key, shared=shared, detail="revalidating")
                stale.cache_time, stale.tags = looked, tags
                return stale
        task = running = self._inflight.get(key)
        if (
            task is None
            and entry is not None
            and key in self._elsewhere
            and entry.stored_at >= newer_than
            and decide.usable_on_error(entry, self.clock())
        ):
            stale = Fetched(entry, "STALE", key=key, shared=shared, detail=_ELSEWHERE)
            stale.cache_time = looked
            return stale
        lease = None
        if task is None:
            task, lease = self._start(key, req, policy, caller, entry, shared, tags)
            if lease is not None:
                lease.hold()  # this caller writes the answer out: the body stays counted
        if running is not None:
            self.waiting += 1
        try:
            fetched = await self._wait(task)
        except BaseException as exc:
            if lease is not None:
                lease.release()  # no answer to write: the call keeps its own hold
            if isinstance(exc, TimeoutError):
                raise UpstreamError(
                    504,
                    f"no answer from {req.service} within "
                    f"{self._timeout:g}s (waited for an identical request)",
                    code="upstream_timeout",
                ) from None
            raise
        finally:
            if running is not None:
                self.waiting -= 1
        out = fetched if running is None else fetched.coalesced()
        out.fast_ok, out.cache_time, out.lease, out.tags = policy.fast_ok, looked, lease, tags
        return out

    def _keyed(
        self, req: UpstreamRequest, policy: Policy, credential: str
    ) -> tuple[UpstreamRequest, str]:
        """The request as it goes upstream and its cache key: shared (cut down to the
        policy's allow-listed headers) when anonymous, else private to ``credential`` (an
        HMAC of it in the key). Only for a request :meth:`fetch` would cache."""
        if credential:
            scope = decide.credential_scope(self._secret, credential)
            return req, decide.cache_key(req, policy.vary, scope)
        req = decide.shared_request(req, policy.send)
        return req, decide.cache_key(req, policy.send)

    def keep_as(
        self,
        req: UpstreamRequest,
        policy: Policy,
        credential: str,
        fetched: Fetched,
        tags: tuple[str, ...] = (),
    ) -> str:
        """Store the entry of ``fetched`` — an answer to another request, already stored
        under its own key — under ``req``'s key too, as :meth:`fetch` would key ``req``
        for ``credential`` (private to it when given): a long-running operation's finished
        answer, fetched by a poll, kept for the request that started it, so that request
        is a hit next time. The entry keeps its age, TTL and stale windows (it expires when
        the poll's does) and only the headers a stored entry keeps; in L1 now, in L2 in
        the background, with ``tags``. Returns the key ("": nothing stored, because ``req``
        is not cached, or the answer was not)."""
        if not (self.enabled and req.safe_read and policy.cacheable and fetched.cached):
            return ""
        if credential and policy.credentials != "per_credential":
            return ""
        _, key = self._keyed(req, policy, credential)
        if key == fetched.key:
            return key
        got = fetched.entry
        kept = tuple((k, v) for k, v in got.headers if k.lower() in KEPT_HEADERS)
        entry = got if kept == got.headers else dataclasses.replace(got, headers=kept)
        if not entry.etag:
            entry = dataclasses.replace(entry, etag=make_etag(entry.body))
        self.l1.set_nowait(key, entry)
        if tags:
            self._index(key, tags)
        if self.shared is not None:
            self._spawn(self.shared.set(key, entry, tags))
        return key

    async def _wait(self, task: asyncio.Task[Fetched]) -> Fetched:
        """``await wait_for(shield(task), coalesce_timeout)`` at a fraction of the cost.

        The caller stops waiting after the timeout (TimeoutError) or when it is cancelled;
        the task runs on either way, for the other waiters and the cache.
        """
        if not task.done():
            waiter = self._running_loop().create_future()

            def wake(_: object) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            task.add_done_callback(wake)
            timer = waiter.get_loop().call_later(self._timeout, wake, None)
            try:
                await waiter
            finally:
                timer.cancel()
                task.remove_done_callback(wake)
            if not task.done():
                raise TimeoutError
        return task.result()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        # Kept: on Python 3.11 every asyncio.get_running_loop() costs a getpid() syscall.
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _lease(self) -> Lease | None:
        return None if self.bodies is None else Lease(self.bodies)

    async def _direct(self, req: UpstreamRequest, caller: Caller, detail: str = "") -> Fetched:
        start = time.perf_counter()
        lease = self._lease()
        try:
            resp = await self.upstream.send(req, caller, lease)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        entry = Entry(resp.status, resp.headers, resp.body, self.clock(), 0.0)
        fetched = Fetched(entry, "BYPASS", detail=detail)
        fetched.upstream = time.perf_counter() - start
        fetched.lease = lease  # the one holder: this caller
        return fetched

    def _start(
        self,
        key: str,
        req: UpstreamRequest,
        policy: Policy,
        caller: Caller,
        stale: Entry | None,
        shared: bool,
        tags: tuple[str, ...] = (),
    ) -> tuple[asyncio.Task[Fetched], Lease | None]:
        lease = self._lease()
        task = self._running_loop().create_task(
            self._miss(key, req, policy, caller, stale, shared, lease, tags)
        )
        self._inflight[key] = task

        def done(t: asyncio.Task[Fetched]) -> None:
            if self._inflight.get(key) is t:
                del self._inflight[key]
            if not t.cancelled():
                t.exception()  # a background refresh nobody awaits must not warn

        task.add_done_callback(done)
        return task, lease

    async def _miss(
        self,
        key: str,
        req: UpstreamRequest,
        policy: Policy,
        caller: Caller,
        stale: Entry | None,
        shared: bool,
        lease: Lease | None,
        tags: tuple[str, ...],
    ) -> Fetched:
        start = time.perf_counter()
        try:
            if shared and self.leases is not None and self.shared is not None:
                fetched = await self._clustered(
                    self.leases, key, req, policy, caller, stale, lease, tags
                )
            else:
                fetched = await self._call(key, req, policy, caller, stale, shared, lease, tags)
        finally:
            if lease is not None:
                lease.release()  # the call's own hold; a waiting leader keeps its own
        fetched.upstream = time.perf_counter() - start
        return fetched

    async def _call(
        self,
        key: str,
        req: UpstreamRequest,
        policy: Policy,
        caller: Caller,
        stale: Entry | None,
        shared: bool,
        lease: Lease | None,
        tags: tuple[str, ...],
        then: Callable[[Entry], Coroutine[Any, Any, None]] | None = None,
    ) -> Fetched:
        """One upstream call and its entry stored: in L1 now, in L2 in the background (by
        ``then(entry)`` instead when given, before the answer is handed out: a leader
        stores and announces)."""
        try:
            resp = await self.upstream.send(req, caller, lease)
        except UpstreamError:
            if decide.usable_on_error(stale, self.clock()):
                assert stale is not None
                return Fetched(stale, "STALE", key=key, shared=shared, detail="stale-if-error")
            raise
        now = self.clock()
        if decide.upstream_failed(resp.status) and decide.usable_on_error(stale, now):
            assert stale is not None
            return Fetched(stale, "STALE", key=key, shared=shared, detail="stale-if-error")
        ttl = decide.store_ttl(policy, resp.status, resp.body)
        if ttl <= 0:
            entry = Entry(resp.status, resp.headers, resp.body, now, 0.0)
            return Fetched(entry, "MISS", key=key, shared=shared)
        negative = resp.status in policy.negative_statuses
        entry = Entry(
            resp.status,
            tuple((k, v) for k, v in resp.headers if k.lower() in KEPT_HEADERS),
            resp.body,
            now,
            ttl,
            0.0 if negative else policy.stale_while_revalidate,
            0.0 if negative else policy.stale_if_error,
            make_etag(resp.body),
        )
        self.l1.set_nowait(key, entry)
        if tags:
            self._index(key, tags)
        if then is not None:
            # Awaited, one round trip: spawned, the write would wait behind every answer
            # this loop is about to write, and the other replicas with it (bench/RESULTS.md).
            await then(entry)
        elif self.shared is not None:
            self._spawn(self.shared.set(key, entry, tags))
        times = decide.repolls(policy, resp.status, resp.body)
        if times:
            self._repoll(key, req, policy, caller, shared, ttl, times, tags)
        # The caller of this very call gets Roblox's headers (x-ratelimit-*, a cookie …) as
        # sent; its coalesced followers get them without the per-caller ones
        # (Fetched.coalesced), and later hits only what the entry keeps.
        live = entry.with_headers(resp.headers)
        return Fetched(live, "MISS", key=key, shared=shared, stored=True)

    # -- cluster coalescing (the decisions: cache/lease.py) ---------------------------------

    async def _clustered(
        self,
        leases: Leases,
        key: str,
        req: UpstreamRequest,
        policy: Policy,
        caller: Caller,
        stale: Entry | None,
        lease: Lease | None,
        tags: tuple[str, ...] = (),
    ) -> Fetched:
        """This process's one call for a shared ``key``, made one call for every replica:
        lead it under the key's lease, or wait for the replica that leads it."""
        name = lease_key(leases.prefix, key)
        deadline = self._running_loop().time() + leases.max_wait
        take = False  # claim over a "stored" marker whose entry was not there
        handover = False  # claiming again because the leader gave up or died
        while True:
            usable = decide.usable_on_error(stale, self.clock())
            interest = leases.interest(name)  # before the claim: no word is missed
            watched = False
            away = False  # Redis is: no lease, no word
            try:
                got = await leases.claim(name, take)
                away = got.claim is Claim.DOWN
                act = on_claim(got.claim, usable)
                if act is Act.STALE:
                    # Served now; the word, when it comes, brings the new entry into L1.
                    self._elsewhere.add(key)
                    self._spawn(self._watch(leases, key, name, interest, got.pttl, deadline, tags))
                    watched = True
                elif act is Act.WAIT:
                    wake = await leases.wait(interest, got.pttl, deadline)
                    away = wake is Wake.LOST
                    act = on_wake(wake, decide.usable_on_error(stale, self.clock()))
                    handover = act is Act.CLAIM
            finally:
                if not watched:
                    leases.forget(name, interest)
            if act is Act.LEAD:
                leases.count("took_over" if handover else "led")
                return await self._lead(leases, got, key, req, policy, caller, stale, lease, tags)
            if act is Act.STALE:
                assert stale is not None
                leases.count("stale")
                return Fetched(stale, "STALE", key=key, detail=_ELSEWHERE)
            if act is Act.READ:
                found = await self._stored_elsewhere(key, stale, tags)
                after = on_read(found is not None, got.claim is Claim.STORED)
                if after is None:
                    assert found is not None
                    leases.count("waited")
                    return found
                act, take = after, after is Act.CLAIM
            if act is Act.FETCH:
                # Past the wait, the fallback's entry is announced like a leader's.
                announce = None if away else self._announcer(leases, key, name, "", tags)
                leases.count("local" if away else "fallback")
                return await self._call(
                    key, req, policy, caller, stale, True, lease, tags, announce
                )
            # Act.CLAIM: the leader is gone; claim again (one waiter wins, others wait)

    async def _lead(
        self,
        leases: Leases,
        got: ClaimResult,
        key: str,
        req: UpstreamRequest,
        policy: Policy,
        caller: Caller,
        stale: Entry | None,
        lease: Lease | None,
        tags: tuple[str, ...] = (),
    ) -> Fetched:
        renewing = leases.renewing(got)
        self._background.add(renewing)  # (cancelled with the rest when the fetcher closes)
        renewing.add_done_callback(self._background.discard)
        try:
            announce = self._announcer(leases, key, got.lease, got.token, tags, renewing)
            fetched = await self._call(key, req, policy, caller, stale, True, lease, tags, announce)
        except BaseException as exc:
            renewing.cancel()
            # Cancelled (a shutdown): the lease goes to a waiter now, not at its expiry;
            # an error: every waiter asks as it would have (or serves its stale entry).
            wake = Wake.GONE if isinstance(exc, asyncio.CancelledError) else Wake.EMPTY
            with contextlib.suppress(BaseException):
                await leases.done(got.lease, got.token, wake)
            raise
        if not fetched.stored:
            renewing.cancel()
            self._spawn(leases.done(got.lease, got.token, Wake.EMPTY))
        return fetched

    def _announcer(
        self,
        leases: Leases,
        key: str,
        name: str,
        token: str,
        tags: tuple[str, ...] = (),
        renewing: asyncio.Task[None] | None = None,
    ) -> Callable[[Entry], Coroutine[Any, Any, None]]:
        """Store an entry in L2, then release the lease and say so (Redis down: the lease
        expires; the waiters, having lost their subscription, ask upstream themselves)."""
        shared = self.shared
        assert shared is not None

        async def also(pipe: Pipeline) -> None:
            await leases.queue_done(pipe, name, token, Wake.STORED)

        async def announce(entry: Entry) -> None:
            if renewing is not None:
                renewing.cancel()
            # The entry, the release and the word in one write: the other replicas hear
            # of it as soon as Redis has it, however busy this loop is with its answers.
            await shared.set(key, entry, tags, also)

        return announce

    async def _stored_elsewhere(
        self, key: str, stale: Entry | None, tags: tuple[str, ...] = ()
    ) -> Fetched | None:
        """The fresh entry another replica stored under ``key`` (newer than ``stale``)."""
        assert self.shared is not None
        entry = await self.shared.get(key)
        if entry is None or decide.freshness(entry, self.clock()) is not decide.Freshness.FRESH:
            return None
        if stale is not None and entry.stored_at <= stale.stored_at:
            return None
        self.l1.set_nowait(key, entry)
        if tags:
            self._index(key, tags)
        found = Fetched(entry, "COALESCED", key=key, detail="another replica")
        found.tags = tags
        return found

    async def _watch(
        self,
        leases: Leases,
        key: str,
        name: str,
        interest: asyncio.Future[Wake],
        pttl: float,
        deadline: float,
        tags: tuple[str, ...] = (),
    ) -> None:
        """Wait for the word on a key another replica fetches while our stale entry
        stands in; a stored entry is brought into L1 for the requests after."""
        try:
            if await leases.wait(interest, pttl, deadline) is Wake.STORED and self.shared:
                entry = await self.shared.get(key)
                if entry is not None:
                    self.l1.set_nowait(key, entry)
                    if tags:
                        self._index(key, tags)
        finally:
            leases.forget(name, interest)
            self._elsewhere.discard(key)

    def _repoll(
        self,
        key: str,
        req: UpstreamRequest,
        policy: Policy,
        caller: Caller,
        shared: bool,
        ttl: float,
        times: int,
        tags: tuple[str, ...],
    ) -> None:
        """Ask ``req`` again in the background when its entry expires, up to ``times``
        times while the answer still matches a re-poll condition."""
        if key in self._repolling:
            return
        self._repolling.add(key)

        async def again() -> None:
            try:
                wait = ttl
                for _ in range(times):
                    await self._sleep(wait)
                    if key in self._inflight:
                        return  # a client asked meanwhile: its call decides
                    task, _ = self._start(key, req, policy, caller, None, shared, tags)
                    fetched = await task
                    entry = fetched.entry
                    if entry.ttl <= 0 or not decide.repolls(policy, entry.status, entry.body):
                        return
                    wait = entry.ttl
            finally:
                self._repolling.discard(key)

        self._spawn(again())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self._running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- entities ------------------------------------------------------------------------

    async def fetch_entities(
        self,
        req: UpstreamRequest,
        spec: BatchSpec,
        policy: Policy,
        caller: Caller = NOBODY,
        credential: str = "",
        newer_than: float = 0.0,
        tags: tuple[str, ...] = (),
    ) -> Fetched:
        """The answer to ``req``, a request to the batch endpoint ``spec`` describes,
        assembled from one entry per id; the ids not in the cache are asked upstream
        through the micro-batcher (:mod:`.batcher`), merged with other callers' (see
        :mod:`.entities`). A request that cannot be split, a credentialed one, and one
        whose batch Roblox refused as a whole are fetched as they are (:meth:`fetch`),
        tagged with the ids they name. ``tags``: the rule's, on the answer beside its
        entities' (each entity entry carries its own, :func:`entities.entity_tags`)."""
        if credential or not (self.enabled and policy.cacheable and req.safe_read):
            return await self.fetch(req, policy, caller, credential, newer_than)
        shared = decide.shared_request(req, policy.send)
        ask = entities.ask_of(spec, shared)
        if ask is None:
            whole = _union(tags, entities.request_tags(spec, shared))
            return await self.fetch(req, policy, caller, credential, newer_than, whole)
        variant_key = decide.cache_key(ask.variant, policy.send)
        keys = [entities.entity_key(variant_key, n) for n in ask.norm]
        looked = time.perf_counter()
        found = [self.l1.get_nowait(k) for k in keys]
        if self.shared is not None and None in found:
            missing = [i for i, e in enumerate(found) if e is None]
            got = await asyncio.gather(*(self.shared.get(keys[i]) for i in missing))
            for i, entry in zip(missing, got, strict=True):
                if entry is not None:
                    found[i] = entry
                    self.l1.set_nowait(keys[i], entry)
                    self._index(keys[i], self._entity_tags(spec, ask.norm[i], entry))
        looked = time.perf_counter() - looked
        now = self.clock()
        deadline = self._running_loop().time() + (
            caller.max_wait if caller.max_wait is not None else self._max_wait
        )
        parts: list[Entry | None] = list(found)
        waiting: dict[int, asyncio.Future[Any]] = {}
        result = "HIT"
        started = False
        for i, entry in enumerate(found):
            if entry is None or entry.stored_at < newer_than:
                state = decide.Freshness.EXPIRED
            else:
                state = decide.freshness(entry, now)
            if state is decide.Freshness.FRESH:
                continue
            known = self.batcher.known(keys[i])
            if state is decide.Freshness.STALE_WHILE_REVALIDATE:
                result = "STALE"  # served now; one refresh (in a batch) runs meanwhile
                if known is None:
                    self._ask(spec, variant_key, ask, policy, keys[i], i, caller, deadline)
                continue
            started |= known is None
            waiting[i] = known or self._ask(
                spec, variant_key, ask, policy, keys[i], i, caller, deadline
            )
        upstream = 0.0
        if waiting:
            began = time.perf_counter()
            try:
                async with asyncio.timeout(self._timeout):
                    outcomes = await asyncio.gather(*(asyncio.shield(f) for f in waiting.values()))
            except TimeoutError:
                raise UpstreamError(
                    504,
                    f"no answer from {req.service} within {self._timeout:g}s (waited for a batch)",
                    code="upstream_timeout",
                ) from None
            upstream = time.perf_counter() - began
            for i, outcome in zip(waiting, outcomes, strict=True):
                if outcome is _WHOLE:  # Roblox refused the merged batch: ask as asked
                    whole = _union(tags, entities.request_tags(spec, shared))
                    return await self.fetch(req, policy, caller, credential, newer_than, whole)
                if isinstance(outcome, Entry) and outcome.status in (200, 404):
                    parts[i] = outcome  # the id's item, or Roblox's word that it has none
                    continue
                stale = found[i]
                if decide.usable_on_error(stale, now):
                    parts[i], result = stale, "STALE"
                    continue
                if isinstance(outcome, Entry):  # the error everyone's own call would get
                    failed = Fetched(outcome, "MISS", key="", shared=True)
                    failed.cache_time = looked
                    return failed
                if isinstance(outcome, BaseException):
                    raise outcome
                raise UpstreamError(
                    502, f"{req.service}: no answer for an id", code="upstream_error"
                )
            if result == "HIT":
                result = "MISS" if started else "COALESCED"
        entry = _assembled(spec, ask, parts, now)
        fetched = Fetched(
            entry,
            result,
            key=decide.cache_key(shared, policy.send),
            shared=True,
            stored=result == "MISS",
        )
        fetched.cache_time, fetched.upstream = looked, upstream
        if self.tag_header:  # (only the tag header needs an assembled answer's tags)
            mine = [self._entity_tags(spec, n, p) for n, p in zip(ask.norm, parts, strict=True)]
            fetched.tags = _union(tags, tuple(t for ts in mine for t in ts))
        return fetched  # (no fast path: the answer is made of parts, not one L1 entry)

    def _ask(
        self,
        spec: BatchSpec,
        variant_key: str,
        ask: entities.Ask,
        policy: Policy,
        key: str,
        i: int,
        caller: Caller,
        deadline: float,
    ) -> asyncio.Future[Any]:
        return self.batcher.ask(
            spec, variant_key, ask.variant, policy, key, ask.norm[i], ask.ids[i], caller, deadline
        )

    async def _run_batch(self, batch: Batch) -> dict[str, Any]:
        """One batch call: ask Roblox, store each id's entry (absent ids as negative
        entries), and say what each id got. With cluster coalescing, per entity: the ids
        another replica is asking are waited for (:meth:`_clustered_batch`)."""
        if self.leases is not None and self.shared is not None:
            if batch.cluster is not None:
                followed = await self._collected(self.leases, self.shared, batch)
                if followed is not None:
                    return followed
            return await self._clustered_batch(self.leases, self.shared, batch)
        return await self._ask_batch(batch, list(batch.ids))

    def _batch_opened(self, batch: Batch) -> None:
        """A batch just opened: with batches across replicas, it takes its variant's
        collector lease (in the background: its first id is not held up), and follows
        another replica's batch when that one holds it."""
        collectors = self.collectors
        if collectors is None or self.leases is None or self.shared is None:
            return

        async def lead() -> str | None:
            token, rate = await collectors.lead(batch.variant_key)
            if token == "":
                self.batcher.follow(batch)
            elif token:  # we collect: for as long as the cluster's demand says
                self.batcher.widen(batch, rate)
            return token

        task = self._running_loop().create_task(lead())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        batch.cluster = task

    async def _collected(
        self, leases: Leases, shared: SharedCache, batch: Batch
    ) -> dict[str, Any] | None:
        """The cluster side of a batch about to go (:mod:`.cluster_batch`). A follower puts
        its ids in the collector's box and waits for each id's word as for an entity another
        replica leads (the outcomes; None when it must collect after all). A collector (or
        a follower whose collector has gone) takes the box's ids into its own batch, up to
        the cap, and returns None: the batch then goes as any other, claiming and
        announcing every id it carries."""
        collectors = self.collectors
        assert collectors is not None
        token: str | None = await batch.cluster
        if token is None:
            return None  # Redis away: alone
        names = {
            n: lease_key(leases.prefix, entities.entity_key(batch.variant_key, n))
            for n in batch.ids
        }
        if token == "":
            interests = {n: leases.interest(names[n]) for n in batch.ids}  # before joining
            try:
                left, remote = await collectors.join(batch.variant_key, batch.ids)
                if left > 0:
                    return await self._followed(leases, shared, batch, names, interests, left)
            finally:
                for n, fut in interests.items():
                    leases.forget(names[n], fut)
        else:
            # slot first: the budget's slot before the take, the lease held meanwhile
            loop = self._running_loop()
            within = slot_first(
                loop.time(),
                batch.opened + collectors.lease_ms / 1000,
                self.upstream.next_slot_in(batch.variant.scope),
            )
            if within > 0.0:
                batch.ticket = await self.upstream.reserve(batch.variant, batch.caller, within)
            remote = await collectors.take(batch.variant_key, token, len(batch.ids))
        ids, carried, _ = merged(batch.ids, remote, batch.spec.max)
        # (ids past the cap: nobody claims them, their followers' bound passes, they ask)
        collectors.carried += len(carried)
        if carried:  # the cluster's demand: our next batch's window counts it
            self.batcher.arrived(batch.variant_key, self._running_loop().time(), len(carried))
        batch.ids = ids
        return None

    async def _followed(
        self,
        leases: Leases,
        shared: SharedCache,
        batch: Batch,
        names: dict[str, str],
        interests: dict[str, asyncio.Future[Wake]],
        left: float,
    ) -> dict[str, Any]:
        """A follower's ids, now in another replica's batch: each waited for as an entity
        that replica leads, from the collector's lease left plus one lease TTL (its take
        and claims); claimed again when no word came by then (the collector died), and
        the ids that end up ours asked in one call of our own."""
        deadline = self._running_loop().time() + leases.max_wait
        norms = list(batch.ids)
        # as if each id's lease were held for the collector's lease left plus one TTL
        held = {n: ClaimResult(Claim.HELD, names[n], "", left + leases.ttl) for n in norms}
        settled = await asyncio.gather(
            *(
                self._entity_settled(
                    leases,
                    shared,
                    entities.entity_key(batch.variant_key, n),
                    held[n],
                    interests,
                    n,
                    deadline,
                )
                for n in norms
            )
        )
        out: dict[str, Any] = {}
        mine: dict[str, ClaimResult] = {}
        for n, outcome in zip(norms, settled, strict=True):
            if isinstance(outcome, Entry):  # the collector's (now in our L1)
                out[n] = outcome
                key = entities.entity_key(batch.variant_key, n)
                self._index(key, self._entity_tags(batch.spec, n, outcome))
            else:
                mine[n] = outcome
        leases.count("waited", len(norms) - len(mine))
        leases.count("fallback", len(mine))
        if mine:
            out.update(await self._ask_batch(batch, list(mine), mine))
        return out

    async def _clustered_batch(
        self, leases: Leases, shared: SharedCache, batch: Batch
    ) -> dict[str, Any]:
        """The batch's ids claimed in one write: ours (and all of them with Redis down) are
        asked in this replica's call at once; every other id follows the steps of a single
        key (:meth:`_entity_settled`) — waited for by its word and read from L2, claimed
        again when its leader gives up or dies — and those that end up ours are asked in
        one more call, stored and announced."""
        norms = list(batch.ids)
        keys = {n: entities.entity_key(batch.variant_key, n) for n in norms}
        names = {n: lease_key(leases.prefix, keys[n]) for n in norms}
        interests = {n: leases.interest(names[n]) for n in norms}  # before the claims
        deadline = self._running_loop().time() + leases.max_wait
        try:
            got = dict(zip(norms, await leases.claim_many([names[n] for n in norms]), strict=True))
            ours = [n for n in norms if got[n].claim in (Claim.ACQUIRED, Claim.DOWN)]
            others = [n for n in norms if n not in ours]
            down = sum(got[n].claim is Claim.DOWN for n in norms)
            leases.count("led", len(ours) - down)
            leases.count("local", down)
            asked = self._ask_batch(batch, ours, got) if ours else _nothing()
            mine, *settled = await asyncio.gather(
                asked,
                *(
                    self._entity_settled(leases, shared, keys[n], got[n], interests, n, deadline)
                    for n in others
                ),
            )
            out: dict[str, Any] = dict(mine)
            left: dict[str, ClaimResult] = {}
            for n, outcome in zip(others, settled, strict=True):
                if isinstance(outcome, Entry):  # another replica's (now in our L1)
                    out[n] = outcome
                    key = entities.entity_key(batch.variant_key, n)
                    self._index(key, self._entity_tags(batch.spec, n, outcome))
                else:
                    left[n] = outcome
            taken = sum(c.claim is Claim.ACQUIRED for c in left.values())
            leases.count("waited", len(others) - len(left))
            leases.count("took_over", taken)
            leases.count("fallback", len(left) - taken)
            if left:  # ours after all: asked together, stored and said
                out.update(await self._ask_batch(batch, list(left), left))
            return out
        finally:
            for n in norms:
                leases.forget(names[n], interests[n])

    async def _entity_settled(
        self,
        leases: Leases,
        shared: SharedCache,
        key: str,
        got: ClaimResult,
        interests: dict[str, asyncio.Future[Wake]],
        norm: str,
        deadline: float,
    ) -> Entry | ClaimResult:
        """One id of a batch that this replica did not win at once, as :meth:`_clustered`
        does a key (no stale stand-in here: the batch's caller picks stale on an error):
        the entity another replica stored, or the claim to ask it with ourselves (acquired:
        its lease is ours; else asked without one)."""
        name = got.lease
        take = False
        while True:
            act = on_claim(got.claim, False)
            if act is Act.WAIT:
                act = on_wake(await leases.wait(interests[norm], got.pttl, deadline), False)
            if act is Act.READ:
                found = await self._entity_elsewhere(shared, key)
                after = on_read(found is not None, got.claim is Claim.STORED)
                if after is None:
                    assert found is not None
                    return found
                act, take = after, after is Act.CLAIM
            if act is not Act.CLAIM:  # LEAD: ours now; FETCH: ask it without a lease
                return got if act is Act.LEAD else ClaimResult(Claim.DOWN, name, "", 0.0)
            leases.forget(name, interests[norm])
            interests[norm] = leases.interest(name)  # (forgotten by the batch's finally)
            got = await leases.claim(name, take)

    async def _entity_elsewhere(self, shared: SharedCache, key: str) -> Entry | None:
        """The fresh entity another replica stored under ``key`` (into L1 too), if any."""
        entry = await shared.get(key)
        if entry is None or decide.freshness(entry, self.clock()) is not decide.Freshness.FRESH:
            return None
        self.l1.set_nowait(key, entry)
        return entry

    async def _ask_batch(
        self, batch: Batch, norms: list[str], claims: dict[str, ClaimResult] | None = None
    ) -> dict[str, Any]:
        """One batch call for the ids ``norms`` of ``batch``. ``claims``: with cluster
        coalescing, the ids' claims — the leases held are renewed while the call runs, and
        the entities, the releases and their words leave in one write once it is back."""
        spec: BatchSpec = batch.spec
        policy: Policy = batch.policy
        req = entities.batch_request(spec, batch.variant, [batch.ids[n] for n in norms])
        held = [] if claims is None else [claims[n] for n in norms if n in claims]
        leases = self.leases if claims is not None else None
        renewing = leases.renewing(*held) if leases is not None and held else None
        lease = self._lease()
        stored: list[tuple[str, Entry, tuple[str, ...]]] = []
        try:
            ticket, batch.ticket = batch.ticket, None  # (one call goes with it)
            resp = await self.upstream.send(req, batch.caller, lease, ticket)
        except BaseException as exc:
            if leases is not None:
                wake = Wake.GONE if isinstance(exc, asyncio.CancelledError) else Wake.EMPTY
                with contextlib.suppress(BaseException):
                    await self._announce_entities(leases, held, [], wake)
            if isinstance(exc, UpstreamError):
                return dict.fromkeys(norms, exc)
            raise
        finally:
            if renewing is not None:
                renewing.cancel()
            if lease is not None:
                lease.release()
        now = self.clock()
        out: dict[str, Any]
        if 200 <= resp.status < 300 and (items := entities.items_of(spec, resp.body)) is not None:
            kept = tuple((k, v) for k, v in resp.headers if k.lower() in KEPT_HEADERS)
            out = {}
            for norm in norms:
                item = items.get(norm)
                out[norm] = entry = self._entity(policy, spec, kept, item, now)
                if entry.ttl > 0:
                    key = entities.entity_key(batch.variant_key, norm)
                    tags = entities.entity_tags(spec, norm, item)
                    self.l1.set_nowait(key, entry)
                    if tags:
                        self._index(key, tags)
                    stored.append((key, entry, tags))
                    if item is not None:
                        times = decide.repolls(policy, 200, _alone(spec, item))
                        if times:
                            self._repoll_entity(batch, norm, key, entry.ttl, times)
        elif 200 <= resp.status < 300:
            bad = UpstreamError(
                502,
                f"{req.service} answered a batch with an unexpected shape",
                code="upstream_bad_response",
            )
            out = dict.fromkeys(norms, bad)
        elif resp.status == 429 or resp.status >= 500:  # about the moment: everyone's call
            failed = Entry(resp.status, resp.headers, resp.body, now, 0.0).for_another_caller()
            out = dict.fromkeys(norms, failed)
        else:
            out = dict.fromkeys(norms, _WHOLE)  # refused as a whole: each asks as it asked
        if leases is not None:
            await self._announce_entities(leases, held, stored, Wake.STORED)
        elif stored and self.shared is not None:
            for key, entry, tags in stored:
                self._spawn(self.shared.set(key, entry, tags))
        return out

    async def _announce_entities(
        self,
        leases: Leases,
        held: list[ClaimResult],
        stored: list[tuple[str, Entry, tuple[str, ...]]],
        wake: Wake,
    ) -> None:
        """Store ``stored`` in L2 and, in the same write, say ``wake`` for each of them
        (releasing the leases ``held``) and ``empty`` for the leases held of ids not
        stored."""
        shared = self.shared
        assert shared is not None
        tokens = {r.lease: r.token for r in held if r.claim is Claim.ACQUIRED}
        said = {lease_key(leases.prefix, key) for key, _, _ in stored}

        async def words(pipe: Pipeline) -> None:
            for name in said:
                await leases.queue_done(pipe, name, tokens.get(name, ""), wake)
            for name, token in tokens.items():
                if name not in said:
                    await leases.queue_done(
                        pipe, name, token, Wake.EMPTY if wake is Wake.STORED else wake
                    )

        if stored or tokens:
            await shared.set_many(stored, words)

    def _repoll_entity(self, batch: Batch, norm: str, key: str, ttl: float, times: int) -> None:
        """Ask one id again in the background when its entry expires, up to ``times``
        times while it still matches a re-poll condition (a ``Pending`` thumbnail), so that
        the next client gets the finished one. Each re-ask joins a batch like any other."""
        if key in self._repolling:
            return
        self._repolling.add(key)
        spelled = batch.ids[norm]

        async def again() -> None:
            try:
                wait = ttl
                for _ in range(times):
                    await self._sleep(wait)
                    deadline = self._running_loop().time() + self._max_wait
                    outcome = await self.batcher.ask(
                        batch.spec,
                        batch.variant_key,
                        batch.variant,
                        batch.policy,
                        key,
                        norm,
                        spelled,
                        batch.caller,
                        deadline,
                    )
                    if not isinstance(outcome, Entry) or outcome.status != 200:
                        return
                    body = _alone(batch.spec, outcome.body)
                    if not decide.repolls(batch.policy, 200, body) or outcome.ttl <= 0:
                        return  # finished (or no longer kept)
                    wait = outcome.ttl
            finally:
                self._repolling.discard(key)

        self._spawn(again())

    @staticmethod
    def _entity_tags(spec: BatchSpec, norm: str, entry: Entry | None) -> tuple[str, ...]:
        item = entry.body if entry is not None and entry.status == 200 else None
        return entities.entity_tags(spec, norm, item)

    def _index(self, key: str, tags: tuple[str, ...]) -> None:
        """``key`` (just put in L1) carries ``tags``."""
        if tags and self.l1.max_entries:
            self.tags.add(key, tags, self.l1.__contains__)

    @staticmethod
    def _entity(
        policy: Policy,
        spec: BatchSpec,
        headers: tuple[tuple[str, str], ...],
        item: bytes | None,
        now: float,
    ) -> Entry:
        """One id's entry: its item (200) or its absence (404), stored as the policy says —
        per item, so a Pending thumbnail among Completed ones is kept for seconds only."""
        if item is None:
            ttl = decide.store_ttl(policy, 404, b"")
            return Entry(404, (), b"", now, ttl)
        ttl = decide.store_ttl(policy, 200, _alone(spec, item))
        return Entry(
            200,
            headers,
            item,
            now,
            ttl,
            policy.stale_while_revalidate,
            policy.stale_if_error,
            make_etag(item),
        )

    # -- renderings ------------------------------------------------------------------------

    def rendered(
        self,
        fetched: Fetched,
        route_id: str,
        requested: Sequence[object] | None,
        render: Callable[[Entry], bytes],
    ) -> tuple[bytes, str]:
        """``render(fetched.entry)`` (a clean route's normalized body) and its ETag.

        Memoized in L1 beside the entry it came from (same key prefix, so a purge of the
        entry purges its renderings), so a hit does not parse and normalize again.
        """
        entry = fetched.entry
        if not fetched.cached:
            return render(entry), ""
        # Keyed by the version of what it renders (the entry's ETag): an answer assembled
        # from entities changes when one of its parts does, its age need not.
        rkey = f"{fetched.key} |render={route_id}@{entry.etag}"
        if requested:
            rkey += "|" + ",".join(map(str, requested))
        memo = self.l1.get_nowait(rkey)
        if memo is not None and memo.stored_at == entry.stored_at:
            return memo.body, memo.etag
        # A right-sized copy: orjson's output keeps a buffer of at least a few KiB behind a
        # small body, which would make every cached rendering cost several times its size.
        body = memoryview(render(entry)).tobytes()
        etag = make_etag(body)
        self.l1.set_nowait(
            rkey,
            Entry(
                200,
                (),
                body,
                entry.stored_at,
                entry.ttl,
                entry.stale_while_revalidate,
                entry.stale_if_error,
                etag,
            ),
        )
        return body, etag

    def encoded(
        self,
        fetched: Fetched,
        etag: str,
        coding: str,
        body: bytes,
        encode: Callable[[bytes], bytes],
    ) -> bytes:
        """``encode(body)`` — the answer ``body`` (ETag ``etag``, of ``fetched``'s entry)
        compressed in ``coding`` — made once and memoized in L1 beside the entry, like a
        rendering (a purge of the entry purges it), so a hit does not compress again.
        Not memoized when the answer is not the cached one's (no entry, or no ETag)."""
        entry = fetched.entry
        if not fetched.cached or not etag:
            return encode(body)
        ekey = f"{fetched.key} |enc={coding}@{etag}"
        memo = self.l1.get_nowait(ekey)
        if memo is not None and memo.stored_at == entry.stored_at:
            return memo.body
        out = encode(body)
        self.l1.set_nowait(
            ekey,
            Entry(
                entry.status,
                (),
                out,
                entry.stored_at,
                entry.ttl,
                entry.stale_while_revalidate,
                entry.stale_if_error,
            ),
        )
        return out

    # -- purge -----------------------------------------------------------------------------

    async def purge_key(self, key: str) -> int:
        """Remove one entry (and its renderings) everywhere."""
        n = int(self.l1.delete_nowait(key))
        self.l1.delete_prefix_nowait(key + " |")
        if self.shared is not None:
            n = max(n, await self.shared.delete(key))
            await self.shared.publish("key", key)
        return n

    async def purge_prefix(self, prefix: str) -> int:
        n = self.l1.delete_prefix_nowait(prefix)
        if self.shared is not None:
            n = max(n, await self.shared.delete_prefix(prefix))
            await self.shared.publish("prefix", prefix)
        return n

    async def purge_tag(self, tag: str, *, soft: bool = False) -> int:
        """Remove every entry carrying ``tag`` everywhere (L1, Redis, every replica's L1);
        ``soft``: mark them stale instead (:func:`decide.marked_stale`), so they are served
        STALE while one refresh runs. How many entries it found."""
        n = self._soften_l1(tag) if soft else self._drop_l1_tag(tag)
        if self.shared is not None:
            if soft:
                n = max(n, await self.shared.soften_tag(tag, self._mark))
            else:
                n = max(n, await self.shared.delete_tag(tag))
            await self.shared.publish("soft_tag" if soft else "tag", tag)
        return n

    def _mark(self, entry: Entry) -> Entry | None:
        return decide.marked_stale(entry, self.clock())

    def _drop_l1_tag(self, tag: str) -> int:
        keys = self.tags.pop(tag)
        return self.l1.delete_keys_nowait(keys) if keys else 0

    def _soften_l1(self, tag: str) -> int:
        count = 0
        for key in self.tags.keys(tag):
            entry = self.l1.get_nowait(key)
            marked = None if entry is None else self._mark(entry)
            if marked is not None:
                self.l1.set_nowait(key, marked)  # (gone if it has no stale window)
                count += 1
        if count:
            for hook in self.on_soft_purge:
                hook()
        return count

    async def purge_all(self) -> int:
        self.tags.clear()
        n = self.l1.clear_nowait()
        if self.shared is not None:
            n = max(n, await self.shared.clear())
            await self.shared.publish("all", "")
        return n

    def drop_l1(self) -> None:
        self.l1.clear_nowait()
        self.tags.clear()

    def apply_event(self, event: dict[str, Any]) -> None:
        """An invalidation published by another replica: drop it from our L1."""
        op, arg = event.get("op"), event.get("arg")
        if op == "key" and isinstance(arg, str):
            self.l1.delete_nowait(arg)
            self.l1.delete_prefix_nowait(arg + " |")
        elif op == "prefix" and isinstance(arg, str):
            self.l1.delete_prefix_nowait(arg)
        elif op == "tag" and valid_tag(arg):
            assert isinstance(arg, str)
            self._drop_l1_tag(arg)
        elif op == "soft_tag" and valid_tag(arg):
            assert isinstance(arg, str)
            self._soften_l1(arg)
        elif op == "all":
            self.l1.clear_nowait()
            self.tags.clear()

    @property
    def in_flight(self) -> int:
        """Upstream calls under way that callers share (one per cache key)."""
        return len(self._inflight)

    def tasks(self) -> list[asyncio.Task[Any]]:
        """The upstream calls in flight and the background writes to Redis."""
        return [*self._inflight.values(), *self._background]

    async def close(self) -> None:
        await self.batcher.close()
        tasks = self.tasks()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


_ELSEWHERE = "refreshing in another replica"


async def _nothing() -> dict[str, Any]:
    return {}


# A batch outcome: Roblox refused the merged batch as a whole (a 4xx other than 429), so
# each caller asks its own request as it asked it.
_WHOLE = object()


def _assembled(spec: BatchSpec, ask: entities.Ask, parts: list[Entry | None], now: float) -> Entry:
    """The answer assembled from its ids' entries: as old as the oldest of them and fresh
    for as long as the shortest-lived (its ``Age`` and ``max-age`` say so), its ETag that of
    its bytes."""
    items = [p.body if p is not None and p.status == 200 else None for p in parts]
    body = entities.assemble(spec, ask, items)
    known = [p for p in parts if p is not None]
    age = max((p.age(now) for p in known), default=0.0)
    left = min((p.ttl - p.age(now) for p in known), default=0.0)
    headers = next((p.headers for p in known if p.status == 200 and p.headers), _JSON)
    return Entry(
        200,
        headers,
        body,
        now - age,
        max(0.0, age + left),
        min((p.stale_while_revalidate for p in known), default=0.0),
        min((p.stale_if_error for p in known), default=0.0),
        make_etag(body),
    )


_JSON = (("Content-Type", "application/json; charset=utf-8"),)


def _union(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    """Both tag lists, each tag once, in order, at most MAX_TAGS."""
    if not second:
        return first
    return tuple(dict.fromkeys((*first, *second)))[:MAX_TAGS]


def _alone(spec: BatchSpec, item: bytes) -> bytes:
    """One item as the endpoint's answer for it alone (what ``when`` paths look into)."""
    return b'{"' + spec.items.encode() + b'":[' + item + b"]}"
