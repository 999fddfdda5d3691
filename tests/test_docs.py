"""The README's route list and the docs follow the shipped rules."""

from __future__ import annotations

import re
from pathlib import Path

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
