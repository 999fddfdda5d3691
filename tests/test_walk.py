"""Whole lists (``?all=true``, bloxproxy/walk.py), end to end: the proxy app in front of the
bundled fake, read as a client reads a stream.

Group 7 has 137 members (two pages of 100); the fake's large groups (``LARGE_GROUP_MIN + n``
has ``n`` members) make lists as long as a test needs.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import re
import shlex
import textwrap
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bloxproxy.app import create_app
from bloxproxy.appkeys import ACCESS_LOG, METRICS
from bloxproxy.fake import LARGE_GROUP_MIN, FakeRoblox, Fault
from bloxproxy.rules import load_rules
from bloxproxy.walk import NDJSON, wants_json

from .conftest import FakeClock, ProxyFactory, fetcher_of, proxy_config

Client = TestClient[web.Request, web.Application]

MEMBERS = "/v1/groups/7/members"
UPSTREAM = "/v1/groups/7/users"
FAST = {"BLOXPROXY_LIMITS_UPSTREAM_RATE": "100000"}  # no limiter waits in long walks


async def ndjson(client: Client, url: str, **kw: Any) -> tuple[list[Any], dict[str, Any]]:
    """The items and the trailer of a walk, read line by line."""
    async with client.get(url, **kw) as resp:
        assert resp.status == 200, await resp.read()
        assert resp.content_type == NDJSON
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert resp.headers["Cache-Control"] == "no-store"
        lines = [orjson.loads(line) async for line in resp.content]
    *items, last = lines
    assert set(last) == {"_end"}, last
    assert not any(isinstance(i, dict) and "_end" in i for i in items)
    return items, last["_end"]


async def paged(client: Client, url: str) -> list[Any]:
    """Every item of a list, walked the way a client walks it page by page."""
    items: list[Any] = []
    cursor = None
    while True:
        target = url + (f"&cursor={cursor}" if cursor else "")
        async with client.get(target) as resp:
            assert resp.status == 200
            page = orjson.loads(await resp.read())
        items += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def held(client: Client) -> int:
    """Bytes of upstream bodies still counted in the byte budget (0 once all is written)."""
    bodies = fetcher_of(client).bodies
    assert bodies is not None
    return bodies.used


def upstream_calls(fake: FakeRoblox, path: str) -> list[dict[str, str]]:
    return [dict(r.query) for r in fake.requests if r.path == path]


def end(**changed: Any) -> dict[str, Any]:
    """A trailer: a complete walk, with ``changed``."""
    base = {
        "done": True,
        "complete": True,
        "capped": False,
        "timed_out": False,
        "next_cursor": None,
        "skip": 0,
    }
    return base | changed


# -- what a walk sends --------------------------------------------------------------------


async def test_ndjson_streams_every_item_then_the_trailer(proxy: Client, fake: FakeRoblox) -> None:
    items, trailer = await ndjson(proxy, f"{MEMBERS}?all=true")
    assert trailer == end(count=137, pages=2)
    assert items == await paged(proxy, f"{MEMBERS}?limit=100")
    assert items[0]["user"]["username"] == "Roblox" and items[0]["role"]["rank"] == 255
    # the largest page the route allows, the route's own defaults, then Roblox's cursor
    first, second = upstream_calls(fake, UPSTREAM)[:2]
    assert first == {"limit": "100", "sortOrder": "Asc"}
    assert second["limit"] == "100" and second["cursor"]
    assert held(proxy) == 0  # each page's upstream body given back once rendered


async def test_json_is_the_list_shape_with_the_trailer_after_the_items(proxy: Client) -> None:
    async with proxy.get(f"{MEMBERS}?all=true", headers={"Accept": "application/json"}) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        assert resp.headers["Transfer-Encoding"] == "chunked"
        raw = await resp.read()
    doc = orjson.loads(raw)
    assert list(doc) == ["data", "next_cursor", "previous_cursor", "_end"]  # streamed in order
    assert doc["data"] == (await ndjson(proxy, f"{MEMBERS}?all=true"))[0]
    assert (doc["next_cursor"], doc["previous_cursor"]) == (None, None)
    assert doc["_end"] == end(count=137, pages=2)


@pytest.mark.parametrize(
    ("accept", "json"),
    [
        ("", False),
        ("*/*", False),
        ("application/x-ndjson", False),
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/json, application/x-ndjson", False),  # a tie: the default
        ("application/x-ndjson;q=0.5, application/json", True),
        ("application/json;q=0.4, application/x-ndjson;q=0.9", False),
        ("application/json;q=x", False),
        ("text/html, application/json;q=0.1", True),
    ],
)
def test_accept_chooses_the_format(accept: str, json: bool) -> None:
    assert wants_json(accept) is json


async def test_the_clients_limit_and_parameters_are_kept(proxy: Client, fake: FakeRoblox) -> None:
    items, trailer = await ndjson(proxy, f"{MEMBERS}?all=true&limit=25&sort_order=Desc")
    assert trailer == end(count=137, pages=6)
    assert items == await paged(proxy, f"{MEMBERS}?limit=100&sort_order=Desc")
    assert items[-1]["user"]["username"] == "Roblox"  # the owner is last, descending
    calls = upstream_calls(fake, UPSTREAM)[:6]
    assert {(c["limit"], c["sortOrder"]) for c in calls} == {("25", "Desc")}


async def test_a_second_walk_is_served_from_the_cache(proxy: Client, fake: FakeRoblox) -> None:
    async with proxy.get(f"{MEMBERS}?all=true") as resp:
        assert resp.headers["X-Cache"] == "MISS"  # the first page's
        first = await resp.read()
    assert fake.total == 2
    async with proxy.get(f"{MEMBERS}?all=true") as resp:
        assert resp.headers["X-Cache"] == "HIT"
        assert resp.headers["Cache-Status"].startswith("bloxproxy; hit")
        assert await resp.read() == first
    assert fake.total == 2  # every page from its own entry: no upstream call
    async with proxy.get(f"{MEMBERS}?limit=100") as resp:  # the same entry as the walk's page
        assert resp.headers["X-Cache"] == "HIT"
    assert fake.total == 2


async def test_one_access_line_for_the_whole_walk(
    capsysbinary: pytest.CaptureFixture[bytes], make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy()  # (its access log writes to the captured stderr)
    async with proxy.get(f"{MEMBERS}?all=true") as resp:
        body = await resp.read()
    proxy.server.app[ACCESS_LOG].flush()
    (line,) = capsysbinary.readouterr().err.splitlines()
    record = orjson.loads(line)
    assert (record["route"], record["status"], record["cache"]) == ("groups.members", 200, "WALK")
    assert record["bytes"] == len(body)  # written when the stream ended: all of it


async def test_head_asks_for_the_first_page_only(proxy: Client, fake: FakeRoblox) -> None:
    async with proxy.head(f"{MEMBERS}?all=true") as resp:
        assert resp.status == 200 and resp.content_type == NDJSON
        assert await resp.read() == b""
    assert fake.total == 1


async def test_an_empty_list_is_just_the_trailer(proxy: Client) -> None:
    items, trailer = await ndjson(proxy, f"/v1/groups/{LARGE_GROUP_MIN}/members?all=true")
    assert items == [] and trailer == end(count=0, pages=1)


# -- where it stops -----------------------------------------------------------------------


async def test_the_cap_cuts_exactly_and_says_where_to_go_on(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(BLOXPROXY_LIMITS_WALK_MAX_ITEMS="120")
    everything = await paged(proxy, f"{MEMBERS}?limit=100")
    items, trailer = await ndjson(proxy, f"{MEMBERS}?all=true")
    second_page = upstream_calls(fake, UPSTREAM)[1]["cursor"]
    assert trailer == end(
        complete=False, capped=True, count=120, pages=2, next_cursor=second_page, skip=20
    )
    assert items == everything[:120]
    rest, after = await ndjson(proxy, f"{MEMBERS}?all=true&cursor={trailer['next_cursor']}")
    assert after == end(count=37, pages=1)
    assert items + rest[trailer["skip"] :] == everything


@pytest.mark.parametrize(
    ("cap", "count", "pages", "capped"),
    [("100", 100, 1, True), ("137", 137, 2, False), ("5", 5, 1, True)],
)
async def test_the_cap_at_a_page_end_or_inside_the_first(
    make_proxy: ProxyFactory, fake: FakeRoblox, cap: str, count: int, pages: int, capped: bool
) -> None:
    proxy = await make_proxy(BLOXPROXY_LIMITS_WALK_MAX_ITEMS=cap)
    items, trailer = await ndjson(proxy, f"{MEMBERS}?all=true")
    assert len(items) == trailer["count"] == count
    assert (trailer["pages"], trailer["capped"], trailer["complete"]) == (pages, capped, not capped)
    assert len(upstream_calls(fake, UPSTREAM)) == pages  # no page asked past the cap
    if cap == "100":  # at a page's end: go on from the next page, nothing to skip
        async with proxy.get(f"{MEMBERS}?limit=100") as resp:
            page = orjson.loads(await resp.read())
        assert (trailer["next_cursor"], trailer["skip"]) == (page["next_cursor"], 0)
    if cap == "5":  # inside the first page: from the first page again, skipping 5
        assert (trailer["next_cursor"], trailer["skip"]) == (None, 5)


async def test_the_deadline_stops_asking_for_pages(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(BLOXPROXY_LIMITS_WALK_DEADLINE="3s")
    group = f"/v1/groups/{LARGE_GROUP_MIN + 250}/members"  # three pages
    async with proxy.get(f"{group}?limit=100") as resp:  # the first page, cached
        assert resp.status == 200
    fake.script(
        "groups", f"/v1/groups/{LARGE_GROUP_MIN + 250}/users", [Fault(status=503, retry_after="5")]
    )
    # page 2: a 503 asks for 5 s, which the retry waits (on the test's clock): the walk is
    # then past its deadline and asks for no third page
    items, trailer = await ndjson(proxy, f"{group}?all=true")
    third = upstream_calls(fake, f"/v1/groups/{LARGE_GROUP_MIN + 250}/users")[-1]
    assert trailer["timed_out"] and not trailer["complete"] and trailer["done"]
    assert (trailer["count"], trailer["pages"], len(items)) == (200, 2, 200)
    assert (
        trailer["next_cursor"] and "cursor" in third and trailer["next_cursor"] != third["cursor"]
    )
    rest, after = await ndjson(proxy, f"{group}?all=true&cursor={trailer['next_cursor']}")
    assert after == end(count=50, pages=1)
    assert [m["user"]["user_id"] for m in items + rest] == list(range(1_000_000, 1_000_250))


async def test_a_page_that_fails_ends_the_stream_with_an_error_trailer(
    proxy: Client, fake: FakeRoblox
) -> None:
    async with proxy.get(f"{MEMBERS}?limit=100") as resp:  # the first page, cached
        assert resp.status == 200
    fake.script("groups", UPSTREAM, [Fault(status=503)] * 3)  # every attempt of page 2
    items, trailer = await ndjson(proxy, f"{MEMBERS}?all=true")
    calls = upstream_calls(fake, UPSTREAM)
    second_page = calls[-1]["cursor"]
    assert [c.get("cursor") for c in calls] == [None, *[second_page] * 3]  # retried in the page
    assert len(items) == 100
    error = trailer.pop("error")
    assert trailer == end(done=False, complete=False, count=100, pages=1, next_cursor=second_page)
    assert (error["status"], error["code"], error["upstream_status"]) == (
        503,
        "upstream_error",
        503,
    )
    assert error["instance"] == MEMBERS and error["title"] == "Service Unavailable"
    # the trailer's cursor tries the failed page again
    rest, after = await ndjson(proxy, f"{MEMBERS}?all=true&cursor={second_page}")
    assert after == end(count=37, pages=1)
    assert items + rest == await paged(proxy, f"{MEMBERS}?limit=100")
    assert held(proxy) == 0


async def test_a_first_page_that_fails_is_answered_as_that_page(proxy: Client) -> None:
    async with proxy.get("/v1/groups/999/members?all=true") as resp:
        assert resp.status == 404 and resp.content_type == "application/problem+json"
        assert resp.headers["X-Cache"] == "MISS"
        problem = orjson.loads(await resp.read())
    assert (problem["code"], problem["upstream_status"]) == ("upstream_error", 400)
    async with proxy.get(f"{MEMBERS}?all=true&cursor=nonsense") as resp:
        assert resp.status == 404  # Roblox's 400 for a cursor it did not issue (status_map)
        assert orjson.loads(await resp.read())["upstream_status"] == 400
    assert held(proxy) == 0


# -- the parameter ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "reason"),
    [("all=maybe", "expected true or false, got 'maybe'"), ("all=1&all=1", "given more than once")],
)
async def test_all_is_a_boolean(proxy: Client, fake: FakeRoblox, query: str, reason: str) -> None:
    async with proxy.get(f"{MEMBERS}?{query}") as resp:
        assert resp.status == 400
        problem = orjson.loads(await resp.read())
    assert problem["invalid_params"] == [{"name": "all", "in": "query", "reason": reason}]
    assert fake.total == 0


async def test_all_false_is_the_page_and_other_routes_ignore_it(proxy: Client) -> None:
    async with proxy.get(f"{MEMBERS}?all=false") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        assert len(orjson.loads(await resp.read())["data"]) == 10
    async with proxy.get("/v1/users/156?all=true") as resp:  # not paginated: not a list
        assert resp.status == 200 and orjson.loads(await resp.read())["id"] == 156


async def test_walks_can_be_turned_off(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(BLOXPROXY_LIMITS_WALK_MAX_ITEMS="0")
    async with proxy.get(f"{MEMBERS}?all=true") as resp:
        assert resp.status == 400
        assert "limits.walk.max_items: 0" in orjson.loads(await resp.read())["detail"]
    assert fake.total == 0


async def test_a_paginated_route_without_a_cursor_cannot_be_walked(
    tmp_path: Path,
    fake_server: TestServer,
    clock: FakeClock,
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    rule = """\
        service: groups
        routes:
          - id: groups.first_members
            endpoint: /v1/groups/{group_id}/first-members
            params: {group_id: {type: int}}
            backend: {path: "/v1/groups/{group_id}/users", query: {limit: 100}}
            response: {pagination: true}
        """
    (tmp_path / "r.yaml").write_text(textwrap.dedent(rule), encoding="utf-8")
    app = create_app(proxy_config(fake_server), rules=load_rules([tmp_path]), clock=clock)
    client = await aiohttp_client(app)
    async with client.get("/v1/groups/7/first-members?all=true") as resp:
        assert resp.status == 400
        detail = orjson.loads(await resp.read())["detail"]
    assert (
        detail
        == "groups.first_members cannot be walked with ?all=true: it has no 'cursor' parameter"
    )


# -- pacing, clients that leave, memory --------------------------------------------------


async def test_pages_are_paced_by_the_upstream_limiter(
    make_proxy: ProxyFactory, clock: FakeClock
) -> None:
    proxy = await make_proxy(BLOXPROXY_LIMITS_UPSTREAM_RATE="2")  # one slot every half second
    started = clock.now
    _, trailer = await ndjson(proxy, f"/v1/groups/{LARGE_GROUP_MIN + 40}/members?all=true&limit=10")
    assert trailer == end(count=40, pages=4)
    # A budget nobody used starts with one slot (upstream/budget.py), then one every 0.5 s:
    # pages 2, 3 and 4 each waited for theirs, on the app's clock.
    assert clock.now - started >= 1.5 - 1e-6


def _walks(client: Client) -> float:
    value = client.server.app[METRICS].registry.get_sample_value(
        "bloxproxy_requests_total", {"route": "groups.members", "status": "200"}
    )
    return value or 0.0


async def test_a_client_that_goes_away_stops_the_walk(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**FAST)
    fake.latency = 0.1  # each page takes a while: the walk is mid-list when the client goes
    gid = LARGE_GROUP_MIN + 5000  # fifty pages
    resp = await proxy.get(f"/v1/groups/{gid}/members?all=true")
    assert resp.status == 200
    assert orjson.loads(await resp.content.readline())["user"]["user_id"] == 1_000_000
    resp.close()  # hang up mid-walk
    deadline = time.monotonic() + 30
    while _walks(proxy) < 1:  # the handler has ended (its access line and count)
        assert time.monotonic() < deadline, "the walk went on after the client left"
        await asyncio.sleep(0.05)
    asked = len(upstream_calls(fake, f"/v1/groups/{gid}/users"))
    assert 1 <= asked <= 5, asked
    await asyncio.sleep(0.3)
    assert len(upstream_calls(fake, f"/v1/groups/{gid}/users")) == asked  # and nothing after


async def _walk_peak(proxy: Client, members: int) -> tuple[int, int]:
    """Walk a group of ``members`` reading line by line: the traced peak above the start,
    and the items read."""
    url = f"/v1/groups/{LARGE_GROUP_MIN + members}/members?all=true"
    gc.collect()  # garbage of earlier requests is not this walk's
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    read = 0
    async with proxy.get(url) as resp:
        assert resp.status == 200
        async for line in resp.content:
            read += 1
            del line
    return tracemalloc.get_traced_memory()[1] - base, read - 1


async def test_memory_stays_flat_however_long_the_list(make_proxy: ProxyFactory) -> None:
    # No cache: what the walk holds, not the pages the cache keeps (bounded by its own
    # cache.max_bytes). The proxy, the fake and the client all run in this process.
    proxy = await make_proxy(BLOXPROXY_CACHE_ENABLED="false", **FAST)
    await _walk_peak(proxy, 5_000)  # warm up: first-use and bounded caches (yarl's URLs…)
    tracemalloc.start()
    try:
        short, n_short = await _walk_peak(proxy, 1_000)  # 10 pages
        long, n_long = await _walk_peak(proxy, 5_000)  # 50 pages
        one_page = await _page_of_items(proxy)
    finally:
        tracemalloc.stop()
    assert (n_short, n_long) == (1_000, 5_000)
    print(
        f"walk peak above start: 10 pages {short / 1024:.0f} KiB, 50 pages {long / 1024:.0f} "
        f"KiB; one page of 100 items parsed: {one_page / 1024:.0f} KiB"
    )
    # Holding the list would add the 4,000 more items: 40 pages' worth, several MiB. The
    # peak is one page's work, however long the list (what varies is a few KiB of the
    # fake's request log and connection buffers).
    assert long < short + 2 * one_page, (short, long, one_page)


async def _page_of_items(proxy: Client) -> int:
    """What one page of 100 members takes as Python objects (the yardstick)."""
    async with proxy.get(f"/v1/groups/{LARGE_GROUP_MIN + 100}/members?limit=100") as resp:
        body = await resp.read()
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    items = orjson.loads(body)["data"]
    size = tracemalloc.get_traced_memory()[0] - before
    assert len(items) == 100
    return size


# -- the README's examples run as written ------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def _readme_section() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("### Whole lists")
    section = text[start : text.index("\n### ", start + 1)]
    return re.findall(r"^```(\w+)\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)


def _curl(command: str) -> tuple[str, dict[str, str], bool]:
    """The path, the headers and whether only the last line is shown (``| tail -n 1``)."""
    curl, _, pipe = command.partition("|")
    argv = shlex.split(curl)
    assert argv[0] == "curl" and pipe.split() in ([], ["tail", "-n", "1"]), command
    headers: dict[str, str] = {}
    for flag, value in itertools.pairwise(argv):
        if flag == "-H":
            name, _, text = value.partition(":")
            headers[name] = text.strip()
    url = argv[-1]
    assert url.startswith("http://127.0.0.1:8080/"), url
    return url[len("http://127.0.0.1:8080") :], headers, bool(pipe)


def _shown(expected: list[str], actual: list[str]) -> None:
    """``expected`` is ``actual`` where a ``…`` line stands for any lines."""
    if "…" in expected:
        cut = expected.index("…")
        head, tail = expected[:cut], expected[cut + 1 :]
        assert actual[: len(head)] == head and actual[len(actual) - len(tail) :] == tail
        assert len(actual) > len(head) + len(tail)
    else:
        assert actual == expected


async def test_the_readme_examples_run_as_shown(make_proxy: ProxyFactory) -> None:
    found = _readme_section()
    proxy = await make_proxy()
    ran = 0
    for (lang, body), (shown_lang, shown) in itertools.pairwise(found):
        if lang != "sh":
            continue
        if "scripts/serve --fake-upstream" in body:  # a restart with these settings
            env = dict(arg.split("=", 1) for arg in shlex.split(body) if "=" in arg)
            proxy = await make_proxy(**env)
            continue
        path, headers, last_only = _curl(body.strip())
        async with proxy.get(path, headers=headers) as resp:
            assert resp.status == 200
            answer = (await resp.read()).decode()
        if shown_lang == "json":
            assert orjson.loads(answer) == orjson.loads(shown)
        else:
            assert shown_lang == "text"
            lines = answer.splitlines()
            _shown(shown.splitlines(), lines[-1:] if last_only else lines)
        ran += 1
    assert ran == 4
