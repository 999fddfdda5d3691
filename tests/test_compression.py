"""Compressed answers (server.compression): the negotiation as a table, then a real client
against the real proxy and the fake — gzip and br decode to the identity body, a cached
answer is compressed once per encoding (the fast path included), q=0 is respected, ETags
differ per encoding, and hostile Accept-Encoding values still get a sane answer."""

from __future__ import annotations

import gzip

import brotli
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bloxproxy.appkeys import FRONT
from bloxproxy.cache import decide
from bloxproxy.config import CompressionConfig
from bloxproxy.encoding import Compression, compressible, negotiate
from bloxproxy.fake import FakeRoblox
from bloxproxy.front import Front

from .conftest import ProxyFactory, fetcher_of

Client = TestClient[web.Request, web.Application]

USER = "/v1/users/156"
USER_PT = "/users/v1/users/156"
ON = {"BLOXPROXY_SERVER_COMPRESSION_ENABLED": "true", "BLOXPROXY_SERVER_COMPRESSION_MIN_SIZE": "64"}
BOTH = ("br", "gzip")

NEGOTIATIONS = [
    (None, ""),
    ("", ""),
    ("gzip", "gzip"),
    ("br", "br"),
    ("gzip, deflate, br", "br"),  # equal weights: ours first
    ("gzip, br;q=0.5", "gzip"),
    ("br;q=0, gzip", "gzip"),
    ("br;q=0, gzip;q=0", ""),
    ("gzip;q=0", ""),
    ("*", "br"),
    ("*;q=0", ""),
    ("*, br;q=0", "gzip"),
    ("x-gzip", "gzip"),
    ("GZIP;Q=0.8", "gzip"),
    ("identity", ""),
    ("deflate, compress", ""),
    ("br;q=2, gzip", "gzip"),  # q out of range: as if br were not there
    ("br;q=abc, gzip;q=0.1", "gzip"),
    ("br;q=, gzip", "gzip"),
    ("br;q=0.0000001, gzip;q=0.5", "gzip"),  # too many digits: unreadable
    (";;;,,,;q=1", ""),
    ("\x7f\x00garbage", ""),
    (",".join(["deflate"] * 5000) + ", gzip", ""),  # only the first members are read
    ("gzip;level=9;q=0.9", "gzip"),
]


@pytest.mark.parametrize(("accept", "want"), NEGOTIATIONS)
def test_negotiate(accept: str | None, want: str) -> None:
    assert negotiate(accept, BOTH) == want


def test_negotiate_only_offers_what_is_configured() -> None:
    assert negotiate("br", ("gzip",)) == ""
    assert negotiate("br, gzip", ("gzip", "br")) == "gzip"
    assert negotiate("gzip", ()) == ""


def test_the_memo_stays_bounded() -> None:
    comp = Compression(CompressionConfig(enabled=True))
    for i in range(2000):
        assert comp.choose(f"gzip;q=0.{i % 9 + 1}, x-{i}") == "gzip"
    assert comp.choose("b" * 1000 + ", br") == "br"
    assert len(comp._memo) <= 256


@pytest.mark.parametrize(
    ("content_type", "want"),
    [
        ("application/json; charset=utf-8", True),
        ("application/problem+json", True),
        ("text/html", True),
        ("image/svg+xml", True),
        ("image/png", False),
        ("application/zip", False),
        ("application/octet-stream", False),
        (None, False),
        ("", False),
    ],
)
def test_compressible(content_type: str | None, want: bool) -> None:
    assert compressible(content_type) is want


@pytest.mark.parametrize(
    ("etag", "coding", "want"),
    [
        ('"ab12"', "gzip", '"ab12-gzip"'),
        ('W/"ab12"', "br", 'W/"ab12-br"'),
        ('"ab12"', "", '"ab12"'),
        ("", "br", ""),
    ],
)
def test_encoded_etag(etag: str, coding: str, want: str) -> None:
    assert decide.encoded_etag(etag, coding) == want


def test_eligible() -> None:
    comp = Compression(CompressionConfig(enabled=True, min_size=10))
    big = b"x" * 10
    assert comp.eligible(200, big, "application/json")
    assert comp.eligible(404, big, "application/problem+json")
    assert not comp.eligible(200, b"x" * 9, "application/json")
    assert not comp.eligible(204, big, "application/json")
    assert not comp.eligible(304, big, "application/json")
    assert not comp.eligible(200, big, "image/png")


# -- through the proxy ----------------------------------------------------------------------


def front_of(client: Client) -> Front:
    return client.server.app[FRONT]


