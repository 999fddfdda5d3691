"""HTTP control API of the fake, under the reserved ``/_fake/`` prefix.

* ``GET  /_fake/stats``    -> ``{"total": N, "counts": {"GET users /v1/users/1": n, ...}}``
* ``POST /_fake/reset``    -> clears log, counters and scripted faults
* ``GET|POST /_fake/latency`` ``{"seconds": 0.02}`` -> ``{"seconds": ...}``
* ``POST /_fake/faults``   ``{"service","path","method"?,"faults":[{...Fault fields...}]}``
  (``{}`` or ``{"status": 200}`` = normal answer); ``GET`` -> ``{"pending": n}``
* ``GET  /_fake/requests?limit=100`` -> the most recent recorded requests (bodies as text)

Bad input -> 400 ``{"error": "..."}``; unknown endpoint -> 404; wrong method -> 405.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from .faults import JSON_CT, Fault
from .state import FakeRoblox


def _json(obj: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(obj), headers={"Content-Type": JSON_CT})


def _bad(message: str) -> web.Response:
    return _json({"error": message}, 400)


async def _read_object(request: web.Request) -> dict[str, object] | None:
    try:
        obj = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


async def _latency(request: web.Request, state: FakeRoblox) -> web.Response:
    if request.method == "POST":
        body = await _read_object(request)
        seconds = None if body is None else body.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            return _bad('expected {"seconds": <number >= 0>}')
        state.latency = float(seconds)
    return _json({"seconds": state.latency})


async def _faults(request: web.Request, state: FakeRoblox) -> web.Response:
    if request.method == "GET":
        return _json({"pending": state.pending_faults()})
    body = await _read_object(request)
    if body is None:
        return _bad("expected a JSON object")
    service, path, method = body.get("service"), body.get("path"), body.get("method")
    raw_faults = body.get("faults")
    if not isinstance(service, str) or not service or service.startswith("_"):
        return _bad("'service' must be a Roblox service name such as 'users'")
    if not isinstance(path, str) or not path.startswith("/"):
        return _bad("'path' must be a string starting with '/'")
    if method is not None and not isinstance(method, str):
        return _bad("'method' must be a string or null")
    if not isinstance(raw_faults, list):
        return _bad("'faults' must be a list")
    try:
        faults = [Fault.from_json(item) for item in raw_faults]
    except (TypeError, ValueError) as exc:
        return _bad(str(exc))
    state.script(service, path, faults, method=method)
    return _json({"ok": True, "queued": len(faults)})


def _requests(request: web.Request, state: FakeRoblox) -> web.Response:
    raw_limit = request.query.get("limit", "100")
    if not (raw_limit.isascii() and raw_limit.isdigit()):
        return _bad("'limit' must be a non-negative integer")
    limit = int(raw_limit)
    entries = state.requests[-limit:] if limit else []
    return _json(
        [
            {
                "method": r.method,
                "service": r.service,
                "path": r.path,
                "query": [list(pair) for pair in r.query],
                "headers": r.headers,
                "body": r.body.decode("utf-8", "replace"),
            }
            for r in entries
        ]
    )


_METHODS = {
    "stats": ("GET",),
    "reset": ("POST",),
    "latency": ("GET", "POST"),
    "faults": ("GET", "POST"),
    "requests": ("GET",),
}


async def handle_control(request: web.Request, state: FakeRoblox, name: str) -> web.Response:
    """Serve ``/_fake/{name}``."""
    allowed = _METHODS.get(name)
    if allowed is None:
        return _json({"error": f"unknown control endpoint {name!r}"}, 404)
    if request.method not in allowed:
        return _json({"error": f"use {' or '.join(allowed)}"}, 405)
    if name == "stats":
        return _json({"total": state.total, "counts": state.counts()})
    if name == "reset":
        state.reset()
        return _json({"ok": True})
    if name == "latency":
        return await _latency(request, state)
    if name == "faults":
        return await _faults(request, state)
    return _requests(request, state)
