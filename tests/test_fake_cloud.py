"""The fake speaks Open Cloud: routes, shapes, errors, key checks, per-owner limits and
long-running operations (bloxproxy/fake/routes_cloud.py, bloxproxy/fake/cloud.py)."""

from __future__ import annotations

import hashlib

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient

from bloxproxy.fake import FAKE_STATE, FakeRoblox, IpLimit, create_fake_app
from tests.conftest import FakeClock

Client = TestClient[web.Request, web.Application]
KEY = {"x-api-key": "ad-hoc"}


def tag(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()[:16]


@pytest.fixture
def app(clock: FakeClock) -> web.Application:
    return create_fake_app(clock=clock)


@pytest.fixture
def state(app: web.Application) -> FakeRoblox:
    return app[FAKE_STATE]


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, app: web.Application) -> Client:
    return await aiohttp_client(app)


async def get(
    client: Client, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object], CIMultiDict[str]]:
    async with client.get(url, headers=KEY if headers is None else headers) as resp:
        body = orjson.loads(await resp.read())
        assert isinstance(body, dict)
        body.pop("_fakeViewer", None)
        return resp.status, body, resp.headers.copy()


async def test_every_route_wants_a_key(client: Client) -> None:
    for path in (
        "/apis/cloud/v2/users/156",
        "/apis/cloud/v2/users/156:generateThumbnail",
        "/apis/cloud/v2/users/156/operations/1",
        "/apis/cloud/v2/groups/7",
        "/apis/cloud/v2/groups/7/memberships",
        "/apis/cloud/v2/groups/7/roles",
        "/apis/cloud/v2/groups/7/roles/1008",
        "/apis/cloud/v2/universes/1685831367",
        "/apis/cloud/v2/universes/1685831367/places/4922741943",
        "/apis/legacy-groups/v1/groups/7/audit-log",
        "/apis/legacy-groups/v1/groups/7/settings",
    ):
        status, body, _ = await get(client, path, headers={})
        assert (status, body) == (401, {"errors": [{"code": 0, "message": "Invalid API Key"}]})


async def test_a_registered_key_without_the_scope_is_refused(
    client: Client, state: FakeRoblox
) -> None:
    state.cloud.add_key("reader", "users/1", {"universe:read"})
    status, body, _ = await get(client, "/apis/cloud/v2/groups/7", {"x-api-key": "reader"})
    assert status == 403 and body["code"] == "PERMISSION_DENIED"
    assert "group:read" in str(body["message"])
    status, _, _ = await get(client, "/apis/cloud/v2/universes/1685831367", {"x-api-key": "reader"})
    assert status == 200
    status, _, _ = await get(client, "/apis/cloud/v2/users/156", {"x-api-key": "reader"})
    assert status == 200  # public fields: no scope


async def test_resources_have_the_documented_shapes(client: Client) -> None:
    status, body, _ = await get(client, "/apis/cloud/v2/groups/7/roles/1008")
    assert status == 200 and body["path"] == "groups/7/roles/1008"
    assert (body["displayName"], body["rank"], body["memberCount"]) == ("Member", 1, 136)
    status, body, _ = await get(client, "/apis/cloud/v2/universes/1685831367")
    assert status == 200 and body["path"] == "universes/1685831367"
    assert isinstance(body["displayName"], str) and ("user" in body or "group" in body)
    status, body, _ = await get(client, "/apis/cloud/v2/universes/1685831367/places/4922741943")
    assert status == 200 and body["path"] == "universes/1685831367/places/4922741943"
    assert body["displayName"] and isinstance(body["serverSize"], int)
    status, body, _ = await get(client, "/apis/cloud/v2/universes/3531439676/places/4922741943")
    assert (status, body["code"]) == (404, "NOT_FOUND")  # a place of another universe
    status, body, _ = await get(client, "/apis/cloud/v2/universes/2/places/4922741943")
    assert (status, body["code"]) == (404, "NOT_FOUND")
    status, body, _ = await get(client, "/apis/cloud/v2/groups/7/roles/1")
    assert (status, body["code"]) == (404, "NOT_FOUND")
    status, body, _ = await get(client, "/apis/legacy-groups/v1/groups/7/settings")
    assert status == 200 and set(body) == {
        "isApprovalRequired",
        "isBuildersClubRequired",
        "areEnemiesAllowed",
        "areGroupFundsVisible",
        "areGroupGamesVisible",
        "isGroupNameChangeEnabled",
        "verificationLevel",
        "accountTenureRequirement",
        "slowmode",
        "isMemberListVisibleToPublic",
        "isAutoAssignRoleDisabled",
    }
    assert body["isApprovalRequired"] is False  # group 7 lets anyone join


