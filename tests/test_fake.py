"""Tests for the bundled fake Roblox upstream (bloxproxy.fake)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import subprocess
import sys
import time

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient, AiohttpServer

from bloxproxy.fake import (
    FAKE_STATE,
    LARGE_GROUP_MIN,
    PENDING_THUMBNAIL_USER_ID,
    FakeRoblox,
    Fault,
    IpLimit,
    answer,
    create_fake_app,
    run_fake,
)
from bloxproxy.fake import app as fake_app
from tests.conftest import FakeClock

Client = TestClient[web.Request, web.Application]

USER_1_RAW = (
    '{"description":"Welcome to the Roblox profile! This is where you can check out the newest '
    "items in the catalog, and get a jumpstart on exploring and building on our Imagination "
    "Platform. If you want news on updates to the Roblox platform, or great new experiences to "
    "play with friends, check out blog.roblox.com. Please note, this is an automated account. If "
    'you need to reach Roblox for any customer service needs find help at www.roblox.com/help",'
    '"created":"2006-02-27T21:06:40.3Z","isBanned":false,"externalAppDisplayName":null,'
    '"hasVerifiedBadge":true,"id":1,"name":"Roblox","displayName":"Roblox"}'
)
COOKIE = "_|WARNING:-DO-NOT-SHARE-THIS.--Sharing-this-will-allow-someone-to-log-in|_ABC123"


def err(code: int, message: str, user_facing: bool = True) -> dict[str, object]:
    item: dict[str, object] = {"code": code, "message": message}
    if user_facing:
        item["userFacingMessage"] = "Something went wrong"
    return {"errors": [item]}


def tag(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()[:16]


@pytest.fixture
def app() -> web.Application:
    return create_fake_app()


@pytest.fixture
def state(app: web.Application) -> FakeRoblox:
    return app[FAKE_STATE]


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, app: web.Application) -> Client:
    return await aiohttp_client(app)


async def get(client: Client, url: str, **kw: object) -> tuple[int, object]:
    async with client.get(url, **kw) as resp:  # type: ignore[arg-type]
        return resp.status, orjson.loads(await resp.read())


async def post(client: Client, url: str, body: object, **kw: object) -> tuple[int, object]:
    async with client.post(url, data=orjson.dumps(body), **kw) as resp:  # type: ignore[arg-type]
        return resp.status, orjson.loads(await resp.read())


async def raw_exchange(client: Client, request: bytes) -> bytes:
    """Everything the server sends for one request on a fresh connection it closes."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()


# -- HEAD ----------------------------------------------------------------------------------------
def get_routes() -> list[str]:
    """A concrete URL for every GET route of the fake ({name} segments take 1)."""
    urls = []
    for route in fake_app.ALL_ROUTES:
        if route.method == "GET":
            path = re.sub(r"\{[^}]+\}", "1", route.pattern)
            urls.append(f"/{route.service}{path}")
    assert len(urls) > 20
    return urls


