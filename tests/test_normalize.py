"""Tests for bloxproxy.normalize: path parsing, key casing and Plan application."""

from __future__ import annotations

import copy
from types import MappingProxyType
from typing import Any

import pytest

from bloxproxy.normalize import (
    MISSING,
    EmptyResult,
    FieldOps,
    OrderBy,
    Pagination,
    Path,
    Plan,
    ShapeError,
    apply,
    get_path,
    parse_path,
    to_camel,
    to_snake,
)

# --- realistic upstream bodies -----------------------------------------------------------------

USER_GET = {
    "description": "Welcome to the Roblox profile!",
    "created": "2006-02-27T21:06:40.3Z",
    "isBanned": False,
    "externalAppDisplayName": None,
    "hasVerifiedBadge": True,
    "id": 1,
    "name": "Roblox",
    "displayName": "Roblox",
}
USERS_POST = {
    "data": [
        {"hasVerifiedBadge": True, "id": 1, "name": "Roblox", "displayName": "Roblox"},
        {"hasVerifiedBadge": False, "id": 156, "name": "builderman", "displayName": "builderman"},
    ]
}
THUMBNAILS = {
    "data": [
        {"targetId": 3, "state": "Pending", "imageUrl": "", "version": "TN3"},
        {
            "targetId": 1,
            "state": "Completed",
            "imageUrl": "https://t1.rbxcdn.com/a",
            "version": "TN3",
        },
        {
            "targetId": 2,
            "state": "Blocked",
            "imageUrl": "https://t2.rbxcdn.com/b",
            "version": "TN3",
        },
    ]
}
GROUP_MEMBERS = {
    "previousPageCursor": None,
    "nextPageCursor": "abc",
    "data": [
        {
            "user": {"hasVerifiedBadge": False, "userId": 7, "username": "a", "displayName": "A"},
            "role": {"id": 11, "name": "Member", "rank": 1},
        },
        {
            "user": {"hasVerifiedBadge": True, "userId": 9, "username": "b", "displayName": "B"},
            "role": {"id": 12, "name": "Owner", "rank": 255},
        },
    ],
}
PRESENCE = {
    "userPresences": [
        {
            "userPresenceType": 2,
            "lastLocation": "Website",
            "placeId": None,
            "rootPlaceId": None,
            "gameId": None,
            "universeId": None,
            "userId": 2,
            "lastOnline": "2024-01-02T03:04:05.6Z",
        },
        {
            "userPresenceType": 0,
            "lastLocation": "",
            "placeId": None,
            "rootPlaceId": None,
            "gameId": None,
            "universeId": None,
            "userId": 1,
            "lastOnline": "2023-01-02T03:04:05.6Z",
        },
    ]
}
USERNAMES_POST = {
    "data": [
        {
            "requestedUsername": "roblox",
            "hasVerifiedBadge": True,
            "id": 1,
            "name": "Roblox",
            "displayName": "Roblox",
        }
    ]
}
CATALOG_ITEM = {"Name": "Hat", "PriceInRobux": 100, "IsLimitedUnique": True, "AssetId": 42}

PAGINATED = Pagination()

# --- parse_path / get_path ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        (".", ()),
        ("data", ("data",)),
        ("[0]", (0,)),
        ("data[0]", ("data", 0)),
        ("data[0].user", ("data", 0, "user")),
        ("data[12][3]", ("data", 12, 3)),
        ("userPresences", ("userPresences",)),
        ("a.b-c.$type", ("a", "b-c", "$type")),
        ("data.0", ("data", "0")),  # a dotted number is a key, not an index
        ("[0].user_id", (0, "user_id")),
    ],
)
def test_parse_path_good(text: str, expected: Path) -> None:
    assert parse_path(text) == expected


@pytest.mark.parametrize(
    ("text", "expected_in_message"),
    [
        ("data..x", "expected a key"),
        ("data[", "non-negative integer index"),
        ("data[-1]", "non-negative integer index"),
        ("data[01]", "non-negative integer index"),
        ("data[x]", "non-negative integer index"),
        ("a b", "expected a key"),
        (".data", "expected a key"),
        ("data.", "expected a key"),
        ("data[0]x", "expected a key"),
        ("data.[0]", "expected a key"),
        ("..", "expected a key"),
        ("data]", "expected a key"),
    ],
)
def test_parse_path_bad(text: str, expected_in_message: str) -> None:
    with pytest.raises(ValueError, match="invalid path") as info:
        parse_path(text)
    assert repr(text) in str(info.value)
    assert expected_in_message in str(info.value)