async def raw(
    client: Client, path: str, method: str = "GET", **headers: str
) -> tuple[int, dict[str, str], bytes, list[str]]:
    skip = () if "Accept-Encoding" in headers else ("Accept-Encoding",)  # aiohttp adds one
    async with client.request(
        method, path, headers=headers, auto_decompress=False, skip_auto_headers=skip
    ) as resp:
        got = {k.lower(): v for k, v in resp.headers.items()}
        return resp.status, got, await resp.read(), resp.headers.getall("Vary", [])


def decoded(coding: str, body: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "br":
        out: bytes = brotli.decompress(body)
        return out
    return body


@pytest.mark.parametrize("path", [USER, USER_PT])
async def test_each_encoding_decodes_to_the_identity_body(
    make_proxy: ProxyFactory, fake: FakeRoblox, path: str
) -> None:
    proxy = await make_proxy(**ON)
    status, plain, identity, vary = await raw(proxy, path, **{"Accept-Encoding": "identity"})
    assert status == 200
    assert "content-encoding" not in plain
    assert vary == ["Accept-Encoding"]
    assert len(identity) >= 64
    for coding in ("gzip", "br"):
        status, headers, body, vary = await raw(proxy, path, **{"Accept-Encoding": coding})
        assert status == 200
        assert headers["content-encoding"] == coding
        assert vary == ["Accept-Encoding"]
        assert headers["content-length"] == str(len(body))
        assert body != identity
        assert decoded(coding, body) == identity
        assert headers["etag"] == decide.encoded_etag(plain["etag"], coding)
        assert headers["x-cache"] == "HIT"
    assert fake.total == 1


@pytest.mark.parametrize("path", [USER, USER_PT])
async def test_a_cached_answer_is_compressed_once_per_encoding(
    make_proxy: ProxyFactory, fake: FakeRoblox, path: str
) -> None:
    proxy = await make_proxy(**ON)
    front = front_of(proxy)
    bodies = {}
    for _ in range(6):  # a miss, hits from the pipeline, hits from the fast path
        for coding in ("gzip", "br"):
            _, headers, body, _ = await raw(proxy, path, **{"Accept-Encoding": coding})
            assert headers["content-encoding"] == coding
            assert bodies.setdefault(coding, body) == body
    assert front.compressions == 2
    assert front.fast_answers >= 8  # most of them were fast-path hits
    front.forget_all()  # the pipeline answers again: from the memo beside the entry
    for coding in ("gzip", "br"):
        await raw(proxy, path, **{"Accept-Encoding": coding})
    assert front.compressions == 2
    async with proxy.get("/_bloxproxy/metrics") as resp:
        text = await resp.text()
    assert 'bloxproxy_compressions_total{encoding="gzip"} 1.0' in text
    assert 'bloxproxy_compressions_total{encoding="br"} 1.0' in text
    assert fake.total == 1


async def test_a_purge_drops_the_compressed_bodies(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**ON)
    front = front_of(proxy)
    await raw(proxy, USER, **{"Accept-Encoding": "gzip"})
    await fetcher_of(proxy).purge_all()
    _, headers, body, _ = await raw(proxy, USER, **{"Accept-Encoding": "gzip"})
    assert headers["x-cache"] == "MISS"
    assert gzip.decompress(body)
    assert front.compressions == 2
    assert fake.total == 2


async def test_q0_and_no_header_get_identity(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(**ON)
    for headers in ({"Accept-Encoding": "gzip;q=0, br;q=0"}, {"Accept-Encoding": "*;q=0"}, {}):
        status, got, body, vary = await raw(proxy, USER, **headers)
        assert status == 200
        assert "content-encoding" not in got
        assert orjson.loads(body)["id"] == 156
        assert vary == ["Accept-Encoding"]
    assert front_of(proxy).compressions == 0


async def test_conditional_requests_match_per_encoding(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(**ON)
    _, gz, _, _ = await raw(proxy, USER, **{"Accept-Encoding": "gzip"})
    _, plain, _, _ = await raw(proxy, USER, **{"Accept-Encoding": "identity"})
    assert gz["etag"] != plain["etag"]
    status, got, body, vary = await raw(
        proxy, USER, **{"Accept-Encoding": "gzip", "If-None-Match": gz["etag"]}
    )
    assert (status, body) == (304, b"")
    assert got["etag"] == gz["etag"]
    assert "content-encoding" not in got
    assert vary == ["Accept-Encoding"]
    # The identity validator does not stand for the gzip bytes.
    status, got, body, _ = await raw(
        proxy, USER, **{"Accept-Encoding": "gzip", "If-None-Match": plain["etag"]}
    )
    assert status == 200
    assert got["content-encoding"] == "gzip"


async def test_head_and_small_answers_are_never_compressed(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(**ON)
    status, got, body, vary = await raw(proxy, USER, "HEAD", **{"Accept-Encoding": "gzip"})
    assert body == b""
    assert status == 200
    assert "content-encoding" not in got
    assert vary == ["Accept-Encoding"]
    small = await make_proxy(BLOXPROXY_SERVER_COMPRESSION_ENABLED="true")  # min_size 1KiB
    status, got, _, vary = await raw(small, USER, **{"Accept-Encoding": "gzip"})
    assert status == 200
    assert "content-encoding" not in got
    assert vary == []  # the same answer whatever the request accepts
    assert front_of(small).compressions == 0


async def test_off_by_default(proxy: Client) -> None:
    status, got, _, vary = await raw(proxy, USER, **{"Accept-Encoding": "gzip, br"})
    assert status == 200
    assert "content-encoding" not in got
    assert vary == []


async def test_problems_and_misses_of_uncached_answers_are_compressed_per_request(
    make_proxy: ProxyFactory,
) -> None:
    proxy = await make_proxy(**ON, BLOXPROXY_CACHE_ENABLED="false")
    for _ in range(2):
        _, got, body, _ = await raw(proxy, USER, **{"Accept-Encoding": "gzip"})
        assert got["x-cache"] == "BYPASS"
        assert orjson.loads(gzip.decompress(body))["id"] == 156
        assert "etag" not in got
    assert front_of(proxy).compressions == 2


@pytest.mark.parametrize(
    "accept",
    [
        "x" * 7000,
        ",".join(["gzip;q=0"] * 800) + ", br",
        "gzip;q=0.5;q=0.5;q=;;;=,,",
        "br;q=NaN, gzip;q=inf",
        "é, ü;q=1",
    ],
)
async def test_hostile_accept_encoding_gets_a_sane_answer(
    make_proxy: ProxyFactory, accept: str
) -> None:
    proxy = await make_proxy(**ON)
    status, got, body, _ = await raw(proxy, USER, **{"Accept-Encoding": accept})
    assert status == 200
    coding = got.get("content-encoding", "")
    assert orjson.loads(decoded(coding, body))["id"] == 156


async def test_with_redis_and_no_l1_compressed_answers_are_made_per_request(
    make_proxy: ProxyFactory, redis_url: str
) -> None:
    proxy = await make_proxy(
        **ON, BLOXPROXY_CACHE_REDIS_URL=redis_url, BLOXPROXY_CACHE_MAX_ENTRIES="0"
    )
    front = front_of(proxy)
    for _ in range(3):
        _, got, body, vary = await raw(proxy, USER, **{"Accept-Encoding": "br"})
        assert got["content-encoding"] == "br"
        assert orjson.loads(brotli.decompress(body))["id"] == 156
    assert front.compressions == 3  # no L1 to keep them in (README, Browser clients)
    for _ in range(3):
        _, got, body, vary = await raw(proxy, USER, **{"Accept-Encoding": "identity"})
        assert "content-encoding" not in got
        assert vary == ["Accept-Encoding"]
    assert front.fast_answers >= 1  # identity hits still come from Redis on the fast path


async def test_the_fast_answer_is_the_pipeline_answer_with_cors_too(
    make_proxy: ProxyFactory,
) -> None:
    proxy = await make_proxy(
        **ON,
        BLOXPROXY_SERVER_CORS_ENABLED="true",
        BLOXPROXY_SERVER_CORS_ORIGINS="https://dash.example.com",
    )
    front = front_of(proxy)
    asks = {"Accept-Encoding": "br", "Origin": "https://dash.example.com", "X-Request-ID": "same"}
    await raw(proxy, USER, **asks)  # the miss
    front.forget_all()
    _, slow, slow_body, slow_vary = await raw(proxy, USER, **asks)
    assert front.fast_answers == 0
    _, fast, fast_body, fast_vary = await raw(proxy, USER, **asks)
    assert front.fast_answers == 1
    assert fast_body == slow_body
    assert sorted(fast_vary) == sorted(slow_vary) == ["Accept-Encoding", "Origin"]
    for name in ("server-timing", "date"):
        slow.pop(name), fast.pop(name)
    assert fast == slow
    assert fast["content-encoding"] == "br"
    assert fast["access-control-allow-origin"] == "https://dash.example.com"
