"""Fake users, friends and presence endpoints (users/friends/presence.roblox.com).

Batch caps: ``POST users /v1/users`` ``{"userIds":[...],"excludeBannedUsers":bool}`` at most
200 ids (official schema ``MultiGetByUserIdRequest``, ``maxItems`` 200; 400 code 1 "Too many
ids."); ``POST users /v1/usernames/users`` at most 100 names (the number clients chunk at;
400 code 2 "Too many usernames." is documented), case-insensitive, previous names too, each
match echoing ``requestedUsername``; ``POST presence /v1/presence/users`` at most 50 ids (400
code 2 "Too many User Ids being sent in the request.", reported in github.com/fekie/roboat
PR #73).  Unknown ids and names are left out; duplicates answered once.  The three POSTs are
documented reads and need no CSRF token.
"""

from __future__ import annotations

import functools
import hashlib

import orjson

from .common import (
    BAD_REQUEST,
    UNAUTHORIZED,
    Ctx,
    JsonObj,
    Reply,
    Route,
    error,
    int_list,
    json_body,
    ok,
    paginate,
)
from .data import (
    FRIENDS,
    NAMED_USERS,
    SOCIAL_COUNTS,
    SYNTHETIC_MAX,
    SYNTHETIC_MIN,
    User,
    find_user,
    find_user_by_name,
    presence_of,
    search_users,
    user_exists,
)

USER_INVALID = error(404, 3, "The user id is invalid.")
USER_INVALID_400 = error(400, 3, "The user id is invalid.")
TOO_MANY_IDS = error(400, 1, "Too many ids.")
TOO_MANY_NAMES = error(400, 2, "Too many usernames.")
KEYWORD_TOO_SHORT = error(400, 6, "The keyword is too short.")
TARGET_INVALID = error(400, 1, "The target user is invalid or does not exist.")
TOO_MANY_PRESENCE = error(400, 2, "Too many User Ids being sent in the request.")
# guesses: display-name validation errors are not in the catalog
NAME_TOO_SHORT = error(400, 1, "Display name is too short.")
NAME_TOO_LONG = error(400, 2, "Display name is too long.")


def _profile(u: User) -> JsonObj:
    return {
        "description": u.description,
        "created": u.created,
        "isBanned": u.banned,
        "externalAppDisplayName": None,
        "hasVerifiedBadge": u.verified,
        "id": u.id,
        "name": u.name,
        "displayName": u.display_name,
    }


def _brief(u: User) -> JsonObj:
    return {
        "hasVerifiedBadge": u.verified,
        "id": u.id,
        "name": u.name,
        "displayName": u.display_name,
    }


_NAMED_PROFILES = {uid: orjson.dumps(_profile(u)) for uid, u in NAMED_USERS.items()}


def authenticated_user_id(cookie: str) -> int:
    """The synthetic user id the fake assigns to a ``.ROBLOSECURITY`` value."""
    digest = int(hashlib.sha256(cookie.encode()).hexdigest()[:12], 16)
    return SYNTHETIC_MIN + digest % (SYNTHETIC_MAX - SYNTHETIC_MIN + 1)


def get_user(ctx: Ctx) -> Reply:
    """GET /v1/users/{userId}."""
    uid = ctx.params["userId"]
    cached = _NAMED_PROFILES.get(uid)
    if cached is not None:
        return Reply(200, cached)
    user = find_user(uid)
    return USER_INVALID if user is None else ok(_profile(user))


MAX_USER_IDS = 200
MAX_USERNAMES = 100
MAX_PRESENCE_IDS = 50


def _exclude_banned(body: JsonObj) -> bool | None:
    value = body.get("excludeBannedUsers", False)
    return value if isinstance(value, bool) else None


def users_by_ids(ctx: Ctx) -> Reply:
    """POST /v1/users ``{"userIds":[...],"excludeBannedUsers":bool}``; unknown ids omitted."""
    body = json_body(ctx)
    ids = None if body is None else int_list(body.get("userIds", []))
    exclude = None if body is None else _exclude_banned(body)
    if ids is None or exclude is None:
        return BAD_REQUEST
    if len(ids) > MAX_USER_IDS:
        return TOO_MANY_IDS
    users = (find_user(uid) for uid in dict.fromkeys(ids))
    return ok({"data": [_brief(u) for u in users if u is not None and not (exclude and u.banned)]})


def users_by_names(ctx: Ctx) -> Reply:
    """POST /v1/usernames/users ``{"usernames":[...],"excludeBannedUsers":bool}``;
    case-insensitive, also matches previous usernames."""
    body = json_body(ctx)
    names = None if body is None else body.get("usernames", [])
    exclude = None if body is None else _exclude_banned(body)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return BAD_REQUEST
    if exclude is None:
        return BAD_REQUEST
    if len(names) > MAX_USERNAMES:
        return TOO_MANY_NAMES
    data: list[JsonObj] = []
    for name in dict.fromkeys(names):
        user = find_user_by_name(name)
        if user is not None and not (exclude and user.banned):
            data.append({"requestedUsername": name, **_brief(user)})
    return ok({"data": data})


