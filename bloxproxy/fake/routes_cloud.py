"""Fake Open Cloud endpoints (``apis.roblox.com/cloud/v2/...`` and ``legacy-*`` API-key
routes).

Shapes follow the official OpenAPI document (Roblox creator-docs,
``content/en-us/reference/cloud/openapi.json``; the resource pages under
https://create.roblox.com/docs/cloud/reference/features/): ``User``, ``Operation`` (of
``GenerateUserThumbnail``), ``Group``, ``GroupMembership``, ``GroupRole``, ``Universe``,
``Place``; the values are the fake's users, groups and games (:mod:`bloxproxy.fake.data`,
:mod:`bloxproxy.fake.data_content`).

Authentication: an ``x-api-key`` (or an OAuth ``Authorization`` header).  None -> 401 with
the gateway's legacy-shaped ``{"errors":[{"code":0,"message":"Invalid API Key"}]}``
(Roblox creator docs, ``cloud/reference/errors.md``).  A key registered in
``state.cloud`` (:mod:`bloxproxy.fake.cloud`) that lacks the operation's scope -> 403
``{"code": "PERMISSION_DENIED", ...}``; ad-hoc keys have every scope.  Errors of the v2
API are ``{"code": "NOT_FOUND" | "INVALID_ARGUMENT" | "PERMISSION_DENIED" |
"RESOURCE_EXHAUSTED", "message": ...}`` (same page); ``legacy-*`` routes answer the legacy
``errors`` list of the API they wrap.

Lists take ``maxPageSize`` (absent or 0: the default; above the maximum: the maximum;
negative: ``INVALID_ARGUMENT``) and ``pageToken`` (an opaque token from a previous
``nextPageToken``; a token of another list: ``INVALID_ARGUMENT``) and answer
``nextPageToken`` (``""`` on the last page).  Memberships take ``filter`` in the documented
forms ``user == 'users/156'`` and ``role == 'groups/7/roles/1008'``.

Permissions: Roblox gives an API key permissions per API system in the Creator Dashboard;
the OpenAPI document names no OAuth scope for these reads (``x-roblox-docs.methodProperties.
scopes`` is empty for GetUser, GenerateUserThumbnail, GetGroup, ListGroupMemberships,
ListGroupRoles, GetGroupRole, GetUniverse and GetPlace). The fake models a key's permissions
as scope names, and which read needs which is a *guess*: groups, memberships and roles
``group:read``; universes ``universe:read``, places ``universe.place:read``;
users and thumbnails none.

``legacy-groups`` (the legacy groups API for API keys): ``GET
/legacy-groups/v1/groups/{groupId}/audit-log`` and ``.../settings``.  Their scope is the
document's own (``x-roblox-scopes``: ``legacy-group:manage``), their answers and errors the
legacy groups API's, as documented there: a group that does not exist is 400 code 1 "Group is
invalid or does not exist.", a bad page 400 code 8 "Invalid or missing pagination
parameters", a key whose owner may not manage the group 403 code 23 "Insufficient permissions
to complete the request." (who may: a *guess* -- a key owned by the group itself or by its
owner; ad-hoc keys may everything).  The audit log's items are ``{actor: {user, role},
actionType, description, created}`` (``GroupAuditLogResponseItem``); the document types
``actionType`` only as a string and ``description`` not at all, so the fake's values (the
filter's name spaced out, "Change Rank"; ``{"TargetId", "TargetName", "OldRoleSetId", ...}``)
and its entries (a made-up history of the named groups; none for synthetic ones) are guesses.

Every answer on these paths carries the ``x-ratelimit-*`` headers when the fake's per-IP or
per-owner limit is on (see :mod:`bloxproxy.fake.limits`, :mod:`bloxproxy.fake.cloud`).
"""

from __future__ import annotations

import re

import orjson

from .common import (
    BAD_REQUEST,
    Ctx,
    Handler,
    JsonObj,
    Reply,
    Route,
    decode_cursor,
    encode_cursor,
    error,
    is_digits,
    ok,
    paginate,
)
from .data import GROUPS, Group, Role, find_group, find_user
from .data_content import find_develop_universe, find_game, universe_of_place
from .routes_content import GROUP_INVALID
from .routes_thumbnails import image_url

