"""Thumbnails that just work: image routes (302 to the CDN), held Pending answers, states with
their own TTLs and answers, background re-polls (the shipped rules/thumbnails.yaml), against
the fake Roblox. Time moves on the injected clock: holds and re-polls "sleep" on it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bloxproxy.app import create_app
from bloxproxy.fake import FakeRoblox, Fault
from tests.conftest import FakeClock, ProxyFactory, fetcher_of, proxy_config

Client = TestClient[web.Request, web.Application]

HEADSHOT = "/v1/users/{}/avatar-headshot.png"


async def image(client: Client, path: str) -> tuple[int, dict[str, str], bytes]:
    async with client.get(path, allow_redirects=False) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def headshot_calls(fake: FakeRoblox) -> int:
    return fake.count("thumbnails", "/v1/users/avatar-headshot", "GET")


async def test_an_image_route_redirects_to_the_cdn_with_cache_headers(
    proxy: Client, fake: FakeRoblox, clock: FakeClock
) -> None:
    status, headers, body = await image(proxy, HEADSHOT.format(156) + "?size=420x420")
    assert (status, body) == (302, b"")
    assert headers["Location"].startswith("https://tr.rbxcdn.com/")
    assert "/420/420/" in headers["Location"]
    assert headers["X-Cache"] == "MISS"
    assert headers["Cache-Control"] == "public, max-age=3600, stale-if-error=86400"
    clock.advance(60)
    status, again, _ = await image(proxy, HEADSHOT.format(156) + "?size=420x420")
    assert (status, again["X-Cache"], again["Age"]) == (302, "HIT", "60")
    assert again["Location"] == headers["Location"]
    assert again["Cache-Control"] == "public, max-age=3540, stale-if-error=86400"
    assert headshot_calls(fake) == 1


async def test_every_image_kind_answers(proxy: Client) -> None:
    for path in (
        "/v1/users/156/avatar-bust.png",
        "/v1/users/156/avatar.png?size=720x720&circular=true",
        "/v1/groups/7/icon.png?size=420x420",
        "/v1/universes/1685831367/icon.png",
    ):
        status, headers, _ = await image(proxy, path)
        assert status == 302, path
        assert headers["Location"].startswith("https://"), path


async def test_a_pending_thumbnail_is_held_until_it_is_done(
    proxy: Client, fake: FakeRoblox, clock: FakeClock
) -> None:
    """The image route holds a Pending thumbnail (asking again every second, past the
    cached Pending answer) and answers the finished image."""
    fake.script_thumbnail(1_000_300, ["Pending", "Pending", "Completed"])
    started = clock()
    status, headers, _ = await image(proxy, HEADSHOT.format(1_000_300))
    assert status == 302
    assert headers["Location"].startswith("https://tr.rbxcdn.com/")
    assert headshot_calls(fake) == 3
    assert clock() - started <= 4.0


async def test_a_thumbnail_still_pending_past_the_hold_is_a_clear_404(
    proxy: Client, fake: FakeRoblox
) -> None:
    fake.script_thumbnail(1_000_301, ["Pending"] * 20)
    status, headers, body = await image(proxy, HEADSHOT.format(1_000_301))
    problem = orjson.loads(body)
    assert status == 404
    assert (problem["code"], problem["state"]) == ("no_image", "Pending")
    assert headers["Retry-After"] == "2"
    assert headshot_calls(fake) <= 5  # within 4 s, every second


async def test_a_blocked_thumbnail_is_not_held_and_says_so(proxy: Client, fake: FakeRoblox) -> None:
    fake.script_thumbnail(1_000_302, ["Blocked"])
    status, _, body = await image(proxy, HEADSHOT.format(1_000_302))
    assert status == 404
    assert orjson.loads(body)["state"] == "Blocked"
    assert headshot_calls(fake) == 1


async def test_only_http_urls_are_followed(proxy: Client, fake: FakeRoblox) -> None:
    """Roblox's answer is passed on faithfully, but a URL that is not http(s) is no image."""
    evil = {"data": [{"targetId": 1_000_303, "state": "Completed", "imageUrl": "javascript:x"}]}
    fake.script(
        "thumbnails",
        "/v1/users/avatar-headshot",
        [Fault(body=orjson.dumps(evil).decode(), content_type="application/json")],
    )
    status, headers, _ = await image(proxy, HEADSHOT.format(1_000_303))
    assert status == 404 and "Location" not in headers


