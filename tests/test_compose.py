"""Composite routes (``compose``, bloxproxy/compose.py): the pure decisions as tables, the
rule checks with their ``file:line``, and ``users.profile`` end to end through the proxy in
front of the bundled fake (faults, deadlines, ``include``, the micro-batcher)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re
import shlex
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator, ValidationError

from bloxproxy import compose
from bloxproxy.compose import Outcome, chosen, merge, outcome_of
from bloxproxy.config import shipped_rules_dir
from bloxproxy.errors import ConfigError, HTTPProblem
from bloxproxy.fake import SYNTHETIC_MIN, FakeRoblox, Fault
from bloxproxy.openapi import build_openapi
from bloxproxy.rules import Composite, Part, load_rules

from .conftest import ProxyFactory, fetcher_of

Client = TestClient[web.Request, web.Application]

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = load_rules([shipped_rules_dir()])
(PROFILE,) = SHIPPED.composites
PARTS = PROFILE.part_names
MIGHTYPART = 45348281
NO_RETRIES = {"BLOXPROXY_RETRIES_ATTEMPTS": "1"}

# What each part of MightyPart's profile asks upstream (method, service, path).
UPSTREAM = {
    "user": ("POST", "users", "/v1/users"),
    "headshot": ("GET", "thumbnails", "/v1/users/avatar-headshot"),
    "presence": ("POST", "presence", "/v1/presence/users"),
    "friends_count": ("GET", "friends", f"/v1/users/{MIGHTYPART}/friends/count"),
    "followers_count": ("GET", "friends", f"/v1/users/{MIGHTYPART}/followers/count"),
    "followings_count": ("GET", "friends", f"/v1/users/{MIGHTYPART}/followings/count"),
    "primary_group": ("GET", "groups", f"/v1/users/{MIGHTYPART}/groups/primary/role"),
}


def part(name: str) -> Part:
    return next(p for p in PROFILE.parts if p.name == name)


# -- which parts (?include=) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("include", "names"),
    [
        ([], PARTS),
        (["presence"], ("user", "presence")),
        (["presence,headshot"], ("user", "headshot", "presence")),
        (["headshot", "presence"], ("user", "headshot", "presence")),  # repeated keys
        (["presence,presence"], ("user", "presence")),
        (["user"], ("user",)),
        ([",".join(reversed(PARTS))], PARTS),  # the composite's order, whatever the query's
    ],
)
def test_include_chooses_parts_and_always_the_main_one(
    include: list[str], names: tuple[str, ...]
) -> None:
    assert tuple(p.name for p in chosen(PROFILE, include)) == names


@pytest.mark.parametrize(
    ("include", "shown"),
    [
        ([""], "''"),
        ([","], "''"),
        (["presence,"], "''"),
        (["bogus"], "'bogus'"),
        (["Presence"], "'Presence'"),  # names are exact
        (["presence "], "'presence '"),
        (["presence;headshot"], "'presence;headshot'"),
        (["missing"], "'missing'"),  # the answer's own key is no part
        (["x" * 5000], "'" + "x" * 39 + "…'"),  # cut, not echoed whole
        (["\x00\n<script>"], repr("\x00\n<script>")),
        ([",".join(f"n{i}" for i in range(100))], "'n0', 'n1', 'n2', 'n3', 'n4' …"),
    ],
)
def test_an_unknown_part_is_a_400_listing_the_allowed_ones(include: list[str], shown: str) -> None:
    with pytest.raises(HTTPProblem) as raised:
        chosen(PROFILE, include)
    problem = raised.value
    assert problem.status == 400 and problem.code == "invalid_request"
    assert f"names no part: {shown} (allowed: {', '.join(PARTS)})" in problem.detail
    assert problem.extra["allowed"] == list(PARTS)
    (invalid,) = problem.extra["invalid_params"]
    assert (invalid["name"], invalid["in"]) == ("include", "query")
    assert len(problem.detail) < 400


# -- what a part came to ------------------------------------------------------------------


def _problem(status: int, **members: Any) -> bytes:
    return orjson.dumps({"status": status, "code": "upstream_error", **members})


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (404, _problem(404, upstream_status=400), "not found"),
        (404, b"", "not found"),
        (503, _problem(503, upstream_status=503), "upstream 503"),
        (502, _problem(502, upstream_status=500), "upstream 500"),
        (429, _problem(429, upstream_status=429), "upstream 429"),
        (503, orjson.dumps({"code": "circuit_open"}), "circuit_open"),
        (502, orjson.dumps({"code": "upstream_bad_response"}), "upstream_bad_response"),
        (503, orjson.dumps({"upstream_status": "503", "code": "x"}), "x"),  # not a number
        (503, orjson.dumps({"upstream_status": True, "code": "x"}), "x"),
        (500, b"not json", "status 500"),
        (500, b"[]", "status 500"),
        (500, orjson.dumps({"code": ""}), "status 500"),
    ],
)
def test_why_a_part_answering_a_problem_is_missing(status: int, body: bytes, reason: str) -> None:
    outcome = outcome_of(part("presence"), status, body)
    assert (outcome.reason, outcome.status, outcome.value) == (reason, status, None)


@pytest.mark.parametrize(
    ("name", "body", "value", "reason"),
    [
        ("user", {"data": [{"id": 1}], "next_cursor": None}, {"id": 1}, None),  # first
        ("user", {"data": [{"id": 1}, {"id": 2}]}, {"id": 1}, None),
        ("user", {"data": []}, None, "not found"),  # the batch left the id out
        ("user", {"data": {"id": 1}}, None, "upstream_bad_response"),
        ("user", [{"id": 1}], None, "upstream_bad_response"),
        ("friends_count", {"count": 47}, 47, None),  # pick
        ("friends_count", {"count": None}, None, None),  # there, as null
        ("friends_count", {"total": 47}, None, "not found"),
        ("friends_count", [], None, "not found"),
        ("primary_group", None, None, None),  # no primary group: null, not missing
        ("primary_group", {"group": {"id": 7}}, {"group": {"id": 7}}, None),
    ],
)
def test_what_a_part_answering_200_is(name: str, body: Any, value: Any, reason: str | None) -> None:
    outcome = outcome_of(part(name), 200, orjson.dumps(body), "HIT")
    assert (outcome.value, outcome.reason, outcome.result) == (value, reason, "HIT")
    assert outcome.missing is (reason is not None)


def test_a_200_that_is_not_json_is_a_bad_response() -> None:
    outcome = outcome_of(part("user"), 200, b"{", "MISS")
    assert (outcome.reason, outcome.status) == ("upstream_bad_response", 502)


# -- the answer ---------------------------------------------------------------------------

OK = Outcome({"id": 1})
GONE = Outcome(reason="not found", status=404)
LATE = Outcome(reason="timeout", status=504)
DOWN = Outcome(reason="upstream 503", status=503)


@pytest.mark.parametrize(
    ("outcomes", "body"),
    [
        (
            {"user": OK, "presence": Outcome(None), "headshot": OK},
            {"user": {"id": 1}, "headshot": {"id": 1}, "presence": None, "missing": []},
        ),
        (
            {"user": OK, "headshot": LATE, "presence": DOWN},
            {
                "user": {"id": 1},
                "missing": [
                    {"part": "headshot", "reason": "timeout", "status": 504},
                    {"part": "presence", "reason": "upstream 503", "status": 503},
                ],
            },
        ),
        ({"user": OK}, {"user": {"id": 1}, "missing": []}),
    ],
)
def test_merge_answers_what_is_there_and_lists_what_is_missing(
    outcomes: dict[str, Outcome], body: dict[str, Any]
) -> None:
    parts = [p for p in PROFILE.parts if p.name in outcomes]
    got = merge(PROFILE, parts, [outcomes[p.name] for p in parts])
    assert got == body
    assert list(got) == list(body)  # the composite's order, missing last


@pytest.mark.parametrize(
    ("main", "status", "code"),
    [
        (GONE, 404, "not_found"),
        (LATE, 504, "main_part_missing"),
        (DOWN, 503, "main_part_missing"),
        (Outcome(reason="status 200", status=200), 502, "main_part_missing"),  # never a 2xx
    ],
)
def test_without_the_main_part_the_answer_is_its_problem(
    main: Outcome, status: int, code: str
) -> None:
    parts = [part("user"), part("presence")]
    with pytest.raises(HTTPProblem) as raised:
        merge(PROFILE, parts, [main, OK])
    problem = raised.value
    assert (problem.status, problem.code) == (status, code)
    assert problem.extra["missing"] == [
        {"part": "user", "reason": main.reason, "status": main.status}
    ]
    assert "Retry-After" not in problem.headers


def test_the_main_parts_retry_after_is_the_answers() -> None:
    held = Outcome(reason="circuit_open", status=503, retry_after="30")
    with pytest.raises(HTTPProblem) as raised:
        merge(PROFILE, [part("user")], [held])
    assert raised.value.headers == {"Retry-After": "30"}
    outcome = outcome_of(part("user"), 503, orjson.dumps({"code": "circuit_open"}), "", "7")
    assert (outcome.reason, outcome.retry_after) == ("circuit_open", "7")


def test_merge_refuses_parts_without_the_main_one() -> None:
    with pytest.raises(ValueError, match="main part 'user' was not asked"):
        merge(PROFILE, [part("presence")], [OK])


@pytest.mark.parametrize(
    ("results", "summary"),
    [
        (["HIT", "HIT"], "HIT"),
        (["HIT", "STALE"], "HIT"),
        (["HIT", "MISS"], "MISS"),
        (["HIT", ""], "HIT"),  # a part with no answer (timeout) says nothing of the cache
        (["", ""], "MISS"),
        (["COALESCED"], "MISS"),
    ],
)
def test_the_x_cache_of_a_composite(results: list[str], summary: str) -> None:
    assert compose.cache_summary([Outcome(result=r) for r in results]) == summary


# -- the rule language: bloxproxy check ------------------------------------------------------


def check(tmp_path: Path, text: str) -> list[str]:
    """The problems of one user rule file beside the shipped ones, as ``file:line: ...``."""
    path = tmp_path / "mine.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    try:
        load_rules([path], shipped=[shipped_rules_dir()])
    except ConfigError as exc:
        return [str(p).replace(str(tmp_path) + "/", "") for p in exc.problems]
    return []


def composite_file(parts: str, *, extra: str = "", compose_extra: str = "") -> str:
    return (
        textwrap.dedent(
            """\
            service: users
            routes:
              - id: mine.profile
                endpoint: /v1/mine/{user_id}
                params:
                  user_id: {type: int, min: 1, example: 156}
            """
        )
        + textwrap.indent(textwrap.dedent(extra), "    ")
        + "    compose:\n"
        + textwrap.indent(textwrap.dedent(compose_extra), "      ")
        + "      parts:\n"
        + textwrap.indent(textwrap.dedent(parts), "        ")
    )


def test_a_valid_composite_of_ones_own_compiles(tmp_path: Path) -> None:
    text = composite_file(
        """\
        user: {route: users.get, params: {user_id: "{user_id}"}}
        big_headshot: {route: thumbnails.user_headshots, first: true, deadline: 300ms,
                       params: {ids: "{user_id}", size: 420x420, is_circular: true}}
        """
    )
    path = tmp_path / "mine.yaml"
    path.write_text(text, encoding="utf-8")
    rules = load_rules([path], shipped=[shipped_rules_dir()])
    mine = next(c for c in rules.composites if c.id == "mine.profile")
    assert mine.main == "user"  # the first part
    assert [(p.name, p.route.id, p.deadline) for p in mine.parts] == [
        ("user", "users.get", 2.0),
        ("big_headshot", "thumbnails.user_headshots", 0.3),
    ]
    values = compose.part_values(mine.parts[1], {"user_id": 156})
    assert values == {"ids": (156,), "size": "420x420", "format": "Png", "is_circular": True}


@pytest.mark.parametrize(
    ("parts", "extra", "compose_extra", "problems"),
    [
        (
            "user: {route: nope.nothing}\n",
            "",
            "",
            ["mine.yaml:9: compose.parts.user.route: no route has the id 'nope.nothing'"],
        ),
        (
            'user: {route: users.get, params: {user_id: "{user_id}", bogus: 1}}\n',
            "",
            "",
            [
                "mine.yaml:9: compose.parts.user.params.bogus: users.get has no such "
                "parameter (its parameters: user_id)"
            ],
        ),
        (
            "user: {route: users.batch}\n",
            "",
            "",
            ["mine.yaml:9: compose.parts.user.params: users.batch needs its parameter 'ids'"],
        ),
        (
            'user: {route: users.get, params: {user_id: "{uid}"}}\n',
            "",
            "",
            [
                "mine.yaml:9: compose.parts.user.params: {uid} is not a parameter of this "
                "route (known: user_id)"
            ],
        ),
        (
            'user: {route: users.get, params: {user_id: "{user_id}"}}\n'
            'h: {route: thumbnails.user_headshots, params: {ids: "{user_id}", size: 1x1}}\n',
            "",
            "",
            [
                "mine.yaml:10: compose.parts.h.params.size: must be one of 48x48, 50x50, "
                "60x60, 75x75, 100x100, 110x110, 150x150, 180x180, 352x352, 420x420, 720x720, "
                "got '1x1'"
            ],
        ),
        (
            'img: {route: thumbnails.user_headshot_image, params: {user_id: "{user_id}"}}\n',
            "",
            "",
            [
                "mine.yaml:9: compose.parts.img.route: thumbnails.user_headshot_image answers "
                "a redirect, not JSON"
            ],
        ),
        (
            'user: {route: users.get, params: {user_id: "{user_id}"}, deadline: 0}\n',
            "",
            "",
            ["mine.yaml:9: compose.parts.user.deadline: expected more than 0s"],
        ),
        (
            'missing: {route: users.get, params: {user_id: "{user_id}"}}\n',
            "",
            "",
            [
                "mine.yaml:9: compose.parts.missing: reserved: the answer lists missing "
                "parts there",
            ],
        ),
        (
            'user: {route: users.get, params: {user_id: "{user_id}"}, ttl: 5m}\n',
            "",
            "",
            [
                "mine.yaml:9: compose.parts.user.ttl: unknown key (allowed: deadline, first, "
                "params, pick, route)"
            ],
        ),
        (
            'user: {route: users.get, params: {user_id: "{user_id}"}}\n',
            "",
            "main: usr\n",
            ["mine.yaml:8: compose.main: 'usr' is not a part (parts: ['user'])"],
        ),
        (
            "{}\n",
            "",
            "",
            ["mine.yaml:9: compose.parts: expected at least one part"],
        ),
        (
            'user: {route: users.get, params: {user_id: "{user_id}"}}\n',
            "query:\n  include: {type: string}\n",
            "",
            [
                "mine.yaml:8: query.include: reserved: ?include= chooses a composite route's "
                "parts (docs/RULES.md, Composite routes); give the parameter another name"
            ],
        ),
        (
            'user: {route: users.get, params: {user_id: "{user_id}"}}\n',
            "backend: {path: '/v1/users/{user_id}'}\n",
            "",
            [
                "mine.yaml:7: backend: a composite route (compose) has none of its own: "
                "each part is asked, normalized, cached and limited as its own route is"
            ],
        ),
    ],
)
def test_bloxproxy_check_says_what_is_wrong_and_where(
    tmp_path: Path, parts: str, extra: str, compose_extra: str, problems: list[str]
) -> None:
    assert check(tmp_path, composite_file(parts, extra=extra, compose_extra=compose_extra)) == (
        problems
    )


@pytest.mark.parametrize(
    ("compose_text", "problem"),
    [
        ("[]", "compose: expected a mapping, got []"),
        ("null", "compose: expected a mapping, got None"),
        ("{parts: [a, b]}", "compose.parts: expected a mapping, got ['a', 'b']"),
        ("{parts: {user: 5}}", "compose.parts.user: expected a mapping, got 5"),
        ("{parts: {user: {route: 5}}}", "compose.parts.user.route: expected a string, got 5"),
        (
            "{parts: {user: {route: users.get, params: [1]}}}",
            "compose.parts.user.params: expected a mapping, got [1]",
        ),
        (
            "{parts: {user: {route: users.get, params: {user_id: [1, 2]}}}}",
            "compose.parts.user.params.user_id: expected an integer, got '1,2'",
        ),
        (
            "{parts: {user: {route: users.get, params: {user_id: '{user_id'}}}}",
            "compose.parts.user.params: malformed placeholder in '{user_id' (use {name})",
        ),
        ("{parts: {User: {route: users.get}}}", "compose.parts.User: part names are snake_case"),
        (
            "{main: 5, parts: {user: {route: users.get, params: {user_id: '{user_id}'}}}}",
            "compose.main: expected a string, got 5",
        ),
        (
            "{deadline: soon, parts: {user: {route: users.get, params: {user_id: '{user_id}'}}}}",
            "compose.deadline: expected a duration like '30s', '500ms' or '5m', got 'soon'",
        ),
        (
            "{parts: {user: {route: users.get, params: {user_id: '{user_id}'}, first: maybe}}}",
            "compose.parts.user.first: expected true or false, got 'maybe'",
        ),
        (
            "{parts: {user: {route: users.profile, params: {user_id: '{user_id}'}}}}",
            "compose.parts.user.route: users.profile is a composite route: a part is an "
            "ordinary route",
        ),
    ],
)
def test_hostile_compose_blocks_are_problems_not_crashes(
    tmp_path: Path, compose_text: str, problem: str
) -> None:
    text = composite_file("{}\n").split("    compose:\n")[0] + f"    compose: {compose_text}\n"
    assert check(tmp_path, text) == [f"mine.yaml:7: {problem}"]


def test_a_composite_cannot_take_a_routes_endpoint_or_id(tmp_path: Path) -> None:
    text = composite_file('user: {route: users.get, params: {user_id: "{user_id}"}}\n')
    clash = text.replace("/v1/mine/{user_id}", "/v1/users/{user_id}")
    assert check(tmp_path, clash) == [
        "mine.yaml:3: endpoint: GET /v1/users/{user_id} is defined twice"
    ]
    taken = text.replace("id: mine.profile", "id: users.get")
    (problem,) = check(tmp_path, taken)
    assert problem.startswith("mine.yaml:3: id: 'users.get' is already used at ")


def test_ones_own_composite_with_a_shipped_id_replaces_it(tmp_path: Path) -> None:
    text = composite_file('user: {route: users.get, params: {user_id: "{user_id}"}}\n')
    path = tmp_path / "mine.yaml"
    path.write_text(text.replace("id: mine.profile", "id: users.profile"), encoding="utf-8")
    rules = load_rules([path], shipped=[shipped_rules_dir()])
    (mine,) = rules.composites
    assert (mine.endpoint, mine.part_names) == ("/v1/mine/{user_id}", ("user",))


# -- end to end: users.profile through the proxy ----------------------------------------------


async def get(proxy: Client, url: str, status: int = 200) -> tuple[Any, dict[str, str]]:
    async with proxy.get(url) as resp:
        body = await resp.read()
        assert resp.status == status, body
        headers = dict(resp.headers)
    return orjson.loads(body), headers


def calls(fake: FakeRoblox, name: str) -> int:
    method, service, path = UPSTREAM[name]
    return fake.count(service, path, method)


async def test_every_part_of_a_profile(proxy: Client, fake: FakeRoblox) -> None:
    body, headers = await get(proxy, f"/v1/users/{MIGHTYPART}/profile")
    assert list(body) == [*PARTS, "missing"]
    assert body["missing"] == []
    assert body["user"] == {
        "has_verified_badge": False,
        "id": MIGHTYPART,
        "name": "MightyPart",
        "display_name": "MightyPart",
    }
    assert body["headshot"]["target_id"] == MIGHTYPART
    assert body["headshot"]["state"] == "Completed"
    assert body["presence"]["user_id"] == MIGHTYPART
    assert body["presence"]["user_presence_type"] == 2  # in a game
    assert (body["friends_count"], body["followers_count"], body["followings_count"]) == (
        47,
        510,
        337,
    )
    assert body["primary_group"]["group"]["id"] == 5850082
    assert body["primary_group"]["role"]["rank"] == 255
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Cache"] == "MISS"
    assert "ETag" not in headers
    assert {name: calls(fake, name) for name in PARTS} == dict.fromkeys(PARTS, 1)
    assert fake.total == len(PARTS)
    assert fetcher_of(proxy).bodies is None or fetcher_of(proxy).bodies.used == 0

    # each part is its own route's entry: the next profile asks Roblox nothing...
    again, headers = await get(proxy, f"/v1/users/{MIGHTYPART}/profile")
    assert again == body and headers["X-Cache"] == "HIT"
    assert fake.total == len(PARTS)
    # ...and so is each route asked on its own
    async with proxy.get(f"/v1/users/{MIGHTYPART}/friends/count") as resp:
        assert resp.headers["X-Cache"] == "HIT"
    assert fake.total == len(PARTS)


TOKEN = "s3cret-admin-token"


async def purge(proxy: Client, body: object) -> tuple[int, Any]:
    async with proxy.post(
        "/_bloxproxy/admin/purge",
        data=orjson.dumps(body),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    ) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_the_composite_shows_a_parts_fresher_entry(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    """Nothing of the composite is stored: purge one part's route and the next profile asks
    that part again, and only that part."""
    proxy = await make_proxy(BLOXPROXY_SERVER_ADMIN_TOKEN=TOKEN)
    await get(proxy, "/v1/users/156/profile")
    assert fake.total == len(PARTS)
    status, done = await purge(proxy, {"url": "/v1/users/156/friends/count"})
    assert status == 200 and done["purged"] == 1
    _, headers = await get(proxy, "/v1/users/156/profile")
    assert headers["X-Cache"] == "MISS"
    assert fake.total == len(PARTS) + 1
    assert fake.count("friends", "/v1/users/156/friends/count") == 2
    # the composite itself has no entry to purge: the answer says what to purge instead
    for body in ({"route": "users.profile"}, {"url": "/v1/users/156/profile"}):
        status, problem = await purge(proxy, body)
        assert status == 400, problem
        assert problem["detail"].startswith("users.profile is a composite route: only its parts")
        assert "friends.count" in problem["detail"]


async def test_include_asks_only_the_chosen_parts(proxy: Client, fake: FakeRoblox) -> None:
    body, _ = await get(proxy, f"/v1/users/{MIGHTYPART}/profile?include=presence,friends_count")
    assert list(body) == ["user", "presence", "friends_count", "missing"]
    assert body["missing"] == []
    assert fake.total == 3
    body, _ = await get(proxy, f"/v1/users/{MIGHTYPART}/profile?include=headshot&include=user")
    assert list(body) == ["user", "headshot", "missing"]
    assert fake.total == 4  # user and presence were cached; the headshot is new


async def test_a_failing_part_is_reported_and_the_rest_answered(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**NO_RETRIES)
    fake.script("presence", "/v1/presence/users", [Fault(status=503)])
    fake.script("friends", f"/v1/users/{MIGHTYPART}/followers/count", [Fault(status=500)])
    body, _ = await get(proxy, f"/v1/users/{MIGHTYPART}/profile")
    assert body["missing"] == [
        {"part": "presence", "reason": "upstream 503", "status": 503},
        {"part": "followers_count", "reason": "upstream 500", "status": 502},
    ]
    assert "presence" not in body and "followers_count" not in body
    assert body["user"]["id"] == MIGHTYPART and body["friends_count"] == 47
    # the failures were not cached: the next profile has every part
    body, _ = await get(proxy, f"/v1/users/{MIGHTYPART}/profile")
    assert body["missing"] == [] and body["presence"]["user_id"] == MIGHTYPART


async def test_a_part_that_cannot_be_reached_is_reported_by_its_code(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**NO_RETRIES)
    fake.script("thumbnails", "/v1/users/avatar-headshot", [Fault(drop=True)])
    fake.script(
        "groups", f"/v1/users/{MIGHTYPART}/groups/primary/role", [Fault(malformed_json=True)]
    )
    body, _ = await get(proxy, f"/v1/users/{MIGHTYPART}/profile")
    reasons = {m["part"]: (m["reason"], m["status"]) for m in body["missing"]}
    assert reasons["primary_group"] == ("upstream_bad_response", 502)
    assert reasons["headshot"][1] in (502, 503, 504)
    assert reasons["headshot"][0].startswith("upstream_")
    assert set(reasons) == {"headshot", "primary_group"}


SHORT_DEADLINE = """\
service: users
routes:
  - id: users.profile
    endpoint: /v1/users/{user_id}/profile
    params:
      user_id: {type: int, min: 1}
    compose:
      parts:
        user: {route: users.batch, params: {ids: "{user_id}"}, first: true}
        headshot: {route: thumbnails.user_headshots, params: {ids: "{user_id}"}, first: true,
                   deadline: 150ms}
        friends_count: {route: friends.count, params: {user_id: "{user_id}"}, pick: count}