AUDIT = "/apis/legacy-groups/v1/groups/7/audit-log"


async def test_the_audit_log_is_the_legacy_groups_page(client: Client) -> None:
    status, body, _ = await get(client, AUDIT)
    assert status == 200 and set(body) == {"previousPageCursor", "nextPageCursor", "data"}
    items = body["data"]
    assert isinstance(items, list) and len(items) == 10  # limit's default
    assert body["previousPageCursor"] is None and isinstance(body["nextPageCursor"], str)
    first = items[0]
    assert first["actor"] == {
        "user": {
            "buildersClubMembershipType": 0,
            "hasVerifiedBadge": True,
            "userId": 1,
            "username": "Roblox",
            "displayName": "Roblox",
        },
        "role": {
            "id": 1009,
            "name": "Owner",
            "description": "The group's owner.",
            "rank": 255,
            "memberCount": 1,
        },
    }
    assert (first["actionType"], first["created"]) == (
        "Accept Join Request",
        "2024-01-01T12:00:00Z",
    )
    assert items[1]["description"] == {
        "TargetId": 1000001,
        "TargetName": "User1000001",
        "OldRoleSetId": 1007,
        "NewRoleSetId": 1008,
        "OldRoleSetName": "Guest",
        "NewRoleSetName": "Member",
    }
    # every page once, in order; Desc the other way round
    seen, cursor = [], ""
    while True:
        status, body, _ = await get(client, f"{AUDIT}?limit=25&cursor={cursor}")
        assert status == 200
        seen += [i["created"] for i in body["data"]]  # type: ignore[union-attr]
        if body["nextPageCursor"] is None:
            break
        cursor = str(body["nextPageCursor"])
    assert len(seen) == 30 and seen == sorted(seen)
    status, body, _ = await get(client, f"{AUDIT}?sortOrder=Desc&limit=10")
    assert [i["created"] for i in body["data"]] == seen[::-1][:10]  # type: ignore[union-attr]


async def test_the_audit_log_filters_by_action_and_user(client: Client) -> None:
    status, body, _ = await get(client, f"{AUDIT}?actionType=ChangeRank&limit=100")
    ranks = body["data"]
    assert status == 200 and isinstance(ranks, list) and len(ranks) == 10
    assert {i["actionType"] for i in ranks} == {"Change Rank"}
    status, body, _ = await get(client, f"{AUDIT}?userId=1&limit=100")
    assert len(body["data"]) == 30  # type: ignore[arg-type]
    status, body, _ = await get(client, f"{AUDIT}?userId=156")
    assert (status, body["data"]) == (200, [])
    status, body, _ = await get(client, "/apis/legacy-groups/v1/groups/20000001/audit-log")
    assert (status, body["data"]) == (200, [])  # a synthetic group: no history


async def test_the_legacy_groups_routes_answer_their_documented_errors(
    client: Client, state: FakeRoblox
) -> None:
    def code(body: dict[str, object]) -> object:
        return body["errors"][0]["code"]  # type: ignore[index]

    for bad in ("limit=7", "cursor=nonsense", "limit=x"):
        status, body, _ = await get(client, f"{AUDIT}?{bad}")
        assert (status, code(body)) == (400, 8), bad
    # a cursor of another filter is not this page's
    _, body, _ = await get(client, AUDIT)
    status, body, _ = await get(
        client, f"{AUDIT}?actionType=PostStatus&cursor={body['nextPageCursor']}"
    )
    assert (status, code(body)) == (400, 8)
    status, body, _ = await get(client, f"{AUDIT}?userId=x")
    assert status == 400
    for path in (
        "/apis/legacy-groups/v1/groups/4/audit-log",
        "/apis/legacy-groups/v1/groups/4/settings",
    ):
        status, body, _ = await get(client, path)
        assert (status, code(body)) == (400, 1), path
        assert body["errors"][0]["message"] == "Group is invalid or does not exist."  # type: ignore[index]
    # the document's scope; then the group's own key or its owner's may, another owner's not
    state.cloud.add_key("reader", "groups/7", {"group:read"})
    state.cloud.add_key("group-7", "groups/7", {"legacy-group:manage"})
    state.cloud.add_key("roblox", "users/1", {"legacy-group:manage"})
    state.cloud.add_key("stranger", "users/156", {"legacy-group:manage"})
    for path in (AUDIT, "/apis/legacy-groups/v1/groups/7/settings"):
        status, body, _ = await get(client, path, {"x-api-key": "reader"})
        assert status == 403 and body["code"] == "PERMISSION_DENIED"
        assert "legacy-group:manage" in str(body["message"])
        for key in ("group-7", "roblox"):
            assert (await get(client, path, {"x-api-key": key}))[0] == 200, key
        status, body, _ = await get(client, path, {"x-api-key": "stranger"})
        assert (status, code(body)) == (403, 23)
        assert body["errors"][0]["message"] == (  # type: ignore[index]
            "Insufficient permissions to complete the request."
        )