@pytest.mark.parametrize(
    ("value", "path", "expected"),
    [
        (USERS_POST, ("data", 1, "name"), "builderman"),
        (USERS_POST, (), USERS_POST),
        (USER_GET, ("externalAppDisplayName",), None),  # present null is not MISSING
        (USER_GET, ("nope",), MISSING),
        (USERS_POST, ("data", 2), MISSING),  # out of range
        (USERS_POST, ("data", "0"), MISSING),  # key into a list
        (USER_GET, (0,), MISSING),  # index into a dict
        (USER_GET, ("id", "x"), MISSING),  # key into an int
        ([10, 20], (1,), 20),
        ([10, 20], (-1,), MISSING),  # no Python-style negative indices
        (None, ("a",), MISSING),
    ],
)
def test_get_path(value: object, path: Path, expected: object) -> None:
    result = get_path(value, path)
    if expected is MISSING:
        assert result is MISSING
    else:
        assert result == expected


def test_missing_is_distinct_and_falsy() -> None:
    assert MISSING is not None
    assert not MISSING
    assert repr(MISSING) == "MISSING"


# --- key casing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("userId", "user_id"),
        ("previousPageCursor", "previous_page_cursor"),
        ("IsLimitedUnique", "is_limited_unique"),
        ("PriceInRobux", "price_in_robux"),
        ("HTMLCode", "html_code"),
        ("userIDs", "user_ids"),
        ("id", "id"),
        ("already_snake", "already_snake"),
        ("X", "x"),
        ("targetId", "target_id"),
        ("isRNVAccount", "is_rnv_account"),
        ("3DModel", "3d_model"),
        ("some-key", "some_key"),
        ("", ""),
        ("ID", "id"),
        ("UserID", "user_id"),
        ("URLsByID", "urls_by_id"),
        ("is3DModel", "is_3d_model"),
        ("thumbnail3D", "thumbnail_3d"),
        ("top10Games", "top10_games"),
        ("HTML5Parser", "html5_parser"),
        ("v2API", "v2_api"),
        ("R15Avatar", "r15_avatar"),
        ("10Games", "10games"),
        ("sha256", "sha256"),
        ("Foo_123", "foo_123"),
        ("_privateField", "_private_field"),
        ("__typename", "__typename"),
        ("a__b", "a__b"),
        ("Some Key", "some_key"),
        ("$typeName", "$type_name"),
        ("hasVerifiedBadge", "has_verified_badge"),
        ("externalAppDisplayName", "external_app_display_name"),
    ],
)
def test_to_snake(name: str, expected: str) -> None:
    assert to_snake(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("user_id", "userId"),
        ("previous_page_cursor", "previousPageCursor"),
        ("id", "id"),
        ("userId", "userId"),
        ("IsLimitedUnique", "isLimitedUnique"),
        ("HTMLCode", "htmlCode"),
        ("some-key", "someKey"),
        ("_private_field", "_privateField"),
        ("is_3d_model", "is3dModel"),
        ("", ""),
        ("_", "_"),
    ],
)
def test_to_camel(name: str, expected: str) -> None:
    assert to_camel(name) == expected


def test_casing_functions_are_cached() -> None:
    to_snake.cache_clear()
    to_snake("someCachedKey")
    to_snake("someCachedKey")
    assert to_snake.cache_info().hits >= 1
    assert hasattr(to_camel, "cache_info")


# --- apply: realistic routes -----------------------------------------------------------------


def test_user_get_object() -> None:
    assert apply(Plan(), USER_GET) == {
        "description": "Welcome to the Roblox profile!",
        "created": "2006-02-27T21:06:40.3Z",
        "is_banned": False,
        "external_app_display_name": None,
        "has_verified_badge": True,
        "id": 1,
        "name": "Roblox",
        "display_name": "Roblox",
    }