@pytest.mark.parametrize("url", get_routes())
async def test_head_answers_every_get_route_with_headers_and_no_body(
    client: Client, url: str
) -> None:
    async with client.get(url) as got:
        body = await got.read()
    async with client.head(url) as head:
        assert head.status == got.status, url
        same = {k: v for k, v in head.headers.items() if k != "Date"}
        assert same == {k: v for k, v in got.headers.items() if k != "Date"}
        assert head.headers["Content-Length"] == str(len(body))
    wire = await raw_exchange(
        client, f"HEAD {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert wire.startswith(f"HTTP/1.1 {got.status} ".encode())
    assert wire.endswith(b"\r\n\r\n"), "headers only: not one byte of body"


async def test_head_of_an_unknown_path_is_the_404_without_its_body(client: Client) -> None:
    async with client.head("/users/v1/nothing-here") as resp:
        assert resp.status == 404
        assert await resp.read() == b""


# -- shapes and errors ----------------------------------------------------------------------------
async def test_user_1_is_the_verbatim_sample(client: Client) -> None:
    async with client.get("/users/v1/users/1") as resp:
        assert resp.status == 200
        assert await resp.text() == USER_1_RAW
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        assert resp.headers["Cache-Control"] == "no-cache"


async def test_user_errors(client: Client) -> None:
    assert await get(client, "/users/v1/users/4") == (404, err(3, "The user id is invalid."))
    notfound = (404, err(0, "NotFound", False))
    assert await get(client, "/users/v1/users/notAUser") == notfound
    assert await get(client, "/nosuchservice/v1/x") == notfound
    assert await get(client, "/users/v9/nothing") == notfound
    assert await get(client, "/") == notfound


async def test_synthetic_users_and_double_slashes(client: Client, state: FakeRoblox) -> None:
    root = f"http://{client.host}:{client.port}"
    for url in (
        "/users//v1/users/1234567",
        "//users/v1/users/1234567",
        "/users/v1//users/1234567/",
    ):
        async with client.session.get(root + url) as resp:
            status, body = resp.status, await resp.json()
        assert status == 200
        assert body == {
            "description": "",
            "created": "2015-06-01T00:00:00Z",
            "isBanned": False,
            "externalAppDisplayName": None,
            "hasVerifiedBadge": False,
            "id": 1234567,
            "name": "User1234567",
            "displayName": "User1234567",
        }
    assert state.count("users", "/v1/users/1234567") == 3
    assert state.requests[0].raw_path == "/users//v1/users/1234567"
    assert (await get(client, "/users/v1/users/10000000"))[0] == 404


async def test_users_batch(client: Client) -> None:
    status, body = await post(client, "/users/v1/users", {"userIds": [156, 4, 1, 156]})
    assert status == 200
    assert body == {
        "data": [
            {
                "hasVerifiedBadge": True,
                "id": 156,
                "name": "builderman",
                "displayName": "builderman",
            },
            {"hasVerifiedBadge": True, "id": 1, "name": "Roblox", "displayName": "Roblox"},
        ]
    }
    too_many = {"userIds": list(range(1_000_000, 1_000_201)), "excludeBannedUsers": True}
    assert await post(client, "/users/v1/users", too_many) == (400, err(1, "Too many ids."))
    async with client.post("/users/v1/users", data=b"{not json") as resp:
        assert resp.status == 400
    assert (await post(client, "/users/v1/users", {"userIds": ["a"]}))[0] == 400


async def test_usernames(client: Client) -> None:
    names = ["BUILDERMAN", "parrrty", "nobody_here", "user1000001"]
    status, body = await post(client, "/users/v1/usernames/users", {"usernames": names})
    assert status == 200
    assert isinstance(body, dict)
    assert [(d["requestedUsername"], d["id"]) for d in body["data"]] == [
        ("BUILDERMAN", 156),
        ("parrrty", 45348281),
        ("user1000001", 1000001),
    ]
    many = {"usernames": [f"u{i}" for i in range(101)]}
    assert await post(client, "/users/v1/usernames/users", many) == (
        400,
        err(2, "Too many usernames."),
    )


async def test_search(client: Client) -> None:
    assert await get(client, "/users/v1/users/search?keyword=ab") == (
        400,
        err(6, "The keyword is too short."),
    )
    status, body = await get(client, "/users/v1/users/search?keyword=MightyPart&limit=10")
    assert status == 200 and isinstance(body, dict)
    assert body["data"][0]["previousUsernames"] == ["parrrty", "NamelessGuy2005"]
    assert len(body["data"]) == 10 and body["nextPageCursor"] is None
    seen: list[int] = []
    cursor = ""
    while True:
        status, page = await get(
            client,
            "/users/v1/users/search",
            params={"keyword": "user", "limit": "100", "cursor": cursor},
        )
        assert status == 200 and isinstance(page, dict)
        seen += [d["id"] for d in page["data"]]
        if page["nextPageCursor"] is None:
            break
        cursor = page["nextPageCursor"]
    assert len(seen) == len(set(seen)) == 200
    assert seen[0] == 1_000_000


async def test_username_history(client: Client) -> None:
    url = "/users/v1/users/45348281/username-history"
    assert await get(client, url) == (
        200,
        {
            "previousPageCursor": None,
            "nextPageCursor": None,
            "data": [{"name": "NamelessGuy2005"}, {"name": "parrrty"}],
        },
    )
    status, body = await get(client, url + "?sortOrder=Desc&limit=25")
    assert status == 200 and isinstance(body, dict) and body["data"][0] == {"name": "parrrty"}
    assert (await get(client, "/users/v1/users/4/username-history"))[0] == 400


async def test_friends_and_presence(client: Client) -> None:
    assert await get(client, "/friends/v1/users/45348281/friends/count") == (200, {"count": 47})
    assert await get(client, "/friends/v1/users/45348281/followers/count") == (200, {"count": 510})
    assert await get(client, "/friends/v1/users/45348281/followings/count") == (200, {"count": 337})
    assert await get(client, "/friends/v1/users/1234567/followers/count") == (200, {"count": 0})
    invalid = (400, err(1, "The target user is invalid or does not exist."))
    assert await get(client, "/friends/v1/users/4/friends/count") == invalid
    status, body = await get(client, "/friends/v1/users/45348281/friends")
    assert isinstance(body, dict) and len(body["data"]) == 47
    status, body = await post(client, "/presence/v1/presence/users", {"userIds": [1234567, 4]})
    assert status == 200
    assert body == {
        "userPresences": [
            {
                "userPresenceType": 0,
                "lastLocation": "Website",
                "placeId": None,
                "rootPlaceId": None,
                "gameId": None,
                "universeId": None,
                "userId": 1234567,
            }
        ]
    }
    many = {"userIds": list(range(1_000_000, 1_000_051))}
    assert await post(client, "/presence/v1/presence/users", many) == (
        400,
        err(2, "Too many User Ids being sent in the request."),
    )


async def test_groups(client: Client) -> None:
    status, body = await get(client, "/groups/v1/groups/5850082")
    assert status == 200 and isinstance(body, dict)
    assert body["name"] == "MightyPart Games" and body["memberCount"] == 102
    assert body["owner"] == {
        "hasVerifiedBadge": False,
        "userId": 45348281,
        "username": "MightyPart",
        "displayName": "MightyPart",
    }
    assert await get(client, "/groups/v1/groups/8") == (
        400,
        err(1, "Group is invalid or does not exist."),
    )
    status, body = await get(client, "/groups/v1/groups/7/roles")
    assert isinstance(body, dict) and [r["rank"] for r in body["roles"]] == [0, 1, 255]
    status, body = await get(client, "/groups/v1/users/1000005/groups/roles")
    assert isinstance(body, dict)
    assert body["data"][0]["group"]["id"] == 7
    assert body["data"][0]["role"] == {"id": 1008, "name": "Member", "rank": 1}
    status, body = await get(client, "/groups/v2/groups?groupIds=7,5850082,99")
    assert isinstance(body, dict) and [g["id"] for g in body["data"]] == [7, 5850082]
    assert (await get(client, "/groups/v2/groups?groupIds=x"))[0] == 400


async def test_group_members_pagination(client: Client) -> None:
    url = "/groups/v1/groups/7/users"
    ids: list[int] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "25", "sortOrder": "Asc"} | ({"cursor": cursor} if cursor else {})
        status, page = await get(client, url, params=params)
        assert status == 200 and isinstance(page, dict)
        assert (page["previousPageCursor"] is None) == (pages == 0)
        pages += 1
        ids += [m["user"]["userId"] for m in page["data"]]
        cursor = page["nextPageCursor"]
        if cursor is None:
            break
    assert pages == 6 and len(ids) == len(set(ids)) == 137 and ids[0] == 1
    # previous cursor of the last page goes back one page
    _, back = await get(client, url, params={"limit": "25", "cursor": page["previousPageCursor"]})
    assert isinstance(back, dict) and back["data"][0]["user"]["userId"] == ids[100]
    status, desc = await get(client, url + "?limit=10&sortOrder=Desc")
    assert isinstance(desc, dict) and desc["data"][0]["user"]["userId"] == ids[-1]
    assert (await get(client, url + "?limit=11"))[0] == 400
    bad = (400, err(36, "The pagination cursor is invalid."))
    assert await get(client, url + "?limit=25&cursor=garbage") == bad
    _, other = await get(client, "/groups/v1/groups/5850082/users?limit=10")
    assert isinstance(other, dict)
    assert await get(client, url, params={"cursor": other["nextPageCursor"]}) == bad
    assert (await get(client, "/groups/v1/groups/8/users"))[0] == 400


async def test_games_and_universes(client: Client) -> None:
    status, body = await get(client, "/games/v1/games?universeIds=3531439676,1,1685831367")
    assert status == 200 and isinstance(body, dict)
    assert [g["id"] for g in body["data"]] == [3531439676, 1685831367]
    selfie = body["data"][0]
    assert selfie["rootPlaceId"] == 9468764549 and selfie["favoritedCount"] == 241
    assert selfie["creator"]["name"] == "Roblox Arena Events"
    too_many = ",".join(str(i) for i in range(51))
    assert await get(client, f"/games/v1/games?universeIds={too_many}") == (
        400,
        err(9, "Too many universe IDs were requested."),
    )
    missing = (400, err(8, "No universe IDs were specified."))
    assert await get(client, "/games/v1/games") == missing
    assert await get(client, "/games/v1/games?universeIds=badUniverseId") == missing
    assert await get(client, "/games/v1/games/votes?universeIds=1685831367") == (
        200,
        {"data": [{"id": 1685831367, "upVotes": 78, "downVotes": 14}]},
    )
    status, passes = await get(client, "/games/v1/games/1685831367/game-passes?limit=10")
    assert isinstance(passes, dict) and len(passes["data"]) == 10
    assert passes["data"][0]["name"] == "Campers Club" and passes["nextPageCursor"] is None
    place = "/apis/universes/v1/places/{}/universe"
    assert await get(client, place.format(4922741943)) == (200, {"universeId": 1685831367})
    assert await get(client, place.format(9468764549)) == (200, {"universeId": 3531439676})
    assert await get(client, place.format(1)) == (200, {"universeId": None})
    status, dev = await get(client, "/develop/v1/universes/1685831367")
    assert isinstance(dev, dict) and dev["rootPlaceId"] == 4922741943
    assert (await get(client, "/develop/v1/universes/1"))[0] == 400


