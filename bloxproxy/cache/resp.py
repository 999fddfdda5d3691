"""A lean Redis ``GET`` over one pipelined RESP2 connection: the L2 read's hot path.

redis-py spends ~70 µs of CPU on one ``GET`` (pool checkout and return under asyncio locks,
the retry wrapper, the per-command parser); here a ``GET`` is one encoded command appended
to a write buffer and one future in a FIFO. Commands sent in one loop iteration go out in
one write; Redis answers in order (RESP2 pipelining), so each reply resolves the oldest
waiter. A caller that is cancelled leaves its future in the FIFO: its reply is read and
dropped, and the FIFO stays in step.

The connection is opened on first use; concurrent first callers share one attempt
(``AUTH``/``SELECT`` answered before any ``GET`` is sent). A lost connection fails every
pending call and the next call reconnects. A call with no reply within ``timeout`` fails
and closes the connection with every call pending on it: later replies could no longer be
matched to their callers (redis-py does the same). The deadline check is one timer armed
at the oldest call's deadline, not one per call. Every failure is a
:class:`~bloxproxy.cache.store.StoreUnavailable` saying what went wrong, as
:class:`~bloxproxy.cache.redis_store.RedisStore` reports redis-py's failures.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import parse_qs, unquote, urlparse

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import InvalidResponse, ResponseError

from ..errors import StoreUnavailable
from ..redis_url import Node, url_of
from ..redisconn import REDIS_ERRORS

__all__ = ["ClusterGet", "PipelinedGet"]

_NO_TIMEOUT_CONNECT = 2.0  # connect deadline without a timeout, as the app's redis-py pool
_MAX_LINE = 64 * 1024  # a reply header longer than this is not Redis talking


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    path: str  # unix socket; host and port unused when set
    tls: bool
    auth: tuple[str, ...]  # AUTH arguments; empty: no AUTH
    db: int

    @property
    def where(self) -> str:
        return self.path or f"{self.host}:{self.port}"


def _parse_url(url: str) -> _Target:
    """The parts of ``url`` that redis-py's ``from_url`` would use; ValueError if this
    module cannot honour the URL (another scheme, or query options other than ``db``)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {url!r}")
    query = parse_qs(parsed.query)
    unknown = sorted(set(query) - {"db"})
    if unknown:
        raise ValueError(f"URL options other than db are not supported: {', '.join(unknown)}")
    db = 0
    if "db" in query:
        db = int(query["db"][0])
    elif parsed.scheme != "unix" and parsed.path:
        try:  # the path is the db unless the query names one (as in redis-py)
            db = int(unquote(parsed.path).replace("/", ""))
        except ValueError:
            db = 0
    username = unquote(parsed.username) if parsed.username else ""
    password = unquote(parsed.password) if parsed.password else ""
    # redis-py's UsernamePasswordCredentialProvider: AUTH [username] password
    auth = (username, password) if username else (password,) if password else ()
    if parsed.scheme == "unix":
        if not parsed.path:
            raise ValueError(f"unix:// URL without a socket path: {url!r}")
        return _Target("", 0, unquote(parsed.path), False, auth, db)
    host = unquote(parsed.hostname) if parsed.hostname else "localhost"
    port = parsed.port or 6379  # .port raises ValueError when out of range
    return _Target(host, port, "", parsed.scheme == "rediss", auth, db)


def _command(*args: str) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"redis GET failed: {type(exc).__name__}: {exc}")


_Waiter = tuple[asyncio.Future[bytes | None], float]


