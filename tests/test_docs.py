"""The generated parts of the docs follow the code and the shipped rules, byte for byte."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bloxproxy import docgen, rule_fields

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = "out of date: run `python -m bloxproxy.docgen` and commit the result"


@pytest.fixture(scope="module")
def generated() -> dict[Path, str]:
    return docgen.generated(ROOT)


@pytest.mark.parametrize("name", ["README.md", "docs/RULES.md", "docs/CONFIG.md"])
def test_generated_parts_are_current(generated: dict[Path, str], name: str) -> None:
    # README.md: the route table (from rules/*.yaml); docs/RULES.md: the key tables (from
    # bloxproxy/rule_fields.py); docs/CONFIG.md: all of it (from bloxproxy/config.py).
    path = ROOT / name
    assert path.read_text(encoding="utf-8") == generated[path], f"{name} is {REGENERATE}"


def test_every_rule_block_has_its_table_in_rules_md() -> None:
    text = (ROOT / "docs" / "RULES.md").read_text(encoding="utf-8")
    for block in rule_fields.BLOCKS:
        assert text.count(f"<!-- generated: {block.name} keys -->") == 1, block.name
        for key in block.keys:
            assert f"| `{key.name}` |" in text, (block.name, key.name)


PARTS = {"a": lambda: "new a\n", "b": lambda: "new b\n"}


def test_fill_replaces_only_the_generated_parts() -> None:
    text = (
        "intro\n<!-- generated: a -->\nold a\nstill old\n<!-- end generated -->\nmiddle\n"
        "<!-- generated: b -->\n<!-- end generated -->\nend\n"
    )
    assert docgen.fill(text, PARTS, "x.md") == (
        "intro\n<!-- generated: a -->\nnew a\n<!-- end generated -->\nmiddle\n"
        "<!-- generated: b -->\nnew b\n<!-- end generated -->\nend\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "<!-- generated: a -->\n<!-- end generated -->\n<!-- generated: c -->\n",
            "x.md:3: unknown generated part 'c' (known: a, b)",
        ),
        (
            "<!-- generated: a -->\n<!-- end generated -->\n"
            "<!-- generated: a -->\n<!-- end generated -->\n",
            "x.md:3: generated part 'a' appears twice",
        ),
        (
            "<!-- generated: a -->\n<!-- end generated -->\n<!-- generated: b -->\nold\n",
            "x.md:3: generated part 'b' is never closed",
        ),
        (
            "<!-- generated: a -->\n<!-- generated: b -->\n",
            "x.md:2: 'b' opens inside 'a'",
        ),
        ("<!-- end generated -->\n", "x.md:1: 'end generated' without a start"),
        (
            "<!-- generated: a -->\n<!-- end generated -->\n",
            "x.md: no place for the generated part(s) b",
        ),
    ],
)
def test_fill_refuses_broken_markers(text: str, message: str) -> None:
    with pytest.raises(docgen.DocError) as exc_info:
        docgen.fill(text, PARTS, "x.md")
    assert str(exc_info.value) == message


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("name", ["README.md", "docs/RULES.md"])
def test_links_within_a_page_resolve(name: str) -> None:
    text = (ROOT / name).read_text(encoding="utf-8")
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.*)$", text, re.MULTILINE)}
    for target in re.findall(r"\]\(#([^)]+)\)", text):
        assert target in anchors, f"{name}: no heading for #{target}"


def test_architecture_names_existing_modules() -> None:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for name in re.findall(r"\| `([a-z_/]+\.py)`", text):
        assert (ROOT / "bloxproxy" / name).is_file(), name
