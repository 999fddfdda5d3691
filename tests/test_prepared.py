"""Answers as HTTP (bloxproxy.prepared): remembered hits as prepared bytes, ordinary
answers written as prepared bytes, and the aiohttp private API they rely on.

``test_aiohttp_still_has_what_prepared_relies_on`` fails loudly when a new aiohttp changes
any of the private names :mod:`bloxproxy.prepared` uses; the others check that a prepared
answer is exactly the message aiohttp would have sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from bloxproxy.cache import decide
from bloxproxy.cache.entry import Entry
from bloxproxy.prepared import FastEntry, WireResponse, wired

Client = TestClient[web.Request, web.Application]


def test_aiohttp_still_has_what_prepared_relies_on() -> None:
    """aiohttp's private API used by bloxproxy.prepared (and the upstream body read): if
    this fails after an aiohttp upgrade, prepared.py must be looked at before anything
    else, since the fast path and wired() would otherwise break in subtle ways."""
    from aiohttp.http_writer import _serialize_headers

    headers = CIMultiDict([("Content-Type", "application/json"), ("X-A", "1"), ("X-A", "2")])
    head = _serialize_headers("HTTP/1.1 200 OK", headers)
    assert head == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
    )
    try:
        _serialize_headers("HTTP/1.1 200 OK", CIMultiDict([("X-Bad", "a\r\nb")]))
    except ValueError:
        pass
    else:
        raise AssertionError("_serialize_headers no longer refuses CR/LF in a value")
    resp = web.StreamResponse()
    for name in ("_payload_writer", "_eof_sent", "_req", "_keep_alive", "_headers", "_cookies"):
        assert hasattr(resp, name), f"web.StreamResponse has no {name} any more"
    assert callable(web.Application._handle), "web.Application has no _handle any more"
    assert hasattr(web.Response(body=b"x"), "_body"), "web.Response keeps its body elsewhere"
    assert "_body" in aiohttp.ClientResponse.__init__.__code__.co_names or hasattr(
        aiohttp.ClientResponse, "_body"
    ), "aiohttp.ClientResponse keeps its read body elsewhere now (upstream.client.read_body)"


# -- the pieces ---------------------------------------------------------------------------------


NOW = 1_800_000_000.3  # Fri, 15 Jan 2027 08:00:00 GMT


def entry(**changes: object) -> FastEntry:
    args: dict[str, object] = {
        "key": "k",
        "entry": Entry(200, (), b"{}", NOW - 1.2, 60.0, 10.0, 0.0, '"e"'),
        "status": 200,
        "body": b"{}",
        "static": (("Content-Type", "application/json"),),
        "route": "r",
    }
    args.update(changes)
    return FastEntry(**args)  # type: ignore[arg-type]


def test_wire_head_is_rebuilt_each_second_and_refuses_unsafe_values() -> None:
    fe = entry()
    head = fe.wire(NOW)  # 1.2 s old
    assert head is not None and head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Cache-Control: public, max-age=58, stale-while-revalidate=10\r\n" in head
    assert b"Date: Fri, 15 Jan 2027 08:00:00 GMT\r\n" in head
    assert head.endswith(b"\r\n") and not head.endswith(b"\r\n\r\n")
    assert fe.wire(NOW + 0.6) is head  # same second of age and of the clock: the same bytes
    later = fe.wire(NOW + 0.8) or b""  # 2.0 s old, the clock in its next second
    assert b"Age: 2\r\n" in later
    assert b"Date: Fri, 15 Jan 2027 08:00:01 GMT" in later
    assert entry(static=(("X-Odd", "a\r\nSet-Cookie: x"),)).wire(NOW) is None
    assert entry(static=(("Content-Language", "\udcff"),)).wire(NOW) is None


def test_fast_headers_are_the_cache_headers_of_the_pipeline() -> None:
    """The remembered answer makes no header of its own: its cache headers are
    cache.decide.cache_headers' for a shared HIT of its entry."""
    fe = entry()
    e = fe.entry
    for now in (NOW, NOW + 30.5, NOW + 58.7):
        expected = decide.cache_headers("HIT", e, now, cached=True, shared=True)
        assert fe.headers(now) == [*fe.static, *expected, ("Content-Length", "2")]