async def test_badges(client: Client) -> None:
    status, body = await get(client, "/badges/v1/badges/2124533401")
    assert isinstance(body, dict) and body["awardingUniverse"]["id"] == 1685831367
    assert await get(client, "/badges/v1/badges/1") == (
        404,
        err(1, "Badge is invalid or does not exist."),
    )
    url = "/badges/v1/universes/1685831367/badges"
    badge_ids: list[int] = []
    cursor = ""
    for _ in range(3):
        _, page = await get(client, url, params={"limit": "10", "cursor": cursor})
        assert isinstance(page, dict)
        badge_ids += [b["id"] for b in page["data"]]
        cursor = page["nextPageCursor"]
    assert cursor is None and badge_ids == list(range(2124533401, 2124533426))
    status, body = await get(client, url + "?cursor=nope")
    assert (status, body) == (
        400,
        err(26, "The pagination cursor is invalid or incompatible with the current request."),
    )
    assert (await get(client, "/badges/v1/universes/1/badges"))[0] == 404
    _, mine = await get(client, "/badges/v1/users/45348281/badges?limit=10")
    assert isinstance(mine, dict) and mine["data"][0]["id"] == 2124533401


async def test_thumbnails(client: Client) -> None:
    url = "/thumbnails/v1/users/avatar-headshot?userIds=1,2,156,45348281,4&size=150x150&format=Png"
    status, body = await get(client, url)
    assert status == 200 and isinstance(body, dict)
    got = [d["targetId"] for d in body["data"]]
    assert sorted(got) == [1, 2, 156, 45348281] and got != [1, 2, 156, 45348281]  # 4 dropped
    pending = next(d for d in body["data"] if d["targetId"] == PENDING_THUMBNAIL_USER_ID)
    assert pending == {"targetId": 2, "state": "Pending", "imageUrl": None}
    done = next(d for d in body["data"] if d["targetId"] == 1)
    assert done["state"] == "Completed"
    assert done["imageUrl"].startswith("https://tr.rbxcdn.com/")
    assert done["imageUrl"].endswith("/150/150/AvatarHeadshot/Png")
    _, circ = await get(client, "/thumbnails/v1/users/avatar-headshot?userIds=1&isCircular=true")
    assert isinstance(circ, dict) and circ["data"][0]["imageUrl"].endswith(
        "/48/48/AvatarHeadshot/Png/isCircular"
    )
    base = "/thumbnails/v1/users/avatar-headshot?userIds=1"
    assert (await get(client, base + "&size=49x49"))[1] == err(
        3,
        "The requested size is invalid. "
        "Please see documentation for valid thumbnail size parameter name and format.",
    )
    assert (await get(client, base + "&format=Gif"))[1]["errors"][0]["code"] == 2  # type: ignore[index]
    ids_bad = err(4, "The requested Ids are invalid, of an invalid type or missing.")
    assert await get(client, "/thumbnails/v1/users/avatar-headshot") == (400, ids_bad)
    assert await get(client, "/thumbnails/v1/users/avatar-headshot?userIds=x") == (400, ids_bad)
    many = ",".join(str(i) for i in range(1_000_000, 1_000_101))
    status, body = await get(client, f"/thumbnails/v1/users/avatar-headshot?userIds={many}")
    assert (status, body) == (400, err(1, "There are too many requested Ids."))
    _, icons = await get(client, "/thumbnails/v1/games/icons?universeIds=1685831367,3531439676,5")
    assert isinstance(icons, dict)
    assert [d["targetId"] for d in icons["data"]] == [3531439676, 1685831367]  # never as asked
    assert (await get(client, "/thumbnails/v1/games/icons?universeIds=1&returnPolicy=X"))[0] == 400
    _, groups = await get(client, "/thumbnails/v1/groups/icons?groupIds=7,5850082&size=420x420")
    assert isinstance(groups, dict) and [d["targetId"] for d in groups["data"]] == [5850082, 7]
    assert (await get(client, "/thumbnails/v1/groups/icons?groupIds=7&format=Jpeg"))[0] == 400


async def test_avatar_economy(client: Client) -> None:
    status, body = await get(client, "/avatar/v1/users/1/avatar")
    assert status == 200 and isinstance(body, dict) and body["playerAvatarType"] == "R15"
    assert await get(client, "/avatar/v1/users/4/avatar") == (
        400,
        err(1, "The specified user does not exist."),
    )
    for asset_id in (1365767, 3695523523, 11348039741):
        status, body = await get(client, f"/economy/v2/assets/{asset_id}/details")
        assert status == 200 and isinstance(body, dict)
        assert body["AssetId"] == asset_id
        assert set(body["Creator"]) >= {"Id", "Name", "CreatorType", "CreatorTargetId"}
        assert {"PriceInRobux", "IsForSale", "IsLimited", "IsLimitedUnique"} <= set(body)
    assert await get(client, "/economy/v2/assets/1/details") == (
        400,
        {"errors": [{"code": 0, "message": "Asset is invalid or does not exist"}]},
    )


# -- CSRF and identity --------------------------------------------------------------------------
async def test_csrf_handshake(client: Client, state: FakeRoblox) -> None:
    url = "/users/v1/users/1234567/display-names"
    cookie = {"Cookie": f".ROBLOSECURITY={COOKIE}"}
    body = orjson.dumps({"newDisplayName": "Camper"})
    async with client.patch(url, data=body, headers=cookie) as resp:
        assert resp.status == 403
        token = resp.headers["x-csrf-token"]
        assert (await resp.json())["errors"] == [{"code": 0, "message": "Token Validation Failed"}]
    assert token == state.csrf_token(COOKIE) != state.csrf_token("other")
    async with client.patch(url, data=body, headers={**cookie, "X-CSRF-TOKEN": token}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"_fakeViewer": tag(COOKIE)}
    # a token for another cookie is rejected
    other = {**cookie, "X-CSRF-TOKEN": state.csrf_token("other")}
    async with client.patch(url, data=body, headers=other) as resp:
        assert resp.status == 403
    state.rotate_csrf()
    async with client.patch(url, data=body, headers={**cookie, "X-CSRF-TOKEN": token}) as resp:
        assert resp.status == 403 and resp.headers["x-csrf-token"] != token


async def test_csrf_ttl_uses_clock(aiohttp_client: AiohttpClient) -> None:
    now = [1000.0]
    app = create_fake_app(clock=lambda: now[0])
    state = app[FAKE_STATE]
    state.csrf_ttl = 60
    before = state.csrf_token(COOKIE)
    now[0] += 61
    assert state.csrf_token(COOKIE) != before
    client = await aiohttp_client(app)
    await client.get("/users/v1/users/1")
    assert state.requests[0].at == now[0]


async def test_empty_cookie_is_anonymous(client: Client) -> None:
    url = "/users/v1/users/1234567/display-names"
    headers = {"Cookie": ".ROBLOSECURITY=; other=1"}
    async with client.patch(url, json={"newDisplayName": "Camper"}, headers=headers) as resp:
        assert resp.status == 401  # no CSRF dance for anonymous, then "not authenticated"
        assert await resp.json() == err(0, "Authorization has been denied for this request.", False)
    status, body = await get(client, "/users/v1/users/authenticated", headers=headers)
    assert status == 401 and "_fakeViewer" not in body  # type: ignore[operator]


