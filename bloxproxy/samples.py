"""Sample answers of the clean routes, and the JSON Schema of what they hold.

The OpenAPI document (:mod:`bloxproxy.openapi`) describes each clean route's 200 body by
its normalization plan (list envelope or object, nullable or not: ``openapi.body_schema``)
and by the members its answers have. Those members come from samples:

- :func:`sample`: the route asked with its parameters' examples (else defaults), answered
  in-process by the bundled fake Roblox (:func:`bloxproxy.fake.answer`: its fixtures are
  Roblox's recorded or documented sample answers, see ``docs/ROBLOX.md``), normalized by
  the route's plan exactly as a live answer is (:func:`bloxproxy.clean.render`);
- the rule's own ``example``, already in the normalized shape.

An image route (``response.redirect``) has no body: :func:`redirect_sample` is the
``Location`` the fake's answer gives it.

:func:`infer` merges sample values into one schema: a key's type is every JSON type seen
for it (``integer`` widened to ``number`` beside a float), an object's ``required`` keys
are the ones every sample has, and members stay open (``additionalProperties`` is not
set: Roblox adds fields). A value only ever seen as ``null`` has no type constraint. An
empty list's items are unconstrained. Pure: the same route always gives the same sample.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from multidict import CIMultiDict

from . import clean, normalize
from .cache.entry import Entry
from .errors import HTTPProblem
from .fake import (
    LARGE_GROUP_MIN,
    PENDING_THUMBNAIL_USER_ID,
    SYNTHETIC_GROUP_MIN,
    SYNTHETIC_MIN,
    SYNTHETIC_PLACE_OFFSET,
    SYNTHETIC_UNIVERSE_MIN,
    FakeRoblox,
    answer,
)
from .fake.common import Reply
from .params import Param
from .rules import Route

JSON = dict[str, Any]
_MISSING = object()


# Ids from each of the fake's synthetic populations (users, groups, large groups,
# universes, places) and the user whose thumbnails are pending: their answers differ from
# the fixtures' (a group without an owner, an image not made yet: ``image_url: null``),
# and every one that answers 200 is another sample.
PROBE_IDS: tuple[int, ...] = (
    PENDING_THUMBNAIL_USER_ID,
    SYNTHETIC_MIN,
    SYNTHETIC_GROUP_MIN,
    LARGE_GROUP_MIN,
    SYNTHETIC_UNIVERSE_MIN,
    SYNTHETIC_PLACE_OFFSET + SYNTHETIC_UNIVERSE_MIN,
)


def example_values(route: Route, probe: int | None = None) -> dict[str, Any] | None:
    """The route's parameters parsed from their examples (else their defaults), with
    ``probe`` instead of every integer example when given; None when a required one has
    neither, or the probe does not fit."""
    values: dict[str, Any] = {}
    for p in (*route.path_params, *route.query_params):
        raw = _raw(p)
        if probe is not None and raw is not None and p.type in ("int", "int_list"):
            raw = str(probe)
        if raw is None and (p.required or p.location == "path"):
            return None
        try:
            values[p.name] = p.parse([] if raw is None else [raw])
        except ValueError:
            return None
    return values


def _raw(p: Param) -> str | None:
    value = p.example
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return ",".join(_text(v) for v in value)
    return _text(value)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def samples(route: Route) -> list[Any]:
    """The route's normalized answers, as the fake gives them: first to its example
    parameters, then to each of :data:`PROBE_IDS` in their place. Only 200 answers count;
    none for an image route or a parameter without an example."""
    if route.redirect is not None:
        return []
    out: list[Any] = []
    for probe in (None, *PROBE_IDS):
        values = example_values(route, probe)
        if values is not None:
            body = _answer(route, values)
            if body is not _MISSING:
                out.append(body)
    return out


def sample(route: Route) -> Any:
    """The answer to the route's example parameters (None: none, see :func:`samples`)."""
    values = example_values(route)
    if route.redirect is not None or values is None:
        return None
    body = _answer(route, values)
    return None if body is _MISSING else body