"""


async def test_a_part_slower_than_its_deadline_is_a_timeout(
    make_proxy: ProxyFactory, fake: FakeRoblox, tmp_path: Path
) -> None:
    rules = tmp_path / "short.yaml"
    rules.write_text(SHORT_DEADLINE, encoding="utf-8")
    proxy = await make_proxy(BLOXPROXY_RULES_PATHS=str(rules))
    fake.script("thumbnails", "/v1/users/avatar-headshot", [Fault(delay=0.4)])
    started = asyncio.get_running_loop().time()
    body, _ = await get(proxy, "/v1/users/156/profile")
    took = asyncio.get_running_loop().time() - started
    assert body["missing"] == [{"part": "headshot", "reason": "timeout", "status": 504}]
    assert body["user"]["id"] == 156 and body["friends_count"] == 0
    assert 0.15 <= took < 0.4  # the deadline, not the slow call
    # the slow call went on and filled the part's entry: once it is in (a real wait for
    # the fake's delay, not for a TTL), the next profile has it, from the cache
    await asyncio.sleep(0.35)
    body, headers = await get(proxy, "/v1/users/156/profile")
    assert body["missing"] == [] and body["headshot"]["target_id"] == 156
    assert headers["X-Cache"] == "HIT"
    assert fake.count("thumbnails", "/v1/users/avatar-headshot") == 1


async def test_an_unknown_user_is_a_404_problem(proxy: Client, fake: FakeRoblox) -> None:
    problem, headers = await get(proxy, "/v1/users/4/profile", 404)
    assert headers["Content-Type"] == "application/problem+json"
    assert (problem["code"], problem["detail"]) == ("not_found", "user not found")
    assert problem["instance"] == "/v1/users/4/profile"
    assert problem["request_id"] == headers["X-Request-ID"]
    assert {"part": "user", "reason": "not found", "status": 404} in problem["missing"]
    assert {m["part"] for m in problem["missing"]} == set(PARTS)  # nothing of a nobody


async def test_a_failing_main_part_is_the_answer(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**NO_RETRIES)
    fake.script("presence", "/v1/presence/users", [Fault(status=503, retry_after="5")])
    problem, headers = await get(proxy, "/v1/users/1/profile?include=presence", 200)
    assert problem["missing"] == [{"part": "presence", "reason": "upstream 503", "status": 503}]
    assert "Retry-After" not in headers  # only the main part's would be the answer's
    fake.script("users", "/v1/users", [Fault(status=503, retry_after="5")])
    problem, headers = await get(proxy, f"/v1/users/{MIGHTYPART}/profile", 503)
    assert headers["Retry-After"] == "5"
    assert problem["code"] == "main_part_missing"
    assert problem["missing"] == [{"part": "user", "reason": "upstream 503", "status": 503}]


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        ("/v1/users/156/profile?include=", 400, "invalid_request"),
        ("/v1/users/156/profile?include=bogus", 400, "invalid_request"),
        ("/v1/users/156/profile?include=presence%00", 400, "invalid_request"),
        ("/v1/users/156/profile?include=%FF", 400, "invalid_request"),  # not UTF-8
        ("/v1/users/156/profile?include=" + "a," * 2000, 400, "invalid_request"),
        ("/v1/users/0/profile", 400, "invalid_request"),
        ("/v1/users/abc/profile", 400, "invalid_request"),
        ("/v1/users/99999999999999999999999/profile", 400, "invalid_request"),
        ("/v1/users/156/profile/", 404, "no_route"),
    ],
)
async def test_hostile_requests_are_clear_problems_without_upstream_calls(
    proxy: Client, fake: FakeRoblox, url: str, status: int, code: str
) -> None:
    problem, headers = await get(proxy, url, status)
    assert headers["Content-Type"] == "application/problem+json"
    assert problem["code"] == code
    assert len(orjson.dumps(problem)) < 2000  # nothing echoed whole
    assert fake.total == 0


async def test_other_methods_are_405_and_head_is_answered(proxy: Client) -> None:
    async with proxy.post("/v1/users/156/profile") as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "GET, HEAD"
    async with proxy.head("/v1/users/156/profile") as resp:
        assert resp.status == 200 and await resp.read() == b""


async def test_concurrent_profiles_share_upstream_calls(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    """Profiles of 25 distinct users at once: the batch parts (user, headshot, presence)
    of all of them are merged by the micro-batcher into a few calls."""
    proxy = await make_proxy(BLOXPROXY_LIMITS_UPSTREAM_RATE="100000")
    users = range(SYNTHETIC_MIN + 10, SYNTHETIC_MIN + 35)
    bodies = await asyncio.gather(*(get(proxy, f"/v1/users/{u}/profile") for u in users))
    for uid, (body, _) in zip(users, bodies, strict=True):
        assert body["missing"] == [], body
        assert body["user"]["id"] == body["headshot"]["target_id"] == uid
        assert body["presence"]["user_id"] == uid
    assert fake.total < len(users) * len(PARTS)
    for name in ("user", "headshot", "presence"):
        assert calls(fake, name) < len(users) / 4, (name, calls(fake, name))
    assert fake.count("friends", f"/v1/users/{users[0]}/friends/count") == 1  # not batched


# -- the README's examples run ------------------------------------------------------------


def readme_examples() -> list[tuple[str, str, Any]]:
    """The curl commands of the README's Composite routes section, in order: a call of the
    fake's control API (``fake``, its path and body) or a call of the proxy (``proxy``, its
    URL and the JSON shown after it)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Composite routes", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    blocks = [*re.findall(r"```(\w+)\n(.*?)```", section, re.S), ("", "")]
    out: list[tuple[str, str, Any]] = []
    for (lang, body), (next_lang, shown) in itertools.pairwise(blocks):
        if lang != "sh" or not body.startswith("curl"):
            continue
        argv = shlex.split(body)
        url = argv[-1] if "-d" not in argv else next(a for a in argv if a.startswith("http"))
        if url.startswith("http://127.0.0.1:9000/_fake/"):
            out.append(
                ("fake", url.removeprefix("http://127.0.0.1:9000"), argv[argv.index("-d") + 1])
            )
        else:
            assert next_lang == "json", body
            out.append(("proxy", url.removeprefix("http://127.0.0.1:8080"), orjson.loads(shown)))
    return out