async def test_csrf_exempt_and_catalog(client: Client, state: FakeRoblox) -> None:
    cookie = {"Cookie": f".ROBLOSECURITY={COOKIE}"}
    status, body = await post(client, "/users/v1/users", {"userIds": [1]}, headers=cookie)
    assert status == 200 and isinstance(body, dict) and body["data"][0]["id"] == 1
    for url, payload in (
        ("/users/v1/usernames/users", {"usernames": ["Roblox"]}),
        ("/presence/v1/presence/users", {"userIds": [1]}),
    ):
        assert (await post(client, url, payload, headers=cookie))[0] == 200
    items = {"items": [{"itemType": 2, "id": 429}, {"itemType": 1, "id": 2608538559}]}
    async with client.post("/catalog/v1/catalog/items/details", json=items) as resp:
        assert resp.status == 403
        anon_token = resp.headers["x-csrf-token"]
    assert anon_token == state.csrf_token(None) != state.csrf_token(COOKIE)
    headers = {"X-CSRF-TOKEN": anon_token}
    status, body = await post(client, "/catalog/v1/catalog/items/details", items, headers=headers)
    assert status == 200 and isinstance(body, dict)
    assert [(d["itemType"], d["id"]) for d in body["data"]] == [
        ("Bundle", 429),
        ("Asset", 2608538559),
    ]
    assert "_fakeViewer" not in body


async def test_fake_viewer(client: Client) -> None:
    status, anon = await get(client, "/users/v1/users/1")
    assert "_fakeViewer" not in anon  # type: ignore[operator]
    seen = set()
    for headers, credential in (
        ({"Cookie": f"a=b; .ROBLOSECURITY={COOKIE}"}, COOKIE),
        ({"Cookie": ".ROBLOSECURITY=second"}, "second"),
        ({"x-api-key": "key-1"}, "key-1"),
        ({"Authorization": "Bearer t0k"}, "Bearer t0k"),
    ):
        status, body = await get(client, "/users/v1/users/1", headers=headers)
        assert status == 200 and isinstance(body, dict)
        assert body["_fakeViewer"] == tag(credential)
        assert body["id"] == 1
        seen.add(body["_fakeViewer"])
        status, error_body = await get(client, "/users/v1/users/4", headers=headers)
        assert error_body == {"_fakeViewer": tag(credential), **err(3, "The user id is invalid.")}
    assert len(seen) == 4
    headers = {"Cookie": f".ROBLOSECURITY={COOKIE}"}
    status, me = await get(client, "/users/v1/users/authenticated", headers=headers)
    assert status == 200 and isinstance(me, dict)
    assert set(me) == {"id", "name", "displayName", "_fakeViewer"}
    assert me["name"] == f"User{me['id']}"
    assert (await get(client, "/users/v1/users/authenticated", headers=headers))[1] == me
    _, profile = await get(client, f"/users/v1/users/{me['id']}")
    assert isinstance(profile, dict) and profile["name"] == me["name"]
    assert await get(client, "/users/v1/users/authenticated") == (
        401,
        err(0, "Authorization has been denied for this request.", False),
    )


# -- state: counters, latency, faults ------------------------------------------------------------
async def test_counters_log_and_reset(client: Client, state: FakeRoblox) -> None:
    await get(client, "/users/v1/users/1?x=1&y=2", headers={"X-Custom": "Yes"})
    await get(client, "/users/v1/users/1")
    await post(client, "/users/v1/users", {"userIds": [1]})
    assert state.count("users", "/v1/users/1") == 2
    assert state.count("users", "/v1/users/1", method="GET") == 2
    assert state.count("users", "/v1/users/1", method="POST") == 0
    assert state.count("users", "/v1/users", "POST") == 1
    assert state.total == 3
    first = state.requests[0]
    assert (first.method, first.service, first.path) == ("GET", "users", "/v1/users/1")
    assert first.query == (("x", "1"), ("y", "2"))
    assert first.headers["x-custom"] == "Yes"
    assert state.requests[2].body == b'{"userIds":[1]}'
    state.reset()
    assert state.total == 0 and state.requests == [] and state.count("users", "/v1/users/1") == 0


async def test_latency(client: Client, state: FakeRoblox) -> None:
    state.latency = 0.05
    started = time.perf_counter()
    assert (await get(client, "/users/v1/users/1"))[0] == 200
    assert time.perf_counter() - started >= 0.05


async def test_status_faults_then_normal(client: Client, state: FakeRoblox) -> None:
    state.script(
        "users",
        "/v1/users/1",
        [
            Fault(status=503),
            Fault(status=429, retry_after="2", headers={"x-ratelimit-remaining": "0"}),
            Fault(),
            Fault(status=500, code=7, message="custom"),
        ],
    )
    async with client.get("/users/v1/users/1") as resp:
        assert resp.status == 503
        assert await resp.json() == err(0, "Service Unavailable", False)
    async with client.get("/users/v1/users/1") as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "2"
        assert resp.headers["x-ratelimit-remaining"] == "0"
        assert await resp.json() == err(4, "Too many requests.", False)
    assert (await get(client, "/users/v1/users/1"))[0] == 200
    assert await get(client, "/users/v1/users/1") == (500, err(7, "custom", False))
    assert (await get(client, "/users/v1/users/1"))[0] == 200  # exhausted
    assert state.pending_faults() == 0


async def test_fault_method_scoping_and_headers(client: Client, state: FakeRoblox) -> None:
    state.script("users", "/v1/users", [Fault(status=503)], method="POST")
    state.script("users", "//v1/users/1/", [Fault(headers={"x-extra": "1"})])
    assert (await get(client, "/users/v1/users"))[0] == 404  # GET is not scripted
    assert (await post(client, "/users/v1/users", {"userIds": []}))[0] == 503
    async with client.get("/users/v1/users/1") as resp:
        assert resp.status == 200 and resp.headers["x-extra"] == "1"
        assert await resp.text() == USER_1_RAW


async def test_delay_fault(client: Client, state: FakeRoblox) -> None:
    state.script("users", "/v1/users/1", [Fault(delay=0.05)])
    started = time.perf_counter()
    assert (await get(client, "/users/v1/users/1"))[0] == 200
    assert time.perf_counter() - started >= 0.05


