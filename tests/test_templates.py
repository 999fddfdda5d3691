"""Tests for bloxproxy.templates: upstream path, query and body built from typed values."""

from __future__ import annotations

from typing import Any

import pytest

from bloxproxy.templates import (
    PathTemplate,
    QueryTemplate,
    TemplateError,
    compile_body,
    placeholders,
)

KNOWN = frozenset({"user_id", "name", "ids", "n", "flag", "cursor"})


# --- path ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        pytest.param(156, "/v1/users/156/friends", id="int"),
        pytest.param("builderman", "/v1/users/builderman/friends", id="plain"),
        pytest.param("a/b", "/v1/users/a%2Fb/friends", id="slash"),
        pytest.param("../../admin", "/v1/users/..%2F..%2Fadmin/friends", id="dotdot-slash"),
        pytest.param("..", "/v1/users/%2E%2E/friends", id="dotdot"),
        pytest.param(".", "/v1/users/%2E/friends", id="dot"),
        pytest.param("...", "/v1/users/.../friends", id="three-dots-harmless"),
        pytest.param("a.b", "/v1/users/a.b/friends", id="inner-dot"),
        pytest.param("100%", "/v1/users/100%25/friends", id="percent"),
        pytest.param("%2F", "/v1/users/%252F/friends", id="encoded-slash-reencoded"),
        pytest.param("a b", "/v1/users/a%20b/friends", id="space"),
        pytest.param("é", "/v1/users/%C3%A9/friends", id="unicode"),
        pytest.param("a?b#c", "/v1/users/a%3Fb%23c/friends", id="query-and-fragment"),
        pytest.param("a\\b", "/v1/users/a%5Cb/friends", id="backslash"),
        pytest.param(True, "/v1/users/true/friends", id="bool"),
        pytest.param((1, 2), "/v1/users/1%2C2/friends", id="list-is-one-segment"),
    ],
)
def test_path_value_stays_one_segment(value: object, rendered: str) -> None:
    t = PathTemplate.compile("/v1/users/{user_id}/friends", KNOWN)
    out = t.render({"user_id": value})
    assert out == rendered
    assert out.split("/")[3] not in ("", ".", "..")
    assert len(out.split("/")) == 5


def test_path_parts_and_literal_text() -> None:
    t = PathTemplate.compile("/v1/users/{user_id}/x-{name}.json", KNOWN)
    assert t.parts == (
        (False, "/v1/users/"),
        (True, "user_id"),
        (False, "/x-"),
        (True, "name"),
        (False, ".json"),
    )
    assert t.render({"user_id": 1, "name": "a b"}) == "/v1/users/1/x-a%20b.json"
    assert t.text == "/v1/users/{user_id}/x-{name}.json"


def test_path_without_placeholders() -> None:
    assert PathTemplate.compile("/v1/users", KNOWN).render({}) == "/v1/users"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("v1/users", "path must start with '/', got 'v1/users'"),
        ("/v1//users", "path must be a plain absolute path, got '/v1//users'"),
        ("/v1/../users", "path must be a plain absolute path, got '/v1/../users'"),
        ("/v1/users/..", "path must be a plain absolute path, got '/v1/users/..'"),
        ("/v1/users?x=1", "path must be a plain absolute path, got '/v1/users?x=1'"),
        ("/v1/users#x", "path must be a plain absolute path, got '/v1/users#x'"),
        ("/v1/a b", "path must be a plain absolute path, got '/v1/a b'"),
        ("/v1\\users", "path must be a plain absolute path, got '/v1\\\\users'"),
        ("/v1/{user_id", "malformed placeholder in '/v1/{user_id' (use {name})"),
        ("/v1/user_id}", "malformed placeholder in '/v1/user_id}' (use {name})"),
        ("/v1/{}", "malformed placeholder in '/v1/{}' (use {name})"),
        ("/v1/{{user_id}}", "malformed placeholder in '/v1/{{user_id}}' (use {name})"),
        ("/v1/{user-id}", "malformed placeholder in '/v1/{user-id}' (use {name})"),
        (
            "/v1/{nope}",
            "{nope} is not a parameter of this route (known: cursor, flag, ids, n, name, user_id)",
        ),
    ],
)
def test_path_errors(text: str, message: str) -> None:
    with pytest.raises(TemplateError) as exc_info:
        PathTemplate.compile(text, KNOWN)
    assert str(exc_info.value) == message


def test_unknown_placeholder_with_no_parameters() -> None:
    with pytest.raises(TemplateError, match=r"\(known: none\)"):
        PathTemplate.compile("/v1/{x}", frozenset())


# --- query --------------------------------------------------------------------------------

QUERY = {"userIds": "{ids}", "n": "{n}", "isCircular": "{flag}", "cursor": "{cursor}"}