@pytest.mark.parametrize(
    ("requested", "expected_ids"),
    [
        ([156, 1], [156, 1]),
        (["156", "1"], [156, 1]),  # ids compare as strings
        ([1, 156], [1, 156]),
        ([156], [156, 1]),  # unrequested items follow
        ([999, 156], [156, 1]),  # unknown ids are ignored
        (None, [1, 156]),  # no-op without requested ids
        ([], [1, 156]),  # nothing requested: upstream order
    ],
)
def test_users_post_reordered(requested: list[object] | None, expected_ids: list[int]) -> None:
    plan = Plan(pick=("data",), order_by=OrderBy(key=("id",)))
    result = apply(plan, USERS_POST, requested)
    assert isinstance(result, dict)
    assert [u["id"] for u in result["data"]] == expected_ids
    assert result["data"][0].keys() == {"has_verified_badge", "id", "name", "display_name"}
    assert result["next_cursor"] is None and result["previous_cursor"] is None


@pytest.mark.parametrize(
    ("requested", "expected_ids"),
    [
        ([1, 2, 3], [1, 2, 3]),
        ([2, 1, 2], [2, 1, 3]),  # an id requested twice keeps its first position
        (["3", 1], [3, 1, 2]),
        ([2], [2, 3, 1]),  # unrequested 3 and 1 keep their relative order
    ],
)
def test_thumbnails_out_of_order(requested: list[object], expected_ids: list[int]) -> None:
    plan = Plan(pick=("data",), order_by=OrderBy(key=("targetId",)))
    result = apply(plan, THUMBNAILS, requested)
    assert isinstance(result, dict)
    assert [t["target_id"] for t in result["data"]] == expected_ids
    assert result["data"][0].keys() == {"target_id", "state", "image_url", "version"}


def test_order_by_key_is_read_before_renaming() -> None:
    plan = Plan(
        pick=("data",),
        order_by=OrderBy(key=("targetId",)),
        fields=FieldOps(rename={"targetId": "id"}, deny=frozenset({"version"})),
    )
    result = apply(plan, THUMBNAILS, [2, 1, 3])
    assert isinstance(result, dict)
    assert [t["id"] for t in result["data"]] == [2, 1, 3]
    assert "version" not in result["data"][0]


def test_order_by_items_without_the_key_go_last() -> None:
    body = {"data": [{"x": 1}, {"id": None}, {"id": 5}, 7]}
    plan = Plan(pick=("data",), order_by=OrderBy(key=("id",)), fields=FieldOps(case="keep"))
    result = apply(plan, body, [5, None])
    assert result == {
        "data": [{"id": 5}, {"x": 1}, {"id": None}, 7],
        "next_cursor": None,
        "previous_cursor": None,
    }


def test_order_by_ignored_for_objects() -> None:
    plan = Plan(order_by=OrderBy(key=("id",)))
    assert apply(plan, {"id": 1}, [2]) == {"id": 1}


def test_group_members_page_unwrapped() -> None:
    plan = Plan(pagination=PAGINATED, pick=("user",))
    assert apply(plan, GROUP_MEMBERS) == {
        "data": [
            {"has_verified_badge": False, "user_id": 7, "username": "a", "display_name": "A"},
            {"has_verified_badge": True, "user_id": 9, "username": "b", "display_name": "B"},
        ],
        "next_cursor": "abc",
        "previous_cursor": None,
    }


def test_group_members_page_nested_case_and_order() -> None:
    # the order_by key is read from the upstream element, before the per-item pick
    plan = Plan(pagination=PAGINATED, order_by=OrderBy(key=("user", "userId")))
    result = apply(plan, GROUP_MEMBERS, [9, 7])
    assert isinstance(result, dict)
    assert result["data"][0] == {
        "user": {"has_verified_badge": True, "user_id": 9, "username": "b", "display_name": "B"},
        "role": {"id": 12, "name": "Owner", "rank": 255},
    }
    assert result["data"][1]["user"]["user_id"] == 7


def test_pagination_pick_missing_in_item_gives_null() -> None:
    body = {"data": [{"user": {"id": 1}}, {"other": 2}, 3], "nextPageCursor": None}
    result = apply(Plan(pagination=PAGINATED, pick=("user",)), body)
    assert result == {"data": [{"id": 1}, None, None], "next_cursor": None, "previous_cursor": None}