async def test_drop_fault(client: Client, state: FakeRoblox) -> None:
    state.script("users", "/v1/users/1", [Fault(drop=True)])
    with pytest.raises(aiohttp.ClientError) as info:
        async with client.get("/users/v1/users/1") as resp:
            await resp.read()
    assert isinstance(info.value, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
    assert (await get(client, "/users/v1/users/1"))[0] == 200


async def test_reset_mid_body_fault(client: Client, state: FakeRoblox) -> None:
    state.script("groups", "/v1/groups/7", [Fault(reset_mid_body=True)])
    with pytest.raises(aiohttp.ClientError) as info:
        async with client.get("/groups/v1/groups/7") as resp:
            assert resp.status == 200
            await resp.read()
    assert isinstance(info.value, aiohttp.ClientPayloadError)
    assert (await get(client, "/groups/v1/groups/7"))[0] == 200


async def test_body_faults(client: Client, state: FakeRoblox) -> None:
    state.script(
        "users",
        "/v1/users/1",
        [
            Fault(malformed_json=True),
            Fault(content_type="text/html", body="<html>down</html>", status=502),
            Fault(redirect_to="https://www.roblox.com/request-error"),
            Fault(body_size=5000),
        ],
    )
    async with client.get("/users/v1/users/1") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        assert await resp.read() == b'{"data": ['
        with pytest.raises(ValueError):
            orjson.loads(await resp.read())
    async with client.get("/users/v1/users/1") as resp:
        assert resp.status == 502 and resp.content_type == "text/html"
        assert await resp.text() == "<html>down</html>"
    async with client.get("/users/v1/users/1", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "https://www.roblox.com/request-error"
    async with client.get("/users/v1/users/1") as resp:
        raw = await resp.read()
        assert resp.status == 200 and len(raw) == 5000 and isinstance(orjson.loads(raw), dict)


def test_fault_validation() -> None:
    assert Fault.from_json({}) == Fault()
    assert Fault.from_json({"status": 200}).is_normal
    assert Fault.from_json({"delay": 1, "headers": {"a": "b"}}) == Fault(
        delay=1.0, headers={"a": "b"}
    )
    bad: object
    for bad in ({"nope": 1}, {"status": "503"}, {"drop": 1}, {"status": 99}, {"delay": -1}, []):
        with pytest.raises(ValueError):
            Fault.from_json(bad)


# -- HTTP control API ----------------------------------------------------------------------------
async def test_control_api(client: Client, state: FakeRoblox) -> None:
    await get(client, "/users/v1/users/1")
    await get(client, "/users/v1/users/1")
    assert await get(client, "/_fake/stats") == (
        200,
        {
            "total": 2,
            "counts": {"GET users /v1/users/1": 2},
            "statuses": {"200": 2},
            "limited": 0,
        },
    )
    assert state.total == 2  # control requests are not counted
    status, recent = await get(client, "/_fake/requests?limit=1")
    assert status == 200 and isinstance(recent, list) and recent[0]["path"] == "/v1/users/1"
    assert isinstance(recent[0]["at"], float)  # when it arrived: a bench orders calls by it
    script = {
        "service": "users",
        "path": "/v1/users/1",
        "method": "GET",
        "faults": [{"status": 503}, {"status": 200}, {"status": 429, "retry_after": "1"}],
    }
    assert await post(client, "/_fake/faults", script) == (200, {"ok": True, "queued": 3})
    assert (await get(client, "/users/v1/users/1"))[0] == 503
    assert (await get(client, "/users/v1/users/1"))[0] == 200
    assert (await get(client, "/users/v1/users/1"))[0] == 429
    assert (await get(client, "/users/v1/users/1"))[0] == 200
    assert await post(client, "/_fake/latency", {"seconds": 0.02}) == (200, {"seconds": 0.02})
    assert state.latency == 0.02
    assert await post(client, "/_fake/reset", {}) == (200, {"ok": True})
    assert state.total == 0
    for url, body in (
        ("/_fake/latency", {"seconds": -1}),
        ("/_fake/latency", {"seconds": "x"}),
        ("/_fake/faults", {"service": "users", "path": "/x", "faults": [{"bogus": 1}]}),
        ("/_fake/faults", {"service": "_fake", "path": "/x", "faults": []}),
        ("/_fake/faults", {"service": "users", "path": "x", "faults": []}),
        ("/_fake/faults", [1]),
    ):
        status, reply = await post(client, url, body)
        assert status == 400 and isinstance(reply, dict) and "error" in reply
    async with client.post("/_fake/faults", data=b"{oops") as resp:
        assert resp.status == 400
    assert (await get(client, "/_fake/nothing"))[0] == 404
    assert (await get(client, "/_fake/reset"))[0] == 405


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_run_fake_serves_until_cancelled() -> None:
    port = _free_port()
    task = asyncio.create_task(run_fake("127.0.0.1", port))
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/users/v1/users/1") as resp:
                        assert resp.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.01)
            else:
                pytest.fail("run_fake did not start")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# -- batch caps and synthetic populations ---------------------------------------------------------
async def test_batch_caps_at_the_documented_sizes(client: Client) -> None:
    def ids(n: int) -> list[int]:
        return list(range(5_000_000, 5_000_000 + n))

    def csv(n: int) -> str:
        return ",".join(map(str, ids(n)))

    status, body = await post(client, "/users/v1/users", {"userIds": ids(200)})
    assert status == 200 and isinstance(body, dict) and len(body["data"]) == 200
    names = [f"User{i}" for i in ids(100)]
    status, body = await post(client, "/users/v1/usernames/users", {"usernames": names})
    assert status == 200 and isinstance(body, dict) and len(body["data"]) == 100
    status, body = await post(client, "/presence/v1/presence/users", {"userIds": ids(50)})
    assert status == 200 and isinstance(body, dict) and len(body["userPresences"]) == 50
    universes = ",".join(str(10_000_000 + i) for i in range(50))
    status, body = await get(client, f"/games/v1/games?universeIds={universes}")
    assert status == 200 and isinstance(body, dict) and len(body["data"]) == 50
    assert (await get(client, f"/games/v1/games?universeIds={universes},10000050"))[0] == 400
    groups = ",".join(str(20_000_000 + i) for i in range(101))
    assert await get(client, f"/groups/v2/groups?groupIds={groups}") == (
        400,
        err(2, "Too many ids in request."),
    )
    status, body = await get(client, f"/groups/v2/groups?groupIds={groups.rsplit(',', 1)[0]}")
    assert status == 200 and isinstance(body, dict) and len(body["data"]) == 100
    too_many = err(1, "There are too many requested Ids.")
    for path in ("users/avatar-headshot", "users/avatar", "users/avatar-bust"):
        status, body = await get(client, f"/thumbnails/v1/{path}?userIds={csv(100)}")
        assert status == 200 and isinstance(body, dict) and len(body["data"]) == 100, path
        assert await get(client, f"/thumbnails/v1/{path}?userIds={csv(101)}") == (400, too_many)
    many = ",".join(str(20_000_000 + i) for i in range(101))
    assert await get(client, f"/thumbnails/v1/groups/icons?groupIds={many}") == (400, too_many)
    assert await get(client, f"/thumbnails/v1/games/icons?universeIds={many}") == (400, too_many)


async def test_synthetic_users_usernames_presence_and_bans(client: Client) -> None:
    status, body = await post(
        client, "/users/v1/usernames/users", {"usernames": ["USER7654321", "user7654321x"]}
    )
    assert (status, body) == (
        200,
        {
            "data": [
                {
                    "requestedUsername": "USER7654321",
                    "hasVerifiedBadge": False,
                    "id": 7654321,
                    "name": "User7654321",
                    "displayName": "User7654321",
                }
            ]
        },
    )
    banned = 1_000_999
    status, profile = await get(client, f"/users/v1/users/{banned}")
    assert status == 200 and isinstance(profile, dict) and profile["isBanned"] is True
    both = {"userIds": [banned, 1_000_998]}
    _, kept = await post(client, "/users/v1/users", both)
    _, excluded = await post(client, "/users/v1/users", {**both, "excludeBannedUsers": True})
    assert isinstance(kept, dict) and [u["id"] for u in kept["data"]] == [banned, 1_000_998]
    assert isinstance(excluded, dict) and [u["id"] for u in excluded["data"]] == [1_000_998]
    by_name = {"usernames": [f"User{banned}"], "excludeBannedUsers": True}
    assert await post(client, "/users/v1/usernames/users", by_name) == (200, {"data": []})
    bad = {"userIds": [1], "excludeBannedUsers": "yes"}
    assert (await post(client, "/users/v1/users", bad))[0] == 400
    _, presence = await post(
        client, "/presence/v1/presence/users", {"userIds": [3_000_001, 3_000_002, 3_000_003]}
    )
    assert isinstance(presence, dict)
    kinds = {
        p["userId"]: (p["userPresenceType"], p["lastLocation"]) for p in presence["userPresences"]
    }
    assert kinds == {
        3_000_001: (1, "Website"),
        3_000_002: (2, "RoCamping"),
        3_000_003: (0, "Website"),
    }
    _, shots = await get(client, "/thumbnails/v1/users/avatar-headshot?userIds=9999999,10000000")
    assert isinstance(shots, dict) and [d["targetId"] for d in shots["data"]] == [9_999_999]


async def test_synthetic_groups_and_universes(client: Client) -> None:
    gid = 23_456_789
    status, info = await get(client, f"/groups/v1/groups/{gid}")
    assert status == 200 and isinstance(info, dict)
    assert (info["name"], info["owner"], info["memberCount"]) == (f"Group{gid}", None, 0)
    _, v2 = await get(client, f"/groups/v2/groups?groupIds={gid},7")
    assert isinstance(v2, dict) and {g["id"]: g["owner"] for g in v2["data"]} == {
        gid: None,
        7: {"id": 1, "type": "User"},
    }
    _, roles = await get(client, f"/groups/v1/groups/{gid}/roles")
    assert isinstance(roles, dict) and [r["rank"] for r in roles["roles"]] == [0, 1, 255]
    _, members = await get(client, f"/groups/v1/groups/{gid}/users")
    assert isinstance(members, dict) and members["data"] == []
    assert (await get(client, "/groups/v1/groups/30000000"))[0] == 400
    _, icon = await get(client, f"/thumbnails/v1/groups/icons?groupIds={gid}")
    assert isinstance(icon, dict) and icon["data"][0]["targetId"] == gid

    uid = 12_345_678
    _, games = await get(client, f"/games/v1/games?universeIds={uid},20000000")
    assert isinstance(games, dict) and len(games["data"]) == 1
    game = games["data"][0]
    assert set(game) == set(answer_json("GET", "games", "/v1/games?universeIds=3531439676")[0])
    assert (game["id"], game["name"], game["rootPlaceId"]) == (uid, f"Game{uid}", uid + 10**11)
    assert game["creator"]["type"] == "User" and 1_000_000 <= game["creator"]["id"] <= 9_999_999
    place = f"/apis/universes/v1/places/{uid + 10**11}/universe"
    assert await get(client, place) == (200, {"universeId": uid})
    _, votes = await get(client, f"/games/v1/games/votes?universeIds={uid}")
    assert isinstance(votes, dict) and votes["data"][0]["id"] == uid
    _, dev = await get(client, f"/develop/v1/universes/{uid}")
    assert isinstance(dev, dict) and dev["rootPlaceId"] == uid + 10**11
    _, badges = await get(client, f"/badges/v1/universes/{uid}/badges")
    assert isinstance(badges, dict) and badges["data"] == []
    _, icons = await get(client, f"/thumbnails/v1/games/icons?universeIds={uid},20000000")
    assert isinstance(icons, dict) and [d["targetId"] for d in icons["data"]] == [uid]


async def test_large_groups_have_long_member_lists(client: Client) -> None:
    gid = LARGE_GROUP_MIN + 250  # 250 members: users 1,000,000..1,000,249
    status, info = await get(client, f"/groups/v1/groups/{gid}")
    assert status == 200 and isinstance(info, dict) and info["memberCount"] == 250
    _, roles = await get(client, f"/groups/v1/groups/{gid}/roles")
    assert isinstance(roles, dict) and [r["memberCount"] for r in roles["roles"]] == [0, 250, 0]
    seen: list[int] = []
    cursor = ""
    while True:
        _, page = await get(client, f"/groups/v1/groups/{gid}/users?limit=100&cursor={cursor}")
        assert isinstance(page, dict)
        seen += [m["user"]["userId"] for m in page["data"]]
        assert {m["role"]["rank"] for m in page["data"]} == {1}
        if page["nextPageCursor"] is None:
            break
        cursor = page["nextPageCursor"]
    assert seen == list(range(1_000_000, 1_000_250))
    _, desc = await get(client, f"/groups/v1/groups/{gid}/users?limit=10&sortOrder=Desc")
    assert isinstance(desc, dict) and desc["data"][0]["user"]["userId"] == 1_000_249
    _, empty = await get(client, f"/groups/v1/groups/{LARGE_GROUP_MIN}/users")
    assert isinstance(empty, dict) and empty["data"] == []


def answer_json(method: str, service: str, url: str, body: bytes = b"") -> list[dict[str, object]]:
    path, _, query = url.partition("?")
    pairs = [tuple(p.split("=", 1)) for p in query.split("&") if p]
    reply = answer(FakeRoblox(), method, service, path, [(k, v) for k, v in pairs], body)
    data = orjson.loads(reply.body)["data"]
    assert isinstance(data, list)
    return data


async def test_in_process_answer_is_what_the_server_sends(client: Client) -> None:
    cases = [
        ("GET", "users", "/v1/users/2345678", (), b""),
        ("GET", "users", "/v1/users/4", (), b""),
        ("POST", "presence", "/v1/presence/users", (), b'{"userIds":[2345671,2345672]}'),
        ("GET", "thumbnails", "/v1/users/avatar-headshot", (("userIds", "3,1,156,2345678"),), b""),
    ]
    fresh = FakeRoblox()
    for method, service, path, query, body in cases:
        url = f"/{service}{path}"
        async with client.request(method, url, params=query, data=body) as resp:
            raw = await resp.read()
            status = resp.status
        expected = answer(fresh, method, service, path, query, body)
        assert (status, raw) == (expected.status, expected.body), url


# -- thumbnails -----------------------------------------------------------------------------------
async def test_thumbnail_order_is_shuffled_deterministically(client: Client) -> None:
    ids = list(range(3_000_000, 3_000_030))
    url = "/thumbnails/v1/users/avatar?size=150x150&userIds=" + ",".join(map(str, ids))
    _, first = await get(client, url)
    _, again = await get(client, url)
    assert isinstance(first, dict) and first == again
    got = [d["targetId"] for d in first["data"]]
    assert sorted(got) == ids and got != ids
    assert first["data"][0]["imageUrl"].endswith("/150/150/Avatar/Png")
    _, two = await get(client, "/thumbnails/v1/users/avatar-bust?userIds=156,1&size=420x420")
    assert isinstance(two, dict) and [d["targetId"] for d in two["data"]] == [1, 156]
    assert two["data"][0]["imageUrl"].endswith("/420/420/AvatarBust/Png")
    assert (await get(client, "/thumbnails/v1/users/avatar-bust?userIds=1&size=720x720"))[0] == 400
    assert (await get(client, "/thumbnails/v1/users/avatar?userIds=1&size=30x30"))[0] == 200


async def test_thumbnail_batch(client: Client) -> None:
    items = [
        {"requestId": "a", "type": "AvatarHeadShot", "targetId": 156, "size": "150x150",
         "format": "Png", "isCircular": False},
        {"requestId": "b", "type": "GameIcon", "targetId": 1685831367, "size": "512x512",
         "format": "webp"},
        {"requestId": "c", "type": "GroupIcon", "targetId": 7},
        {"type": "AvatarHeadShot", "targetId": 4, "size": "48x48"},
        {"requestId": "e", "type": "AvatarBust", "targetId": 2, "size": "48x48"},
    ]  # fmt: skip
    status, body = await post(client, "/thumbnails/v1/batch", items)
    assert status == 200 and isinstance(body, dict)
    by_id = {d["requestId"]: d for d in body["data"]}
    assert [d["requestId"] for d in body["data"]] != ["a", "b", "c", None, "e"]
    assert by_id["a"]["imageUrl"].endswith("/150/150/AvatarHeadshot/Png")
    assert by_id["a"]["state"] == "Completed" and by_id["a"]["errorCode"] == 0
    assert by_id["b"]["imageUrl"].endswith("/512/512/Image/Webp")
    assert by_id["c"]["imageUrl"].endswith("/150/150/Image/Png")
    assert by_id[None] == {
        "requestId": None,
        "errorCode": 0,
        "errorMessage": "",
        "targetId": 4,
        "state": "Error",
        "imageUrl": None,
    }
    assert (by_id["e"]["state"], by_id["e"]["imageUrl"]) == ("Pending", None)  # user 2
    for bad, code in (
        ([{"type": "Screenshot", "targetId": 1}], 7),
        ([{"type": "GroupIcon", "targetId": 7, "size": "48x48"}], 3),
        ([{"type": "GroupIcon", "targetId": 7, "format": "Jpeg"}], 2),
        ([{"type": "GroupIcon", "targetId": "7"}], 4),
        ([{"type": "AvatarHeadShot", "targetId": 1}] * 101, 1),
    ):
        status, reply = await post(client, "/thumbnails/v1/batch", bad)
        assert status == 400 and isinstance(reply, dict), bad
        assert reply["errors"][0]["code"] == code, bad
    assert (await post(client, "/thumbnails/v1/batch", {"not": "a list"}))[0] == 400
    cookie = {"Cookie": f".ROBLOSECURITY={COOKIE}"}  # a documented read: no CSRF token
    assert (await post(client, "/thumbnails/v1/batch", items[:1], headers=cookie))[0] == 200


async def test_scripted_thumbnail_states(client: Client, state: FakeRoblox) -> None:
    state.script_thumbnail(156, ["Pending", "Pending", "Completed"], "AvatarHeadShot")
    state.script_thumbnail(7, ["Blocked"])
    url = "/thumbnails/v1/users/avatar-headshot?userIds=156"
    seen = []
    for _ in range(4):
        _, body = await get(client, url)
        assert isinstance(body, dict)
        seen.append((body["data"][0]["state"], body["data"][0]["imageUrl"] is None))
    assert seen == [
        ("Pending", True),
        ("Pending", True),
        ("Completed", False),
        ("Completed", False),
    ]
    _, other = await get(client, "/thumbnails/v1/users/avatar?userIds=156")  # another type
    assert isinstance(other, dict) and other["data"][0]["state"] == "Completed"
    for _ in range(2):  # the last state stays
        _, icon = await get(client, "/thumbnails/v1/groups/icons?groupIds=7")
        assert isinstance(icon, dict) and icon["data"][0] == {
            "targetId": 7,
            "state": "Blocked",
            "imageUrl": None,
        }
    with pytest.raises(ValueError, match="unknown thumbnail state"):
        state.script_thumbnail(1, ["Done"])
    script = {"targetId": 1, "states": ["InReview", "Completed"], "type": "AvatarHeadShot"}
    assert await post(client, "/_fake/thumbnails", script) == (200, {"ok": True})
    assert await get(client, "/_fake/thumbnails") == (200, {"scripted": 3})
    _, body = await get(client, "/thumbnails/v1/users/avatar-headshot?userIds=1")
    assert isinstance(body, dict) and body["data"][0]["state"] == "InReview"
    for bad in (
        {"targetId": 1, "states": ["Nope"]},
        {"targetId": "1", "states": []},
        {"targetId": 1, "states": "Pending"},
        {"targetId": 1, "states": [], "type": "Selfie"},
    ):
        assert (await post(client, "/_fake/thumbnails", bad))[0] == 400, bad
    state.reset()
    assert state.thumbnail_scripts() == 0


# -- per-client-IP rate limit ---------------------------------------------------------------------
LEGACY_429 = {"errors": [{"code": 4, "message": "Too many requests."}]}


@pytest.fixture
async def limited(aiohttp_server: AiohttpServer, clock: FakeClock) -> tuple[str, FakeRoblox]:
    """A real fake server limited to 4 requests/s per client IP, on the injected clock."""
    server = await aiohttp_server(create_fake_app(clock=clock, ip_limit=IpLimit.parse("4/s")))
    return f"http://127.0.0.1:{server.port}", server.app[FAKE_STATE]


async def fetch(
    session: aiohttp.ClientSession, url: str, **kw: object
) -> tuple[int, CIMultiDict[str], object]:
    async with session.get(url, **kw) as resp:  # type: ignore[arg-type]
        return resp.status, resp.headers.copy(), orjson.loads(await resp.read())


async def test_ip_limit_is_a_token_bucket_on_the_clock(
    limited: tuple[str, FakeRoblox], clock: FakeClock
) -> None:
    base, state = limited
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            assert (await fetch(session, base + "/users/v1/users/1"))[0] == 200
        status, headers, body = await fetch(session, base + "/users/v1/users/1")
        assert (status, body) == (429, LEGACY_429)
        assert not any(k.lower().startswith(("retry-after", "x-ratelimit")) for k in headers)
        clock.advance(0.24)
        assert (await fetch(session, base + "/users/v1/users/1"))[0] == 429
        clock.advance(0.01)  # 0.25 s: one token back
        assert (await fetch(session, base + "/users/v1/users/1"))[0] == 200
        assert (await fetch(session, base + "/users/v1/users/1"))[0] == 429
        clock.advance(60)  # refills to the burst, not beyond
        statuses = [(await fetch(session, base + "/users/v1/users/1"))[0] for _ in range(5)]
        assert statuses == [200, 200, 200, 200, 429]
        _, _, stats = await fetch(session, base + "/_fake/stats")
    assert stats == {
        "total": 13,  # refused requests reached the fake: they count as upstream calls
        "counts": {"GET users /v1/users/1": 13},
        "statuses": {"200": 9, "429": 4},
        "limited": 4,
    }
    assert state.limited == 4 and state.total == 13


async def test_ip_limit_counts_every_connection_of_one_ip(
    limited: tuple[str, FakeRoblox], clock: FakeClock
) -> None:
    base, state = limited
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) for _ in range(3)
    ]
    other_ip = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))
    try:
        statuses = []
        for i in range(6):  # round robin over three pools, a new connection every request
            statuses.append((await fetch(sessions[i % 3], base + "/users/v1/users/1"))[0])
        assert statuses == [200] * 4 + [429] * 2
        # another client IP (the loopback's 127.0.0.2) has a bucket of its own
        statuses = [(await fetch(other_ip, base + "/users/v1/users/1"))[0] for _ in range(5)]
        assert statuses == [200] * 4 + [429]
        assert state.limited == 3
    finally:
        for session in (*sessions, other_ip):
            await session.close()