def redirect_sample(route: Route) -> str | None:
    """An image route's ``Location`` for its example parameters, as the fake gives it."""
    values = example_values(route)
    if route.redirect is None or values is None:
        return None
    body = _upstream_json(route, values)
    url = normalize.get_path(body, route.redirect.url) if body is not _MISSING else None
    return url if isinstance(url, str) else None


def _upstream_json(route: Route, values: dict[str, Any]) -> Any:
    """The fake's 200 JSON answer to the route's upstream request, else ``_MISSING``."""
    reply = _reply(route, values)
    if reply is None:
        return _MISSING
    try:
        return orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        return _MISSING


_SAMPLE_KEY = "bloxproxy-openapi-samples"


def _reply(route: Route, values: dict[str, Any]) -> Reply | None:
    req = clean.upstream_request(route, values, CIMultiDict())
    try:
        reply = answer(
            FakeRoblox(),
            req.method,
            req.service,
            req.path,
            parse_qsl(req.query, keep_blank_values=True),
            req.body or b"",
            # an Open Cloud route needs a key: any the fake has not been told of has every
            # scope (a sample's answer, as a key with the route's permission gets it)
            api_key=_SAMPLE_KEY if route.backend.credentials == "api_key" else None,
        )
    except Exception:  # a sample is optional: no fake failure may break the document
        return None
    return reply if reply.status == 200 else None


def _answer(route: Route, values: dict[str, Any]) -> Any:
    """The route's normalized answer (as :func:`bloxproxy.clean.render` makes it) to the
    fake's 200, else ``_MISSING``."""
    reply = _reply(route, values)
    if reply is None:
        return _MISSING
    headers = (*(reply.headers or {}).items(), ("content-type", "application/json"))
    entry = Entry(200, tuple(headers), reply.body, 0.0, 0.0)
    requested = values.get(route.order_param) if route.order_param else None
    try:
        return orjson.loads(clean.render(route, requested, entry))
    except HTTPProblem:
        return _MISSING


# -- schemas of sample values ---------------------------------------------------------

_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),  # before int: bool is an int in Python
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
    (type(None), "null"),
)
_ORDER = ("object", "array", "string", "integer", "number", "boolean", "null")


def _kind(value: object) -> str:
    for cls, name in _TYPES:
        if isinstance(value, cls):
            return name
    raise TypeError(f"not JSON data: {type(value).__name__}")


def infer(values: list[Any]) -> JSON:
    """One JSON Schema that every value of ``values`` (JSON data) fits; see the module
    docstring for what is inferred."""
    kinds = {_kind(v) for v in values}
    if "integer" in kinds and "number" in kinds:
        kinds.discard("integer")
    if kinds <= {"null"}:
        return {}  # nothing known but that it may be null: any value
    types = [k for k in _ORDER if k in kinds]
    out: JSON = {"type": types[0] if len(types) == 1 else types}
    if "object" in kinds:
        objects = [v for v in values if isinstance(v, dict)]
        keys = list(dict.fromkeys(k for o in objects for k in o))
        out["properties"] = {k: infer([o[k] for o in objects if k in o]) for k in keys}
        required = [k for k in keys if all(k in o for o in objects)]
        if required:
            out["required"] = required
    if "array" in kinds:
        items = [item for v in values if isinstance(v, list) for item in v]
        out["items"] = infer(items) if items else {}
    return out


def item_schema(body_values: list[Any]) -> tuple[JSON | None, JSON | None]:
    """(the object schema, the list items' schema) of normalized bodies: objects are the
    bodies that are objects and not list envelopes; items come from every envelope's
    ``data``. None where no body of that kind was seen."""
    objects: list[Any] = []
    items: list[Any] = []
    for body in body_values:
        if isinstance(body, dict) and _is_envelope(body):
            items.extend(body["data"])
        elif isinstance(body, dict):
            objects.append(body)
    return (infer(objects) if objects else None, infer(items) if items else None)


def _is_envelope(body: dict[str, Any]) -> bool:
    return set(body) == {"data", "next_cursor", "previous_cursor"} and isinstance(
        body["data"], list
    )
