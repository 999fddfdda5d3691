"""Tests for bloxproxy.rules: the shipped rule files, every validation error, compilation,
and the worked examples of docs/RULES.md."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from bloxproxy import normalize, rule_fields, rules
from bloxproxy.config import DEFAULT_SERVICES
from bloxproxy.errors import ConfigError
from bloxproxy.rules import CacheCondition, Route, RuleSet, load_rules, match_condition

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "rules"


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return load_rules([RULES_DIR])


def route(rs: RuleSet, endpoint: str) -> Route:
    found = [r for r in rs.routes if r.endpoint == endpoint]
    assert len(found) == 1, endpoint
    return found[0]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in tmp_path, so problems name files as ``bad.yaml``."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(directory: Path, text: str, name: str = "bad.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(paths: list[Path]) -> list[str]:
    with pytest.raises(ConfigError) as exc_info:
        load_rules(paths)
    return [str(p) for p in exc_info.value.problems]


def compile_one(directory: Path, text: str) -> Route:
    rs = load_rules([write(directory, text, "ok.yaml")])
    assert len(rs.routes) == 1
    return rs.routes[0]


# --- the shipped rules ----------------------------------------------------------------------

CLEAN_ROUTES = [
    "/v1/users/{user_id}",
    "/v1/users",
    "/v1/users/by-username/{username}",
    "/v1/users/search",
    "/v1/users/{user_id}/username-history",
    "/v1/users/{user_id}/friends/count",
    "/v1/users/{user_id}/followers/count",
    "/v1/users/{user_id}/followings/count",
    "/v1/users/{user_id}/groups",
    "/v1/users/{user_id}/badges",
    "/v1/users/{user_id}/avatar",
    "/v1/presence",
    "/v1/groups/{group_id}",
    "/v1/groups/{group_id}/roles",
    "/v1/groups/{group_id}/members",
    "/v1/universes",
    "/v1/places/{place_id}/universe",
    "/v1/universes/{universe_id}/votes",
    "/v1/universes/{universe_id}/badges",
    "/v1/universes/{universe_id}/game-passes",
    "/v1/badges/{badge_id}",
    "/v1/thumbnails/users/headshots",
    "/v1/thumbnails/universes/icons",
    "/v1/assets/{asset_id}",
]


def test_shipped_rules_load(shipped: RuleSet) -> None:
    assert len(shipped.routes) >= 24
    assert len(shipped.files) == len(list(RULES_DIR.glob("*.yaml")))


@pytest.mark.parametrize("endpoint", CLEAN_ROUTES)
def test_shipped_clean_route_exists(shipped: RuleSet, endpoint: str) -> None:
    r = route(shipped, endpoint)
    assert r.method == "GET"
    assert shipped.by_id(r.id) is r


def test_shipped_rules_cover_more_than_ten_services(shipped: RuleSet) -> None:
    services = {r.backend.service for r in shipped.routes}
    assert services >= {
        "apis", "avatar", "badges", "develop", "economy", "friends", "games", "groups",
        "presence", "thumbnails", "users",
    }  # fmt: skip
    assert len(services) > 10
    # every upstream a rule uses is reachable through the default passthrough allow-list
    assert services <= set(DEFAULT_SERVICES)


def test_shipped_routes_are_documented(shipped: RuleSet) -> None:
    for r in shipped.routes:
        assert r.summary, f"{r.where}: {r.id}: give the route a summary"
        assert r.tags, f"{r.where}: {r.id}: give the route (or its file) tags"
        assert re.fullmatch(r"[a-z]+\.[a-z_]+", r.id), (
            f"{r.where}: {r.id}: use an id like users.get"
        )
        for p in r.path_params:
            assert p.example is not None, f"{r.where}: {r.id}: give params.{p.name} an example"


def test_shipped_routes_match_through_the_router(shipped: RuleSet) -> None:
    for r in shipped.routes:
        concrete = re.sub(r"\{[a-z_]+\}", "1", r.endpoint)
        found, _, exists = shipped.router.match("GET", concrete)
        assert exists
        assert found is not None
        # a literal route wins over a parameter at the same position
        assert re.sub(r"\{[a-z_]+\}", "1", found.endpoint) == concrete


def test_shipped_batch_routes_respect_roblox_limits(shipped: RuleSet) -> None:
    # Roblox's batch limits (docs/ROBLOX.md): users by id <= 200, games?universeIds= <= 50,
    # presence <= 50
    limits = {"/v1/users": 200, "/v1/universes": 50, "/v1/presence": 50}
    for endpoint, most in limits.items():
        (ids,) = [p for p in route(shipped, endpoint).query_params if p.name == "ids"]
        assert ids.type == "int_list"
        assert ids.max_items == most


def test_shipped_page_sizes_are_roblox_page_sizes(shipped: RuleSet) -> None:
    # Legacy lists take 10/25/50/100 (the legacy-* API-key routes too: they are the legacy
    # APIs); Open Cloud v2's maxPageSize is any size up to its maximum (memberships 100,
    # roles 20: docs/ROBLOX.md, "Open Cloud").
    cloud_max = {"opencloud.group_memberships": 100, "opencloud.group_roles": 20}
    for r in shipped.routes:
        for p in r.query_params:
            if p.name == "limit" and r.backend.path.text.startswith("/cloud/v2/"):
                assert (p.enum, p.min, p.max) == ((), 1, cloud_max[r.id]), r.id
                assert p.default == 10, r.id
            elif p.name == "limit":
                assert p.enum == (10, 25, 50, 100), r.id
                assert p.default == 10, r.id


# --- compilation of the shipped rules -------------------------------------------------------


def test_users_batch_compiles(shipped: RuleSet) -> None:
    r = route(shipped, "/v1/users")
    assert r.id == "users.batch"
    b = r.backend
    assert (b.service, b.method, b.path.text, b.safe_read) == ("users", "POST", "/v1/users", True)
    assert b.body is not None
    assert b.body({"ids": (1, 156), "exclude_banned": False}) == {
        "userIds": [1, 156],
        "excludeBannedUsers": False,
    }
    assert r.order_param == "ids"
    assert r.plan.pick == ("data",)
    assert r.plan.order_by == normalize.OrderBy(("id",))
    assert r.cache.ttl == 600.0
    assert r.cache.stale_while_revalidate == 60.0
    assert r.cache.stale_if_error == 3600.0
    assert r.bucket == "users"
    (ids, exclude) = r.query_params
    assert (ids.required, ids.max_items, ids.min, ids.example) == (True, 200, 1, (1, 156))
    assert (exclude.type, exclude.default) == ("bool", False)


def test_groups_members_compiles(shipped: RuleSet) -> None:
    r = route(shipped, "/v1/groups/{group_id}/members")
    assert r.plan.pagination == normalize.Pagination()
    assert r.plan.pagination.items == ("data",)
    assert r.plan.pagination.next_cursor == ("nextPageCursor",)
    assert r.plan.pagination.previous_cursor == ("previousPageCursor",)
    assert r.status_map == {400: 404}
    assert r.backend.path.render({"group_id": 7}) == "/v1/groups/7/users"
    # the upstream query follows the written order; absent optional values are left out
    values = {"group_id": 7, "limit": 10, "cursor": None, "sort_order": "Asc"}
    assert r.backend.query.render(values) == [("limit", "10"), ("sortOrder", "Asc")]
    values["cursor"] = "abc=="
    assert r.backend.query.render(values) == [
        ("limit", "10"),
        ("cursor", "abc=="),
        ("sortOrder", "Asc"),
    ]


def test_thumbnail_query_renders_bools_and_constants(shipped: RuleSet) -> None:
    r = route(shipped, "/v1/thumbnails/universes/icons")
    values = {"ids": (1, 2), "size": "150x150", "format": "Png", "is_circular": False}
    assert r.backend.query.render(values) == [
        ("universeIds", "1,2"),
        ("size", "150x150"),
        ("format", "Png"),
        ("isCircular", "false"),
        ("returnPolicy", "PlaceHolder"),
    ]


def test_thumbnail_cache_when(shipped: RuleSet) -> None:
    r = route(shipped, "/v1/thumbnails/users/headshots")
    state = ("data", "*", "state")
    assert r.cache.when == (
        CacheCondition(state, ("Pending",), 5.0, "data[*].state", repoll=3),
        CacheCondition(state, ("TemporarilyUnavailable",), 10.0, "data[*].state", repoll=1),
        CacheCondition(state, ("InReview", "Error"), 60.0, "data[*].state"),
    )
    assert r.cache.ttl == 3600.0


def test_games_universe_of_place_compiles(shipped: RuleSet) -> None:
    r = route(shipped, "/v1/places/{place_id}/universe")
    assert r.backend.service == "apis"  # overrides the file's `games`
    assert r.bucket == "apis"
    assert r.require == (("universeId",),)
    assert r.cache.not_found_ttl == 300.0
    assert r.tags == ("games",)


def test_users_by_username_compiles(shipped: RuleSet) -> None:
    r = route(shipped, "/v1/users/by-username/{username}")
    assert r.plan.pick == ("data", 0)
    assert r.plan.empty_is_404 is True
    assert r.backend.body is not None
    assert r.backend.body({"username": "builderman"}) == {
        "usernames": ["builderman"],
        "excludeBannedUsers": False,
    }
    (username,) = r.path_params
    assert username.pattern is not None and username.pattern.pattern == "[A-Za-z0-9_]+"
    assert username.required is True


# --- match_condition ------------------------------------------------------------------------

THUMBS = {"data": [{"targetId": 1, "state": "Completed"}, {"targetId": 2, "state": "Pending"}]}


@pytest.mark.parametrize(
    ("path", "values", "body", "matches"),
    [
        (("data", "*", "state"), ("Pending",), THUMBS, True),
        (("data", "*", "state"), ("Blocked", "Error"), THUMBS, False),
        (("data", "*", "state"), ("Pending",), {"data": []}, False),
        (("data", "*", "state"), ("Pending",), {"data": {"state": "Pending"}}, False),
        (("data", "*", "state"), ("Pending",), {}, False),
        (("data", "*", "state"), ("Pending",), None, False),
        (("data", 0, "state"), ("Completed",), THUMBS, True),
        (("data", 1, "state"), ("Completed",), THUMBS, False),
        (("data", 5, "state"), ("Completed",), THUMBS, False),
        (("universeId",), (None,), {"universeId": None}, True),
        (("universeId",), (None,), {}, False),  # a missing key is not null
        (("*",), (1,), [0, 1], True),
        (("a", "*", "*"), (3,), {"a": [[1], [2, 3]]}, True),
    ],
)
def test_match_condition(
    path: tuple[str | int, ...], values: tuple[object, ...], body: object, matches: bool
) -> None:
    assert match_condition(CacheCondition(path, values, 5.0, "x"), body) is matches


# --- positive compilation of small rules ----------------------------------------------------


def test_defaults_of_a_minimal_route(tmp_path: Path) -> None:
    r = compile_one(
        tmp_path,
        """\
        service: users
        routes:
          - endpoint: /v1/users/{user_id}
            params:
              user_id: {type: int}
            backend:
              path: /v1/users/{user_id}
        """,
    )
    assert r.id == "GET /v1/users/{user_id}"
    assert r.method == "GET"
    assert r.backend.method == "GET"
    assert r.backend.safe_read is True
    assert r.backend.credentials == "none"
    assert r.backend.forward_headers == ()
    assert r.backend.headers == ()
    assert r.backend.body is None
    assert r.backend.query.items == ()
    assert r.plan == normalize.Plan()
    assert r.plan.fields.case == "snake"
    assert r.cache == rules.CachePolicy()
    assert (r.cache.ttl, r.cache.not_found_ttl, r.cache.credentials) == (60.0, None, "bypass")
    assert r.bucket == "users"
    assert r.order_param is None
    assert r.status_map == {}
    assert r.tags == ()
    assert r.deprecated is False
    assert r.where.line == 3
    (p,) = r.path_params
    assert (p.location, p.required, p.min_items, p.max_items) == ("path", True, 1, 100)


def test_every_field_compiles(tmp_path: Path) -> None:
    r = compile_one(
        tmp_path,
        """\
        service: users
        tags: [file-tag]
        _comment: keys starting with _ are comments at every level
        routes:
          - id: things.list
            _note: ignored
            endpoint: /v2/things/{thing_id}/parts
            method: GET
            summary: Parts of a thing
            description: Longer text.
            tags: [things, parts]
            deprecated: true
            example: {data: []}
            params:
              thing_id: {type: string, min_length: 2, max_length: 8, pattern: "[a-z]+",
                         description: The thing., example: abc}
            query:
              _skip: not a parameter
              ids: {type: int_list, required: true, min: 1, max: 9, min_items: 2,
                    max_items: 5, example: [1, 2]}
              names: {type: string_list, default: [a, b]}
              kind: {type: string, enum: [x, y], default: y}
              flag: {type: bool, default: true}
            backend:
              service: inventory
              method: PUT
              path: /v1/things/{thing_id}
              list_format: repeat
              query: {kind: "{kind}", all: "{ids}", fixed: 1}
              body: {ids: "{ids}", flag: "{flag}", label: "{thing_id}!"}
              headers: {X-Extra: "1"}
              forward_headers: [Accept-Language]
              credentials: forward
              safe_read: true
            response:
              pagination: {items: results, next: cursors.next, previous: null}
              pick: item
              allow: [id, name]
              deny: [secret]
              rename: {id: thing_id}
              case: camel
              order_by: {key: item.id, param: ids}
              empty: not_found
              shape: list
              status_map: {400: 404, 403: 404}
              require: [results]
            cache:
              enabled: true
              ttl: 1h
              stale_while_revalidate: 1m
              stale_if_error: 1d
              not_found_ttl: 30s
              credentials: per_credential
              when:
                - {path: "results[*].state", in: [Pending, Error], ttl: 0s}
                - {path: "total", equals: 0, ttl: 10s}
            limits: {bucket: inventory-slow}
        """,
    )
    assert r.id == "things.list"
    assert r.endpoint == "/v2/things/{thing_id}/parts"
    assert (r.summary, r.description) == ("Parts of a thing", "Longer text.")
    assert r.tags == ("things", "parts")
    assert r.deprecated is True
    assert r.example == {"data": []}
    (thing,) = r.path_params
    assert (thing.min_length, thing.max_length, thing.example) == (2, 8, "abc")
    ids, names, kind, flag = r.query_params
    assert (ids.min, ids.max, ids.min_items, ids.max_items) == (1, 9, 2, 5)
    assert names.default == ("a", "b")
    assert (kind.enum, kind.default) == (("x", "y"), "y")
    assert flag.default is True
    b = r.backend
    assert (b.service, b.method, b.credentials, b.safe_read) == (
        "inventory",
        "PUT",
        "forward",
        True,
    )
    assert b.headers == (("X-Extra", "1"),)
    assert b.forward_headers == ("accept-language",)
    values = {"thing_id": "a/b", "ids": (3, 1), "kind": "x", "flag": True}
    assert b.path.render(values) == "/v1/things/a%2Fb"
    assert b.query.render(values) == [("kind", "x"), ("all", "3"), ("all", "1"), ("fixed", "1")]
    assert b.body is not None
    assert b.body(values) == {"ids": [3, 1], "flag": True, "label": "a/b!"}
    plan = r.plan
    assert plan.pagination == normalize.Pagination(("results",), ("cursors", "next"), None)
    assert plan.pick == ("item",)
    assert plan.fields.allow == frozenset({"id", "name"})
    assert plan.fields.deny == frozenset({"secret"})
    assert dict(plan.fields.rename) == {"id": "thing_id"}
    assert plan.fields.case == "camel"
    assert plan.order_by == normalize.OrderBy(("item", "id"))
    assert r.order_param == "ids"
    assert plan.empty_is_404 is True
    assert plan.shape == "list"
    assert r.status_map == {400: 404, 403: 404}
    assert r.require == (("results",),)
    c = r.cache
    assert (c.ttl, c.stale_while_revalidate, c.stale_if_error, c.not_found_ttl) == (
        3600.0,
        60.0,
        86400.0,
        30.0,
    )
    assert c.credentials == "per_credential"
    assert c.when == (
        CacheCondition(("results", "*", "state"), ("Pending", "Error"), 0.0, "results[*].state"),
        CacheCondition(("total",), (0,), 10.0, "total"),
    )
    assert r.bucket == "inventory-slow"


def test_file_level_tags_and_cache_false(tmp_path: Path) -> None:
    r = compile_one(
        tmp_path,
        """\
        service: presence
        tags: [presence, live]
        routes:
          - endpoint: /v1/presence
            backend: {method: POST, path: /v1/presence/users}
            cache: false
        """,
    )
    assert r.tags == ("presence", "live")
    assert r.cache.enabled is False
    assert r.backend.safe_read is False  # a POST is not a safe read unless the rule says so


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data[*].state", ("data", "*", "state")),
        ("[*]", ("*",)),
        ("data[*]", ("data", "*")),
        ("a[*][*].b", ("a", "*", "*", "b")),
        ("data[0].state", ("data", 0, "state")),
        ("universeId", ("universeId",)),
    ],
)
def test_when_path(text: str, expected: tuple[str | int, ...]) -> None:
    assert rule_fields.when_path(text) == expected


def test_order_by_follows_the_only_list_param(tmp_path: Path) -> None:
    r = compile_one(
        tmp_path,
        """\
        service: thumbnails
        routes:
          - endpoint: /v1/icons
            query:
              ids: {type: int_list, required: true}
              size: {type: string, default: 150x150}
            backend:
              path: /v1/games/icons
              query: {universeIds: "{ids}", size: "{size}"}
            response: {pick: data, order_by: targetId}
        """,
    )
    assert r.order_param == "ids"
    assert r.plan.order_by == normalize.OrderBy(("targetId",))


# --- every validation error -----------------------------------------------------------------

ALLOWED_FILE = "routes, service, tags"
ALLOWED_ROUTE = (
    "backend, cache, deprecated, description, endpoint, example, id, limits, method, params, "
    "query, response, summary, tags"
)
ALLOWED_PARAM = (
    "default, description, enum, example, max, max_items, max_length, min, min_items, "
    "min_length, pattern, required, type"
)
ALLOWED_BACKEND = (
    "batch, body, credentials, forward_headers, headers, list_format, method, path, query, "
    "safe_read, service"
)
ALLOWED_RESPONSE = (
    "allow, case, deny, empty, hold, order_by, pagination, pick, redirect, rename, require, "
    "shape, status_map"
)
ALLOWED_CACHE = (
    "credentials, enabled, not_found_ttl, stale_if_error, stale_while_revalidate, tags, ttl, when"
)
CLEAN_PATH = "endpoint: expected a clean path like '/v1/users/{user_id}' (first segment v<N>)"

# Each case is a whole rule file; lines are counted from its first line.
ERRORS = [
    # --- unknown keys at every level ---
    pytest.param(
        """\
        service: users
        servce: users
        routes: []
        """,
        [(2, f"servce: unknown key (allowed: {ALLOWED_FILE})")],
        id="unknown-file-key",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            summray: x
            backend: {path: /v1/users}
        """,
        [(4, f"summray: unknown key (allowed: {ALLOWED_ROUTE})")],
        id="unknown-route-key",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users/{user_id}
            params:
              user_id: {type: int, minimum: 1}
            backend: {path: "/v1/users/{user_id}"}
        """,
        [(5, f"params.user_id.minimum: unknown key (allowed: {ALLOWED_PARAM})")],
        id="unknown-param-key",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend:
              path: /v1/users
              url: https://example.com
        """,
        [(6, f"backend.url: unknown key (allowed: {ALLOWED_BACKEND})")],
        id="unknown-backend-key",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            response:
              pick: data
              unwrap: data
        """,
        [(7, f"response.unwrap: unknown key (allowed: {ALLOWED_RESPONSE})")],
        id="unknown-response-key",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            response:
              pagination:
                items: data
                cursor: nextPageCursor
        """,
        [(8, "response.pagination.cursor: unknown key (allowed: items, next, previous)")],
        id="unknown-pagination-key",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query: {ids: {type: int_list}}
            backend: {path: /v1/users}
            response:
              order_by: {key: id, param: ids, reverse: true}
        """,
        [(7, "response.order_by.reverse: unknown key (allowed: key, param)")],
        id="unknown-order-by-key",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            cache:
              ttl: 1m
              max_age: 1m
        """,
        [(7, f"cache.max_age: unknown key (allowed: {ALLOWED_CACHE})")],
        id="unknown-cache-key",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users/{user_id}
            params: {user_id: {type: int}}
            backend: {path: "/v1/users/{user_id}"}
            cache:
              tags: ["user:{user_id}", "group:{group_id}"]
        """,
        [(7, "cache.tags: 'group:{group_id}': {group_id} is not a parameter of the route")],
        id="tag-of-no-parameter",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            cache: {tags: ["user {x}"]}
        """,
        [
            (
                5,
                "cache.tags: 'user {x}': a tag template is letters, digits, _ . : @ / + = - "
                "and {parameter} names (no spaces)",
            )
        ],
        id="tag-template-with-a-space",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            cache:
              when:
                - path: state
                  equals: Pending
                  ttl: 5s
                  unless: x
        """,
        [(10, "cache.when[0].unless: unknown key (allowed: equals, in, path, repoll, ttl)")],
        id="unknown-when-key",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            limits: {bucket: users, rate: 5}
        """,
        [(5, "limits.rate: unknown key (allowed: bucket, per_key_owner)")],
        id="unknown-limits-key",
    ),
    # --- the file ---
    pytest.param("- 1\n", [(1, "rule file: expected a mapping, got [1]")], id="file-not-mapping"),
    pytest.param("", [(1, "rule file: expected a mapping, got None")], id="file-empty"),
    pytest.param(
        "service: users\n", [(1, "routes: expected a list of routes")], id="file-without-routes"
    ),
    pytest.param(
        "service: users\nroutes: {a: 1}\n",
        [(2, "routes: expected a list of routes")],
        id="routes-not-list",
    ),
    pytest.param(
        "service: users\nroutes:\n  - just text\n",
        [(3, "routes[0]: expected a mapping, got 'just text'")],
        id="route-not-mapping",
    ),
    pytest.param(
        "service: users\ntags: {a: b}\nroutes: []\n",
        [(2, "tags: expected a list of strings, got {'a': 'b'}")],
        id="bad-tags",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            bad-yaml: [
        """,
        [(6, "invalid YAML: while parsing a flow node, expected the node content, "
             "but found '<stream end>'")],
        id="invalid-yaml",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            endpoint: /v1/people
            backend: {path: /v1/users}
        """,
        [(4, "endpoint: duplicate key (first at line 3)")],
        id="duplicate-key",
    ),
    # --- endpoint ---
    *[
        pytest.param(
            f"""\
            service: users
            routes:
              - endpoint: {endpoint}
                backend: {{path: /v1/users}}
            """,
            [(3, f"{CLEAN_PATH}, got {shown}")],
            id=f"endpoint-{case}",
        )
        for case, endpoint, shown in [
            ("no-version", "/users", "'/users'"),
            ("bad-version", "/vx/users", "'/vx/users'"),
            ("relative", "v1/users", "'v1/users'"),
            ("version-only", "/v1", "'/v1'"),
            ("trailing-slash", "/v1/users/", "'/v1/users/'"),
            ("double-slash", "/v1//users", "'/v1//users'"),
            ("camel-param", "/v1/users/{userId}", "'/v1/users/{userId}'"),
            ("partial-param", "/v1/users/id{user_id}", "'/v1/users/id{user_id}'"),
            ("query", "/v1/users?x=1", "'/v1/users?x=1'"),
            ("not-a-string", "5", "5"),
        ]
    ],
    pytest.param(
        "service: users\nroutes:\n  - backend: {path: /v1/users}\n",
        [(3, f"{CLEAN_PATH}, got None")],
        id="endpoint-missing",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users/{user_id}
            backend: {path: /v1/users}
        """,
        [(3, "endpoint: {user_id} is not declared under params")],
        id="undeclared-path-param",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            params:
              user_id: {type: int}
            backend: {path: /v1/users}
        """,
        [(5, "params.user_id: not in the endpoint path")],
        id="path-param-not-in-endpoint",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users/{a}/x/{a}
            params: {a: {type: int}}
            backend: {path: /v1/users}
        """,
        [(3, "endpoint: a parameter appears twice")],
        id="path-param-twice",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users/{user_id}
            params: {user_id: {type: int}}
            query: {user_id: {type: int}}
            backend: {path: "/v1/users/{user_id}"}
        """,
        [(5, "query.user_id: also a path parameter")],
        id="query-shadows-path-param",
    ),
    pytest.param(
        """\
        service: groups
        routes:
          - endpoint: /v1/groups/{group_id}/members
            params: {group_id: {type: int}}
            query:
              cursor: {type: string}
              all: {type: bool}
            backend: {path: "/v1/groups/{group_id}/users", query: {cursor: "{cursor}"}}
            response: {pagination: true}
        """,
        [
            (
                7,
                "query.all: reserved: ?all=true walks a paginated route's whole list "
                "(docs/RULES.md, Whole lists); give the parameter another name",
            )
        ],
        id="query-all-is-reserved",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            method: POST
            backend: {path: /v1/users}
        """,
        [(4, "method: expected one of GET, got 'POST'")],
        id="route-method",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - id: Users Get
            endpoint: /v1/users
            backend: {path: /v1/users}
        """,
        [(3, "id: expected an id like 'users.get', got 'Users Get'")],
        id="bad-id",
    ),
    # --- parameters ---
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query:
              userIds: {type: int_list}
            backend: {path: /v1/users}
        """,
        [(5, "query.userIds: parameter names are snake_case")],
        id="param-not-snake-case",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query:
              ids: {required: true}
            backend: {path: /v1/users}
        """,
        [(5, "query.ids.type: required (int, string, bool, int_list, string_list)")],
        id="missing-type",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query:
              ids: {type: integer}
            backend: {path: /v1/users}
        """,
        [(5, "query.ids.type: expected one of int, string, bool, int_list, string_list, "
             "got 'integer'")],
        id="bad-type",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query:
              ids: int
            backend: {path: /v1/users}
        """,
        [(5, "query.ids: expected a mapping, got 'int'")],
        id="param-not-mapping",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query: [ids]
            backend: {path: /v1/users}
        """,
        [(4, "query: expected a mapping, got ['ids']")],
        id="params-not-mapping",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query:
              name:
                type: string
                min: 3
            backend: {path: /v1/users}
        """,
        [(7, "query.name: min/max apply to int parameters only")],
        id="min-on-string",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query:
              n:
                type: int
                max_items: 3
            backend: {path: /v1/users}
        """,
        [(7, "query.n: min_items/max_items apply to list parameters only")],
        id="max-items-on-scalar",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query:
              n: {type: int, min: one}
            backend: {path: /v1/users}
        """,
        [(5, "query.n.min: expected an integer, got 'one'")],
        id="min-not-int",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query:
              ids: {type: int_list, max_items: 0}
            backend: {path: /v1/users}
        """,
        [(5, "query.ids.max_items: expected an integer >= 1, got 0")],
        id="max-items-zero",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query:
              name: {type: string, pattern: "[a-z"}
            backend: {path: /v1/users}
        """,
        [(5, "query.name.pattern: invalid regex: unterminated character set at position 0")],
        id="bad-regex",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query:
              limit: {type: int, enum: [10, twenty]}
            backend: {path: /v1/users}
        """,
        [(5, "query.limit.enum: expected an integer, got 'twenty'")],
        id="enum-wrong-type",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query:
              order: {type: string, enum: []}
            backend: {path: /v1/users}
        """,
        [(5, "query.order.enum: expected a non-empty list")],
        id="enum-empty",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query:
              order: {type: string, enum: Asc}
            backend: {path: /v1/users}
        """,
        [(5, "query.order.enum: expected a non-empty list")],
        id="enum-not-list",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query:
              limit: {type: int, default: ten}
            backend: {path: /v1/users}
        """,
        [(5, "query.limit.default: expected an integer, got 'ten'")],
        id="default-wrong-type",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query:
              limit: {type: int, enum: [10, 25, 50, 100], default: 20}
            backend: {path: /v1/users}
        """,
        [(5, "query.limit.default: must be one of 10, 25, 50, 100, got '20'")],
        id="default-not-in-enum",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query:
              ids: {type: int_list, max_items: 2, example: [1, 2, 3]}
            backend: {path: /v1/users}
        """,
        [(5, "query.ids.example: accepts at most 2 items")],
        id="example-too-many",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query:
              sort: {type: string, enum: [Asc, Desc], example: asc}
            backend: {path: /v1/users}
        """,
        [(5, "query.sort.example: must be one of Asc, Desc, got 'asc'")],
        id="example-not-in-enum",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query:
              flag: {type: bool, default: maybe}
            backend: {path: /v1/users}
        """,
        [(5, "query.flag.default: expected true or false, got 'maybe'")],
        id="default-bool",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users/{user_id}
            params:
              user_id: {type: int, default: 1}
            backend: {path: "/v1/users/{user_id}"}
        """,
        [(5, "params.user_id: path parameters have no default")],
        id="default-on-path-param",
    ),
    pytest.param(
        # a bad parameter is reported once, not again by the endpoint and the templates
        """\
        service: users
        routes:
          - endpoint: /v1/users/{user_id}
            params:
              user_id: {type: int, minimum: 1}
            query:
              n: {type: number}
            backend:
              path: /v1/users/{user_id}
              query: {n: "{n}"}
        """,
        [
            (5, f"params.user_id.minimum: unknown key (allowed: {ALLOWED_PARAM})"),
            (7, "query.n.type: expected one of int, string, bool, int_list, string_list, "
                "got 'number'"),
        ],
        id="bad-param-reported-once",
    ),
    # --- backend ---
    pytest.param(
        "service: users\nroutes:\n  - endpoint: /v1/users\n",
        [(3, "backend: required (the upstream request)")],
        id="missing-backend",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: /v1/users
        """,
        [(4, "backend: expected a mapping, got '/v1/users'")],
        id="backend-not-mapping",
    ),
    pytest.param(
        """\
        routes:
          - endpoint: /v1/users
            backend:
              path: /v1/users
        """,
        [(4, "backend.service: required (here or at file level)")],
        id="missing-service",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend:
              service: users.roblox.com
              path: /v1/users
        """,
        [(5, "backend.service: expected a service name like 'users', got 'users.roblox.com'")],
        id="bad-backend-service",
    ),
    pytest.param(
        """\
        service: Users
        routes: []
        """,
        [(1, "service: expected a service name like 'users', got 'Users'")],
        id="bad-file-service",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend:
              method: FETCH
              path: /v1/users
        """,
        [(5, "backend.method: expected one of GET, POST, PUT, PATCH, DELETE, got 'FETCH'")],
        id="bad-backend-method",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend:
              method: POST
        """,
        [(5, "backend.path: required, e.g. /v1/users/{user_id}")],
        id="missing-backend-path",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend:
              path: 5
        """,
        [(5, "backend.path: expected a path template like /v1/users/{user_id}, got 5")],
        id="backend-path-not-a-string",
    ),
    *[
        pytest.param(
            f"""\
            service: users
            routes:
              - endpoint: /v1/users/{{user_id}}
                params: {{user_id: {{type: int}}}}
                backend:
                  path: "{path}"
            """,
            [(6, f"backend.path: {message}")],
            id=f"backend-path-{case}",
        )
        for case, path, message in [
            (
                "unknown-placeholder",
                "/v1/users/{userId}",
                "{userId} is not a parameter of this route (known: user_id)",
            ),
            (
                "malformed",
                "/v1/users/{user_id",
                "malformed placeholder in '/v1/users/{user_id' (use {name})",
            ),
            ("relative", "v1/users", "path must start with '/', got 'v1/users'"),
            ("dotdot", "/v1/../users", "path must be a plain absolute path, got '/v1/../users'"),
            (
                "trailing-dotdot",
                "/v1/users/..",
                "path must be a plain absolute path, got '/v1/users/..'",
            ),
            ("query", "/v1/users?x=1", "path must be a plain absolute path, got '/v1/users?x=1'"),
            ("double-slash", "//evil.example/x", "path must be a plain absolute path, got "
                                                 "'//evil.example/x'"),
        ]
    ],
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend:
              path: /v1/users
              query: {userIds: "{ids}"}
        """,
        [(6, "backend.query: {ids} is not a parameter of this route (known: none)")],
        id="backend-query-unknown-placeholder",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend:
              path: /v1/users
              body: {userIds: [1]}
        """,
        [(6, "backend.body: a GET has no body")],
        id="body-on-get",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend:
              method: POST
              path: /v1/users
              body: {userIds: "{ids}"}
        """,
        [(7, "backend.body: {ids} is not a parameter of this route (known: none)")],
        id="body-unknown-placeholder",
    ),
    *[
        pytest.param(
            f"""\
            service: users
            routes:
              - endpoint: /v1/users
                backend:
                  path: /v1/users
                  forward_headers: [Accept-Language, {header}]
            """,
            [(6, f"backend: header '{header}' cannot be set or forwarded here")],
            id=f"forward-{header.lower()}",
        )
        for header in ["Cookie", "authorization", "Host", "x-api-key", "Content-Length",
                       "Roblox-Id", "X Bad"]
    ],
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend:
              path: /v1/users
              headers: {Authorization: "Bearer x"}
        """,
        [(6, "backend: header 'Authorization' cannot be set or forwarded here")],
        id="set-authorization",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend:
              path: /v1/users
              headers: {X-Count: 1}
        """,
        [(6, "backend.headers: expected a mapping of strings to strings, got {'X-Count': 1}")],
        id="header-value-not-string",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend:
              path: /v1/users
              list_format: json
        """,
        [(6, "backend.list_format: expected one of csv, repeat, got 'json'")],
        id="bad-list-format",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend:
              path: /v1/users
              credentials: always
        """,
        [(6, "backend.credentials: expected one of none, forward, api_key, got 'always'")],
        id="bad-backend-credentials",
    ),
    pytest.param(
        """\
        service: apis
        routes:
          - endpoint: /v1/op
            backend:
              path: /v1/op
            response:
              hold: {operation: path, path: done, until: ["true"]}
        """,
        [
            (7, "response.hold.path: not with operation (it waits on done)"),
            (7, "response.hold.until: not with operation (it waits on done)"),
        ],
        id="hold-operation-with-path",
    ),
    pytest.param(
        """\
        service: apis
        routes:
          - endpoint: /v1/op
            backend:
              path: /v1/op
            response:
              hold: {within: 2s}
        """,
        [
            (7, "response.hold.path: required without operation (e.g. data[0].state)"),
            (7, "response.hold.until: required without operation (e.g. [Completed])"),
        ],
        id="hold-without-path-or-operation",
    ),
    pytest.param(
        """\
        service: apis
        routes:
          - endpoint: /v1/op
            backend:
              path: /v1/op
            response:
              hold: {operation: "a..b["}
        """,
        [
            (
                7,
                "response.hold.operation: invalid path 'a..b[': expected a key "
                "([A-Za-z0-9_$-]+), '.key' or '[index]' at position 1",
            )
        ],
        id="hold-operation-bad-path",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend:
              path: /v1/users
              safe_read: "yes"
        """,
        [(6, "backend.safe_read: expected true or false, got 'yes'")],
        id="bad-safe-read",
    ),
    # --- response ---
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            response:
              pick: "data[first]"
        """,
        [(6, "response.pick: invalid path 'data[first]': expected a non-negative integer index "
             "like [0] at position 4")],
        id="bad-pick",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            response:
              pick: data..name
        """,
        [(6, "response.pick: invalid path 'data..name': expected a key ([A-Za-z0-9_$-]+), "
             "'.key' or '[index]' at position 4")],
        id="bad-pick-dots",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            response:
              pagination: {items: "data[-1]"}
        """,
        [(6, "response.pagination.items: invalid path 'data[-1]': expected a non-negative "
             "integer index like [0] at position 4")],
        id="bad-pagination-path",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            response:
              pagination: yes-please
        """,
        [(6, "response.pagination: expected a mapping, got 'yes-please'")],
        id="pagination-not-mapping",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query: {limit: {type: int}}
            backend: {path: /v1/users}
            response:
              order_by: id
        """,
        [(7, "response.order_by: needs a list query parameter to follow "
             "(list parameters: [])")],
        id="order-by-without-list-param",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query: {ids: {type: int_list}, names: {type: string_list}}
            backend: {path: /v1/users}
            response:
              order_by: id
        """,
        [(7, "response.order_by: needs a list query parameter to follow "
             "(list parameters: ['ids', 'names'])")],
        id="order-by-ambiguous",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query: {ids: {type: int_list}}
            backend: {path: /v1/users}
            response:
              order_by: {key: id, param: user_ids}
        """,
        [(7, "response.order_by: needs a list query parameter to follow "
             "(list parameters: ['ids'])")],
        id="order-by-unknown-param",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            query: {ids: {type: int_list}}
            backend: {path: /v1/users}
            response:
              order_by: "[id]"
        """,
        [(7, "response.order_by: invalid path '[id]': expected a non-negative integer index "
             "like [0] at position 0")],
        id="order-by-bad-key",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            response:
              status_map:
                400: 404
                404: 200
                "4xx": 404
                200: 404
                500: x
        """,
        [
            (8, "response.status_map: expected upstream status: our status (4xx/5xx), "
                "got 404: 200"),
            (9, "response.status_map: expected upstream status: our status (4xx/5xx), "
                "got 4xx: 404"),
            (10, "response.status_map: expected upstream status: our status (4xx/5xx), "
                 "got 200: 404"),
            (11, "response.status_map: expected upstream status: our status (4xx/5xx), "
                 "got 500: 'x'"),
        ],
        id="bad-status-map",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            response:
              status_map: 404
        """,
        [(6, "response.status_map: expected a mapping, got 404")],
        id="status-map-not-mapping",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            response:
              case: kebab
              shape: one
              empty: "404"
        """,
        [
            (6, "response.case: expected one of snake, camel, keep, got 'kebab'"),
            (7, "response.shape: expected one of auto, object, list, got 'one'"),
            (8, "response.empty: expected one of keep, not_found, got '404'"),
        ],
        id="bad-case-shape-empty",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            response:
              pagination: true
              shape: object
        """,
        [(6, "response: a paginated plan always yields a list; shape cannot be 'object'")],
        id="pagination-with-shape-object",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            response:
              allow: id
              deny: [1]
              rename: {id: [x]}
              require: ["a[b]"]
        """,
        [
            (7, "response.deny: expected a list of strings, got [1]"),
            (8, "response.rename: expected a mapping of strings to strings, got {'id': ['x']}"),
            (9, "response.require: invalid path 'a[b]': expected a non-negative integer index "
                "like [0] at position 1"),
        ],
        id="bad-allow-deny-rename-require",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            response: [pick]
        """,
        [(5, "response: expected a mapping, got ['pick']")],
        id="response-not-mapping",
    ),
    # --- cache and limits ---
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            cache:
              ttl: ten minutes
              stale_while_revalidate: 60
              stale_if_error: 1y
              not_found_ttl: -5m
        """,
        [
            (6, "cache.ttl: expected a duration like '30s', '500ms' or '5m', got 'ten minutes'"),
            (7, "cache.stale_while_revalidate: expected a duration like '30s', '500ms' or '5m', "
                "got 60"),
            (8, "cache.stale_if_error: expected a duration like '30s', '500ms' or '5m', "
                "got '1y'"),
            (9, "cache.not_found_ttl: expected a duration like '30s', '500ms' or '5m', "
                "got '-5m'"),
        ],
        id="bad-cache-durations",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            cache:
              enabled: "no"
              credentials: shared
        """,
        [
            (6, "cache.enabled: expected true or false, got 'no'"),
            (7, "cache.credentials: expected one of bypass, per_credential, got 'shared'"),
        ],
        id="bad-cache-enabled-and-credentials",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            cache:
              when:
                - {path: "data[*].state", equals: Pending}
                - {path: "data[*].state", ttl: 5s}
                - {equals: Pending, ttl: 5s}
                - {path: state, equals: Pending, in: [Error], ttl: 5s}
                - {path: state, in: Pending, ttl: 5s}
                - {path: "data[x]", in: [Pending], ttl: 5s}
                - {path: state, in: [Pending], ttl: soon}
                - just text
        """,
        [
            (7, "cache.when[0]: needs path, ttl and one of equals/in"),
            (8, "cache.when[1]: needs path, ttl and one of equals/in"),
            (9, "cache.when[2]: needs path, ttl and one of equals/in"),
            (10, "cache.when[3]: needs path, ttl and one of equals/in"),
            (11, "cache.when[4].in: expected a list"),
            (12, "cache.when[5].path: invalid path 'data[x]': expected a non-negative integer "
                 "index like [0] at position 4"),
            (13, "cache.when[6].ttl: expected a duration like '30s', '500ms' or '5m', "
                 "got 'soon'"),
            (14, "cache.when[7]: expected a mapping, got 'just text'"),
        ],
        id="bad-cache-when",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            cache:
              when: {path: state, equals: Pending, ttl: 5s}
        """,
        [(6, "cache.when: expected a list of conditions")],
        id="cache-when-not-list",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            cache: 10m
        """,
        [(5, "cache: expected a mapping, got '10m'")],
        id="cache-not-mapping",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            limits: {bucket: Users_Slow}
        """,
        [(5, "limits.bucket: expected a service name like 'users', got 'Users_Slow'")],
        id="bad-bucket",
    ),
    # --- documentation fields ---
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
            summary: [a]
            deprecated: "yes"
            tags: 5
        """,
        [
            (5, "summary: expected a string, got ['a']"),
            (6, "deprecated: expected true or false, got 'yes'"),
            (7, "tags: expected a list of strings, got 5"),
        ],
        id="bad-doc-fields",
    ),
    pytest.param(
        # every key is read, so a route whose backend fails still reports its other keys
        """\
        service: users
        routes:
          - endpoint: /v1/users
            summary: [a]
            cache: {ttl: soon}
        """,
        [
            (3, "backend: required (the upstream request)"),
            (4, "summary: expected a string, got ['a']"),
            (5, "cache.ttl: expected a duration like '30s', '500ms' or '5m', got 'soon'"),
        ],
        id="independent-keys-beside-a-failed-backend",
    ),
    # --- duplicates across routes ---
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users/{user_id}
            params: {user_id: {type: int}}
            backend: {path: "/v1/users/{user_id}"}
          - endpoint: /v1/users/{user_id}
            params: {user_id: {type: int}}
            backend: {path: "/v1/users/{user_id}"}
        """,
        [(6, "endpoint: GET /v1/users/{user_id} is defined twice (see bad.yaml:3)")],
        id="duplicate-route",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users/{user_id}
            params: {user_id: {type: int}}
            backend: {path: "/v1/users/{user_id}"}
          - endpoint: /v1/users/{id}
            params: {id: {type: int}}
            backend: {path: "/v1/users/{id}"}
        """,
        [(6, "endpoint: parameter {id} conflicts with {user_id} at the same position of "
             "another route (see bad.yaml:3)")],
        id="duplicate-route-other-param-name",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - endpoint: /v1/users/{user_id}/friends
            params: {user_id: {type: int}}
            backend: {path: "/v1/users/{user_id}"}
          - endpoint: /v1/users/{id}/groups
            params: {id: {type: int}}
            backend: {path: "/v1/users/{id}"}
        """,
        [(6, "endpoint: parameter {id} conflicts with {user_id} at the same position of "
             "another route (see bad.yaml:3)")],
        id="param-name-conflict-in-prefix",
    ),
    pytest.param(
        """\
        service: users
        routes:
          - id: users.get
            endpoint: /v1/users
            backend: {path: /v1/users}
          - id: users.get
            endpoint: /v1/people
            backend: {path: /v1/users}
        """,
        [(6, "id: 'users.get' is already used at bad.yaml:3")],
        id="duplicate-id",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), ERRORS)
