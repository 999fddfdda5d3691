"""The shared L2 store on Redis.

Keys are ``prefix + key``, values :meth:`Entry.to_bytes`, and every key carries its own
expiry ``PX = ceil((hard_expiry - now) * 1000)``, so Redis drops entries nobody may use.
Every Redis failure surfaces as :class:`StoreUnavailable`; degrading to L1 is the caller's
decision. The client is injected (the app builds it on a ``BlockingConnectionPool``: a plain
redis-py 8 ``ConnectionPool`` raises ``MaxConnectionsError`` when exhausted instead of
waiting) and must not decode responses. ``close()`` leaves it open unless ``owns_client``.

The hot read, ``GET``, may go through a :class:`~bloxproxy.cache.resp.PipelinedGet`
(``getter``) instead of redis-py: a fraction of the CPU per call. Everything else stays on
the client. The getter belongs to whoever owns the client: ``close()`` closes both when
``owns_client``, neither otherwise.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from ..errors import StoreUnavailable
from .entry import Entry
from .resp import PipelinedGet

__all__ = ["RedisStore", "Then", "escape_glob"]

log = logging.getLogger(__name__)

# TimeoutError is asyncio.TimeoutError since 3.11 and an OSError; listed for clarity.
_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
# Commands queued after a SET, in the same write (RedisStore.set's ``then``).
Then = Callable[[Pipeline], Awaitable[object]]
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def escape_glob(text: str) -> str:
    """Escape Redis glob metacharacters so ``text`` matches only itself in SCAN MATCH."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def _unavailable(op: str, exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"redis {op} failed: {type(exc).__name__}: {exc}")


class RedisStore:
    """:class:`~bloxproxy.cache.store.Store` on a ``redis.asyncio.Redis`` client."""

    __slots__ = ("_batch", "_client", "_clock", "_getter", "_owns_client", "_prefix")

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "bloxproxy:",
        clock: Callable[[], float] = time.time,
        *,
        owns_client: bool = False,
        batch_size: int = 500,
        getter: PipelinedGet | None = None,
    ) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisStore needs a client with decode_responses=False")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._client = client
        self._prefix = prefix
        self._clock = clock
        self._owns_client = owns_client
        self._batch = batch_size
        self._getter = getter

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def getter(self) -> PipelinedGet | None:
        """The pipelined GET client serving :meth:`get`, if any."""
        return self._getter

    async def get(self, key: str) -> Entry | None:
        name = self._prefix + key
        getter = self._getter
        data: bytes | str | None  # str only if decoding, which __init__ refuses
        if getter is not None:
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

    async def set(self, key: str, entry: Entry, then: Then | None = None) -> None:
        """Store ``entry`` under ``key``; ``then(pipeline)`` queues more commands to go in
        the same write, run by Redis right after the ``SET`` (a lease's release and word:
        no round trip between the entry and the news of it)."""
        px = math.ceil((entry.hard_expiry() - self._clock()) * 1000)
        if then is None:
            if px <= 0:
                # Already unusable: store nothing, but do not leave an older value behind.
                await self.delete(key)
                return
            try:
                await self._client.set(self._prefix + key, entry.to_bytes(), px=px)
            except _ERRORS as exc:
                raise _unavailable("SET", exc) from exc
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            if px <= 0:
                pipe.unlink(self._prefix + key)
            else:
                pipe.set(self._prefix + key, entry.to_bytes(), px=px)
            await then(pipe)
            await pipe.execute()
        except _ERRORS as exc:
            raise _unavailable("SET", exc) from exc

    async def set_many(self, items: list[tuple[str, Entry]], then: Then | None = None) -> None:
        """:meth:`set` for several entries (a batch's entities) in one pipelined write,
        ``then(pipeline)``'s commands after them."""
        now = self._clock()
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, entry in items:
                px = math.ceil((entry.hard_expiry() - now) * 1000)
                if px <= 0:
                    pipe.unlink(self._prefix + key)
                else:
                    pipe.set(self._prefix + key, entry.to_bytes(), px=px)
            if then is not None:
                await then(pipe)
            await pipe.execute()
        except _ERRORS as exc:
            raise _unavailable("SET", exc) from exc

    async def delete(self, key: str) -> bool:
        try:
            return bool(await self._client.unlink(self._prefix + key))
        except _ERRORS as exc:
            raise _unavailable("UNLINK", exc) from exc

    async def delete_prefix(self, prefix: str) -> int:
        """SCAN for ``prefix`` (taken literally) and UNLINK in batches; how many went.

        Not atomic: keys written while the scan runs may survive. On Redis Cluster this
        would need a SCAN per primary node.
        """
        client = self._client
        pattern = escape_glob(self._prefix + prefix) + "*"
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
