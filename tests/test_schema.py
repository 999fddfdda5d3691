"""Tests for the declared keys of bloxproxy.schema: Key defaults and Block.read / table.

(The typed readers themselves are tested as tables in tests/test_config.py.)"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bloxproxy import schema
from bloxproxy.errors import Problem
from bloxproxy.schema import Block, Key
from bloxproxy.yamlsrc import MarkedDict, load_file

BLOCK = Block(
    "thing",
    (
        Key("name", "Its name.", schema.string, required="required (a name)"),
        Key("ttl", "How long.", schema.duration, "30s"),
        Key("tags", "Labels.", schema.string_list, ()),
        Key("flag", "A flag.", schema.boolean, shown="`true` for things"),
        Key("body", "Read by its owner."),
        Key("size", "How big.", schema.integer(1), 5, applies="big things"),
    ),
)


def read(
    tmp_path: Path, text: str, skip: tuple[str, ...] = ()
) -> tuple[dict[str, object], list[str]]:
    path = tmp_path / "t.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    data = load_file(str(path), display_name="t.yaml")
    assert isinstance(data, MarkedDict)
    problems: list[Problem] = []
    values = BLOCK.read(data, problems, "thing", skip=skip)
    return values, [str(p) for p in problems]


def test_defaults_are_written_like_values_and_read_by_the_reader() -> None:
    assert BLOCK["ttl"].typed_default() == 30.0
    assert BLOCK["tags"].typed_default() == ()
    assert BLOCK["flag"].typed_default() is None
    assert [BLOCK[n].shown_default() for n in BLOCK.names] == [
        "required",
        "`30s`",
        "`[]`",
        "`true` for things",
        "none",
        "`5`",
    ]


def test_read_gives_every_key_with_a_reader(tmp_path: Path) -> None:
    values, problems = read(tmp_path, "name: x\nttl: 1m\n_note: a comment\nbody: [1]\n")
    assert problems == []
    assert values == {"name": "x", "ttl": 60.0, "tags": (), "flag": None, "size": 5}


def test_read_reports_unknown_missing_and_invalid_keys(tmp_path: Path) -> None:
    values, problems = read(tmp_path, "ttl: soon\nsize: 0\nnope: 1\n")
    assert problems == [
        "t.yaml:3: thing.nope: unknown key (allowed: body, flag, name, size, tags, ttl)",
        "t.yaml:1: thing.name: required (a name)",
        "t.yaml:1: thing.ttl: expected a duration like '30s', '500ms' or '5m', got 'soon'",
        "t.yaml:2: thing.size: expected an integer >= 1, got 0",
    ]
    assert (values["ttl"], values["size"]) == (30.0, 5)  # the defaults stand in


def test_read_skips_keys_on_request(tmp_path: Path) -> None:
    values, problems = read(tmp_path, "name: x\nsize: big\n", skip=("size",))
    assert problems == []
    assert "size" not in values


def test_table() -> None:
    assert BLOCK.table() == (
        "| key | applies to | default | meaning |\n"
        "|---|---|---|---|\n"
        "| `name` |  | required | Its name. |\n"
        "| `ttl` |  | `30s` | How long. |\n"
        "| `tags` |  | `[]` | Labels. |\n"
        "| `flag` |  | `true` for things | A flag. |\n"
        "| `body` |  | none | Read by its owner. |\n"
        "| `size` | big things | `5` | How big. |\n"
    )


def test_unknown_key_lookup() -> None:
    with pytest.raises(KeyError):
        BLOCK["nope"]
