"""Hostile clients at the front door: guessing, odd secrets, slow and vanishing clients.

Every test attacks a real proxy on 127.0.0.1, served by ``serve.start_runner`` (the runner
``bloxproxy serve`` uses) in front of the fake Roblox; the attacks that need it go out as
raw bytes on plain sockets (a half-sent head, a body cut off, ``\\xff`` in a token), and
the file-descriptor flood runs ``bloxproxy serve`` itself in a subprocess under a low
``RLIMIT_NOFILE``. Throttles run on the injected clock (``clock.advance`` refills them);
the connection deadlines are real and short (a few tenths of a second).

1. secrets: a non-UTF-8 admin token or access key is a 401 problem, never a 500, and a
   token holding raw bytes (as the environment gives it) works;
2. a client hanging up mid-body is its doing: a 499 in the access log and the metrics, no
   traceback, no "unhandled error" (and a malformed body is the client's 400);
3. slow clients: a silent connection, a head or a body that never ends, an idle keep-alive
   connection are all closed on a deadline; connections past the cap are refused at once;
   under a low file limit a flood of slow connections neither floods the log nor stops the
   proxy from answering;
4. guessing: failed authentication (access keys and the admin token) is throttled per
   client address, 429 with ``Retry-After`` past the limit, one budget across replicas
   with Redis, and successful requests do not spend it;
5. ops endpoints: with access keys on, metrics and readiness details need a key
   (``healthz`` stays open), or a separate ops listener serves them without one..
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bloxproxy.app import create_app
from bloxproxy.appkeys import ACCESS_LOG, METRICS
from bloxproxy.fake import FakeRoblox
from bloxproxy.serve import start_runner
from tests.conftest import ROOT, FakeClock, proxy_config

PROBLEM = "application/problem+json"
TRACEBACK = re.compile(r"Traceback|File \"|\.py\"?, line \d+")
TOKEN = "admin-token-0123456789"
KEY = "access-key-0123456789"
WITHIN = 2.0  # no single exchange of these tests may take longer
QUIET = {"BLOXPROXY_LOGGING_ACCESS_LOG": "false", "BLOXPROXY_LIMITS_UPSTREAM_RATE": "100000"}


# -- the world: a proxy on serve's runner, raw sockets ---------------------------------------


@dataclass
class Proxy:
    app: web.Application
    port: int
    fake: FakeRoblox

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the app's own registry (what /_bloxproxy/metrics would say)."""
        text = generate_latest(self.app[METRICS].registry).decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total


Start = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def start(
    fake_server: TestServer, fake: FakeRoblox, clock: FakeClock
) -> AsyncIterator[Start]:
    """``await start(BLOXPROXY_…="…")``: a proxy app on ``start_runner`` and a TCP site."""
    runners: list[web.AppRunner] = []

    async def make(**env: str) -> Proxy:
        config = proxy_config(fake_server, **{**QUIET, **env})
        app = create_app(config, clock=clock, monotonic=clock, sleep=clock.sleep)
        runner = await start_runner(app, config)
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return Proxy(app, runner.addresses[0][1], fake)

    yield make
    for runner in reversed(runners):
        await runner.cleanup()


@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self, status: int) -> dict[str, Any]:
        assert self.status == status, (self.status, self.body[:300])
        assert self.headers.get("content-type") == PROBLEM, self.headers
        problem: dict[str, Any] = orjson.loads(self.body)
        assert problem["status"] == status and problem["title"] and problem["detail"]
        assert problem["request_id"] == self.headers.get("x-request-id")
        return problem


def parse(data: bytes) -> Raw:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP answer: {data[:200]!r}"
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return Raw(int(lines[0].split(b" ")[1]), headers, body)


async def connect(port: int, source: str = "127.0.0.1") -> tuple[Any, Any]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def until_closed(reader: asyncio.StreamReader, seconds: float = WITHIN) -> bytes:
    """Everything the server sends until it closes the connection (fails after ``seconds``)."""
    chunks = []
    async with asyncio.timeout(seconds):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    return b"".join(chunks)


