"""Fake groups, games, universes (apis), badges and develop endpoints.

Batch caps (official OpenAPI unless marked): games ``/v1/games?universeIds=`` at most 50
("Cannot exceed a maximum of 50 IDs."; 400 code 9), games votes 100 (openblox JSDoc),
groups ``/v2/groups?groupIds=`` 100 (guess: only code 2 "Too many ids in request." is
documented).  Unknown ids are left out of batch answers.  Synthetic groups and universes
(see :mod:`bloxproxy.fake.data` and :mod:`bloxproxy.fake.data_content`) answer everywhere
their named twins do.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from .common import (
    BAD_REQUEST,
    Ctx,
    JsonObj,
    Reply,
    Route,
    csv_ids,
    error,
    ok,
    paginate,
)
from .data import GROUPS, MEMBERSHIPS, Group, Mapped, Role, find_group, find_user, user_exists
from .data_content import (
    BADGES,
    GAME_PASSES,
    UNIVERSE_BADGES,
    USER_BADGES,
    find_develop_universe,
    find_game,
    find_votes,
    universe_exists,
    universe_of_place,
)

GROUP_INVALID = error(400, 1, "Group is invalid or does not exist.")
THE_GROUP_INVALID = error(400, 1, "The group is invalid or does not exist.")
GROUP_BAD_CURSOR = error(400, 36, "The pagination cursor is invalid.")
GROUP_USER_INVALID = error(400, 3, "The user is invalid or does not exist.")
GROUPS_TOO_MANY = error(400, 2, "Too many ids in request.")
GROUPS_UNPARSABLE = error(400, 3, "Ids could not be parsed from request.")
NO_UNIVERSES = error(400, 8, "No universe IDs were specified.")  # recorded message for code 8
TOO_MANY_UNIVERSES = error(400, 9, "Too many universe IDs were requested.")
GAMES_RATE_LIMITED = error(429, 4, "Too many requests have been made.", False)
BADGE_INVALID = error(404, 1, "Badge is invalid or does not exist.")
GAME_INVALID = error(404, 3, "The game is invalid or does not exist.")
BADGE_BAD_CURSOR = error(
    400, 26, "The pagination cursor is invalid or incompatible with the current request."
)
BADGE_USER_INVALID = error(404, 4, "User is invalid or does not exist.")  # guess
UNIVERSE_INVALID = error(400, 1, "The universe does not exist.")
MAX_V2_GROUP_IDS = 100  # guess: the catalog documents code 2 but no number
MAX_VOTE_IDS = 100


def _member_user(uid: int) -> JsonObj:
    user = find_user(uid)
    assert user is not None
    return {
        "hasVerifiedBadge": user.verified,
        "userId": user.id,
        "username": user.name,
        "displayName": user.display_name,
    }


def _role_brief(role: Role) -> JsonObj:
    return {"id": role.id, "name": role.name, "rank": role.rank}


def _group_info(group: Group) -> JsonObj:
    return {
        "id": group.id,
        "name": group.name,
        "description": group.description,
        "owner": None if group.owner_id is None else _member_user(group.owner_id),
        "shout": None,
        "memberCount": len(group.members),
        "isBuildersClubOnly": False,
        "publicEntryAllowed": group.public_entry,
        "hasVerifiedBadge": False,
    }


_GROUP_INFO = {gid: _group_info(g) for gid, g in GROUPS.items()}
_GROUP_INFO_BYTES = {gid: orjson.dumps(info) for gid, info in _GROUP_INFO.items()}


def _member(member: tuple[int, Role]) -> JsonObj:
    uid, role = member
    return {"user": _member_user(uid), "role": _role_brief(role)}


_GROUP_MEMBERS = {gid: tuple(_member(m) for m in g.members) for gid, g in GROUPS.items()}


def group_info(ctx: Ctx) -> Reply:
    """GET groups /v1/groups/{groupId}."""
    gid = ctx.params["groupId"]
    cached = _GROUP_INFO_BYTES.get(gid)
    if cached is not None:
        return Reply(200, cached)
    group = find_group(gid)
    return GROUP_INVALID if group is None else ok(_group_info(group))


def group_roles(ctx: Ctx) -> Reply:
    """GET groups /v1/groups/{groupId}/roles."""
    group = find_group(ctx.params["groupId"])
    if group is None:
        return THE_GROUP_INVALID
    roles = [
        {
            "id": role.id,
            "name": role.name,
            "description": role.description,
            "rank": role.rank,
            "memberCount": sum(1 for _, r in group.members if r == role),
        }
        for role in group.roles
    ]
    return ok({"groupId": group.id, "roles": roles})


def group_members(ctx: Ctx) -> Reply:
    """GET groups /v1/groups/{groupId}/users (paginated, owner first for Asc)."""
    gid = ctx.params["groupId"]
    members: Sequence[object] | None = _GROUP_MEMBERS.get(gid)
    if members is None:
        group = find_group(gid)
        if group is None:
            return THE_GROUP_INVALID
        members = Mapped(group.members, _member)  # large groups: one page made at a time
    return paginate(ctx, members, f"groupId:{gid}", bad_cursor=GROUP_BAD_CURSOR)


def user_group_roles(ctx: Ctx) -> Reply:
    """GET groups /v1/users/{userId}/groups/roles."""
    uid = ctx.params["userId"]
    if not user_exists(uid):
        return GROUP_USER_INVALID
    data = [
        {"group": _GROUP_INFO[gid], "role": _role_brief(role)}
        for gid, role in MEMBERSHIPS.get(uid, ())
    ]
    return ok({"data": data})


def user_primary_group(ctx: Ctx) -> Reply:
    """GET groups /v1/users/{userId}/groups/primary/role: ``{group, role}``, or ``null`` when
    the user has no primary group (guess: the fake takes a user's first group as primary)."""
    uid = ctx.params["userId"]
    if not user_exists(uid):
        return GROUP_USER_INVALID
    memberships = MEMBERSHIPS.get(uid)
    if not memberships:
        return ok(None)
    gid, role = memberships[0]
    return ok({"group": _GROUP_INFO[gid], "role": _role_brief(role)})


def groups_v2(ctx: Ctx) -> Reply:
    """GET groups /v2/groups?groupIds=1,2 (unknown ids omitted)."""
    ids = csv_ids(ctx.query.get("groupids"))
    if ids is None:
        return GROUPS_UNPARSABLE
    if len(ids) > MAX_V2_GROUP_IDS:
        return GROUPS_TOO_MANY
    data: list[JsonObj] = []
    for gid in dict.fromkeys(ids):
        group = find_group(gid)
        if group is not None:
            owner = None if group.owner_id is None else {"id": group.owner_id, "type": "User"}
            data.append(
                {
                    "id": group.id,
                    "name": group.name,
                    "description": group.description,
                    "owner": owner,
                    "created": group.created,
                    "hasVerifiedBadge": False,
                }
            )
    return ok({"data": data})


def _universe_ids(ctx: Ctx, limit: int) -> list[int] | Reply:
    ids = csv_ids(ctx.query.get("universeids"))
    if ids is None:
        return NO_UNIVERSES
    if len(ids) > limit:
        return TOO_MANY_UNIVERSES
    return list(dict.fromkeys(ids))


def games(ctx: Ctx) -> Reply:
    """GET games /v1/games?universeIds=a,b (at most 50; unknown ids omitted)."""
    ids = _universe_ids(ctx, 50)
    if isinstance(ids, Reply):
        return ids
    return ok({"data": [game for game in map(find_game, ids) if game is not None]})


def votes(ctx: Ctx) -> Reply:
    """GET games /v1/games/votes?universeIds= (at most 100; unknown ids omitted)."""
    ids = _universe_ids(ctx, MAX_VOTE_IDS)
    if isinstance(ids, Reply):
        return ids
    data: list[JsonObj] = []
    for uid in ids:
        found = find_votes(uid)
        if found is not None:
            data.append({"id": uid, "upVotes": found[0], "downVotes": found[1]})
    return ok({"data": data})


def game_passes(ctx: Ctx) -> Reply:
    """GET games /v1/games/{universeId}/game-passes (paginated; unknown universe: empty)."""
    uid = ctx.params["universeId"]
    return paginate(ctx, GAME_PASSES.get(uid, []), f"universeId:{uid}")


def place_universe(ctx: Ctx) -> Reply:
    """GET apis /universes/v1/places/{placeId}/universe -> ``{"universeId": N|null}``."""
    return ok({"universeId": universe_of_place(ctx.params["placeId"])})


def badge_info(ctx: Ctx) -> Reply:
    """GET badges /v1/badges/{badgeId}."""
    badge = BADGES.get(ctx.params["badgeId"])
    return BADGE_INVALID if badge is None else ok(badge)


_SORT_BY = {"rank": "Rank", "datecreated": "DateCreated"}


def universe_badges(ctx: Ctx) -> Reply:
    """GET badges /v1/universes/{universeId}/badges (paginated; sortBy Rank|DateCreated)."""
    uid = ctx.params["universeId"]
    ids = UNIVERSE_BADGES.get(uid)
    if ids is None:
        if not universe_exists(uid):
            return GAME_INVALID
        ids = []
    sort_by = _SORT_BY.get(ctx.query.get("sortby", "rank").lower())
    if sort_by is None:
        return BAD_REQUEST
    items = [BADGES[bid] for bid in ids]
    if sort_by == "DateCreated":
        items.sort(key=lambda b: str(b["created"]))
    disc = f"universeId:{uid}:{sort_by}"
    return paginate(ctx, items, disc, bad_cursor=BADGE_BAD_CURSOR)


def user_badges(ctx: Ctx) -> Reply:
    """GET badges /v1/users/{userId}/badges (paginated)."""
    uid = ctx.params["userId"]
    if not user_exists(uid):
        return BADGE_USER_INVALID
    items = [BADGES[bid] for bid in USER_BADGES.get(uid, ())]
    return paginate(ctx, items, f"userId:{uid}", bad_cursor=BADGE_BAD_CURSOR)


def develop_universe(ctx: Ctx) -> Reply:
    """GET develop /v1/universes/{universeId}."""
    universe = find_develop_universe(ctx.params["universeId"])
    return UNIVERSE_INVALID if universe is None else ok(universe)


ROUTES = [
    Route("groups", "GET", "/v1/groups/{groupId}", group_info),
    Route("groups", "GET", "/v1/groups/{groupId}/roles", group_roles),
    Route("groups", "GET", "/v1/groups/{groupId}/users", group_members),
    Route("groups", "GET", "/v1/users/{userId}/groups/roles", user_group_roles),
    Route("groups", "GET", "/v1/users/{userId}/groups/primary/role", user_primary_group),
    Route("groups", "GET", "/v2/groups", groups_v2),
    Route("games", "GET", "/v1/games", games, too_many=GAMES_RATE_LIMITED),
    Route("games", "GET", "/v1/games/votes", votes),
    Route("games", "GET", "/v1/games/{universeId}/game-passes", game_passes),
    Route("apis", "GET", "/universes/v1/places/{placeId}/universe", place_universe),
    Route("badges", "GET", "/v1/badges/{badgeId}", badge_info),
    Route("badges", "GET", "/v1/universes/{universeId}/badges", universe_badges),
    Route("badges", "GET", "/v1/users/{userId}/badges", user_badges),
    Route("develop", "GET", "/v1/universes/{universeId}", develop_universe),
]
