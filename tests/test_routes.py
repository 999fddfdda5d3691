"""Every shipped clean route end to end: proxy app → bundled fake Roblox → normalized answer.

One table row per request: the clean URL a client sends, the upstream call the fake must
receive (method, service, path, query pairs in order, JSON body) and a partial picture of the
normalized answer. A meta-test fails when a rule in ``rules/*.yaml`` has no row here, so a
new rule cannot ship without an end-to-end test; it prints the row to add, built from the
rule (and that suggestion is itself run for every shipped route).
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bloxproxy.config import shipped_rules_dir
from bloxproxy.fake import PENDING_THUMBNAIL_USER_ID, FakeRoblox
from bloxproxy.fake.app import ROUTER
from bloxproxy.fake.data import GROUPS
from bloxproxy.fake.state import viewer_tag
from bloxproxy.params import Param
from bloxproxy.rules import Route, RuleSet, load_rules

Client = TestClient[web.Request, web.Application]

ROCAMPING = 1685831367  # universe, place 4922741943
SELFIE = 3531439676
MIGHTYPART = 45348281
SNAKE_KEY = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


class _AnyCursor:
    """Matches a non-empty cursor string."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and other != ""

    def __repr__(self) -> str:
        return "<any cursor>"


CURSOR: Any = _AnyCursor()


