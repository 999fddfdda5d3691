"""Tests for bloxproxy.router: the segment trie that matches clean routes."""

from __future__ import annotations

import itertools

import pytest

from bloxproxy.router import DuplicateRoute, Router

ROUTES = [
    ("GET", "/v1/users/{user_id}", "users.get"),
    ("GET", "/v1/users", "users.batch"),
    ("GET", "/v1/users/search", "users.search"),
    ("GET", "/v1/users/by-username/{username}", "users.by_username"),
    ("GET", "/v1/users/{user_id}/friends/count", "friends.count"),
    ("GET", "/v1/users/{user_id}/groups", "groups.of_user"),
    ("GET", "/v1/groups/{group_id}/members", "groups.members"),
]


def build(routes: list[tuple[str, str, str]]) -> Router[str]:
    router: Router[str] = Router()
    for method, template, name in routes:
        router.add(method, template, name)
    return router


@pytest.fixture
def router() -> Router[str]:
    return build(ROUTES)


MATCHES = [
    # (method, raw path, route, params)
    ("GET", "/v1/users/156", "users.get", {"user_id": "156"}),
    ("GET", "/v1/users", "users.batch", {}),
    ("GET", "/v1/users/search", "users.search", {}),
    ("GET", "/v1/users/by-username/builderman", "users.by_username", {"username": "builderman"}),
    ("GET", "/v1/users/156/friends/count", "friends.count", {"user_id": "156"}),
    ("GET", "/v1/groups/7/members", "groups.members", {"group_id": "7"}),
    # a literal that is also a valid param value: the literal route wins at its own depth...
    ("GET", "/v1/users/by-username", "users.get", {"user_id": "by-username"}),
    # ...and a literal branch that dead-ends falls back to the param branch (backtracking)
    ("GET", "/v1/users/search/groups", "groups.of_user", {"user_id": "search"}),
    ("GET", "/v1/users/by-username/groups", "users.by_username", {"username": "groups"}),
    ("GET", "/v1/users/search/friends/count", "friends.count", {"user_id": "search"}),
    # each segment is percent-decoded on its own: %2F stays inside the segment
    ("GET", "/v1/users/a%2Fb", "users.get", {"user_id": "a/b"}),
    ("GET", "/v1/users/a%2Fb/groups", "groups.of_user", {"user_id": "a/b"}),
    ("GET", "/v1/users/by-username/%C3%A9%20x", "users.by_username", {"username": "é x"}),
    ("GET", "/v1/users/%73earch", "users.search", {}),  # %73 is "s": decoded before lookup
    ("GET", "/v1/users/%2E%2E", "users.get", {"user_id": ".."}),
    # HEAD is answered by the GET route
    ("HEAD", "/v1/users/156", "users.get", {"user_id": "156"}),
]


@pytest.mark.parametrize(("method", "path", "route", "params"), MATCHES)
def test_match(
    router: Router[str], method: str, path: str, route: str, params: dict[str, str]
) -> None:
    assert router.match(method, path) == (route, params, True)


NO_MATCH = [
    "/v1/users/156/",  # trailing slash
    "/v1/users/",
    "//v1/users/156",  # leading double slash
    "/v1//users/156",  # inner double slash
    "/v1/users//friends/count",
    "/v1/users/156/friends",  # a prefix of a route is not a route
    "/v1/users/156/friends/count/x",
    "/v1/groups/7",
    "/v1",
    "/v2/users/156",
    "/",
    "",
]


@pytest.mark.parametrize("path", NO_MATCH)
def test_no_match(router: Router[str], path: str) -> None:
    assert router.match("GET", path) == (None, {}, False)
    assert router.methods(path) == []


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_method_is_405(router: Router[str], method: str) -> None:
    route, params, exists = router.match(method, "/v1/users/156")
    assert route is None
    assert exists is True  # the handler answers 405 with Allow
    assert params == {"user_id": "156"}
    assert router.methods("/v1/users/156") == ["GET"]


def test_head_prefers_an_explicit_head_route() -> None:
    router = build([("GET", "/v1/x", "get"), ("HEAD", "/v1/x", "head")])
    assert router.match("HEAD", "/v1/x")[0] == "head"
    assert router.methods("/v1/x") == ["GET", "HEAD"]


def test_literal_beats_param_in_every_insertion_order() -> None:
    templates = [
        ("GET", "/v1/users/{user_id}", "param"),
        ("GET", "/v1/users/search", "literal"),
        ("GET", "/v1/users/{user_id}/x", "param-x"),
        ("GET", "/v1/users/search/y", "literal-y"),
    ]
    for order in itertools.permutations(templates):
        router = build(list(order))
        assert router.match("GET", "/v1/users/search")[0] == "literal"
        assert router.match("GET", "/v1/users/1")[0] == "param"
        assert router.match("GET", "/v1/users/search/y")[0] == "literal-y"
        assert router.match("GET", "/v1/users/search/x") == ("param-x", {"user_id": "search"}, True)


def test_backtracking_restores_params() -> None:
    # the literal branch binds {a}, dead-ends; the param branch must not see the stale {a}
    router = build(
        [
            ("GET", "/v1/x/{a}/deep", "literal-branch"),
            ("GET", "/v1/{b}/y/other", "param-branch"),
        ]
    )
    assert router.match("GET", "/v1/x/y/other") == ("param-branch", {"b": "x"}, True)


@pytest.mark.parametrize("path", ["/v1/users/%FF", "/v1/users/%C3", "/v1/users/%ED%A0%80"])
def test_invalid_utf8_raises(router: Router[str], path: str) -> None:
    # the handler maps this to a 400 problem
    with pytest.raises(UnicodeDecodeError):
        router.match("GET", path)


def test_malformed_percent_is_kept_literally(router: Router[str]) -> None:
    assert router.match("GET", "/v1/users/100%") == ("users.get", {"user_id": "100%"}, True)


DUPLICATES = [
    pytest.param(
        [("GET", "/v1/users/{user_id}", "a"), ("GET", "/v1/users/{user_id}", "b")],
        r"^GET /v1/users/\{user_id\} is defined twice$",
        id="same-template",
    ),
    pytest.param(
        [("GET", "/v1/users/{user_id}", "a"), ("GET", "/v1/users/{id}", "b")],
        r"^parameter \{id\} conflicts with \{user_id\} at the same position of another route$",
        id="same-shape-other-name",
    ),
    pytest.param(
        [("GET", "/v1/users/{user_id}/x", "a"), ("GET", "/v1/users/{id}/y", "b")],
        r"parameter \{id\} conflicts with \{user_id\}",
        id="prefix-other-name",
    ),
    pytest.param(
        [("GET", "/v1/users", "a"), ("GET", "/v1/users/", "b")],
        r"GET /v1/users/ is defined twice",
        id="trailing-slash-template",
    ),
]


@pytest.mark.parametrize(("routes", "message"), DUPLICATES)
def test_duplicate_routes(routes: list[tuple[str, str, str]], message: str) -> None:
    with pytest.raises(DuplicateRoute, match=message):
        build(routes)


def test_same_path_different_methods_is_not_a_duplicate() -> None:
    router = build([("GET", "/v1/x/{a}", "get"), ("POST", "/v1/x/{a}", "post")])
    assert router.match("POST", "/v1/x/1") == ("post", {"a": "1"}, True)


def test_duplicate_route_is_a_value_error() -> None:
    assert issubclass(DuplicateRoute, ValueError)
