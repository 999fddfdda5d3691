"""HTTP control API of the fake, under the reserved ``/_fake/`` prefix.

* ``GET  /_fake/stats``    -> ``{"total": N, "counts": {"GET users /v1/users/1": n, ...},
  "statuses": {"200": n, "429": n, ...}, "limited": N}`` (``limited``: 429s given by the
  per-client-IP limit; ``statuses``: every answer sent, scripted ones included)
* ``POST /_fake/reset``    -> clears log, counters, scripted faults and thumbnail states,
  refills the rate-limit buckets
* ``GET|POST /_fake/ip-limit`` ``{"rate": 40 | "40/s" | "2400/min" | null, "burst"?: 40,
  "per_service"?: false}`` -> the limit now in force (``{"rate": null}`` = off)
* ``GET|POST /_fake/thumbnails`` ``{"targetId": 2, "states": ["Pending", "Completed"],
  "type"?: "AvatarHeadShot"}`` -> ``{"ok": true}``; ``GET`` -> ``{"scripted": n}``
* ``GET|POST /_fake/latency`` ``{"seconds": 0.02}`` -> ``{"seconds": ...}``
* ``POST /_fake/faults``   ``{"service","path","method"?,"faults":[{...Fault fields...}]}``
  (``{}`` or ``{"status": 200}`` = normal answer); ``GET`` -> ``{"pending": n}``
* ``GET  /_fake/requests?limit=100`` -> the most recent recorded requests (bodies as text,
  ``at``: when each arrived, on the fake's clock)
* ``GET|POST /_fake/cloud`` ``{"keys"?: [{"key": "k", "owner": "groups/7", "scopes"?: [..]}],
  "owner_limit"?: "120/min" | null, "burst"?: 120, "polls"?: 2}`` -> ``{"owner_limit": ...,
  "polls": n, "limited": n}`` (Open Cloud: registered keys, the per-owner limit, how many
  polls an operation takes; :mod:`bloxproxy.fake.cloud`)

Bad input -> 400 ``{"error": "..."}``; unknown endpoint -> 404; wrong method -> 405.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from .faults import JSON_CT, Fault
from .limits import IpLimit
from .routes_thumbnails import THUMBNAIL_TYPES
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


def _limit_json(state: FakeRoblox) -> dict[str, object]:
    limit = state.ip_limit
    return {"rate": None} if limit is None else limit.to_json()


async def _ip_limit(request: web.Request, state: FakeRoblox) -> web.Response:
    if request.method == "GET":
        return _json(_limit_json(state))
    body = await _read_object(request)
    if body is None:
        return _bad('expected {"rate": <requests/s or "40/s">, "burst"?: n, "per_service"?: b}')
    unknown = sorted(set(body) - {"rate", "burst", "per_service"})
    if unknown:
        return _bad(f"unknown key(s) {unknown}; allowed: rate, burst, per_service")
    rate, burst, per_service = body.get("rate"), body.get("burst"), body.get("per_service", False)
    if not isinstance(per_service, bool):
        return _bad(f"'per_service' must be true or false, not {per_service!r}")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int)):
        return _bad(f"'burst' must be an integer >= 1, not {burst!r}")
    try:
        if rate is None:
            limit = None
        elif isinstance(rate, str):
            limit = IpLimit.parse(rate, burst=burst, per_service=per_service)
        elif isinstance(rate, int | float) and not isinstance(rate, bool):
            limit = IpLimit.per_second(rate, burst=burst, per_service=per_service)
        else:
            return _bad(f"'rate' must be a number, a string like '40/s' or null, not {rate!r}")
    except ValueError as exc:
        return _bad(str(exc))
    state.ip_limit = limit
    return _json(_limit_json(state))


async def _thumbnails(request: web.Request, state: FakeRoblox) -> web.Response:
    if request.method == "GET":
        return _json({"scripted": state.thumbnail_scripts()})
    body = await _read_object(request)
    if body is None:
        return _bad('expected {"targetId": n, "states": [...], "type"?: "AvatarHeadShot"}')
    target, states, kind = body.get("targetId"), body.get("states"), body.get("type")
    if isinstance(target, bool) or not isinstance(target, int):
        return _bad(f"'targetId' must be an integer, not {target!r}")
    if not isinstance(states, list) or not all(isinstance(s, str) for s in states):
        return _bad("'states' must be a list of thumbnail states such as 'Pending'")
    if kind is not None and kind not in THUMBNAIL_TYPES:
        return _bad(f"'type' must be one of {sorted(THUMBNAIL_TYPES)} or null, not {kind!r}")
    try:
        state.script_thumbnail(target, states, kind)
    except ValueError as exc:
        return _bad(str(exc))
    return _json({"ok": True})


def _cloud_json(state: FakeRoblox) -> dict[str, object]:
    limit = state.cloud.owner_limit
    return {
        "owner_limit": None if limit is None else limit.to_json(),
        "polls": state.cloud.polls,
        "limited": state.cloud.limited,
    }


async def _cloud(request: web.Request, state: FakeRoblox) -> web.Response:
    if request.method == "GET":
        return _json(_cloud_json(state))
    body = await _read_object(request)
    if body is None:
        return _bad('expected {"keys"?: [...], "owner_limit"?: "120/min", "polls"?: 2}')
    keys = body.get("keys", [])
    if not isinstance(keys, list):
        return _bad("'keys' must be a list of {key, owner, scopes?}")
    found: list[tuple[str, str, frozenset[str]]] = []
    for item in keys:
        key = item.get("key") if isinstance(item, dict) else None
        owner = item.get("owner") if isinstance(item, dict) else None
        scopes = item.get("scopes", []) if isinstance(item, dict) else None
        if not (isinstance(key, str) and key and isinstance(owner, str) and owner):
            return _bad("each key needs a non-empty 'key' and 'owner' (users/1, groups/7)")
        if not isinstance(scopes, list) or not all(isinstance(x, str) for x in scopes):
            return _bad("'scopes' must be a list of strings")
        found.append((key, owner, frozenset(scopes)))
    polls = body.get("polls", state.cloud.polls)
    if isinstance(polls, bool) or not isinstance(polls, int) or not 0 <= polls <= 100:
        return _bad("'polls' must be an integer from 0 to 100")
    limit = state.cloud.owner_limit
    if "owner_limit" in body:
        rate, burst = body["owner_limit"], body.get("burst")
        if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int)):
            return _bad("'burst' must be an integer")
        try:
            limit = None if rate is None else IpLimit.parse(str(rate), burst=burst)
        except ValueError as exc:
            return _bad(str(exc))
    for key, owner, scopes in found:
        state.cloud.add_key(key, owner, scopes)
    state.cloud.polls = polls
    if "owner_limit" in body:
        state.cloud.owner_limit = limit
    return _json(_cloud_json(state))


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
                "at": r.at,
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
    "ip-limit": ("GET", "POST"),
    "thumbnails": ("GET", "POST"),
    "cloud": ("GET", "POST"),
}


async def handle_control(request: web.Request, state: FakeRoblox, name: str) -> web.Response:
    """Serve ``/_fake/{name}``."""
    allowed = _METHODS.get(name)
    if allowed is None:
        return _json({"error": f"unknown control endpoint {name!r}"}, 404)
    if request.method not in allowed:
        return _json({"error": f"use {' or '.join(allowed)}"}, 405)
    if name == "stats":
        statuses = {str(k): v for k, v in sorted(state.statuses().items())}
        return _json(
            {
                "total": state.total,
                "counts": state.counts(),
                "statuses": statuses,
                "limited": state.limited,
            }
        )
    if name == "reset":
        state.reset()
        return _json({"ok": True})
    if name == "latency":
        return await _latency(request, state)
    if name == "faults":
        return await _faults(request, state)
    if name == "ip-limit":
        return await _ip_limit(request, state)
    if name == "thumbnails":
        return await _thumbnails(request, state)
    if name == "cloud":
        return await _cloud(request, state)
    return _requests(request, state)
