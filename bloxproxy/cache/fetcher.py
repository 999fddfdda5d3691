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
  stale-if-error window → STALE.

Credentialed requests bypass the shared cache unless the policy opts in to per-credential
entries keyed by an HMAC of the credential. A shared request goes upstream with its
policy's allow-listed headers only, all of them in its key. Redis trouble never fails a
request: :class:`~bloxproxy.cache.shared.SharedCache` degrades to L1. What to store and when
stale stands in are decided by :mod:`bloxproxy.cache.decide`; this module performs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from ..config import Config
from ..errors import UpstreamError
from ..upstream.client import NOBODY, Caller, Upstream, UpstreamRequest
from ..upstream.inflight import ByteBudget, Lease
from . import decide
from .entry import KEPT_HEADERS, Entry, make_etag
from .policy import Policy
from .result import Fetched
from .shared import SharedCache
from .store import MemoryStore

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
    ) -> None:
        self.upstream = upstream
        self.clock = clock
        self.enabled = config.cache.enabled
        self.l1 = MemoryStore(config.cache.max_bytes, config.cache.max_entries, clock)
        self.shared = shared
        self.bodies = bodies  # the byte budget every upstream body is read under
        self._timeout = config.cache.coalesce_timeout
        secret = config.cache.credential_secret
        self._secret = secret.encode() if secret else os.urandom(32)
        self._inflight: dict[str, asyncio.Task[Fetched]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the request path ----------------------------------------------------------------

    async def fetch(
        self, req: UpstreamRequest, policy: Policy, caller: Caller = NOBODY, credential: str = ""
    ) -> Fetched:
        """The answer to ``req`` under ``policy``, for ``caller``, whose credential is
        ``credential`` (``""``: anonymous). A leader's answer carries the lease on its body
        (``Fetched.lease``): the caller releases it once the answer is written out."""
        if not (self.enabled and req.safe_read and policy.cacheable):
            return await self._direct(req, caller)
        scope = ""
        if credential:
            if policy.credentials != "per_credential":
                return await self._direct(req, caller, detail="credentialed")
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
                hit = Fetched(entry, "HIT", key=key, shared=shared)
                hit.fast_ok, hit.cache_time = policy.fast_ok, looked
                return hit
            if state is decide.Freshness.STALE_WHILE_REVALIDATE:
                if key not in self._inflight:
                    self._start(key, req, policy, caller, entry, shared)
                stale = Fetched(entry, "STALE", key=key, shared=shared, detail="revalidating")
                stale.cache_time = looked
                return stale
        task = running = self._inflight.get(key)
        lease = None
        if task is None:
            task, lease = self._start(key, req, policy, caller, entry, shared)
            if lease is not None:
                lease.hold()  # this caller writes the answer out: the body stays counted
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
        out = fetched if running is None else fetched.coalesced()
        out.fast_ok, out.cache_time, out.lease = policy.fast_ok, looked, lease
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
    ) -> tuple[asyncio.Task[Fetched], Lease | None]:
        lease = self._lease()
        task = self._running_loop().create_task(
            self._miss(key, req, policy, caller, stale, shared, lease)
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
    ) -> Fetched:
        start = time.perf_counter()
        try:
            fetched = await self._call(key, req, policy, caller, stale, shared, lease)
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
    ) -> Fetched:
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
        if self.shared is not None:
            self._spawn(self.shared.set(key, entry))
        # The caller of this very call gets Roblox's headers (x-ratelimit-*, a cookie …) as
        # sent; its coalesced followers get them without the per-caller ones
        # (Fetched.coalesced), and later hits only what the entry keeps.
        live = entry.with_headers(resp.headers)
        return Fetched(live, "MISS", key=key, shared=shared, stored=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self._running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
        rkey = f"{fetched.key} |render={route_id}"
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

    def tasks(self) -> list[asyncio.Task[Any]]:
        """The upstream calls in flight and the background writes to Redis."""
        return [*self._inflight.values(), *self._background]

    async def close(self) -> None:
        tasks = self.tasks()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
