"""Tests for bloxproxy.cli: ``check``, ``routes`` and every subcommand's ``--help``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bloxproxy import cli
from bloxproxy.rules import load_rules

ROOT = Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "config.yaml")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads the real environment: keep the developer's BLOXPROXY_* out of it."""
    for name in list(os.environ):
        if name.startswith("BLOXPROXY_"):
            monkeypatch.delenv(name)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --- check ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv", [["check"], ["check", "--config", CONFIG], ["check", "-c", CONFIG]]
)
def test_check_ok(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    routes = len(load_rules([ROOT / "rules"]).routes)
    assert re.fullmatch(rf"ok: config \S+, {routes} routes from 9 rule file\(s\)\n", out)
    assert err == ""


def test_check_reads_bloxproxy_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BLOXPROXY_CONFIG", CONFIG)
    assert cli.main(["check"]) == 0
    assert capsys.readouterr().out.startswith(f"ok: config {CONFIG}, ")


def test_check_broken_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(
        tmp_path / "config.yaml",
        """\
        server:
          port: eighty
          nope: 1
        cache:
          negative_ttl: soon
        """,
    )
    assert cli.main(["check", "-c", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{config}:2: server.port: expected an integer, got 'eighty'",
        f"{config}:3: server.nope: unknown key (allowed: admin_token, body_timeout, "
        "header_timeout, host, host_suffix, keepalive_timeout, max_body_size, "
        "max_connections, ops_host, ops_port, port, shutdown_grace, workers)",
        f"{config}:5: cache.negative_ttl: expected a duration like '30s', '500ms' or '5m', "
        "got 'soon'",
        "3 problem(s) found",
    ]


def test_check_broken_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write(tmp_path / "config.yaml", "rules:\n  paths: [my-rules]\n")
    write(
        tmp_path / "my-rules" / "users.yaml",
        """\
        service: users
        routes:
          - endpoint: /v1/users/{user_id}
            backend:
              path: /v1/users/{user_id}
            cache: {ttl: forever}
        """,
    )
    write(tmp_path / "my-rules" / "games.yaml", "service: games\nroutes:\n\t- x\n")
    assert cli.main(["check", "-c", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "my-rules/games.yaml:3: invalid YAML: while scanning for the next token, found "
        "character '\\t' that cannot start any token",
        "my-rules/users.yaml:3: endpoint: {user_id} is not declared under params",
        "my-rules/users.yaml:5: backend.path: {user_id} is not a parameter of this route "
        "(known: none)",
        "my-rules/users.yaml:6: cache.ttl: expected a duration like '30s', '500ms' or '5m', "
        "got 'forever'",
        "4 problem(s) found",
    ]


def test_check_broken_config_and_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write(tmp_path / "config.yaml", "server:\n  port: x\nrules:\n  paths: [my-rules]\n")
    write(tmp_path / "my-rules" / "x.yaml", "service: users\nroutes: 5\n")
    monkeypatch.setenv("BLOXPROXY_CACHE_NOPE", "1")
    assert cli.main(["check", "-c", str(config)]) == 1
    problems = capsys.readouterr().err.splitlines()
    assert problems[:2] == [
        "$BLOXPROXY_CACHE_NOPE: unknown configuration variable",
        f"{config}:2: server.port: expected an integer, got 'x'",
    ]
    assert problems[-1].endswith("problem(s) found")


def test_check_reports_configured_rules_even_when_the_config_is_broken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write(tmp_path / "config.yaml", "server:\n  port: x\nrules:\n  paths: [my-rules]\n")
    write(tmp_path / "my-rules" / "x.yaml", "service: users\nroutes: 5\n")
    assert cli.main(["check", "-c", str(config)]) == 1
    assert "my-rules/x.yaml:2: routes: expected a list of routes" in (
        capsys.readouterr().err.splitlines()
    )


def test_check_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert cli.main(["check", "-c", str(missing)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{missing}:1: cannot read: No such file or directory",
        "1 problem(s) found",
    ]


# --- routes ---------------------------------------------------------------------------------


def test_routes_prints_every_route_with_ttls(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["routes", "-c", CONFIG]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["ROUTE", "UPSTREAM", "TTL", "SWR", "SIE"]
    rules = load_rules([ROOT / "rules"])
    assert len(lines) == 1 + len(rules.routes)
    by_route = {" ".join(line.split()[:2]): line.split() for line in lines[1:]}
    for r in rules.routes:
        cells = by_route[f"GET {r.endpoint}"]
        assert cells[2] == r.backend.method
        assert cells[3].startswith(f"{r.backend.service}{r.backend.path.text}")
    users = by_route["GET /v1/users/{user_id}"]
    assert users[2:] == ["GET", "users/v1/users/{user_id}", "10m", "1m", "1h"]
    batch = by_route["GET /v1/users"]
    assert batch[2:] == ["POST", "users/v1/users", "10m", "1m", "1h"]
    presence = by_route["GET /v1/presence"]
    assert presence[-3:] == ["30s", "-", "5m"]
    members = by_route["GET /v1/groups/{group_id}/members"]
    assert members[2:] == [
        "GET",
        "groups/v1/groups/{group_id}/users?limit={limit}&cursor={cursor}&sortOrder={sort_order}",
        "2m",
        "-",
        "1h",
    ]


def test_routes_shows_disabled_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write(tmp_path / "config.yaml", "rules:\n  paths: [r.yaml]\n")
    write(
        tmp_path / "r.yaml",
        """\
        service: presence
        routes:
          - endpoint: /v1/live
            backend: {path: /v1/live}
            cache: false
          - endpoint: /v1/slow
            backend: {path: /v1/slow}
            cache: {ttl: 90s, stale_while_revalidate: 1500ms}
        """,
    )
    assert cli.main(["routes", "-c", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["GET", "/v1/live", "GET", "presence/v1/live", "off", "-", "-"]
    assert lines[2].split() == ["GET", "/v1/slow", "GET", "presence/v1/slow", "90s", "1.5s", "-"]


def test_routes_with_broken_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write(tmp_path / "config.yaml", "rules:\n  paths: [r.yaml]\n")
    write(tmp_path / "r.yaml", "service: users\n")
    assert cli.main(["routes", "-c", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == ["r.yaml:1: routes: expected a list of routes"]


# --- help and usage -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["--help"], "serve"),
        (["serve", "--help"], "--fake-upstream"),
        (["check", "--help"], "file:line: message"),
        (["routes", "--help"], "cache TTLs"),
        (["fake-roblox", "--help"], "--latency"),
    ],
)
def test_help(capsys: pytest.CaptureFixture[str], argv: list[str], text: str) -> None:
    with pytest.raises(SystemExit) as exc_info:
        cli.main(argv)
    assert exc_info.value.code == 0
    assert text in " ".join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.parametrize("argv", [[], ["nope"], ["check", "--bogus"]])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        cli.main(argv)
    assert exc_info.value.code == 2
    assert "usage: bloxproxy" in capsys.readouterr().err


# --- the real console entry -----------------------------------------------------------------


def test_console_entry_check() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOXPROXY_")}
    proc = subprocess.run(
        [sys.executable, "-m", "bloxproxy", "check", "--config", CONFIG],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"ok: config {CONFIG}, ")
    assert proc.stderr == ""
