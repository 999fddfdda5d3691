"""Hostile input, generated: never a 500, every proxy error is problem+json, no open proxy.

Requests go out as raw bytes on a plain socket (``send_raw``), because an HTTP client
library would normalize or refuse exactly what these tests are about: CRLF and NUL in
header values, absolute URLs and ``//host`` in the request target, ``@`` and userinfo,
backslashes, raw invalid UTF-8, huge headers and query strings, duplicate parameters and
headers, non-JSON bodies. Hypothesis generates them (``derandomize=True``: the same examples
every run); one proxy, one fake Roblox and one *forbidden* listener serve all the examples
of a test. The invariants, checked after every example:

1. the proxy never answers 500, and nothing hangs (every answer within ``ANSWER_WITHIN``);
2. every 4xx/5xx the proxy itself produces is ``application/problem+json`` with a
   consistent body; passthrough answers (``X-Cache`` present) are Roblox's as sent;
3. no connection ever reaches the forbidden listener (a real TCP listener on another
   127.0.0.1 port that the inputs keep naming: in the path, as userinfo, as an absolute URL,
   as the ``Host`` with host routing on, percent-encoded), and every request the fake saw
   is for an allow-listed service, with the fake's own ``Host``.

Malformed HTTP that aiohttp's parser refuses (bare CR/LF or NUL in a header, a line over
the limit, too many headers, raw non-ASCII in the target, Content-Length with chunked,
TLS bytes) never reaches a middleware; ``serve``'s runner (``start_runner``, used here)
still answers it as a problem+json 400 without echoing the bytes, and an ``Expect`` other
than 100-continue gets a 417 problem (``test_unknown_expect_is_a_problem_too``).

The rule and config fuzzing at the end feeds generated YAML to ``bloxproxy check`` and to
``serve``'s loader: each must end in "valid" or "rejected with file:line messages", never
an exception, and what ``check`` accepts must serve without a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import itertools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from bloxproxy import cli, rule_fields, rules
from bloxproxy import config as config_mod
from bloxproxy.app import create_app
from bloxproxy.config import DEFAULT_SERVICES, Config, shipped_rules_dir
from bloxproxy.errors import ConfigError
from bloxproxy.fake import FakeRoblox, Fault
from bloxproxy.serve import MAX_LINE, load_all, start_runner
from tests.conftest import VIEWER_RULES, FakeClock, proxy_config

Client = TestClient[web.Request, web.Application]

ALLOWED = frozenset(DEFAULT_SERVICES)
SUFFIX = "roblox.proxy.internal"
ANSWER_WITHIN = 10.0
PROBLEM = "application/problem+json"
TRACEBACK = re.compile(rb"Traceback|File \"|\.py\"?, line \d+|site-packages")
# Placeholders in generated requests, filled in when sent (ports are known only then).
FORBIDDEN_PORT = b"<F>"

HYPOTHESIS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


# -- the world: fake Roblox, forbidden listener, proxy ------------------------------------------


class Forbidden:
    """A real TCP listener that no request may ever reach; it counts accepted connections."""

    def __init__(self) -> None:
        self.accepts = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepts += 1
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def forbidden() -> Any:
    listener = Forbidden()
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop()


@dataclass
class World:
    port: int  # the proxy, on the runner `bloxproxy serve` uses
    fake: FakeRoblox
    fake_port: int
    forbidden: Forbidden


@pytest.fixture
async def world(
    fake: FakeRoblox,
    fake_server: TestServer,
    forbidden: Forbidden,
    tmp_path: Path,
    clock: FakeClock,
) -> Any:
    viewer = tmp_path / "viewer.yaml"
    viewer.write_text(VIEWER_RULES)
    config = proxy_config(
        fake_server,
        BLOXPROXY_SERVER_HOST_SUFFIX=SUFFIX,
        BLOXPROXY_RULES_PATHS=f"[{shipped_rules_dir()}, {viewer}]",
        BLOXPROXY_LIMITS_UPSTREAM_RATE="100000",  # the fuzzer is no Roblox-abuse test
        BLOXPROXY_RETRIES_ATTEMPTS="1",
        BLOXPROXY_SERVER_MAX_BODY_SIZE="64KiB",
        BLOXPROXY_LOGGING_ACCESS_LOG="false",
    )
    app = create_app(config, clock=clock, monotonic=clock, sleep=clock.sleep)
    runner = await start_runner(app, config)  # as `bloxproxy serve` does
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        assert fake_server.port is not None
        yield World(runner.addresses[0][1], fake, fake_server.port, forbidden)
    finally:
        await runner.cleanup()


# -- raw HTTP --------------------------------------------------------------------------------------


@dataclass
class Raw:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2 :]
    return out


async def send_raw(port: int, data: bytes) -> Raw:
    """Send ``data`` as is on a new connection and read the answer until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(ANSWER_WITHIN):
            # The server may answer (400) and close before a huge request is fully written.
            with contextlib.suppress(ConnectionError):
                writer.write(data)
                await writer.drain()
            chunks = []
            with contextlib.suppress(ConnectionResetError):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    out = b"".join(chunks)
    while True:
        head, sep, body = out.partition(b"\r\n\r\n")
        assert sep, f"no complete HTTP answer to {data[:200]!r}: {out[:200]!r}"
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        if not 100 <= status < 200:
            break
        out = body  # an interim answer (100 Continue): the real one follows
    headers = []
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip().lower(), value.strip()))
    answer = Raw(status, headers, body)
    if (answer.header("transfer-encoding") or "").lower() == "chunked":
        answer.body = _dechunk(body)
    return answer