async def test_memberships_paginate_with_page_tokens(client: Client) -> None:
    url = "/apis/cloud/v2/groups/7/memberships"
    status, body, _ = await get(client, url)
    members = body["groupMemberships"]
    assert status == 200 and isinstance(members, list) and len(members) == 10  # default
    assert members[0] == {
        "path": "groups/7/memberships/1",
        "createTime": "2020-01-01T00:00:00Z",
        "updateTime": "2020-01-01T00:00:00Z",
        "user": "users/1",
        "role": "groups/7/roles/1009",
    }
    seen, token, pages = 0, "", 0
    while True:
        query = "?maxPageSize=500" + (f"&pageToken={token}" if token else "")
        status, body, _ = await get(client, url + query)
        assert status == 200
        page = body["groupMemberships"]
        assert isinstance(page, list) and len(page) <= 100  # capped at 100
        seen, pages = seen + len(page), pages + 1
        token = str(body["nextPageToken"])
        if not token:
            break
    assert (seen, pages) == (137, 2)
    status, body, _ = await get(client, url + "?maxPageSize=-1")
    assert (status, body["code"]) == (400, "INVALID_ARGUMENT")
    status, body, _ = await get(client, url + "?pageToken=garbage")
    assert (status, body["code"]) == (400, "INVALID_ARGUMENT")
    roles_page = (await get(client, "/apis/cloud/v2/groups/7/roles?maxPageSize=2"))[1]
    assert isinstance(roles_page["groupRoles"], list) and len(roles_page["groupRoles"]) == 2
    # another list's token is refused
    status, body, _ = await get(
        client, f"/apis/cloud/v2/groups/7/memberships?pageToken={roles_page['nextPageToken']}"
    )
    assert status == 400


async def test_memberships_filter_by_user_and_role(client: Client) -> None:
    url = "/apis/cloud/v2/groups/7/memberships?filter="
    status, body, _ = await get(client, url + "user == 'users/1000005'")
    assert status == 200 and body["groupMemberships"] == [
        {
            "path": "groups/7/memberships/1000005",
            "createTime": "2020-01-01T00:00:00Z",
            "updateTime": "2020-01-01T00:00:00Z",
            "user": "users/1000005",
            "role": "groups/7/roles/1008",
        }
    ]
    status, body, _ = await get(client, url + "user == 'users/156'")
    assert (status, body) == (200, {"groupMemberships": [], "nextPageToken": ""})
    status, body, _ = await get(client, url + "role == 'groups/7/roles/1009'")
    assert [m["user"] for m in body["groupMemberships"]] == ["users/1"]  # type: ignore[union-attr]
    for bad in ("user = 'users/1'", "user == 'groups/1'", "role == 'groups/8/roles/1'", "x"):
        status, body, _ = await get(client, url + bad)
        assert (status, body["code"]) == (400, "INVALID_ARGUMENT"), bad


async def test_thumbnail_operation_is_done_after_two_polls(
    client: Client, state: FakeRoblox
) -> None:
    url = "/apis/cloud/v2/users/156:generateThumbnail?size=150&format=PNG&shape=ROUND"
    status, body, _ = await get(client, url)
    assert status == 200 and body["done"] is False and "response" not in body
    path = str(body["path"])
    assert path.startswith("users/156/operations/")
    polls = [await get(client, "/apis/cloud/v2/" + path) for _ in range(2)]
    assert [p[1]["done"] for p in polls] == [False, True]
    response = polls[1][1]["response"]
    assert isinstance(response, dict)
    assert response["@type"].endswith("GenerateUserThumbnailResponse")
    assert str(response["imageUri"]).startswith("https://tr.rbxcdn.com/")
    # made once: asking again is done at once, with the same image
    status, body, _ = await get(client, url)
    assert body["done"] is True and body["response"] == response
    # an operation of another user, an unknown one
    other = path.replace("users/156/", "users/1/")
    assert (await get(client, "/apis/cloud/v2/" + other))[0] == 404
    assert (await get(client, "/apis/cloud/v2/users/156/operations/5"))[0] == 404
    status, body, _ = await get(client, url.replace("size=150", "size=151"))
    assert (status, body["code"]) == (400, "INVALID_ARGUMENT")
    assert (await get(client, "/apis/cloud/v2/users/4:generateThumbnail"))[0] == 404
    state.cloud.polls = 0
    assert (await get(client, url.replace("ROUND", "SQUARE")))[1]["done"] is True