def test_validation_error(in_tmp: Path, text: str, expected: list[tuple[int, str]]) -> None:
    write(in_tmp, text)
    assert problems_of([in_tmp / "bad.yaml"]) == [
        f"bad.yaml:{line}: {message}" for line, message in expected
    ]


def test_problems_from_every_file_sorted(in_tmp: Path) -> None:
    rules_dir = in_tmp / "rules"
    rules_dir.mkdir()
    write(rules_dir, "service: users\nroutes: [\n", "a.yaml")  # not even YAML
    write(
        rules_dir,
        """\
        service: games
        routes:
          - endpoint: /v1/games
            backend: {path: /v1/games, method: GET, nope: 1}
          - endpoint: /games
            backend: {path: /v1/games}
        """,
        "c.yaml",
    )
    write(
        rules_dir,
        """\
        service: groups
        routes:
          - endpoint: /v1/groups/{group_id}
            params: {group_id: {type: int}}
            backend: {path: "/v1/groups/{group_id}"}
        """,
        "b.yaml",
    )
    write(
        rules_dir,
        """\
        service: users
        routes:
          - id: x.dup
            endpoint: /v1/groups/{id}
            params: {id: {type: int}}
            backend: {path: "/v1/groups/{id}"}
        """,
        "d.yml",
    )
    (rules_dir / "notes.txt").write_text("not a rule file")
    assert problems_of([rules_dir]) == [
        "rules/a.yaml:3: invalid YAML: while parsing a flow node, expected the node content, "
        "but found '<stream end>'",
        f"rules/c.yaml:4: backend.nope: unknown key (allowed: {ALLOWED_BACKEND})",
        f"rules/c.yaml:5: {CLEAN_PATH}, got '/games'",
        "rules/d.yml:3: endpoint: parameter {id} conflicts with {group_id} at the same "
        "position of another route (see rules/b.yaml:3)",
    ]