@dataclass(frozen=True)
class Req:
    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes | None = None
    version: bytes = b"HTTP/1.1"

    def render(self, forbidden_port: int) -> bytes:
        port = str(forbidden_port).encode()
        lines = [
            self.method + b" " + self.target.replace(FORBIDDEN_PORT, port) + b" " + self.version
        ]
        names = {name.lower() for name, _ in self.headers}
        if b"host" not in names:
            lines.append(b"Host: 127.0.0.1")
        for name, value in self.headers:
            lines.append(name + b": " + value.replace(FORBIDDEN_PORT, port))
        if self.body is not None and b"content-length" not in names:
            lines.append(b"Content-Length: " + str(len(self.body)).encode())
        lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + (self.body or b"")


def check_answer(world: World, req: Req, answer: Raw) -> None:
    """Invariants 1 and 2 for one answer."""
    shown = f"{req!r:.300} -> {answer.status} {answer.headers!r:.300} {answer.body[:300]!r}"
    assert answer.status != 500, shown
    assert not TRACEBACK.search(answer.body), shown
    rid = answer.header("x-request-id")
    assert rid is not None, shown
    if answer.header("x-cache") is not None:
        return  # a passthrough answer: Roblox's status, headers and body as sent
    assert answer.status < 500 or answer.status in (502, 503, 504), shown
    if answer.status >= 400:
        assert answer.header("content-type") == PROBLEM, shown
        if req.method == b"HEAD":
            return
        problem = orjson.loads(answer.body)
        assert problem["status"] == answer.status, shown
        assert isinstance(problem["title"], str) and problem["title"], shown
        assert isinstance(problem["detail"], str) and problem["detail"], shown
        assert problem["request_id"] == rid, shown
        if answer.status >= 500:
            assert problem["code"].startswith(("upstream_", "circuit_")), shown


async def exchange(world: World, req: Req) -> Raw:
    """Send one request and check every invariant (1, 2 and 3) around it."""
    before = world.fake.total
    answer = await send_raw(world.port, req.render(world.forbidden.port))
    check_answer(world, req, answer)
    assert world.forbidden.accepts == 0, f"{req!r} reached the forbidden listener"
    seen = world.fake.total - before
    for recorded in world.fake.requests[len(world.fake.requests) - seen :] if seen else []:
        assert recorded.service in ALLOWED, (req, recorded)
        assert recorded.raw_path.lower().startswith("/" + recorded.service), (req, recorded)
        assert recorded.headers.get("host") == f"127.0.0.1:{world.fake_port}", (req, recorded)
    return answer


# -- strategies --------------------------------------------------------------------------------