class _Connection(asyncio.Protocol):
    """One RESP2 connection: a write buffer, a FIFO of waiters and an incremental parser."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float | None,
        on_failure: Callable[[_Connection], None],
    ) -> None:
        self._loop = loop
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._waiters: deque[_Waiter] = deque()
        self._wbuf: list[bytes] = []
        self._rbuf = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._failure: Exception | None = None
        self._gone = loop.create_future()  # resolved by connection_lost
        self._on_failure = on_failure
        self.ready = False  # after the handshake, a "+" reply is a protocol error
        self.retiring = False  # closed when its last waiter is answered

    @property
    def failure(self) -> Exception | None:
        """Why the connection is gone; None while it lives."""
        return self._failure

    # -- requests ------------------------------------------------------------------------

    def request(self, payload: bytes) -> asyncio.Future[bytes | None]:
        """Queue one encoded command; its reply resolves the returned future."""
        if self._failure is not None:  # only right after connecting: the owner let go of it
            self._on_failure(self)
            raise ConnectionError(f"connection lost: {self._failure}")
        wbuf = self._wbuf
        if not wbuf:
            self._loop.call_soon(self._flush)
        wbuf.append(payload)
        fut: asyncio.Future[bytes | None] = self._loop.create_future()
        timeout = self._timeout
        if timeout is None:
            self._waiters.append((fut, 0.0))
        else:
            deadline = self._loop.time() + timeout
            self._waiters.append((fut, deadline))
            if self._timer is None:
                self._timer = self._loop.call_at(deadline, self._check_deadline)
        return fut

    def _flush(self) -> None:
        wbuf = self._wbuf
        if self._transport is None or not wbuf:
            return
        self._transport.write(wbuf[0] if len(wbuf) == 1 else b"".join(wbuf))
        wbuf.clear()

    def _check_deadline(self) -> None:
        # Deadlines grow along the FIFO: only the oldest waiter's can have passed.
        self._timer = None
        if not self._waiters:
            return
        deadline = self._waiters[0][1]
        if self._loop.time() >= deadline:
            self._die(TimeoutError(f"no reply within {self._timeout:g}s; connection closed"))
        else:
            self._timer = self._loop.call_at(deadline, self._check_deadline)

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        rbuf = self._rbuf
        if rbuf:
            rbuf += data
            used = self._parse(rbuf)
            if self._failure is None:
                del rbuf[:used]
        else:  # the usual case: whole replies in one chunk, parsed without copying
            used = self._parse(data)
            if self._failure is None and used < len(data):
                rbuf += memoryview(data)[used:]

    def eof_received(self) -> bool:
        self._die(ConnectionError("connection closed by the server"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._die(exc or ConnectionError("connection closed"))
        if not self._gone.done():
            self._gone.set_result(None)

    # -- replies -------------------------------------------------------------------------

    def _parse(self, data: bytes | bytearray) -> int:
        """Resolve a waiter per complete reply in ``data``; how many bytes were used."""
        waiters = self._waiters
        end = len(data)
        pos = 0
        while pos < end:
            nl = data.find(b"\r\n", pos)
            if nl < 0:
                if end - pos > _MAX_LINE:
                    return self._protocol_error(data[pos : pos + 40])
                break
            kind = data[pos]
            value: bytes | None
            if kind == 36:  # "$": bulk string, or nil
                try:
                    size = int(data[pos + 1 : nl])
                except ValueError:
                    return self._protocol_error(data[pos:nl])
                if size < 0:
                    if size != -1:
                        return self._protocol_error(data[pos:nl])
                    value = None
                    pos = nl + 2
                else:
                    start = nl + 2
                    stop = start + size
                    if stop + 2 > end:
                        break  # the rest of the value is still on its way
                    if data[stop] != 13 or data[stop + 1] != 10:
                        return self._protocol_error(data[pos:nl])
                    if isinstance(data, bytes):
                        value = data[start:stop]
                    else:  # one copy, not two
                        value = bytes(memoryview(data)[start:stop])
                    pos = stop + 2
            elif kind == 45:  # "-": an error reply fails this call only
                error = ResponseError(bytes(data[pos + 1 : nl]).decode(errors="replace"))
                pos = nl + 2
                if not waiters:
                    return self._protocol_error(None)
                fut = waiters.popleft()[0]
                if not fut.done():
                    fut.set_exception(error)
                continue
            elif kind == 43 and not self.ready:  # "+OK" to AUTH and SELECT
                value = bytes(data[pos + 1 : nl])
                pos = nl + 2
            else:
                return self._protocol_error(data[pos:nl])
            if not waiters:
                return self._protocol_error(None)
            fut = waiters.popleft()[0]
            if not fut.done():  # done: its caller was cancelled; the reply is dropped
                fut.set_result(value)
        if self.retiring and not waiters and self._failure is None:
            self._die(ConnectionError("connection retired"))
            return 0
        return pos

    def _protocol_error(self, line: bytes | bytearray | None) -> int:
        what = "a reply nobody asked for" if line is None else f"unexpected reply {bytes(line)!r}"
        self._die(InvalidResponse(f"protocol error: {what}; connection closed"))
        return 0

    # -- the end -------------------------------------------------------------------------

    def _die(self, exc: Exception) -> None:
        """Fail every pending call with ``exc`` and drop the connection (idempotent)."""
        if self._failure is not None:
            return
        self._failure = exc
        self._on_failure(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wbuf.clear()
        self._rbuf.clear()
        waiters, self._waiters = self._waiters, deque()
        for fut, _ in waiters:
            if not fut.done():
                fut.set_exception(exc)
        if self._transport is not None:
            self._transport.abort()  # nothing buffered is worth sending any more

    def abort(self, exc: Exception) -> None:
        self._die(exc)

    def retire(self) -> None:
        """Close once the calls already sent are answered (no new ones come: the owner let
        go of this connection)."""
        self.retiring = True
        if not self._waiters:
            self._die(ConnectionError("connection retired"))

    def forget(self, futures: list[asyncio.Future[bytes | None]]) -> None:
        """Let go of futures nobody will await: cancel them, or mark their failure seen."""
        for fut in futures:
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()  # else asyncio logs "Future exception was never retrieved"

    async def aclose(self, exc: Exception) -> None:
        self._die(exc)
        if self._transport is not None:
            await self._gone


class PipelinedGet:
    """Redis ``GET`` on one pipelined RESP2 connection (see the module docstring).

    ``timeout`` bounds every call and the connect (None or 0: calls wait as long as the
    connection lives, and the connect is bounded by 2 s). Not for other commands.
    ``resolve``, when given, is asked for the URL before each connect (None: ``url``'s
    node): a Sentinel's primary now, so the next connection after a failover goes to the
    promoted replica. It is asked again every ``recheck`` seconds while calls come (in
    the background): a primary demoted while alive (a switchover) keeps its connections,
    so when the answer names another node the connection is retired — it answers the
    calls already sent, and the next call connects to the new primary.
    """

    __slots__ = (
        "_checking",
        "_closed",
        "_conn",
        "_connecting",
        "_connector",
        "_loop",
        "_next_check",
        "_recheck",
        "_resolve",
        "_target",
        "_timeout",
    )

    def __init__(
        self,
        url: str,
        timeout: float | None,
        *,
        resolve: Callable[[], Awaitable[str | None]] | None = None,
        recheck: float = 1.0,
    ) -> None:
        self._target = _parse_url(url)
        self._timeout = timeout or None
        self._resolve = resolve
        self._recheck = recheck
        self._next_check = 0.0
        self._checking: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: _Connection | None = None  # a dying connection unsets itself
        # The connect attempt in progress: its outcome, which every caller awaits, and the
        # task working on it.
        self._connecting: asyncio.Future[_Connection | Exception] | None = None
        self._connector: asyncio.Task[None] | None = None
        self._closed = False

    @staticmethod
    def supports(url: str) -> bool:
        """True for redis://, rediss:// and unix:// URLs without query options but ``db``
        (others, e.g. ``?ssl_cert_reqs=none``, are left to redis-py)."""
        try:
            _parse_url(url)
        except ValueError:
            return False
        return True

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, None if absent; StoreUnavailable on any failure."""
        conn = self._conn
        if conn is None:
            conn = await self._connection()
        elif self._resolve is not None:
            self._maybe_recheck(conn)
        name = key.encode()
        try:
            return await conn.request(b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(name), name))
        except Exception as exc:  # what the connection failed the call with
            raise _unavailable(exc) from exc

    def _maybe_recheck(self, conn: _Connection) -> None:
        loop = self._loop
        if loop is None or self._checking is not None or loop.time() < self._next_check:
            return
        self._next_check = loop.time() + self._recheck
        self._checking = loop.create_task(self._check(conn))

    async def _check(self, conn: _Connection) -> None:
        """Retire ``conn`` if ``resolve`` names another node now."""
        assert self._resolve is not None
        try:
            async with asyncio.timeout(self._timeout or _NO_TIMEOUT_CONNECT):
                url = await self._resolve()
            target = self._target if url is None else _parse_url(url)
        except Exception:  # no answer: keep the connection; the next check asks again
            return
        finally:
            self._checking = None
        if (target.host, target.port, target.path) != (
            self._target.host,
            self._target.port,
            self._target.path,
        ) and self._conn is conn:
            self._conn = None  # the next call connects (to the node resolve names then)
            conn.retire()

    def connected_to(self) -> int | None:
        """The port of the node the live connection goes to (None: not connected)."""
        return None if self._conn is None else self._target.port

    async def aclose(self) -> None:
        """Close the connection (pending calls fail); later calls fail too."""
        self._closed = True
        if self._checking is not None:
            self._checking.cancel()
            await asyncio.wait([self._checking])
        task, pending = self._connector, self._connecting
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        if pending is not None and not pending.done():  # the task was cancelled
            pending.set_result(ConnectionError("the getter was closed"))
        if self._conn is not None:
            await self._conn.aclose(ConnectionError("the getter was closed"))

    # -- connecting ----------------------------------------------------------------------

    async def _connection(self) -> _Connection:
        if self._closed:
            raise StoreUnavailable("redis GET failed: the getter was closed")
        pending = self._connecting
        if pending is None:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            pending = self._connecting = self._loop.create_future()
            self._connector = self._loop.create_task(self._connect(pending))
        # Shielded: one caller's cancellation must not cancel what the others wait for.
        outcome = await asyncio.shield(pending)
        if isinstance(outcome, Exception):
            raise _unavailable(outcome) from outcome
        return outcome

    async def _connect(self, pending: asyncio.Future[_Connection | Exception]) -> None:
        """Open a connection and resolve ``pending`` with it or with the failure (aclose()
        resolves it when it cancels this task)."""
        limit = self._timeout or _NO_TIMEOUT_CONNECT
        deadline = asyncio.timeout(limit)
        outcome: _Connection | Exception
        try:
            async with deadline:
                outcome = await self._open()
        except Exception as exc:  # whatever it was, every caller is told, none hangs
            outcome = exc
            if deadline.expired():
                where = self._target.where
                outcome = TimeoutError(f"no connection to {where} within {limit:g}s")
        finally:
            self._connecting = self._connector = None
        if isinstance(outcome, _Connection):
            self._conn = outcome
        pending.set_result(outcome)

    def _lost(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None

    async def _open(self) -> _Connection:
        if self._resolve is not None:  # where the primary is now (Sentinel)
            url = await self._resolve()
            if url is not None:
                self._target = _parse_url(url)
        target, loop = self._target, asyncio.get_running_loop()
        hello = []
        if target.auth:
            hello.append(("AUTH", _command("AUTH", *target.auth)))
        if target.db:
            hello.append(("SELECT", _command("SELECT", str(target.db))))
        conn = _Connection(loop, self._timeout, self._lost)
        if target.path:
            await loop.create_unix_connection(lambda: conn, target.path)
        else:
            tls = ssl.create_default_context() if target.tls else None
            await loop.create_connection(
                lambda: conn,
                target.host,
                target.port,
                ssl=tls,
                server_hostname=target.host if tls else None,
            )
        # AUTH and SELECT pipelined, answered before the connection serves any GET.
        waiters: list[asyncio.Future[bytes | None]] = []
        try:
            for _, payload in hello:
                waiters.append(conn.request(payload))
            for (name, _), fut in zip(hello, waiters, strict=True):
                try:
                    await fut
                except ResponseError as exc:
                    raise ResponseError(f"{name}: {exc}") from exc
        except BaseException as exc:
            conn.abort(exc if isinstance(exc, Exception) else ConnectionError("cancelled"))
            conn.forget(waiters)
            raise
        if conn.failure is not None:  # lost between its last reply and now
            raise ConnectionError(f"connection lost: {conn.failure}")
        conn.ready = True
        return conn


class ClusterGet:
    """The pipelined ``GET`` on a Redis Cluster: one :class:`PipelinedGet` per primary,
    each key's ``GET`` sent to its slot's node as redis-py's ``RedisCluster`` (``cluster``)
    maps it. A ``MOVED`` or ``ASK`` reply (a slot moved since the map was read), or a key
    whose slot redis-py has no node for yet, is asked through redis-py instead, which
    follows the redirection and refreshes its map for the next call. Failures are
    :class:`~bloxproxy.errors.StoreUnavailable`, like :class:`PipelinedGet`'s."""

    __slots__ = ("_auth", "_cluster", "_getters", "_timeout")

    def __init__(
        self, cluster: RedisCluster, timeout: float | None, username: str = "", password: str = ""
    ) -> None:
        self._cluster = cluster
        self._timeout = timeout
        self._auth = (username, password)
        self._getters: dict[str, PipelinedGet] = {}

    async def get(self, key: str) -> bytes | None:
        try:
            node = self._cluster.get_node_from_key(key)
        except REDIS_ERRORS:
            node = None  # slot map not loaded yet, or the slot not covered
        if node is None:
            return await self._through_redis_py(key)
        getter = self._getters.get(node.name)
        if getter is None:
            url = url_of(Node(node.host, int(node.port)), *self._auth)
            getter = self._getters[node.name] = PipelinedGet(url, self._timeout)
        try:
            return await getter.get(key)
        except StoreUnavailable as exc:
            reply = str(exc.__cause__) if isinstance(exc.__cause__, ResponseError) else ""
            if reply.startswith(("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN")):
                return await self._through_redis_py(key)
            raise

    async def _through_redis_py(self, key: str) -> bytes | None:
        try:
            value: bytes | None = await self._cluster.get(key)  # type: ignore[assignment]
        except REDIS_ERRORS as exc:
            raise _unavailable(exc) from exc
        return value

    async def aclose(self) -> None:
        """Close every node's connection (the RedisCluster client is its owner's)."""
        for getter in self._getters.values():
            await getter.aclose()