def test_duplicate_route_across_files(in_tmp: Path) -> None:
    text = """\
        service: users
        routes:
          - endpoint: /v1/users
            backend: {path: /v1/users}
        """
    first = write(in_tmp, text, "one.yaml")
    second = write(in_tmp, "# the same route again\n" + textwrap.dedent(text), "two.yaml")
    assert problems_of([first, second]) == [
        "two.yaml:4: endpoint: GET /v1/users is defined twice (see one.yaml:3)"
    ]


def test_a_good_file_next_to_a_broken_one_does_not_load(in_tmp: Path) -> None:
    good = write(
        in_tmp,
        "service: users\nroutes:\n  - endpoint: /v1/a\n    backend: {path: /a}\n",
        "good.yaml",
    )
    bad = write(in_tmp, "service: users\nroutes: 5\n")
    assert problems_of([good, bad]) == ["bad.yaml:2: routes: expected a list of routes"]
    assert len(load_rules([good]).routes) == 1


def test_empty_rules_dir(in_tmp: Path) -> None:
    (in_tmp / "empty").mkdir()
    assert problems_of([in_tmp / "empty"]) == [f"{in_tmp / 'empty'}: no rule files found"]


def test_no_paths_at_all() -> None:
    assert problems_of([]) == ["rules: no rule files found"]