@pytest.mark.parametrize(
    ("body", "pagination", "expected_next", "expected_prev"),
    [
        ({"data": [], "nextPageCursor": "", "previousPageCursor": ""}, PAGINATED, None, None),
        ({"data": []}, PAGINATED, None, None),
        ({"data": [], "nextPageCursor": "n", "previousPageCursor": "p"}, PAGINATED, "n", "p"),
        (
            {"items": [], "cursor": "n", "previousPageCursor": "ignored"},
            Pagination(items=("items",), next_cursor=("cursor",), previous_cursor=None),
            "n",
            None,
        ),
        (
            {"page": {"rows": [], "next": "n"}},
            Pagination(items=("page", "rows"), next_cursor=("page", "next")),
            "n",
            None,
        ),
    ],
)
def test_pagination_cursors(
    body: object, pagination: Pagination, expected_next: str | None, expected_prev: str | None
) -> None:
    result = apply(Plan(pagination=pagination), body)
    assert result == {"data": [], "next_cursor": expected_next, "previous_cursor": expected_prev}


def test_presence_picked_and_ordered() -> None:
    plan = Plan(pick=("userPresences",), order_by=OrderBy(key=("userId",)))
    result = apply(plan, PRESENCE, [1, 2])
    assert isinstance(result, dict)
    assert [p["user_id"] for p in result["data"]] == [1, 2]
    assert result["data"][1] == {
        "user_presence_type": 2,
        "last_location": "Website",
        "place_id": None,
        "root_place_id": None,
        "game_id": None,
        "universe_id": None,
        "user_id": 2,
        "last_online": "2024-01-02T03:04:05.6Z",
    }


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        (Plan(), {"universe_id": 5}),
        (Plan(shape="object"), {"universe_id": 5}),
        (Plan(pick=("universeId",)), {"value": 5}),
        (Plan(pick=("universeId",), shape="object"), {"value": 5}),
        (Plan(fields=FieldOps(case="keep")), {"universeId": 5}),
        (Plan(pick=("missing",)), None),
        (
            Plan(pick=("missing",), shape="list"),
            {"data": [], "next_cursor": None, "previous_cursor": None},
        ),
    ],
)
def test_universe_id(plan: Plan, expected: object) -> None:
    assert apply(plan, {"universeId": 5}) == expected


@pytest.mark.parametrize("owned", [True, False])
def test_bare_scalar_body_is_wrapped(owned: bool) -> None:
    # inventory is-owned answers a bare true/false; false is a value, not "empty"
    assert apply(Plan(empty_is_404=True), owned) == {"value": owned}


def test_bare_list_body_is_enveloped() -> None:
    result = apply(Plan(), [{"placeId": 1}, {"placeId": 2}])
    assert result == {
        "data": [{"place_id": 1}, {"place_id": 2}],
        "next_cursor": None,
        "previous_cursor": None,
    }


def test_username_post_first_element() -> None:
    plan = Plan(pick=("data", 0), empty_is_404=True)
    assert apply(plan, USERNAMES_POST) == {
        "requested_username": "roblox",
        "has_verified_badge": True,
        "id": 1,
        "name": "Roblox",
        "display_name": "Roblox",
    }


@pytest.mark.parametrize(
    ("plan", "body"),
    [
        (Plan(pick=("data", 0), empty_is_404=True), {"data": []}),
        (Plan(pick=("data",), empty_is_404=True), {"data": []}),
        (Plan(pick=("data",), empty_is_404=True), {}),
        (Plan(pick=("data",), empty_is_404=True), {"data": None}),
        (Plan(empty_is_404=True), {}),
        (Plan(empty_is_404=True), None),
        (Plan(pick=("userPresences",), empty_is_404=True, shape="list"), {}),
        (Plan(pagination=PAGINATED, empty_is_404=True), {"data": [], "nextPageCursor": None}),
        (Plan(pagination=PAGINATED, empty_is_404=True), {"data": [], "previousPageCursor": ""}),
        (
            Plan(pagination=Pagination(previous_cursor=None), empty_is_404=True),
            {"data": [], "previousPageCursor": "p"},  # no previous cursor upstream: first page
        ),
    ],
)
def test_empty_is_404_raises(plan: Plan, body: object) -> None:
    with pytest.raises(EmptyResult):
        apply(plan, body)