F = "<F>"
TRICKY_SEGMENTS = [
    "",
    ".",
    "..",
    "%2e%2e",
    "%2E%2e",
    ".%2e",
    "%2e.",
    "%2e",
    "%2f",
    "%2F..%2F",
    "..%2f..",
    "%5c",
    "\\",
    "..\\..",
    "\\\\127.0.0.1",
    "@",
    "%40",
    "user:pass@127.0.0.1:" + F,
    "users@127.0.0.1:" + F,
    "127.0.0.1:" + F,
    "http:",
    "https:",
    "http:%2f%2f127.0.0.1:" + F,
    "%2f%2f127.0.0.1:" + F,
    "%40127.0.0.1:" + F,
    "localhost:" + F,
    "[::1]:" + F,
    "%00",
    "%0d%0a",
    "%0D%0AX-Injected:%201",
    "%FF",
    "%C0%AE",
    "%C0%AE%C0%AE",
    "%E2%80%AE",
    "%",
    "%z",
    "%zz",
    "~",
    ";",
    ";x=1",
    "*",
    "_bloxproxy",
    "_fake",
    "v1",
    "v2",
    "users",
    "1",
    "156",
    "by-username",
    "builderman",
    "search",
    "ids",
    "%7Bid%7D",
    "{user_id}",
]
SERVICE_SEGMENTS = [
    *sorted(ALLOWED)[:6],
    "users",
    "games",
    "thumbnails",
    "Users",
    "USERS",
    "users.",
    "users%2f",
    "nosuch",
    "127.0.0.1:" + F,
]
PERCENT = st.binary(min_size=1, max_size=6).map(lambda b: "".join(f"%{x:02X}" for x in b))
PRINTABLE = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#"),
    max_size=12,
)
SEGMENT = st.one_of(
    st.sampled_from(TRICKY_SEGMENTS), PERCENT, PRINTABLE, st.sampled_from(SERVICE_SEGMENTS)
)
QUERY_NAMES = [
    "ids",
    "limit",
    "cursor",
    "sort_order",
    "keyword",
    "size",
    "format",
    "is_circular",
    "exclude_banned",
    "userIds",
    "universeIds",
    "url",
    "redirect",
    "host",
    "callback",
    "a",
]
QUERY_VALUE = st.one_of(
    st.sampled_from(
        [
            "1",
            "156",
            "1,156",
            "1,,2",
            "",
            "10",
            "25",
            "Asc",
            "x" * 300,
            "http://127.0.0.1:" + F + "/",
            "//127.0.0.1:" + F,
            "%FF",
            "%00",
            "%0d%0a",
            "%2e%2e%2f",
            "@127.0.0.1:" + F,
            "a+b",
            "%2B",
            "&",
            "=",
        ]
    ),
    PERCENT,
    PRINTABLE.map(lambda s: s.replace("&", "")),
)
QUERY = st.lists(
    st.tuples(st.one_of(st.sampled_from(QUERY_NAMES), PRINTABLE), QUERY_VALUE), max_size=6
).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
HUGE_QUERY = st.sampled_from([1_000, 7_000, 9_000, 20_000]).map(
    lambda n: "ids=" + ",".join(["1"] * (n // 2))
)


@st.composite
def targets(draw: st.DrawFn) -> bytes:
    """A request target: origin-form with tricky segments, ``//host``, absolute-form, ``*``."""
    kind = draw(st.sampled_from(["path", "path", "path", "double", "absolute", "star"]))
    segments = draw(st.lists(SEGMENT, min_size=0, max_size=6))
    if kind != "double" and draw(st.booleans()):
        segments.insert(0, draw(st.sampled_from(SERVICE_SEGMENTS)))
    path = "/" + "/".join(segments)
    if kind == "double":
        path = draw(st.sampled_from(["//", "///", "/\\", "\\\\"])) + "127.0.0.1:" + F + path
    elif kind == "absolute":
        host = draw(
            st.sampled_from(
                ["127.0.0.1:" + F, "user:pass@127.0.0.1:" + F, "users." + SUFFIX, "evil.example"]
            )
        )
        path = draw(st.sampled_from(["http://", "https://", "HTTP://"])) + host + path
    elif kind == "star":
        return b"*"
    query = draw(st.one_of(st.none(), QUERY, HUGE_QUERY))
    if query is not None:
        path += "?" + query
    if draw(st.booleans()):
        path += "#" + draw(PRINTABLE)
    raw = path.encode("utf-8")
    if draw(st.integers(0, 9)) == 0:  # raw invalid UTF-8 / non-ASCII bytes in the target
        raw += draw(st.binary(min_size=1, max_size=4).map(lambda b: bytes(x | 0x80 for x in b)))
    return raw


HEADER_VALUE = st.one_of(
    st.sampled_from(
        [
            b"",
            b"1",
            b"a\r\nX-Injected: 1",
            b"a\nb",
            b"a\rb",
            b"a\x00b",
            b"\xff\xfe",
            b" padded ",
            b"x" * 9_000,
            b"x" * 100_000,
            b"127.0.0.1:" + FORBIDDEN_PORT,
            b"http://127.0.0.1:" + FORBIDDEN_PORT + b"/",
        ]
    ),
    st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    PRINTABLE.map(str.encode),
)
HOSTS = st.sampled_from(
    [
        b"127.0.0.1:" + FORBIDDEN_PORT,
        b"users." + SUFFIX.encode(),
        b"USERS." + SUFFIX.encode(),
        b"users." + SUFFIX.encode() + b":" + FORBIDDEN_PORT,
        b"127.0.0.1." + SUFFIX.encode(),
        b"evil.example",
        b"users@127.0.0.1:" + FORBIDDEN_PORT,
        b"nosuch." + SUFFIX.encode(),
        b"users." + SUFFIX.encode() + b"@127.0.0.1:" + FORBIDDEN_PORT,
        b"." + SUFFIX.encode(),
        b"",
        b"[::1]:" + FORBIDDEN_PORT,
        b"users%2e" + SUFFIX.encode(),
    ]
)
CREDENTIAL_HEADER = st.tuples(
    st.sampled_from([b"Cookie", b"cookie", b"Authorization", b"x-api-key", b"X-API-KEY"]),
    st.one_of(
        HEADER_VALUE,
        HEADER_VALUE.map(lambda v: b".ROBLOSECURITY=" + v),
        HEADER_VALUE.map(lambda v: b"a=1; .roblosecurity=" + v + b"; b=2"),
        st.sampled_from(
            [
                b".ROBLOSECURITY=",
                b".ROBLOSECURITY=; .ROBLOSECURITY=x",
                b'.ROBLOSECURITY="quoted"',
                b"a=1, .ROBLOSECURITY=x",
            ]
        ),
    ),
)
HEADER = st.one_of(
    CREDENTIAL_HEADER,
    st.tuples(
        st.sampled_from(
            [
                b"X-Forwarded-Host",
                b"X-Forwarded-For",
                b"Forwarded",
                b"X-Original-URL",
                b"X-Rewrite-URL",
                b"X-Request-ID",
                b"Cookie",
                b"Authorization",
                b"x-api-key",
                b"Accept-Language",
                b"Roblox-Place-Id",
                b"If-None-Match",
                b"Range",
                b"Expect",
                b"Upgrade",
                b"Connection",
                b"Proxy-Authorization",
                b"X-Bloxproxy-Key",
                b"Via",
            ]
        ),
        HEADER_VALUE,
    ),
    st.tuples(PRINTABLE.filter(lambda s: ":" not in s and s).map(str.encode), HEADER_VALUE),
)
BODY = st.one_of(
    st.none(),
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"{",
            b"null",
            b'{"a": [1, 2',
            b"\xff\xfe",
            b'{"usernames": ["builderman"]}',
            b"x" * 70_000,
        ]
    ),
)


@st.composite
def requests(draw: st.DrawFn) -> Req:
    method = draw(
        st.sampled_from(
            [
                b"GET",
                b"GET",
                b"GET",
                b"HEAD",
                b"POST",
                b"PUT",
                b"PATCH",
                b"DELETE",
                b"OPTIONS",
                b"TRACE",
                b"PROPFIND",
                b"get",
            ]
        )
    )
    headers = list(draw(st.lists(HEADER, max_size=4)))
    if draw(st.booleans()):
        headers.insert(0, (b"Host", draw(HOSTS)))
    if draw(st.integers(0, 14)) == 0:
        headers.extend((b"X-Many-%d" % i, b"v") for i in range(draw(st.sampled_from([50, 200]))))
    body = draw(BODY) if method not in (b"GET", b"HEAD") or draw(st.booleans()) else None
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    return Req(method, draw(targets()), tuple(headers), body, version)


# -- 1. anything at all, both front doors and host routing --------------------------------------


@settings(HYPOTHESIS, max_examples=400)
@given(req=requests())
async def test_random_requests_never_500_never_leave_the_upstream(world: World, req: Req) -> None:
    await exchange(world, req)


# -- 2. clean routes with their own parameters, fuzzed ------------------------------------------

SHIPPED = rules.load_rules([shipped_rules_dir()]).routes
VALID_ID = st.sampled_from(["1", "156", "7", "1685831367", "4922741943", "1000001"])
PARAM_VALUE = st.one_of(
    VALID_ID,
    VALID_ID,
    st.sampled_from(
        [
            "1",
            "156",
            "0",
            "-1",
            "1.5",
            "9" * 30,
            "abc",
            "builderman",
            "..",
            "%2e%2e",
            "%2f",
            "%00",
            "%FF",
            "%C3%A9",
            "1%2C2",
            "1,2",
            "%20",
            "@",
            "\\",
            "x" * 5000,
            "127.0.0.1:" + F,
            "%2f%2f127.0.0.1:" + F,
            "http:%2f%2f127.0.0.1:" + F,
        ]
    ),
    PERCENT,
    PRINTABLE.map(lambda s: s.replace("/", "").replace("&", "")),
)


