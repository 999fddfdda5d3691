"""The generated parts of the docs follow the code and the shipped rules, byte for byte."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bloxproxy import cli, docgen, rule_fields
from bloxproxy import config as config_mod
from bloxproxy.app import create_app

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


# --- the walk-through of docs/RULES.md runs as written ------------------------------------


def walkthrough() -> str:
    text = (ROOT / "docs" / "RULES.md").read_text(encoding="utf-8")
    start = text.index("## Adding an endpoint, end to end")
    return text[start : text.index("\n## ", start)]


def blocks(text: str) -> list[tuple[str, str]]:
    """Its fenced blocks, in order: (language, body)."""
    return re.findall(r"^```(\w+)\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def _same_counts(line: str) -> str:
    # The route and file counts follow the shipped rules: a rule added there changes them.
    return re.sub(r"\d+ routes from \d+ rule file", "N routes from M rule file", line)


async def test_adding_an_endpoint_end_to_end(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fake_server: TestServer,
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
) -> None:
    for name in list(os.environ):
        if name.startswith("BLOXPROXY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    found = blocks(walkthrough())
    files = [body for lang, body in found if lang == "yaml"]
    for body in files:  # each starts with its file name: "# my-rules/groups.yaml"
        name = re.fullmatch(r"# (\S+)\n", body.split("\n", 1)[0] + "\n")
        assert name, body
        (tmp_path / name[1]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name[1]).write_text(body, encoding="utf-8")
    assert len(files) == 3

    commands = 0
    for (lang, body), (next_lang, shown) in itertools.pairwise(found):
        argv = shlex.split(body)
        if lang != "sh" or argv[0] != "bloxproxy" or argv[1] not in ("check", "routes"):
            continue
        assert next_lang == "text"
        assert cli.main(argv[1:]) == 0
        out = capsys.readouterr().out.replace(f"{ROOT}/", "")  # rules/…, as from a checkout
        if argv[1] == "check":
            assert [_same_counts(x) for x in out.splitlines()] == [
                _same_counts(x) for x in shown.splitlines()
            ]
        else:  # an excerpt; the columns' widths follow the other routes
            rows = [x.split() for x in out.splitlines()]
            for line in shown.splitlines():
                assert line.split() in rows, line
        commands += 1
    assert commands == 2

    # `serve --fake-upstream`, then the curl: the same app in front of the bundled fake
    curl = next(body for lang, body in found if lang == "sh" and "curl" in body)
    url = re.search(r"'http://127\.0\.0\.1:8080(/\S+)'", curl)
    assert url is not None
    fake = f"http://127.0.0.1:{fake_server.port}/{{service}}"
    config = config_mod.load("my-config.yaml", env={"BLOXPROXY_UPSTREAM_BASE_URL": fake})
    client = await aiohttp_client(create_app(config))
    async with client.get(url[1]) as resp:
        assert resp.status == 200
        answer = orjson.loads(await resp.read())
    assert answer == orjson.loads(next(body for lang, body in found if lang == "json"))


def test_architecture_names_existing_modules() -> None:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
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


# --- the learned budgets' examples run as written -----------------------------------------


def _section(path: Path, heading: str) -> list[tuple[str, str]]:
    """The fenced blocks of one section: (language, body)."""
    text = path.read_text(encoding="utf-8")
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return blocks(text[start : end if end > 0 else len(text)])


async def test_the_readme_budget_example(
    tmp_path: Path,
    fake_server: TestServer,
    redis_url: str,
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
) -> None:
    (_, config_file), (_, commands), (_, shown) = _section(
        ROOT / "README.md", "## Protecting Roblox, surviving Roblox"
    )
    assert config_file.startswith("# budgets.yaml\n")
    (tmp_path / "budgets.yaml").write_text(config_file, encoding="utf-8")
    fake = f"http://127.0.0.1:{fake_server.port}/{{service}}"  # what --fake-upstream does
    env = {"BLOXPROXY_UPSTREAM_BASE_URL": fake, "BLOXPROXY_CACHE_REDIS_URL": redis_url}
    config = config_mod.load(str(tmp_path / "budgets.yaml"), env=env)
    up = config.limits.upstream
    assert (up.rate, up.rates, up.shared) == (20, {"thumbnails": 40, "friends": 2}, True)
    client = await aiohttp_client(create_app(config))
    curls = [shlex.split(line) for line in commands.splitlines() if line.startswith("curl")]
    assert [c[-1] for c in curls] == [
        "http://127.0.0.1:8080/users/v1/users/1",
        "http://127.0.0.1:8080/_bloxproxy/readyz",
    ]
    name, value = curls[0][curls[0].index("-H") + 1].split(": ")
    async with client.get("/users/v1/users/1", headers={name: value}) as resp:
        assert resp.status == 200
    async with client.get("/_bloxproxy/readyz") as resp:
        ready = orjson.loads(await resp.read())
    expected = orjson.loads(shown)
    assert ready["budgets"] == expected["budgets"]
    assert (ready["status"], ready["checks"]["redis"]) == ("ok", "ok")
    assert ready["checks"].keys() == expected["checks"].keys()


async def test_the_rules_bucket_example(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_server: TestServer,
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
) -> None:
    found = _section(ROOT / "docs" / "RULES.md", "## Limits\n")
    files = [body for lang, body in found if lang == "yaml"]
    assert len(files) == 2
    for body in files:
        name = body.split("\n", 1)[0].removeprefix("# ")
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body, encoding="utf-8")
    fake = f"http://127.0.0.1:{fake_server.port}/{{service}}"
    config = config_mod.load(
        str(tmp_path / "history-config.yaml"), env={"BLOXPROXY_UPSTREAM_BASE_URL": fake}
    )
    client = await aiohttp_client(create_app(config))
    async with client.get("/v1/users/1/username-history") as resp:
        assert resp.status == 200, await resp.read()
    async with client.get("/_bloxproxy/readyz") as resp:
        budgets = orjson.loads(await resp.read())["budgets"]
    text = (ROOT / "docs" / "RULES.md").read_text(encoding="utf-8")
    shown = re.search(r'`"users-history": (\{[^`]*\})`', text)
    assert shown is not None
    assert budgets == {"users-history": orjson.loads(shown[1])}


# --- the README's purge-by-entity example runs as written ---------------------------------


def _curls(body: str) -> list[tuple[list[str], str]]:
    """Each curl of a shell block (continuation lines joined, trailing comments cut) and the
    output shown under it (a ``# {...}`` line), or ""."""
    out: list[tuple[list[str], str]] = []
    joined = body.replace("\\\n", " ")
    for line in joined.splitlines():
        if line.startswith("curl"):
            out.append((shlex.split(line, comments=True), ""))
        elif line.startswith("# {"):
            out[-1] = (out[-1][0], line[2:])
    return out


async def test_the_readme_purge_by_tag_example(
    fake_server: TestServer,
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
) -> None:
    section = _section(ROOT / "README.md", "### Purging")
    (_, body) = next(b for b in section if b[0] == "sh" and '"tag"' in b[1])
    fake = f"http://127.0.0.1:{fake_server.port}/{{service}}"
    env = {"BLOXPROXY_UPSTREAM_BASE_URL": fake, "BLOXPROXY_SERVER_ADMIN_TOKEN": "t0ken"}
    client = await aiohttp_client(create_app(config_mod.load(None, env=env)))
    curls = _curls(body)
    assert len(curls) == 4
    for argv, shown in curls:
        url = next(a for a in argv if a.startswith("http://127.0.0.1:8080/"))
        path = url.removeprefix("http://127.0.0.1:8080")
        if "-X" in argv:
            data = argv[argv.index("-d") + 1]
            header = argv[argv.index("-H") + 1].replace("$TOKEN", "t0ken")
            name, value = header.split(": ", 1)
            async with client.post(path, data=data, headers={name: value}) as resp:
                assert resp.status == 200
                assert orjson.loads(await resp.read()) == orjson.loads(shown)
        else:
            async with client.get(path) as resp:
                assert resp.status == 200
                assert shown == ""


# --- the README's Open Cloud audit log example runs as written -------------------------------


def _scalars(value: object, into: dict[str, list[object]]) -> dict[str, list[object]]:
    """Every scalar member of a JSON value, by key, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)):
                _scalars(item, into)
            else:
                into.setdefault(key, []).append(item)
    elif isinstance(value, list):
        for item in value:
            _scalars(item, into)
    return into


async def test_the_readme_audit_log_example(
    fake_server: TestServer,
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
) -> None:
    section = _section(ROOT / "README.md", "## Open Cloud")
    (_, body) = next(b for b in section if b[0] == "sh" and "audit-log" in b[1])
    ((argv, _),) = _curls(body)
    url = next(a for a in argv if a.startswith("http://127.0.0.1:8080/"))
    headers = dict(argv[i + 1].split(": ", 1) for i, a in enumerate(argv) if a == "-H")
    assert set(headers) == {"X-Bloxproxy-Key", "x-api-key"}
    fake = f"http://127.0.0.1:{fake_server.port}/{{service}}"
    client = await aiohttp_client(
        create_app(config_mod.load(None, env={"BLOXPROXY_UPSTREAM_BASE_URL": fake}))
    )
    async with client.get(
        url.removeprefix("http://127.0.0.1:8080"), headers={"x-api-key": "group-7-key"}
    ) as resp:
        assert resp.status == 200, await resp.read()
        answer = orjson.loads(await resp.read())
    # every member the README shows, with the value it shows, is in the first item or the page
    shown = "".join(line[1:] for line in body.splitlines() if line.startswith("#"))
    pairs = re.findall(r'"(\w+)": ("[^"]*"|-?\d+|null)', shown)
    assert len(pairs) >= 8
    first = _scalars({**answer, "data": answer["data"][:1]}, {})
    for key, value in pairs:
        assert orjson.loads(value) in first.get(key, []), (key, value)