@pytest.mark.parametrize(
    ("list_format", "values", "rendered"),
    [
        pytest.param(
            "csv",
            {"ids": (1, 156), "n": 10, "flag": False, "cursor": "abc"},
            [("userIds", "1,156"), ("n", "10"), ("isCircular", "false"), ("cursor", "abc")],
            id="csv",
        ),
        pytest.param(
            "repeat",
            {"ids": (1, 156), "n": 10, "flag": True, "cursor": "abc"},
            [
                ("userIds", "1"),
                ("userIds", "156"),
                ("n", "10"),
                ("isCircular", "true"),
                ("cursor", "abc"),
            ],
            id="repeat",
        ),
        pytest.param(
            "csv",
            {"ids": (1,), "n": None, "flag": None, "cursor": None},
            [("userIds", "1")],
            id="optional-omitted",
        ),
        pytest.param(
            "csv",
            {"ids": (1,)},
            [("userIds", "1")],
            id="absent-omitted",
        ),
        pytest.param(
            "csv",
            {"ids": (1,), "n": 0, "flag": False, "cursor": ""},
            [("userIds", "1"), ("n", "0"), ("isCircular", "false"), ("cursor", "")],
            id="falsy-values-kept",
        ),
    ],
)
def test_query_render(list_format: Any, values: dict[str, Any], rendered: list[Any]) -> None:
    t = QueryTemplate.compile(QUERY, KNOWN, list_format)
    assert t.render(values) == rendered


def test_query_order_is_the_written_order() -> None:
    t = QueryTemplate.compile({"z": "{n}", "a": "{n}", "m": "{n}"}, KNOWN)
    assert [k for k, _ in t.render({"n": 1})] == ["z", "a", "m"]


@pytest.mark.parametrize(
    ("template", "values", "rendered"),
    [
        pytest.param("PlaceHolder", {}, "PlaceHolder", id="constant"),
        pytest.param(5, {}, "5", id="int-constant"),
        pytest.param(True, {}, "true", id="bool-constant"),
        pytest.param(False, {}, "false", id="false-constant"),
        pytest.param("{name}-{n}", {"name": "a", "n": 2}, "a-2", id="interpolated"),
        pytest.param("x{name}", {}, "x", id="interpolated-absent-is-empty"),
        pytest.param("ids:{ids}", {"ids": (1, 2)}, "ids:1,2", id="interpolated-list"),
    ],
)
def test_query_constants_and_interpolation(
    template: object, values: dict[str, Any], rendered: str
) -> None:
    t = QueryTemplate.compile({"k": template}, KNOWN)
    assert t.render(values) == [("k", rendered)]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{nope}", "{nope} is not a parameter of this route"),
        ("{n", "malformed placeholder"),
        ("a}", "malformed placeholder"),
    ],
)
def test_query_errors(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        QueryTemplate.compile({"k": template}, KNOWN)


# --- body ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "values", "rendered"),
    [
        pytest.param("{ids}", {"ids": (1, 156)}, [1, 156], id="list-becomes-json-array"),
        pytest.param("{n}", {"n": 10}, 10, id="int-stays-int"),
        pytest.param("{flag}", {"flag": False}, False, id="bool-stays-bool"),
        pytest.param("{name}", {"name": "x"}, "x", id="string"),
        pytest.param("{cursor}", {}, None, id="absent-is-null"),
        pytest.param("user {name} #{n}", {"name": "x", "n": 2}, "user x #2", id="interpolated"),
        pytest.param("{ids}!", {"ids": (1, 2)}, "1,2!", id="interpolated-list"),
        pytest.param("literal", {}, "literal", id="literal"),
        pytest.param(7, {}, 7, id="int-literal"),
        pytest.param(1.5, {}, 1.5, id="float-literal"),
        pytest.param(None, {}, None, id="null-literal"),
        pytest.param(False, {}, False, id="bool-literal"),
        pytest.param(
            {"userIds": "{ids}", "excludeBannedUsers": "{flag}"},
            {"ids": (1, 156), "flag": True},
            {"userIds": [1, 156], "excludeBannedUsers": True},
            id="users-batch",
        ),
        pytest.param(
            {"usernames": ["{name}"], "excludeBannedUsers": False},
            {"name": "builderman"},
            {"usernames": ["builderman"], "excludeBannedUsers": False},
            id="users-by-username",
        ),
        pytest.param({"a": {"b": [{"c": "{n}"}]}}, {"n": 3}, {"a": {"b": [{"c": 3}]}}, id="nested"),
    ],
)
def test_body_render(template: object, values: dict[str, Any], rendered: object) -> None:
    render = compile_body(template, KNOWN)
    out = render(values)
    assert out == rendered
    assert type(out) is type(rendered)


def test_body_render_does_not_share_state_between_calls() -> None:
    render = compile_body({"ids": "{ids}"}, KNOWN)
    first = render({"ids": (1,)})
    first["ids"].append(99)
    assert render({"ids": (1,)}) == {"ids": [1]}


@pytest.mark.parametrize(
    ("template", "message"),
    [
        pytest.param({"a": "{nope}"}, "{nope} is not a parameter", id="unknown-in-dict"),
        pytest.param(["{nope}"], "{nope} is not a parameter", id="unknown-in-list"),
        pytest.param("{n", "malformed placeholder", id="malformed"),
        pytest.param({"a": {1, 2}}, "unsupported value in body template", id="set"),
    ],
)
def test_body_errors(template: object, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        compile_body(template, KNOWN)


def test_placeholders() -> None:
    assert placeholders("/v1/{a}/x/{b_2}") == ["a", "b_2"]
    assert placeholders("/v1/users") == []


def test_template_error_is_a_value_error() -> None:
    assert issubclass(TemplateError, ValueError)