@pytest.mark.parametrize(
    ("plan", "body", "expected"),
    [
        (Plan(pick=("data", 0)), {"data": []}, None),
        (
            Plan(pick=("data",)),
            {"data": []},
            {"data": [], "next_cursor": None, "previous_cursor": None},
        ),
        (
            # a later empty page (there is a previous cursor) is not a 404
            Plan(pagination=PAGINATED, empty_is_404=True),
            {"data": [], "previousPageCursor": "p", "nextPageCursor": None},
            {"data": [], "next_cursor": None, "previous_cursor": "p"},
        ),
        (
            # filtering every key away does not turn a found object into a 404
            Plan(empty_is_404=True, fields=FieldOps(allow=frozenset({"nothing"}))),
            {"id": 1},
            {},
        ),
        (Plan(empty_is_404=True), {"value": 0}, {"value": 0}),
    ],
)
def test_empty_without_404(plan: Plan, body: object, expected: object) -> None:
    assert apply(plan, body) == expected


# --- apply: field operations -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (FieldOps(), {"is_banned": False, "id": 1, "name": "Roblox", "display_name": "Roblox"}),
        (FieldOps(allow=frozenset({"id", "name"})), {"id": 1, "name": "Roblox"}),
        (FieldOps(deny=frozenset({"isBanned", "name"})), {"id": 1, "display_name": "Roblox"}),
        (
            FieldOps(allow=frozenset({"id", "name", "isBanned"}), deny=frozenset({"isBanned"})),
            {"id": 1, "name": "Roblox"},
        ),
        (
            FieldOps(rename={"displayName": "nickName", "id": "user_id"}),
            {"is_banned": False, "user_id": 1, "name": "Roblox", "nickName": "Roblox"},
        ),
        (
            FieldOps(allow=frozenset({"id", "displayName"}), rename={"displayName": "shown"}),
            {"id": 1, "shown": "Roblox"},
        ),
        (FieldOps(allow=frozenset({"display_name"})), {}),  # allow uses upstream names
        (
            FieldOps(deny=frozenset({"display_name"})),
            {"is_banned": False, "id": 1, "name": "Roblox", "display_name": "Roblox"},
        ),
        (
            FieldOps(case="keep", deny=frozenset({"isBanned"}), rename={"id": "userId"}),
            {"userId": 1, "name": "Roblox", "displayName": "Roblox"},
        ),
        (
            FieldOps(case="camel", rename={"name": "user_name"}),
            {"isBanned": False, "id": 1, "user_name": "Roblox", "displayName": "Roblox"},
        ),
    ],
)
def test_field_ops(fields: FieldOps, expected: dict[str, object]) -> None:
    body = {"isBanned": False, "id": 1, "name": "Roblox", "displayName": "Roblox"}
    assert apply(Plan(fields=fields), body) == expected
    # the same ops apply to every item of a list
    listed = apply(Plan(fields=fields), [body, body, 5, "x"])
    assert listed == {
        "data": [expected, expected, 5, "x"],
        "next_cursor": None,
        "previous_cursor": None,
    }


def test_field_names_are_remembered_within_a_bound() -> None:
    """The top-level names an item's keys become are learnt once per FieldOps; upstream keys
    are data (a map keyed by ids), so the memo stops growing at a bound and the rest are
    still converted right."""
    ops = FieldOps(deny=frozenset({"userId9"}), rename={"userId3": "third"})
    body = {f"userId{i}": i for i in range(3000)}
    expected = {f"user_id{i}": i for i in range(3000) if i != 9}
    expected["third"] = expected.pop("user_id3")
    for _ in range(2):  # the second pass reads the memo
        assert apply(Plan(fields=ops), body) == expected
    assert len(ops.names) == 1024
    assert ops.names["userId9"] is None and ops.names["userId3"] == "third"


NESTED = {
    "outerKey": {
        "innerKey": [{"deepKey": 1}, 2, "x", [{"listInList": None}]],
        "HTMLCode": {"userIDs": [1, 2]},
    },
    "topLevel": True,
}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "snake",
            {
                "outer_key": {
                    "inner_key": [{"deep_key": 1}, 2, "x", [{"list_in_list": None}]],
                    "html_code": {"user_ids": [1, 2]},
                },
                "top_level": True,
            },
        ),
        (
            "camel",
            {
                "outerKey": {
                    "innerKey": [{"deepKey": 1}, 2, "x", [{"listInList": None}]],
                    "htmlCode": {"userIds": [1, 2]},
                },
                "topLevel": True,
            },
        ),
        ("keep", NESTED),
    ],
)
def test_nested_case_conversion(case: Any, expected: object) -> None:
    assert apply(Plan(fields=FieldOps(case=case)), NESTED) == expected


