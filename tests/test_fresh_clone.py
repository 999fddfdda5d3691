"""From the user's side: a fresh clone (the git-tracked files, copied to a temp dir), rules of
one's own in a directory of their own, and ``python -m bloxproxy`` run there as a process.

It checks what the "first hour" needs: rule files beside the shipped ones (one new route,
one replacing ``users.get``), ``check`` naming the replacement, ``routes`` listing both, and
``python -m bloxproxy.docgen`` being the one command a rule added to ``rules/`` needs.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

MY_CONFIG = "rules:\n  paths: [my-rules]\n"
MY_RULES = {
    "groups.yaml": """\
        service: thumbnails
        routes:
          - id: mine.group_icons
            endpoint: /v1/mine/group-icons
            summary: Icons of groups
            query:
              ids: {type: int_list, required: true, min: 1, max_items: 100, example: [7]}
            backend:
              path: /v1/groups/icons
              query: {groupIds: "{ids}"}
            response: {pick: data, order_by: targetId}
        """,
    "users.yaml": """\
        # users.get, cached for a day
        service: users
        routes:
          - id: users.get
            endpoint: /v1/users/{user_id}
            summary: Get a user by id
            params:
              user_id: {type: int, min: 1, example: 156}
            backend:
              path: /v1/users/{user_id}
            cache: {ttl: 1d}
        """,
}


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """The checkout as ``git clone`` would give it: tracked files only."""
    done = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False, timeout=30
    )
    if done.returncode != 0:
        pytest.skip("not a git checkout: nothing to clone")
    dest = tmp_path / "bloxproxy"
    for rel in filter(None, done.stdout.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():  # a file deleted but not yet committed is not there
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture
def mine(tmp_path: Path) -> Path:
    """A config file and its rule directory, outside the clone."""
    home = tmp_path / "mine"
    (home / "my-rules").mkdir(parents=True)
    (home / "config.yaml").write_text(MY_CONFIG, encoding="utf-8")
    for name, text in MY_RULES.items():
        (home / "my-rules" / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return home


def bloxproxy(clone: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOXPROXY_")}
    env["PYTHONPATH"] = str(clone)
    return subprocess.run(
        [sys.executable, *args], cwd=clone, env=env, capture_output=True, text=True, timeout=60
    )


def test_rules_of_ones_own_beside_the_shipped_ones(clone: Path, mine: Path) -> None:
    config = str(mine / "config.yaml")
    check = bloxproxy(clone, "-m", "bloxproxy", "check", "--config", config)
    assert (check.returncode, check.stderr) == (0, "")
    notice, ok = check.stdout.splitlines()
    # the shipped users.get is the clone's own rules/users.yaml (the cwd), not this checkout's
    assert notice == (
        f"{mine}/my-rules/users.yaml:4: overrides shipped rule users.get (rules/users.yaml:6)"
    )
    shipped = len(list((clone / "rules").glob("*.yaml")))
    assert ok.startswith(f"ok: config {config}, ")
    assert ok.endswith(f" routes from {shipped + 2} rule file(s)")

    routes = bloxproxy(clone, "-m", "bloxproxy", "routes", "--config", config)
    assert routes.returncode == 0, routes.stderr
    lines = routes.stdout.splitlines()[1:]
    # a route's line (id, method, endpoint, TTL, SWR, SIE), then "-> its upstream request"
    rows = {
        line.split()[2]: (line.split(), nxt.split())
        for line, nxt in itertools.pairwise(lines)
        if not line.startswith(" ")
    }
    _, mine_upstream = rows["/v1/mine/group-icons"]
    assert mine_upstream[:3] == ["->", "GET", "thumbnails/v1/groups/icons?groupIds={ids}"]
    assert rows["/v1/users/{user_id}"][0][3] == "1d"  # ours, not the shipped 10m
    assert "/v1/users/by-username/{username}" in rows  # the shipped rules are all there


def test_a_rule_added_to_rules_needs_one_command(clone: Path, mine: Path) -> None:
    assert bloxproxy(clone, "-m", "bloxproxy.docgen", "--check").returncode == 0
    shutil.copy(mine / "my-rules" / "groups.yaml", clone / "rules" / "mine.yaml")
    stale = bloxproxy(clone, "-m", "bloxproxy.docgen", "--check")
    assert (stale.returncode, stale.stdout) == (
        1,
        "README.md: out of date (run python -m bloxproxy.docgen)\n",
    )
    assert bloxproxy(clone, "-m", "bloxproxy.docgen").stdout == "README.md: rewritten\n"
    readme = (clone / "README.md").read_text(encoding="utf-8")
    assert "| `GET /v1/mine/group-icons?ids=…` (≤ 100) | Icons of groups |" in readme
    assert bloxproxy(clone, "-m", "bloxproxy.docgen", "--check").returncode == 0
