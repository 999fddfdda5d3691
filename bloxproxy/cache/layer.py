"""The cache layer: L1 → L2 → coalesced upstream call, with stale serving.

:class:`Fetcher` is the only thing handlers await to get an upstream answer. Per key:

- fresh entry (L1, else L2 which then fills L1) → HIT;
- stale within stale-while-revalidate → served at once (STALE) and exactly one background
  refresh runs (the refresh *is* the in-flight task of the key, so a second cannot start);
- otherwise one upstream call per key and process: the first request starts a task,
  concurrent ones await the same task (COALESCED), each bounded by ``coalesce_timeout``
  (then 504). The task is shielded, so a client that disconnects does not cancel the call
  others wait for. An answer that may not be stored is still handed to every waiter;
- the upstream fails (connection, timeout, 5xx, 429) and a stale entry is within its
  stale-if-error window → STALE.

Credentialed requests bypass the shared cache unless the rule opts in to per-credential
entries keyed by an HMAC of the credential. Redis trouble never fails a request:
:class:`SharedCache` degrades to L1 and logs once per incident.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from ..config import Config
from ..errors import UpstreamError
from ..fetch import Fetched, Policy
from ..middlewares import request_id_of
from ..upstream import Upstream, UpstreamRequest
from . import decide
from .entry import KEPT_HEADERS, Entry, make_etag
from .redis_store import RedisStore
from .store import MemoryStore, StoreUnavailable

log = logging.getLogger("bloxproxy.cache")


class SharedCache:
    """Redis L2 plus the invalidation channel, degrading to "absent" while Redis is down.

    Every operation either works or quietly does nothing; the first failure of an incident
    is logged (warning), the recovery too (info), nothing per request. After a failure Redis
    is skipped for a back-off window instead of costing every request a timeout.
    """

    def __init__(
        self,
        store: RedisStore,
        listener_client: aioredis.Redis,
        channel: str,
        on_missed_events: Callable[[], None],
        apply_event: Callable[[dict[str, Any]], None],
        publisher: aioredis.Redis | None = None,
    ) -> None:
        self.store = store
        self._listener_client = listener_client
        # Publishing goes through the client with a command timeout: a hung Redis must not
        # hang the purge request (the listener's client has no read timeout).
        self._publisher = publisher or listener_client
        self.channel = channel
        self.origin = uuid.uuid4().hex
        self._on_missed = on_missed_events
        self._apply = apply_event
        self.healthy = True
        self._retry_at = 0.0
        self._backoff = 0.5
        self._listener: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def _usable(self) -> bool:
        return self.healthy or time.monotonic() >= self._retry_at

    def _failed(self, exc: BaseException) -> None:
        if self.healthy:
            log.warning("redis unavailable, serving from L1 and upstream: %s", exc)
        now = time.monotonic()
        # Only a failed *retry* doubles the back-off: the many requests that failed
        # together at the start of one incident count once.
        if self.healthy or now >= self._retry_at:
            self._retry_at = now + self._backoff
            if not self.healthy:
                self._backoff = min(self._backoff * 2, 30.0)
        self.healthy = False

    def _worked(self) -> None:
        if not self.healthy:
            log.info("redis is reachable again")
        self.healthy = True
        self._backoff = 0.5

    async def _call(self, op: Coroutine[Any, Any, Any], default: Any) -> Any:
        if not self._usable():
            op.close()
            return default
        try:
            result = await op
        except StoreUnavailable as exc:
            self._failed(exc)
            return default
        self._worked()
        return result

    async def get(self, key: str) -> Entry | None:
        # self._call(self.store.get(key), None), one coroutine less: every L2 hit comes here
        if not self.healthy and time.monotonic() < self._retry_at:
            return None
        try:
            entry = await self.store.get(key)
        except StoreUnavailable as exc:
            self._failed(exc)
            return None
        if not self.healthy:
            self._worked()
        return entry

    async def set(self, key: str, entry: Entry) -> None:
        await self._call(self.store.set(key, entry), None)

    async def delete(self, key: str) -> int:
        return 1 if await self._call(self.store.delete(key), False) else 0

    async def delete_prefix(self, prefix: str) -> int:
        result: int = await self._call(self.store.delete_prefix(prefix), 0)
        return result

    async def clear(self) -> int:
        result: int = await self._call(self.store.clear(), 0)
        return result

    async def publish(self, op: str, arg: str) -> None:
        message = orjson.dumps({"op": op, "arg": arg, "origin": self.origin})
        client = self._publisher

        async def send() -> None:
            try:
                await client.publish(self.channel, message)
            except (RedisError, OSError) as exc:
                raise StoreUnavailable(f"redis publish failed: {exc}") from exc

        await self._call(send(), None)

    # -- invalidation listener ---------------------------------------------------------

    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="bloxproxy-invalidations")

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    async def _listen(self) -> None:
        backoff = 0.2
        missed = False
        while True:
            pubsub = self._listener_client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                if missed:
                    # Events published while we were away are lost (also when Redis was
                    # already away at start: L1 filled meanwhile): whatever L1 holds may
                    # have been purged elsewhere, so start over from L2 and upstream.
                    self._on_missed()
                    log.info("invalidation channel reconnected; L1 dropped")
                    # Redis is back: let L2 try at once rather than wait out its back-off
                    # (healthy is left to the first L2 command that works).
                    self._retry_at, self._backoff = 0.0, 0.5
                missed, backoff = False, 0.2
                self.listening.set()
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None:
                        self._event(msg.get("data"))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.listening.clear()
                missed = True
                if self.healthy:  # one incident with the store's failures: one warning
                    self._failed(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _event(self, data: object) -> None:
        try:
            event = orjson.loads(data) if isinstance(data, bytes | str) else None
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict) or event.get("origin") == self.origin:
            return
        self._apply(event)


class Fetcher:
    """Cache-aware fetching (see the module docstring)."""

    def __init__(
        self,
        upstream: Upstream,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        shared: SharedCache | None = None,
    ) -> None:
        self.upstream = upstream
        self.clock = clock
        self.enabled = config.cache.enabled
        self.l1 = MemoryStore(config.cache.max_bytes, config.cache.max_entries, clock)
        self.shared = shared
        self._timeout = config.cache.coalesce_timeout
        secret = config.cache.credential_secret
        self._secret = secret.encode() if secret else os.urandom(32)
        self._inflight: dict[str, asyncio.Task[Fetched]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the request path ----------------------------------------------------------------

    async def fetch(
        self, req: UpstreamRequest, policy: Policy, request: web.Request, credential: str = ""
    ) -> Fetched:
        rid = request_id_of(request)
        if not (self.enabled and req.safe_read and policy.cacheable):
            return await self._direct(req, rid)
        scope = ""
        if credential:
            if policy.credentials != "per_credential":
                return await self._direct(req, rid, detail="credentialed")
            scope = decide.credential_scope(self._secret, credential)
        shared = not scope
        if shared:
            req = decide.shared_request(req, policy.send)
            key = decide.cache_key(req, policy.send)
        else:
            key = decide.cache_key(req, policy.vary, scope)
        looked = time.perf_counter()
        entry = self.l1.get_nowait(key)
        if entry is None and self.shared is not None:
            entry = await self.shared.get(key)
            if entry is not None:
                self.l1.set_nowait(key, entry)
        looked = time.perf_counter() - looked
        if entry is not None:
            state = decide.freshness(entry, self.clock())
            if state is decide.Freshness.FRESH:
                hit = self._fetched(entry, "HIT", key, shared)
                hit.fast_ok, hit.cache_time = policy.fast_ok, looked
                return hit
            if state is decide.Freshness.STALE_WHILE_REVALIDATE:
                if key not in self._inflight:
                    self._start(key, req, policy, rid, entry, shared)
                stale = self._fetched(entry, "STALE", key, shared, detail="revalidating")
                stale.cache_time = looked
                return stale
        task = self._inflight.get(key)
        coalesced = task is not None
        if task is None:
            task = self._start(key, req, policy, rid, entry, shared)
        try:
            fetched = await self._wait(task)
        except TimeoutError:
            raise UpstreamError(
                504,
                f"no answer from {req.service} within "
                f"{self._timeout:g}s (waited for an identical request)",
                code="upstream_timeout",
            ) from None
        out = fetched.coalesced() if coalesced else fetched
        out.fast_ok, out.cache_time = policy.fast_ok, looked
        return out

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

    def _fetched(
        self,
        entry: Entry,
        result: str,
        key: str,
        shared: bool,
        *,
        stored: bool = False,
        detail: str = "",
    ) -> Fetched:
        return Fetched(
            entry,
            result,
            key=key,
            stored=stored,
            shared=shared,
            l1=self.l1,
            clock=self.clock,
            detail=detail,
        )

    async def _direct(self, req: UpstreamRequest, rid: str, detail: str = "") -> Fetched:
        start = time.perf_counter()
        resp = await self.upstream.send(req, rid)
        entry = Entry(resp.status, resp.headers, resp.body, self.clock(), 0.0)
        fetched = Fetched(entry, "BYPASS", clock=self.clock, detail=detail)
        fetched.upstream = time.perf_counter() - start
        return fetched

    def _start(
        self,
        key: str,
        req: UpstreamRequest,
        policy: Policy,
        rid: str,
        stale: Entry | None,
        shared: bool,
    ) -> asyncio.Task[Fetched]:
        task = self._running_loop().create_task(
            self._timed_miss(key, req, policy, rid, stale, shared)
        )
        self._inflight[key] = task

        def done(t: asyncio.Task[Fetched]) -> None:
            if self._inflight.get(key) is t:
                del self._inflight[key]
            if not t.cancelled():
                t.exception()  # a background refresh nobody awaits must not warn

        task.add_done_callback(done)
        return task

    async def _timed_miss(
        self,
        key: str,
        req: UpstreamRequest,
        policy: Policy,
        rid: str,
        stale: Entry | None,
        shared: bool,
    ) -> Fetched:
        start = time.perf_counter()
        fetched = await self._miss(key, req, policy, rid, stale, shared)
        fetched.upstream = time.perf_counter() - start
        return fetched

    async def _miss(
        self,
        key: str,
        req: UpstreamRequest,
        policy: Policy,
        rid: str,
        stale: Entry | None,
        shared: bool,
    ) -> Fetched:
        try:
            resp = await self.upstream.send(req, rid)
        except UpstreamError:
            if decide.usable_on_error(stale, self.clock()):
                assert stale is not None
                return self._fetched(stale, "STALE", key, shared, detail="stale-if-error")
            raise
        now = self.clock()
        if decide.upstream_failed(resp.status) and decide.usable_on_error(stale, now):
            assert stale is not None
            return self._fetched(stale, "STALE", key, shared, detail="stale-if-error")
        ttl = decide.store_ttl(policy, resp.status, resp.body)
        if ttl <= 0:
            entry = Entry(resp.status, resp.headers, resp.body, now, 0.0)
            return self._fetched(entry, "MISS", key, shared)
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
        if self.shared is not None:
            self._spawn(self.shared.set(key, entry))
        # The caller of this very call gets Roblox's headers (x-ratelimit-*, a cookie …) as
        # sent; its coalesced followers get them without the per-caller ones
        # (Fetched.coalesced), and later hits only what the entry keeps.
        live = entry.with_headers(resp.headers)
        return self._fetched(live, "MISS", key, shared, stored=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self._running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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

    async def purge_all(self) -> int:
        n = self.l1.clear_nowait()
        if self.shared is not None:
            n = max(n, await self.shared.clear())
            await self.shared.publish("all", "")
        return n

    def drop_l1(self) -> None:
        self.l1.clear_nowait()

    def apply_event(self, event: dict[str, Any]) -> None:
        """An invalidation published by another replica: drop it from our L1."""
        op, arg = event.get("op"), event.get("arg")
        if op == "key" and isinstance(arg, str):
            self.l1.delete_nowait(arg)
            self.l1.delete_prefix_nowait(arg + " |")
        elif op == "prefix" and isinstance(arg, str):
            self.l1.delete_prefix_nowait(arg)
        elif op == "all":
            self.l1.clear_nowait()

    async def close(self) -> None:
        for task in [*self._inflight.values(), *self._background]:
            task.cancel()
        for task in [*self._inflight.values(), *self._background]:
            with contextlib.suppress(BaseException):
                await task
