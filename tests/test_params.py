"""Tests for bloxproxy.params: typed path and query parameters parsed from raw strings."""

from __future__ import annotations

import re
from typing import Any

import pytest

from bloxproxy.params import INT64_MAX, INT64_MIN, Param, ParamError


def q(ptype: str, **kw: Any) -> Param:
    """A query parameter named ``p``."""
    return Param(name="p", location="query", type=ptype, **kw)  # type: ignore[arg-type]


# --- accepted values ------------------------------------------------------------------------

OK_CASES = [
    # (param, raw values, parsed)
    pytest.param(q("int"), ["156"], 156, id="int"),
    pytest.param(q("int"), ["0"], 0, id="int-zero"),
    pytest.param(q("int"), ["-7"], -7, id="int-negative"),
    pytest.param(q("int"), ["007"], 7, id="int-leading-zeros"),
    pytest.param(q("int"), [str(INT64_MAX)], INT64_MAX, id="int64-max"),
    pytest.param(q("int"), [str(INT64_MIN)], INT64_MIN, id="int64-min"),
    pytest.param(q("int", min=1, max=10), ["1"], 1, id="int-at-min"),
    pytest.param(q("int", min=1, max=10), ["10"], 10, id="int-at-max"),
    pytest.param(q("int", enum=(10, 25, 50, 100)), ["25"], 25, id="int-enum"),
    pytest.param(q("string"), ["builderman"], "builderman", id="string"),
    pytest.param(q("string"), [""], "", id="string-empty"),
    pytest.param(q("string"), ["a b/c%"], "a b/c%", id="string-any-chars"),
    pytest.param(q("string"), ["héllo"], "héllo", id="string-unicode"),
    pytest.param(q("string", min_length=3, max_length=3), ["abc"], "abc", id="string-lengths"),
    pytest.param(q("string", max_length=2), ["éé"], "éé", id="length-counts-characters"),
    pytest.param(
        q("string", pattern=re.compile("[A-Za-z0-9_]+")),
        ["Builder_man1"],
        "Builder_man1",
        id="string-pattern",
    ),
    pytest.param(q("string", enum=("Asc", "Desc")), ["Desc"], "Desc", id="string-enum"),
    pytest.param(q("bool"), ["true"], True, id="bool-true"),
    pytest.param(q("bool"), ["TRUE"], True, id="bool-case-insensitive"),
    pytest.param(q("bool"), ["1"], True, id="bool-1"),
    pytest.param(q("bool"), ["yes"], True, id="bool-yes"),
    pytest.param(q("bool"), ["false"], False, id="bool-false"),
    pytest.param(q("bool"), ["0"], False, id="bool-0"),
    pytest.param(q("bool"), ["No"], False, id="bool-no"),
    pytest.param(q("int_list"), ["1,156"], (1, 156), id="list-csv"),
    pytest.param(q("int_list"), ["1", "156"], (1, 156), id="list-repeated"),
    pytest.param(q("int_list"), ["1,156", "2"], (1, 156, 2), id="list-mixed"),
    pytest.param(q("int_list"), ["156,1,156", "1"], (156, 1), id="list-duplicates-first-kept"),
    pytest.param(q("int_list"), ["1, 2"], (1, 2), id="list-items-stripped"),
    pytest.param(q("int_list"), ["5"], (5,), id="list-one"),
    pytest.param(q("int_list", max_items=2), ["1,2,1,2,2"], (1, 2), id="list-max-after-dedupe"),
    pytest.param(q("string_list"), ["a,b", "c"], ("a", "b", "c"), id="string-list"),
    pytest.param(q("string_list"), ["b,a,b"], ("b", "a"), id="string-list-dedupe"),
    pytest.param(
        q("string_list", enum=("Png", "Jpeg")), ["Png,Jpeg"], ("Png", "Jpeg"), id="list-enum"
    ),
    pytest.param(q("int_list", min=1), ["1,2"], (1, 2), id="list-item-min"),
]