async def exchange(port: int, data: bytes, source: str = "127.0.0.1") -> Raw:
    """Send ``data`` (which should say ``Connection: close``) and read the whole answer."""
    reader, writer = await connect(port, source)
    try:
        writer.write(data)
        await writer.drain()
        return parse(await until_closed(reader))
    finally:
        writer.close()


def purge(token: bytes, source: str = "127.0.0.1") -> bytes:
    body = b'{"all": true}'
    return (
        b"POST /_bloxproxy/admin/purge HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer "
        + token
        + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        + b"Connection: close\r\n\r\n"
        + body
    )


def keyed(key: bytes, path: bytes = b"/users/v1/users/1") -> bytes:
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: proxy\r\nX-Bloxproxy-Key: " + key + b"\r\n"
        b"Connection: close\r\n\r\n"
    )


def error_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log records at ERROR or above, or carrying a traceback, as text."""
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelname in ("ERROR", "CRITICAL") or r.exc_info
    ]


# -- 1. secrets parsed defensively -----------------------------------------------------------

NON_UTF8_TOKENS = [b"\xff\xfe", b"admin-token-0123456789\xff", b"\x80" * 32, b"\xc3\x28"]


@pytest.mark.parametrize("token", NON_UTF8_TOKENS, ids=["ff-fe", "suffix", "x80", "bad-pair"])
async def test_non_utf8_admin_token_is_a_401_never_a_500(
    start: Start, token: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: ``admin._authorize`` encoded the header strictly — a ``\\xff`` in the
    bearer token was an unauthenticated 500 (``UnicodeEncodeError``) with a traceback."""
    proxy = await start(BLOXPROXY_SERVER_ADMIN_TOKEN=TOKEN)
    answer = await exchange(proxy.port, purge(token))
    answer.problem(401)
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert error_records(caplog) == []
    # The right token still works on the same proxy.
    assert (await exchange(proxy.port, purge(TOKEN.encode()))).status == 200


async def test_non_utf8_scheme_and_access_key_are_401s(start: Start) -> None:
    proxy = await start(BLOXPROXY_SERVER_ADMIN_TOKEN=TOKEN, BLOXPROXY_AUTH_KEYS=KEY)
    bad_scheme = purge(b"x").replace(b"Bearer x", b"\xffBearer " + TOKEN.encode())
    (await exchange(proxy.port, bad_scheme)).problem(401)
    (await exchange(proxy.port, keyed(b"\xff" + KEY.encode()))).problem(401)
    assert proxy.fake.total == 0


async def test_a_token_holding_raw_bytes_from_the_environment(start: Start) -> None:
    """An admin token set from a non-UTF-8 environment arrives surrogate-escaped (that is
    how Python decodes ``os.environ``, and string keys take the text verbatim): exactly
    those bytes on the wire authenticate. Before, every purge was a 500."""
    raw = b"token-\xe9\xff"
    proxy = await start(BLOXPROXY_SERVER_ADMIN_TOKEN=raw.decode("utf-8", "surrogateescape"))
    assert (await exchange(proxy.port, purge(raw))).status == 200
    (await exchange(proxy.port, purge(b"token-\xe9\xfe"))).problem(401)
    (await exchange(proxy.port, purge(b"token-\xc3\xa9\xc3\xbf"))).problem(401)


# -- 2. a client hanging up mid-body ---------------------------------------------------------

CUT_BODIES = {
    "content-length": b"POST /users/v1/users HTTP/1.1\r\nHost: proxy\r\n"
    b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + b'{"userIds": [1, ',
    "chunked": b"POST /users/v1/users HTTP/1.1\r\nHost: proxy\r\n"
    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"400\r\n" + b'{"userIds": [1, ',
    "admin-purge": b"POST /_bloxproxy/admin/purge HTTP/1.1\r\nHost: proxy\r\n"
    b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 500\r\n\r\n" + b'{"al',
}