ENDPOINTS = [
    (r.endpoint, [p.name for p in r.path_params], [p.name for p in r.query_params]) for r in SHIPPED
] + [("/v1/as-viewer/{user_id}", ["user_id"], [])]


@st.composite
def clean_requests(draw: st.DrawFn) -> Req:
    viewer = ENDPOINTS[-1]
    endpoint, path_names, query_names = draw(st.one_of(st.just(viewer), st.sampled_from(ENDPOINTS)))
    path = endpoint
    for name in path_names:
        path = path.replace("{" + name + "}", draw(PARAM_VALUE))
    names = query_names or ["ids"]
    pairs = draw(st.lists(st.tuples(st.sampled_from(names), PARAM_VALUE), max_size=5))
    if pairs:
        path += "?" + "&".join(f"{k}={v}" for k, v in pairs)
    headers = draw(st.lists(st.one_of(HEADER, CREDENTIAL_HEADER), max_size=3))
    method = draw(st.sampled_from([b"GET", b"GET", b"HEAD", b"POST"]))
    return Req(method, path.encode(), tuple(headers))


@settings(HYPOTHESIS, max_examples=250)
@given(req=clean_requests())
async def test_clean_routes_with_fuzzed_parameters(world: World, req: Req) -> None:
    await exchange(world, req)


# -- 2b. credentials, fuzzed: never a 500, never another caller's answer ----------------------

SECRET_POOL = [b"A", b"B", b"C", b"", b" ", b"\xff\xfe", b"caf\xc3\xa9", b"Bearer A"]
CREDENTIAL_VALUE = st.one_of(
    st.sampled_from(SECRET_POOL), st.sampled_from(SECRET_POOL), HEADER_VALUE
)
POOL_HEADER = st.one_of(
    st.tuples(
        st.sampled_from([b"Cookie", b"cookie"]),
        st.one_of(
            CREDENTIAL_VALUE.map(lambda v: b".ROBLOSECURITY=" + v),
            st.tuples(CREDENTIAL_VALUE, CREDENTIAL_VALUE).map(
                lambda vs: b".ROBLOSECURITY=" + vs[0] + b"; .ROBLOSECURITY=" + vs[1]
            ),
            CREDENTIAL_VALUE.map(lambda v: b"other=1; .ROBLOSECURITY=" + v),
            st.sampled_from([b"other=1", b".roblosecurity=A", b"a=1, .ROBLOSECURITY=B"]),
        ),
    ),
    st.tuples(st.sampled_from([b"Authorization", b"x-api-key", b"X-Api-Key"]), CREDENTIAL_VALUE),
)
# Fresh ids (the fake's synthetic users) so the fuzzed request is the first to fill its key.
FRESH_IDS = itertools.count(1_000_000)


def _repeated(name: bytes, first: bytes, second: bytes) -> tuple[tuple[bytes, bytes], ...]:
    if name.lower() == b"cookie":
        first, second = b".ROBLOSECURITY=" + first, b".ROBLOSECURITY=" + second
    return ((name, first), (name, second))


# One credential header twice, in both orders of empty and not (which one counts differs
# between parsers: the proxy must treat the request as credentialed either way).
EMPTYISH = st.sampled_from([b"", b" "])
REPEATED_CREDENTIAL = st.one_of(
    *(
        st.builds(_repeated, st.sampled_from([b"Cookie", b"Authorization", b"x-api-key"]), a, b)
        for a, b in (
            (CREDENTIAL_VALUE, CREDENTIAL_VALUE),
            (EMPTYISH, CREDENTIAL_VALUE),
            (CREDENTIAL_VALUE, EMPTYISH),
        )
    )
)
CREDENTIAL_TARGETS = [
    b"/v1/as-viewer/%d",
    b"/users/v1/users/%d",
    b"/v1/users/%d",
    b"/users//v1/users/%d",
    b"/v1/users/%d/friends/count",
]


def candidate_tags(wire: bytes) -> set[str]:
    """Every ``_fakeViewer`` the headers of this request (as sent on the wire) could
    produce at the fake: sha256 of any cookie value, key or authorization in them. A tag
    outside this set is someone else's."""
    values = []
    lines = wire.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    for name, _, value in (line.partition(b":") for line in lines):
        name = name.strip()
        if name.lower() == b"cookie":
            for part in value.split(b";"):
                _, _, val = part.partition(b"=")
                values.append(val.strip())
        elif name.lower() in (b"authorization", b"x-api-key"):
            values.append(value.strip())
    # aiohttp's client drops the bytes of a header value that are not UTF-8 when it sends
    # it on, so the fake may see that spelling of our own value.
    spellings = {*values, *(v.decode("utf-8", "ignore").encode() for v in values)}
    return {hashlib.sha256(v).hexdigest()[:16] for v in spellings if v}


@st.composite
def credential_requests(draw: st.DrawFn) -> Req:
    headers = tuple(draw(st.one_of(st.lists(POOL_HEADER, max_size=3), REPEATED_CREDENTIAL)))
    if draw(st.integers(0, 5)) == 0:
        return Req(b"POST", b"/users/v1/users", headers, b'{"userIds": [1, 156]}')
    # "%d" is filled with a fresh id when sent (Hypothesis would reuse a few ids a lot).
    return Req(
        draw(st.sampled_from([b"GET", b"GET", b"HEAD"])),
        draw(st.sampled_from(CREDENTIAL_TARGETS)),
        headers,
    )


def viewer_of(answer: Raw) -> str | None:
    body = orjson.loads(answer.body) if answer.body[:1] == b"{" else {}
    tag = body.get("_fakeViewer", body.get("_fake_viewer"))
    return tag if isinstance(tag, str) else None