@pytest.mark.parametrize(("param", "raw", "expected"), OK_CASES)
def test_parse_accepts(param: Param, raw: list[str], expected: object) -> None:
    value = param.parse(raw)
    assert value == expected
    assert type(value) is type(expected)


# --- rejected values ------------------------------------------------------------------------

BAD_CASES = [
    # (param, raw values, the reason the client sees)
    pytest.param(q("int"), ["abc"], "expected an integer, got 'abc'", id="int-word"),
    pytest.param(q("int"), [""], "expected an integer, got ''", id="int-empty"),
    pytest.param(q("int"), ["+5"], "expected an integer, got '+5'", id="int-plus"),
    pytest.param(q("int"), [" 5"], "expected an integer, got ' 5'", id="int-leading-space"),
    pytest.param(q("int"), ["5 "], "expected an integer, got '5 '", id="int-trailing-space"),
    pytest.param(q("int"), ["5\n"], "expected an integer, got '5\\n'", id="int-newline"),
    pytest.param(q("int"), ["1.5"], "expected an integer, got '1.5'", id="int-decimal"),
    pytest.param(q("int"), ["1e3"], "expected an integer, got '1e3'", id="int-exponent"),
    pytest.param(q("int"), ["0x10"], "expected an integer, got '0x10'", id="int-hex"),
    pytest.param(q("int"), ["1_000"], "expected an integer, got '1_000'", id="int-underscore"),
    pytest.param(q("int"), ["١٢"], "expected an integer, got '١٢'", id="int-arabic-digits"),
    pytest.param(
        q("int"), ["\uff11\uff12"], "expected an integer, got '\uff11\uff12'", id="int-fullwidth"
    ),
    pytest.param(q("int"), ["-"], "expected an integer, got '-'", id="int-minus-only"),
    pytest.param(
        q("int"),
        [str(INT64_MAX + 1)],
        f"is out of range, got '{INT64_MAX + 1}'",
        id="int64-overflow",
    ),
    pytest.param(
        q("int"),
        [str(INT64_MIN - 1)],
        f"is out of range, got '{INT64_MIN - 1}'",
        id="int64-underflow",
    ),
    pytest.param(
        q("int"),
        ["1" * 20],
        "expected an integer, got '11111111111111111111'",
        id="int-20-digits",
    ),
    pytest.param(q("int", min=1), ["0"], "must be at least 1, got 0", id="int-below-min"),
    pytest.param(q("int", max=10), ["11"], "must be at most 10, got 11", id="int-above-max"),
    pytest.param(
        q("int", enum=(10, 25, 50, 100)),
        ["20"],
        "must be one of 10, 25, 50, 100, got '20'",
        id="int-enum",
    ),
    pytest.param(q("int"), ["1", "2"], "given more than once", id="scalar-repeated"),
    pytest.param(
        q("string", min_length=3),
        ["ab"],
        "must be at least 3 characters long",
        id="string-too-short",
    ),
    pytest.param(
        q("string", max_length=20),
        ["x" * 21],
        "must be at most 20 characters long",
        id="string-too-long",
    ),
    pytest.param(
        q("string", pattern=re.compile("[A-Za-z0-9_]+")),
        ["bad name"],
        "has an invalid format, got 'bad name'",
        id="string-pattern",
    ),
    pytest.param(
        q("string", pattern=re.compile("[0-9]+")),
        ["12a"],
        "has an invalid format, got '12a'",
        id="pattern-is-anchored",
    ),
    pytest.param(
        q("string", enum=("Asc", "Desc")),
        ["asc"],
        "must be one of Asc, Desc, got 'asc'",
        id="string-enum-case-sensitive",
    ),
    pytest.param(q("bool"), ["maybe"], "expected true or false, got 'maybe'", id="bool-word"),
    pytest.param(q("bool"), [""], "expected true or false, got ''", id="bool-empty"),
    pytest.param(q("bool"), ["true", "false"], "given more than once", id="bool-repeated"),
    pytest.param(q("int_list"), [""], "contains an empty item", id="list-empty-value"),
    pytest.param(q("int_list"), ["1,,2"], "contains an empty item", id="list-empty-middle"),
    pytest.param(q("int_list"), ["1,"], "contains an empty item", id="list-trailing-comma"),
    pytest.param(q("int_list"), ["1", ""], "contains an empty item", id="list-empty-repeat"),
    pytest.param(q("int_list"), ["1,x"], "expected an integer, got 'x'", id="list-bad-item"),
    pytest.param(
        q("int_list", max_items=3), ["1,2,3,4"], "accepts at most 3 items", id="list-too-many"
    ),
    pytest.param(
        q("int_list", max_items=3),
        ["1,2", "3,4"],
        "accepts at most 3 items",
        id="list-too-many-mixed",
    ),
    pytest.param(
        q("int_list", min_items=3),
        ["1,2,2,1"],
        "needs at least 3 item(s)",
        id="list-too-few-after-dedupe",
    ),
    pytest.param(q("int_list", min=1), ["1,0"], "must be at least 1, got 0", id="list-item-min"),
    pytest.param(
        q("int_list"),
        [f"1,{INT64_MAX + 1}"],
        f"is out of range, got '{INT64_MAX + 1}'",
        id="list-item-overflow",
    ),
    pytest.param(
        q("string_list", enum=("Png", "Jpeg")),
        ["Png,Gif"],
        "must be one of Png, Jpeg, got 'Gif'",
        id="string-list-enum",
    ),
    pytest.param(
        q("int"),
        ["x" * 100],
        "expected an integer, got '" + "x" * 37 + "...'",
        id="long-value-shortened",
    ),
]