CLOUD_UNAUTHORIZED = Reply(
    401, orjson.dumps({"errors": [{"code": 0, "message": "Invalid API Key"}]})
)
CLOUD_RATE_LIMITED = Reply(
    429, orjson.dumps({"code": "RESOURCE_EXHAUSTED", "message": "Too many requests."})
)


def cloud_error(status: int, code: str, message: str) -> Reply:
    """An Open Cloud v2 error."""
    return Reply(status, orjson.dumps({"code": code, "message": message}))


def _not_found(what: str) -> Reply:
    return cloud_error(404, "NOT_FOUND", f"{what} not found.")


USER_NOT_FOUND = _not_found("User")
GROUP_NOT_FOUND = _not_found("Group")
ROLE_NOT_FOUND = _not_found("Group role")
UNIVERSE_NOT_FOUND = _not_found("Universe")
PLACE_NOT_FOUND = _not_found("Place")
OPERATION_NOT_FOUND = _not_found("Operation")
BAD_PAGE_SIZE = cloud_error(400, "INVALID_ARGUMENT", "Invalid max page size.")
BAD_PAGE_TOKEN = cloud_error(400, "INVALID_ARGUMENT", "Invalid page token.")
BAD_FILTER = cloud_error(400, "INVALID_ARGUMENT", "Invalid filter.")


def denied(ctx: Ctx, scope: str | None) -> Reply | None:
    """401 without a key; 403 for a registered key lacking ``scope``; else None."""
    if ctx.api_key is None:
        return CLOUD_UNAUTHORIZED
    if scope is None:
        return None
    key = ctx.state.cloud.key(ctx.api_key)
    if key is not None and scope not in key.scopes:
        return cloud_error(
            403, "PERMISSION_DENIED", f"The API key does not have the scope {scope}."
        )
    return None


# -- users ------------------------------------------------------------------------------------
def user(ctx: Ctx) -> Reply:
    """GET /cloud/v2/users/{userId} (public fields only: no scope needed)."""
    refused = denied(ctx, None)
    if refused is not None:
        return refused
    found = find_user(ctx.params["userId"])
    if found is None:
        return USER_NOT_FOUND
    return ok(
        {
            "path": f"users/{found.id}",
            "createTime": found.created,
            "id": str(found.id),
            "name": found.name,
            "displayName": found.display_name,
            "about": found.description,
            "locale": "en-us",
            "premium": False,
        }
    )


THUMBNAIL_SIZES = ("48", "50", "60", "75", "100", "110", "150", "180", "352", "420", "720")
THUMBNAIL_FORMATS = ("PNG", "JPEG")
THUMBNAIL_SHAPES = ("ROUND", "SQUARE")
THUMBNAIL_RESPONSE_TYPE = "apis.roblox.com/roblox.open_cloud.cloud.v2.GenerateUserThumbnailResponse"


def generate_thumbnail(ctx: Ctx) -> Reply:
    """GET /cloud/v2/users/{userId}:generateThumbnail?size=&format=&shape= -> an Operation."""
    refused = denied(ctx, None)
    if refused is not None:
        return refused
    uid = ctx.params["userId"]
    if find_user(uid) is None:
        return USER_NOT_FOUND
    size = ctx.query.get("size", "420")
    fmt = ctx.query.get("format", "PNG").upper()
    shape = ctx.query.get("shape", "ROUND").upper()
    if size not in THUMBNAIL_SIZES or fmt not in THUMBNAIL_FORMATS or shape not in THUMBNAIL_SHAPES:
        return cloud_error(400, "INVALID_ARGUMENT", "Invalid thumbnail size, format or shape.")
    url = image_url("AvatarHeadshot", uid, f"{size}x{size}", fmt.capitalize(), shape == "ROUND")
    response: JsonObj = {"@type": THUMBNAIL_RESPONSE_TYPE, "imageUri": url}
    return ok(ctx.state.cloud.start(("thumbnail", uid, size, fmt, shape), f"users/{uid}", response))


def user_operation(ctx: Ctx) -> Reply:
    """GET /cloud/v2/users/{userId}/operations/{operationId}: one poll of the operation."""
    refused = denied(ctx, None)
    if refused is not None:
        return refused
    found = ctx.state.cloud.poll(f"users/{ctx.params['userId']}", ctx.params["operationId"])
    return OPERATION_NOT_FOUND if found is None else ok(found)


# -- groups -----------------------------------------------------------------------------------
def _group(ctx: Ctx) -> Group | Reply:
    refused = denied(ctx, "group:read")
    if refused is not None:
        return refused
    found = find_group(ctx.params["groupId"])
    return GROUP_NOT_FOUND if found is None else found


