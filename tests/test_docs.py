"""The README's route list and the docs follow the shipped rules and the code."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from bloxproxy import config as config_mod
from bloxproxy.rules import load_rules

ROOT = Path(__file__).resolve().parent.parent


def test_readme_lists_every_shipped_route() -> None:
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| `GET (/v1/[^`?\s]*)", readme, re.MULTILINE))
    routes = {r.endpoint for r in load_rules([ROOT / "rules"]).routes}
    assert routes - listed == set(), "routes missing from the README's route table"
    assert listed - routes == set(), "README lists routes that do not exist"


def test_architecture_names_existing_modules() -> None:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    for name in re.findall(r"\| `([a-z_/]+\.py)`", text):
        assert (ROOT / "bloxproxy" / name).is_file(), name


def test_readme_names_every_config_section() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    found = re.search(r"Sections: ((?:`[a-z_]+`, )+`[a-z_]+`)\.", readme)
    assert found, "the README's Configuration section lists the config sections"
    listed = re.findall(r"`([a-z_]+)`", found[1])
    assert listed == list(config_mod._fields(config_mod.Config)), "in the order of the code"


def test_scripts_lint_says_what_it_checks() -> None:
    lint = (ROOT / "scripts" / "lint").read_text()
    comment = " ".join(line.lstrip("# ") for line in lint.splitlines()[1:4])
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert mypy["strict"] is True and mypy["packages"] == ["bloxproxy"] and "files" not in mypy
    assert "mypy --strict over the package" in comment and "package and tests" not in comment
    for command in (".venv/bin/ruff check bloxproxy tests", ".venv/bin/mypy"):
        assert command in lint


def test_docs_describe_what_is_built() -> None:
    for doc in ("README.md", "docs/RULES.md", "docs/ARCHITECTURE.md"):
        text = " ".join((ROOT / doc).read_text().split())
        for phrase in ("being built", "not built yet", "will be added", "coming soon"):
            assert phrase not in text, f"{doc}: {phrase!r}"