@pytest.mark.parametrize(("param", "raw", "reason"), BAD_CASES)
def test_parse_rejects(param: Param, raw: list[str], reason: str) -> None:
    with pytest.raises(ParamError) as exc_info:
        param.parse(raw)
    assert exc_info.value.name == "p"
    assert exc_info.value.reason == reason
    assert str(exc_info.value) == f"p: {reason}"


# --- absent values: required and default ----------------------------------------------------


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        pytest.param(q("int"), None, id="optional-no-default"),
        pytest.param(q("int", default=10), 10, id="default"),
        pytest.param(q("bool", default=False), False, id="bool-default"),
        pytest.param(q("int_list", default=(1, 2)), (1, 2), id="list-default"),
        pytest.param(q("string", default="Asc", enum=("Asc", "Desc")), "Asc", id="enum-default"),
    ],
)
def test_absent_gives_default(param: Param, expected: object) -> None:
    assert param.parse([]) == expected


@pytest.mark.parametrize(
    "param",
    [
        q("int", required=True),
        q("int_list", required=True),
        Param(name="p", location="path", type="int", required=True),
    ],
    ids=["scalar", "list", "path"],
)
def test_absent_required(param: Param) -> None:
    with pytest.raises(ParamError, match=r"^p: is required$"):
        param.parse([])


def test_present_but_empty_required_list_is_an_empty_item() -> None:
    # `?ids=` is not "absent": the client sent the key, with nothing in it
    with pytest.raises(ParamError, match="contains an empty item"):
        q("int_list", required=True).parse([""])


# --- small helpers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ptype", "is_list"),
    [("int", False), ("string", False), ("bool", False), ("int_list", True), ("string_list", True)],
)
def test_is_list(ptype: str, is_list: bool) -> None:
    assert q(ptype).is_list is is_list


@pytest.mark.parametrize(
    ("value", "text"), [(True, "true"), (False, "false"), (156, "156"), ("Asc", "Asc")]
)
def test_to_text(value: object, text: str) -> None:
    assert q("string").to_text(value) == text


def test_param_error_is_a_value_error() -> None:
    # the rule loader catches ValueError when it validates defaults and examples
    assert issubclass(ParamError, ValueError)