def test_missing_rule_file(in_tmp: Path) -> None:
    assert problems_of([in_tmp / "absent.yaml"]) == [
        "absent.yaml:1: cannot read: No such file or directory"
    ]


def test_rule_files_expands_directories_sorted(tmp_path: Path) -> None:
    for name in ["b.yaml", "a.yml", "c.txt", "d.yaml"]:
        (tmp_path / name).write_text("")
    single = tmp_path / "c.txt"
    assert rules.rule_files([tmp_path, single]) == [
        tmp_path / "a.yml",
        tmp_path / "b.yaml",
        tmp_path / "d.yaml",
        single,
    ]


# --- the user's rules beside the shipped ones ----------------------------------------------

SHIPPED_LIKE = """\
service: users
routes:
  - id: users.get
    endpoint: /v1/users/{user_id}
    params: {user_id: {type: int}}
    backend: {path: "/v1/users/{user_id}"}
  - id: users.batch
    endpoint: /v1/users
    backend: {path: /v1/users}
"""


@pytest.fixture
def shipped_dir(in_tmp: Path) -> Path:
    (in_tmp / "shipped").mkdir()
    write(in_tmp / "shipped", SHIPPED_LIKE, "users.yaml")
    (in_tmp / "mine").mkdir()
    return in_tmp / "shipped"


