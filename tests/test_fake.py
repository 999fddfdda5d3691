"""Tests for the bundled fake Roblox upstream (bloxproxy.fake)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import time

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from bloxproxy.fake import (
    FAKE_STATE,
    PENDING_THUMBNAIL_USER_ID,
    FakeRoblox,
    Fault,
    create_fake_app,
    run_fake,
)
from bloxproxy.fake import app as fake_app

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
    assert [d["targetId"] for d in body["data"]] == [45348281, 156, 2, 1]  # reversed, 4 dropped
    pending = next(d for d in body["data"] if d["targetId"] == PENDING_THUMBNAIL_USER_ID)
    assert pending == {"targetId": 2, "state": "Pending", "imageUrl": None}
    done = body["data"][0]
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
    assert [d["targetId"] for d in icons["data"]] == [3531439676, 1685831367]
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
        {"total": 2, "counts": {"GET users /v1/users/1": 2}},
    )
    assert state.total == 2  # control requests are not counted
    status, recent = await get(client, "/_fake/requests?limit=1")
    assert status == 200 and isinstance(recent, list) and recent[0]["path"] == "/v1/users/1"
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