def group(ctx: Ctx) -> Reply:
    """GET /cloud/v2/groups/{groupId}."""
    found = _group(ctx)
    if isinstance(found, Reply):
        return found
    return ok(
        {
            "path": f"groups/{found.id}",
            "createTime": found.created,
            "updateTime": found.created,
            "id": str(found.id),
            "displayName": found.name,
            "description": found.description,
            "owner": None if found.owner_id is None else f"users/{found.owner_id}",
            "memberCount": len(found.members),
            "publicEntryAllowed": found.public_entry,
            "locked": False,
            "verified": False,
        }
    )


def _page(
    ctx: Ctx, items: list[JsonObj], key: str, discriminator: str, default: int, most: int
) -> Reply:
    """A page of ``items`` under ``key`` for ``maxPageSize``/``pageToken``."""
    raw = ctx.query.get("maxpagesize", "")
    if raw and not (is_digits(raw) or (raw.startswith("-") and is_digits(raw[1:]))):
        return BAD_PAGE_SIZE
    size = int(raw) if raw else 0
    if size < 0:
        return BAD_PAGE_SIZE
    size = default if size == 0 else min(size, most)
    offset = 0
    token = ctx.query.get("pagetoken", "")
    if token:
        found = decode_cursor(token, discriminator, "Asc")
        if found is None or found > len(items):
            return BAD_PAGE_TOKEN
        offset = found
    end = offset + size
    following = encode_cursor(end, discriminator, "Asc") if end < len(items) else ""
    return ok({key: items[offset:end], "nextPageToken": following})


_FILTER = re.compile(r"^\s*(user|role)\s*==\s*'([^']*)'\s*$")
MEMBERSHIP_TIME = "2020-01-01T00:00:00Z"  # guess: the fake keeps no join dates


def memberships(ctx: Ctx) -> Reply:
    """GET /cloud/v2/groups/{groupId}/memberships (maxPageSize default 10, at most 100)."""
    found = _group(ctx)
    if isinstance(found, Reply):
        return found
    gid = found.id
    members = found.members
    raw_filter = ctx.query.get("filter", "")
    if raw_filter:
        match = _FILTER.match(raw_filter)
        if match is None:
            return BAD_FILTER
        field, value = match.groups()
        if field == "user":
            uid = value.removeprefix("users/")
            if not value.startswith("users/") or not is_digits(uid):
                return BAD_FILTER
            members = [m for m in members if m[0] == int(uid)]
        else:
            prefix = f"groups/{gid}/roles/"
            rid = value.removeprefix(prefix)
            if not value.startswith(prefix) or not is_digits(rid):
                return BAD_FILTER
            members = [m for m in members if m[1].id == int(rid)]
    items: list[JsonObj] = [
        {
            "path": f"groups/{gid}/memberships/{uid}",
            "createTime": MEMBERSHIP_TIME,
            "updateTime": MEMBERSHIP_TIME,
            "user": f"users/{uid}",
            "role": f"groups/{gid}/roles/{role.id}",
        }
        for uid, role in members
    ]
    return _page(ctx, items, "groupMemberships", f"memberships:{gid}:{raw_filter}", 10, 100)


def _role(group_id: int, role: Role, members: int) -> JsonObj:
    return {
        "path": f"groups/{group_id}/roles/{role.id}",
        "createTime": MEMBERSHIP_TIME,
        "updateTime": MEMBERSHIP_TIME,
        "id": str(role.id),
        "displayName": role.name,
        "description": role.description,
        "rank": role.rank,
        "memberCount": members,
    }


def _roles(found: Group) -> list[JsonObj]:
    counts: dict[int, int] = {}
    for _, role in found.members:
        counts[role.id] = counts.get(role.id, 0) + 1
    return [_role(found.id, r, counts.get(r.id, 0)) for r in found.roles]


def roles(ctx: Ctx) -> Reply:
    """GET /cloud/v2/groups/{groupId}/roles (maxPageSize default 10, at most 20)."""
    found = _group(ctx)
    if isinstance(found, Reply):
        return found
    return _page(ctx, _roles(found), "groupRoles", f"roles:{found.id}", 10, 20)


