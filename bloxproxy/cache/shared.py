"""The shared L2 cache on Redis, degrading to "absent" while Redis is in trouble, and the
invalidation channel that keeps every replica's L1 in step.

Every operation either works or quietly does nothing; the first failure of an incident is
logged (warning), the recovery too (info), nothing per request. After a failure Redis is
skipped for a back-off window instead of costing every request a timeout. Purges are
published on the channel; a replica that lost its subscription drops its whole L1 when it
is back, since it may have missed some.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import orjson
from redis.asyncio.client import PubSub

from ..errors import NodeUnavailable, StoreUnavailable
from ..redisconn import REDIS_ERRORS, describe
from .entry import Entry
from .redis_store import RedisStore, Then

__all__ = ["SharedCache"]

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
        subscribe: Callable[[], Awaitable[PubSub]],
        channel: str,
        on_missed_events: Callable[[], None],
        apply_event: Callable[[dict[str, Any]], None],
        publish: Callable[[str, bytes], Awaitable[object]],
    ) -> None:
        self.store = store
        # A fresh subscription per attempt (on a Cluster, to the next node in turn).
        self._subscribe = subscribe
        # Publishing goes through a client with a command timeout: a hung Redis must not
        # hang the purge request (the listener's client has no read timeout).
        self._publish = publish
        self.channel = channel
        self.origin = uuid.uuid4().hex
        self._on_missed = on_missed_events
        self._apply = apply_event
        self.healthy = True
        self._retry_at = 0.0
        self._backoff = 0.5
        self._listener: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        # Further channels on the same subscription: name -> (on message, on lost).
        self._channels: dict[str, tuple[Callable[[object], None], Callable[[], None]]] = {}

    def also_listen(
        self, channel: str, on_message: Callable[[object], None], on_lost: Callable[[], None]
    ) -> None:
        """Deliver ``channel``'s messages to ``on_message`` over the one subscription (before
        :meth:`start`); ``on_lost`` is called whenever that subscription is lost."""
        self._channels[channel] = (on_message, on_lost)

    def _usable(self) -> bool:
        return self.healthy or time.monotonic() >= self._retry_at

    def _failed(self, exc: BaseException) -> None:
        if self.healthy:
            log.warning("redis unavailable, serving from L1 and upstream: %s", describe(exc))
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
        except NodeUnavailable:
            return default  # one Cluster node's keys: the store keeps count of it
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
        except NodeUnavailable:
            return None
        except StoreUnavailable as exc:
            self._failed(exc)
            return None
        if not self.healthy:
            self._worked()
        return entry

    async def set(
        self, key: str, entry: Entry, tags: Sequence[str] = (), then: Then | None = None
    ) -> None:
        await self._call(self.store.set(key, entry, tags, then), None)

    async def set_many(
        self, items: Sequence[tuple[str, Entry, Sequence[str]]], then: Then | None = None
    ) -> None:
        await self._call(self.store.set_many(items, then), None)

    async def delete(self, key: str) -> int:
        return 1 if await self._call(self.store.delete(key), False) else 0

    async def delete_prefix(self, prefix: str) -> int:
        result: int = await self._call(self.store.delete_prefix(prefix), 0)
        return result

    async def delete_tag(self, tag: str) -> int:
        result: int = await self._call(self.store.delete_tag(tag), 0)
        return result

    async def soften_tag(self, tag: str, mark: Callable[[Entry], Entry | None]) -> int:
        result: int = await self._call(self.store.soften_tag(tag, mark), 0)
        return result

    async def clear(self) -> int:
        result: int = await self._call(self.store.clear(), 0)
        return result

    def down_nodes(self) -> list[str]:
        """The Redis Cluster nodes whose keys are misses now (and a purge could not reach)."""
        return self.store.down_nodes()

    async def publish(self, op: str, arg: str) -> None:
        message = orjson.dumps({"op": op, "arg": arg, "origin": self.origin})

        async def send() -> None:
            try:
                await self._publish(self.channel, message)
            except REDIS_ERRORS as exc:
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
            pubsub: PubSub | None = None
            try:
                pubsub = await self._subscribe()
                await pubsub.subscribe(self.channel, *self._channels)
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
                        extra = self._channels.get(_text(msg.get("channel")))
                        if extra is None:
                            self._event(msg.get("data"))
                        else:
                            extra[0](msg.get("data"))
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                self.listening.clear()
                for _, on_lost in self._channels.values():
                    on_lost()
                missed = True
                if self.healthy:  # one incident with the store's failures: one warning
                    self._failed(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        # typed in some redis-py releases and not in others: no ignore either way
                        close: Callable[[], Coroutine[Any, Any, None]] = pubsub.aclose
                        await close()

    def usable(self) -> bool:
        """Is Redis worth a command now (not inside a failure's back-off window)?"""
        return self._usable()

    def note_failure(self, exc: BaseException) -> None:
        """A command of another part (the leases) failed: the same incident, the same
        back-off."""
        self._failed(exc)

    def _event(self, data: object) -> None:
        try:
            event = orjson.loads(data) if isinstance(data, bytes | str) else None
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict) or event.get("origin") == self.origin:
            return
        self._apply(event)


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