@settings(HYPOTHESIS, max_examples=300)
@given(req=credential_requests())
# Regressions, always run: each of these was answered from (and stored into) the shared
# cache before Credential.of looked at every occurrence of every credential header.
@example(
    req=Req(b"GET", b"/users/v1/users/%d", ((b"Cookie", b"a=1"), (b"Cookie", b".ROBLOSECURITY=S1")))
)
@example(
    req=Req(b"GET", b"/users/v1/users/%d", ((b"Cookie", b".ROBLOSECURITY=S2; .ROBLOSECURITY="),))
)
@example(
    req=Req(
        b"GET", b"/users/v1/users/%d", ((b"Authorization", b""), (b"Authorization", b"Bearer S3"))
    )
)
@example(req=Req(b"GET", b"/users/v1/users/%d", ((b"x-api-key", b""), (b"x-api-key", b"S4"))))
@example(req=Req(b"GET", b"/v1/as-viewer/%d", ((b"Cookie", b".ROBLOSECURITY=\xff\xfe"),)))
async def test_fuzzed_credentials_never_get_another_callers_answer(world: World, req: Req) -> None:
    """Whatever credential headers a request carries (repeated, empty, mixed case, not UTF-8),
    its answer carries at most its own identity, and the next callers of the same URL (an
    anonymous one, another key) never get it."""
    req = dataclasses.replace(req, target=req.target.replace(b"%d", b"%d" % next(FRESH_IDS)))
    answer = await exchange(world, req)
    same_user(req, answer)
    tag = viewer_of(answer)
    if tag is not None:
        assert tag in candidate_tags(req.render(world.forbidden.port)), (req, tag)
    body = req.body if req.method == b"POST" else None
    get = b"POST" if req.method == b"POST" else b"GET"
    anonymous = await exchange(world, Req(get, req.target, (), body))
    assert viewer_of(anonymous) is None, (req, anonymous.header("x-cache"))
    same_user(req, anonymous)
    other = await exchange(world, Req(get, req.target, ((b"x-api-key", b"OTHER"),), body))
    assert viewer_of(other) in (None, hashlib.sha256(b"OTHER").hexdigest()[:16]), req
    same_user(req, other)


def same_user(req: Req, answer: Raw) -> None:
    """A 200 for ``.../users/{id}`` is about that user: no other key's answer came back."""
    match = re.fullmatch(rb".*/users/(\d+)", req.target)
    if match and answer.status == 200 and req.method != b"HEAD":
        assert orjson.loads(answer.body)["id"] == int(match.group(1)), (req, answer.body[:100])


# -- 3. explicit attempts to reach the forbidden listener ---------------------------------------

ESCAPES = [
    b"/users/http://127.0.0.1:<F>/x",
    b"/users/http:%2F%2F127.0.0.1:<F>/x",
    b"/users@127.0.0.1:<F>/",
    b"/users%40127.0.0.1:<F>/v1/users/1",
    b"//127.0.0.1:<F>",
    b"//127.0.0.1:<F>/users/v1/users/1",
    b"/%2F%2F127.0.0.1:<F>/x",
    b"/users/%2F%2F127.0.0.1:<F>/x",
    b"/users/..%2F..%2F127.0.0.1:<F>",
    b"/users/%2e%2e/%2e%2e/127.0.0.1:<F>",
    b"/users\\@127.0.0.1:<F>/",
    b"/users/v1/users/1?url=http://127.0.0.1:<F>/",
    b"/users/v1/users/1#@127.0.0.1:<F>",
    b"/users:<F>/v1/users/1",
    b"http://127.0.0.1:<F>/users/v1/users/1",
    b"http://user:pass@127.0.0.1:<F>/users/v1/users/1",
    b"/v1/users/by-username/http:%2F%2F127.0.0.1:<F>",
    b"/v1/users/1@127.0.0.1:<F>",
]


@pytest.mark.parametrize(
    "host",
    [
        None,
        b"127.0.0.1:<F>",
        b"users." + SUFFIX.encode() + b":<F>",
        b"users." + SUFFIX.encode() + b"@127.0.0.1:<F>",
    ],
)
async def test_crafted_escapes_never_reach_the_forbidden_listener(
    world: World, host: bytes | None
) -> None:
    for target in ESCAPES:
        for method in (b"GET", b"POST"):
            headers = ((b"Host", host),) if host is not None else ()
            await exchange(
                world, Req(method, target, headers, b"{}" if method == b"POST" else None)
            )
    assert world.forbidden.accepts == 0


async def test_forbidden_listener_does_count(world: World) -> None:
    """The zero above means something: the listener sees a connection when one is made."""
    _, writer = await asyncio.open_connection("127.0.0.1", world.forbidden.port)
    writer.close()
    await writer.wait_closed()
    for _ in range(100):
        if world.forbidden.accepts:
            break
        await asyncio.sleep(0.01)
    assert world.forbidden.accepts == 1


async def test_fake_upstream_redirect_to_the_forbidden_listener_is_not_followed(
    world: World,
) -> None:
    location = f"http://127.0.0.1:{world.forbidden.port}/stolen"
    for code in (301, 302, 303, 307, 308):
        world.fake.script("users", "/v1/users/7", [Fault(status=code, redirect_to=location)])
        answer = await exchange(world, Req(b"GET", b"/users/v1/users/7?c=%d" % code, ()))
        assert answer.status == code  # passthrough: the redirect comes back, unfollowed
    assert world.forbidden.accepts == 0


async def test_non_utf8_cookie_on_a_mutation_is_not_a_500(world: World) -> None:
    """Regression: the CSRF token store hashed the cookie as strict UTF-8 (guard.py)."""
    req = Req(b"POST", b"/users/v1/users", ((b"Cookie", b".ROBLOSECURITY=\xff\xfe"),), b"{}")
    await exchange(world, req)


