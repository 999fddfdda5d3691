"""The OpenAPI document, the docs page, ``bloxproxy openapi``, and a schemathesis run.

The schemathesis run fuzzes every clean route (and the proxy's own endpoints) of the real
proxy app, served on 127.0.0.1 in front of the real fake Roblox upstream, and checks every
answer against the document: no 5xx the proxy caused, documented statuses, content types,
headers and body schemas. Passthrough is excluded: it answers whatever Roblox answers.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from schemathesis.checks import (
    CheckFunction,
    negative_data_rejection,
    positive_data_acceptance,
)

from bloxproxy import cli
from bloxproxy import config as config_mod
from bloxproxy.app import apply_reload, create_app
from bloxproxy.appkeys import CONFIG
from bloxproxy.appkeys import RULES as RULES_KEY
from bloxproxy.docs_page import CSP, render_docs
from bloxproxy.errors import HTTPProblem, problem_body
from bloxproxy.fake import FAKE_STATE, create_fake_app
from bloxproxy.normalize import OrderBy, Pagination, Plan
from bloxproxy.openapi import (
    PASSTHROUGH_TAG,
    body_schema,
    build_openapi,
    dumps,
    envelope_schema,
    openapi_for,
)
from bloxproxy.params import Param
from bloxproxy.rules import RuleSet, load_rules
from bloxproxy.serve import MAX_LINE, start_runner
from bloxproxy.walk import walkable

from .conftest import ProxyFactory

ROOT = Path(__file__).resolve().parent.parent
RULES = load_rules([ROOT / "rules"])
SPEC = build_openapi(RULES)


def _resolve(node: dict[str, Any], spec: dict[str, Any] = SPEC) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = spec
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def _check(schema: dict[str, Any], value: Any, spec: dict[str, Any] = SPEC) -> list[str]:
    """Where ``value`` breaks ``schema`` (whose ``#/components/...`` refs point into ``spec``)."""
    root = {"$ref": "#/x-check", "x-check": schema, "components": spec["components"]}
    return [e.message for e in Draft202012Validator(root).iter_errors(value)]


# -- the document ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {
            "access_key_header": "X-Bloxproxy-Key",
            "passthrough_services": ["users", "games"],
            "server_url": "http://127.0.0.1:8080",
        },
    ],
)
def test_document_is_valid_openapi_31(options: dict[str, Any]) -> None:
    spec = build_openapi(RULES, **options)
    assert spec["openapi"] == "3.1.0"
    validate(spec)  # openapi-spec-validator picks the 3.1 schema from "openapi"
    assert spec["info"]["title"] == "bloxproxy" and spec["info"]["version"]


def test_build_is_pure_and_serialization_canonical() -> None:
    assert build_openapi(RULES) == SPEC
    data = dumps(SPEC)
    assert data == dumps(build_openapi(RULES)) and data.endswith(b"}\n")
    assert data.startswith(b'{\n  "components"')  # sorted keys, indent 2


def _expected_scalar(p: Param) -> dict[str, Any]:
    if p.type in ("int", "int_list"):
        out: dict[str, Any] = {
            "type": "integer",
            "format": "int64",
            "minimum": p.min if p.min is not None else -(2**63),
            "maximum": p.max if p.max is not None else 2**63 - 1,
        }
    elif p.type == "bool":
        out = {"type": "boolean"}
    else:
        out = {"type": "string", "maxLength": p.max_length}
        if p.min_length:
            out["minLength"] = p.min_length
        if p.pattern is not None:
            out["pattern"] = f"^(?:{p.pattern.pattern})$"
    if p.enum:
        out["enum"] = list(p.enum)
    return out


@pytest.mark.parametrize("route", RULES.routes, ids=lambda r: r.id)
def test_every_route_and_parameter_is_described(route: Any) -> None:
    op = SPEC["paths"][route.endpoint][route.method.lower()]
    assert op["operationId"] == route.id
    assert op["summary"] == route.summary and op["tags"] == list(route.tags)
    assert op.get("deprecated", False) == route.deprecated
    b = route.backend
    assert f"Upstream: `{b.method} {b.service} {b.path.text}" in op["description"]
    assert op["x-bloxproxy-upstream"]["path"] == b.path.text
    assert op["x-bloxproxy-cache"]["ttl"] == route.cache.ttl
    params = {(p["in"], p["name"]): p for p in op["parameters"]}
    declared = [*route.path_params, *route.query_params]
    walk = params.pop(("query", "all"), None)  # the reserved one (whole lists), on list routes
    assert (walk is not None) == walkable(route)
    key = params.pop(("header", "x-api-key"), None)  # Open Cloud routes: the caller's own key
    assert (key is not None) == (b.credentials == "api_key")
    if key is not None:
        assert key["required"] is False and "401" in op["responses"]
    assert ("202" in op["responses"]) == (
        route.hold is not None and route.hold.operation is not None
    )
    assert len(params) == len(declared)
    for p in declared:
        doc = params[(p.location, p.name)]
        assert doc["required"] == p.required
        schema = dict(doc["schema"])
        default = schema.pop("default", None)
        assert default == (list(p.default) if isinstance(p.default, tuple) else p.default)
        if p.is_list:
            assert (doc["style"], doc["explode"]) == ("form", False)
            assert "repeated keys" in doc["description"]
            assert schema == {
                "type": "array",
                "items": _expected_scalar(p),
                "minItems": p.min_items,
                "maxItems": p.max_items,
            }
        else:
            assert schema == _expected_scalar(p)
        if p.example is not None:
            assert doc["example"] == (list(p.example) if p.is_list else p.example)
            assert not _check(doc["schema"], doc["example"])