async def test_ip_limit_per_service_and_documented_codes(
    limited: tuple[str, FakeRoblox], clock: FakeClock
) -> None:
    base, state = limited
    state.ip_limit = IpLimit.parse("1/s", per_service=True)
    async with aiohttp.ClientSession() as session:
        assert (await fetch(session, base + "/users/v1/users/1"))[0] == 200
        assert (await fetch(session, base + "/users/v1/users/1"))[0] == 429
        assert (await fetch(session, base + "/groups/v1/groups/7"))[0] == 200  # its own bucket
        assert (await fetch(session, base + "/games/v1/games?universeIds=1685831367"))[0] == 200
        status, _, body = await fetch(session, base + "/games/v1/games?universeIds=1685831367")
        assert (status, body) == (
            429,
            {"errors": [{"code": 4, "message": "Too many requests have been made."}]},
        )
        items = {"items": [{"itemType": 2, "id": 429}]}
        url = base + "/catalog/v1/catalog/items/details"
        async with session.post(url, json=items) as resp:
            assert resp.status == 403  # the CSRF handshake uses the catalog's one token
        async with session.post(url, json=items) as resp:
            assert resp.status == 429
            assert await resp.json() == {
                "errors": [{"code": 8, "message": "The flood limit has been exceeded."}]
            }
        # a refused request consumes no scripted fault
        state.script("users", "/v1/users/1", [Fault(status=503)])
        assert (await fetch(session, base + "/users/v1/users/1"))[0] == 429
        assert state.pending_faults() == 1
        clock.advance(1)
        assert (await fetch(session, base + "/users/v1/users/1"))[0] == 503
        # credentialed 429s are tagged like every other JSON answer
        status, _, body = await fetch(
            session, base + "/users/v1/users/1", headers={"x-api-key": "k"}
        )
        assert status == 429 and body == {"_fakeViewer": tag("k"), **LEGACY_429}
    state.ip_limit = None
    async with aiohttp.ClientSession() as session:
        statuses = {(await fetch(session, base + "/users/v1/users/1"))[0] for _ in range(10)}
    assert statuses == {200}