def test_a_user_rule_with_a_shipped_id_replaces_it(shipped_dir: Path, in_tmp: Path) -> None:
    write(
        in_tmp / "mine",
        """\
        # my users.get: another endpoint and a longer TTL
        service: users
        routes:
          - id: users.get
            endpoint: /v1/people/{user_id}
            params: {user_id: {type: int}}
            backend: {path: "/v1/users/{user_id}"}
            cache: {ttl: 1h}
          - id: mine.extra
            endpoint: /v1/extra
            backend: {path: /v1/extra}
        """,
        "users.yaml",
    )
    rs = load_rules([in_tmp / "mine"], shipped=[shipped_dir])
    assert [r.id for r in rs.routes] == ["users.batch", "users.get", "mine.extra"]
    mine = rs.by_id("users.get")
    assert mine is not None and (mine.endpoint, mine.cache.ttl) == ("/v1/people/{user_id}", 3600.0)
    assert rs.router.match("GET", "/v1/users/1")[0] is None  # the shipped one is gone
    assert [str(o) for o in rs.overrides] == [
        "mine/users.yaml:4: overrides shipped rule users.get (shipped/users.yaml:3)"
    ]
    assert rs.files == (str(shipped_dir / "users.yaml"), str(in_tmp / "mine" / "users.yaml"))