def _same(value: Any) -> Any:
    """A shown answer with its request id left out (each request has its own)."""
    if isinstance(value, dict):
        return {k: _same(v) for k, v in value.items() if k != "request_id"}
    return value


async def test_the_readme_examples_answer_what_they_show(
    make_proxy: ProxyFactory, fake_server: TestServer
) -> None:
    examples = readme_examples()
    assert [kind for kind, _, _ in examples] == ["proxy", "proxy", "proxy", "fake", "proxy"]
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session:
        for kind, url, shown in examples:
            if kind == "fake":
                target = f"http://127.0.0.1:{fake_server.port}{url}"
                async with session.post(target, data=shown) as resp:
                    assert resp.status == 200, await resp.read()
                continue
            async with proxy.get(url) as resp:
                got = orjson.loads(await resp.read())
            assert _same(got) == _same(shown), url


# -- OpenAPI ------------------------------------------------------------------------------


def _resolved(doc: dict[str, Any], schema: Any) -> Any:
    """``schema`` with the document's ``$ref``s put in place (they do not nest in loops)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str):
            node: Any = doc
            for step in ref.removeprefix("#/").split("/"):
                node = node[step]
            return _resolved(doc, node)
        return {k: _resolved(doc, v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_resolved(doc, v) for v in schema]
    return schema


async def test_the_openapi_entry_describes_what_the_route_answers(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    doc = build_openapi(SHIPPED)
    op = doc["paths"]["/v1/users/{user_id}/profile"]["get"]
    assert op["operationId"] == "users.profile"
    include = next(p for p in op["parameters"] if p["name"] == "include")
    assert include["schema"]["items"]["enum"] == list(PARTS)
    assert (include["style"], include["explode"], include["required"]) == ("form", False, False)
    assert [p["route"] for p in op["x-bloxproxy-parts"]] == [p.route.id for p in PROFILE.parts]
    assert "304" not in op["responses"]  # never cached whole: no ETag to match
    assert {"400", "404", "502", "503", "504"} <= set(op["responses"])
    media = op["responses"]["200"]["content"]["application/json"]
    ok = Draft202012Validator(_resolved(doc, media["schema"]))
    problem = Draft202012Validator(_resolved(doc, doc["components"]["schemas"]["Problem"]))
    proxy = await make_proxy(**NO_RETRIES)
    fake.script("presence", "/v1/presence/users", [Fault(status=503)])
    for uid in (MIGHTYPART, 156, 1):  # a part missing; no primary group (null); all there
        body, _ = await get(proxy, f"/v1/users/{uid}/profile")
        ok.validate(body)
    body, _ = await get(proxy, "/v1/users/156/profile?include=presence")
    ok.validate(body)
    ok.validate(media["example"])
    with pytest.raises(ValidationError):
        ok.validate({"user": {}, "missing": [], "extra": 1})
    for url, status in (("/v1/users/4/profile", 404), ("/v1/users/1/profile?include=x", 400)):
        body, _ = await get(proxy, url, status)
        problem.validate(body)


def test_every_shipped_composite_is_tested_here() -> None:
    text = Path(__file__).read_text(encoding="utf-8")
    for composite in SHIPPED.composites:
        assert composite.endpoint.split("{")[0] in text, composite.id


def test_a_composite_is_a_frozen_value() -> None:
    assert isinstance(PROFILE, Composite)
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROFILE.main = "presence"  # type: ignore[misc]