async def test_a_placeholder_answers_when_there_is_no_image(
    make_proxy: ProxyFactory, fake: FakeRoblox, tmp_path: Path
) -> None:
    rules = tmp_path / "mine.yaml"
    rules.write_text(
        """\
service: thumbnails
routes:
  - id: mine.headshot
    endpoint: /v1/mine/{user_id}/image.png
    params: {user_id: {type: int, min: 1}}
    backend:
      path: /v1/users/avatar-headshot
      query: {userIds: "{user_id}", size: 150x150, format: Png, isCircular: false}
    response:
      redirect: {url: "data[0].imageUrl", state: "data[0].state",
                 placeholder: "https://example.com/no-image.png"}
"""
    )
    proxy = await make_proxy(BLOXPROXY_RULES_PATHS=str(rules))
    fake.script_thumbnail(1_000_304, ["Blocked"])
    status, headers, _ = await image(proxy, "/v1/mine/1000304/image.png")
    assert (status, headers["Location"]) == (302, "https://example.com/no-image.png")


async def test_a_pending_thumbnail_is_asked_again_in_the_background(
    aiohttp_client: Callable[..., Awaitable[Client]],
    fake_server: TestServer,
    fake: FakeRoblox,
    clock: FakeClock,
) -> None:
    """A client that got a Pending thumbnail leaves a re-poll behind: when the Pending entry
    expires, the proxy asks again by itself, so the next client gets the finished image
    from the cache. (The re-poll waits on the test's clock, which it moves.)"""
    app = create_app(
        proxy_config(fake_server),
        clock=clock,
        monotonic=clock,
        sleep=clock.sleep,
        background_sleep=clock.sleep,
    )
    proxy = await aiohttp_client(app)
    fake.script_thumbnail(1_000_305, ["Pending", "Completed"])
    path = "/v1/thumbnails/users/headshots?ids=1000305"
    first = await proxy.get(path)
    assert (await first.json())["data"][0]["state"] == "Pending"
    for _ in range(200):  # the re-poll sleeps on the injected clock, then joins a batch
        await asyncio.sleep(0.01)
        if headshot_calls(fake) == 2 and not fetcher_of(proxy).tasks():
            break
    assert headshot_calls(fake) == 2
    second = await proxy.get(path)
    assert second.headers["X-Cache"] == "HIT"
    assert (await second.json())["data"][0]["state"] == "Completed"


async def test_states_are_kept_as_long_as_they_say(
    proxy: Client, fake: FakeRoblox, clock: FakeClock
) -> None:
    states: dict[int, str] = {
        1_000_310: "InReview",
        1_000_311: "Error",
        1_000_312: "Blocked",
        1_000_313: "Completed",
    }
    for uid, state in states.items():
        fake.script_thumbnail(uid, [state])
    ids = ",".join(map(str, states))
    await proxy.get(f"/v1/thumbnails/users/headshots?ids={ids}")
    clock.advance(61)  # InReview and Error: 1 minute; Blocked and Completed: the hour
    await proxy.get(f"/v1/thumbnails/users/headshots?ids={ids}")
    asked = dict(fake.requests[-1].query)["userIds"].split(",")
    assert sorted(asked) == ["1000310", "1000311"]


async def test_concurrent_image_requests_are_batched(proxy: Client, fake: FakeRoblox) -> None:
    answers: list[Any] = await asyncio.gather(
        *(image(proxy, HEADSHOT.format(1_000_400 + i)) for i in range(30))
    )
    assert [status for status, _, _ in answers] == [302] * 30
    assert headshot_calls(fake) <= 2
