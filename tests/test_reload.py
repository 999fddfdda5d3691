"""Hot reload in-process: :func:`bloxproxy.serve.reload_app` on a real app in front of the
fake, with the config and rule files in ``tmp_path`` (reload re-reads them from disk).

A valid change swaps routes at once and counts ``reloads{result="ok"}``; a broken one is
rejected with the ``file:line`` messages ``bloxproxy check`` prints, logged at ERROR,
counted as ``reloads{result="error"}``, and the old routes keep answering; a request in
flight finishes on the route it started with; settings read only at start are reported,
not applied.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from bloxproxy import config as config_mod
from bloxproxy.app import create_app
from bloxproxy.appkeys import PIPELINE
from bloxproxy.errors import ConfigError
from bloxproxy.fake import FakeRoblox
from bloxproxy.serve import RESTART_ONLY, Overrides, load_all, reload_app
from tests.conftest import FakeClock

Client = TestClient[web.Request, web.Application]

USERS_GET = """\
  - id: users.get
    endpoint: /v1/users/{user_id}
    params:
      user_id: {type: int, min: 1}
    backend:
      path: /v1/users/{user_id}
    cache: {ttl: 10m}
"""
USERS_V2 = """\
  - id: users.get_v2
    endpoint: /v2/users/{user_id}
    params:
      user_id: {type: int, min: 1}
    backend:
      path: /v1/users/{user_id}
    response:
      allow: [id, name]
    cache: {ttl: 10m}
"""
BROKEN = """\
  - id: users.broken
    endpoint: /v3/users/{user_id}
    params:
      user_id: {type: int, min: 1}
    backend:
      path: /v1/users/{user_id}
    cache: {ttl: thirty}