# -- 4. malformed HTTP: refused by the parser, still answered as a problem -----------------------

PROTOCOL_BAD = [
    b"GET /users/v1/users/1 HTTP/1.1\r\nCookie: .ROBLOSECURITY=PARSER-SECRET\nb\r\n\r\n",
    b"GET /users/v1/users/1 HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
    b"GET /users/v1/users/1 HTTP/1.1\r\nCookie: .ROBLOSECURITY=PARSER-SECRET\x00\r\n\r\n",
    b"GET /users/v1/users/1 HTTP/1.1\r\nX-A: " + b"a" * (MAX_LINE + 10) + b"\r\n\r\n",
    b"GET /users/v1/users/1?" + b"a=1&" * (MAX_LINE // 4) + b" HTTP/1.1\r\n\r\n",
    b"GET /users/v1/\xff\xfe HTTP/1.1\r\n\r\n",
    b"GET /users/v1/a b HTTP/1.1\r\n\r\n",
    b"GET /x HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n",
    b"POST /users/v1/users HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /x HTTP/1.1\r\nX-A: a\r\n folded\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS on the HTTP port
]


async def test_malformed_http_is_a_problem_400_that_never_reaches_upstream(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """What aiohttp's HTTP parser refuses never reaches a middleware; ``serve``'s runner
    answers it as problem+json anyway (a generated request id, no echo of the bytes — a
    cookie on the bad line stays out of the answer and out of the logs), and Roblox sees
    nothing."""
    caplog.set_level(logging.DEBUG)
    for data in PROTOCOL_BAD:
        answer = await send_raw(world.port, data)
        assert answer.status == 400, data[:80]
        assert answer.header("content-type") == PROBLEM, (data[:80], answer.headers)
        problem = orjson.loads(answer.body)
        assert problem["status"] == 400 and problem["request_id"] == answer.header("x-request-id")
        assert b"PARSER-SECRET" not in answer.body
    assert "PARSER-SECRET" not in caplog.text
    assert world.fake.total == 0
    assert world.forbidden.accepts == 0


async def test_unknown_expect_is_a_problem_too(world: World) -> None:
    """aiohttp's Application answers ``Expect: <not 100-continue>`` itself, before any handler;
    the proxy's expect handler makes that a 417 problem+json like every other error."""
    answer = await send_raw(
        world.port, Req(b"GET", b"/v1/users/1", ((b"Expect", b"1"),)).render(world.forbidden.port)
    )
    assert answer.status == 417
    assert answer.header("content-type") == PROBLEM
    assert answer.header("x-request-id") is not None
    assert world.fake.total == 0


# -- 5. rule and config fuzzing ------------------------------------------------------------------

# Any text a file may hold (surrogates cannot be written as UTF-8), control characters
# included: they must be file:line errors too.
YAML_CHARS = st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from("\t\n"))


def yaml_text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(YAML_CHARS, max_size=max_size)


SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**7),
    st.floats(allow_nan=True),
    yaml_text(12),
    st.sampled_from(
        [
            "30s",
            "1m",
            "0s",
            "-1s",
            "10x",
            "1e3s",
            "GET",
            "POST",
            "DELETE",
            "users",
            "nosuch",
            "/v1/x/{id}",
            "/v1/users/{user_id}",
            "{id}",
            "{user_id}",
            "int",
            "string",
            "int_list",
            "string_list",
            "bool",
            "enum",
            "data[0]",
            "data",
            "not_found",
            "per_credential",
            "forward",
            "bypass",
            "none",
            "snake",
            "camel",
            "keep",
            "csv",
            "repeat",
            "[",
            "{",
            "${NOPE}",
            "${HOME:-x}",
            "1MiB",
            "0",
            "-5",
            "true",
            "ids",
            "[a-z]+",
            "(",
            "users.get",
        ]
    ),
)
NESTED: dict[str, tuple[str, ...]] = {
    "backend": rule_fields.BACKEND.names,
    "response": rule_fields.RESPONSE.names,
    "pagination": rule_fields.PAGINATION.names,
    "cache": rule_fields.CACHE.names,
    "limits": rule_fields.LIMITS.names,
}


def _value_for(key: str, depth: int) -> st.SearchStrategy[Any]:
    leaf = st.one_of(SCALAR, st.lists(SCALAR, max_size=3))
    if depth > 3:
        return leaf
    if key in ("params", "query"):
        param = st.dictionaries(st.sampled_from(rule_fields.PARAM.names), SCALAR, max_size=4)
        names = st.sampled_from(["user_id", "id", "ids", "limit", "x", "Bad-Name", ""])
        return st.one_of(leaf, st.dictionaries(names, st.one_of(param, SCALAR), max_size=3))
    if key == "when":
        item = st.dictionaries(st.sampled_from(rule_fields.WHEN.names), SCALAR, max_size=4)
        return st.one_of(leaf, st.lists(item, max_size=2))
    if key in NESTED:
        return st.one_of(leaf, _mapping(NESTED[key], depth + 1))
    return leaf


def _mapping(keys: tuple[str, ...], depth: int) -> st.SearchStrategy[dict[str, Any]]:
    names = st.one_of(st.sampled_from(keys), st.sampled_from(["_comment", "unknown", "id "]))
    return st.lists(names, max_size=6, unique=True).flatmap(
        lambda ks: st.fixed_dictionaries({k: _value_for(k, depth) for k in ks})
    )