def role(ctx: Ctx) -> Reply:
    """GET /cloud/v2/groups/{groupId}/roles/{roleId}."""
    found = _group(ctx)
    if isinstance(found, Reply):
        return found
    wanted = f"groups/{found.id}/roles/{ctx.params['roleId']}"
    for item in _roles(found):
        if item["path"] == wanted:
            return ok(item)
    return ROLE_NOT_FOUND


# -- universes and places ---------------------------------------------------------------------
def _universe(ctx: Ctx, scope: str) -> tuple[int, JsonObj] | Reply:
    refused = denied(ctx, scope)
    if refused is not None:
        return refused
    uid = ctx.params["universeId"]
    game = find_game(uid)
    develop = find_develop_universe(uid)
    if game is None and develop is None:
        return UNIVERSE_NOT_FOUND
    return uid, (game or develop or {})


def universe(ctx: Ctx) -> Reply:
    """GET /cloud/v2/universes/{universeId}."""
    found = _universe(ctx, "universe:read")
    if isinstance(found, Reply):
        return found
    uid, game = found
    creator = game.get("creator")
    out: JsonObj = {
        "path": f"universes/{uid}",
        "createTime": game.get("created"),
        "updateTime": game.get("updated"),
        "displayName": game.get("name"),
        "description": game.get("description"),
        "visibility": "PUBLIC",
        "voiceChatEnabled": False,
        "ageRating": "AGE_RATING_UNSPECIFIED",
        "desktopEnabled": True,
        "mobileEnabled": True,
        "tabletEnabled": True,
        "consoleEnabled": False,
        "vrEnabled": False,
    }
    if isinstance(creator, dict):
        kind = "group" if creator.get("type") == "Group" else "user"
        out[kind] = f"{kind}s/{creator.get('id')}"
    elif "creatorTargetId" in game:
        kind = "group" if game.get("creatorType") == "Group" else "user"
        out[kind] = f"{kind}s/{game['creatorTargetId']}"
    return ok(out)


def place(ctx: Ctx) -> Reply:
    """GET /cloud/v2/universes/{universeId}/places/{placeId}."""
    found = _universe(ctx, "universe.place:read")
    if isinstance(found, Reply):
        return found
    uid, game = found
    pid = ctx.params["placeId"]
    if universe_of_place(pid) != uid:
        return PLACE_NOT_FOUND
    root = game.get("rootPlaceId") == pid
    return ok(
        {
            "path": f"universes/{uid}/places/{pid}",
            "createTime": game.get("created"),
            "updateTime": game.get("updated"),
            "displayName": game.get("name") if root else f"Place{pid}",
            "description": game.get("description") if root else "",
            "serverSize": game.get("maxPlayers", 50),
        }
    )


# -- legacy API-key routes --------------------------------------------------------------------
GROUP_SCOPE = "legacy-group:manage"  # openapi.json's x-roblox-scopes of both reads
AUDIT_BAD_PAGE = error(400, 8, "Invalid or missing pagination parameters")
GROUP_FORBIDDEN = error(403, 23, "Insufficient permissions to complete the request.")


def _managed_group(ctx: Ctx) -> Group | Reply:
    """The group of ``groupId`` if the key may manage it (401/403/400 otherwise)."""
    refused = denied(ctx, GROUP_SCOPE)
    if refused is not None:
        return refused
    found = find_group(ctx.params["groupId"])
    if found is None:
        return GROUP_INVALID
    assert ctx.api_key is not None  # denied() refuses a request without one
    key = ctx.state.cloud.key(ctx.api_key)
    if key is not None and key.owner not in (f"groups/{found.id}", f"users/{found.owner_id}"):
        return GROUP_FORBIDDEN
    return found


def _audit_user(uid: int) -> JsonObj:
    user = find_user(uid)
    assert user is not None
    return {
        "buildersClubMembershipType": 0,
        "hasVerifiedBadge": user.verified,
        "userId": user.id,
        "username": user.name,
        "displayName": user.display_name,
    }


def _audit_role(found: Group, role: Role) -> JsonObj:
    return {
        "id": role.id,
        "name": role.name,
        "description": role.description,
        "rank": role.rank,
        "memberCount": sum(1 for _, r in found.members if r == role),
    }


