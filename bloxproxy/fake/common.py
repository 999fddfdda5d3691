"""Shared plumbing for the fake's endpoint handlers: request context, replies, Roblox error
bodies, id parsing and legacy cursor pagination."""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import orjson

from .state import FakeRoblox

JsonObj = dict[str, object]


class Reply(NamedTuple):
    """An endpoint answer: status, JSON body bytes and optional extra headers."""

    status: int
    body: bytes
    headers: Mapping[str, str] | None = None


@dataclass(slots=True)
class Ctx:
    """What a handler may look at for one request."""

    state: FakeRoblox
    method: str
    params: dict[str, int]  # integer path parameters
    query: dict[str, str]  # first value per query name; names lower-cased (ASP.NET style)
    body: bytes
    cookie: str | None  # non-empty .ROBLOSECURITY value, else None
    api_key: str | None = None  # non-empty x-api-key or Authorization header, else None


Handler = Callable[[Ctx], Reply]
# "auto": CSRF required for cookie-authenticated mutations; "exempt": never; "always": even
# anonymously (catalog items/details).
CsrfPolicy = Literal["auto", "exempt", "always"]


@dataclass(frozen=True, slots=True)
class Route:
    """One Roblox endpoint: ``{name}`` segments in ``pattern`` match digits only.

    ``too_many`` is the endpoint's documented 429 answer, sent when the per-client-IP limit
    refuses a request (default :data:`RATE_LIMITED`)."""

    service: str
    method: str
    pattern: str
    handler: Handler
    csrf: CsrfPolicy = "auto"
    too_many: Reply | None = None


def ok(obj: object) -> Reply:
    """200 with the object serialized by orjson."""
    return Reply(200, orjson.dumps(obj))


@functools.lru_cache(maxsize=512)
def error(status: int, code: int, message: str, user_facing: bool = True) -> Reply:
    """A legacy Roblox error reply; documented errors carry ``userFacingMessage``."""
    item: JsonObj = {"code": code, "message": message}
    if user_facing:
        item["userFacingMessage"] = "Something went wrong"
    return Reply(status, orjson.dumps({"errors": [item]}))


NOT_FOUND = error(404, 0, "NotFound", False)
# The legacy 429 (users search documents "4: Too many requests."); no userFacingMessage, as
# in the fake's scripted 429 faults.
RATE_LIMITED = error(429, 4, "Too many requests.", False)
UNAUTHORIZED = error(401, 0, "Authorization has been denied for this request.", False)
TOKEN_FAILED_BODY = orjson.dumps({"errors": [{"code": 0, "message": "Token Validation Failed"}]})
# guesses: the catalog documents no code for these
BAD_REQUEST = error(400, 0, "BadRequest", False)
BAD_LIMIT = error(400, 0, "Invalid limit", False)
BAD_CURSOR = error(400, 0, "Invalid cursor", False)
BAD_SORT = error(400, 0, "Invalid sortOrder", False)


def json_body(ctx: Ctx) -> JsonObj | None:
    """The request body as a JSON object, or None if missing/invalid/not an object."""
    try:
        obj = orjson.loads(ctx.body)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def int_list(value: object) -> list[int] | None:
    """A JSON array of integers (bools rejected), or None."""
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return None
    return value


def is_digits(text: str) -> bool:
    """True for a non-empty run of ASCII digits (``str.isdigit`` also accepts e.g. "²")."""
    return text.isascii() and text.isdigit()


def csv_ids(raw: str | None) -> list[int] | None:
    """Parse ``"1,2, 3"`` into ints; None if missing, empty or any item is not a number."""
    if not raw:
        return None
    out: list[int] = []
    for part in raw.split(","):
        part = part.strip()
        if not is_digits(part):
            return None
        out.append(int(part))
    return out


def flag(ctx: Ctx, name: str) -> bool:
    """A boolean query parameter (``true`` case-insensitively)."""
    return ctx.query.get(name.lower(), "").lower() == "true"


# -- legacy cursor pagination -----------------------------------------------------------------
STD_LIMITS = (10, 25, 50, 100)


def encode_cursor(offset: int, discriminator: str, order: str) -> str:
    """An opaque cursor: base64 of ``{"offset":N,"sortOrder":..,"discriminator":..}``."""
    raw = orjson.dumps({"offset": offset, "sortOrder": order, "discriminator": discriminator})
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str, discriminator: str, order: str) -> int | None:
    """The offset in a cursor, or None if it is invalid or belongs to another request."""
    try:
        obj = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(obj, dict):
        return None
    offset = obj.get("offset")
    if obj.get("discriminator") != discriminator or obj.get("sortOrder") != order:
        return None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        return None
    return offset


def paginate(
    ctx: Ctx,
    items: Sequence[object],
    discriminator: str,
    *,
    limits: tuple[int, ...] = STD_LIMITS,
    bad_limit: Reply = BAD_LIMIT,
    bad_cursor: Reply = BAD_CURSOR,
) -> Reply:
    """Answer ``{"previousPageCursor","nextPageCursor","data"}`` for ``?limit&cursor&sortOrder``
    (limit default 10, sortOrder Asc|Desc default Asc, case-insensitive)."""
    q = ctx.query
    raw_limit = q.get("limit", "10")
    if not is_digits(raw_limit) or int(raw_limit) not in limits:
        return bad_limit
    limit = int(raw_limit)
    order = q.get("sortorder", "Asc").capitalize()
    if order not in ("Asc", "Desc"):
        return BAD_SORT
    offset = 0
    cursor = q.get("cursor")
    if cursor:
        found = decode_cursor(cursor, discriminator, order)
        if found is None or found > len(items):
            return bad_cursor
        offset = found
    seq = items if order == "Asc" else items[::-1]
    end = offset + limit
    return ok(
        {
            "previousPageCursor": (
                encode_cursor(max(0, offset - limit), discriminator, order) if offset else None
            ),
            "nextPageCursor": (
                encode_cursor(end, discriminator, order) if end < len(items) else None
            ),
            "data": list(seq[offset:end]),
        }
    )