def test_anchored_patterns_mean_what_the_parser_does() -> None:
    param = next(p for r in RULES.routes for p in r.path_params if p.pattern is not None)
    anchored = re.compile(_expected_scalar(param)["pattern"])
    for text in ("builderman", "a_b", "a-b", "ab\n", "x y"):
        assert bool(anchored.search(text) and "\n" not in text) == bool(
            param.pattern and param.pattern.fullmatch(text)
        )


JSON_ROUTES = [r for r in RULES.routes if r.redirect is None]


def _media(route: Any, spec: dict[str, Any] = SPEC) -> dict[str, Any]:
    op = spec["paths"][route.endpoint][route.method.lower()]
    return dict(op["responses"]["200"]["content"]["application/json"])


def _page(route: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """The page of a walkable route's ``anyOf [page, whole list]``, else the schema."""
    return schema["anyOf"][0] if walkable(route) else schema


def _typed(schema: dict[str, Any]) -> None:
    """Every member (and item) down the tree has a type, or is a value only ever null."""
    if "anyOf" in schema:
        for s in schema["anyOf"]:
            _typed(s)
        return
    if "$ref" in schema or not schema:
        return
    assert "type" in schema, schema
    for member in schema.get("properties", {}).values():
        _typed(member)
    if "items" in schema:
        _typed(schema["items"])


def test_list_routes_answer_the_envelope_with_their_items() -> None:
    envelope = _resolve({"$ref": "#/components/schemas/ListPage"})
    assert envelope["required"] == ["data", "next_cursor", "previous_cursor"]
    for route in JSON_ROUTES:
        schema = _media(route)["schema"]
        if walkable(route):  # the page, or with ?all=true the whole list
            page, whole = schema["anyOf"]
            assert whole["required"] == ["data", "next_cursor", "previous_cursor", "_end"]
            assert whole["properties"]["data"]["items"] == page["properties"]["data"]["items"]
        elif route.plan.pagination is not None or route.plan.shape == "list":
            page = schema
        else:
            continue
        assert page["required"] == envelope["required"], route.id
        assert page["additionalProperties"] is False
        items = page["properties"]["data"]["items"]
        assert items["type"] == "object" and items["properties"], route.id  # members known


@pytest.mark.parametrize("route", JSON_ROUTES, ids=lambda r: r.id)
def test_every_clean_route_has_typed_members_and_an_example_that_fits(route: Any) -> None:
    media = _media(route)
    schema = _page(route, media["schema"])
    if "anyOf" in schema:  # a picked part: the object, or null when it is missing
        schema, null = schema["anyOf"]
        assert null == {"type": "null"}
    members = schema["properties"]
    if set(members) == {"data", "next_cursor", "previous_cursor"}:
        members = members["data"]["items"]["properties"]
    assert members and all(isinstance(m, dict) for m in members.values()), route.id
    _typed(media["schema"])
    assert "example" in media, route.id
    assert not _check(media["schema"], media["example"]), route.id
    if route.example is not None:  # the rule's own example is the one shown
        assert media["example"] == json.loads(json.dumps(route.example, default=str))


def test_member_types_come_from_the_samples() -> None:
    user = _media(RULES.by_id("users.get"))["schema"]
    assert user["properties"]["id"] == {"type": "integer"}
    assert user["properties"]["has_verified_badge"] == {"type": "boolean"}
    assert user["properties"]["name"] == {"type": "string"}
    assert user["properties"]["external_app_display_name"] == {}  # only ever null: any
    assert {"id", "name", "display_name"} <= set(user["required"])
    assert not _check(user, {"id": 1, "name": "a", "display_name": "a", "description": "",
                             "created": "x", "is_banned": False, "has_verified_badge": True,
                             "external_app_display_name": "b", "new_field": [1]})  # fmt: skip
    assert _check(user, {**_media(RULES.by_id("users.get"))["example"], "id": "1"})
    group = _media(RULES.by_id("groups.get"))["schema"]
    assert group["properties"]["owner"]["type"] == ["object", "null"]  # a synthetic group's
    heads = _media(RULES.by_id("thumbnails.user_headshots"))["schema"]
    item = heads["properties"]["data"]["items"]
    assert item["properties"]["image_url"] == {"type": ["string", "null"]}  # pending: null
    by_name = _media(RULES.by_id("users.by_username"))["schema"]
    assert by_name["type"] == "object" and "anyOf" not in by_name  # empty: not_found


def test_every_operation_has_examples_that_fit() -> None:
    spec = build_openapi(RULES, access_key_header="X-Key", passthrough_services=["users"])
    validate(spec)
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "parameters" or op.get("x-bloxproxy-passthrough"):
                continue
            where = f"{method.upper()} {path}"
            contents = [
                media
                for response in op["responses"].values()
                for media in _resolve(response, spec).get("content", {}).values()
            ]
            if "requestBody" in op:
                contents += list(op["requestBody"]["content"].values())
            fit = [m for m in contents if "example" in m]
            if "302" in op["responses"]:  # an image route: no body, the image's URL
                fit = [op["responses"]["302"]["headers"]["Location"]]
            assert fit, where
            for media in fit:
                assert not _check(media["schema"], media["example"], spec), where


def test_admin_purge_is_described() -> None:
    op = SPEC["paths"]["/_bloxproxy/admin/purge"]["post"]
    assert op["security"] == [{"adminToken": []}]
    assert SPEC["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"
    assert {"200", "400", "401", "404", "429"} == set(op["responses"])
    body = op["requestBody"]["content"]["application/json"]["schema"]
    for good in ({"url": "/v1/users/1"}, {"key": "k"}, {"route": "users.get"},
                 {"prefix": "GET users/"}, {"all": True}):  # fmt: skip
        assert not _check(body, good), good
    for bad in ({}, {"url": "/x", "key": "k"}, {"all": False}, {"url": ""}, {"nope": 1}, []):
        assert _check(body, bad), bad
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert not _check(ok, {"purged": 0, "scope": "all", "target": True})
    assert _check(ok, {"purged": -1, "scope": "all", "target": True})


def test_image_routes_answer_a_redirect() -> None:
    op = SPEC["paths"]["/v1/users/{user_id}/avatar-headshot.png"]["get"]
    assert "200" not in op["responses"]
    location = op["responses"]["302"]["headers"]["Location"]
    assert location["example"].startswith("https://") and "AvatarHeadshot" in location["example"]
    for route in RULES.routes:  # every image route's example: the fake's image URL
        if route.redirect is not None:
            op = SPEC["paths"][route.endpoint]["get"]
            example = op["responses"]["302"]["headers"]["Location"]["example"]
            assert not _check({"type": "string", "format": "uri"}, example), route.id
    assert op["responses"]["404"] == {"$ref": "#/components/responses/NotFound"}


ENVELOPE = {"$ref": "#/components/schemas/ListPage"}


def test_whole_lists_are_described_on_every_walkable_route() -> None:
    walkable_routes = [r for r in RULES.routes if walkable(r)]
    assert {r.id for r in walkable_routes} >= {"groups.members", "badges.of_universe"}
    for route in walkable_routes:
        op = SPEC["paths"][route.endpoint]["get"]
        (param,) = [p for p in op["parameters"] if p["name"] == "all"]
        assert param["in"] == "query" and param["schema"] == {"type": "boolean", "default": False}
        assert op["responses"]["200"]["content"]["application/x-ndjson"] == {
            "schema": {"$ref": "#/components/schemas/WalkLine"}
        }
    end = {"done": True, "complete": False, "capped": True, "timed_out": False, "count": 2,
           "pages": 1, "next_cursor": "abc", "skip": 0}  # fmt: skip
    assert not _check(WHOLE, {"data": [{}, {}], "next_cursor": "abc", "previous_cursor": None,
                              "_end": end})  # fmt: skip
    line = {"$ref": "#/components/schemas/WalkLine"}
    assert not _check(line, {"_end": end}) and not _check(line, {"user": {"user_id": 1}})
    problem = orjson.loads(problem_body(HTTPProblem(503, "x"), instance="/v1/x", request_id="r"))
    failed = end | {"done": False, "error": problem}
    assert not _check(line, {"_end": failed})
    assert _check(line, {"_end": end | {"count": -1}}) and _check(WHOLE, {"data": []})


WHOLE = {"$ref": "#/components/schemas/WholeList"}


@pytest.mark.parametrize(
    ("plan", "schema"),
    [
        (Plan(), {"type": "object"}),  # the whole body
        (Plan(pagination=Pagination()), ENVELOPE),
        (Plan(pick=("data",), shape="list"), ENVELOPE),  # a missing part is an empty list
        (Plan(pick=("data", 0), empty_is_404=True), {"type": "object"}),
        (Plan(pick=("data", 0)), {"anyOf": [{"type": "object"}, {"type": "null"}]}),
        (Plan(pick=("data",)), {"anyOf": [ENVELOPE, {"type": "null"}]}),  # auto: a key's list
        (Plan(pick=("user",), shape="object"), {"anyOf": [{"type": "object"}, {"type": "null"}]}),
        (Plan(order_by=OrderBy(("id",))), ENVELOPE),
    ],
)
def test_body_schema_follows_the_plan(plan: Plan, schema: dict[str, Any]) -> None:
    assert body_schema(plan) == schema


_ID = {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}
_PAGE = {"data": [{"id": 1}], "next_cursor": None, "previous_cursor": None}


@pytest.mark.parametrize(
    ("plan", "bodies", "schema"),
    [
        (Plan(), [{"id": 1}], _ID),
        (Plan(pick=("data", 0)), [{"id": 1}], {"anyOf": [_ID, {"type": "null"}]}),
        (Plan(pagination=Pagination()), [_PAGE], envelope_schema(_ID)),
        (Plan(pick=("data",), shape="list"), [_PAGE, None], envelope_schema(_ID)),
        (Plan(pick=("data",)), [_PAGE], {"anyOf": [envelope_schema(_ID), {"type": "null"}]}),
        # an empty page tells nothing of its items: the envelope of any items
        (Plan(pagination=Pagination()), [{**_PAGE, "data": []}], ENVELOPE),
    ],
)
def test_body_schema_has_the_samples_members(
    plan: Plan, bodies: list[Any], schema: dict[str, Any]
) -> None:
    assert body_schema(plan, bodies) == schema
    assert all(not _check(schema, b) for b in bodies if b is not None or "anyOf" in schema)


def test_errors_are_problems_and_cover_what_the_proxy_answers() -> None:
    problem = SPEC["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {
        "type",
        "title",
        "status",
        "detail",
        "instance",
        "code",
        "request_id",
    }
    for route in RULES.routes:
        responses = SPEC["paths"][route.endpoint]["get"]["responses"]
        ok = {"302"} if route.redirect is not None else {"200", "304"}
        assert ok | {"400", "404", "405", "429", "4XX", "502", "503", "504"} <= set(responses)
        # no access keys configured: only an Open Cloud route answers 401 (no API key)
        assert ("401" in responses) == (route.backend.credentials == "api_key")
        for status in ("400", "404", "405", "429", "4XX", "502", "503", "504"):
            media = _resolve(responses[status])["content"]["application/problem+json"]
            assert media["schema"] == {"$ref": "#/components/schemas/Problem"}
            assert not _check(media["schema"], media["example"]), status
        headers = responses[min(ok)]["headers"]
        assert {"X-Cache", "Age", "ETag", "Cache-Control", "Cache-Status", "X-Request-ID"} <= set(
            headers
        )
        assert _resolve(headers["X-Cache"])["schema"]["enum"] == [
            "HIT",
            "MISS",
            "STALE",
            "BYPASS",
            "COALESCED",
        ]


def test_access_key_scheme_only_when_keys_are_set() -> None:
    assert set(SPEC["components"]["securitySchemes"]) == {"adminToken"}  # purge's, always
    assert "security" not in SPEC
    keyed = build_openapi(RULES, access_key_header="X-Key")
    assert keyed["components"]["securitySchemes"]["accessKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-Key",
        "description": keyed["components"]["securitySchemes"]["accessKey"]["description"],
    }
    assert keyed["security"] == [{"accessKey": []}]
    assert keyed["paths"]["/_bloxproxy/healthz"]["get"]["security"] == []  # exempt
    assert "401" not in keyed["paths"]["/_bloxproxy/healthz"]["get"]["responses"]
    # readyz: its bare status without a key, its checks with one; metrics: a key (ops.py)
    readyz, metrics = (keyed["paths"][f"/_bloxproxy/{p}"]["get"] for p in ("readyz", "metrics"))
    assert readyz["security"] == [{}, {"accessKey": []}] and "401" in readyz["responses"]
    assert metrics["security"] == [{"accessKey": []}] and "401" in metrics["responses"]
    assert keyed["paths"]["/_bloxproxy/docs"]["get"]["security"] == []
    assert "401" in keyed["paths"]["/v1/users/{user_id}"]["get"]["responses"]
    assert "401" in keyed["paths"]["/openapi.json"]["get"]["responses"]


def test_passthrough_and_proxy_endpoints() -> None:
    spec = build_openapi(RULES, passthrough_services=["users", "games"])
    item = spec["paths"]["/{service}/{path}"]
    assert {"get", "head", "post", "put", "patch", "delete"} <= set(item)
    assert all(
        item[m]["tags"] == [PASSTHROUGH_TAG] and item[m]["x-bloxproxy-passthrough"]
        for m in ("get", "post")
    )
    assert item["parameters"][0]["schema"]["enum"] == ["games", "users"]
    assert "slashes" in item["parameters"][1]["description"]
    for path in (
        "/_bloxproxy/healthz",
        "/_bloxproxy/readyz",
        "/_bloxproxy/metrics",
        "/openapi.json",
        "/docs",
        "/_bloxproxy/openapi.json",
        "/_bloxproxy/docs",
    ):
        assert "get" in spec["paths"][path]
    assert "post" in spec["paths"]["/_bloxproxy/admin/purge"]


def test_body_template_and_upstream_extension() -> None:
    op = SPEC["paths"]["/v1/users"]["get"]
    assert op["x-bloxproxy-upstream"]["body"] == {
        "userIds": "{ids}",
        "excludeBannedUsers": "{exclude_banned}",
    }
    assert "Upstream: `POST users /v1/users`." in op["description"]
    thumbs = SPEC["paths"]["/v1/thumbnails/users/headshots"]["get"]["x-bloxproxy-cache"]
    assert thumbs["when"] == [
        {"path": "data[*].state", "in": ["Pending"], "ttl": 5.0, "repoll": 3},
        {"path": "data[*].state", "in": ["TemporarilyUnavailable"], "ttl": 10.0, "repoll": 1},
        {"path": "data[*].state", "in": ["InReview", "Error"], "ttl": 60.0},
    ]


# -- the docs page --------------------------------------------------------------------


def test_docs_page_is_self_contained_and_lists_every_route() -> None:
    page = render_docs(SPEC)
    lowered = page.lower()
    for asset in ("<script src", "<link", "@import", "url(", "<img", "<iframe", "src="):
        assert asset not in lowered
    assert not re.search(r"""(href|src)\s*=\s*["']?\s*(https?:)?//""", lowered)
    assert set(re.findall(r'href="([^"]*)"', page)) <= {"openapi.json"} | {
        f"#{a}" for a in re.findall(r'id="([^"]*)"', page)
    }
    for route in RULES.routes:
        assert f"<code>{route.endpoint}</code>" in page and route.id in page
    assert "POST users /v1/usernames/users" in page  # the upstream request
    assert "Example 302 <code>Location</code>: <code>https://tr.rbxcdn.com/" in page
    assert "TTL 10m" in page and "stale-if-error 1h" in page
    assert "application/problem+json" in page and "invalid_params" in page


def test_docs_page_escapes_rule_text(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text(
        "service: users\nroutes:\n  - endpoint: /v1/x/{a}\n"
        "    summary: '<script>alert(1)</script>'\n"
        "    description: 'a \"quote\" & <b>tag</b>'\n"
        "    params: {a: {type: string, pattern: '[<>\"]+', description: '<i>x</i>',"
        " example: '<\">'}}\n"
        "    backend: {path: '/v1/x/{a}'}\n"
        "    example: {k: '</pre><script>'}\n"
    )
    page = render_docs(build_openapi(load_rules([tmp_path])))
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    assert "<b>tag" not in page and "<i>x" not in page and "</pre><script>" not in page
    assert page.count("<script>") == 1  # the page's own filter script
    assert 'name="a" data-in="path" required value="&lt;&quot;&gt;"' in page  # try it


class _Forms(HTMLParser):
    """The "try it" forms of a docs page: (method, path, auth) -> their fields by name."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: dict[tuple[str, str, str], dict[str, dict[str, str]]] = {}
        self.ids: dict[str, dict[str, str]] = {}
        self._form: dict[str, dict[str, str]] | None = None
        self._field: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids[a["id"]] = a
        if tag == "form" and a.get("class") == "try":
            key = (a["data-method"], a["data-path"], a["data-auth"])
            assert key not in self.forms, key
            self._form = self.forms[key] = {}
        elif self._form is not None and tag in ("input", "select", "textarea", "button"):
            self._field = self._form[a.get("name", tag)] = a | {"tag": tag}
        elif self._field is not None and tag == "option" and "selected" in a:
            self._field["value"] = a["value"]

    def handle_data(self, data: str) -> None:
        if self._field is not None and self._field["tag"] == "textarea":
            self._field["value"] = data

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        if tag in ("select", "textarea"):
            self._field = None


def _forms(spec: dict[str, Any]) -> _Forms:
    parser = _Forms()
    parser.feed(render_docs(spec))
    return parser


def test_docs_page_has_a_try_it_form_per_operation() -> None:
    spec = build_openapi(RULES, access_key_header="X-Key", passthrough_services=["users"])
    page = _forms(spec)
    assert page.ids["try-key"]["data-header"] == "X-Key" and "try-admin" in page.ids
    count = 0
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "parameters" or (op.get("x-bloxproxy-passthrough") and method != "get"):
                continue
            count += 1
            auth = "admin" if path.endswith("/purge") else "" if op.get("security") == [] else "key"
            if path in ("/_bloxproxy/readyz", "/_bloxproxy/metrics"):
                assert auth == "key"  # the access key when one is given
            fields = page.forms[(method.upper(), path, auth)]
            assert fields["button"]["type"] == "submit"
            for p in op.get("parameters") or item.get("parameters", []):
                field = fields[p["name"]]
                assert field["data-in"] == p["in"]
                assert ("required" in field) == p["required"], (path, p["name"])
                example = p.get("example", p["schema"].get("default"))
                if isinstance(example, list):
                    example = ",".join(map(str, example))
                elif isinstance(example, bool):
                    example = str(example).lower()
                assert field.get("value", "") == ("" if example is None else str(example))
                choices = p["schema"].get("enum") or (
                    [True, False] if p["schema"].get("type") == "boolean" else None
                )
                assert (field["tag"] == "select") == bool(choices), (path, p["name"])
            if "requestBody" in op:
                body = op["requestBody"]["content"]["application/json"]["example"]
                assert fields["body"]["tag"] == "textarea"
                assert json.loads(fields["body"]["value"]) == body
    assert len(page.forms) == count
    # Unkeyed: nothing asks for an access key, the clean routes send none.
    plain = _forms(SPEC)
    assert "try-key" not in plain.ids and "try-admin" in plain.ids
    assert ("GET", "/v1/users/{user_id}", "") in plain.forms
    users = plain.forms[("GET", "/v1/users", "")]
    assert users["ids"]["value"] == "1,156" and users["exclude_banned"]["value"] == "false"


def test_docs_page_script_asks_the_proxy_it_came_from() -> None:
    page = render_docs(SPEC)
    (script,) = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert "fetch(t.url" in script and "preventDefault" in script
    assert "redirect:'manual'" in script  # an image route's 302 is not followed off-site
    assert "'Authorization']='Bearer '" in script and "k.dataset.header" in script
    assert "//" not in script.replace("'//'", "")  # no URL of anywhere else
    assert "connect-src 'self'" in CSP and "default-src 'none'" in CSP


# -- serving and the CLI --------------------------------------------------------------


async def test_served_document_equals_cli_output(
    make_proxy: ProxyFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_proxy()
    out = tmp_path / "openapi.json"
    # The CLI builds from the same config the proxy runs with.
    monkeypatch.setattr(
        cli, "load_all", lambda _path: (client.server.app[CONFIG], client.server.app[RULES_KEY])
    )
    assert cli.main(["openapi", "--output", str(out)]) == 0
    for path in ("/openapi.json", "/_bloxproxy/openapi.json"):
        resp = await client.get(path)
        assert resp.status == 200 and resp.content_type == "application/json"
        assert await resp.read() == out.read_bytes()


def test_cli_prints_the_document(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["openapi"]) == 0
    config, rules = cli.load_all(None)
    assert capsys.readouterr().out.encode() == dumps(openapi_for(config, rules))


async def test_docs_served_offline_with_csp(make_proxy: ProxyFactory) -> None:
    client = await make_proxy()
    for path in ("/docs", "/_bloxproxy/docs"):
        resp = await client.get(path)
        assert resp.status == 200 and resp.content_type == "text/html"
        assert resp.headers["Content-Security-Policy"] == CSP  # fetch() to the proxy only
        assert "/v1/users/{user_id}" in await resp.text()


async def test_a_service_named_docs_keeps_its_subpaths(make_proxy: ProxyFactory) -> None:
    client = await make_proxy(BLOXPROXY_UPSTREAM_ALLOWED_SERVICES="users,docs")
    resp = await client.get("/docs")
    assert resp.status == 200 and resp.content_type == "text/html"  # the explicit route
    resp = await client.get("/docs/v1/anything")
    assert "X-Cache" in resp.headers  # passthrough answered (the fake: unknown path)
    assert (await resp.json()) == {"errors": [{"code": 0, "message": "NotFound"}]}
    spec = await (await client.get("/openapi.json")).json()
    assert spec["paths"]["/{service}/{path}"]["parameters"][0]["schema"]["enum"] == [
        "docs",
        "users",
    ]


async def test_access_keys_guard_the_top_level_document_only(make_proxy: ProxyFactory) -> None:
    client = await make_proxy(BLOXPROXY_AUTH_KEYS="k1")
    assert (await client.get("/openapi.json")).status == 401
    resp = await client.get("/_bloxproxy/openapi.json")
    assert resp.status == 200
    spec = await resp.json()
    assert spec["components"]["securitySchemes"]["accessKey"]["name"] == "X-Bloxproxy-Key"
    resp = await client.get("/openapi.json", headers={"X-Bloxproxy-Key": "k1"})
    assert resp.status == 200 and await resp.json() == spec


async def test_document_follows_a_reload(make_proxy: ProxyFactory, tmp_path: Path) -> None:
    client = await make_proxy()
    before = await (await client.get("/openapi.json")).json()
    (tmp_path / "one.yaml").write_text((ROOT / "rules" / "presence.yaml").read_text())
    app = client.server.app
    smaller: RuleSet = load_rules([tmp_path])
    apply_reload(app, app[CONFIG], smaller)
    after = await (await client.get("/openapi.json")).json()
    assert "/v1/users/{user_id}" in before["paths"]
    assert [p for p in after["paths"] if p.startswith("/v")] == ["/v1/presence"]
    assert "/v1/presence" in await (await client.get("/docs")).text()


# -- schemathesis against the running proxy -------------------------------------------


class VirtualTime:
    """Real time plus every wait the proxy's requests made, which take no real time: a
    held Pending thumbnail asked again every second (up to 4 s) and a whole-list walk's
    pages paced by the upstream limiter happen exactly as they would, in the same order,
    but without the fuzz run waiting for them (background re-polls still really wait)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def wall(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    async def sleep(self, seconds: float) -> None:
        self.offset += max(0.0, seconds)
        await asyncio.sleep(0)


ADMIN_TOKEN = "openapi-test-admin-token"
PURGE = "POST /_bloxproxy/admin/purge"


@pytest.fixture(scope="module")
def live_proxy() -> Iterator[str]:
    """The proxy app and the fake upstream on 127.0.0.1, served by a thread of their own
    (schemathesis calls the API synchronously, with requests)."""
    loop = asyncio.new_event_loop()
    runners: list[web.AppRunner] = []
    vtime = VirtualTime()

    async def start() -> str:
        fake_app = create_fake_app()
        fake_app[FAKE_STATE].cloud.polls = 0  # Open Cloud operations done at once: no holds
        fake = web.AppRunner(fake_app, access_log=None)
        await fake.setup()
        runners.append(fake)
        await web.TCPSite(fake, "127.0.0.1", 0).start()
        fake_port = fake.addresses[0][1]
        config = config_mod.load(
            None,
            env={
                "BLOXPROXY_UPSTREAM_BASE_URL": f"http://127.0.0.1:{fake_port}/{{service}}",
                "BLOXPROXY_LOGGING_ACCESS_LOG": "false",
                # ?all=true walks are fuzzed too: a few pages each, not the fake's thousands
                # of members paced by the limiter in real time
                "BLOXPROXY_LIMITS_WALK_MAX_ITEMS": "200",
                # the admin purge is fuzzed (and called by the generated client) with the
                # token; the fuzzer's calls without it must not throttle the address
                "BLOXPROXY_SERVER_ADMIN_TOKEN": ADMIN_TOKEN,
                "BLOXPROXY_LIMITS_AUTH_FAILURES_RATE": "0",
            },
        )
        app = create_app(config, clock=vtime.wall, monotonic=vtime.monotonic, sleep=vtime.sleep)
        proxy = await start_runner(app, config)  # as `bloxproxy serve` does
        runners.insert(0, proxy)
        await web.TCPSite(proxy, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{proxy.addresses[0][1]}"

    async def stop() -> None:
        for runner in runners:
            await runner.cleanup()

    thread = threading.Thread(target=loop.run_forever, name="live-proxy", daemon=True)
    thread.start()
    try:
        yield asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


fuzzed = schemathesis.openapi.from_dict(SPEC).exclude(tag=PASSTHROUGH_TAG)

# Known proxy bugs, each reproduced by a strict xfail test below: the fuzz run skips only
# the one check (or the inputs) that bug trips, and keeps every other check. (None open.)
KNOWN_BUGS: dict[str, tuple[CheckFunction, str]] = {}
# Request lines over serve.MAX_LINE get a 400 problem before any handler runs (see
# test_overlong_url_is_answered_as_a_problem): the documented limit, not a conformance case.
MAX_REQUEST_TARGET = MAX_LINE - len("GET  HTTP/1.1")


def _request_target(case: schemathesis.Case) -> str:
    """The request target (path and query) as it goes on the wire."""
    kwargs = case.as_transport_kwargs(base_url="http://h")
    params = kwargs.get("params") or {}
    query = params if isinstance(params, str) else urlencode(params, doseq=True)
    return str(kwargs["url"])[len("http://h") :] + (f"?{query}" if query else "")


def _has_duplicates(value: Any) -> bool:
    # Lists reach the case as a list, or already joined by commas (style: form).
    items = value.split(",") if isinstance(value, str) else value
    return isinstance(items, list) and len(items) != len({repr(x) for x in items})


@fuzzed.parametrize()
@settings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_proxy_conforms_to_its_document(case: schemathesis.Case, live_proxy: str) -> None:
    if len(_request_target(case)) > MAX_REQUEST_TARGET:
        return  # the known request-line limit, above
    excluded: list[CheckFunction] = []
    if case.query and "cursor" in case.query:
        # A cursor is Roblox's opaque token: any string fits the schema, and Roblox answers
        # 400 (passed on, documented) to one it did not issue.
        excluded.append(positive_data_acceptance)
    if any(_has_duplicates(v) for v in (case.query or {}).values()):
        # Lists drop duplicates before max_items counts them (documented on the parameter);
        # JSON Schema cannot count distinct items, so 101 copies of one id is "too many".
        excluded.append(negative_data_rejection)
    if case.operation.label in KNOWN_BUGS:
        excluded.append(KNOWN_BUGS[case.operation.label][0])
    headers = {}
    if case.operation.label == PURGE:
        headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        # A well-formed purge of a URL or route id that matches nothing is a 404 problem
        # (documented): "valid" bodies are not all "found" ones.
        excluded.append(positive_data_acceptance)
    case.call_and_validate(
        base_url=live_proxy, headers=headers, timeout=10, excluded_checks=excluded
    )


# -- real answers and a generated client against the running proxy -------------------


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=10
        ) as resp:
            return resp.status, resp.headers.get_content_type(), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get_content_type(), exc.read()


@pytest.fixture(scope="module")
def served_spec(live_proxy: str) -> dict[str, Any]:
    status, _, body = _get(live_proxy + "/openapi.json")
    assert status == 200
    spec: dict[str, Any] = orjson.loads(body)
    return spec


def _example_url(route: Any) -> str:
    """The route's URL with its parameters' examples (the ones the samples use)."""
    path = route.endpoint
    for p in route.path_params:
        path = path.replace("{" + p.name + "}", str(p.example))
    query = {
        p.name: ",".join(map(str, p.example)) if p.is_list else str(p.example)
        for p in route.query_params
        if p.example is not None
    }
    return path + (f"?{urlencode(query, safe=',')}" if query else "")


@pytest.mark.parametrize("route", JSON_ROUTES, ids=lambda r: r.id)
def test_real_answers_fit_the_served_schemas(
    route: Any, live_proxy: str, served_spec: dict[str, Any]
) -> None:
    """Each route asked through the proxy in front of the fake: its 200 fits the schema
    of the document the proxy serves (which must hold members, not a bare object)."""
    media = _media(route, served_spec)
    assert media["schema"] != {"type": "object"}
    # an Open Cloud route with the caller's own key (the fake takes any key it was not told of)
    key = {"x-api-key": "a-key"} if route.backend.credentials == "api_key" else None
    status, ctype, body = _get(live_proxy + _example_url(route), key)
    assert (status, ctype) == (200, "application/json"), body[:300]
    assert not _check(media["schema"], orjson.loads(body), served_spec), route.id


def test_a_generated_client_calls_the_proxy(
    live_proxy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """openapi-python-client makes a typed client of the served document; three clean
    routes and the admin purge are called through it, and their answers are its models."""
    status, _, body = _get(live_proxy + "/openapi.json")
    assert status == 200
    (tmp_path / "openapi.json").write_bytes(body)
    (tmp_path / "config.yaml").write_text(
        "package_name_override: bloxproxy_client\npost_hooks: []\n"  # no ruff run: faster
    )
    generator = Path(sys.executable).parent / "openapi-python-client"
    assert generator.exists(), "openapi-python-client is in the dev extra: scripts/bootstrap dev"
    done = subprocess.run(
        [str(generator), "generate", "--path", "openapi.json", "--config", "config.yaml",
         "--meta", "none", "--output-path", "bloxproxy_client"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # Every operation but passthrough's (any body, any media type) is generated.
    said = (done.stdout + done.stderr).splitlines()
    warned = [line for line in said if "WARNING" in line]
    assert warned and all("/{service}/{path} within passthrough" in w for w in warned)
    spec = orjson.loads(body)
    wanted = {
        op["operationId"].replace(".", "_")
        for item in spec["paths"].values()
        for op in item.values()
        if "operationId" in op and not op.get("x-bloxproxy-passthrough")
    }
    assert wanted <= {p.stem for p in (tmp_path / "bloxproxy_client" / "api").glob("*/*.py")}
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("bloxproxy_client")]:
        monkeypatch.delitem(sys.modules, name)
    api = importlib.import_module("bloxproxy_client")
    users_get = importlib.import_module("bloxproxy_client.api.users.users_get")
    users_batch = importlib.import_module("bloxproxy_client.api.users.users_batch")
    members = importlib.import_module("bloxproxy_client.api.groups.groups_members")
    purge = importlib.import_module("bloxproxy_client.api.proxy.proxy_admin_purge")
    models = importlib.import_module("bloxproxy_client.models")

    with api.Client(base_url=live_proxy, timeout=10.0) as client:
        user = users_get.sync(client=client, user_id=156)
        assert isinstance(user, models.UsersGetResponse200)
        assert (user.id, user.name, user.has_verified_badge) == (156, "builderman", True)
        assert isinstance(user.created, str) and isinstance(user.is_banned, bool)

        missing = users_get.sync(client=client, user_id=4)  # the fake's unknown user
        assert isinstance(missing, models.Problem)
        assert (missing.status, missing.code) == (404, "upstream_error")  # Roblox said so

        batch = users_batch.sync(client=client, ids=[156, 1])
        assert isinstance(batch, models.UsersBatchResponse200)
        assert [u.id for u in batch.data] == [156, 1]  # the order asked for
        assert all(isinstance(u, models.UsersBatchResponse200DataItem) for u in batch.data)
        assert batch.next_cursor is None

        page = members.sync(client=client, group_id=7, limit=models.GroupsMembersLimit.VALUE_10)
        assert isinstance(page, models.GroupsMembersResponse200Type0)
        assert len(page.data) == 10 and isinstance(page.next_cursor, str)
        first = page.data[0]
        assert isinstance(first.user.user_id, int) and isinstance(first.role.name, str)

    with api.AuthenticatedClient(base_url=live_proxy, token=ADMIN_TOKEN) as admin:
        by_url = models.ProxyAdminPurgePurgeByUrl(url="/v1/users/156")
        purged = purge.sync(client=admin, body=by_url)
        assert isinstance(purged, models.ProxyAdminPurgeResponse200)
        assert purged.purged == 1  # users.get above filled it
        assert purged.scope == models.ProxyAdminPurgeResponse200Scope.URL
    with api.AuthenticatedClient(base_url=live_proxy, token="wrong") as wrong:
        refused = purge.sync(client=wrong, body=models.ProxyAdminPurgePurgeByAll(all_=True))
        assert isinstance(refused, models.Problem) and refused.status == 401


# -- proxy bugs the schemathesis run found --------------------------------------------


def test_overlong_url_is_answered_as_a_problem(live_proxy: str) -> None:
    """Past the 16 KiB request-line limit the server itself answers: still problem+json."""
    host, port = live_proxy.removeprefix("http://").split(":")
    target = "/v1/users/search?keyword=builderman&cursor=" + "%C3%A9" * 4096
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n")[0]
    assert b"content-type: application/problem+json" in head.lower()
    assert b"x-request-id:" in head.lower()
    assert json.loads(body)["status"] == 400
    assert b"\xc3\xa9" not in body and b"%C3%A9" not in body  # the request is not echoed


async def test_username_history_of_an_unknown_user_is_404(make_proxy: ProxyFactory) -> None:
    client = await make_proxy()
    resp = await client.get("/v1/users/150265172221549792/username-history")
    assert resp.status == 404


async def test_docs_endpoints_answer_405_to_other_methods(make_proxy: ProxyFactory) -> None:
    client = await make_proxy()
    for path in ("/openapi.json", "/docs", "/_bloxproxy/openapi.json", "/_bloxproxy/docs"):
        resp = await client.post(path)
        assert resp.status == 405 and resp.headers["Allow"] == "GET, HEAD"
        assert resp.content_type == "application/problem+json"
        assert (await client.head(path)).status == 200


async def test_reserved_endpoints_answer_405_to_other_methods(make_proxy: ProxyFactory) -> None:
    client = await make_proxy()
    for path in ("/_bloxproxy/healthz", "/_bloxproxy/readyz", "/_bloxproxy/metrics"):
        resp = await client.post(path)
        assert resp.status == 405 and "GET" in resp.headers["Allow"]
