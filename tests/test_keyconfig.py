"""``auth.clients``: named access keys read from files and the environment, their defaults,
and problems reported at ``file:line`` without ever quoting a key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bloxproxy.config import load
from bloxproxy.errors import ConfigError
from bloxproxy.keyconfig import HTTPSERVICE_PER_SERVER, NamedClient, Rate, rate


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def problems(path: str | None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc_info:
        load(path, env=env or {})
    return [str(p) for p in exc_info.value.problems]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500/min", Rate(500, 60)),
        ("8/s", Rate(8, 1)),
        (" 2.5 / second ", Rate(2.5, 1)),
        ("1000/h", Rate(1000, 3600)),
        (20, Rate(20, 1)),
        (0.5, Rate(0.5, 1)),
        (0, None),
        ("0", None),
        ("0/min", None),
    ],
)
def test_rate_reader(text: object, expected: Rate | None) -> None:
    assert rate(text) == expected


@pytest.mark.parametrize("text", ["fast", "-1", -1, "5/week", "/min", True, [1]])
def test_rate_reader_refuses(text: object) -> None:
    with pytest.raises(ValueError, match="expected a rate like '500/min'"):
        rate(text)


def test_rate_burst_window_and_text() -> None:
    r = Rate(500, 60)
    assert (r.burst, r.window, str(r)) == (500, 60, "500/min")
    assert r.per_second == pytest.approx(500 / 60)
    assert (Rate(2.5).burst, Rate(2.5).window, str(Rate(2.5))) == (3, 1.2, "2.5/s")
    assert Rate(0.2).burst == 1


def test_a_game_key_and_a_plain_one(tmp_path: Path) -> None:
    cfg = load(
        write(
            tmp_path,
            """\
            auth:
              keys: [plain-key]
              clients:
                live-game:
                  key: ${GAME_KEY}
                  places: [1818, 2020, 1818]
                  weight: 4
                  answer_mode: luau
                analytics:
                  key: ${ANALYTICS_KEY}
                  rate: 20/s
                  _note: a comment
                advisory-game:
                  key: adv
                  places: 7
                  roblox_id: advisory
                  per_server: 0
                  rate: 0
            """,
        ),
        env={"GAME_KEY": "g-secret", "ANALYTICS_KEY": "a-secret"},
    )
    assert cfg.auth.keyed
    assert cfg.auth.clients == (
        NamedClient(
            "live-game",
            "g-secret",
            (1818, 2020),
            per_server=HTTPSERVICE_PER_SERVER,
            weight=4.0,
            answer_mode="luau",
        ),
        NamedClient("analytics", "a-secret", rate=Rate(20, 1), own_rate=True),
        NamedClient("advisory-game", "adv", (7,), roblox_id="advisory", own_rate=True),
    )
    game = cfg.auth.clients[0]
    assert game.bound and game.luau and "g-secret" not in repr(cfg)


def test_from_the_environment() -> None:
    env = {"BLOXPROXY_AUTH_CLIENTS": "{bot: {key: b0t, weight: 2}}"}
    assert load(None, env=env).auth.clients == (NamedClient("bot", "b0t", weight=2.0),)
    assert not load(None, env={}).auth.keyed


PROBLEMS = [
    (
        """\
        auth:
          clients:
            game:
              places: [1]
        """,
        [
            "c.yaml:4: auth.clients.game.key: required: the client's access key "
            "(e.g. key: ${GAME_KEY})"
        ],
    ),
    (
        """\
        auth:
          clients:
            game:
              key: TOP-SECRET-1
              places: [1, x]
              weight: 0
              color: red
              answer_mode: lua
        """,
        [
            "c.yaml:5: auth.clients.game.places: expected a list of place ids (positive "
            "integers), got [1, 'x']",
            "c.yaml:6: auth.clients.game.weight: expected a number between 0.01 and 1000.0, got 0",
            "c.yaml:7: auth.clients.game.color: unknown key (allowed: answer_mode, key, "
            "opencloud_key, opencloud_passthrough, per_server, places, rate, roblox_id, "
            "weight)",
            "c.yaml:8: auth.clients.game.answer_mode: expected one of http, luau, got 'lua'",
        ],
    ),
    (
        """\
        auth:
          clients:
            game:
              key: TOP-SECRET-1
              universes: [5]
              per_server: lots
        """,
        [
            "c.yaml:5: auth.clients.game.universes: Roblox-Id names the place, not the "
            "universe: list the universe's places in places",
            "c.yaml:6: auth.clients.game.per_server: expected a rate like '500/min', '8/s' or "
            "a number per second, got 'lots'",
        ],
    ),
    (
        """\
        auth:
          keys: [TOP-SECRET-1]
          clients:
            a: {key: TOP-SECRET-1}
            b: {key: TOP-SECRET-2}
            c:
              key: TOP-SECRET-2
            d: {key: TOP-SECRET-3, roblox_id: advisory}
            e: {key: ""}
            f: {key: 12345}
        """,
        [
            "c.yaml:4: auth.clients.a.key: the same key as auth.keys (a key belongs to one client)",
            "c.yaml:7: auth.clients.c.key: the same key as auth.clients.b (a key belongs to one "
            "client)",
            "c.yaml:8: auth.clients.d.roblox_id: applies to a key with places",
            "c.yaml:9: auth.clients.e.key: expected the key as a non-empty string (use ${VAR})",
            "c.yaml:10: auth.clients.f.key: expected the key as a non-empty string (use ${VAR})",
        ],
    ),
    (
        """\
        auth:
          clients:
            "bad name!": {key: k}
            list: [key, k]
        """,
        [
            "c.yaml:3: auth.clients.bad name!: a client name is letters, digits, '_', '.' or "
            "'-' (at most 64)",
            "c.yaml:4: auth.clients.list: expected a mapping, got ['key', 'k']",
        ],
    ),
    (
        """\
        auth:
          clients:
            a: {key: TOP-SECRET-1, opencloud_key: main, opencloud_passthrough: [GET, FETCH]}
            b: {key: TOP-SECRET-2, opencloud_passthrough: true}
            c: {key: TOP-SECRET-3, opencloud_key: main, opencloud_passthrough: []}
            d: {key: TOP-SECRET-4, opencloud_key: main, opencloud_passthrough: GET}
            e: {key: TOP-SECRET-5, opencloud_key: main, opencloud_passthrough: [7]}
            f:
              key: TOP-SECRET-6
              opencloud_passthrough: [get, POST]
        opencloud:
          keys:
            main: {key: HELD-SECRET, owner: group:7}
        """,
        [
            "c.yaml:3: auth.clients.a.opencloud_passthrough: unknown method 'FETCH' (allowed: "
            "GET, HEAD, POST, PUT, PATCH, DELETE)",
            "c.yaml:4: auth.clients.b.opencloud_passthrough: needs opencloud_key (the held "
            "key it sends)",
            "c.yaml:5: auth.clients.c.opencloud_passthrough: expected true, false or a list of "
            "methods like [GET, HEAD], got []",
            "c.yaml:6: auth.clients.d.opencloud_passthrough: expected true, false or a list of "
            "methods like [GET, HEAD], got 'GET'",
            "c.yaml:7: auth.clients.e.opencloud_passthrough: unknown method 7 (allowed: GET, "
            "HEAD, POST, PUT, PATCH, DELETE)",
            "c.yaml:10: auth.clients.f.opencloud_passthrough: needs opencloud_key (the held "
            "key it sends)",
        ],
    ),
    (
        """\
        auth:
          clients: [TOP-SECRET-1]
        """,
        ["c.yaml:2: auth.clients: expected a mapping of client names, got ['TOP-SECRET-1']"],
    ),
]


@pytest.mark.parametrize(("text", "expected"), PROBLEMS)
def test_problems_at_their_lines(tmp_path: Path, text: str, expected: list[str]) -> None:
    found = problems(write(tmp_path, text))
    assert [p.replace(str(tmp_path) + "/", "") for p in found] == expected


def test_a_key_is_never_quoted_in_a_problem(tmp_path: Path) -> None:
    text = """\
    auth:
      keys: [TOP-SECRET-1]
      clients:
        a: {key: TOP-SECRET-1, weight: x}
        b: {key: TOP-SECRET-9, places: nope}
        c: {key: TOP-SECRET-9}
    """
    found = "\n".join(problems(write(tmp_path, text)))
    assert "auth.clients" in found and "TOP-SECRET" not in found


def test_env_problems_name_the_variable() -> None:
    found = problems(None, {"BLOXPROXY_AUTH_CLIENTS": "{g: {key: k, places: [0]}}"})
    assert found == [
        "$BLOXPROXY_AUTH_CLIENTS: auth.clients.g.places: expected a list of place ids "
        "(positive integers), got [0]"
    ]


def test_opencloud_passthrough_methods(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        auth:
          clients:
            quiet: {key: k1, opencloud_key: main}
            reads: {key: k2, opencloud_key: main, opencloud_passthrough: true}
            named: {key: k3, opencloud_key: main, opencloud_passthrough: [post, GET, POST]}
            none: {key: k4, opencloud_key: main, opencloud_passthrough: false}
        opencloud:
          keys:
            main: {key: HELD-SECRET, owner: group:7}
        """,
    )
    clients = {c.name: c for c in load(path, env={}).auth.clients}
    assert clients["quiet"].opencloud_passthrough == ()
    assert clients["reads"].opencloud_passthrough == ("GET", "HEAD")
    assert clients["named"].opencloud_passthrough == ("POST", "GET")
    assert clients["none"].opencloud_passthrough == ()
    assert "HELD-SECRET" not in repr(clients) and "k2" not in repr(clients["reads"])
