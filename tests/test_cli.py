"""Tests for bloxproxy.cli: ``check``, ``routes`` and every subcommand's ``--help``."""

from __future__ import annotations

import importlib.metadata
import os
import re
import socket
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from bloxproxy import cli
from bloxproxy import config as config_mod
from bloxproxy import serve as serve_mod
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
    shipped = load_rules([ROOT / "rules"])
    counts = f"{len(shipped.routes)} routes from {len(shipped.files)} rule file"
    assert re.fullmatch(rf"ok: config \S+, {counts}\(s\)\n", out)
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
        f"{config}:3: server.nope: unknown key (allowed: admin_token, allow_open, "
        "body_timeout, compression, cors, header_timeout, host, host_suffix, keepalive_timeout, "
        "max_body_size, max_connections, ops_host, ops_port, port, shutdown_grace, workers)",
        f"{config}:5: cache.negative_ttl: expected a duration like '30s', '500ms' or '5m', "
        "got 'soon'",
        "3 problem(s) found",
    ]


def test_check_reports_held_key_passthrough_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(
        tmp_path / "config.yaml",
        """\
        auth:
          clients:
            game:
              key: GAME-SECRET
              opencloud_key: main
              opencloud_passthrough: [GET, TRACE]
            bot:
              key: BOT-SECRET
              opencloud_passthrough: true
        opencloud:
          keys:
            main: {key: HELD-SECRET, owner: group:7}
        """,
    )
    assert cli.main(["check", "-c", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{config}:6: auth.clients.game.opencloud_passthrough: unknown method 'TRACE' "
        "(allowed: GET, HEAD, POST, PUT, PATCH, DELETE)",
        f"{config}:9: auth.clients.bot.opencloud_passthrough: needs opencloud_key (the held "
        "key it sends)",
        "2 problem(s) found",
    ]
    assert "SECRET" not in err


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


def test_check_lists_user_rules_that_replace_shipped_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write(tmp_path / "config.yaml", "rules:\n  paths: [my-rules]\n")
    write(
        tmp_path / "my-rules" / "users.yaml",
        """\
        service: users
        routes:
          - id: users.get
            endpoint: /v1/users/{user_id}
            params: {user_id: {type: int, min: 1}}
            backend: {path: "/v1/users/{user_id}"}
            cache: {ttl: 1h}
        """,
    )
    assert cli.main(["check", "-c", str(config)]) == 0
    out, err = capsys.readouterr()
    shipped = load_rules([ROOT / "rules"])
    users_get = shipped.by_id("users.get")
    assert users_get is not None
    assert err == ""
    assert out.splitlines() == [
        f"my-rules/users.yaml:3: overrides shipped rule users.get ({users_get.where})",
        f"ok: config {config}, {len(shipped.routes)} routes from "
        f"{len(shipped.files) + 1} rule file(s)",
    ]


def test_check_salvages_rules_shipped_from_a_broken_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "config.yaml", "server:\n  port: x\nrules:\n  shipped: false\n")
    assert cli.main(["check", "-c", str(config)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{config}:2: server.port: expected an integer, got 'x'",
        # neither shipped rules nor rules.paths: said of the config that made it so
        f"{config}:1: rules: no rule files found (none shipped, none in rules.paths)",
        "2 problem(s) found",
    ]


def test_check_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert cli.main(["check", "-c", str(missing)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{missing}:1: cannot read: No such file or directory",
        "1 problem(s) found",
    ]


# --- routes ---------------------------------------------------------------------------------


def parse_routes(out: str) -> dict[str, tuple[list[str], str]]:
    """``bloxproxy routes`` as {route id: (its line's cells, its whole upstream request)}."""
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "ROUTE", "TTL", "SWR", "SIE"]
    indent = lines[0].index("ROUTE")
    table: dict[str, tuple[list[str], str]] = {}
    ident = ""
    for line in lines[1:]:
        if line.startswith(" "):
            assert line[:indent] == " " * indent, line
            rest = line[indent:]
            assert rest.startswith(("-> ", "   ")), line
            cells, upstream = table[ident]
            table[ident] = (cells, upstream + rest[3:])
        else:
            ident = line.split()[0]
            table[ident] = (line.split(), "")
    return table


def test_routes_prints_every_route_with_its_id_upstream_and_ttls(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["routes", "-c", CONFIG]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    rules = load_rules([ROOT / "rules"])
    table = parse_routes(out)
    assert sorted(table) == sorted(r.id for r in (*rules.routes, *rules.composites))
    for r in rules.routes:
        cells, upstream = table[r.id]
        assert cells[1:3] == [r.method, r.endpoint]
        assert upstream.startswith(f"{r.backend.method} {r.backend.service}{r.backend.path.text}")
    assert table["users.get"] == (
        ["users.get", "GET", "/v1/users/{user_id}", "10m", "1m", "1h"],
        "GET users/v1/users/{user_id}",
    )
    assert table["users.batch"][0][3:] == ["10m", "1m", "1h"]
    assert table["users.batch"][1] == "POST users/v1/users [batch: userIds <= 200]"
    assert table["presence.batch"][0][-3:] == ["30s", "-", "5m"]
    # an Open Cloud route: the limit Roblox publishes per key owner, from the imported table
    assert table["opencloud.user"][1] == (
        "GET apis/cloud/v2/users/{user_id} [per key owner: 1000/min, openapi: Cloud_GetUser]"
    )
    assert table["opencloud.user_thumbnail"][1].endswith(
        " [per key owner: 1000/min, openapi: Cloud_GenerateUserThumbnail]"
    )
    # a legacy-* API-key route: its limit from openapi.json, named by the summary there
    assert table["opencloud.group_audit_log"][1].endswith(
        " [per key owner: 100/min, openapi: Gets the Group's audit log]"
    )
    # a composite route: its parts' routes, each cached as its own route is
    cells, parts = table["users.profile"]
    assert cells == ["users.profile", "GET", "/v1/users/{user_id}/profile", "-", "-", "-"]
    assert parts.startswith(
        "[compose, each part cached as its route] user=users.batch "
        "headshot=thumbnails.user_headshots "
    )
    # every endpoint shown whole in 100 columns (a long one is not cut)
    assert all("..." not in cells[2] for cells, _ in table.values())
    assert table["groups.members"] == (
        ["groups.members", "GET", "/v1/groups/{group_id}/members", "2m", "-", "1h"],
        "GET groups/v1/groups/{group_id}/users?limit={limit}&cursor={cursor}"
        "&sortOrder={sort_order}",
    )


def test_routes_fit_100_columns(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["routes", "-c", CONFIG]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 100
    wrapped = [line for line in lines if line.lstrip().startswith("&")]
    assert wrapped, "the long upstream queries are wrapped, at a parameter"


def test_routes_fit_100_columns_whatever_the_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write(tmp_path / "config.yaml", "rules:\n  shipped: false\n  paths: [r.yaml]\n")
    long_id = "presence." + "x" * 60
    long_segment = "a" * 120
    write(
        tmp_path / "r.yaml",
        f"""\
        service: presence
        routes:
          - id: {long_id}
            endpoint: /v1/{"very-long-segment/" * 6}end
            backend:
              path: /v1/{long_segment}
              query: {{{", ".join(f"p{i}: v{i}" for i in range(30))}}}
            cache: {{ttl: 90061s, stale_while_revalidate: 1500ms}}
        """,
    )
    assert cli.main(["routes", "-c", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 100, lines
    assert lines[1].startswith(long_id[:29] + "...  GET /v1/very-long-segment/")
    assert lines[1].split()[-3:] == ["90061s", "1.5s", "-"]
    upstream = "".join(line.strip().removeprefix("-> ") for line in lines[2:])
    assert upstream == f"GET presence/v1/{long_segment}?" + "&".join(
        f"p{i}=v{i}" for i in range(30)
    ), "nothing of the upstream request is lost"


def test_routes_shows_disabled_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write(tmp_path / "config.yaml", "rules:\n  paths: [r.yaml]\n  shipped: false\n")
    write(
        tmp_path / "r.yaml",
        """\
        service: presence
        routes:
          - id: presence.live
            endpoint: /v1/live
            backend: {path: /v1/live}
            cache: false
          - id: presence.slow
            endpoint: /v1/slow
            backend: {path: /v1/slow}
            cache: {ttl: 90s, stale_while_revalidate: 1500ms}
          - endpoint: /v1/unnamed
            backend: {path: /v1/unnamed}
        """,
    )
    assert cli.main(["routes", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    table = parse_routes(out)
    assert table["presence.live"][0][1:] == ["GET", "/v1/live", "off", "-", "-"]
    assert table["presence.slow"][0][1:] == ["GET", "/v1/slow", "90s", "1.5s", "-"]
    # a route without an id has "METHOD endpoint" as its id (what metrics and purge use)
    assert "\nGET /v1/unnamed  GET /v1/unnamed  " in out


def test_routes_into_a_closed_pipe_ends_quietly() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOXPROXY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bloxproxy", "routes"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()  # like `bloxproxy routes | head -c 10`
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) in (0, 1)
    assert b"Traceback" not in err, err.decode()


def test_routes_with_broken_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write(tmp_path / "config.yaml", "rules:\n  shipped: false\n  paths: [r.yaml]\n")
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


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        cli.main(["--version"])
    assert exc_info.value.code == 0
    assert capsys.readouterr().out == f"bloxproxy {importlib.metadata.version('bloxproxy')}\n"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert importlib.metadata.version("bloxproxy") == pyproject["project"]["version"]


@pytest.mark.parametrize("argv", [[], ["nope"], ["check", "--bogus"]])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        cli.main(argv)
    assert exc_info.value.code == 2
    assert "usage: bloxproxy" in capsys.readouterr().err


# --- serve: no open proxy by accident -------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost.", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),  # every interface
        ("10.0.0.5", False),
        ("192.168.1.2", False),
        ("::ffff:127.0.0.1", False),  # not taken for loopback: refuse rather than guess
        ("proxy.example", False),
        ("localhost.example", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert serve_mod.is_loopback(host) is loopback


def test_open_listener_is_beyond_loopback_without_keys() -> None:
    def opened(**env: str) -> str | None:
        return serve_mod.open_listener(config_mod.load(None, env=env))

    assert opened() is None
    assert opened(BLOXPROXY_SERVER_HOST="0.0.0.0") == (
        "0.0.0.0:8080 with no access keys and no client rate limit"
    )
    assert opened(BLOXPROXY_SERVER_HOST="", BLOXPROXY_LIMITS_CLIENTS_RATE="5") == (
        "*:8080 with no access keys"
    )
    assert opened(BLOXPROXY_SERVER_HOST="0.0.0.0", BLOXPROXY_AUTH_KEYS="k") is None
    # allow_open does not make it less open: serve decides what to do about it
    assert opened(BLOXPROXY_SERVER_HOST="::", BLOXPROXY_SERVER_ALLOW_OPEN="true") is not None


def serve_process(*argv: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BLOXPROXY_")}
    return subprocess.run(
        [sys.executable, "-m", "bloxproxy", "serve", *argv],
        cwd=ROOT,
        env={**base, "BLOXPROXY_LOGGING_FORMAT": "text", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


REFUSAL = (
    "refusing to listen on {where} with no access keys and no client rate limit: anyone who "
    "can reach that address could use this proxy. Set access keys (auth.keys, e.g. "
    "BLOXPROXY_AUTH_KEYS=key1,key2; clients send one in X-Bloxproxy-Key), listen on 127.0.0.1 "
    "(--host, BLOXPROXY_SERVER_HOST), or allow it with server.allow_open: true "
    "(BLOXPROXY_SERVER_ALLOW_OPEN=true)"
)


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--host", "0.0.0.0"], {}),
        ([], {"BLOXPROXY_SERVER_HOST": "0.0.0.0"}),  # what the container image sets
        (["--host", "0.0.0.0", "--workers", "2"], {}),
        (["--host", "0.0.0.0"], {"BLOXPROXY_SERVER_ALLOW_OPEN": "false"}),
    ],
)
def test_serve_refuses_an_open_address_without_keys(argv: list[str], env: dict[str, str]) -> None:
    port = free_port()
    done = serve_process(*argv, "--port", str(port), **env)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.endswith(" ERROR bloxproxy " + REFUSAL.format(where=f"0.0.0.0:{port}")), line
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))  # it never listened


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port already listened on at 127.0.0.1, so that a serve on 0.0.0.0 gets as far as
    binding (past every check) and fails there without ever listening beyond loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_allowed_open_warns_in_the_log(taken_port: int) -> None:
    done = serve_process(
        "--host", "0.0.0.0", "--port", str(taken_port), BLOXPROXY_SERVER_ALLOW_OPEN="true"
    )
    lines = done.stderr.splitlines()
    assert lines[0].endswith(
        f" WARNING bloxproxy listening on 0.0.0.0:{taken_port} with no access keys and no "
        "client rate limit (server.allow_open: true): anyone who can reach that address can "
        "use this proxy"
    ), lines
    # it went on to bind (the port is taken here, so that is as far as it gets)
    assert lines[-1].startswith(f"bloxproxy: cannot listen on 0.0.0.0:{taken_port}: ")
    assert lines[-1].endswith("address already in use")
    assert done.returncode == 1


def test_serve_with_keys_on_an_open_address_says_nothing_about_it(taken_port: int) -> None:
    done = serve_process("--host", "0.0.0.0", "--port", str(taken_port), BLOXPROXY_AUTH_KEYS="k")
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"bloxproxy: cannot listen on 0.0.0.0:{taken_port}: ")
    assert done.returncode == 1


def test_check_warns_when_serve_would_refuse(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BLOXPROXY_SERVER_HOST", "0.0.0.0")
    assert cli.main(["check"]) == 0, "the config is valid"
    out, err = capsys.readouterr()
    assert out.startswith("ok: config <defaults>, ")
    assert (
        err
        == "warning: serve will refuse to listen on "
        + REFUSAL.format(where="0.0.0.0:8080").removeprefix("refusing to listen on ")
        + "\n"
    )
    monkeypatch.setenv("BLOXPROXY_SERVER_ALLOW_OPEN", "true")
    assert cli.main(["check"]) == 0
    assert capsys.readouterr().err == ""


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


def test_routes_show_the_batch_endpoints(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["routes"]) == 0
    out = capsys.readouterr().out
    assert "POST presence/v1/presence/users [batch: userIds <= 50]" in out
    assert "[batch: usernames <= 100]" in out


def test_check_a_rules_path_that_is_not_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Said of the config that named it (its file:line), not as line 1 of a file that does
    not exist (as it was, whether the path came from the file or from the environment)."""
    config = write(tmp_path / "config.yaml", "rules:\n  paths: [mine]\n")
    assert cli.main(["check", "-c", str(config)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{config}:1: rules.paths: {tmp_path / 'mine'}: no such file or directory",
        "1 problem(s) found",
    ]
