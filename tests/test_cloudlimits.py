"""Open Cloud's published limits: extracting ``x-roblox-rate-limits`` from an OpenAPI
document (``bloxproxy import-limits``), the data file beside a rule file, and
``limits.per_key_owner`` in rules (bloxproxy/cloudlimits.py, rules.py, cli.py)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from bloxproxy import cli
from bloxproxy import config as config_mod
from bloxproxy.cloudlimits import OperationLimit, TableError, extract, read_table, table_text
from bloxproxy.config import shipped_rules_dir
from bloxproxy.errors import ConfigError
from bloxproxy.rules import load_rules
from bloxproxy.upstream.budget import Tuning


def limits(owner: object, period: object = "MINUTE") -> dict[str, Any]:
    return {"x-roblox-rate-limits": {"perApiKeyOwner": {"period": period, "maxInPeriod": owner}}}


# A made-up document in the official one's shape (not Roblox's text).
DOC: dict[str, Any] = {
    "openapi": "3.0.0",
    "info": {"version": "9.9"},
    "paths": {
        "/cloud/v2/things/{thing_id}": {
            "get": {"operationId": "Cloud_GetThing", **limits(600)},
            "patch": {"operationId": "Cloud_UpdateThing", **limits(5, "SECOND")},
            "parameters": [],  # not an operation
        },
        "/cloud/v2/things/{thing_id}:frob": {"post": {"summary": "Frob", **limits(10, "HOUR")}},
        "/cloud/v2/odd": {
            "get": {"operationId": "NoLimit"},
            "put": {"operationId": "BadPeriod", **limits(5, "WEEK")},
            "post": {"operationId": "BadMax", **limits(True)},
            "delete": {"operationId": "Zero", **limits(0)},
        },
        "/legacy-things/v1/things/{id}": {"get": {"operationId": "Legacy", **limits(100)}},
        "/v1/elsewhere": {"get": {"operationId": "Elsewhere", **limits(1)}},
    },
}


def test_extract_keeps_operations_with_a_usable_limit() -> None:
    found = extract(DOC, ("/cloud/", "/legacy-"))
    assert [(o.method, o.path, o.operation, o.max_in_period, o.period) for o in found] == [
        ("GET", "/cloud/v2/things/{thing_id}", "Cloud_GetThing", 600, "MINUTE"),
        ("PATCH", "/cloud/v2/things/{thing_id}", "Cloud_UpdateThing", 5, "SECOND"),
        ("POST", "/cloud/v2/things/{thing_id}:frob", "Frob", 10, "HOUR"),
        ("GET", "/legacy-things/v1/things/{id}", "Legacy", 100, "MINUTE"),
    ]
    assert [o.per_second for o in found] == [10.0, 5.0, pytest.approx(10 / 3600), 100 / 60]
    assert [o.text() for o in found] == ["600/min", "5/s", "10/h", "100/min"]
    assert len(extract(DOC)) == 5  # no prefix: /v1/elsewhere too
    for bad in ({}, [], {"paths": []}, "x"):
        with pytest.raises(TableError, match="not an OpenAPI document"):
            extract(bad)


def test_the_table_round_trips_and_refuses_what_it_is_not() -> None:
    found = extract(DOC, ("/cloud/",))
    text = table_text(found, "doc.json", "9.9")
    data = orjson.loads(text)
    assert (data["format"], data["source"], data["document_version"]) == (1, "doc.json", "9.9")
    table = read_table(text.encode())
    assert table[("GET", "/cloud/v2/things/{}")] == found[0]
    assert table[("POST", "/cloud/v2/things/{}:frob")].operation == "Frob"
    assert read_table(table_text([], "empty").encode()) == {}
    for raw, message in (
        (b"{", "not JSON"),
        (b"[]", "format 1"),
        (b'{"format": 2, "operations": []}', "format 1"),
        (b'{"format": 1}', "'operations' list"),
        (b'{"format": 1, "operations": [{"method": "GET"}]}', "operations[0]: expected"),
        (
            b'{"format": 1, "operations": [{"method": "GET", "path": "/x", "operation": "X", '
            b'"per_key_owner": {"max_in_period": 1, "period": "WEEK"}}]}',
            "operations[0]: expected a period",
        ),
    ):
        with pytest.raises(TableError, match=re.escape(message)):
            read_table(raw)


def test_import_limits_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "openapi.json"
    doc.write_bytes(orjson.dumps(DOC))
    out = tmp_path / "x.limits.json"
    assert cli.main(["import-limits", str(doc), "-o", str(out), "--source", "the doc"]) == 0
    assert "4 operation(s) written" in capsys.readouterr().err
    table = read_table(out.read_bytes())
    assert sorted(table) == [
        ("GET", "/cloud/v2/things/{}"),
        ("GET", "/legacy-things/v1/things/{}"),
        ("PATCH", "/cloud/v2/things/{}"),
        ("POST", "/cloud/v2/things/{}:frob"),
    ]
    assert orjson.loads(out.read_bytes())["source"] == "the doc"
    assert cli.main(["import-limits", str(doc), "--prefix", "/legacy-"]) == 0
    assert len(orjson.loads(capsys.readouterr().out)["operations"]) == 1
    bad = tmp_path / "bad.json"
    bad.write_text("{nope", encoding="utf-8")
    assert cli.main(["import-limits", str(bad)]) == 1
    assert capsys.readouterr().err.startswith(f"{bad}: ")
    assert cli.main(["import-limits", str(tmp_path / "missing.json")]) == 1


RULE = """\
    service: apis
    routes:
      - id: things.get
        endpoint: /v2/things/{thing}
        params: {thing: {type: int}}
        backend: {path: "/cloud/v2/things/{thing}", credentials: api_key}
        limits: {per_key_owner: %s}
    """


def write_rule(directory: Path, value: str, table: list[OperationLimit] | None) -> Path:
    path = directory / "things.yaml"
    path.write_text(textwrap.dedent(RULE % value), encoding="utf-8")
    if table is not None:
        (directory / "things.limits.json").write_text(table_text(table, "t"), encoding="utf-8")
    return path


def test_per_key_owner_from_the_table_or_a_rate(tmp_path: Path) -> None:
    (route,) = load_rules([write_rule(tmp_path, "openapi", extract(DOC))]).routes
    assert route.owner_limit is not None
    assert (route.owner_limit.text, route.owner_limit.source) == (
        "600/min",
        "openapi: Cloud_GetThing",
    )
    assert (route.owner_limit.per_second, route.owner_bucket) == (10.0, "cloud-getthing")
    (route,) = load_rules([write_rule(tmp_path, "30/s", None)]).routes
    assert route.owner_limit is not None
    assert (route.owner_limit.per_second, route.owner_limit.source) == (30.0, "rule")
    assert route.owner_bucket == "things-get"


def test_per_key_owner_problems(tmp_path: Path) -> None:
    def problems(value: str, table: list[OperationLimit] | None) -> list[str]:
        with pytest.raises(ConfigError) as info:
            load_rules([write_rule(tmp_path, value, table)])
        return [str(p).replace(str(tmp_path), "DIR") for p in info.value.problems]

    (tmp_path / "things.limits.json").unlink(missing_ok=True)
    assert problems("openapi", None) == [
        "DIR/things.yaml:7: limits.per_key_owner: openapi, but there is no things.limits.json "
        "beside the rule file (write it with bloxproxy import-limits)"
    ]
    assert problems("openapi", extract(DOC, ("/legacy-",))) == [
        "DIR/things.yaml:7: limits.per_key_owner: things.limits.json has no operation GET "
        "/cloud/v2/things/{thing} (run bloxproxy import-limits again, or write a rate)"
    ]
    assert problems("lots", None)[0].endswith(
        "limits.per_key_owner: expected a rate like '500/min', '8/s' or a number per second, "
        "got 'lots'"
    )
    assert problems("0", None)[0].endswith("expected openapi or a rate like '1000/min', not 0")
    (tmp_path / "things.limits.json").write_text("{}", encoding="utf-8")
    path = tmp_path / "things.yaml"
    path.write_text(textwrap.dedent(RULE % "1/s"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_rules([path])
    assert [str(p).replace(str(tmp_path), "DIR") for p in info.value.problems] == [
        "DIR/things.limits.json:1: expected a limits table of format 1 (bloxproxy import-limits)"
    ]


def test_the_shipped_open_cloud_routes_have_the_published_limits() -> None:
    rules = load_rules([shipped_rules_dir()])
    found = {r.id: r.owner_limit.text for r in rules.routes if r.owner_limit is not None}
    assert found == {
        "opencloud.user": "1000/min",
        "opencloud.user_thumbnail": "1000/min",
        "opencloud.group": "150/min",
        "opencloud.group_memberships": "300/min",
        "opencloud.group_member": "300/min",
        "opencloud.group_roles": "300/min",
        "opencloud.group_role": "300/min",
        "opencloud.universe": "100/min",
        "opencloud.place": "100/min",
    }
    table = read_table((shipped_rules_dir() / "opencloud.limits.json").read_bytes())
    assert all(o.operation.startswith("Cloud_") for o in table.values())


@pytest.mark.parametrize(
    ("scope", "rates", "seeds", "ceiling"),
    [
        ("cloud-getuser@group-7", {}, {"cloud-getuser": 16.0}, 16.0),  # the seed
        ("cloud-getuser@group-7", {"cloud-getuser": 3.0}, {"cloud-getuser": 16.0}, 3.0),
        ("cloud-getuser@group-7", {}, {}, 20.0),  # no seed: limits.upstream.rate
        ("apis", {}, {"cloud-getuser": 16.0}, 20.0),
        ("cloud-getuser", {}, {"cloud-getuser": 16.0}, 16.0),
    ],
)
def test_per_owner_scopes_start_at_their_seed(
    scope: str, rates: dict[str, float], seeds: dict[str, float], ceiling: float
) -> None:
    env = {"BLOXPROXY_LIMITS_UPSTREAM_RATES": orjson.dumps(rates).decode()} if rates else {}
    config = config_mod.load(None, env=env)
    assert Tuning.of(config, scope, seeds).ceiling == ceiling