async def test_the_per_owner_limit_is_shared_by_an_owners_keys(
    client: Client, state: FakeRoblox, clock: FakeClock
) -> None:
    state.cloud.add_key("a1", "groups/7", {"group:read"})
    state.cloud.add_key("a2", "groups/7", {"group:read"})
    state.cloud.add_key("b1", "users/1", {"group:read"})
    state.cloud.owner_limit = IpLimit.parse("2/s")
    first = await get(client, "/apis/cloud/v2/groups/7", {"x-api-key": "a1"})
    assert first[0] == 200 and first[2]["x-ratelimit-limit"] == "2, 2;w=1"
    assert first[2]["x-ratelimit-remaining"] == "1"
    second = await get(client, "/apis/cloud/v2/users/1", {"x-api-key": "a2"})
    assert second[0] == 200 and second[2]["x-ratelimit-remaining"] == "0"
    third = await get(client, "/apis/cloud/v2/groups/7", {"x-api-key": "a1"})
    assert third[0] == 429 and third[1]["code"] == "RESOURCE_EXHAUSTED"
    assert third[2]["retry-after"] == "1"
    other = await get(client, "/apis/cloud/v2/groups/7", {"x-api-key": "b1"})
    assert other[0] == 200  # another owner has its own budget
    assert state.cloud.limited == 1
    clock.advance(1)
    assert (await get(client, "/apis/cloud/v2/groups/7", {"x-api-key": "a2"}))[0] == 200
    # legacy web paths are not Open Cloud: no headers, no charge
    async with client.get("/users/v1/users/1", headers={"x-api-key": "a1"}) as resp:
        assert resp.status == 200 and "x-ratelimit-limit" not in resp.headers


async def test_answers_are_tagged_per_key(client: Client) -> None:
    async with client.get("/apis/cloud/v2/users/156", headers={"x-api-key": "one"}) as resp:
        one = orjson.loads(await resp.read())
    async with client.get("/apis/cloud/v2/users/156", headers={"x-api-key": "two"}) as resp:
        two = orjson.loads(await resp.read())
    assert (one["_fakeViewer"], two["_fakeViewer"]) == (tag("one"), tag("two"))


async def test_the_control_api_sets_keys_limits_and_polls(
    client: Client, state: FakeRoblox
) -> None:
    async def post(body: object) -> tuple[int, dict[str, object]]:
        async with client.post("/_fake/cloud", data=orjson.dumps(body)) as resp:
            return resp.status, orjson.loads(await resp.read())

    status, body = await post(
        {
            "keys": [{"key": "ctl", "owner": "groups/9", "scopes": ["universe:read"]}],
            "owner_limit": "60/min",
            "burst": 60,
            "polls": 1,
        }
    )
    assert status == 200 and body["polls"] == 1
    assert body["owner_limit"] == {"rate": 1.0, "burst": 60, "per_service": False}
    key = state.cloud.key("ctl")
    assert key is not None and (key.owner, key.scopes) == ("groups/9", frozenset({"universe:read"}))
    assert (await get(client, "/apis/cloud/v2/groups/7", {"x-api-key": "ctl"}))[0] == 403
    for bad in (
        [],
        {"keys": "x"},
        {"keys": [{"key": "", "owner": "users/1"}]},
        {"keys": [{"key": "k", "owner": "users/1", "scopes": "all"}]},
        {"polls": -1},
        {"polls": True},
        {"owner_limit": "lots"},
        {"owner_limit": "1/s", "burst": "x"},
    ):
        status, body = await post(bad)
        assert status == 400 and "error" in body, bad
    assert (await post({"owner_limit": None}))[1]["owner_limit"] is None
    async with client.get("/_fake/cloud") as resp:
        assert (await resp.json())["polls"] == 1
