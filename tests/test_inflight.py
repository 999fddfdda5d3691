"""The byte budget over upstream bodies being read at once (``upstream.max_inflight_bytes``).

The primitive is tested on its own (grants, FIFO order, timeouts, cancellation, a body
larger than the whole budget); then the real proxy against a real upstream on loopback that
streams large bodies slowly, so that many reads overlap: the bytes being read never exceed
the budget, requests past it wait and are answered, or get 503 with ``Retry-After`` when
the wait runs out, and the budget is whole again afterwards.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bloxproxy import config as config_mod
from bloxproxy.app import create_app
from bloxproxy.appkeys import FETCHER
from bloxproxy.upstream.inflight import BudgetExhausted, ByteBudget

Client = TestClient[web.Request, web.Application]


async def test_grants_while_there_is_room_then_queues() -> None:
    budget = ByteBudget(100)
    assert await budget.take(60, 0) == 60
    assert await budget.take(40, 0) == 40
    with pytest.raises(BudgetExhausted):
        await budget.take(1, 0)  # no wait allowed
    waiter = asyncio.ensure_future(budget.take(30, 5))
    await asyncio.sleep(0)
    assert not waiter.done()
    budget.give(60)
    assert await waiter == 30
    assert (budget.used, budget.peak) == (70, 100)


async def test_waiters_are_served_first_come_first_served() -> None:
    budget = ByteBudget(100)
    await budget.take(100, 0)
    order: list[str] = []

    async def wants(name: str, n: int) -> None:
        await budget.take(n, 5)
        order.append(name)

    big = asyncio.ensure_future(wants("big", 80))
    await asyncio.sleep(0)
    small = asyncio.ensure_future(wants("small", 10))
    await asyncio.sleep(0)
    budget.give(30)  # room for "small", but "big" came first
    await asyncio.sleep(0)
    assert order == []
    budget.give(70)
    await asyncio.gather(big, small)
    assert order == ["big", "small"]


async def test_a_waiter_that_times_out_leaves_no_reservation_behind() -> None:
    budget = ByteBudget(10)
    await budget.take(10, 0)
    with pytest.raises(BudgetExhausted):
        await budget.take(5, 0.01)
    budget.give(10)
    assert budget.used == 0
    assert await budget.take(10, 0) == 10


async def test_a_cancelled_waiter_leaves_no_reservation_behind() -> None:
    budget = ByteBudget(10)
    await budget.take(10, 0)
    waiter = asyncio.ensure_future(budget.take(5, 5))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    budget.give(10)
    assert budget.used == 0


async def test_a_body_larger_than_the_budget_goes_alone() -> None:
    budget = ByteBudget(10)
    assert await budget.take(1_000, 0) == 10
    with pytest.raises(BudgetExhausted):
        await budget.take(1, 0)
    budget.give(10)
    assert budget.used == 0


# -- the proxy under a burst of large, slow answers ------------------------------------------

BODY = 256 * 1024  # bytes per answer
STEP = 32 * 1024


@pytest.fixture
async def slow_upstream(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> AsyncIterator[TestServer]:
    """Answers ``/{service}/{anything}`` with BODY bytes of JSON, sent slowly in pieces."""

    async def handler(request: web.Request) -> web.StreamResponse:
        chunked = "chunked" in request.path
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if not chunked:
            resp.content_length = BODY
        await resp.prepare(request)
        payload = b'"' + b"x" * (BODY - 2) + b'"'
        for start in range(0, BODY, STEP):
            await resp.write(payload[start : start + STEP])
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    yield await aiohttp_server(app)


async def _burst(client: Client, paths: list[str]) -> list[tuple[int, str]]:
    async def one(path: str) -> tuple[int, str]:
        async with client.get(path) as resp:
            await resp.read()
            return resp.status, resp.headers.get("Retry-After", "")

    return list(await asyncio.gather(*(one(p) for p in paths)))


@pytest.mark.parametrize("kind", ["sized", "chunked"])
async def test_a_burst_of_large_misses_stays_inside_the_budget(
    aiohttp_client: Callable[..., Awaitable[Client]], slow_upstream: TestServer, kind: str
) -> None:
    config = config_mod.load(
        None,
        env={
            "BLOXPROXY_UPSTREAM_BASE_URL": f"http://127.0.0.1:{slow_upstream.port}/{{service}}",
            "BLOXPROXY_UPSTREAM_MAX_INFLIGHT_BYTES": str(3 * BODY),
            # A body of unknown size reserves the largest it may be: make that BODY.
            "BLOXPROXY_UPSTREAM_MAX_RESPONSE_SIZE": str(BODY),
            "BLOXPROXY_LIMITS_UPSTREAM_RATE": "1000",
            "BLOXPROXY_LIMITS_UPSTREAM_MAX_WAIT": "30s",
        },
    )
    client = await aiohttp_client(create_app(config))
    answers = await _burst(client, [f"/users/v1/{kind}/{i}" for i in range(12)])
    assert [status for status, _ in answers] == [200] * 12
    bodies = client.server.app[FETCHER].bodies
    assert bodies is not None
    assert bodies.peak <= 3 * BODY
    assert bodies.peak >= 2 * BODY  # the reads did overlap (else the test proves nothing)
    assert bodies.used == 0


async def test_past_the_wait_the_burst_gets_503_with_retry_after(
    aiohttp_client: Callable[..., Awaitable[Client]], slow_upstream: TestServer
) -> None:
    config = config_mod.load(
        None,
        env={
            "BLOXPROXY_UPSTREAM_BASE_URL": f"http://127.0.0.1:{slow_upstream.port}/{{service}}",
            "BLOXPROXY_UPSTREAM_MAX_INFLIGHT_BYTES": str(BODY),
            "BLOXPROXY_LIMITS_UPSTREAM_RATE": "1000",
            "BLOXPROXY_LIMITS_UPSTREAM_MAX_WAIT": "50ms",
            "BLOXPROXY_RETRIES_ATTEMPTS": "1",
        },
    )
    client = await aiohttp_client(create_app(config))
    answers = await _burst(client, [f"/users/v1/sized/{i}" for i in range(6)])
    statuses = sorted(status for status, _ in answers)
    assert statuses[0] == 200
    assert 503 in statuses
    assert set(statuses) <= {200, 503}
    assert all(after == "1" for status, after in answers if status == 503)
    bodies = client.server.app[FETCHER].bodies
    assert bodies is not None and bodies.peak <= BODY and bodies.used == 0


BIG = 4 * 1024 * 1024  # larger than what the kernel buffers for a stalled reader


@pytest.fixture
async def big_upstream(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> AsyncIterator[tuple[TestServer, list[str]]]:
    """Answers every path at once with BIG bytes of JSON; records the paths asked."""
    asked: list[str] = []
    payload = b'"' + b"x" * (BIG - 2) + b'"'

    async def handler(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(body=payload, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    yield await aiohttp_server(app), asked


async def _stalled_get(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A request from a client that does not read its answer yet (a tiny receive buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def test_an_answer_stays_counted_until_it_is_written_out(
    aiohttp_client: Callable[..., Awaitable[Client]],
    big_upstream: tuple[TestServer, list[str]],
) -> None:
    """Slow clients hold their large answers in the proxy's memory until they read them:
    the budget counts a body until its answer is written out, so with room for two, the
    bodies of the third and fourth misses are not read while two clients stall."""
    server, asked = big_upstream
    config = config_mod.load(
        None,
        env={
            "BLOXPROXY_UPSTREAM_BASE_URL": f"http://127.0.0.1:{server.port}/{{service}}",
            "BLOXPROXY_UPSTREAM_MAX_INFLIGHT_BYTES": str(2 * BIG),
            "BLOXPROXY_UPSTREAM_MAX_RESPONSE_SIZE": str(2 * BIG),
            "BLOXPROXY_LIMITS_UPSTREAM_RATE": "1000",
            "BLOXPROXY_LIMITS_UPSTREAM_MAX_WAIT": "30s",
            "BLOXPROXY_CACHE_PASSTHROUGH_TTL": "0",
        },
    )
    client = await aiohttp_client(create_app(config))
    bodies = client.server.app[FETCHER].bodies
    assert bodies is not None
    stalled = [await _stalled_get(client.port, f"/users/v1/big/{i}") for i in range(4)]
    for _ in range(100):  # until the proxy has done all it can while nobody reads
        await asyncio.sleep(0.01)
    assert bodies.used == 2 * BIG  # two answers held while their clients stall...
    assert bodies.waiting == 2  # ...and the other two bodies wait to be read
    for reader, writer in stalled:  # the clients read at last: everything is answered
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        assert len(await asyncio.wait_for(reader.readexactly(length), 10)) == BIG
        writer.close()
        await writer.wait_closed()
    assert len(asked) == 4
    assert bodies.used == 0 and bodies.peak <= 2 * BIG


async def test_idle_keep_alive_connections_do_not_pin_their_last_large_answer(
    aiohttp_client: Callable[..., Awaitable[Client]],
    big_upstream: tuple[TestServer, list[str]],
) -> None:
    """aiohttp keeps a keep-alive connection's last response until its next request: ten
    clients that each got a 4 MiB miss and then sit idle must not keep 40 MiB alive."""
    server, _ = big_upstream
    config = config_mod.load(
        None,
        env={
            "BLOXPROXY_UPSTREAM_BASE_URL": f"http://127.0.0.1:{server.port}/{{service}}",
            "BLOXPROXY_UPSTREAM_MAX_RESPONSE_SIZE": str(2 * BIG),
            "BLOXPROXY_LIMITS_UPSTREAM_RATE": "1000",
            "BLOXPROXY_CACHE_PASSTHROUGH_TTL": "0",
        },
    )
    client = await aiohttp_client(create_app(config))
    tracemalloc.start()
    try:
        idle = []
        for i in range(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
            writer.write(f"GET /users/v1/big/{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            assert len(await asyncio.wait_for(reader.readexactly(length), 10)) == BIG
            idle.append(writer)  # connected and idle: no next request
        await asyncio.sleep(0.05)
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 2 * BIG, f"{held / 2**20:.1f} MiB still held by idle connections"
    for writer in idle:
        writer.close()
        await writer.wait_closed()
