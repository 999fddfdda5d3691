"""The Luau answer mode: every answer as a ``200`` whose JSON body says what it was.

Roblox's ``HttpService:GetAsync`` and ``PostAsync`` give a script only the body of a
successful answer and raise ``HTTP 404 (Not Found)`` for any other status, so the problem
body that says what went wrong never reaches the script (``RequestAsync`` does return
non-2xx answers; docs/ROBLOX.md, "Game servers and HttpService"). A key with
``answer_mode: luau`` therefore gets every answer — ours, Roblox's, errors included — as::

    {"ok": false, "status": 404, "headers": {"content-type": "application/problem+json",
     "x-request-id": "…", …}, "body": {"type": "about:blank", "title": "Not Found", …}}

- ``ok`` is what ``RequestAsync`` calls ``Success``: the status is 2xx;
- ``status`` is the status the answer would have had;
- ``headers`` are its headers, names in lower case (as ``RequestAsync`` gives them), a
  header sent more than once joined with ``", "``, without the framing ones
  (``Content-Length``, ``Date``, ``Server``, …);
- ``body`` is its body: the JSON value itself when the answer is JSON, else the text
  (``null`` when empty); a body that is not UTF-8 is base64, with
  ``"body_encoding": "base64"``.

The envelope itself is ``200``, ``application/json``, ``Cache-Control: no-store`` (it is
one key's view of an answer: no shared cache in front of the proxy may keep it), with the
answer's ``X-Request-ID`` and ``Server-Timing``. :func:`envelope` is applied in one place,
the front door (:mod:`bloxproxy.front`), after the answer has been made HTTP and before it
is written, for requests whose key asks for it; nothing of it is stored or remembered, so
the cache and the fast path only ever hold plain answers.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from aiohttp import web

__all__ = ["envelope"]

# Framing, redone for the envelope (and Date/Server, which the server writes again).
_FRAMING = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}
)
# Of the answer's headers, those the envelope carries outside too.
_OUTSIDE = ("X-Request-ID", "Server-Timing")


def _is_json(content_type: str) -> bool:
    mime = content_type.partition(";")[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


def _body(body: bytes, content_type: str, out: dict[str, Any]) -> Any:
    """What the envelope's ``body`` is for ``body`` (see the module docstring)."""
    if not body:
        return None
    if _is_json(content_type):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # labelled JSON, but not: as the text it is
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        out["body_encoding"] = "base64"
        return base64.b64encode(body).decode("ascii")


def envelope(resp: web.Response) -> web.Response:
    """``resp`` as the Luau envelope (see the module docstring)."""
    headers: dict[str, str] = {}
    for name, value in resp.headers.items():
        low = name.lower()
        if low in _FRAMING:
            continue
        headers[low] = f"{headers[low]}, {value}" if low in headers else value
    raw = resp.body
    body = bytes(raw) if isinstance(raw, bytes | bytearray | memoryview) else b""
    out: dict[str, Any] = {"ok": 200 <= resp.status < 300, "status": resp.status}
    out["headers"] = headers
    out["body"] = _body(body, resp.content_type, out)
    wrapped = web.Response(status=200, body=orjson.dumps(out), content_type="application/json")
    wrapped.headers["Cache-Control"] = "no-store"
    for name in _OUTSIDE:
        if name in resp.headers:
            wrapped.headers[name] = resp.headers[name]
    return wrapped