class StartsWith:
    """Matches a string with this prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and other.startswith(self.prefix)

    def __repr__(self) -> str:
        return f"<a string starting {self.prefix!r}>"


def page(
    items: list[Any] | None = None, *, n: int | None = None, next_: Any = None, previous: Any = None
) -> dict[str, Any]:
    """The expected list envelope; ``items`` is a partial picture, ``n`` only a length."""
    out: dict[str, Any] = {"next_cursor": next_, "previous_cursor": previous}
    if items is not None:
        out["data"] = items
    if n is not None:
        out["_len"] = n
    return out


@dataclass(frozen=True)
class Case:
    route_id: str
    url: str
    method: str
    service: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    body: Any = None  # the JSON body upstream, None: no body
    expect: Any = field(default_factory=dict)  # partial picture of the normalized answer

    def __str__(self) -> str:
        return f"{self.route_id}:{self.url}"


LIST_Q = (("limit", "10"), ("sortOrder", "Asc"))
CDN = StartsWith("https://tr.rbxcdn.com/")
KEYED = {"x-api-key": "e2e-key"}  # what a client of an Open Cloud route (api_key) sends

CASES = [
    # -- users ----------------------------------------------------------------------------------
    Case(
        "users.get",
        "/v1/users/156",
        "GET",
        "users",
        "/v1/users/156",
        expect={
            "id": 156,
            "name": "builderman",
            "display_name": "builderman",
            "has_verified_badge": True,
            "is_banned": False,
            "external_app_display_name": None,
        },
    ),
    Case(
        "users.batch",
        "/v1/users?ids=156,1",
        "POST",
        "users",
        "/v1/users",
        body={"userIds": [1, 156], "excludeBannedUsers": False},
        expect=page([{"id": 156, "name": "builderman"}, {"id": 1, "name": "Roblox"}]),
    ),
    Case(
        "users.batch",
        "/v1/users?ids=1&exclude_banned=true",
        "POST",
        "users",
        "/v1/users",
        body={"userIds": [1], "excludeBannedUsers": True},
        expect=page([{"id": 1, "display_name": "Roblox"}]),
    ),
    Case(
        "users.by_username",
        "/v1/users/by-username/builderman",
        "POST",
        "users",
        "/v1/usernames/users",
        body={"usernames": ["builderman"], "excludeBannedUsers": False},
        expect={"id": 156, "name": "builderman", "requested_username": "builderman"},
    ),
    Case(
        "users.by_username",
        "/v1/users/by-username/parrrty",
        "POST",
        "users",
        "/v1/usernames/users",
        body={"usernames": ["parrrty"], "excludeBannedUsers": False},
        expect={"id": MIGHTYPART, "name": "MightyPart", "requested_username": "parrrty"},
    ),
    Case(
        "users.search",
        "/v1/users/search?keyword=MightyPart",
        "GET",
        "users",
        "/v1/users/search",
        (("keyword", "MightyPart"), ("limit", "10")),
        expect=page(
            [
                {
                    "id": MIGHTYPART,
                    "name": "MightyPart",
                    "previous_usernames": ["parrrty", "NamelessGuy2005"],
                },
                *[{}] * 9,
            ],
            next_=None,
        ),
    ),
    Case(
        "users.username_history",
        f"/v1/users/{MIGHTYPART}/username-history",
        "GET",
        "users",
        f"/v1/users/{MIGHTYPART}/username-history",
        LIST_Q,
        expect=page([{"name": "NamelessGuy2005"}, {"name": "parrrty"}]),
    ),
    Case(
        "users.username_history",
        f"/v1/users/{MIGHTYPART}/username-history?limit=25&sort_order=Desc",
        "GET",
        "users",
        f"/v1/users/{MIGHTYPART}/username-history",
        (("limit", "25"), ("sortOrder", "Desc")),
        expect=page([{"name": "parrrty"}, {"name": "NamelessGuy2005"}]),
    ),
    # -- friends --------------------------------------------------------------------------------
    Case(
        "friends.count",
        f"/v1/users/{MIGHTYPART}/friends/count",
        "GET",
        "friends",
        f"/v1/users/{MIGHTYPART}/friends/count",
        expect={"count": 47},
    ),
    Case(
        "friends.followers_count",
        f"/v1/users/{MIGHTYPART}/followers/count",
        "GET",
        "friends",
        f"/v1/users/{MIGHTYPART}/followers/count",
        expect={"count": 510},
    ),
    Case(
        "friends.followings_count",
        f"/v1/users/{MIGHTYPART}/followings/count",
        "GET",
        "friends",
        f"/v1/users/{MIGHTYPART}/followings/count",
        expect={"count": 337},
    ),
    Case(
        "friends.list",
        f"/v1/users/{MIGHTYPART}/friends",
        "GET",
        "friends",
        f"/v1/users/{MIGHTYPART}/friends",
        expect=page([{"id": 3_000_000, "name": "User3000000", "is_online": False}], n=47),
    ),
    # -- presence -------------------------------------------------------------------------------
    Case(
        "presence.batch",
        f"/v1/presence?ids={MIGHTYPART},156",
        "POST",
        "presence",
        "/v1/presence/users",
        body={"userIds": [156, MIGHTYPART]},
        expect=page(
            [
                {
                    "user_id": MIGHTYPART,
                    "user_presence_type": 2,
                    "universe_id": ROCAMPING,
                    "last_location": "RoCamping",
                },
                {"user_id": 156, "user_presence_type": 1},
            ]
        ),
    ),
    # -- groups ---------------------------------------------------------------------------------
    Case(
        "groups.get",
        "/v1/groups/7",
        "GET",
        "groups",
        "/v1/groups/7",
        expect={
            "id": 7,
            "name": "Roblox Builders",
            "member_count": 137,
            "owner": {"user_id": 1, "username": "Roblox"},
            "public_entry_allowed": True,
        },
    ),
    Case(
        "groups.batch",
        "/v1/groups?ids=5850082,7",
        "GET",
        "groups",
        "/v2/groups",
        (("groupIds", "7,5850082"),),
        expect=page(
            [
                {
                    "id": 5850082,
                    "name": "MightyPart Games",
                    "owner": {"id": MIGHTYPART, "type": "User"},
                },
                {"id": 7, "name": "Roblox Builders"},
            ]
        ),
    ),
    Case(
        "groups.roles",
        "/v1/groups/7/roles",
        "GET",
        "groups",
        "/v1/groups/7/roles",
        expect=page(
            [
                {"id": 1007, "name": "Guest", "member_count": 0},
                {"id": 1008, "name": "Member", "rank": 1, "member_count": 136},
                {"id": 1009, "name": "Owner", "rank": 255, "member_count": 1},
            ]
        ),
    ),
    Case(
        "groups.members",
        "/v1/groups/7/members",
        "GET",
        "groups",
        "/v1/groups/7/users",
        LIST_Q,
        expect=page(
            [
                {
                    "user": {"user_id": 1, "username": "Roblox"},
                    "role": {"name": "Owner", "rank": 255},
                }
            ],
            n=10,
            next_=CURSOR,
        ),
    ),
    Case(
        "groups.primary_of_user",
        f"/v1/users/{MIGHTYPART}/groups/primary",
        "GET",
        "groups",
        f"/v1/users/{MIGHTYPART}/groups/primary/role",
        expect={
            "group": {"id": 5850082, "name": "MightyPart Games", "member_count": 102},
            "role": {"id": 38353811, "name": "Owner", "rank": 255},
        },
    ),
    Case(
        "groups.of_user",
        f"/v1/users/{MIGHTYPART}/groups",
        "GET",
        "groups",
        f"/v1/users/{MIGHTYPART}/groups/roles",
        expect=page(
            [
                {
                    "group": {"id": 5850082, "member_count": 102},
                    "role": {"name": "Owner", "rank": 255},
                }
            ]
        ),
    ),
    # -- games / universes ------------------------------------------------------------------------
    Case(
        "games.universes",
        f"/v1/universes?ids={SELFIE},{ROCAMPING}",
        "GET",
        "games",
        "/v1/games",
        (("universeIds", f"{ROCAMPING},{SELFIE}"),),
        expect=page(
            [
                {
                    "id": SELFIE,
                    "name": "Selfie Mode Demo",
                    "root_place_id": 9468764549,
                    "creator": {"type": "Group", "is_rnv_account": False},
                },
                {"id": ROCAMPING, "name": "RoCamping", "max_players": 12},
            ]
        ),
    ),
    Case(
        "games.universe_of_place",
        "/v1/places/4922741943/universe",
        "GET",
        "apis",
        "/universes/v1/places/4922741943/universe",
        expect={"universe_id": ROCAMPING},
    ),
    Case(
        "games.votes",
        f"/v1/universes/{ROCAMPING}/votes",
        "GET",
        "games",
        "/v1/games/votes",
        (("universeIds", str(ROCAMPING)),),
        expect={"id": ROCAMPING, "up_votes": 78, "down_votes": 14},
    ),
    Case(
        "games.game_passes",
        f"/v1/universes/{ROCAMPING}/game-passes",
        "GET",
        "games",
        f"/v1/games/{ROCAMPING}/game-passes",
        LIST_Q,
        expect=page(
            [
                {
                    "id": 9063647,
                    "name": "Campers Club",
                    "product_id": 975542678,
                    "price": 350,
                    "is_owned": True,
                }
            ],
            n=10,
        ),
    ),
    Case(
        "develop.universe",
        f"/v1/universes/{ROCAMPING}",
        "GET",
        "develop",
        f"/v1/universes/{ROCAMPING}",
        expect={
            "id": ROCAMPING,
            "root_place_id": 4922741943,
            "creator_type": "Group",
            "creator_target_id": 5850082,
            "privacy_type": "Public",
        },
    ),
    # -- badges ---------------------------------------------------------------------------------
    Case(
        "badges.get",
        "/v1/badges/2124533401",
        "GET",
        "badges",
        "/v1/badges/2124533401",
        expect={
            "id": 2124533401,
            "name": "Tutorial Done",
            "statistics": {"awarded_count": 394, "win_rate_percentage": 0},
            "awarding_universe": {"id": ROCAMPING, "root_place_id": 4922741943},
        },
    ),
    Case(
        "badges.of_universe",
        f"/v1/universes/{ROCAMPING}/badges",
        "GET",
        "badges",
        f"/v1/universes/{ROCAMPING}/badges",
        LIST_Q,
        expect=page([{"id": 2124533401, "display_name": "Tutorial Done"}], n=10, next_=CURSOR),
    ),
    Case(
        "badges.of_universe",
        f"/v1/universes/{ROCAMPING}/badges?limit=50&sort_by=DateCreated&sort_order=Desc",
        "GET",
        "badges",
        f"/v1/universes/{ROCAMPING}/badges",
        (("limit", "50"), ("sortOrder", "Desc"), ("sortBy", "DateCreated")),
        expect=page(n=25),
    ),
    Case(
        "badges.of_user",
        f"/v1/users/{MIGHTYPART}/badges",
        "GET",
        "badges",
        f"/v1/users/{MIGHTYPART}/badges",
        LIST_Q,
        expect=page(
            [
                {"id": 2124533401},
                {"id": 2124533402},
                {"id": 2124533403},
                {"id": 2124533404},
                {"id": 2124533405},
            ]
        ),
    ),
    # -- thumbnails -----------------------------------------------------------------------------
    Case(
        "thumbnails.user_headshots",
        "/v1/thumbnails/users/headshots?ids=156,1",
        "GET",
        "thumbnails",
        "/v1/users/avatar-headshot",
        (("userIds", "1,156"), ("size", "150x150"), ("format", "Png"), ("isCircular", "false")),
        expect=page(
            [{"target_id": 156, "state": "Completed"}, {"target_id": 1, "state": "Completed"}]
        ),
    ),
    Case(
        "thumbnails.user_headshots",
        "/v1/thumbnails/users/headshots?ids=1&size=420x420&format=Webp&is_circular=true",
        "GET",
        "thumbnails",
        "/v1/users/avatar-headshot",
        (("userIds", "1"), ("size", "420x420"), ("format", "Webp"), ("isCircular", "true")),
        expect=page([{"target_id": 1, "state": "Completed"}]),
    ),
    Case(
        "thumbnails.universe_icons",
        f"/v1/thumbnails/universes/icons?ids={SELFIE},{ROCAMPING}",
        "GET",
        "thumbnails",
        "/v1/games/icons",
        (
            ("universeIds", f"{ROCAMPING},{SELFIE}"),
            ("size", "150x150"),
            ("format", "Png"),
            ("isCircular", "false"),
            ("returnPolicy", "PlaceHolder"),
        ),
        expect=page(
            [
                {"target_id": SELFIE, "state": "Completed"},
                {"target_id": ROCAMPING, "state": "Completed"},
            ]
        ),
    ),
    # -- avatar, assets -------------------------------------------------------------------------
    Case(
        "avatar.of_user",
        "/v1/users/156/avatar",
        "GET",
        "avatar",
        "/v1/users/156/avatar",
        expect={
            "player_avatar_type": "R15",
            "scales": {"body_type": 0.0},
            "body_colors": {"head_color_id": 1001},
            "emotes": [],
        },
    ),
    Case(
        "assets.get",
        "/v1/assets/1365767",
        "GET",
        "economy",
        "/v2/assets/1365767/details",
        expect={
            "asset_id": 1365767,
            "name": "Valkyrie Helm",
            "asset_type_id": 8,
            "price_in_robux": None,
            "is_limited": True,
            "creator": {"creator_type": "User", "creator_target_id": 1},
        },
    ),
    # -- images: 302 to the CDN ------------------------------------------------------------
    Case(
        "thumbnails.user_headshot_image",
        "/v1/users/156/avatar-headshot.png",
        "GET",
        "thumbnails",
        "/v1/users/avatar-headshot",
        (("userIds", "156"), ("size", "150x150"), ("format", "Png"), ("isCircular", "false")),
        expect={"location": "https://tr.rbxcdn.com"},
    ),
    Case(
        "thumbnails.user_bust_image",
        "/v1/users/156/avatar-bust.png?size=420x420&circular=true",
        "GET",
        "thumbnails",
        "/v1/users/avatar-bust",
        (("userIds", "156"), ("size", "420x420"), ("format", "Png"), ("isCircular", "true")),
        expect={"location": "https://tr.rbxcdn.com"},
    ),
    Case(
        "thumbnails.user_avatar_image",
        "/v1/users/156/avatar.png",
        "GET",
        "thumbnails",
        "/v1/users/avatar",
        (("userIds", "156"), ("size", "150x150"), ("format", "Png"), ("isCircular", "false")),
        expect={"location": "https://tr.rbxcdn.com"},
    ),
    Case(
        "thumbnails.group_icon_image",
        "/v1/groups/7/icon.png",
        "GET",
        "thumbnails",
        "/v1/groups/icons",
        (("groupIds", "7"), ("size", "150x150"), ("format", "Png"), ("isCircular", "false")),
        expect={"location": "https://tr.rbxcdn.com"},
    ),
    Case(
        "thumbnails.universe_icon_image",
        "/v1/universes/1685831367/icon.png",
        "GET",
        "thumbnails",
        "/v1/games/icons",
        (
            ("universeIds", "1685831367"),
            ("size", "150x150"),
            ("format", "Png"),
            ("isCircular", "false"),
            ("returnPolicy", "PlaceHolder"),
        ),
        expect={"location": "https://tr.rbxcdn.com"},
    ),
    # -- Open Cloud (rules/opencloud.yaml; the client's own x-api-key: see KEYED) -------------
    Case(
        "opencloud.user",
        "/v2/cloud/users/156",
        "GET",
        "apis",
        "/cloud/v2/users/156",
        expect={
            "path": "users/156",
            "id": "156",
            "name": "builderman",
            "display_name": "builderman",
        },
    ),
    Case(
        "opencloud.user_thumbnail",
        "/v2/cloud/users/156/thumbnail?size=150&shape=SQUARE",
        "GET",
        "apis",
        "/cloud/v2/users/156:generateThumbnail",
        (("size", "150"), ("format", "PNG"), ("shape", "SQUARE")),
        expect={"image_uri": CDN},
    ),
    Case(
        "opencloud.group",
        "/v2/cloud/groups/7",
        "GET",
        "apis",
        "/cloud/v2/groups/7",
        expect={"path": "groups/7", "display_name": "Roblox Builders", "owner": "users/1"},
    ),
    Case(
        "opencloud.group_memberships",
        "/v2/cloud/groups/7/memberships?limit=2",
        "GET",
        "apis",
        "/cloud/v2/groups/7/memberships",
        (("maxPageSize", "2"),),
        expect=page(
            [
                {
                    "path": "groups/7/memberships/1",
                    "user": "users/1",
                    "role": "groups/7/roles/1009",
                },
                {"user": "users/1000000", "role": "groups/7/roles/1008"},
            ],
            n=2,
            next_=CURSOR,
        ),
    ),
    Case(
        "opencloud.group_member",
        "/v2/cloud/groups/7/members/1000005",
        "GET",
        "apis",
        "/cloud/v2/groups/7/memberships",
        (("maxPageSize", "1"), ("filter", "user == 'users/1000005'")),
        expect={"user": "users/1000005", "role": "groups/7/roles/1008"},
    ),
    Case(
        "opencloud.group_roles",
        "/v2/cloud/groups/7/roles",
        "GET",
        "apis",
        "/cloud/v2/groups/7/roles",
        (("maxPageSize", "10"),),
        expect=page(
            [
                {"path": "groups/7/roles/1007", "display_name": "Guest", "rank": 0},
                {"id": "1008", "display_name": "Member", "member_count": 136},
                {"id": "1009", "display_name": "Owner", "rank": 255, "member_count": 1},
            ],
            n=3,
        ),
    ),
    Case(
        "opencloud.group_role",
        "/v2/cloud/groups/7/roles/1008",
        "GET",
        "apis",
        "/cloud/v2/groups/7/roles/1008",
        expect={"path": "groups/7/roles/1008", "display_name": "Member", "rank": 1},
    ),
    Case(
        "opencloud.universe",
        "/v2/cloud/universes/1685831367",
        "GET",
        "apis",
        "/cloud/v2/universes/1685831367",
        expect={"path": "universes/1685831367", "visibility": "PUBLIC"},
    ),
    Case(
        "opencloud.place",
        "/v2/cloud/universes/1685831367/places/4922741943",
        "GET",
        "apis",
        "/cloud/v2/universes/1685831367/places/4922741943",
        expect={"path": "universes/1685831367/places/4922741943"},
    ),
    Case(
        "opencloud.group_audit_log",
        "/v1/cloud/groups/7/audit-log?action_type=ChangeRank&user_id=1&limit=25",
        "GET",
        "apis",
        "/legacy-groups/v1/groups/7/audit-log",
        (("limit", "25"), ("sortOrder", "Asc"), ("actionType", "ChangeRank"), ("userId", "1")),
        expect=page(
            [
                {
                    "actor": {
                        "user": {"user_id": 1, "username": "Roblox"},
                        "role": {"id": 1009, "rank": 255},
                    },
                    "action_type": "Change Rank",
                    "description": {"target_id": 1000001, "new_role_set_id": 1008},
                    "created": "2024-01-02T12:00:00Z",
                }
            ],
            n=10,
        ),
    ),
    Case(
        "opencloud.group_settings",
        "/v1/cloud/groups/7/settings",
        "GET",
        "apis",
        "/legacy-groups/v1/groups/7/settings",
        expect={"is_approval_required": False, "slowmode": 0},
    ),
]


@pytest.fixture(scope="module")
def shipped_rules() -> RuleSet:
    return load_rules([shipped_rules_dir()])


# -- helpers ---------------------------------------------------------------------------------------


def assert_matches(actual: Any, expected: Any, where: str = "$") -> None:
    """``expected`` is a partial picture: dict keys it names must match (others may exist);
    lists match item by item; a ``_len`` key checks the length of ``data``."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for key, value in expected.items():
            if key == "_len":
                assert len(actual["data"]) == value, f"{where}.data: length"
                continue
            assert key in actual, f"{where}: no key {key!r} in {sorted(actual)}"
            assert_matches(actual[key], value, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: expected a list, got {actual!r}"
        assert len(actual) >= len(expected), f"{where}: {len(actual)} items, too short"
        for i, value in enumerate(expected):
            assert_matches(actual[i], value, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def assert_snake_case(value: Any, where: str = "$") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert SNAKE_KEY.match(key), f"{where}: key {key!r} is not snake_case"
            assert_snake_case(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            assert_snake_case(item, f"{where}[{i}]")


async def get_json(client: Client, url: str, **kw: Any) -> Any:
    async with client.get(url, **kw) as resp:
        body = await resp.read()
        assert resp.status == 200, body
        assert resp.content_type == "application/json"
        return orjson.loads(body)


async def get_problem(client: Client, url: str, status: int) -> dict[str, Any]:
    async with client.get(url) as resp:
        body = await resp.read()
        assert resp.status == status, body
        assert resp.content_type == "application/problem+json"
        problem: dict[str, Any] = orjson.loads(body)
        assert problem["status"] == status
        assert problem["request_id"] == resp.headers["X-Request-ID"]
        assert problem["instance"] == urlsplit(url).path
        return problem


def last_upstream(fake: FakeRoblox) -> tuple[str, str, str, tuple[tuple[str, str], ...], Any]:
    assert fake.requests, "no upstream request reached the fake"
    r = fake.requests[-1]
    return r.method, r.service, r.path, r.query, orjson.loads(r.body) if r.body else None


# -- the table -------------------------------------------------------------------------------------


def test_every_shipped_route_has_an_end_to_end_case(shipped_rules: RuleSet) -> None:
    covered = {c.route_id for c in CASES}
    missing = [r for r in shipped_rules.routes if r.id not in covered]
    if missing:
        pytest.fail(
            f"{len(missing)} rule(s) in rules/ without an end-to-end case: add to CASES in "
            "tests/test_routes.py (the URL is built from the parameters' examples, the "
            "upstream request is what the rule makes of it; fill in `expect`):\n\n"
            + "\n".join(case_source(r) for r in missing),
            pytrace=False,
        )
    unknown = covered - {r.id for r in shipped_rules.routes}
    assert not unknown, f"CASES rows for routes no rule in rules/ defines: {sorted(unknown)}"


def _example(p: Param) -> Any:
    if p.example is not None:
        return p.example
    return {"int": 1, "int_list": (1,), "bool": False}.get(p.type, "x")


def _text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def suggested_case(r: Route) -> Case:
    """The CASES row a new route needs, built from its rule: the URL sends the path
    parameters and required query parameters (their examples), the upstream request is what
    the rule makes of that; ``expect`` is left to fill in."""
    sent = [p for p in (*r.path_params, *r.query_params) if p.required]
    values = {p.name: p.default for p in r.query_params} | {p.name: _example(p) for p in sent}
    url = r.endpoint
    for p in r.path_params:
        url = url.replace(f"{{{p.name}}}", _text(values[p.name]))
    query = "&".join(f"{p.name}={_text(values[p.name])}" for p in sent if p.location == "query")
    url += f"?{query}" if query else ""
    if r.order_param and values.get(r.order_param):
        values[r.order_param] = tuple(sorted(values[r.order_param]))
    b = r.backend
    return Case(
        r.id,
        url,
        b.method,
        b.service,
        b.path.render(values),
        tuple(b.query.render(values)),
        body=b.body(values) if b.body is not None else None,
    )


def fake_serves(case: Case) -> bool:
    return (
        ROUTER.match(case.service, case.method, [s for s in case.path.split("/") if s]) is not None
    )


def case_source(r: Route) -> str:
    """:func:`suggested_case` as the code to paste into CASES."""
    case = suggested_case(r)
    lines = [
        f"    # {r.id} ({r.where}): {r.summary}",
        "    Case(",
        *(f"        {v!r}," for v in (case.route_id, case.url, case.method, case.service)),
        f"        {case.path!r},",
        *([f"        {case.query!r},"] if case.query else []),
        *([f"        body={case.body!r},"] if case.body is not None else []),
        "        expect={},  # a partial picture of the normalized answer",
        "    ),",
    ]
    if not fake_serves(case):
        lines.append(
            f"    # and the fake does not serve {case.method} {case.service} {case.path}: "
            "add a Route for it in bloxproxy/fake/routes_*.py"
        )
    return "\n".join(lines) + "\n"


SHIPPED = load_rules([shipped_rules_dir()])
SHIPPED_IDS = [r.id for r in SHIPPED.routes]


@pytest.mark.parametrize("route_id", SHIPPED_IDS)
async def test_the_suggested_case_of_every_shipped_route_passes(
    route_id: str, shipped_rules: RuleSet, proxy: Client, fake: FakeRoblox
) -> None:
    # What the meta-test above tells a contributor to paste must be right: here it is,
    # for every shipped route, run end to end (its `expect` left empty).
    r = shipped_rules.by_id(route_id)
    assert r is not None
    source = case_source(r)
    ast.parse(textwrap.dedent(source).rstrip().rstrip(","))
    assert "the fake does not serve" not in source
    await test_route_end_to_end(suggested_case(r), proxy, fake)


def test_the_suggestion_names_a_missing_fake_route(tmp_path: Path) -> None:
    text = """\
        service: users
        routes:
          - id: users.nope
            endpoint: /v1/nope/{user_id}
            summary: Nothing the fake knows
            params: {user_id: {type: int, example: 156}}
            query: {ids: {type: int_list, required: true, example: [3, 1]}, n: {type: int}}
            backend:
              method: POST
              path: /v1/nope/{user_id}
              query: {n: "{n}", fixed: 1}
              body: {ids: "{ids}"}
            response: {order_by: id}
        """
    (tmp_path / "nope.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    (r,) = load_rules([tmp_path / "nope.yaml"]).routes
    assert case_source(r).splitlines()[1:] == [
        "    Case(",
        "        'users.nope',",
        "        '/v1/nope/156?ids=3,1',",
        "        'POST',",
        "        'users',",
        "        '/v1/nope/156',",
        "        (('fixed', '1'),),",
        "        body={'ids': [1, 3]},",
        "        expect={},  # a partial picture of the normalized answer",
        "    ),",
        "    # and the fake does not serve POST users /v1/nope/156: add a Route for it in "
        "bloxproxy/fake/routes_*.py",
    ]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_case_url_matches_its_route(case: Case, shipped_rules: RuleSet) -> None:
    # A row must exercise the route it claims, not a neighbour with a similar path.
    route, _, _ = shipped_rules.router.match("GET", urlsplit(case.url).path)
    assert route is not None and route.id == case.route_id


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_route_end_to_end(case: Case, proxy: Client, fake: FakeRoblox) -> None:
    route = SHIPPED.by_id(case.route_id)
    keyed = route is not None and route.backend.credentials == "api_key"
    fake.cloud.polls = 0  # an Open Cloud operation done at once (polling: tests/test_opencloud.py)
    if route is not None and route.redirect is not None:  # an image route: a 302 to the CDN
        async with proxy.get(case.url, allow_redirects=False) as resp:
            assert resp.status == 302, await resp.read()
            location = urlsplit(resp.headers["Location"])
            result: Any = {"location": f"{location.scheme}://{location.netloc}"}
    else:
        result = await get_json(proxy, case.url, headers=KEYED if keyed else None)
    if keyed:  # the caller's key went upstream, and the fake said whose answer it was
        assert fake.requests[-1].headers.get("x-api-key") == KEYED["x-api-key"]
        assert "cookie" not in fake.requests[-1].headers
        if isinstance(result, dict) and "_fake_viewer" in result:
            assert result.pop("_fake_viewer") == viewer_tag(KEYED["x-api-key"])

    assert fake.total == 1, fake.counts()
    method, service, path, query, body = last_upstream(fake)
    assert (method, service, path) == (case.method, case.service, case.path)
    assert query == case.query
    assert body == case.body
    if case.body is not None:
        assert fake.requests[-1].headers["content-type"] == "application/json"

    assert_snake_case(result)
    if isinstance(result, dict) and "data" in result:
        assert set(result) == {"data", "next_cursor", "previous_cursor"}
        assert isinstance(result["data"], list)
    assert_matches(result, case.expect)


# -- batches: one canonical upstream call, the client's order back ---------------------------------


async def test_users_batch_comma_and_repeated_ids_share_one_sorted_upstream_call(
    proxy: Client, fake: FakeRoblox
) -> None:
    comma = await get_json(proxy, "/v1/users?ids=156,1")
    repeated = await get_json(proxy, "/v1/users?ids=156&ids=1")

    assert fake.count("users", "/v1/users", "POST") == 1
    assert fake.total == 1
    assert orjson.loads(fake.requests[-1].body)["userIds"] == [1, 156]
    assert [u["id"] for u in comma["data"]] == [156, 1]
    assert repeated == comma


async def test_users_batch_other_order_is_answered_in_its_own_order(
    proxy: Client, fake: FakeRoblox
) -> None:
    first = await get_json(proxy, "/v1/users?ids=156,1")
    second = await get_json(proxy, "/v1/users?ids=1,156")

    assert fake.total == 1  # one canonical upstream request (and cache entry)
    assert [u["id"] for u in first["data"]] == [156, 1]
    assert [u["id"] for u in second["data"]] == [1, 156]


async def test_users_batch_unknown_ids_are_left_out(proxy: Client, fake: FakeRoblox) -> None:
    result = await get_json(proxy, "/v1/users?ids=4,156,3")
    assert [u["id"] for u in result["data"]] == [156]
    assert orjson.loads(fake.requests[-1].body)["userIds"] == [3, 4, 156]


async def test_thumbnails_out_of_order_upstream_come_back_in_requested_order(
    proxy: Client, fake: FakeRoblox
) -> None:
    # The fake answers thumbnail batches in reverse order of the upstream ids (1,2,156 →
    # 156,2,1), which is neither the sorted nor the requested order 2,156,1.
    result = await get_json(proxy, "/v1/thumbnails/users/headshots?ids=2,156,1")

    assert dict(fake.requests[-1].query)["userIds"] == "1,2,156"
    assert [t["target_id"] for t in result["data"]] == [2, 156, 1]
    pending = result["data"][0]
    assert pending == {
        "target_id": PENDING_THUMBNAIL_USER_ID,
        "state": "Pending",
        "image_url": None,
    }
    for done in result["data"][1:]:
        assert done["state"] == "Completed"
        assert done["image_url"].startswith("https://tr.rbxcdn.com/")


# -- pagination ------------------------------------------------------------------------------------


async def test_group_members_walk_to_the_end(proxy: Client, fake: FakeRoblox) -> None:
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "25"}
        if cursor is not None:
            params["cursor"] = cursor
        result = await get_json(proxy, "/v1/groups/7/members", params=params)
        pages += 1
        assert len(result["data"]) <= 25
        if pages == 1:
            assert result["previous_cursor"] is None
        else:
            assert isinstance(result["previous_cursor"], str) and result["previous_cursor"]
        seen.extend(m["user"]["user_id"] for m in result["data"])
        # the client's cursor goes upstream as it was given
        assert dict(fake.requests[-1].query).get("cursor") == cursor
        cursor = result["next_cursor"]
        if cursor is None:
            break
        assert pages < 10, "the walk does not end"

    expected = [uid for uid, _ in GROUPS[7].members]
    assert len(seen) == 137 == len(set(seen))
    assert seen == expected
    assert pages == 6 == fake.count("groups", "/v1/groups/7/users")


async def test_group_members_previous_cursor_goes_back(proxy: Client) -> None:
    first = await get_json(proxy, "/v1/groups/7/members?limit=10")
    second = await get_json(
        proxy, "/v1/groups/7/members", params={"limit": "10", "cursor": first["next_cursor"]}
    )
    back = await get_json(
        proxy, "/v1/groups/7/members", params={"limit": "10", "cursor": second["previous_cursor"]}
    )
    assert back["data"] == first["data"]
    assert second["data"] != first["data"]


# -- not found -------------------------------------------------------------------------------------


async def test_unknown_user_is_404_with_roblox_errors(proxy: Client, fake: FakeRoblox) -> None:
    problem = await get_problem(proxy, "/v1/users/4", 404)
    assert problem["upstream_status"] == 404
    assert problem["errors"] == [
        {
            "code": 3,
            "message": "The user id is invalid.",
            "userFacingMessage": "Something went wrong",
        }
    ]
    assert "The user id is invalid." in problem["detail"]
    assert fake.count("users", "/v1/users/4") == 1


async def test_a_user_without_a_primary_group_is_null(proxy: Client, fake: FakeRoblox) -> None:
    async with proxy.get("/v1/users/156/groups/primary") as resp:
        assert resp.status == 200
        assert await resp.read() == b"null"
    problem = await get_problem(proxy, "/v1/users/4/groups/primary", 404)  # unknown user
    assert problem["upstream_status"] == 400
    assert fake.count("groups", "/v1/users/4/groups/primary/role") == 1


async def test_friends_count_of_unknown_user_maps_400_to_404(
    proxy: Client, fake: FakeRoblox
) -> None:
    problem = await get_problem(proxy, "/v1/users/4/friends/count", 404)
    assert problem["upstream_status"] == 400
    assert problem["errors"][0]["code"] == 1
    assert fake.count("friends", "/v1/users/4/friends/count") == 1


async def test_unknown_place_universe_is_404_through_require(
    proxy: Client, fake: FakeRoblox
) -> None:
    # Roblox answers 200 {"universeId": null}; `require: [universeId]` turns it into a 404.
    problem = await get_problem(proxy, "/v1/places/1/universe", 404)
    assert problem["code"] == "not_found"
    assert "upstream_status" not in problem
    assert fake.count("apis", "/universes/v1/places/1/universe") == 1


async def test_username_that_matches_nobody_is_404(proxy: Client, fake: FakeRoblox) -> None:
    problem = await get_problem(proxy, "/v1/users/by-username/nobody_at_all", 404)
    assert problem["code"] == "not_found"
    assert fake.count("users", "/v1/usernames/users", "POST") == 1


async def test_votes_of_unknown_universe_is_404(proxy: Client) -> None:
    problem = await get_problem(proxy, "/v1/universes/999/votes", 404)
    assert problem["code"] == "not_found"


UNKNOWN_IDS = [
    "/v1/groups/8",
    "/v1/groups/8/roles",
    "/v1/groups/8/members",
    "/v1/users/4/groups",
    "/v1/users/4/avatar",
    "/v1/users/4/followers/count",
    "/v1/users/4/followings/count",
    "/v1/users/4/friends",
    "/v1/users/4/badges",
    "/v1/assets/1",
    "/v1/universes/999",
    "/v1/badges/1",
]


async def test_unknown_ids_are_404(
    proxy: Client, fake: FakeRoblox, subtests: pytest.Subtests
) -> None:
    for i, url in enumerate(UNKNOWN_IDS, 1):
        with subtests.test(url=url):
            problem = await get_problem(proxy, url, 404)
            assert problem["upstream_status"] in (400, 404)
            assert isinstance(problem["errors"], list) and problem["errors"]
            assert fake.total == i


async def test_not_found_answer_is_cached_and_repeated(proxy: Client, fake: FakeRoblox) -> None:
    first = await get_problem(proxy, "/v1/users/4/friends/count", 404)
    second = await get_problem(proxy, "/v1/users/4/friends/count", 404)
    assert fake.total == 1
    assert second["errors"] == first["errors"]
    assert second["request_id"] != first["request_id"]