GOOD_ROUTE: dict[str, Any] = {
    "id": "fuzz.get",
    "endpoint": "/v1/fuzz/{user_id}",
    "summary": "fuzzed",
    "params": {"user_id": {"type": "int", "min": 1}},
    "query": {"limit": {"type": "int", "enum": [10, 25], "default": 10}},
    "backend": {"path": "/v1/users/{user_id}", "query": {"limit": "{limit}"}},
    "response": {"case": "snake", "deny": ["description"]},
    "cache": {"ttl": "1m", "stale_if_error": "1h"},
}
# Values that keep a route valid (mostly): mutations draw from these half the time, so a
# good share of the generated files pass `check` and are then served.
VALID: dict[str, list[Any]] = {
    "ttl": ["0s", "5s", "1h"],
    "stale_if_error": ["0s", "10m"],
    "not_found_ttl": ["0s", "1m"],
    "stale_while_revalidate": ["0s", "30s"],
    "credentials": ["bypass", "per_credential", "forward", "none"],
    "method": ["GET", "POST"],
    "path": ["/v1/users/{user_id}", "/v1/users/{user_id}/x"],
    "endpoint": ["/v1/fuzz/{user_id}", "/v1/fuzz/{user_id}/more", "/v2/fuzz/{user_id}"],
    "type": ["int", "string"],
    "min": [0, 1, 5],
    "max": [10, 10**6],
    "id": ["fuzz.x"],
    "safe_read": [True, False],
    "case": ["snake", "camel", "keep"],
    "pick": ["data", "id"],
    "empty": ["not_found"],
    "enabled": [True, False],
    "summary": ["x"],
    "default": [10, 25],
    "enum": [[10, 25], [10]],
    "deny": [["id"], []],
    "allow": [["id", "name"]],
    "rename": [{"name": "username"}],
    "require": [["id"]],
    "status_map": [{400: 404}],
    "headers": [{"Accept": "application/json"}],
    "forward_headers": [["accept-language"]],
    "service": ["users", "games"],
    "limits": [{"bucket": "users"}],
    "tags": [["x"]],
    "query": [{"limit": "{limit}"}, {}],
    "deprecated": [True],
    "example": [{"id": 1}],
}


def _mutation(key: str) -> st.SearchStrategy[Any]:
    valid = VALID.get(key)
    random = _value_for(key, 2)
    return st.one_of(st.sampled_from(valid), random) if valid else random


@st.composite
def mutated_good_route(draw: st.DrawFn) -> dict[str, Any]:
    """A valid route with up to three values replaced, removed or added: often still valid."""
    route = orjson.loads(orjson.dumps(GOOD_ROUTE))
    for _ in range(draw(st.integers(0, 3))):
        node = route
        key = draw(st.sampled_from(sorted(node)))
        while isinstance(node.get(key), dict) and node[key] and draw(st.booleans()):
            node = node[key]
            key = draw(st.sampled_from(sorted(node)))
        op = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        if op == "remove":
            node.pop(key, None)
        elif op == "add" and isinstance(node, dict):
            keys = (
                NESTED.get(key, rule_fields.ROUTE.names)
                if isinstance(node.get(key), dict)
                else (rule_fields.ROUTE.names)
            )
            new = draw(st.sampled_from(keys))
            target = node[key] if isinstance(node.get(key), dict) else node
            target[new] = draw(_mutation(new))
        else:
            node[key] = draw(_mutation(key))
    return route


@st.composite
def rule_documents(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["structured", "mutated", "mutated", "garbage", "spliced"]))
    if kind == "garbage":
        return draw(yaml_text(200))
    if kind == "structured":
        doc: Any = draw(_mapping(rule_fields.FILE.names, 0))
        if "routes" in doc and draw(st.booleans()):
            doc["routes"] = draw(st.lists(_mapping(rule_fields.ROUTE.names, 1), max_size=3))
    else:
        doc = {"service": "users", "routes": [draw(mutated_good_route())]}
    text = yaml.safe_dump(doc, sort_keys=False)
    if kind == "spliced":
        lines = text.splitlines()
        at = draw(st.integers(0, len(lines)))
        lines.insert(
            at,
            draw(
                st.sampled_from(
                    [
                        "  - [",
                        "\t",
                        "key: : :",
                        "&a [*a]",
                        "  ? x",
                        "!!python/object:os.system x",
                        "%TAG",
                        "---",
                        "- {",
                        "\x00",
                        "\x08key: 1",
                        "  endpoint: /v1/users/{user_id}",
                    ]
                )
            ),
        )
        text = "\n".join(lines)
    return text


def config_sections(cls: type = Config) -> dict[str, Any]:
    """The config's key tree: section name -> subtree, or key name -> None."""
    out: dict[str, Any] = {}
    for name, f in config_mod._fields(cls).items():
        sub = f.metadata.get("section")
        out[name] = config_sections(sub) if sub is not None else None
    return out


CONFIG_TREE = config_sections()


def _config_value(tree: dict[str, Any] | None, depth: int) -> st.SearchStrategy[Any]:
    leaf = st.one_of(
        SCALAR,
        st.lists(SCALAR, max_size=3),
        st.dictionaries(st.sampled_from(["users", "games", "x", "Bad"]), SCALAR, max_size=2),
    )
    if tree is None or depth > 3:
        return leaf
    names = st.one_of(st.sampled_from(sorted(tree)), st.just("unknown"))
    sub = st.lists(names, max_size=5, unique=True).flatmap(
        lambda ks: st.fixed_dictionaries({k: _config_value(tree.get(k), depth + 1) for k in ks})
    )
    return st.one_of(leaf, sub) if depth else sub


@st.composite
def config_documents(draw: st.DrawFn) -> tuple[dict[str, Any] | str, dict[str, str]]:
    env_names = sorted(config_mod._env_paths())
    env = draw(
        st.dictionaries(
            st.sampled_from([*env_names, "BLOXPROXY_SERVER_NOPE"]),
            st.one_of(
                PRINTABLE, st.sampled_from(["", "[", "{a: 1}", "-1", "true", "1s", "[users]"])
            ),
            max_size=2,
        )
    )
    if draw(st.integers(0, 5)) == 0:
        return draw(yaml_text(120)), env
    doc = draw(_config_value(CONFIG_TREE, 0))
    doc.setdefault("rules", {"paths": ["rules"], "shipped": False})  # the small rule set
    return doc, env