@functools.lru_cache(maxsize=256)
def _search(keyword: str) -> tuple[JsonObj, ...]:
    return tuple(
        {"previousUsernames": list(reversed(u.previous_names)), **_brief(u)}
        for u in search_users(keyword)
    )


def search(ctx: Ctx) -> Reply:
    """GET /v1/users/search?keyword=&limit=&cursor= (paginated)."""
    keyword = ctx.query.get("keyword", "").strip()
    if len(keyword) < 3:
        return KEYWORD_TOO_SHORT
    return paginate(ctx, _search(keyword.lower()), f"keyword:{keyword.lower()}")


def username_history(ctx: Ctx) -> Reply:
    """GET /v1/users/{userId}/username-history (paginated, oldest first for Asc)."""
    user = find_user(ctx.params["userId"])
    if user is None:
        return USER_INVALID_400
    items = [{"name": n} for n in user.previous_names]
    return paginate(ctx, items, f"userId:{user.id}")


def authenticated(ctx: Ctx) -> Reply:
    """GET /v1/users/authenticated: a synthetic user derived from the cookie."""
    if ctx.cookie is None:
        return UNAUTHORIZED
    uid = authenticated_user_id(ctx.cookie)
    return ok({"id": uid, "name": f"User{uid}", "displayName": f"User{uid}"})


def set_display_name(ctx: Ctx) -> Reply:
    """PATCH /v1/users/{userId}/display-names (cookie + CSRF); nothing is persisted."""
    if ctx.cookie is None:
        return UNAUTHORIZED
    if not user_exists(ctx.params["userId"]):
        return USER_INVALID_400
    body = json_body(ctx)
    name = None if body is None else body.get("newDisplayName")
    if not isinstance(name, str):
        return BAD_REQUEST
    if len(name) < 3:
        return NAME_TOO_SHORT
    if len(name) > 20:
        return NAME_TOO_LONG
    return ok({})


def friends_count(ctx: Ctx) -> Reply:
    """GET /v1/users/{userId}/friends/count."""
    return _social(ctx.params["userId"], 0)


def followers_count(ctx: Ctx) -> Reply:
    """GET /v1/users/{targetUserId}/followers/count."""
    return _social(ctx.params["targetUserId"], 1)


def followings_count(ctx: Ctx) -> Reply:
    """GET /v1/users/{targetUserId}/followings/count."""
    return _social(ctx.params["targetUserId"], 2)


def _social(uid: int, index: int) -> Reply:
    if not user_exists(uid):
        return TARGET_INVALID
    counts = SOCIAL_COUNTS.get(uid)
    return ok({"count": 0 if counts is None else counts[index]})


def friends(ctx: Ctx) -> Reply:
    """GET /v1/users/{userId}/friends (not paginated; profile fields mostly empty)."""
    uid = ctx.params["userId"]
    if not user_exists(uid):
        return TARGET_INVALID
    data: list[JsonObj] = []
    for fid in FRIENDS.get(uid, ()):
        user = find_user(fid)
        if user is not None:
            data.append(
                {
                    "isOnline": False,
                    "presenceType": 0,
                    "isDeleted": False,
                    "friendFrequentScore": 0,
                    "friendFrequentRank": 1,
                    "hasVerifiedBadge": user.verified,
                    "description": None,
                    "created": "0001-01-01T05:52:00Z",
                    "isBanned": False,
                    "externalAppDisplayName": None,
                    "id": user.id,
                    "name": user.name,
                    "displayName": user.display_name,
                }
            )
    return ok({"data": data})


def presence(ctx: Ctx) -> Reply:
    """POST presence /v1/presence/users ``{"userIds":[...]}`` (at most 50)."""
    body = json_body(ctx)
    ids = None if body is None else int_list(body.get("userIds", []))
    if ids is None:
        return BAD_REQUEST
    if len(ids) > MAX_PRESENCE_IDS:
        return TOO_MANY_PRESENCE
    data: list[JsonObj] = []
    for uid in dict.fromkeys(ids):
        if user_exists(uid):
            entry: JsonObj = {
                "userPresenceType": 0,
                "lastLocation": "Website",
                "placeId": None,
                "rootPlaceId": None,
                "gameId": None,
                "universeId": None,
            }
            entry.update(presence_of(uid))
            entry["userId"] = uid
            data.append(entry)
    return ok({"userPresences": data})


ROUTES = [
    Route("users", "GET", "/v1/users/authenticated", authenticated),
    Route("users", "GET", "/v1/users/search", search),
    Route("users", "GET", "/v1/users/{userId}", get_user),
    Route("users", "POST", "/v1/users", users_by_ids, csrf="exempt"),
    Route("users", "POST", "/v1/usernames/users", users_by_names, csrf="exempt"),
    Route("users", "GET", "/v1/users/{userId}/username-history", username_history),
    Route("users", "PATCH", "/v1/users/{userId}/display-names", set_display_name),
    Route("friends", "GET", "/v1/users/{userId}/friends/count", friends_count),
    Route("friends", "GET", "/v1/users/{targetUserId}/followers/count", followers_count),
    Route("friends", "GET", "/v1/users/{targetUserId}/followings/count", followings_count),
    Route("friends", "GET", "/v1/users/{userId}/friends", friends),
    Route("presence", "POST", "/v1/presence/users", presence, csrf="exempt"),
]