async def poll(condition: Callable[[], bool], what: str, seconds: float = WITHIN) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("request_bytes", CUT_BODIES.values(), ids=CUT_BODIES.keys())
async def test_client_hanging_up_mid_body_is_a_499_not_a_500(
    start: Start,
    request_bytes: bytes,
    caplog: pytest.LogCaptureFixture,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    """Regression: ``request.read()`` raised aiohttp's ``ConnectionResetError`` into the
    handler, which logged it as an "unhandled error" with a traceback and counted a 500."""
    proxy = await start(BLOXPROXY_SERVER_ADMIN_TOKEN=TOKEN, BLOXPROXY_LOGGING_ACCESS_LOG="true")
    capsysbinary.readouterr()
    for _ in range(3):
        _, writer = await connect(proxy.port)
        writer.write(request_bytes)
        await writer.drain()
        await asyncio.sleep(0.05)  # the handler is reading the body now
        writer.close()
    await poll(lambda: proxy.metric("bloxproxy_requests_total", status="499") == 3, "3 x 499")
    assert proxy.metric("bloxproxy_requests_total", status="500") == 0
    assert error_records(caplog) == []
    assert not any(TRACEBACK.search(r.getMessage()) for r in caplog.records)
    proxy.app[ACCESS_LOG].flush()
    lines = [orjson.loads(line) for line in capsysbinary.readouterr().err.splitlines()]
    assert [line["status"] for line in lines if line.get("type") == "access"] == [499] * 3
    assert proxy.fake.total == 0


MALFORMED_BODIES = {
    "bad-gzip": b"POST /users/v1/users HTTP/1.1\r\nHost: proxy\r\nContent-Encoding: gzip\r\n"
    b"Content-Length: 5\r\nConnection: close\r\n\r\nabcde",
    "bad-chunk-size": b"POST /users/v1/users HTTP/1.1\r\nHost: proxy\r\n"
    b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabcdefgh\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
async def test_a_malformed_body_is_the_clients_400(
    start: Start, request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Found on the way: a body that does not decode (bad gzip) was a 500 with two
    tracebacks, ours and aiohttp's lingering read. (A chunk longer than its size is refused
    by aiohttp's parser before any handler: kept as a guard.)"""
    proxy = await start()
    answer = await exchange(proxy.port, request_bytes)
    assert answer.status == 400, answer
    if answer.headers.get("content-type") == PROBLEM:  # (aiohttp's parser may answer first)
        answer.problem(400)
    await asyncio.sleep(0.05)
    assert error_records(caplog) == []
    assert proxy.metric("bloxproxy_requests_total", status="500") == 0
    assert proxy.fake.total == 0


# -- 3. slow clients: deadlines and a connection cap -----------------------------------------

SHORT = {
    "BLOXPROXY_SERVER_HEADER_TIMEOUT": "300ms",
    "BLOXPROXY_SERVER_BODY_TIMEOUT": "300ms",
    "BLOXPROXY_SERVER_KEEPALIVE_TIMEOUT": "300ms",
}
HALF_HEAD = b"GET /users/v1/users/1 HTTP/1.1\r\nHost: proxy\r\nX-A: "


async def test_a_silent_connection_is_closed_after_the_header_timeout(start: Start) -> None:
    proxy = await start(**SHORT)
    reader, writer = await connect(proxy.port)
    began = time.monotonic()
    assert await until_closed(reader) == b""  # nothing asked, nothing answered
    assert 0.25 < time.monotonic() - began < 1.5
    writer.close()


@pytest.mark.parametrize("drip", [False, True], ids=["stalled", "one-byte-every-50ms"])
async def test_a_head_that_never_ends_gets_a_408(start: Start, drip: bool) -> None:
    """The header deadline bounds the whole head, not the gap between two bytes: a client
    dripping a byte every 50 ms is cut off at the same time as one that stopped."""
    proxy = await start(**SHORT)
    reader, writer = await connect(proxy.port)
    began = time.monotonic()
    writer.write(HALF_HEAD)

    async def dripping() -> None:
        with contextlib.suppress(ConnectionError):
            while drip:
                await asyncio.sleep(0.05)
                writer.write(b"a")
                await writer.drain()

    dripper = asyncio.create_task(dripping())
    try:
        answer = parse(await until_closed(reader))
    finally:
        dripper.cancel()
        writer.close()
    problem = answer.problem(408)
    assert problem["code"] == "request_timeout"
    assert answer.headers["connection"] == "close"
    assert 0.25 < time.monotonic() - began < 1.5
    assert proxy.metric("bloxproxy_client_timeouts_total", phase="header") == 1
    assert proxy.fake.total == 0


async def test_a_second_head_that_never_ends_gets_a_408_too(start: Start) -> None:
    """On a kept-alive connection the deadline starts with the next head's first byte (the
    idle time before it is the keep-alive timeout's, longer here)."""
    proxy = await start(**{**SHORT, "BLOXPROXY_SERVER_KEEPALIVE_TIMEOUT": "5s"})
    reader, writer = await connect(proxy.port)
    writer.write(b"GET /_bloxproxy/healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b'"ok"}'), WITHIN)
    await asyncio.sleep(0.5)  # idle longer than the header deadline: still open
    began = time.monotonic()
    writer.write(HALF_HEAD)
    answer = parse(await until_closed(reader))
    writer.close()
    assert answer.problem(408)["code"] == "request_timeout"
    assert 0.25 < time.monotonic() - began < 1.5


async def test_a_body_that_never_ends_gets_a_408(start: Start) -> None:
    proxy = await start(**SHORT)
    reader, writer = await connect(proxy.port)
    began = time.monotonic()
    writer.write(
        b"POST /users/v1/users HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n" + b'{"userIds": '
    )
    answer = parse(await until_closed(reader))
    writer.close()
    assert answer.problem(408)["code"] == "body_timeout"
    assert 0.25 < time.monotonic() - began < 1.5
    assert proxy.metric("bloxproxy_requests_total", status="408") == 1
    assert proxy.metric("bloxproxy_client_timeouts_total", phase="body") == 1
    assert proxy.fake.total == 0


async def test_an_unread_body_that_never_ends_is_cut_off_too(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """A request refused before its body is read (no access key) while the body keeps not
    arriving: the answer goes out, the connection is closed by the body deadline, quietly."""
    proxy = await start(**SHORT, BLOXPROXY_AUTH_KEYS=KEY)
    reader, writer = await connect(proxy.port)
    writer.write(b"POST /users/v1/users HTTP/1.1\r\nHost: proxy\r\nContent-Length: 100\r\n\r\n{")
    data = await until_closed(reader)
    writer.close()
    parse(data).problem(401)
    assert error_records(caplog) == []


async def test_an_idle_keep_alive_connection_is_closed(start: Start) -> None:
    proxy = await start(**SHORT)
    reader, writer = await connect(proxy.port)
    writer.write(b"GET /_bloxproxy/healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
    await writer.drain()
    answered = await asyncio.wait_for(reader.readuntil(b'"ok"}'), WITHIN)
    assert answered.startswith(b"HTTP/1.1 200 ")
    began = time.monotonic()
    assert await until_closed(reader) == b""
    assert 0.2 < time.monotonic() - began < 1.5
    writer.close()


async def test_connections_past_the_cap_are_refused_at_once(start: Start) -> None:
    proxy = await start(BLOXPROXY_SERVER_MAX_CONNECTIONS="5", BLOXPROXY_SERVER_HEADER_TIMEOUT="5s")
    held = [await connect(proxy.port) for _ in range(5)]
    await poll(lambda: proxy.metric("bloxproxy_client_connections") == 5, "5 open")
    reader, writer = await connect(proxy.port)
    began = time.monotonic()
    answer = parse(await until_closed(reader))
    writer.close()
    assert time.monotonic() - began < 0.5
    answer.problem(503)
    assert answer.headers["retry-after"] == "1"
    assert proxy.metric("bloxproxy_client_connections_refused_total") == 1
    held.pop()[1].close()  # a slot frees up: the next connection is served
    await poll(lambda: proxy.metric("bloxproxy_client_connections") == 4, "4 open")
    answer = await exchange(proxy.port, keyed(b"-", b"/_bloxproxy/healthz"))
    assert answer.status == 200
    for _, w in held:
        w.close()


def _serve_under_a_file_limit(soft: int, hard: int, env: dict[str, str]) -> Any:
    """``bloxproxy serve`` in a subprocess whose RLIMIT_NOFILE is (soft, hard)."""
    launcher = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
        "os.execv(sys.executable, [sys.executable, '-m', 'bloxproxy', 'serve'])"
    )
    return subprocess.Popen(
        [sys.executable, "-c", launcher],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def probe(port: int) -> Raw:
    """``healthz`` on a fresh connection — unless the proxy refuses the connection (503)
    first: a client that had already sent its request could then see a reset instead."""
    reader, writer = await connect(port)
    try:
        try:
            first = await asyncio.wait_for(reader.read(65536), 0.2)
        except TimeoutError:
            writer.write(keyed(b"-", b"/_bloxproxy/healthz"))
            return parse(await until_closed(reader))
        return parse(first + await until_closed(reader))
    finally:
        writer.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_flood_of_slow_connections_under_a_low_file_limit(tmp_path: Path) -> None:
    """The reported incident, replayed: 180 slow connections against a process with a low
    open-file limit. Before, once the descriptors ran out, asyncio logged "socket.accept()
    out of system resource" with a traceback a thousand times per accept attempt (~11,000
    lines/s here) and the proxy stopped answering. Now the soft limit is raised to the hard
    one at start, client connections are capped below it, the slow ones are cut off by the
    header deadline, and repeated log lines are rate-limited: a few dozen lines in all, and
    a fresh client is answered (200 or, while the cap is full, a 503 problem) at once — and
    the ops listener, with a cap of its own, answers its probes throughout."""
    port, ops_port = free_port(), free_port()
    proc = _serve_under_a_file_limit(
        64,
        256,
        {
            "BLOXPROXY_SERVER_PORT": str(port),
            "BLOXPROXY_SERVER_OPS_PORT": str(ops_port),
            "BLOXPROXY_NO_UVLOOP": "1",  # asyncio's accept loop is the one that floods
            "BLOXPROXY_SERVER_HEADER_TIMEOUT": "1s",
            "BLOXPROXY_LOGGING_ACCESS_LOG": "false",
        },
    )
    held = []
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                held.append(await connect(port))
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
                await asyncio.sleep(0.05)
        for _ in range(180):
            reader, writer = await connect(port)
            writer.write(HALF_HEAD)
            held.append((reader, writer))
        await asyncio.sleep(0.3)
        answer = await probe(port)
        assert answer.status in (200, 503), answer
        if answer.status == 503:
            answer.problem(503)
        ops = await get(ops_port, "/_bloxproxy/readyz")  # the ops listener has its own cap
        assert ops.status == 200 and orjson.loads(ops.body)["status"] == "ok"
        await asyncio.sleep(1.0)  # past the header deadline: the slow ones are gone
        assert (await probe(port)).status == 200
    finally:
        for _, writer in held:
            writer.close()
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    lines = err.decode(errors="replace").splitlines()
    assert len(lines) < 60, f"{len(lines)} log lines: {Counter(line[:120] for line in lines)}"
    assert any("open-file limit" in line and "256" in line for line in lines), lines


# -- 4. guessing is throttled ----------------------------------------------------------------

FAILURES = {
    "BLOXPROXY_LIMITS_AUTH_FAILURES_RATE": "1",
    "BLOXPROXY_LIMITS_AUTH_FAILURES_BURST": "20",
}


async def statuses(
    port: int, requests: list[tuple[str, str, dict[str, str]]], source: str = "127.0.0.1"
) -> list[tuple[int, str | None]]:
    """Send ``(method, path, headers)`` concurrently from ``source``: (status, Retry-After)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), limit=50)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as s:

        async def one(method: str, path: str, headers: dict[str, str]) -> tuple[int, str | None]:
            body = b'{"all": true}' if method == "POST" else None
            async with asyncio.timeout(WITHIN * 5):
                async with s.request(method, path, headers=headers, data=body) as resp:
                    await resp.read()
                    return resp.status, resp.headers.get("Retry-After")

        return list(await asyncio.gather(*(one(*r) for r in requests)))


ADMIN = "/_bloxproxy/admin/purge"


@pytest.mark.parametrize("target", ["admin-token", "access-key"])
async def test_guessing_is_throttled_per_client_address(
    start: Start, clock: FakeClock, target: str
) -> None:
    """300 wrong guesses at once from one address: the first 20 are 401s, the other 280
    429s with Retry-After; meanwhile that address is refused even with the right secret
    (otherwise 429-or-200 would still answer every guess), another address is not. Once
    Retry-After has passed, the right secret works again from the first address."""
    proxy = await start(BLOXPROXY_SERVER_ADMIN_TOKEN=TOKEN, BLOXPROXY_AUTH_KEYS=KEY, **FAILURES)

    def req(secret: str) -> tuple[str, str, dict[str, str]]:
        if target == "admin-token":
            return ("POST", ADMIN, {"Authorization": f"Bearer {secret}"})
        return ("GET", "/users/v1/users/1", {"X-Bloxproxy-Key": secret})

    answers = await statuses(proxy.port, [req(f"guess-{i}") for i in range(300)])
    counts = Counter(status for status, _ in answers)
    assert counts == {401: 20, 429: 280}, counts
    retry_after = {ra for status, ra in answers if status == 429}
    assert retry_after == {"1"}
    assert await statuses(proxy.port, [req(TOKEN if target == "admin-token" else KEY)]) == [
        (429, "1")
    ]
    right = req(TOKEN if target == "admin-token" else KEY)
    assert (await statuses(proxy.port, [right], source="127.0.0.2"))[0][0] == 200
    clock.advance(1.0)
    assert (await statuses(proxy.port, [right]))[0][0] == 200
    assert proxy.fake.total == (0 if target == "admin-token" else 1)
    assert proxy.metric("bloxproxy_auth_failures_total", outcome="unauthorized") == 20
    assert proxy.metric("bloxproxy_auth_failures_total", outcome="throttled") == 281


async def test_the_throttle_answer_is_a_problem(start: Start) -> None:
    proxy = await start(BLOXPROXY_AUTH_KEYS=KEY, BLOXPROXY_LIMITS_AUTH_FAILURES_BURST="1")
    (await exchange(proxy.port, keyed(b"wrong"))).problem(401)
    answer = await exchange(proxy.port, keyed(b"wrong"))
    problem = answer.problem(429)
    assert problem["code"] == "auth_throttled" and problem["retry_after"] >= 1
    assert answer.headers["retry-after"] == str(problem["retry_after"])


async def test_successful_requests_do_not_spend_the_failure_budget(start: Start) -> None:
    proxy = await start(
        BLOXPROXY_SERVER_ADMIN_TOKEN=TOKEN,
        BLOXPROXY_AUTH_KEYS=KEY,
        BLOXPROXY_LIMITS_AUTH_FAILURES_BURST="5",
    )
    good = [("GET", "/users/v1/users/1", {"X-Bloxproxy-Key": KEY})] * 200
    good += [("POST", ADMIN, {"Authorization": f"Bearer {TOKEN}"})] * 20
    assert {status for status, _ in await statuses(proxy.port, good)} == {200}
    wrong = [("GET", "/users/v1/users/1", {"X-Bloxproxy-Key": "nope"})] * 6
    assert [status for status, _ in await statuses(proxy.port, wrong)].count(401) == 5


async def test_wrong_keys_and_wrong_tokens_share_one_budget(start: Start) -> None:
    proxy = await start(
        BLOXPROXY_SERVER_ADMIN_TOKEN=TOKEN,
        BLOXPROXY_AUTH_KEYS=KEY,
        BLOXPROXY_LIMITS_AUTH_FAILURES_BURST="4",
    )
    mixed = [("GET", "/v1/users/1", {"X-Bloxproxy-Key": "nope"})] * 2
    mixed += [("POST", ADMIN, {"Authorization": "Bearer nope"})] * 2
    assert [s for s, _ in await statuses(proxy.port, mixed)] == [401] * 4
    assert [s for s, _ in await statuses(proxy.port, mixed[:1])] == [429]


async def test_failures_are_counted_across_replicas_with_redis(
    start: Start, redis_url: str
) -> None:
    env = {
        "BLOXPROXY_AUTH_KEYS": KEY,
        "BLOXPROXY_CACHE_REDIS_URL": redis_url,
        "BLOXPROXY_CACHE_REDIS_PREFIX": f"bp-{os.getpid()}-{time.monotonic_ns()}:",
        "BLOXPROXY_LIMITS_AUTH_FAILURES_BURST": "10",
    }
    one, two = await start(**env), await start(**env)
    wrong = [("GET", "/v1/users/1", {"X-Bloxproxy-Key": "nope"})]
    assert [s for s, _ in await statuses(one.port, wrong * 6)] == [401] * 6
    assert [s for s, _ in await statuses(two.port, wrong * 4)] == [401] * 4
    assert [s for s, _ in await statuses(one.port, wrong)] == [429]
    assert [s for s, _ in await statuses(two.port, wrong)] == [429]


# -- 5. ops endpoints behind the keys, or on their own listener ------------------------------


async def get(port: int, path: str, headers: dict[str, str] | None = None) -> Raw:
    lines = [f"GET {path} HTTP/1.1", "Host: proxy", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return await exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode())


async def test_with_access_keys_metrics_and_readiness_details_need_a_key(start: Start) -> None:
    """Before, ``/_bloxproxy/metrics`` answered 200 without a key."""
    proxy = await start(BLOXPROXY_AUTH_KEYS=KEY)
    (await get(proxy.port, "/_bloxproxy/metrics")).problem(401)
    (await get(proxy.port, "/_bloxproxy/metrics", {"X-Bloxproxy-Key": "nope"})).problem(401)
    for headers in ({"X-Bloxproxy-Key": KEY}, {"Authorization": f"Bearer {KEY}"}):
        answer = await get(proxy.port, "/_bloxproxy/metrics", headers)
        assert answer.status == 200 and b"bloxproxy_requests_total" in answer.body
    bare = await get(proxy.port, "/_bloxproxy/readyz")
    assert (bare.status, orjson.loads(bare.body)) == (200, {"status": "ok"})
    detailed = await get(proxy.port, "/_bloxproxy/readyz", {"X-Bloxproxy-Key": KEY})
    assert orjson.loads(detailed.body)["checks"]["config"] == "ok"
    (await get(proxy.port, "/_bloxproxy/readyz", {"X-Bloxproxy-Key": "nope"})).problem(401)
    assert (await get(proxy.port, "/_bloxproxy/healthz")).status == 200


async def test_without_access_keys_ops_endpoints_stay_open(start: Start) -> None:
    proxy = await start()
    assert (await get(proxy.port, "/_bloxproxy/metrics")).status == 200
    assert "checks" in orjson.loads((await get(proxy.port, "/_bloxproxy/readyz")).body)


async def test_the_ops_listener_serves_probes_and_metrics_without_keys(
    fake_server: TestServer, clock: FakeClock
) -> None:
    from bloxproxy.serve import start_ops_runner

    config = proxy_config(fake_server, BLOXPROXY_AUTH_KEYS=KEY, **QUIET)
    app = create_app(config, clock=clock, monotonic=clock, sleep=clock.sleep)
    main = await start_runner(app, config)
    ops = await start_ops_runner(app, config)
    try:
        await web.TCPSite(main, "127.0.0.1", 0).start()
        await web.TCPSite(ops, "127.0.0.1", 0).start()
        main_port, ops_port = main.addresses[0][1], ops.addresses[0][1]
        metrics = await get(ops_port, "/_bloxproxy/metrics")
        assert metrics.status == 200 and b"bloxproxy_requests_total" in metrics.body
        assert "checks" in orjson.loads((await get(ops_port, "/_bloxproxy/readyz")).body)
        assert (await get(ops_port, "/_bloxproxy/healthz")).status == 200
        for path in ("/users/v1/users/1", "/v1/users/1", "/_bloxproxy/admin/purge"):
            (await get(ops_port, path)).problem(404)
        (await get(main_port, "/_bloxproxy/metrics")).problem(401)
        assert fake_server.app is not None
    finally:
        await ops.cleanup()
        await main.cleanup()