def _action(name: str) -> str:
    """The filter's name as the item's ``actionType``: ``ChangeRank`` -> ``Change Rank``."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", name)


AUDIT_ENTRIES = 30  # per named group: three pages of the default 10


def _history(found: Group) -> tuple[tuple[int, str, JsonObj], ...]:
    """A made-up audit log of a named group, oldest first: its owner accepting members,
    changing their rank and posting the group's status, one action a day from 2024-01-01.
    Each entry is ``(actor's user id, actionType, item)``."""
    if found.owner_id is None or found.id not in GROUPS:
        return ()
    owner_role = next(r for uid, r in found.members if uid == found.owner_id)
    actor = {"user": _audit_user(found.owner_id), "role": _audit_role(found, owner_role)}
    others = [(uid, r) for uid, r in found.members if uid != found.owner_id]
    low = found.roles[0]
    items: list[tuple[int, str, JsonObj]] = []
    for n in range(AUDIT_ENTRIES):
        uid, role = others[n % len(others)]
        target = find_user(uid)
        assert target is not None
        kind = ("AcceptJoinRequest", "ChangeRank", "PostStatus")[n % 3]
        if kind == "AcceptJoinRequest":
            what: JsonObj = {"TargetId": uid, "TargetName": target.name}
        elif kind == "ChangeRank":
            what = {
                "TargetId": uid,
                "TargetName": target.name,
                "OldRoleSetId": low.id,
                "NewRoleSetId": role.id,
                "OldRoleSetName": low.name,
                "NewRoleSetName": role.name,
            }
        else:
            what = {"Text": f"Welcome, {target.name}!"}
        item: JsonObj = {
            "actor": actor,
            "actionType": _action(kind),
            "description": what,
            "created": f"2024-01-{n + 1:02d}T12:00:00Z",
        }
        items.append((found.owner_id, _action(kind), item))
    return tuple(items)


_HISTORIES = {gid: _history(g) for gid, g in GROUPS.items()}


def group_audit_log(ctx: Ctx) -> Reply:
    """GET apis /legacy-groups/v1/groups/{groupId}/audit-log?actionType&userId&limit&cursor&
    sortOrder (paginated, oldest first for Asc)."""
    found = _managed_group(ctx)
    if isinstance(found, Reply):
        return found
    action = ctx.query.get("actiontype", "")
    user = ctx.query.get("userid", "")
    if (action and not action.isascii()) or (user and not is_digits(user)):
        return BAD_REQUEST
    items = [
        item
        for actor, kind, item in _HISTORIES.get(found.id, ())
        if (not action or kind == _action(action)) and (not user or actor == int(user))
    ]
    disc = f"auditlog:{found.id}:{action}:{user}"
    return paginate(ctx, items, disc, bad_limit=AUDIT_BAD_PAGE, bad_cursor=AUDIT_BAD_PAGE)


def group_settings(ctx: Ctx) -> Reply:
    """GET apis /legacy-groups/v1/groups/{groupId}/settings (``GroupSettingsResponse``)."""
    found = _managed_group(ctx)
    if isinstance(found, Reply):
        return found
    return ok(
        {
            "isApprovalRequired": not found.public_entry,
            "isBuildersClubRequired": False,
            "areEnemiesAllowed": False,
            "areGroupFundsVisible": False,
            "areGroupGamesVisible": True,
            "isGroupNameChangeEnabled": True,
            "verificationLevel": 0,
            "accountTenureRequirement": 0,
            "slowmode": 0,
            "isMemberListVisibleToPublic": True,
            "isAutoAssignRoleDisabled": False,
        }
    )


def _cloud(pattern: str, handler: Handler) -> Route:
    return Route("apis", "GET", pattern, handler, too_many=CLOUD_RATE_LIMITED)


ROUTES = [
    _cloud("/cloud/v2/users/{userId}", user),
    _cloud("/cloud/v2/users/{userId}:generateThumbnail", generate_thumbnail),
    _cloud("/cloud/v2/users/{userId}/operations/{operationId}", user_operation),
    _cloud("/cloud/v2/groups/{groupId}", group),
    _cloud("/cloud/v2/groups/{groupId}/memberships", memberships),
    _cloud("/cloud/v2/groups/{groupId}/roles", roles),
    _cloud("/cloud/v2/groups/{groupId}/roles/{roleId}", role),
    _cloud("/cloud/v2/universes/{universeId}", universe),
    _cloud("/cloud/v2/universes/{universeId}/places/{placeId}", place),
    _cloud("/legacy-groups/v1/groups/{groupId}/audit-log", group_audit_log),
    _cloud("/legacy-groups/v1/groups/{groupId}/settings", group_settings),
]