async def test_open_cloud_sends_rate_limit_headers(
    limited: tuple[str, FakeRoblox], clock: FakeClock
) -> None:
    base, state = limited
    state.ip_limit = IpLimit.parse("2/s")
    key = {"x-api-key": "secret"}
    async with aiohttp.ClientSession() as session:
        status, headers, body = await fetch(session, base + "/apis/cloud/v2/users/156", headers=key)
        assert status == 200 and isinstance(body, dict)
        assert (body["path"], body["id"], body["name"]) == ("users/156", "156", "builderman")
        assert headers["x-ratelimit-limit"] == "2, 2;w=1"
        assert (headers["x-ratelimit-remaining"], headers["x-ratelimit-reset"]) == ("1", "1")
        assert "retry-after" not in headers
        status, headers, _ = await fetch(session, base + "/apis/cloud/v2/groups/7", headers=key)
        assert status == 200 and headers["x-ratelimit-remaining"] == "0"
        status, headers, body = await fetch(session, base + "/apis/cloud/v2/users/156", headers=key)
        assert status == 429 and headers["retry-after"] == "1"
        assert (headers["x-ratelimit-remaining"], headers["x-ratelimit-reset"]) == ("0", "1")
        assert body == {
            "_fakeViewer": tag("secret"),
            "code": "RESOURCE_EXHAUSTED",
            "message": "Too many requests.",
        }
        clock.advance(10)
        status, headers, body = await fetch(session, base + "/apis/cloud/v2/users/4", headers=key)
        assert status == 404 and headers["x-ratelimit-remaining"] == "1"
        assert body == {
            "_fakeViewer": tag("secret"),
            "code": "NOT_FOUND",
            "message": "User not found.",
        }
        status, headers, body = await fetch(session, base + "/apis/cloud/v2/users/156")
        assert (status, body) == (401, {"errors": [{"code": 0, "message": "Invalid API Key"}]})
        assert "x-ratelimit-limit" in headers
        # legacy paths of the same host send none
        status, headers, _ = await fetch(session, base + "/apis/universes/v1/places/1/universe")
        assert status == 429 and "x-ratelimit-limit" not in headers
    state.ip_limit = None
    async with aiohttp.ClientSession() as session:
        status, headers, _ = await fetch(session, base + "/apis/cloud/v2/users/156", headers=key)
    assert status == 200 and "x-ratelimit-limit" not in headers


