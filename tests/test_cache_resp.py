"""PipelinedGet, the L2 read on one pipelined RESP2 connection.

Against the suite's real redis-server (``redis_url``, flushed per test), private ones for
AUTH, a unix socket and a kill, and scripted asyncio servers on 127.0.0.1 for what a real
Redis never does (stay silent, hang up mid-request, send garbage, trickle a reply).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from bloxproxy.cache.entry import Entry
from bloxproxy.cache.redis_store import RedisStore
from bloxproxy.cache.resp import PipelinedGet
from bloxproxy.errors import StoreUnavailable
from bloxproxy.fake import FakeRoblox
from tests.conftest import ProxyFactory, fetcher_of
from tests.redis_server import RedisServer
from tests.test_cache import USER_KEY, USER_PT, get, settle, users_get_count

BINARY = b"\r\n$5\r\n-ERR x\r\n+OK\r\n$-1\r\n*2\r\n\x00" + bytes(range(256)) + b"\r\n"
PASSWORD = "s3cret"


def base(url: str) -> str:
    """``redis://127.0.0.1:PORT`` of ``redis://127.0.0.1:PORT/0``."""
    return url.rsplit("/", 1)[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def getter(redis_url: str) -> AsyncIterator[PipelinedGet]:
    g = PipelinedGet(redis_url, 5.0)
    try:
        yield g
    finally:
        await g.aclose()


async def connections_received(client: aioredis.Redis) -> int:
    stats = await client.info("stats")
    return int(stats["total_connections_received"])


# -- replies -------------------------------------------------------------------------------


async def test_nil(getter: PipelinedGet) -> None:
    assert await getter.get("absent") is None


@pytest.mark.parametrize(
    "value",
    [b"", b"x", b"a\r\nb", b"$3\r\nfoo\r\n", BINARY, "snowman \u2603".encode()],
    ids=["empty", "one", "crlf", "resp-inside", "binary", "utf8"],
)
async def test_values_come_back_byte_for_byte(
    getter: PipelinedGet, redis_client: aioredis.Redis, value: bytes
) -> None:
    await redis_client.set("k", value)
    assert await getter.get("k") == value


async def test_non_ascii_key(getter: PipelinedGet, redis_client: aioredis.Redis) -> None:
    await redis_client.set("GET users/v1/users?q=\u00e9\r\n", b"v")
    assert await getter.get("GET users/v1/users?q=\u00e9\r\n") == b"v"


async def test_8_mib_value(getter: PipelinedGet, redis_client: aioredis.Redis) -> None:
    value = bytes(range(256)) * (8 * 1024 * 1024 // 256)
    await redis_client.set("big", value)
    await redis_client.set("small", b"after")
    big, small, nil = await asyncio.gather(
        getter.get("big"), getter.get("small"), getter.get("none")
    )
    assert big == value
    assert (small, nil) == (b"after", None)


async def test_1000_concurrent_gets_each_get_their_own_value(
    getter: PipelinedGet, redis_client: aioredis.Redis
) -> None:
    values = {f"k{i}": (b"%d|" % i) * (i % 37) for i in range(1000)}
    values = {k: v for k, v in values.items() if v}  # a few keys stay absent: nil replies
    await redis_client.mset(values)
    keys = [f"k{i}" for i in range(1000)]
    got = await asyncio.gather(*(getter.get(k) for k in keys))
    assert got == [values.get(k) for k in keys]


async def test_error_reply_fails_one_call_and_the_connection_stays(
    getter: PipelinedGet, redis_client: aioredis.Redis
) -> None:
    await redis_client.rpush("list", b"x")
    await redis_client.set("k", b"v")
    assert await getter.get("k") == b"v"
    before = await connections_received(redis_client)
    results = await asyncio.gather(
        getter.get("k"), getter.get("list"), getter.get("k"), return_exceptions=True
    )
    assert results[0] == results[2] == b"v"
    assert isinstance(results[1], StoreUnavailable)
    assert str(results[1]).startswith("redis GET failed: ResponseError: WRONGTYPE")
    with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
        await getter.get("list")
    assert await getter.get("k") == b"v"
    assert await connections_received(redis_client) == before  # no reconnect


async def test_a_busy_connection_outlives_its_timeout(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    # The deadline timer, armed at the first call's deadline, finds later calls at the head
    # and re-arms: no call that was answered in time may fail.
    await redis_client.set("k", b"v")
    g = PipelinedGet(redis_url, 0.3)
    loop = asyncio.get_running_loop()
    stop = loop.time() + 0.8
    calls = 0

    async def worker() -> None:
        nonlocal calls
        while loop.time() < stop:
            assert await g.get("k") == b"v"
            calls += 1

    try:
        await asyncio.gather(*(worker() for _ in range(8)))
    finally:
        await g.aclose()
    assert calls > 8


async def test_concurrent_first_callers_share_one_connection(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    await redis_client.set("k", b"v")
    before = await connections_received(redis_client)
    g = PipelinedGet(redis_url, 5.0)
    try:
        assert await asyncio.gather(*(g.get("k") for _ in range(50))) == [b"v"] * 50
        assert await g.get("k") == b"v"
    finally:
        await g.aclose()
    assert await connections_received(redis_client) == before + 1


# -- the URL -------------------------------------------------------------------------------


async def test_db_from_path_or_query(redis_url: str, redis_client: aioredis.Redis) -> None:
    async with aioredis.Redis.from_url(base(redis_url) + "/3") as db3:
        await db3.set("k", b"in db 3")
    await redis_client.set("k", b"in db 0")
    urls = {
        base(redis_url) + "/3": b"in db 3",
        base(redis_url) + "/?db=3": b"in db 3",
        base(redis_url) + "/0?db=3": b"in db 3",  # the query wins, as in redis-py
        base(redis_url) + "/4": None,
        base(redis_url) + "/0": b"in db 0",
        base(redis_url): b"in db 0",
    }
    for url, expected in urls.items():
        g = PipelinedGet(url, 5.0)
        try:
            assert await g.get("k") == expected, url
        finally:
            await g.aclose()


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ("redis://localhost", True),
        ("redis://:pw@127.0.0.1/2", True),
        ("redis://user:p%40ss@127.0.0.1:6380?db=1", True),
        ("rediss://redis.example.com:6380/0", True),
        ("unix:///run/redis.sock", True),
        ("unix:///run/redis.sock?db=2", True),
        ("redis://127.0.0.1/0?ssl_cert_reqs=none", False),
        ("rediss://h/0?ssl_cert_reqs=none", False),
        ("redis://127.0.0.1/0?protocol=3", False),
        ("redis://127.0.0.1/?db=x", False),
        ("redis://127.0.0.1:99999/0", False),
        ("unix://", False),
        ("http://127.0.0.1:6379", False),
        ("valkey://127.0.0.1", False),
        ("", False),
    ],
)
def test_supports(url: str, ok: bool) -> None:
    assert PipelinedGet.supports(url) is ok
    if not ok:
        with pytest.raises(ValueError):
            PipelinedGet(url, 1.0)


# -- AUTH ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(redis_server: RedisServer) -> Iterator[RedisServer]:
    """A private redis-server with a password and a user whose password needs escaping."""
    server = RedisServer(redis_server.binary)
    server.start()
    try:
        with redis.Redis(port=server.port) as client:
            client.execute_command("ACL", "SETUSER", "bob", "on", ">p@ss:w/rd%", "~*", "+@all")
            client.config_set("requirepass", PASSWORD)
        with redis.Redis(port=server.port, password=PASSWORD) as client:
            client.set("k", b"secret value")
            client.execute_command("SELECT", "2")
            client.set("k", b"in db 2")
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(
    "userinfo", [f":{PASSWORD}", f"default:{PASSWORD}", "bob:p%40ss%3Aw%2Frd%25"]
)
async def test_auth(auth_server: RedisServer, userinfo: str) -> None:
    g = PipelinedGet(f"redis://{userinfo}@127.0.0.1:{auth_server.port}/0", 5.0)
    try:
        assert await g.get("k") == b"secret value"
    finally:
        await g.aclose()


async def test_auth_then_select(auth_server: RedisServer) -> None:
    g = PipelinedGet(f"redis://:{PASSWORD}@127.0.0.1:{auth_server.port}/2", 5.0)
    try:
        assert await g.get("k") == b"in db 2"
    finally:
        await g.aclose()


async def test_wrong_password_fails_every_caller(auth_server: RedisServer) -> None:
    g = PipelinedGet(f"redis://:wrong@127.0.0.1:{auth_server.port}/2", 5.0)
    try:
        results = await asyncio.gather(*(g.get("k") for _ in range(10)), return_exceptions=True)
        for result in results:
            assert isinstance(result, StoreUnavailable)
            assert str(result).startswith("redis GET failed: ResponseError: AUTH: WRONGPASS")
        with pytest.raises(StoreUnavailable, match="WRONGPASS"):  # a new attempt, same answer
            await g.get("k")
    finally:
        await g.aclose()


async def test_no_password_is_an_error_reply(auth_server: RedisServer) -> None:
    g = PipelinedGet(f"redis://127.0.0.1:{auth_server.port}/0", 5.0)
    try:
        with pytest.raises(StoreUnavailable, match="NOAUTH"):
            await g.get("k")
    finally:
        await g.aclose()


# -- a unix socket -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unix_socket(redis_server: RedisServer) -> Iterator[str]:
    """A private redis-server listening on a unix socket only; its path."""
    with tempfile.TemporaryDirectory(prefix="bloxproxy-redis-") as tmp:
        path = str(Path(tmp, "redis.sock"))
        args = [redis_server.binary, "--port", "0", "--unixsocket", path, "--unixsocketperm", "700"]
        args += ["--save", "", "--appendonly", "no", "--dir", tmp]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        try:
            lines = []
            for line in proc.stdout:  # ends when it is ready, or at EOF if it exits
                lines.append(line)
                if b"ready to accept connections" in line.lower():
                    break
            else:
                raise AssertionError(b"redis-server did not start:\n" + b"".join(lines))
            yield path
        finally:
            proc.terminate()
            proc.wait(10)
            proc.stdout.close()


async def test_unix_socket(unix_socket: str) -> None:
    with redis.Redis(unix_socket_path=unix_socket, db=5) as client:
        client.set("k", b"over a unix socket")
    cases = [(f"unix://{unix_socket}?db=5", b"over a unix socket"), (f"unix://{unix_socket}", None)]
    for url, expected in cases:
        g = PipelinedGet(url, 5.0)
        try:
            assert await g.get("k") == expected
        finally:
            await g.aclose()


# -- scripted servers: what a real Redis does not do ---------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Scripted:
    """A TCP server on 127.0.0.1 that plays ``handler`` on every connection it accepts."""

    def __init__(self) -> None:
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, handler: Handler) -> int:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            self._writers.add(writer)
            try:
                with contextlib.suppress(ConnectionError):
                    await handler(reader, writer)
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

        self._server = await asyncio.start_server(run, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()  # the handlers read EOF and end
        await asyncio.gather(*self._tasks)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    server = Scripted()
    try:
        yield server
    finally:
        await server.stop()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(65536):
        pass


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(65536):
        writer.write(b":1\r\n")  # an integer reply: never an answer to GET


async def test_silent_server_times_out_and_the_next_call_reconnects(
    scripted: Scripted,
) -> None:
    port = await scripted.start(silent)
    g = PipelinedGet(f"redis://127.0.0.1:{port}/0", 0.2)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        results = await asyncio.gather(*(g.get(f"k{i}") for i in range(5)), return_exceptions=True)
        elapsed = loop.time() - started
        for result in results:  # the first timed out; the others went with the connection
            assert isinstance(result, StoreUnavailable)
            assert str(result).startswith("redis GET failed: TimeoutError: no reply within 0.2s")
        assert 0.19 <= elapsed < 2.0  # no hang (generous bound: a busy machine)
        assert scripted.connections == 1
        with pytest.raises(StoreUnavailable, match="TimeoutError"):
            await g.get("k")
        assert scripted.connections == 2  # reconnected
    finally:
        await g.aclose()


async def test_silent_server_fails_the_handshake_within_the_timeout(
    scripted: Scripted,
) -> None:
    port = await scripted.start(silent)
    g = PipelinedGet(f"redis://:pw@127.0.0.1:{port}/1", 0.2)
    try:
        results = await asyncio.gather(*(g.get("k") for _ in range(5)), return_exceptions=True)
        for result in results:
            assert isinstance(result, StoreUnavailable)
            assert "TimeoutError" in str(result)
        assert scripted.connections == 1  # one shared attempt
    finally:
        await g.aclose()


async def test_connection_refused() -> None:
    g = PipelinedGet(f"redis://127.0.0.1:{closed_port()}/0", 1.0)
    try:
        for _ in range(2):
            with pytest.raises(StoreUnavailable) as info:
                await g.get("k")
            assert str(info.value).startswith("redis GET failed: ConnectionRefusedError")
            assert isinstance(info.value.__cause__, ConnectionRefusedError)
    finally:
        await g.aclose()


async def test_hang_up_fails_every_pending_call(scripted: Scripted) -> None:
    port = await scripted.start(hang_up)
    g = PipelinedGet(f"redis://127.0.0.1:{port}/0", 5.0)
    try:
        results = await asyncio.gather(*(g.get(f"k{i}") for i in range(20)), return_exceptions=True)
        for result in results:
            assert isinstance(result, StoreUnavailable)
            assert isinstance(result.__cause__, ConnectionError)  # EOF, reset or broken pipe
        with pytest.raises(StoreUnavailable):
            await g.get("k")
        assert scripted.connections == 2
    finally:
        await g.aclose()


async def test_protocol_error_closes_the_connection(scripted: Scripted) -> None:
    port = await scripted.start(garbage)
    g = PipelinedGet(f"redis://127.0.0.1:{port}/0", 5.0)
    try:
        results = await asyncio.gather(*(g.get(f"k{i}") for i in range(3)), return_exceptions=True)
        for result in results:
            assert isinstance(result, StoreUnavailable)
            assert "InvalidResponse: protocol error: unexpected reply b':1'" in str(result)
        with pytest.raises(StoreUnavailable, match="protocol error"):
            await g.get("k")
        assert scripted.connections == 2
    finally:
        await g.aclose()


async def test_tls_to_a_server_that_does_not_speak_it(scripted: Scripted) -> None:
    async def plain_text(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)  # the ClientHello
        writer.write(b"-ERR unknown command\r\n")
        await reader.read()

    port = await scripted.start(plain_text)
    g = PipelinedGet(f"rediss://127.0.0.1:{port}/0", 5.0)
    try:
        with pytest.raises(StoreUnavailable) as info:
            await g.get("k")
        assert isinstance(info.value.__cause__, ssl.SSLError)
    finally:
        await g.aclose()


async def test_replies_in_one_byte_pieces(scripted: Scripted) -> None:
    replies = [b"$%d\r\n%b\r\n" % (len(BINARY), BINARY), b"$-1\r\n", b"$0\r\n\r\n", b"$2\r\nok\r\n"]

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked = 0
        data = b""
        while len(replies) > asked:
            data += await reader.read(65536)
            while b"\r\nGET\r\n" in data:  # one per command
                data = data.split(b"\r\nGET\r\n", 1)[1]
                for i in range(len(replies[asked])):
                    writer.write(replies[asked][i : i + 1])
                    await writer.drain()
                asked += 1
        await reader.read()

    port = await scripted.start(trickle)
    g = PipelinedGet(f"redis://127.0.0.1:{port}/0", 5.0)
    try:
        got = await asyncio.gather(g.get("a"), g.get("b"), g.get("c"))
        assert got == [BINARY, None, b""]
        assert await g.get("d") == b"ok"
    finally:
        await g.aclose()


# -- cancellation, kill, close -------------------------------------------------------------


@pytest.mark.parametrize("sent", [False, True], ids=["before-write", "after-write"])
async def test_cancelled_callers_do_not_shift_replies(
    getter: PipelinedGet, redis_client: aioredis.Redis, sent: bool
) -> None:
    await redis_client.mset({f"k{i}": b"v%d" % i for i in range(100)})
    assert await getter.get("k0") == b"v0"  # connected
    tasks = [asyncio.create_task(getter.get(f"k{i}")) for i in range(100)]
    await asyncio.sleep(0)  # every task has queued its GET
    if sent:
        await asyncio.sleep(0)  # and the buffer went out
    for task in tasks[::2]:
        task.cancel()
    for i, task in enumerate(tasks):
        if i % 2:
            assert await task == b"v%d" % i
        else:
            with pytest.raises(asyncio.CancelledError):
                await task
    assert await getter.get("k7") == b"v7"
    assert await getter.get("absent") is None


async def test_a_cancelled_caller_does_not_cancel_the_shared_connect(
    scripted: Scripted,
) -> None:
    port = await scripted.start(silent)
    g = PipelinedGet(f"redis://:pw@127.0.0.1:{port}/0", 0.2)  # the handshake never ends
    try:
        first = asyncio.create_task(g.get("k"))
        second = asyncio.create_task(g.get("k"))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(StoreUnavailable, match="TimeoutError"):
            await second
        assert first.cancelled()
        assert scripted.connections == 1
    finally:
        await g.aclose()


async def test_redis_killed_then_restarted(redis_server: RedisServer) -> None:
    server = RedisServer(redis_server.binary)  # a private one: others keep theirs
    server.start()
    g = PipelinedGet(server.url, 2.0)
    try:
        with redis.Redis(port=server.port) as client:
            client.set("k", b"before")
        assert await g.get("k") == b"before"
        server.kill()
        with pytest.raises(StoreUnavailable) as info:  # the connection died under it
            await g.get("k")
        assert isinstance(info.value.__cause__, ConnectionError)  # EOF, reset or broken pipe
        with pytest.raises(StoreUnavailable, match="ConnectionRefusedError"):
            await g.get("k")
        server.restart()  # same port, empty
        assert await g.get("k") is None
        with redis.Redis(port=server.port) as client:
            client.set("k", b"after")
        assert await g.get("k") == b"after"
    finally:
        await g.aclose()
        server.stop()


async def test_close_fails_pending_and_later_calls(scripted: Scripted) -> None:
    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"$-1\r\n")
        await silent(reader, writer)

    port = await scripted.start(answer_once)
    g = PipelinedGet(f"redis://127.0.0.1:{port}/0", None)  # no deadline: only close ends it
    assert await g.get("k") is None  # connected
    pending = [asyncio.create_task(g.get("k")) for _ in range(3)]
    await asyncio.sleep(0)  # their GETs are queued on the connection
    await g.aclose()
    for task in pending:
        with pytest.raises(StoreUnavailable, match="closed"):
            await task
    with pytest.raises(StoreUnavailable, match="closed"):
        await g.get("k")
    await g.aclose()  # idempotent


async def test_close_while_connecting(scripted: Scripted) -> None:
    port = await scripted.start(silent)
    g = PipelinedGet(f"redis://:pw@127.0.0.1:{port}/0", 5.0)
    pending = asyncio.create_task(g.get("k"))
    await asyncio.sleep(0)
    await g.aclose()
    with pytest.raises(StoreUnavailable, match="closed"):
        await pending


# -- RedisStore and the app ----------------------------------------------------------------


async def test_redis_store_reads_through_the_getter(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    now = 1_800_000_000.0
    entry = Entry(status=200, headers=(), body=b"{}", stored_at=now, ttl=60.0)
    g = PipelinedGet(redis_url, 5.0)
    store = RedisStore(redis_client, "p:", lambda: now, getter=g)
    try:
        assert store.getter is g
        await store.set("k", entry)
        assert await store.get("k") == entry
        assert await store.get("absent") is None
        await redis_client.set("p:bad", b"junk")
        assert await store.get("bad") is None  # unreadable: a miss, deleted
        assert not await redis_client.exists("p:bad")
    finally:
        await g.aclose()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.get("k")


async def test_redis_store_closes_the_getter_only_with_its_client(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    g = PipelinedGet(redis_url, 5.0)
    await RedisStore(client, getter=g).close()
    assert await g.get("k") is None  # not owned: still usable
    await RedisStore(client, owns_client=True, getter=g).close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await g.get("k")


async def test_app_reads_l2_through_the_getter_and_closes_it(
    make_proxy: ProxyFactory, redis_url: str, redis_client: aioredis.Redis
) -> None:
    proxy = await make_proxy(BLOXPROXY_CACHE_REDIS_URL=redis_url)
    fetcher = fetcher_of(proxy)
    assert fetcher.shared is not None
    g = fetcher.shared.store.getter
    assert isinstance(g, PipelinedGet)
    assert (await get(proxy, USER_PT)).x_cache == "MISS"
    await settle(proxy)
    assert await redis_client.exists("bloxproxy:" + USER_KEY)
    fetcher.drop_l1()
    assert (await get(proxy, USER_PT)).x_cache == "HIT"  # from L2
    assert USER_KEY in fetcher.l1
    assert fetcher.shared.healthy
    await proxy.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await g.get("k")


async def test_app_leaves_urls_with_options_to_redis_py(
    make_proxy: ProxyFactory, redis_url: str, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(BLOXPROXY_CACHE_REDIS_URL=redis_url + "?health_check_interval=5")
    fetcher = fetcher_of(proxy)
    assert fetcher.shared is not None
    assert fetcher.shared.store.getter is None
    await get(proxy, USER_PT)
    await settle(proxy)
    fetcher.drop_l1()
    assert (await get(proxy, USER_PT)).x_cache == "HIT"  # from L2, through redis-py
    assert users_get_count(fake) == 1


@pytest.mark.redis  # a second redis-server of its own
async def test_a_resolved_node_change_retires_the_connection_without_failing_a_call(
    redis_url: str,
) -> None:
    """With ``resolve`` (a Sentinel's primary), the node is asked again every ``recheck``
    seconds while calls come; when it names another node, the connection answers what was
    sent on it and closes, and the next calls go to the new node: no call fails."""
    with RedisServer() as other:
        urls = {"now": redis_url}
        for url, value in ((redis_url, b"first"), (other.url, b"second")):
            with redis.Redis.from_url(url) as c:
                c.set("k", value)

        async def resolve() -> str:
            return urls["now"]

        g = PipelinedGet("redis://", 2.0, resolve=resolve, recheck=0.05)
        try:
            assert await g.get("k") == b"first"
            first_port = g.connected_to()
            urls["now"] = other.url
            seen: list[bytes | None] = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3.0
            while not seen or seen[-1] != b"second":
                # many calls in flight at each step: the retired connection answers its own
                seen += await asyncio.gather(*(g.get("k") for _ in range(20)))
                assert loop.time() < deadline, seen[-5:]
                await asyncio.sleep(0.01)
            assert set(seen) == {b"first", b"second"}
            assert seen.index(b"second") > 0 and b"first" not in seen[seen.index(b"second") :]
            assert g.connected_to() == other.port != first_port
        finally:
            await g.aclose()