LINE_RE = r"^(?:{files}):\d+: \S.*$|^\$BLOXPROXY_[A-Z0-9_]+: \S.*$|^\d+ problem\(s\) found$"


def run_check(config_path: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["check", "--config", str(config_path)])
    return code, err.getvalue()


def assert_file_line_messages(stderr: str, *files: Path) -> None:
    pattern = re.compile(LINE_RE.format(files="|".join(re.escape(str(f)) for f in files)))
    lines = stderr.splitlines()
    assert lines and lines[-1].endswith("problem(s) found"), stderr
    for line in lines:
        assert pattern.match(line), f"not a file:line message: {line!r}\n{stderr}"


@pytest.fixture
def fuzz_dir(tmp_path: Path) -> Path:
    (tmp_path / "rules").mkdir()
    return tmp_path


def write_config(base: Path, upstream: str, extra: dict[str, Any] | None = None) -> Path:
    config = {
        # Only the generated file: the nine shipped rule files cost ~0.4 s per example to parse.
        "rules": {"paths": ["rules"], "shipped": False},
        "upstream": {"base_url": upstream},
        "retries": {"attempts": 1},
        **(extra or {}),
    }
    path = base / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@settings(HYPOTHESIS, max_examples=200)
@given(doc=rule_documents())
async def test_generated_rule_files_are_accepted_or_rejected_with_file_line(
    fuzz_dir: Path, fake_server: TestServer, doc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("BLOXPROXY_")]:
        monkeypatch.delenv(name)
    rule_file = fuzz_dir / "rules" / "fuzz.yaml"
    rule_file.write_text(doc, encoding="utf-8")
    config_path = write_config(fuzz_dir, f"http://127.0.0.1:{fake_server.port}/{{service}}")
    code, stderr = run_check(config_path)
    assert code in (0, 1)
    try:
        config, ruleset = load_all(str(config_path))
    except ConfigError as exc:
        event("rule file rejected")
        assert code == 1, "check accepted what serve's loader rejects"
        assert exc.problems
        assert_file_line_messages(stderr, config_path, rule_file)
        return
    assert code == 0, stderr
    event("rule file accepted and served")
    # What check accepts, serve serves: the app builds and answers each route without a 500.
    await serve_each_route(config, ruleset)


async def serve_each_route(config: Config, ruleset: rules.RuleSet) -> None:
    async with (
        TestServer(create_app(config, rules=ruleset)) as server,
        TestClient(server) as client,
    ):
        for route in ruleset.routes:
            path = route.endpoint
            for p in route.path_params:
                path = path.replace("{" + p.name + "}", "1")
            async with client.request(route.method, path, allow_redirects=False) as resp:
                body = await resp.read()
                assert resp.status != 500, (route.endpoint, body)
                if resp.status >= 400 and "X-Cache" not in resp.headers:
                    assert resp.headers["Content-Type"] == PROBLEM, body


@settings(HYPOTHESIS, max_examples=150)
@given(case=config_documents())
def test_generated_configs_are_accepted_or_rejected_with_file_line(
    fuzz_dir: Path,
    case: tuple[dict[str, Any] | str, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doc, env = case
    for name in [n for n in os.environ if n.startswith("BLOXPROXY_")]:
        monkeypatch.delenv(name)
    (fuzz_dir / "rules" / "ok.yaml").write_text(
        yaml.safe_dump({"service": "users", "routes": [GOOD_ROUTE]})
    )
    config_path = fuzz_dir / "config.yaml"
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
    config_path.write_text(text, encoding="utf-8")
    with monkeypatch.context() as m:
        for name, value in env.items():
            m.setenv(name, value)
        code, stderr = run_check(config_path)
        try:
            load_all(str(config_path))
        except ConfigError:
            accepted = False
        else:
            accepted = True
    assert code in (0, 1)
    assert accepted == (code == 0), stderr
    event("config accepted" if accepted else "config rejected")
    if code == 1:
        # A config that moves `rules.paths` elsewhere can make any file the rules file.
        files = [config_path, *(fuzz_dir.rglob("*")), *_rule_paths_named(doc, fuzz_dir)]
        assert_file_line_messages(stderr, *files)


def _rule_paths_named(doc: object, base: Path) -> list[Path]:
    if isinstance(doc, str):  # a YAML text: the paths it names, when it parses
        try:
            doc = yaml.safe_load(doc)
        except yaml.YAMLError:
            doc = None
    rules_section = doc.get("rules") if isinstance(doc, dict) else None
    paths = rules_section.get("paths") if isinstance(rules_section, dict) else None
    if isinstance(paths, str):  # "a, b" is two paths (schema.string_list), the whole text one
        paths = [paths, *(part.strip() for part in paths.split(",") if part.strip())]
    out: list[Path] = []
    for p in paths if isinstance(paths, list) else []:
        with contextlib.suppress(TypeError, ValueError, OSError):
            out.append(base / str(p))
    return out


def test_check_output_pattern_does_reject_non_file_line_output(fuzz_dir: Path) -> None:
    """The fuzz assertions can fail: a message without a line is caught."""
    with pytest.raises(AssertionError, match="not a file:line message"):
        assert_file_line_messages("config.yaml: oops\n1 problem(s) found", fuzz_dir / "x")


@pytest.mark.parametrize("where", ["rules", "config"])
def test_control_character_in_a_file_is_a_file_line_error(fuzz_dir: Path, where: str) -> None:
    """Regression: PyYAML's reader refused it before the loader's error handling, and
    `check` crashed with a traceback (yamlsrc.py)."""
    rule_file = fuzz_dir / "rules" / "bad.yaml"
    rule_file.write_text(yaml.safe_dump({"service": "users", "routes": [GOOD_ROUTE]}))
    config_path = write_config(fuzz_dir, "http://127.0.0.1:9/{service}")
    target = rule_file if where == "rules" else config_path
    target.write_text("\x08" + target.read_text())
    code, stderr = run_check(config_path)
    assert code == 1
    assert_file_line_messages(stderr, config_path, rule_file)
