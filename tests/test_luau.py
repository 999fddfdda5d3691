"""The Luau envelope: an answer as a 200 whose JSON body holds its status, headers and body."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from bloxproxy.luau import envelope


def wrapped(resp: web.Response) -> tuple[web.Response, dict[str, Any]]:
    out = envelope(resp)
    assert isinstance(out.body, bytes)
    return out, orjson.loads(out.body)


def test_a_json_answer() -> None:
    resp = web.Response(status=200, body=b'{"id":156,"name":"builderman"}')
    resp.headers["Content-Type"] = "application/json; charset=utf-8"
    resp.headers["X-Cache"] = "HIT"
    resp.headers["X-Request-ID"] = "rid-1"
    resp.headers["Server-Timing"] = "total;dur=0.1"
    out, doc = wrapped(resp)
    assert doc == {
        "ok": True,
        "status": 200,
        "headers": {
            "content-type": "application/json; charset=utf-8",
            "x-cache": "HIT",
            "x-request-id": "rid-1",
            "server-timing": "total;dur=0.1",
        },
        "body": {"id": 156, "name": "builderman"},
    }
    assert out.status == 200
    assert out.content_type == "application/json"
    assert out.headers["Cache-Control"] == "no-store"
    assert (out.headers["X-Request-ID"], out.headers["Server-Timing"]) == ("rid-1", "total;dur=0.1")
    assert "X-Cache" not in out.headers and "ETag" not in out.headers


@pytest.mark.parametrize(
    ("status", "ok"),
    [(200, True), (204, True), (299, True), (304, False), (404, False), (503, False)],
)
def test_ok_is_a_2xx_status(status: int, ok: bool) -> None:
    _, doc = wrapped(web.Response(status=status))
    assert (doc["ok"], doc["status"], doc["body"]) == (ok, status, None)


def test_a_problem() -> None:
    problem = {"type": "about:blank", "status": 404, "code": "upstream_error"}
    resp = web.Response(status=404, body=orjson.dumps(problem))
    resp.headers["Content-Type"] = "application/problem+json"
    resp.headers["Retry-After"] = "3"
    _, doc = wrapped(resp)
    assert doc["ok"] is False and doc["body"] == problem
    assert doc["headers"] == {"content-type": "application/problem+json", "retry-after": "3"}


@pytest.mark.parametrize(
    ("content_type", "body", "shown", "encoding"),
    [
        ("text/plain", "héllo".encode(), "héllo", None),
        ("application/json", b'{"data": [', '{"data": [', None),  # labelled JSON, is not
        ("application/octet-stream", b"\x89PNG\xff\x00", "iVBOR/8A", "base64"),
        ("application/json", b"\xff", "/w==", "base64"),
        ("application/vnd.x+json", b"[1, 2]", [1, 2], None),
    ],
)
def test_bodies_that_are_not_plain_json(
    content_type: str, body: bytes, shown: Any, encoding: str | None
) -> None:
    resp = web.Response(status=200, body=body)
    resp.headers["Content-Type"] = content_type
    _, doc = wrapped(resp)
    assert doc["body"] == shown
    assert doc.get("body_encoding") == encoding
    if encoding:
        assert base64.b64decode(doc["body"]) == body


def test_headers_lower_case_repeated_ones_joined_framing_dropped() -> None:
    headers = CIMultiDict(
        [
            ("Set-Cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("Content-Length", "5"),
            ("Date", "x"),
            ("Server", "y"),
            ("Transfer-Encoding", "chunked"),
            ("X-RateLimit-Remaining", "7"),
        ]
    )
    resp = web.Response(status=200, body=b"hello", headers=headers)
    _, doc = wrapped(resp)
    assert doc["headers"] == {"set-cookie": "a=1, b=2", "x-ratelimit-remaining": "7"}