@pytest.mark.parametrize(
    ("text", "rate", "burst", "header"),
    [
        ("40/s", 40.0, 40, "40, 40;w=1"),
        ("40", 40.0, 40, "40, 40;w=1"),
        ("2400/min", 40.0, 40, "40, 40;w=1"),
        ("100/10s", 10.0, 10, "10, 10;w=1"),
        ("30/m", 0.5, 1, "1, 1;w=2"),
        ("7200/h", 2.0, 2, "2, 2;w=1"),
    ],
)
def test_ip_limit_parse(text: str, rate: float, burst: int, header: str) -> None:
    limit = IpLimit.parse(text)
    assert (limit.rate, limit.burst, limit.limit_header()) == (rate, burst, header)


def test_ip_limit_parse_errors() -> None:
    assert IpLimit.parse("20/s", burst=40).limit_header() == "40, 40;w=2"
    for bad in ("", "x", "40/fortnight", "0/s", "40/0s", "-1/s"):
        with pytest.raises(ValueError):
            IpLimit.parse(bad)
    with pytest.raises(ValueError):
        IpLimit(40, 0)


async def test_ip_limit_control_api(client: Client, state: FakeRoblox) -> None:
    assert await get(client, "/_fake/ip-limit") == (200, {"rate": None})
    on = {"rate": 40.0, "burst": 40, "per_service": False}
    assert await post(client, "/_fake/ip-limit", {"rate": "40/s"}) == (200, on)
    assert state.ip_limit == IpLimit(40, 40)
    assert await get(client, "/_fake/ip-limit") == (200, on)
    wide = {"rate": 2.5, "burst": 10, "per_service": True}
    assert await post(client, "/_fake/ip-limit", wide) == (200, wide)
    assert await post(client, "/_fake/ip-limit", {"rate": None}) == (200, {"rate": None})
    assert state.ip_limit is None
    for bad in (
        {"rate": "fast"},
        {"rate": 0},
        {"rate": True},
        {"rate": 40, "burst": 0},
        {"rate": 40, "burst": 1.5},
        {"rate": 40, "per_service": "yes"},
        {"rate": 40, "window": 1},
    ):
        status, reply = await post(client, "/_fake/ip-limit", bad)
        assert status == 400 and isinstance(reply, dict) and "error" in reply, bad
    assert state.ip_limit is None


def test_cli_rejects_a_bad_ip_limit() -> None:
    for args in (["--ip-limit", "lots"], ["--ip-burst", "5"]):
        done = subprocess.run(
            [sys.executable, "-m", "bloxproxy.fake", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 2 and "--ip-" in done.stderr, done.stderr


async def test_run_fake_with_an_ip_limit() -> None:
    port = _free_port()
    task = asyncio.create_task(run_fake("127.0.0.1", port, ip_limit=IpLimit(1, 1)))
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/_fake/ip-limit") as resp:
                        assert await resp.json() == {"rate": 1.0, "burst": 1, "per_service": False}
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.01)
            else:
                pytest.fail("run_fake did not start")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
