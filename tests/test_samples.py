"""Sample answers per route (the fake, in-process) and the schemas inferred from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from bloxproxy.rules import load_rules
from bloxproxy.samples import (
    PROBE_IDS,
    example_values,
    infer,
    item_schema,
    redirect_sample,
    sample,
    samples,
)

ROOT = Path(__file__).resolve().parent.parent
RULES = load_rules([ROOT / "rules"])


@pytest.mark.parametrize(
    ("values", "schema"),
    [
        ([1, 2], {"type": "integer"}),
        ([1, 2.5], {"type": "number"}),  # an integer is a number too
        ([True], {"type": "boolean"}),  # not an integer, though Python says so
        (["a", None], {"type": ["string", "null"]}),
        ([None], {}),  # only ever null: nothing known
        ([[]], {"type": "array", "items": {}}),
        ([[1], ["a"]], {"type": "array", "items": {"type": ["string", "integer"]}}),
        (
            [{"a": 1, "b": "x"}, {"a": 2}],
            {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
                "required": ["a"],  # only what every sample has
            },
        ),
        (
            [{"o": {"id": 1}}, {"o": None}],
            {
                "type": "object",
                "properties": {
                    "o": {
                        "type": ["object", "null"],
                        "properties": {"id": {"type": "integer"}},
                        "required": ["id"],
                    }
                },
                "required": ["o"],
            },
        ),
        ([{}], {"type": "object", "properties": {}}),
    ],
)
def test_infer(values: list[Any], schema: dict[str, Any]) -> None:
    assert infer(values) == schema
    validator = Draft202012Validator(schema)
    assert all(validator.is_valid(v) for v in values)


def test_inferred_schemas_refuse_other_types() -> None:
    schema = infer([{"id": 1, "name": "x", "tags": ["a"]}])
    validator = Draft202012Validator(schema)
    assert validator.is_valid({"id": 2, "name": "y", "tags": [], "new": 1})  # open members
    for bad in ({"id": "1", "name": "x", "tags": []}, {"name": "x", "tags": []},
                {"id": 1, "name": "x", "tags": [1]}, [], None):  # fmt: skip
        assert not validator.is_valid(bad), bad


def test_infer_refuses_what_is_not_json() -> None:
    with pytest.raises(TypeError, match="not JSON data"):
        infer([object()])


def test_item_schema_tells_objects_from_envelopes() -> None:
    page = {"data": [{"id": 1}], "next_cursor": None, "previous_cursor": None}
    empty = {"data": [], "next_cursor": None, "previous_cursor": None}
    obj, items = item_schema([page, empty, {"count": 3}, None])
    assert obj == {"type": "object", "properties": {"count": {"type": "integer"}},
                   "required": ["count"]}  # fmt: skip
    assert items == {"type": "object", "properties": {"id": {"type": "integer"}},
                     "required": ["id"]}  # fmt: skip
    assert item_schema([empty]) == (None, None)  # no item seen: nothing known
    assert item_schema([]) == (None, None)


def _route(route_id: str) -> Any:
    route = RULES.by_id(route_id)
    assert route is not None
    return route


def test_sample_is_the_normalized_answer_to_the_examples() -> None:
    user = sample(_route("users.get"))
    assert user["id"] == 156 and user["name"] == "builderman"
    assert "has_verified_badge" in user and "hasVerifiedBadge" not in user  # normalized
    batch = sample(_route("users.batch"))
    assert [u["id"] for u in batch["data"]] == [1, 156]  # the example's order
    assert set(batch) == {"data", "next_cursor", "previous_cursor"}
    assert sample(_route("thumbnails.user_headshot_image")) is None  # an image: no body


def test_samples_probe_the_fakes_populations() -> None:
    route = _route("groups.get")
    assert example_values(route) == {"group_id": 7}
    assert example_values(route, PROBE_IDS[2]) == {"group_id": PROBE_IDS[2]}
    bodies = samples(route)
    assert bodies[0] == sample(route) and len(bodies) >= 2
    assert any(b["owner"] is None for b in bodies)  # a synthetic group has no owner


def test_no_sample_without_examples(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text(
        "service: users\nroutes:\n"
        "  - {id: x.a, endpoint: '/v1/x/{a}', params: {a: {type: int}},"
        " backend: {path: '/v1/users/{a}'}}\n"
        "  - {id: x.b, endpoint: /v1/y, backend: {path: /v1/nothing-here}}\n"
    )
    rules = load_rules([tmp_path])
    a, b = rules.by_id("x.a"), rules.by_id("x.b")
    assert a is not None and b is not None
    assert example_values(a) is None and sample(a) is None and samples(a) == []
    assert sample(b) is None  # the fake does not know the endpoint (404)


def test_an_image_routes_sample_is_its_location() -> None:
    url = redirect_sample(_route("thumbnails.group_icon_image"))
    assert url is not None and url.startswith("https://tr.rbxcdn.com/")
    assert redirect_sample(_route("users.get")) is None  # no redirect: no Location