def test_renamed_key_is_not_recased_but_its_value_is() -> None:
    plan = Plan(fields=FieldOps(rename={"outerKey": "OuterKEY"}))
    result = apply(plan, NESTED)
    assert isinstance(result, dict)
    assert set(result) == {"OuterKEY", "top_level"}
    assert result["OuterKEY"]["html_code"] == {"user_ids": [1, 2]}


def test_catalog_pascal_case_item() -> None:
    assert apply(Plan(), CATALOG_ITEM) == {
        "name": "Hat",
        "price_in_robux": 100,
        "is_limited_unique": True,
        "asset_id": 42,
    }


# --- apply: shape errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "body", "expected_in_message"),
    [
        (
            Plan(pagination=PAGINATED),
            {"data": {"id": 1}},
            "array of items at 'data', found an object",
        ),
        (Plan(pagination=PAGINATED), {"nextPageCursor": "a"}, "at 'data', found nothing"),
        (Plan(pagination=PAGINATED), {"data": None}, "found null"),
        (Plan(pagination=PAGINATED), [1, 2], "found nothing"),
        (
            Plan(pagination=Pagination(items=("page", "rows"))),
            {"page": {"rows": "x"}},
            "at 'page.rows', found a string",
        ),
        (
            Plan(pagination=PAGINATED),
            {"data": [], "nextPageCursor": 5},
            "cursor at 'nextPageCursor', found a number",
        ),
        (
            Plan(pagination=PAGINATED),
            {"data": [], "previousPageCursor": True},
            "cursor at 'previousPageCursor', found a boolean",
        ),
        (Plan(pick=("data",), shape="object"), USERS_POST, "expected an object at 'data'"),
        (Plan(shape="list"), USER_GET, "expected an array at the body root, found an object"),
        (Plan(pick=("data", 0, "id"), shape="list"), USERS_POST, "at 'data[0].id', found a number"),
    ],
)
def test_shape_errors(plan: Plan, body: object, expected_in_message: str) -> None:
    with pytest.raises(ShapeError) as info:
        apply(plan, body)
    assert expected_in_message in str(info.value)


# --- plans, purity --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: FieldOps(case="SNAKE"),  # type: ignore[arg-type]
        lambda: Plan(shape="dict"),  # type: ignore[arg-type]
        lambda: Plan(pagination=Pagination(), shape="object"),
    ],
)
def test_invalid_plans_fail_at_load_time(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


def test_field_ops_rename_is_frozen_copy_and_hashable() -> None:
    rename = {"id": "user_id"}
    ops = FieldOps(rename=rename)
    rename["name"] = "changed"
    assert dict(ops.rename) == {"id": "user_id"}
    assert isinstance(ops.rename, MappingProxyType)
    assert hash(Plan(fields=ops)) == hash(Plan(fields=FieldOps(rename={"id": "user_id"})))
    assert Plan(fields=ops) == Plan(fields=FieldOps(rename={"id": "user_id"}))


def test_requested_ids_must_not_be_a_string() -> None:
    with pytest.raises(TypeError):
        apply(Plan(order_by=OrderBy(key=("id",))), USERS_POST, "156")


@pytest.mark.parametrize(
    ("plan", "body", "requested"),
    [
        (Plan(), USER_GET, None),
        (Plan(pick=("data",), order_by=OrderBy(key=("id",))), USERS_POST, [156, 1]),
        (Plan(pick=("data",), order_by=OrderBy(key=("targetId",))), THUMBNAILS, [2, 1]),
        (Plan(pagination=PAGINATED, pick=("user",)), GROUP_MEMBERS, None),
        (Plan(pagination=PAGINATED, order_by=OrderBy(key=("user", "userId"))), GROUP_MEMBERS, [9]),
        (Plan(fields=FieldOps(case="keep", rename={"outerKey": "o"})), NESTED, None),
        (Plan(fields=FieldOps(case="camel")), NESTED, None),
        (Plan(), NESTED, None),
    ],
)
def test_input_not_mutated(plan: Plan, body: Any, requested: list[object] | None) -> None:
    before = copy.deepcopy(body)
    result = apply(plan, body, requested)
    assert body == before
    assert result is not body