def test_user_rules_without_clashes_add_routes(shipped_dir: Path, in_tmp: Path) -> None:
    text = "service: users\nroutes:\n  - {id: x.y, endpoint: /v1/y, backend: {path: /y}}\n"
    write(in_tmp / "mine", text, "y.yaml")
    rs = load_rules([in_tmp / "mine"], shipped=[shipped_dir])
    assert [r.id for r in rs.routes] == ["users.get", "users.batch", "x.y"]
    assert rs.overrides == ()
    # no file of one's own (an empty directory) is no problem beside the shipped rules
    (in_tmp / "empty").mkdir()
    assert len(load_rules([in_tmp / "empty"], shipped=[shipped_dir]).routes) == 2


def test_two_user_files_with_one_id_are_an_error(shipped_dir: Path, in_tmp: Path) -> None:
    route = "routes:\n  - {id: users.get, endpoint: /v1/%s, backend: {path: /x}}\n"
    write(in_tmp / "mine", "service: users\n" + route % "a", "a.yaml")
    write(in_tmp / "mine", "service: users\n" + route % "b", "b.yaml")
    assert problems_of_sets([in_tmp / "mine"], [shipped_dir]) == [
        "mine/b.yaml:3: id: 'users.get' is already used at mine/a.yaml:3"
    ]


