"""The OpenAPI 3.1 description of the clean API, generated from the rules.

:func:`build_openapi` is pure: the same rule set (and options) always gives the same
document. One path item per clean route, with typed parameters (JSON Schema types, enums,
limits, defaults, examples), a 200 body schema whose shape is decided from the route's
normalization plan and whose members and their types are inferred from sample answers
(:mod:`bloxproxy.samples`: the rule's example and the bundled fake's answers, normalized),
an example, a 304 for ``If-None-Match``, and every problem+json error the proxy can answer,
all referencing one ``Problem`` schema (RFC 9457 plus our members). Passthrough is described
as one operation per method on ``/{service}/{path}`` tagged ``passthrough`` (no body
schemas: it answers whatever Roblox answers), and the proxy's own endpoints under ``proxy``,
the admin purge among them (its ``adminToken`` bearer scheme).
Extensions carry what the docs page shows beside the schema: ``x-bloxproxy-upstream`` (the
request a route becomes) and ``x-bloxproxy-cache`` (its TTLs, in seconds). A route a
whole-list walk can take (:func:`bloxproxy.walk.walkable`) also has the ``all`` parameter,
and its 200 the NDJSON media type and the ``WholeList`` object beside the page.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import orjson

from .config import SERVICE_NAME_RE, Config
from .errors import PROBLEM_JSON, HTTPProblem, problem_body
from .normalize import Plan
from .params import INT64_MAX, INT64_MIN, Param
from .rules import INCLUDE_PARAM, MISSING_KEY, CacheCondition, Composite, Part, Route, RuleSet
from .samples import item_schema, redirect_sample, samples
from .walk import NDJSON, walkable

JSON = dict[str, Any]
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_ENVELOPE_REF = {"$ref": "#/components/schemas/ListPage"}
_WHOLE_REF = {"$ref": "#/components/schemas/WholeList"}
_WALK_LINE_REF = {"$ref": "#/components/schemas/WalkLine"}
PASSTHROUGH_TAG = "passthrough"
PROXY_TAG = "proxy"
_LIST_NOTE = (
    "Comma-separated (`{name}=1,2`); repeated keys (`{name}=1&{name}=2`) and mixes "
    "work too. Duplicates are dropped, keeping the first."
)


def version() -> str:
    """The installed package version (``0.0.0`` when running from an uninstalled tree)."""
    try:
        return metadata.version("bloxproxy")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def build_openapi(
    rules: RuleSet,
    *,
    server_url: str | None = None,
    access_key_header: str | None = None,
    passthrough_services: Sequence[str] = (),
) -> JSON:
    """The OpenAPI 3.1.0 document of ``rules`` as plain JSON data.

    ``access_key_header`` (the config's ``auth.header`` when ``auth.keys`` is set) adds an
    API-key security scheme and the 401 answers; ``passthrough_services`` lists the services
    ``/{service}/{path}`` reaches (an enum on ``service``).
    """
    keyed = access_key_header is not None
    paths: JSON = {}
    for route in sorted(rules.routes, key=lambda r: (r.endpoint, r.method)):
        paths.setdefault(route.endpoint, {})[route.method.lower()] = _operation(route, keyed)
    for c in sorted(rules.composites, key=lambda c: (c.endpoint, c.method)):
        paths.setdefault(c.endpoint, {})[c.method.lower()] = _composite_operation(c, keyed)
    paths["/{service}/{path}"] = _passthrough(passthrough_services, keyed)
    paths.update(_proxy_paths(keyed))
    tagged: list[Route | Composite] = [*rules.routes, *rules.composites]
    tag_names = dict.fromkeys(t for r in tagged for t in r.tags)
    tags = [{"name": t} for t in sorted(tag_names)]
    tags.append(
        {
            "name": PASSTHROUGH_TAG,
            "description": "Roblox services at "
            "`/{service}/{path}`, answered as Roblox answers (not part of the clean "
            "API's contract).",
        }
    )
    tags.append({"name": PROXY_TAG, "description": "The proxy's own endpoints."})
    doc: JSON = {
        "openapi": "3.1.0",
        "info": {
            "title": "bloxproxy",
            "version": version(),
            "summary": "A caching reverse proxy and protocol adapter for the Roblox web APIs.",
            "description": _INFO,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": tags,
        "paths": paths,
        "components": _components(access_key_header),
    }
    if server_url is not None:
        doc["servers"] = [{"url": server_url}]
    if keyed:
        doc["security"] = [{"accessKey": []}]
    return doc


def openapi_for(config: Config, rules: RuleSet, *, server_url: str | None = None) -> JSON:
    """:func:`build_openapi` with the options a config implies (what ``/openapi.json``,
    the docs page and ``bloxproxy openapi`` all describe)."""
    return build_openapi(
        rules,
        server_url=server_url,
        access_key_header=config.auth.header if config.auth.keyed else None,
        passthrough_services=config.upstream.allowed_services,
    )


def dumps(doc: JSON) -> bytes:
    """The canonical serialization: sorted keys, indent 2, trailing newline."""
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


_INFO = """\
The clean API of bloxproxy: stable paths defined by rule files, each one adapted to a
Roblox web API request. Answers are normalized: snake_case keys, lists as
`{data, next_cursor, previous_cursor}`, and every error as `application/problem+json`
(RFC 9457) with a stable `code` and the `request_id` also sent as `X-Request-ID`.

Successful answers carry `X-Cache` (HIT, MISS, STALE, BYPASS, COALESCED), `Cache-Status`
(RFC 9211), `Cache-Control`, and when cached `Age` and an `ETag` (send it back in
`If-None-Match` for a 304).

Passthrough (`/{service}/{path}`, tag `passthrough`) forwards to allow-listed Roblox
services and answers exactly what Roblox answered.
"""


# -- clean routes ---------------------------------------------------------------------


def _operation(route: Route, keyed: bool) -> JSON:
    b = route.backend
    upstream = f"{b.method} {b.service} {b.path.text}"
    query = "&".join(f"{k}={v}" for k, v in b.query.items)
    if query:
        upstream += "?" + query
    description = route.description.strip()
    description = (description + "\n\n" if description else "") + f"Upstream: `{upstream}`."
    # The rule's example, else the fake's answer to the example parameters: both are what
    # the 200 body's members are inferred from (samples.py).
    given, sampled = _plain(route.example), samples(route)
    bodies = [b for b in (given, *sampled) if b is not None]
    example = _shortened(bodies[0]) if bodies else None
    op: JSON = {
        "operationId": route.id,
        "summary": route.summary or f"{route.method} {route.endpoint}",
        "description": description,
        "tags": list(route.tags) or ["clean"],
        "parameters": [_parameter(p) for p in (*route.path_params, *route.query_params)],
        "responses": _responses(body_schema(route.plan, bodies), example, keyed),
        "x-bloxproxy-upstream": _upstream(route),
        "x-bloxproxy-cache": _cache(route),
    }
    if route.redirect is not None:
        op["responses"] = _redirect_responses(op["responses"], redirect_sample(route))
    if b.credentials == "api_key":
        _add_api_key(op)
    if route.hold is not None and route.hold.operation is not None:
        op["responses"] = {"202": _PENDING, **op["responses"]}
    if route.deprecated:
        op["deprecated"] = True
    if walkable(route):
        _add_walk(op)
    return op


_API_KEY_PARAMETER: JSON = {
    "name": "x-api-key",
    "in": "header",
    "required": False,
    "description": "Your own Open Cloud API key, sent to Roblox as it is. Without it, the key "
    "the proxy holds for your access key (`opencloud.keys`, `auth.clients.<name>."
    "opencloud_key`) is used; with neither, 401 `api_key_required`. Answers are private to "
    "the key they were asked with.",
    "schema": {"type": "string"},
}
_PENDING: JSON = {
    "description": "The long-running operation is still running after the proxy's wait "
    "(`response.hold.within`): ask again after `Retry-After` seconds. Never cached.",
    "headers": {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["done", "operation", "retry_after"],
                "properties": {
                    "done": {"const": False},
                    "operation": {
                        "type": ["string", "null"],
                        "description": "The operation's name (`users/156/operations/…`).",
                    },
                    "retry_after": {"type": "integer", "minimum": 1},
                },
            },
            "example": {
                "done": False,
                "operation": "users/156/operations/1000001",
                "retry_after": 1,
            },
        }
    },
}


def _add_api_key(op: JSON) -> None:
    """An Open Cloud route (``backend.credentials: api_key``): its key header, and its 401."""
    op["parameters"] = [*op["parameters"], dict(_API_KEY_PARAMETER)]
    responses = op["responses"]
    if "401" not in responses:
        op["responses"] = {**responses, "401": _ref("responses", "Unauthorized")}


def _composite_operation(c: Composite, keyed: bool) -> JSON:
    """A composite route (``compose``): its own parameters and ``include``, a 200 object
    of the parts and ``missing``, never cached whole (no ETag, no 304)."""
    names = list(c.part_names)
    parts = ", ".join(f"`{p.name}` ({p.route.id})" for p in c.parts)
    description = c.description.strip()
    description = (description + "\n\n" if description else "") + (
        f"Composite: the answers of {parts}, asked at once, each within its deadline. "
        f"A part that fails or runs out of time is listed in `{MISSING_KEY}`; without "
        f"`{c.main}` the answer is its problem (404 when not found)."
    )
    include: JSON = {
        "name": INCLUDE_PARAM,
        "in": "query",
        "required": False,
        "schema": {"type": "array", "items": {"type": "string", "enum": names}, "minItems": 1},
        "style": "form",
        "explode": False,
        "description": f"The parts to ask (`{c.main}` always is); all when left out. "
        "Comma-separated; repeated keys work too. An unknown name is a 400 listing the "
        "allowed ones.",
    }
    body: JSON = {
        "type": "object",
        "required": [c.main, MISSING_KEY],
        "additionalProperties": False,
        "properties": {
            **{p.name: _part_schema(p) for p in c.parts},
            MISSING_KEY: {"type": "array", "items": _ref("schemas", "MissingPart")},
        },
    }
    media: JSON = {"schema": body}
    if c.example is not None:
        media["example"] = _plain(c.example)
    responses: JSON = {
        "200": {
            "description": "The parts that are there, and those missing.",
            "headers": {h: _ref("headers", h) for h in ("X-Cache", "Cache-Control")},
            "content": {"application/json": media},
        }
    }
    for status, name, *_ in _PROBLEMS:
        if status != "401" or keyed:
            responses[status] = _ref("responses", name)
    op: JSON = {
        "operationId": c.id,
        "summary": c.summary or f"{c.method} {c.endpoint}",
        "description": description,
        "tags": list(c.tags) or ["clean"],
        "parameters": [
            *(_parameter(p) for p in (*c.path_params, *c.query_params)),
            include,
        ],
        "responses": responses,
        "x-bloxproxy-parts": [
            {
                "name": p.name,
                "route": p.route.id,
                "deadline": p.deadline,
                "main": p.name == c.main,
            }
            for p in c.parts
        ],
    }
    if c.deprecated:
        op["deprecated"] = True
    return op


def _part_schema(part: Part) -> JSON:
    """What a part's value can be: its route's body, the first item of its list, or the
    value ``pick`` keeps."""
    if part.pick is not None:
        return {"description": f"`{part.route.id}`'s answer at `{_path_text(part.pick)}`."}
    if part.first:
        return {"description": f"The first item of `{part.route.id}`'s list."}
    schema = body_schema(part.route.plan)
    return schema | {"description": f"`{part.route.id}`'s answer."}


def _path_text(path: tuple[str | int, ...]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out or "."


_EXAMPLE_ITEMS = 3


def _shortened(body: Any) -> Any:
    """An example list cut to its first few items (the docs page shows it whole)."""
    if isinstance(body, dict) and isinstance(body.get("data"), list):
        return body | {"data": body["data"][:_EXAMPLE_ITEMS]}
    return body


def _redirect_responses(responses: JSON, example: str | None) -> JSON:
    """An image route answers 302 to the image (``response.redirect``), not a JSON body; no
    image is its 404 problem (with the thumbnail's ``state``). ``example``: a ``Location``
    (the fake's, for the example parameters)."""
    out = {k: v for k, v in responses.items() if k not in ("200", "304")}
    headers = {h: _ref("headers", h) for h in _CACHE_HEADERS}
    location: JSON = {
        "description": "The image's URL.",
        "schema": {"type": "string", "format": "uri"},
    }
    if example is not None:
        location["example"] = example
    return {
        "302": {"description": "Found: the image.", "headers": {"Location": location, **headers}},
        **out,
    }


_WALK_PARAMETER: JSON = {
    "name": "all",
    "in": "query",
    "required": False,
    "schema": {"type": "boolean", "default": False},
    "description": "`true`: the whole list, walked page after page by the proxy (the client's "
    "`limit`, else the largest page; from `cursor` when given) and streamed as it comes: "
    "NDJSON (`application/x-ndjson`, the default), one item per line and last the trailer "
    'line `{"_end": {...}}`, or with `Accept: application/json` one `WholeList` object. At '
    "most the config's `limits.walk.max_items` items; a page failing mid-list ends it with "
    "`done: false` in the trailer.",
}


def _add_walk(op: JSON) -> None:
    """The ``all`` parameter, and a whole list's media types beside the page's."""
    op["parameters"].append(copy.deepcopy(_WALK_PARAMETER))
    content = op["responses"]["200"]["content"]
    page = content["application/json"]
    items = page["schema"].get("properties", {}).get("data", {}).get("items")
    whole: JSON = dict(_WHOLE_REF)
    if items:  # the route's items are known (samples): the whole list has them too
        whole = copy.deepcopy(_SCHEMAS["WholeList"])
        whole["properties"]["data"]["items"] = copy.deepcopy(items)
    page["schema"] = {"anyOf": [page["schema"], whole]}
    content[NDJSON] = {"schema": dict(_WALK_LINE_REF)}


def _parameter(p: Param) -> JSON:
    schema = _scalar_schema(p)
    description = p.description
    if p.is_list:
        schema = {
            "type": "array",
            "items": schema,
            "minItems": p.min_items,
            "maxItems": p.max_items,
        }
        note = _LIST_NOTE.format(name=p.name)
        description = f"{description} {note}".strip()
    if p.default is not None:
        schema["default"] = _plain(p.default)
    out: JSON = {"name": p.name, "in": p.location, "required": p.required, "schema": schema}
    if description:
        out["description"] = description
    if p.is_list:
        out["style"], out["explode"] = "form", False
    if p.example is not None:
        out["example"] = _plain(p.example)
    return out


def _scalar_schema(p: Param) -> JSON:
    s: JSON
    if p.type in ("int", "int_list"):
        # The parser refuses anything outside int64 even without min/max (params.py).
        s = {
            "type": "integer",
            "format": "int64",
            "minimum": INT64_MIN if p.min is None else p.min,
            "maximum": INT64_MAX if p.max is None else p.max,
        }
    elif p.type == "bool":
        s = {"type": "boolean"}
    else:
        s = {"type": "string", "maxLength": p.max_length}
        if p.min_length:
            s["minLength"] = p.min_length
        if p.pattern is not None:
            # Rule patterns must match the whole value (re.fullmatch).
            s["pattern"] = f"^(?:{p.pattern.pattern})$"
        elif p.type == "string_list":
            s["pattern"] = "^[^,]*$"  # items are split on commas
    if p.enum:
        s["enum"] = list(p.enum)
    return s


def body_schema(plan: Plan, bodies: Sequence[Any] = ()) -> JSON:
    """The 200 body a plan can produce (normalize.apply, step 5), with the members that
    ``bodies`` (normalized sample answers, :mod:`bloxproxy.samples`) show.

    Paginated and ``shape: list`` plans always give the list envelope; ``shape: object``,
    no ``pick`` (the whole body) or a ``pick`` ending in an index give an object; a ``pick``
    of a key (``data``, ``roles``) is taken to select Roblox's list. Without
    ``empty: not_found`` a picked part that is missing is answered as JSON ``null``. The
    envelope's items and the object's members are inferred from the samples; without any,
    the envelope is ``ListPage`` (items of any kind) and the object has no listed members.
    """
    envelope = plan.pagination is not None or plan.shape == "list"
    if not envelope and plan.pick == () and not plan.empty_is_404:
        # the whole body, which may be null (a user's primary group: none is `null`)
        whole, _ = item_schema(list(bodies))
        return {"anyOf": [whole if whole is not None else {"type": "object"}, {"type": "null"}]}
    picked_list = plan.shape == "auto" and (
        plan.order_by is not None or (plan.pick is not None and isinstance(plan.pick[-1], str))
    )
    obj, items = item_schema(list(bodies))
    schema: JSON
    if envelope or picked_list:
        schema = envelope_schema(items) if items is not None else dict(_ENVELOPE_REF)
    else:
        schema = obj if obj is not None else {"type": "object"}
    if not envelope and plan.pick is not None and not plan.empty_is_404:
        return {"anyOf": [schema, {"type": "null"}]}
    return schema


def envelope_schema(items: JSON) -> JSON:
    """``ListPage`` with its items' schema: the list envelope of one route."""
    out: JSON = copy.deepcopy(_SCHEMAS["ListPage"])
    out["properties"]["data"]["items"] = items
    return out


def _upstream(route: Route) -> JSON:
    b = route.backend
    out: JSON = {
        "service": b.service,
        "method": b.method,
        "path": b.path.text,
        "query": dict(b.query.items),
        "safe_read": b.safe_read,
        "credentials": b.credentials,
        "bucket": route.bucket,
    }
    if b.body is not None:
        # Rendering with "{name}" for every value gives the template back as written.
        names = {p.name: "{" + p.name + "}" for p in (*route.path_params, *route.query_params)}
        out["body"] = _plain(b.body(names))
    if b.headers:
        out["headers"] = dict(b.headers)
    if b.forward_headers:
        out["forward_headers"] = list(b.forward_headers)
    return out


def _cache(route: Route) -> JSON:
    c = route.cache
    if not c.enabled:
        return {"enabled": False}
    return {
        "enabled": True,
        "ttl": c.ttl,
        "stale_while_revalidate": c.stale_while_revalidate,
        "stale_if_error": c.stale_if_error,
        "not_found_ttl": c.not_found_ttl,
        "credentials": c.credentials,
        "when": [_when(w) for w in c.when],
    }


def _when(w: CacheCondition) -> JSON:
    out: JSON = {"path": w.text, "in": _plain(list(w.values)), "ttl": w.ttl}
    if w.repoll:
        out["repoll"] = w.repoll
    return out


def _plain(value: Any) -> Any:
    """Rule values as plain JSON data (YAML may hold timestamps; tuples become lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if value is None or isinstance(value, str | bool | int | float):
        return value
    return str(value)


# -- passthrough ----------------------------------------------------------------------


def _passthrough(services: Sequence[str], keyed: bool) -> JSON:
    service: JSON = {"type": "string", "pattern": SERVICE_NAME_RE.pattern}
    if services:
        service["enum"] = sorted(services)
    example = "users" if not services or "users" in services else sorted(services)[0]
    params = [
        {
            "name": "service",
            "in": "path",
            "required": True,
            "schema": service,
            "description": "An allow-listed Roblox service: `users` stands for "
            "`https://users.roblox.com`.",
            "example": example,
        },
        {
            "name": "path",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": "The rest of the Roblox URL. **May contain slashes** "
            "(`/users/v1/users/1`); `.` and `..` segments are refused (400).",
        },
    ]
    if example == "users":
        params[1]["example"] = "v1/users/1"
    item: JSON = {"parameters": params}
    any_body = {
        "content": {"*/*": {"schema": {}}},
        "required": False,
        "description": "Sent to Roblox as is.",
    }
    for method in ("get", "head", "post", "put", "patch", "delete"):
        op: JSON = {
            "operationId": f"passthrough.{method}",
            "summary": f"Passthrough {method.upper()} to a Roblox service",
            "description": "Drop-in base URL: `/{service}/{path}` is "
            "`https://{service}.roblox.com/{path}`. Status, the headers that "
            "matter and the body come back as Roblox sent them, so no schema "
            "is given. GETs are cached briefly (config `cache.passthrough_ttl`).",
            "tags": [PASSTHROUGH_TAG],
            "x-bloxproxy-passthrough": True,
            "responses": {
                "default": {
                    "description": "Whatever Roblox answered.",
                    "content": {"*/*": {"schema": {}}},
                },
                "400": {"$ref": "#/components/responses/BadRequest"},
                "404": {
                    "description": "Unknown service (`code: unknown_service`).",
                    "content": {"application/problem+json": {"schema": PROBLEM_REF}},
                },
                **({"401": {"$ref": "#/components/responses/Unauthorized"}} if keyed else {}),
            },
        }
        if method in ("post", "put", "patch"):
            op["requestBody"] = any_body
        item[method] = op
    return item


# -- responses and components ---------------------------------------------------------


def _ref(kind: str, name: str) -> JSON:
    return {"$ref": f"#/components/{kind}/{name}"}


# name, description, always sent; every value is a string except where _HEADER_SCHEMAS says
_HEADER_TABLE = (
    ("X-Cache", "What the cache did.", True),
    ("Cache-Status", "RFC 9211 cache status.", True),
    ("Cache-Control", "How long clients and shared caches may keep the answer.", True),
    ("Age", "Seconds since the answer was fetched (cached answers only).", False),
    ("ETag", "Body validator (cached answers only); send it in `If-None-Match`.", False),
    ("X-Request-ID", "The request id, also in problem bodies and the access log.", True),
    ("RateLimit", "Client limit state (when `limits.clients` is set).", False),
    ("RateLimit-Policy", "Client limit policy (when `limits.clients` is set).", False),
    ("Retry-After", "Seconds to wait before trying again.", False),
    ("Allow", "The methods this path answers.", True),
)
_HEADER_SCHEMAS: dict[str, JSON] = {
    "X-Cache": {"type": "string", "enum": ["HIT", "MISS", "STALE", "BYPASS", "COALESCED"]},
    "Age": {"type": "integer", "minimum": 0},
}
_HEADERS: JSON = {
    name: {"description": text, "required": always,
           "schema": _HEADER_SCHEMAS.get(name, {"type": "string"})}
    for name, text, always in _HEADER_TABLE
}  # fmt: skip
_CACHE_HEADERS = tuple(name for name, *_ in _HEADER_TABLE[:8])

# status, component, description, codes (the first is the example's), extra headers
_PROBLEMS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("400", "BadRequest", "Invalid parameters (`invalid_params` lists each), or Roblox's 400.",
     "invalid_request, upstream_error", ()),
    ("401", "Unauthorized", "Missing or unknown access key; on an Open Cloud route, no API key "
     "(`api_key_required`) or one Roblox refused.", "unauthorized, api_key_required, "
     "upstream_error", ()),
    ("404", "NotFound", "No such route, nothing found, or Roblox said it does not exist.",
     "not_found, no_route, upstream_error", ()),
    ("405", "MethodNotAllowed", "Another method than the path answers.", "method_not_allowed",
     ("Allow",)),
    ("429", "TooManyRequests", "The client limit is used up, or Roblox's 429 (passed on).",
     "rate_limited, upstream_error", ("Retry-After",)),
    ("4XX", "UpstreamClientError", "Another client error of Roblox's, passed on "
     "(`upstream_status`, Roblox's `errors`).", "upstream_error", ("Retry-After",)),
    ("502", "BadGateway", "Roblox failed, could not be reached, or answered something "
     "unusable.", "upstream_bad_response, upstream_error, upstream_unreachable, "
     "upstream_too_large, main_part_missing", ()),
    ("503", "ServiceUnavailable", "Roblox is unavailable, or the proxy holds calls to it back "
     "(paused after a 429, circuit open, queue full).",
     "circuit_open, upstream_paused, upstream_busy, upstream_error, main_part_missing",
     ("Retry-After",)),
    ("504", "GatewayTimeout", "Roblox did not answer in time.",
     "upstream_timeout, upstream_error, main_part_missing", ()),
)  # fmt: skip
_INVALID = {"name": "user_id", "in": "path", "reason": "must be at least 1, got 0"}
_EXAMPLE_DETAIL: dict[str, tuple[str, JSON]] = {
    "400": ("invalid parameters: user_id must be at least 1, got 0",
            {"invalid_params": [_INVALID]}),
    "404": ("nothing found", {}),
    "4XX": ("users answered 403: Token Validation Failed", {"upstream_status": 403,
            "errors": [{"code": 0, "message": "Token Validation Failed"}]}),
    "502": ("users answered with invalid JSON", {}),
    "503": ("users is failing; circuit open", {"retry_after": 30}),
}  # fmt: skip


def _responses(body: JSON, example: Any, keyed: bool) -> JSON:
    media: JSON = {"schema": body}
    if example is not None:
        media["example"] = example
    out: JSON = {
        "200": {
            "description": "The normalized answer.",
            "headers": {h: _ref("headers", h) for h in _CACHE_HEADERS},
            "content": {"application/json": media},
        },
        "304": _ref("responses", "NotModified"),
    }
    for status, name, *_ in _PROBLEMS:
        if status != "401" or keyed:
            out[status] = _ref("responses", name)
    return out


def _problem_response(status: str, description: str, codes: str, headers: tuple[str, ...]) -> JSON:
    detail, extra = _EXAMPLE_DETAIL.get(status, (description, {}))
    example = HTTPProblem(
        403 if status == "4XX" else int(status), detail, code=codes.split(", ")[0], extra=extra
    )
    return {
        "description": f"{description} `code`: {codes}.",
        "headers": {h: _ref("headers", h) for h in ("X-Request-ID", *headers)},
        "content": {
            PROBLEM_JSON: {
                "schema": PROBLEM_REF,
                "example": orjson.loads(
                    problem_body(example, instance="/v1/users/0", request_id="5f0c3e1a9b7d2c41")
                ),
            }
        },
    }


def _components(access_key_header: str | None) -> JSON:
    responses: JSON = {
        name: _problem_response(status, description, codes, headers)
        for status, name, description, codes, headers in _PROBLEMS
    }
    responses["NotModified"] = {
        "description": "The `If-None-Match` ETag still matches; no body.",
        "headers": {h: _ref("headers", h) for h in _CACHE_HEADERS},
    }
    # Copies: a caller may edit the document it gets without touching these tables.
    out: JSON = {
        "schemas": copy.deepcopy(_SCHEMAS),
        "responses": responses,
        "headers": copy.deepcopy(_HEADERS),
    }
    out["securitySchemes"] = {
        "adminToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "The config's `server.admin_token`, for `/_bloxproxy/admin/*`.",
        }
    }
    if access_key_header is not None:
        out["securitySchemes"] |= {
            "accessKey": {
                "type": "apiKey",
                "in": "header",
                "name": access_key_header,
                "description": "The access key the proxy was configured with (`auth.keys`, "
                "or a named key of `auth.clients`: one bound to Roblox places needs a "
                "`Roblox-Id` header naming one of them (else 403 `wrong_place`), may be "
                "limited per game server (429 `rate_limited`), and with `answer_mode: luau` "
                "gets every answer as a 200 whose JSON body holds `ok`, `status`, `headers` "
                "and `body`).",
            }
        }
    return out


_PROBLEM_MEMBERS = (  # name, JSON type, description
    ("type", "string", "Always `about:blank`."),
    ("title", "string", "The HTTP reason phrase."),
    ("status", "integer", "The HTTP status."),
    ("detail", "string", "What went wrong, for a person."),
    ("instance", "string", "The request path."),
    ("code", "string", "A stable machine-readable slug (listed per response)."),
    ("request_id", "string", "Also sent as `X-Request-ID`."),
    ("invalid_params", "array", "Each invalid parameter: `name`, `in`, `reason`."),
    ("upstream_status", "integer", "The status Roblox answered."),
    ("errors", "array", "Roblox's `errors` list, as Roblox sent it."),
    (
        "upstream_error",
        "object",
        "Open Cloud's error (`code` such as `NOT_FOUND`, "
        "`PERMISSION_DENIED`, `RESOURCE_EXHAUSTED`; `message`), as Roblox sent it.",
    ),
    ("retry_after", "integer", "Seconds, as in `Retry-After`."),
    ("missing", "array", "A composite route without its main part: every part missing."),
    ("allowed", "array", "An unknown `include` part: the part names there are."),
)
_WALK_END_MEMBERS: tuple[tuple[str, Any, str], ...] = (  # name, JSON type, description
    ("done", "boolean", "`false`: a page failed (`error`); the items before it were sent."),
    ("complete", "boolean", "Every item of the list was sent."),
    ("capped", "boolean", "The config's `limits.walk.max_items` cut the list."),
    ("timed_out", "boolean", "The config's `limits.walk.deadline` stopped the walk."),
    ("count", "integer", "Items sent."),
    ("pages", "integer", "Pages read."),
    ("next_cursor", ["string", "null"], "Where to go on (null: from the first page, or done)."),
    ("skip", "integer", "Items at `next_cursor` sent already."),
    ("error", "problem", "Only when `done` is false: the failed page's problem."),
)
_PROBLEM_ITEMS: dict[str, JSON] = {
    "invalid_params": {"type": "object", "required": ["name", "in", "reason"], "properties": {
        "name": {"type": "string"}, "in": {"enum": ["path", "query"]},
        "reason": {"type": "string"}}},
    "missing": {"$ref": "#/components/schemas/MissingPart"},
    "allowed": {"type": "string"},
    # Only described: Roblox's items are objects like this, but they are passed on as sent.
    "errors": {"properties": {"code": {"type": "integer"}, "message": {"type": "string"},
                              "userFacingMessage": {"type": "string"}}},
}  # fmt: skip
_SCHEMAS: JSON = {
    "ListPage": {
        "type": "object",
        "description": "Every list the clean API answers: items and Roblox's cursors. Pass "
        "`next_cursor` as `cursor` for the next page; null ends the walk.",
        "required": ["data", "next_cursor", "previous_cursor"],
        "additionalProperties": False,
        "properties": {
            "data": {"type": "array", "items": {}},
            "next_cursor": {"type": ["string", "null"]},
            "previous_cursor": {"type": ["string", "null"]},
        },
    },
    "WholeList": {
        "type": "object",
        "description": "A whole list (`?all=true`, `Accept: application/json`): every item, "
        "streamed page after page, then where the walk ended. `next_cursor` goes on with "
        "`?all=true&cursor=` when the list was cut (see `_end`).",
        "required": ["data", "next_cursor", "previous_cursor", "_end"],
        "additionalProperties": False,
        "properties": {
            "data": {"type": "array", "items": {}},
            "next_cursor": {"type": ["string", "null"]},
            "previous_cursor": {"type": "null"},
            "_end": {"$ref": "#/components/schemas/WalkEnd"},
        },
    },
    "WalkLine": {
        "description": "One line of a whole list as NDJSON (`?all=true`): an item, or last "
        "the trailer, the one line that is an object with an `_end` key.",
        "anyOf": [
            {
                "type": "object",
                "required": ["_end"],
                "additionalProperties": False,
                "properties": {"_end": {"$ref": "#/components/schemas/WalkEnd"}},
            },
            {
                "description": "An item of the list: never an object with an `_end` key.",
                "not": {"type": "object", "required": ["_end"]},
            },
        ],
    },
    "WalkEnd": {
        "type": "object",
        "description": "How a whole-list walk ended. Go on with `?all=true&cursor=<next_cursor>` "
        "(the same other parameters), leaving out its first `skip` items: they were sent.",
        "required": [name for name, *_ in _WALK_END_MEMBERS if name != "error"],
        "additionalProperties": False,
        "properties": {
            name: ({"type": kind} if kind != "problem" else dict(PROBLEM_REF))
            | ({"minimum": 0} if kind == "integer" else {})
            | {"description": text}
            for name, kind, text in _WALK_END_MEMBERS
        },
    },
    "MissingPart": {
        "type": "object",
        "description": "A part of a composite route that is not in its answer, and why: "
        "`timeout` (its deadline passed), `not found`, `upstream <N>` (Roblox answered N), or "
        "the part's problem `code`; `status` is what its own route would have answered.",
        "required": ["part", "reason", "status"],
        "additionalProperties": False,
        "properties": {
            "part": {"type": "string"},
            "reason": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
        },
    },
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details, with bloxproxy's members.",
        "required": [name for name, *_ in _PROBLEM_MEMBERS[:7]],
        "properties": {
            name: {"type": kind, "description": text}
            | ({"items": _PROBLEM_ITEMS[name]} if name in _PROBLEM_ITEMS else {})
            for name, kind, text in _PROBLEM_MEMBERS
        },
    },
}


_OK: JSON = {
    "type": "object",
    "required": ["status"],
    "properties": {"status": {"type": "string", "const": "ok"}},
}
_BUDGET: JSON = {
    "type": "object",
    "required": ["rate", "ceiling", "waiting"],
    "properties": {
        "rate": {"type": "number", "description": "The learned rate (calls a second)."},
        "ceiling": {"type": "number", "description": "The configured rate."},
        "limit": {"type": "number", "description": "Roblox's own limit, when it sent one."},
        "hold_seconds": {"type": "number", "description": "Left of a hold after a 429."},
        "waiting": {"type": "integer", "minimum": 0, "description": "Calls in the line."},
    },
}
_READY: JSON = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "degraded"]},
        "checks": {
            "type": "object",
            "description": "With an access key (or keys off): each check's result.",
            "required": ["config", "rules"],
            "properties": {
                "config": {"type": "string"},
                "rules": {"type": "string"},
                "redis": {"type": "string"},
            },
            "additionalProperties": {"type": "string"},
        },
        "budgets": {
            "type": "object",
            "description": "With an access key (or keys off): each upstream scope's budget.",
            "additionalProperties": _BUDGET,
        },
    },
}
_READY_EXAMPLE = {
    "status": "ok",
    "checks": {"config": "ok", "rules": "27 routes"},
    "budgets": {"users": {"rate": 10.0, "ceiling": 10.0, "waiting": 0}},
}
_STRING: JSON = {"type": "string"}
_METRICS_EXAMPLE = (
    "# HELP bloxproxy_requests_total Requests answered.\n# TYPE bloxproxy_requests_total counter\n"
)
_OPENAPI: JSON = {"type": "object", "required": ["openapi", "info", "paths"]}
_HTML_EXAMPLE = '<!doctype html><html lang="en">...</html>'
# path, operationId, summary, media type, schema, example; /_bloxproxy/ is exempt from
# access keys
_PROXY_ENDPOINTS: tuple[tuple[str, str, str, str, JSON, Any], ...] = (
    ("/_bloxproxy/healthz", "proxy.healthz", "Liveness: the process answers", "json", _OK,
     {"status": "ok"}),
    ("/_bloxproxy/readyz", "proxy.readyz", "Readiness: config, rules, Redis", "json", _READY,
     _READY_EXAMPLE),
    ("/_bloxproxy/metrics", "proxy.metrics", "Prometheus metrics", "text/plain", _STRING,
     _METRICS_EXAMPLE),
    ("/openapi.json", "proxy.openapi", "This OpenAPI document", "json", _OPENAPI,
     {"openapi": "3.1.0", "info": {"title": "bloxproxy", "version": "0.1.0"}, "paths": {}}),
    ("/_bloxproxy/openapi.json", "proxy.openapi.reserved", "This OpenAPI document", "json",
     _OPENAPI, {"openapi": "3.1.0", "info": {"title": "bloxproxy", "version": "0.1.0"},
                "paths": {}}),
    ("/docs", "proxy.docs", "The API docs page", "text/html", _STRING, _HTML_EXAMPLE),
    ("/_bloxproxy/docs", "proxy.docs.reserved", "The API docs page", "text/html", _STRING,
     _HTML_EXAMPLE),
)  # fmt: skip

# The admin purge (admin.py): one member names what to drop.
_PURGE_SCOPES: tuple[tuple[str, JSON, str, Any], ...] = (
    ("url", {"type": "string", "minLength": 1, "pattern": "^/"},
     "The entry an anonymous GET of this clean or passthrough URL uses.", "/v1/users/156"),
    ("key", {"type": "string", "minLength": 1}, "One raw cache key.", "GET users/v1/users/156"),
    ("route", {"type": "string", "minLength": 1},
     "Every entry under the route's upstream path prefix (a route id).", "users.get"),
    ("prefix", {"type": "string", "minLength": 1}, "Every key with this prefix.",
     "GET thumbnails/"),
    ("all", {"type": "boolean", "const": True}, "Everything.", True),
)  # fmt: skip
_PURGE_REQUEST: JSON = {
    "description": "Exactly one member: what to purge.",
    "oneOf": [
        {
            "type": "object",
            "title": f"Purge by {name}",
            "required": [name],
            "additionalProperties": False,
            "properties": {name: schema | {"description": text}},
        }
        for name, schema, text, _ in _PURGE_SCOPES
    ],
}
_PURGED: JSON = {
    "type": "object",
    "required": ["purged", "scope", "target"],
    "properties": {
        "purged": {"type": "integer", "minimum": 0, "description": "Entries dropped."},
        "scope": {"type": "string", "enum": [name for name, *_ in _PURGE_SCOPES]},
        "target": {
            "type": ["string", "boolean"],
            "description": "What was purged: the cache key of a `url`, the prefix of a "
            "`route`, else the member's value.",
        },
        "warning": {
            "type": "string",
            "description": "Redis was unavailable: only this replica's L1 was purged.",
        },
    },
}


def _admin_problem(status: str, description: str, code: str, detail: str) -> JSON:
    example = HTTPProblem(int(status), detail, code=code)
    headers = {"X-Request-ID": _ref("headers", "X-Request-ID")}
    return {
        "description": f"{description} `code`: {code}.",
        "headers": headers,
        "content": {
            PROBLEM_JSON: {
                "schema": PROBLEM_REF,
                "example": orjson.loads(
                    problem_body(
                        example, instance="/_bloxproxy/admin/purge", request_id="5f0c3e1a9b7d2c41"
                    )
                ),
            }
        },
    }


def _purge_operation() -> JSON:
    ok = {
        "description": "Purged.",
        "headers": {"X-Request-ID": _ref("headers", "X-Request-ID")},
        "content": {
            "application/json": {
                "schema": copy.deepcopy(_PURGED),
                "example": {"purged": 1, "scope": "url", "target": "GET users/v1/users/156"},
            }
        },
    }
    return {
        "operationId": "proxy.admin.purge",
        "summary": "Purge cache entries (admin)",
        "description": "Drops entries from L1 and Redis and tells every replica (the "
        "invalidation channel). Off unless the config's `server.admin_token` is set (404 "
        "`no_route`); the token goes in `Authorization: Bearer <token>`. Not behind the "
        "access keys.",
        "tags": [PROXY_TAG],
        "security": [{"adminToken": []}],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": copy.deepcopy(_PURGE_REQUEST),
                    "example": {"url": "/v1/users/156"},
                }
            },
        },
        "responses": {
            "200": ok,
            "400": _admin_problem(
                "400", "Not one of the members above.", "invalid_request",
                "expected exactly one of url, key, route, prefix, all",
            ),
            "401": _admin_problem(
                "401", "Missing or wrong admin token.", "unauthorized",
                "missing or wrong admin token",
            ),
            "404": _admin_problem(
                "404", "Admin endpoints are off, or no route or service matches.", "no_route",
                "admin endpoints are disabled (set server.admin_token)",
            ),
            "429": _admin_problem(
                "429", "Too many failed attempts from this address.", "rate_limited",
                "too many failed attempts",
            ),
        },
    }  # fmt: skip


# With access keys on (ops.py): the key optional on readyz (its checks need it), required on
# metrics (in the key header, or as `Authorization: Bearer <key>`).
_OPS_SECURITY: dict[str, list[JSON]] = {
    "/_bloxproxy/readyz": [{}, {"accessKey": []}],
    "/_bloxproxy/metrics": [{"accessKey": []}],
}


def _proxy_paths(keyed: bool) -> JSON:
    out: JSON = {}
    for path, op_id, summary, media, schema, example in _PROXY_ENDPOINTS:
        ok = {
            "description": "OK",
            "headers": {"X-Request-ID": _ref("headers", "X-Request-ID")},
            "content": {
                "application/json" if media == "json" else media: {
                    "schema": copy.deepcopy(schema),
                    "example": copy.deepcopy(example),
                }
            },
        }
        op: JSON = {
            "operationId": op_id,
            "summary": summary,
            "tags": [PROXY_TAG],
            "responses": {"200": ok},
        }
        if keyed:
            # ops.py: healthz is open; readyz answers its bare status without a key and its
            # checks with one; metrics needs one; the rest of /_bloxproxy/ is exempt.
            security = _OPS_SECURITY.get(path)
            if security is None and path.startswith("/_bloxproxy/"):
                security = []  # exempt
            if security is not None:  # (else the document's: the access key)
                op["security"] = security
            if security != []:
                op["responses"]["401"] = _ref("responses", "Unauthorized")
        out[path] = {"get": op}
    out["/_bloxproxy/admin/purge"] = {"post": _purge_operation()}
    return out
