"""Open Cloud's published limits: extracting ``x-roblox-rate-limits`` from OpenAPI
documents (``bloxproxy import-limits``), the data file beside a rule file, and
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
from bloxproxy.cloudlimits import (
    Document,
    OperationLimit,
    TableError,
    combine,
    extract,
    read_table,
    tables_text,
)
from bloxproxy.config import shipped_rules_dir
from bloxproxy.errors import ConfigError
from bloxproxy.rules import load_rules
from bloxproxy.upstream.budget import Tuning

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "rules" / "opencloud.limits.json"
# Roblox's Open Cloud v2 document, every key but the operations' limits dropped (docs/ROBLOX.md)
SUBSET = ROOT / "rules" / "sources" / "cloud.docs.subset.json"
COMMIT = "019b031c5eab95ec296af6c31fea2926969edd09"  # of creator-docs, the subset's source
# Roblox's all-APIs document: its /legacy-badges/ operations and the two /legacy-groups/ GETs
# the proxy routes, their limits only
LEGACY_SUBSET = ROOT / "rules" / "sources" / "openapi.subset.json"
LEGACY_COMMIT = "02681b0e9ff28bf2dba701292d0cea1206fc8c71"


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


@pytest.mark.parametrize(
    ("rate_limits", "expected"),
    [
        ({"perApiKeyOwner": {"period": "MINUTE", "maxInPeriod": 150}}, "150/min"),
        (  # both: only the per-owner one counts
            {
                "perApiKeyOwner": {"period": "SECOND", "maxInPeriod": 150},
                "perOauth2Authorization": {"period": "SECOND", "maxInPeriod": 30},
            },
            "150/s",
        ),
        (  # an OAuth token's limit is not an API key owner's
            {"perOauth2Authorization": {"period": "MINUTE", "maxInPeriod": 30}},
            None,
        ),
        (  # a note beside the limits (later documents write one) changes nothing
            {
                "description": "Data stores are throttled too.",
                "perApiKeyOwner": {"period": "DAY", "maxInPeriod": 2},
            },
            "2/d",
        ),
        ({"perApiKeyOwner": {"period": "HOUR", "maxInPeriod": 7}}, "7/h"),
        ({"perApiKeyOwner": {"period": "minute", "maxInPeriod": 7}}, None),
        ({"perApiKeyOwner": {"period": "MONTH", "maxInPeriod": 7}}, None),
        ({"perApiKeyOwner": {"period": "MINUTE", "maxInPeriod": 1.5}}, None),
        ({"perApiKeyOwner": {"period": "MINUTE", "maxInPeriod": "100"}}, None),
        ({"perApiKeyOwner": {"period": "MINUTE", "maxInPeriod": -1}}, None),
        ({"perApiKeyOwner": {"period": "MINUTE"}}, None),
        ({"perApiKeyOwner": [150, "MINUTE"]}, None),
        ([{"perApiKeyOwner": {"period": "MINUTE", "maxInPeriod": 1}}], None),
        ("150/min", None),
    ],
)
def test_extract_reads_one_operations_rate_limits(
    rate_limits: object, expected: str | None
) -> None:
    doc = {
        "paths": {"/cloud/v2/x": {"get": {"operationId": "X", "x-roblox-rate-limits": rate_limits}}}
    }
    assert [o.text() for o in extract(doc)] == ([expected] if expected else [])


def test_operations_that_are_one_once_parameter_names_are_ignored() -> None:
    def doc(first: int, second: int) -> dict[str, Any]:
        return {
            "paths": {
                "/cloud/v2/things/{thing_id}": {"get": {"operationId": "A", **limits(first)}},
                "/cloud/v2/things/{id}": {
                    "get": {"operationId": "B", **limits(second)},
                    "delete": {"operationId": "C", **limits(second)},
                },
            }
        }

    # the same limit: one entry (the first path's), which either spelling of a route matches
    found = extract(doc(600, 600))
    assert [(o.method, o.path, o.operation) for o in found] == [
        ("DELETE", "/cloud/v2/things/{id}", "C"),
        ("GET", "/cloud/v2/things/{thing_id}", "A"),
    ]
    # different limits: which one a route would get is a guess, so the document is refused
    with pytest.raises(TableError) as info:
        extract(doc(600, 5))
    assert str(info.value) == (
        "GET /cloud/v2/things/{thing_id} (600/min) and /cloud/v2/things/{id} (5/min) are one "
        "operation once parameter names are ignored"
    )


def test_the_table_round_trips_and_refuses_what_it_is_not() -> None:
    found = extract(DOC, ("/cloud/",))
    text = tables_text([Document("doc.json", "doc.json", "9.9", tuple(found))])
    data = orjson.loads(text)
    assert data["format"] == 1
    assert data["sources"] == [{"source": "doc.json", "document_version": "9.9"}]
    assert {op["document"] for op in data["operations"]} == {0}
    table = read_table(text.encode())
    assert table[("GET", "/cloud/v2/things/{}")] == found[0]
    assert table[("POST", "/cloud/v2/things/{}:frob")].operation == "Frob"
    assert read_table(tables_text([Document("empty", "empty", "", ())]).encode()) == {}
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
        (
            b'{"format": 1, "operations": ['
            b'{"method": "GET", "path": "/x/{a}", "operation": "X", '
            b'"per_key_owner": {"max_in_period": 1, "period": "MINUTE"}}, '
            b'{"method": "get", "path": "/x/{b}", "operation": "Y", '
            b'"per_key_owner": {"max_in_period": 2, "period": "MINUTE"}}]}',
            "operations[1]: GET /x/{b} is operations[0] again (parameter names are ignored)",
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
    assert orjson.loads(out.read_bytes())["sources"] == [
        {"source": "the doc", "document_version": "9.9"}
    ]
    assert cli.main(["import-limits", str(doc), "--prefix", "/legacy-"]) == 0
    assert len(orjson.loads(capsys.readouterr().out)["operations"]) == 1
    bad = tmp_path / "bad.json"
    bad.write_text("{nope", encoding="utf-8")
    assert cli.main(["import-limits", str(bad)]) == 1
    assert capsys.readouterr().err.startswith(f"{bad}: ")
    assert cli.main(["import-limits", str(tmp_path / "missing.json")]) == 1
    assert capsys.readouterr().err.startswith(f"{tmp_path / 'missing.json'}: ")
    clash = tmp_path / "clash.json"
    clash.write_bytes(
        orjson.dumps(
            {
                "paths": {
                    "/cloud/v2/a/{x}": {"get": limits(1)},
                    "/cloud/v2/a/{y}": {"get": limits(2)},
                }
            }
        )
    )
    assert cli.main(["import-limits", str(clash), "-o", str(tmp_path / "clash.limits.json")]) == 1
    assert capsys.readouterr().err == (
        f"{clash}: GET /cloud/v2/a/{{x}} (1/min) and /cloud/v2/a/{{y}} (2/min) are one operation "
        "once parameter names are ignored\n"
    )
    assert not (tmp_path / "clash.limits.json").exists()


def doc_of(name: str, limits_found: list[OperationLimit], version: str = "") -> Document:
    return Document(name, f"source of {name}", version, tuple(limits_found))


def op(method: str, path: str, name: str, most: int, period: str = "MINUTE") -> OperationLimit:
    return OperationLimit(method, path, name, most, period)


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (  # apart: both, sorted by path and method, each from its document
            [op("GET", "/cloud/v2/a", "A", 5)],
            [op("POST", "/legacy-x/v1/b", "B", 100)],
            [(0, "GET", "/cloud/v2/a", "A"), (1, "POST", "/legacy-x/v1/b", "B")],
        ),
        (  # in both with one limit: once, the first document's (its path and name)
            [op("GET", "/x/{id}", "First", 100)],
            [op("GET", "/x/{x_id}", "Second", 100), op("GET", "/a", "A", 1)],
            [(1, "GET", "/a", "A"), (0, "GET", "/x/{id}", "First")],
        ),
        (  # the same operation written per second or per minute is not the same limit
            [op("GET", "/x", "X", 1, "SECOND")],
            [op("GET", "/x", "X", 60)],
            "GET /x is 1/s in one.json but /x is 60/min in two.json: one operation with two "
            "published limits",
        ),
        (
            [op("PATCH", "/x/{a}", "X", 100)],
            [op("PATCH", "/x/{b}", "Y", 150)],
            "PATCH /x/{a} is 100/min in one.json but /x/{b} is 150/min in two.json: one "
            "operation with two published limits",
        ),
        ([], [], []),
    ],
)
def test_combine_takes_each_operation_once_and_refuses_two_limits(
    first: list[OperationLimit], second: list[OperationLimit], expected: object
) -> None:
    documents = [doc_of("one.json", first), doc_of("two.json", second)]
    if isinstance(expected, str):
        with pytest.raises(TableError) as info:
            combine(documents)
        assert str(info.value) == expected
        with pytest.raises(TableError):
            tables_text(documents)
        return
    found = [(i, o.method, o.path, o.operation) for i, o in combine(documents)]
    assert found == expected
    data = orjson.loads(tables_text(documents))
    assert data["sources"] == [{"source": "source of one.json"}, {"source": "source of two.json"}]
    assert [(o["document"], o["method"], o["path"]) for o in data["operations"]] == [
        entry[:3] for entry in found
    ]


def test_import_limits_reads_several_documents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud = tmp_path / "cloud.json"
    cloud.write_bytes(orjson.dumps(DOC))
    legacy = tmp_path / "legacy.json"
    legacy.write_bytes(
        orjson.dumps(
            {
                "info": {"title": "All", "version": "1.0.0"},
                "paths": {
                    "/legacy-things/v1/things/{thing}": {  # DOC's too, with its limit: once
                        "get": {"summary": "Get a thing.", **limits(100)},
                        "patch": {"summary": "Update a thing.", **limits(50)},
                    },
                    "/v1/elsewhere": {"get": limits(1)},  # not under a prefix
                },
            }
        )
    )
    out = tmp_path / "x.limits.json"
    argv = ["import-limits", str(cloud), str(legacy), "-o", str(out)]
    assert cli.main([*argv, "--source", "the cloud doc", "--source", "the big one"]) == 0
    assert capsys.readouterr().err == f"5 operation(s) written to {out}\n"
    data = orjson.loads(out.read_bytes())
    assert data["sources"] == [
        {"source": "the cloud doc", "document_version": "9.9"},
        {"source": "the big one", "document_version": "1.0.0"},
    ]
    by_key = {(o["method"], o["path"]): (o["document"], o["operation"]) for o in data["operations"]}
    assert by_key[("GET", "/legacy-things/v1/things/{id}")] == (0, "Legacy")
    assert by_key[("PATCH", "/legacy-things/v1/things/{thing}")] == (1, "Update a thing.")
    assert read_table(out.read_bytes())[("PATCH", "/legacy-things/v1/things/{}")].text() == "50/min"
    # without --source each document is named by its file name
    assert cli.main(["import-limits", str(cloud), str(legacy)]) == 0
    assert [s["source"] for s in orjson.loads(capsys.readouterr().out)["sources"]] == [
        "cloud.json",
        "legacy.json",
    ]
    # a --source per document, or none
    assert cli.main([*argv, "--source", "only one"]) == 1
    assert capsys.readouterr().err == (
        "import-limits: 2 document(s) but 1 --source: give one --source per document, in the "
        "same order, or none\n"
    )
    # one operation, two limits: refused, nothing written
    legacy.write_bytes(
        orjson.dumps({"paths": {"/legacy-things/v1/things/{thing}": {"get": limits(99)}}})
    )
    out.unlink()
    assert cli.main(argv) == 1
    assert capsys.readouterr().err == (
        f"import-limits: GET /legacy-things/v1/things/{{id}} is 100/min in {cloud} but "
        f"/legacy-things/v1/things/{{thing}} is 99/min in {legacy}: one operation with two "
        "published limits\n"
    )
    assert not out.exists()
    # a bad second document is named, and nothing is written
    legacy.write_text("[", encoding="utf-8")
    assert cli.main(argv) == 1
    assert capsys.readouterr().err.startswith(f"{legacy}: ")
    assert not out.exists()
    legacy.write_text("[]", encoding="utf-8")
    assert cli.main(argv) == 1
    assert capsys.readouterr().err == f"{legacy}: not an OpenAPI document: no 'paths' mapping\n"


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
        text = tables_text([Document("t", "t", "", tuple(table))])
        (directory / "things.limits.json").write_text(text, encoding="utf-8")
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
        # the legacy-groups API-key reads, from openapi.json (named by their summary)
        "opencloud.group_audit_log": "100/min",
        "opencloud.group_settings": "100/min",
    }
    table = read_table((shipped_rules_dir() / "opencloud.limits.json").read_bytes())
    assert all(o.operation.startswith("Cloud_") for k, o in table.items() if "/cloud/" in k[1])
    by_id = {r.id: r for r in rules.routes}
    audit, settings = by_id["opencloud.group_audit_log"], by_id["opencloud.group_settings"]
    assert audit.owner_limit is not None and settings.owner_limit is not None
    assert audit.owner_limit.source == "openapi: Gets the Group's audit log"
    assert settings.owner_limit.source == "openapi: Gets the Group's settings"
    # each its own per-owner budget, as Roblox counts per operation
    assert (audit.owner_bucket, settings.owner_bucket) == (
        "gets-the-group-s-audit-log",
        "gets-the-group-s-settings",
    )
    # openapi.json publishes no GET of a badge under /legacy-badges/: no route reads one
    assert ("GET", "/legacy-badges/v1/badges/{}") not in table
    assert not [r for r in rules.routes if r.backend.path.text.startswith("/legacy-badges/")]


def test_a_legacy_route_whose_operation_left_the_table_is_refused(tmp_path: Path) -> None:
    # the shipped rule file beside the shipped table without the audit log's operation (as
    # if a newer openapi.json dropped it): the route says so instead of going unlimited
    (tmp_path / "opencloud.yaml").write_bytes((shipped_rules_dir() / "opencloud.yaml").read_bytes())
    data = orjson.loads(TABLE.read_bytes())
    data["operations"] = [o for o in data["operations"] if not o["path"].endswith("/audit-log")]
    (tmp_path / "opencloud.limits.json").write_bytes(orjson.dumps(data))
    with pytest.raises(ConfigError) as info:
        load_rules([tmp_path / "opencloud.yaml"])
    assert [str(p).split(": ", 1)[1] for p in info.value.problems] == [
        "limits.per_key_owner: opencloud.limits.json has no operation GET "
        "/legacy-groups/v1/groups/{group_id}/audit-log (run bloxproxy import-limits again, or "
        "write a rate)"
    ]


def test_the_shipped_table_is_the_commands_output_for_the_committed_subset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud, legacy = (s["source"] for s in orjson.loads(TABLE.read_bytes())["sources"])
    assert cloud.startswith(
        f"Roblox/creator-docs content/en-us/reference/cloud/cloud.docs.json @ {COMMIT[:12]} "
    )
    assert legacy.startswith(
        f"Roblox/creator-docs content/en-us/reference/cloud/openapi.json @ {LEGACY_COMMIT[:12]} "
    )
    out = tmp_path / "opencloud.limits.json"
    argv = ["import-limits", str(SUBSET), str(LEGACY_SUBSET), "-o", str(out)]
    assert cli.main([*argv, "--source", cloud, "--source", legacy]) == 0
    assert capsys.readouterr().err == f"76 operation(s) written to {out}\n"
    assert out.read_text(encoding="utf-8") == TABLE.read_text(encoding="utf-8")


def test_the_committed_subset_is_the_documents_limits_and_nothing_else() -> None:
    doc = orjson.loads(SUBSET.read_bytes())
    assert list(doc) == ["openapi", "info", "x-bloxproxy-subset", "paths"]
    assert (doc["openapi"], doc["info"]) == ("3.0.0", {"title": "Cloud API", "version": "2.0.0"})
    assert f"cloud.docs.json at commit {COMMIT}" in doc["x-bloxproxy-subset"]
    ops = [(m, path, op) for path, item in doc["paths"].items() for m, op in item.items()]
    assert (len(doc["paths"]), len(ops)) == (54, 72)
    for method, path, op in ops:
        assert method in ("get", "post", "patch", "delete"), (method, path)
        assert path.startswith("/cloud/v2/"), path
        assert list(op) == ["summary", "operationId", "x-roblox-rate-limits"], (method, path)
        for who, limit in op["x-roblox-rate-limits"].items():
            assert who in ("perApiKeyOwner", "perOauth2Authorization"), (path, who)
            assert list(limit) == ["period", "maxInPeriod"], (path, who)
    # every operation publishes a limit per key owner: each one is in the table
    table = read_table(TABLE.read_bytes())
    assert sorted(o.operation for k, o in table.items() if k[1].startswith("/cloud/")) == sorted(
        op["operationId"] for *_, op in ops
    )


def test_the_committed_legacy_subset_is_the_documents_legacy_operations_and_nothing_else() -> None:
    doc = orjson.loads(LEGACY_SUBSET.read_bytes())
    assert list(doc) == ["openapi", "info", "x-bloxproxy-subset", "paths"]
    assert (doc["openapi"], doc["info"]) == (
        "3.0.4",
        {
            "title": "Roblox API",
            "description": "The Roblox API. See https://create.roblox.com/docs/cloud/open-cloud "
            "for more details.",
            "version": "1.0.0",
            "x-roblox-extensions-version": "1.1.0",
        },
    )
    assert f"openapi.json at commit {LEGACY_COMMIT}" in doc["x-bloxproxy-subset"]
    per_minute_100 = {
        "perApiKeyOwner": {"period": "MINUTE", "maxInPeriod": 100},
        "perOauth2Authorization": {"period": "MINUTE", "maxInPeriod": 100},
    }
    # every /legacy-badges/ path and method of the document (there is no GET among them) and
    # the two /legacy-groups/ GETs the proxy routes; no operationId in the document, the
    # summary and the limits as written there
    assert doc["paths"] == {
        "/legacy-badges/v1/badges/{badgeId}": {
            "patch": {
                "summary": "Updates badge configuration.",
                "x-roblox-rate-limits": per_minute_100,
            }
        },
        "/legacy-badges/v1/universes/{universeId}/badges": {
            "post": {"summary": "Creates a new badge.", "x-roblox-rate-limits": per_minute_100}
        },
        "/legacy-groups/v1/groups/{groupId}/audit-log": {
            "get": {"summary": "Gets the Group's audit log", "x-roblox-rate-limits": per_minute_100}
        },
        "/legacy-groups/v1/groups/{groupId}/settings": {
            "get": {"summary": "Gets the Group's settings", "x-roblox-rate-limits": per_minute_100}
        },
    }
    data = orjson.loads(TABLE.read_bytes())
    assert [(o["method"], o["path"]) for o in data["operations"] if o["document"] == 1] == [
        ("PATCH", "/legacy-badges/v1/badges/{badgeId}"),
        ("POST", "/legacy-badges/v1/universes/{universeId}/badges"),
        ("GET", "/legacy-groups/v1/groups/{groupId}/audit-log"),
        ("GET", "/legacy-groups/v1/groups/{groupId}/settings"),
    ]
    assert all(
        o["path"].startswith("/cloud/v2/") == (o["document"] == 0) for o in data["operations"]
    )


@pytest.mark.parametrize(
    ("method", "path", "operation", "text"),
    [  # a few of the document's own numbers, as read from it (not routed by the proxy)
        ("POST", "/cloud/v2/users/{}/notifications", "Cloud_CreateUserNotification", "4000/s"),
        (
            "POST",
            "/cloud/v2/universes/{}/data-stores:snapshot",
            "Cloud_SnapshotDataStores",
            "60/min",
        ),
        ("GET", "/cloud/v2/universes/{}/user-restrictions", "Cloud_ListUserRestrictions", "150/s"),
        ("POST", "/cloud/v2/universes/{}:generateSpeech", "Cloud_GenerateSpeech", "4/s"),
        (
            "GET",
            "/cloud/v2/universes/{}/subscription-products/{}/subscriptions/{}",
            "Cloud_GetSubscription",
            "500/min",
        ),
        (
            "POST",
            "/cloud/v2/universes/{}/luau-execution-session-task-binary-inputs",
            "Cloud_CreateLuauExecutionSessionTaskBinaryInput",
            "5/min",
        ),
        (  # the same call under a scope: the document gives it 5 times as many
            "GET",
            "/cloud/v2/universes/{}/data-stores/{}/entries/{}:listRevisions",
            "Cloud_ListDataStoreEntryRevisions__Using_Universes_DataStores",
            "1000/min",
        ),
        (
            "GET",
            "/cloud/v2/universes/{}/data-stores/{}/scopes/{}/entries/{}:listRevisions",
            "Cloud_ListDataStoreEntryRevisions__Using_Universes_DataStores_Scopes",
            "5000/min",
        ),
        # from openapi.json, named by their summary (they have no operationId)
        ("PATCH", "/legacy-badges/v1/badges/{}", "Updates badge configuration.", "100/min"),
        ("POST", "/legacy-badges/v1/universes/{}/badges", "Creates a new badge.", "100/min"),
        ("GET", "/legacy-groups/v1/groups/{}/audit-log", "Gets the Group's audit log", "100/min"),
        ("GET", "/legacy-groups/v1/groups/{}/settings", "Gets the Group's settings", "100/min"),
    ],
)
def test_the_table_has_the_documents_numbers(
    method: str, path: str, operation: str, text: str
) -> None:
    entry = read_table(TABLE.read_bytes())[(method, path)]
    assert (entry.operation, entry.text()) == (operation, text)


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