def test_a_user_endpoint_clashing_with_a_shipped_one_is_an_error(
    shipped_dir: Path, in_tmp: Path
) -> None:
    write(
        in_tmp / "mine",
        "service: users\nroutes:\n  - {id: mine.users, endpoint: /v1/users, backend: {path: /x}}\n",
        "m.yaml",
    )
    assert problems_of_sets([in_tmp / "mine"], [shipped_dir]) == [
        "mine/m.yaml:3: endpoint: GET /v1/users is defined twice (see shipped/users.yaml:7: "
        "the shipped route users.batch; give this route id: users.batch to replace it)"
    ]


def test_a_file_named_in_both_sets_is_loaded_once_as_shipped(shipped_dir: Path) -> None:
    rs = load_rules([shipped_dir, shipped_dir / "users.yaml"], shipped=[shipped_dir])
    assert (len(rs.routes), rs.overrides, rs.files) == (2, (), (str(shipped_dir / "users.yaml"),))


def test_problems_of_shipped_and_user_files_are_all_reported(
    shipped_dir: Path, in_tmp: Path
) -> None:
    write(shipped_dir, "service: users\nroutes: 5\n", "broken.yaml")
    write(in_tmp / "mine", "service: users\nservce: x\nroutes: []\n", "m.yaml")
    assert problems_of_sets([in_tmp / "mine"], [shipped_dir]) == [
        "mine/m.yaml:2: servce: unknown key (allowed: routes, service, tags)",
        "shipped/broken.yaml:2: routes: expected a list of routes",
    ]


def test_no_rule_files_in_either_set(in_tmp: Path) -> None:
    (in_tmp / "none").mkdir()
    assert problems_of_sets([], [in_tmp / "none"]) == [f"{in_tmp / 'none'}: no rule files found"]


def problems_of_sets(paths: list[Path], shipped: list[Path]) -> list[str]:
    with pytest.raises(ConfigError) as exc_info:
        load_rules(paths, shipped=shipped)
    return [str(p) for p in exc_info.value.problems]


# --- docs/RULES.md ---------------------------------------------------------------------------
# (its key tables are generated from bloxproxy/rule_fields.py: tests/test_docs.py)


def test_rules_md_worked_examples_are_shipped_routes(shipped: RuleSet) -> None:
    text = (ROOT / "docs" / "RULES.md").read_text(encoding="utf-8")
    for route_id in ("users.batch", "groups.members"):
        r = shipped.by_id(route_id)
        assert r is not None
        assert f"id: {route_id}" in text
        assert r.endpoint in text