async def test_a_large_wire_body_arrives_whole() -> None:
    body = bytes(range(256)) * 1024  # 256 KiB: written after the head, not joined to it
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        return WireResponse(200, head, body)

    app = web.Application()
    app.router.add_get("/", handler)
    server = TestServer(app)
    client: Client = TestClient(server)
    await client.start_server()
    try:
        for _ in range(2):  # twice on one connection: keep-alive holds
            async with client.get("/") as resp:
                assert resp.status == 200
                assert await resp.read() == body
    finally:
        await client.close()


# -- every pipeline answer as prepared bytes (wired) -------------------------------------


def plain_responses() -> dict[str, Callable[[], web.Response]]:
    return {
        "/json": lambda: web.Response(
            body=b'{"a":1}', headers={"Content-Type": "application/json", "X-Cache": "MISS"}
        ),
        "/empty": lambda: web.Response(status=200),
        "/octets": lambda: web.Response(body=b"\x00\x01"),
        "/problem": lambda: web.Response(
            status=404, text='{"title":"x"}', content_type="application/problem+json"
        ),
        "/unicode": lambda: web.Response(body=b"x", headers={"X-Name": "Ærø"}),
        "/multi": lambda: web.Response(body=b"x", headers=[("X-A", "1"), ("X-A", "2")]),  # type: ignore[arg-type]
    }


async def raw_get(
    port: int, path: str, version: str = "1.1"
) -> tuple[bytes, dict[str, list[str]], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/{version}\r\nHost: x\r\n\r\n".encode())
        status = await reader.readline()
        headers: dict[str, list[str]] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        body = await reader.readexactly(int(headers.get("content-length", ["0"])[0]))
        return status, headers, body
    finally:
        writer.close()
        await writer.wait_closed()


async def test_wired_answers_are_the_answers_aiohttp_would_send() -> None:
    made = plain_responses()
    wired_types: dict[str, str] = {}

    async def plain(request: web.Request) -> web.StreamResponse:
        return made[request.match_info["p"]]()

    async def wire(request: web.Request) -> web.StreamResponse:
        resp = wired(request, made[request.match_info["p"]](), time.time())
        wired_types[request.match_info["p"]] = type(resp).__name__
        return resp

    app = web.Application()
    app.router.add_get("/plain{p:/.*}", plain)
    app.router.add_get("/wire{p:/.*}", wire)
    server = TestServer(app)
    await server.start_server()
    try:
        for path in made:
            a = await raw_get(server.port, "/plain" + path)
            b = await raw_get(server.port, "/wire" + path)
            assert wired_types[path] == "WireResponse", path
            assert a[0] == b[0] and a[2] == b[2], path
            a[1].pop("date"), b[1].pop("date")
            assert a[1] == b[1], path
    finally:
        await server.close()


async def test_wired_leaves_what_it_cannot_say_to_aiohttp() -> None:
    seen: list[web.StreamResponse] = []
    cases = {
        "/head": lambda: web.Response(body=b"x"),
        "/204": lambda: web.Response(status=204),
        "/304": lambda: web.Response(status=304),
        "/newline": lambda: web.Response(body=b"x", headers={"X-Bad": "a\r\nSet-Cookie: x=1"}),
        "/closing": lambda: _closing(web.Response(body=b"x")),
        "/cookie": lambda: _with_cookie(web.Response(body=b"x")),
        "/te": lambda: web.Response(body=b"x", headers={"Transfer-Encoding": "chunked"}),
    }

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = cases[request.path]()
        out = wired(request, resp, time.time())
        seen.append(out)
        assert out is resp, request.path
        if request.path in ("/newline", "/te"):
            return web.Response(body=b"ok")  # aiohttp would refuse or mis-frame these
        return out

    app = web.Application()
    for path in cases:
        app.router.add_route("*", path, handler)
    server = TestServer(app)
    client: Client = TestClient(server)
    await client.start_server()
    try:
        async with client.head("/head") as resp:
            assert resp.status == 200
        for path in ("/204", "/304", "/newline", "/closing", "/cookie", "/te"):
            async with client.get(path) as resp:
                assert resp.status in (200, 204, 304), path
        status, _, _ = await raw_get(server.port, "/cookie", version="1.0")
        assert status.startswith(b"HTTP/1.0 200")
    finally:
        await client.close()
    assert len(seen) == 8


def _closing(resp: web.Response) -> web.Response:
    resp.force_close()
    return resp


def _with_cookie(resp: web.Response) -> web.Response:
    resp.set_cookie("a", "b")
    return resp