"""


def rules_text(*routes: str) -> str:
    return "service: users\nroutes:\n" + "".join(routes)


class Setup:
    """A config file and a rules directory in ``tmp_path``; edit them, then reload."""

    def __init__(self, tmp_path: Path, fake_port: int) -> None:
        self.dir = tmp_path
        self.config = tmp_path / "bloxproxy.yaml"
        self.rules = tmp_path / "rules" / "users.yaml"
        self.rules.parent.mkdir()
        self.fake_port = fake_port
        self.write_config()
        self.rules.write_text(rules_text(USERS_GET))

    def write_config(self, extra: str = "") -> None:
        self.config.write_text(
            "rules: {paths: [rules], shipped: false}\n"
            f"upstream: {{base_url: 'http://127.0.0.1:{self.fake_port}/{{service}}'}}\n"
            "logging: {access_log: false}\n" + extra
        )

    def reload(self, app: web.Application) -> bool:
        return reload_app(app, str(self.config), Overrides())


@pytest.fixture
def setup(tmp_path: Path, fake_server: TestServer, monkeypatch: pytest.MonkeyPatch) -> Setup:
    for name in list(os.environ):
        if name.startswith("BLOXPROXY_"):  # reload reads the real environment
            monkeypatch.delenv(name)
    assert fake_server.port is not None
    return Setup(tmp_path, fake_server.port)


@pytest.fixture
def start(
    aiohttp_client: Callable[..., Awaitable[Client]], setup: Setup, clock: FakeClock
) -> Callable[[], Awaitable[Client]]:
    async def make() -> Client:
        app = create_app(
            config_mod.load(str(setup.config)), clock=clock, monotonic=clock, sleep=clock.sleep
        )
        return await aiohttp_client(app)

    return make


async def get(client: Client, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.get(path, **kwargs) as resp:
        return resp.status, orjson.loads(await resp.read())


async def reloads(client: Client) -> dict[str, float]:
    async with client.get("/_bloxproxy/metrics") as resp:
        text = await resp.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "bloxproxy_reloads_total":
                out[s.labels["result"]] = s.value
    return out


async def test_a_valid_change_swaps_routes(
    start: Callable[[], Awaitable[Client]], setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start()
    assert (await get(proxy, "/v1/users/1"))[0] == 200
    assert (await get(proxy, "/v2/users/1"))[0] == 404
    assert await reloads(proxy) == {}

    setup.rules.write_text(rules_text(USERS_V2))  # v1 removed, v2 added
    caplog.set_level(logging.INFO, "bloxproxy")
    assert setup.reload(proxy.server.app) is True

    status, body = await get(proxy, "/v2/users/1")
    assert (status, body) == (200, {"id": 1, "name": "Roblox"})
    status, problem = await get(proxy, "/v1/users/1")
    assert (status, problem["code"]) == (404, "no_route")
    assert await reloads(proxy) == {"ok": 1}
    assert "reloaded: 1 routes from 1 rule file(s)" in caplog.text
    # the docs follow the live rules
    status, spec = await get(proxy, "/openapi.json")
    assert status == 200
    assert "/v2/users/{user_id}" in spec["paths"] and "/v1/users/{user_id}" not in spec["paths"]


async def test_a_new_rule_file_in_the_directory_is_picked_up(
    start: Callable[[], Awaitable[Client]], setup: Setup
) -> None:
    proxy = await start()
    (setup.rules.parent / "more.yaml").write_text(rules_text(USERS_V2))
    assert setup.reload(proxy.server.app) is True
    assert (await get(proxy, "/v1/users/1"))[0] == 200
    assert (await get(proxy, "/v2/users/1"))[0] == 200


async def test_a_broken_change_is_rejected_and_the_old_rules_keep_serving(
    start: Callable[[], Awaitable[Client]],
    setup: Setup,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(setup.dir)  # file names shown relative to the working directory
    proxy = await start()
    app = proxy.server.app
    old_rules = app[PIPELINE].rules
    setup.rules.write_text(rules_text(USERS_GET, BROKEN))
    (setup.rules.parent / "dup.yaml").write_text(rules_text(USERS_GET))  # duplicate route
    with pytest.raises(ConfigError) as check:  # what `bloxproxy check` prints
        load_all(str(setup.config))
    expected = [str(p) for p in check.value.problems]
    assert len(expected) == 3, expected
    assert expected[0].startswith(
        "rules/users.yaml:3: id: 'users.get' is already used at rules/dup.yaml:3"
    )
    assert expected[1].startswith("rules/users.yaml:3: endpoint: ")
    assert expected[2].startswith("rules/users.yaml:16: cache.ttl: expected a duration")

    caplog.set_level(logging.INFO, "bloxproxy")
    assert setup.reload(app) is False
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged == [f"reload rejected: {m}" for m in expected]
    assert app[PIPELINE].rules is old_rules
    assert (await get(proxy, "/v1/users/1"))[0] == 200
    assert (await get(proxy, "/v3/users/1"))[0] == 404
    assert await reloads(proxy) == {"error": 1}

    (setup.rules.parent / "dup.yaml").unlink()
    setup.rules.write_text(rules_text(USERS_GET, USERS_V2))  # fixed: the next reload works
    assert setup.reload(app) is True
    assert (await get(proxy, "/v2/users/1"))[0] == 200
    assert await reloads(proxy) == {"error": 1, "ok": 1}


async def test_a_broken_config_file_is_rejected_too(
    start: Callable[[], Awaitable[Client]], setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start()
    setup.write_config("retries: {attempts: many}\n")
    caplog.set_level(logging.ERROR, "bloxproxy")
    assert setup.reload(proxy.server.app) is False
    assert "bloxproxy.yaml:4: retries.attempts:" in caplog.text
    assert (await get(proxy, "/v1/users/1"))[0] == 200
    assert await reloads(proxy) == {"error": 1}


async def test_a_file_the_loader_chokes_on_is_rejected_not_raised(
    start: Callable[[], Awaitable[Client]], setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    """A control character makes PyYAML raise its ReaderError (not a ConfigError, a
    yamlsrc bug reported separately): reload must still reject, log and count it."""
    proxy = await start()
    setup.rules.write_text("\x08" + rules_text(USERS_GET, USERS_V2))
    caplog.set_level(logging.ERROR, "bloxproxy")
    assert setup.reload(proxy.server.app) is False
    assert any(r.getMessage().startswith("reload rejected: ") for r in caplog.records)
    assert (await get(proxy, "/v1/users/1"))[0] == 200
    assert (await get(proxy, "/v2/users/1"))[0] == 404
    assert await reloads(proxy) == {"error": 1}


async def test_a_request_in_flight_finishes_on_the_old_route(
    start: Callable[[], Awaitable[Client]], setup: Setup, fake: FakeRoblox
) -> None:
    proxy = await start()
    fake.latency = 0.2
    in_flight = asyncio.create_task(get(proxy, "/v1/users/1"))
    for _ in range(400):  # until the request matched its route and is upstream (<= 2 s)
        if fake.total:
            break
        await asyncio.sleep(0.005)
    assert fake.total == 1
    setup.rules.write_text(rules_text(USERS_V2))
    assert setup.reload(proxy.server.app) is True
    assert not in_flight.done()
    status, body = await in_flight
    assert status == 200
    assert body["id"] == 1 and "display_name" in body  # the old route's full shape
    fake.latency = 0.0
    assert (await get(proxy, "/v1/users/1"))[0] == 404
    assert (await get(proxy, "/v2/users/1"))[1] == {"id": 1, "name": "Roblox"}


def test_restart_only_names_real_settings() -> None:
    config = config_mod.Config()
    for key in RESTART_ONLY:
        value: Any = config
        for name in key.split("."):
            value = getattr(value, name)  # AttributeError: a stale name in the list


async def test_restart_only_settings_are_reported_not_applied(
    start: Callable[[], Awaitable[Client]],
    setup: Setup,
    fake: FakeRoblox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = await start()
    assert (await get(proxy, "/users/v1/users/1"))[0] == 200  # cached (passthrough_ttl)
    setup.write_config(
        "server: {port: 9999}\ncache: {enabled: false}\nauth: {header: X-Other-Key}\n"
    )
    setup.rules.write_text(rules_text(USERS_GET, USERS_V2))
    caplog.set_level(logging.INFO, "bloxproxy")
    assert setup.reload(proxy.server.app) is True
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    for key in ("server.port", "cache.enabled", "auth"):
        assert key in warnings[0]
    assert "rules" not in warnings[0]
    # the rules did change ...
    assert (await get(proxy, "/v2/users/1"))[0] == 200
    # ... the restart-only settings did not
    async with proxy.get("/users/v1/users/1") as resp:
        assert resp.headers["X-Cache"] == "HIT"
    async with proxy.get("/users/v1/users/2", headers={"X-Bloxproxy-Key": "k"}) as resp:
        assert resp.status == 200
    # the access-key header is still ours and still never sent to Roblox
    assert "x-bloxproxy-key" not in fake.requests[-1].headers
    assert proxy.server.app[PIPELINE].config.server.port != 9999
