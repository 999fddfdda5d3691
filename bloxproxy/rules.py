"""Rule files: load, validate and compile the clean API.

A rule file is data (``rules/*.yaml``): per route, the clean path with typed parameters,
the upstream request it becomes, how the response is normalized, and how it is cached and
limited. :func:`load_rules` validates every file and reports *every* problem as
``file:line: what is wrong``; a :class:`RuleSet` is only built when there are none, so a
broken file never replaces a working rule set. Everything a request needs is compiled
here, once: parameter parsers, templates, the normalization plan, the router.

The vocabulary is documented in ``docs/RULES.md``; the field tables there are kept in step
with the ``*_KEYS`` constants below by a test.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import normalize, schema
from .config import SERVICE_NAME_RE
from .errors import ConfigError, Problem, Where
from .params import PARAM_TYPES, Param, ParamError
from .router import DuplicateRoute, Router
from .templates import PathTemplate, QueryTemplate, Renderer, TemplateError, compile_body
from .yamlsrc import MarkedDict, MarkedList, load_file

FILE_KEYS = ("service", "tags", "routes")
ROUTE_KEYS = (
    "endpoint",
    "id",
    "method",
    "summary",
    "description",
    "tags",
    "deprecated",
    "params",
    "query",
    "backend",
    "response",
    "cache",
    "limits",
    "example",
)
PARAM_KEYS = (
    "type",
    "description",
    "required",
    "default",
    "example",
    "enum",
    "min",
    "max",
    "min_length",
    "max_length",
    "pattern",
    "min_items",
    "max_items",
)
BACKEND_KEYS = (
    "service",
    "method",
    "path",
    "query",
    "list_format",
    "body",
    "headers",
    "forward_headers",
    "credentials",
    "safe_read",
)
RESPONSE_KEYS = (
    "pick",
    "pagination",
    "allow",
    "deny",
    "rename",
    "case",
    "order_by",
    "empty",
    "shape",
    "status_map",
    "require",
)
PAGINATION_KEYS = ("items", "next", "previous")
CACHE_KEYS = (
    "enabled",
    "ttl",
    "stale_while_revalidate",
    "stale_if_error",
    "not_found_ttl",
    "credentials",
    "when",
)
WHEN_KEYS = ("path", "equals", "in", "ttl")
LIMITS_KEYS = ("bucket",)

_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
_CLEAN_PATH_RE = re.compile(r"^/v[0-9]+(/[A-Za-z0-9._~-]+|/\{[a-z_][a-z0-9_]*\})+$")
_HEADER_RE = re.compile(r"^[A-Za-z0-9-]+$")
_ID_RE = re.compile(r"^[a-z0-9_.-]+$")
# Never forwarded from a clean route even if listed: credentials go through
# `backend.credentials`, hop-by-hop and framing headers are ours to set.
_FORBIDDEN_FORWARD = frozenset(
    {
        "cookie",
        "authorization",
        "x-api-key",
        "host",
        "connection",
        "content-length",
        "transfer-encoding",
        "roblox-id",
    }
)
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True, slots=True)
class CacheCondition:
    """``when`` item: if the value at ``path`` (``[*]`` = any list item) is in ``values``,
    the entry is kept for at most ``ttl`` (the shortest of the route's TTL and every
    matching condition's, as ``cache.decide.store_ttl`` applies it; ``0s`` = do not store)."""

    path: tuple[str | int, ...]
    values: tuple[Any, ...]
    ttl: float
    text: str


@dataclass(frozen=True, slots=True)
class CachePolicy:
    enabled: bool = True
    ttl: float = 60.0
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    not_found_ttl: float | None = None  # None: the config's cache.negative_ttl
    credentials: Literal["bypass", "per_credential"] = "bypass"
    when: tuple[CacheCondition, ...] = ()


@dataclass(frozen=True, slots=True)
class Backend:
    service: str
    method: str
    path: PathTemplate
    query: QueryTemplate
    body: Renderer | None
    headers: tuple[tuple[str, str], ...]
    forward_headers: tuple[str, ...]  # lower-case client header names sent upstream
    credentials: Literal["none", "forward"]
    safe_read: bool


@dataclass(frozen=True, slots=True)
class Route:
    """One compiled clean route."""

    id: str
    method: str
    endpoint: str
    path_params: tuple[Param, ...]
    query_params: tuple[Param, ...]
    backend: Backend
    plan: normalize.Plan
    order_param: str | None
    status_map: Mapping[int, int]
    require: tuple[normalize.Path, ...]
    cache: CachePolicy
    bucket: str
    summary: str
    description: str
    tags: tuple[str, ...]
    deprecated: bool
    example: Any
    where: Where
    file: str


@dataclass(frozen=True)
class RuleSet:
    """All routes of all rule files, with the router built from them."""

    routes: tuple[Route, ...]
    router: Router[Route] = field(repr=False)
    files: tuple[str, ...] = ()

    def by_id(self, route_id: str) -> Route | None:
        return next((r for r in self.routes if r.id == route_id), None)


def rule_files(paths: Iterable[Path]) -> list[Path]:
    """Expand directories to their ``*.yaml``/``*.yml`` files, sorted by name."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        else:
            files.append(path)
    return files


def load_rules(paths: Iterable[Path]) -> RuleSet:
    """Load and compile every rule file; raise one ConfigError listing every problem."""
    problems: list[Problem] = []
    routes: list[Route] = []
    paths = list(paths)
    files = rule_files(paths)
    for path in files:
        try:
            data = load_file(str(path), display_name=_display(path))
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        routes.extend(_load_file(data, _display(path), problems))
    router: Router[Route] = Router()
    seen_ids: dict[str, Route] = {}
    added: list[Route] = []
    for route in routes:
        # An id left out is "METHOD endpoint": its clash is reported as a duplicate route.
        if route.id in seen_ids and route.id != f"{route.method} {route.endpoint}":
            first = seen_ids[route.id]
            problems.append(
                Problem(route.where, f"id: {route.id!r} is already used at {first.where}")
            )
        seen_ids.setdefault(route.id, route)
        try:
            router.add(route.method, route.endpoint, route)
        except DuplicateRoute as exc:
            other = next((r for r in added if _clashes(r, route)), None)
            see = f" (see {other.where})" if other is not None else ""
            problems.append(Problem(route.where, f"endpoint: {exc}{see}"))
        else:
            added.append(route)
    if not files:
        where = ", ".join(str(p) for p in paths) or "rules"
        problems.append(Problem(Where(where, 0), "no rule files found"))
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.where.file, p.where.line)))
    return RuleSet(tuple(routes), router, tuple(str(f) for f in files))


def _clashes(a: Route, b: Route) -> bool:
    """Do ``a`` and ``b`` claim one path shape, or name a parameter differently at one
    position of a shared prefix (the router keeps one name per position)?"""
    sa, sb = a.endpoint.split("/"), b.endpoint.split("/")
    for x, y in zip(sa, sb, strict=False):
        if x.startswith("{") and y.startswith("{"):
            if x != y:
                return True
        elif x != y:
            return False
    return len(sa) == len(sb) and a.method == b.method


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _load_file(data: object, name: str, problems: list[Problem]) -> list[Route]:
    top = schema.mapping(data, Where(name, 1), "rule file", problems)
    if top is None:
        return []
    schema.check_keys(top, FILE_KEYS, problems)
    service = schema.read(top, "service", _service_name, problems, None)
    tags = schema.read(top, "tags", schema.string_list, problems, ())
    raw_routes = top.get("routes")
    if not isinstance(raw_routes, MarkedList):
        problems.append(Problem(top.at("routes"), "routes: expected a list of routes"))
        return []
    out: list[Route] = []
    for i, raw in enumerate(raw_routes):
        route_map = schema.mapping(raw, raw_routes.at(i), f"routes[{i}]", problems)
        if route_map is None:
            continue
        before = len(problems)
        route = _load_route(route_map, name, service, tags, problems)
        if route is not None and len(problems) == before:
            out.append(route)
    return out


def _service_name(value: object) -> str:
    text = schema.string(value)
    if not SERVICE_NAME_RE.match(text):
        raise ValueError(f"expected a service name like 'users', got {text!r}")
    return text


def _load_route(
    d: MarkedDict,
    file: str,
    file_service: str | None,
    file_tags: tuple[str, ...],
    problems: list[Problem],
) -> Route | None:
    schema.check_keys(d, ROUTE_KEYS, problems)
    endpoint = d.get("endpoint")
    if not isinstance(endpoint, str) or not _CLEAN_PATH_RE.match(endpoint):
        problems.append(
            Problem(
                d.at("endpoint"),
                "endpoint: expected a clean path like "
                f"'/v1/users/{{user_id}}' (first segment v<N>), got {endpoint!r}",
            )
        )
        return None
    method = schema.read(d, "method", schema.choice("GET"), problems, "GET")
    route_id = schema.read(d, "id", _route_id, problems, "")
    if not route_id:
        route_id = f"{method} {endpoint}"

    path_names = re.findall(r"\{([a-z_][a-z0-9_]*)\}", endpoint)
    if len(set(path_names)) != len(path_names):
        problems.append(Problem(d.at("endpoint"), "endpoint: a parameter appears twice"))
    path_params = _load_params(d, "params", "path", problems)
    query_params = _load_params(d, "query", "query", problems)
    # Names as written, valid or not: a parameter with a bad field is reported once, not
    # again as "not declared" by the endpoint and every template that uses it.
    declared = _declared_names(d, "params")
    query_names = _declared_names(d, "query")
    for name in path_names:
        if name not in declared:
            problems.append(
                Problem(d.at("endpoint"), f"endpoint: {{{name}}} is not declared under params")
            )
    for name in declared:
        if name not in path_names:
            problems.append(Problem(d.at("params"), f"params.{name}: not in the endpoint path"))
    for name in sorted(set(declared) & set(query_names)):
        problems.append(Problem(d.at("query"), f"query.{name}: also a path parameter"))
    known = frozenset(declared) | frozenset(query_names)

    backend = _load_backend(d, file_service, known, problems)
    plan, order_param, status_map = _load_response(d, query_params, problems)
    require: tuple[normalize.Path, ...] = ()
    response = d.get("response")
    if isinstance(response, MarkedDict) and "require" in response:
        texts = schema.read(response, "require", schema.string_list, problems, (), "response")
        try:
            require = tuple(normalize.parse_path(t) for t in texts)
        except ValueError as exc:
            problems.append(Problem(response.at("require"), f"response.require: {exc}"))
    cache = _load_cache(d, problems)
    limits = d.get("limits")
    bucket = backend.service if backend else ""
    if limits is not None:
        lm = schema.mapping(limits, d.at("limits"), "limits", problems)
        if lm is not None:
            schema.check_keys(lm, LIMITS_KEYS, problems, "limits")
            bucket = schema.read(lm, "bucket", _service_name, problems, bucket, "limits")
    if backend is None or plan is None:
        return None
    return Route(
        id=route_id,
        method=method,
        endpoint=endpoint,
        path_params=tuple(path_params),
        query_params=tuple(query_params),
        backend=backend,
        plan=plan,
        order_param=order_param,
        status_map=status_map,
        require=require,
        cache=cache,
        bucket=bucket,
        summary=schema.read(d, "summary", schema.string, problems, ""),
        description=schema.read(d, "description", schema.string, problems, ""),
        tags=schema.read(d, "tags", schema.string_list, problems, file_tags),
        deprecated=schema.read(d, "deprecated", schema.boolean, problems, False),
        example=d.get("example"),
        where=d.where,
        file=file,
    )


def _route_id(value: object) -> str:
    text = schema.string(value)
    if not _ID_RE.match(text):
        raise ValueError(f"expected an id like 'users.get', got {text!r}")
    return text


def _declared_names(d: MarkedDict, key: str) -> list[str]:
    raw = d.get(key)
    if not isinstance(raw, MarkedDict):
        return []
    return [name for name in raw if not name.startswith("_") and _NAME_RE.match(name)]


def _load_params(
    d: MarkedDict, key: str, location: Literal["path", "query"], problems: list[Problem]
) -> list[Param]:
    raw = d.get(key)
    if raw is None:
        return []
    m = schema.mapping(raw, d.at(key), key, problems)
    if m is None:
        return []
    out = []
    for name, spec in m.items():
        if name.startswith("_"):
            continue
        ctx = f"{key}.{name}"
        if not _NAME_RE.match(name):
            problems.append(Problem(m.at(name), f"{ctx}: parameter names are snake_case"))
            continue
        sm = schema.mapping(spec, m.at(name), ctx, problems)
        if sm is None:
            continue
        param = _load_param(sm, name, location, ctx, problems)
        if param is not None:
            out.append(param)
    return out


def _load_param(
    m: MarkedDict, name: str, location: Literal["path", "query"], ctx: str, problems: list[Problem]
) -> Param | None:
    before = len(problems)
    schema.check_keys(m, PARAM_KEYS, problems, ctx)
    ptype = schema.read(m, "type", schema.choice(*PARAM_TYPES), problems, "string", ctx)
    if "type" not in m:
        problems.append(Problem(m.where, f"{ctx}.type: required ({', '.join(PARAM_TYPES)})"))
    is_int = ptype in ("int", "int_list")
    scalar = schema.integer if is_int else None
    kwargs: dict[str, Any] = {
        "name": name,
        "location": location,
        "type": ptype,
        "required": location == "path"
        or schema.read(m, "required", schema.boolean, problems, False, ctx),
        "description": schema.read(m, "description", schema.string, problems, "", ctx),
        "min": schema.read(m, "min", schema.integer(), problems, None, ctx),
        "max": schema.read(m, "max", schema.integer(), problems, None, ctx),
        "min_length": schema.read(m, "min_length", schema.integer(0), problems, 0, ctx),
        "max_length": schema.read(m, "max_length", schema.integer(1), problems, 1000, ctx),
        "min_items": schema.read(m, "min_items", schema.integer(1), problems, 1, ctx),
        "max_items": schema.read(m, "max_items", schema.integer(1), problems, 100, ctx),
    }
    if ("min" in m or "max" in m) and not is_int:
        problems.append(
            Problem(
                m.at("min" if "min" in m else "max"), f"{ctx}: min/max apply to int parameters only"
            )
        )
    if ("min_items" in m or "max_items" in m) and ptype not in ("int_list", "string_list"):
        problems.append(
            Problem(
                m.at("max_items" if "max_items" in m else "min_items"),
                f"{ctx}: min_items/max_items apply to list parameters only",
            )
        )
    if "pattern" in m:
        pattern = schema.read(m, "pattern", schema.string, problems, None, ctx)
        if pattern is not None:
            try:
                kwargs["pattern"] = re.compile(pattern)
            except re.error as exc:
                problems.append(Problem(m.at("pattern"), f"{ctx}.pattern: invalid regex: {exc}"))
    if "enum" in m:
        enum = m["enum"]
        item_reader = scalar() if scalar else schema.string
        try:
            if not isinstance(enum, list) or not enum:
                raise ValueError("expected a non-empty list")
            kwargs["enum"] = tuple(item_reader(v) for v in enum)
        except ValueError as exc:
            problems.append(Problem(m.at("enum"), f"{ctx}.enum: {exc}"))
    if len(problems) > before:
        return None
    param = Param(**kwargs)
    for key in ("default", "example"):
        if key in m and m[key] is not None:
            raw = m[key]
            texts = (
                [str(v) for v in raw]
                if isinstance(raw, list)
                else [("true" if raw else "false") if isinstance(raw, bool) else str(raw)]
            )
            try:
                value = param.parse(texts)
            except ParamError as exc:
                problems.append(Problem(m.at(key), f"{ctx}.{key}: {exc.reason}"))
                return None
            if key == "default":
                if location == "path":
                    problems.append(Problem(m.at(key), f"{ctx}: path parameters have no default"))
                param = _replace(param, default=value)
            else:
                param = _replace(param, example=value)
    return param


def _replace(param: Param, **changes: Any) -> Param:
    from dataclasses import replace

    return replace(param, **changes)


def _load_backend(
    d: MarkedDict, file_service: str | None, known: frozenset[str], problems: list[Problem]
) -> Backend | None:
    raw = d.get("backend")
    if raw is None:
        problems.append(Problem(d.where, "backend: required (the upstream request)"))
        return None
    b = schema.mapping(raw, d.at("backend"), "backend", problems)
    if b is None:
        return None
    before = len(problems)
    schema.check_keys(b, BACKEND_KEYS, problems, "backend")
    service = schema.read(b, "service", _service_name, problems, file_service, "backend")
    if service is None:
        problems.append(Problem(b.where, "backend.service: required (here or at file level)"))
    method = schema.read(b, "method", schema.choice(*_METHODS), problems, "GET", "backend")
    path_text = b.get("path")
    path = None
    if not isinstance(path_text, str):
        problems.append(Problem(b.at("path"), "backend.path: required, e.g. /v1/users/{user_id}"))
    else:
        try:
            path = PathTemplate.compile(path_text, known)
        except TemplateError as exc:
            problems.append(Problem(b.at("path"), f"backend.path: {exc}"))
    list_format = schema.read(
        b, "list_format", schema.choice("csv", "repeat"), problems, "csv", "backend"
    )
    query = QueryTemplate((), list_format)
    if "query" in b:
        qm = schema.mapping(b["query"], b.at("query"), "backend.query", problems)
        if qm is not None:
            try:
                query = QueryTemplate.compile(
                    {k: v for k, v in qm.items() if not k.startswith("_")}, known, list_format
                )
            except TemplateError as exc:
                problems.append(Problem(b.at("query"), f"backend.query: {exc}"))
    body = None
    if "body" in b:
        if method == "GET":
            problems.append(Problem(b.at("body"), "backend.body: a GET has no body"))
        try:
            body = compile_body(b["body"], known)
        except TemplateError as exc:
            problems.append(Problem(b.at("body"), f"backend.body: {exc}"))
    headers = schema.read(b, "headers", schema.string_map, problems, {}, "backend")
    forward = schema.read(b, "forward_headers", schema.string_list, problems, (), "backend")
    for name in (*headers, *forward):
        if not _HEADER_RE.match(name) or name.lower() in _FORBIDDEN_FORWARD:
            problems.append(
                Problem(
                    b.at("headers" if name in headers else "forward_headers"),
                    f"backend: header {name!r} cannot be set or forwarded here",
                )
            )
    credentials = schema.read(
        b, "credentials", schema.choice("none", "forward"), problems, "none", "backend"
    )
    safe_read = schema.read(b, "safe_read", schema.boolean, problems, method == "GET", "backend")
    if len(problems) > before or service is None or path is None:
        return None
    return Backend(
        service,
        method,
        path,
        query,
        body,
        tuple((k, v) for k, v in headers.items()),
        tuple(h.lower() for h in forward),
        credentials,
        safe_read,
    )


def _path(value: object) -> normalize.Path:
    return normalize.parse_path(schema.string(value))


def _load_response(
    d: MarkedDict, query_params: list[Param], problems: list[Problem]
) -> tuple[normalize.Plan | None, str | None, Mapping[int, int]]:
    raw = d.get("response")
    if raw is None:
        return normalize.Plan(), None, {}
    r = schema.mapping(raw, d.at("response"), "response", problems)
    if r is None:
        return None, None, {}
    before = len(problems)
    ctx = "response"
    schema.check_keys(r, RESPONSE_KEYS, problems, ctx)
    pick = schema.read(r, "pick", _path, problems, None, ctx)
    pagination = None
    if "pagination" in r:
        pv = r["pagination"]
        if pv is True:
            pagination = normalize.Pagination()
        else:
            pm = schema.mapping(pv, r.at("pagination"), "response.pagination", problems)
            if pm is not None:
                schema.check_keys(pm, PAGINATION_KEYS, problems, "response.pagination")
                default = normalize.Pagination()
                prev_default = default.previous_cursor
                previous = (
                    None
                    if "previous" in pm and pm["previous"] is None
                    else schema.read(
                        pm, "previous", _path, problems, prev_default, "response.pagination"
                    )
                )
                pagination = normalize.Pagination(
                    items=schema.read(
                        pm, "items", _path, problems, default.items, "response.pagination"
                    ),
                    next_cursor=schema.read(
                        pm, "next", _path, problems, default.next_cursor, "response.pagination"
                    ),
                    previous_cursor=previous,
                )
    allow = schema.read(r, "allow", schema.string_list, problems, None, ctx)
    deny = schema.read(r, "deny", schema.string_list, problems, (), ctx)
    rename = schema.read(r, "rename", schema.string_map, problems, {}, ctx)
    case = schema.read(r, "case", schema.choice("snake", "camel", "keep"), problems, "snake", ctx)
    fields = normalize.FieldOps(
        allow=frozenset(allow) if allow is not None else None,
        deny=frozenset(deny),
        rename=dict(rename),
        case=case,
    )
    order_by = None
    order_param = None
    if "order_by" in r:
        ov = r["order_by"]
        key_text, param_name = ov, None
        if isinstance(ov, MarkedDict):
            schema.check_keys(ov, ("key", "param"), problems, "response.order_by")
            key_text, param_name = ov.get("key"), ov.get("param")
        list_params = [p.name for p in query_params if p.is_list]
        if param_name is None and len(list_params) == 1:
            param_name = list_params[0]
        if param_name not in list_params:
            problems.append(
                Problem(
                    r.at("order_by"),
                    "response.order_by: needs a list query "
                    f"parameter to follow (list parameters: {list_params})",
                )
            )
        try:
            order_by = normalize.OrderBy(_path(key_text))
            order_param = param_name
        except ValueError as exc:
            problems.append(Problem(r.at("order_by"), f"response.order_by: {exc}"))
    empty = schema.read(r, "empty", schema.choice("keep", "not_found"), problems, "keep", ctx)
    shape = schema.read(r, "shape", schema.choice("auto", "object", "list"), problems, "auto", ctx)
    status_map: dict[int, int] = {}
    if "status_map" in r:
        sm = schema.mapping(r["status_map"], r.at("status_map"), "response.status_map", problems)
        for k, v in (sm or {}).items():
            if not (
                k.isdigit() and 400 <= int(k) <= 599 and isinstance(v, int) and 400 <= v <= 599
            ):
                problems.append(
                    Problem(
                        sm.at(k) if sm else r.where,
                        "response.status_map: expected upstream "
                        f"status: our status (4xx/5xx), got {k}: {v!r}",
                    )
                )
            else:
                status_map[int(k)] = v
    if len(problems) > before:
        return None, None, {}
    try:
        plan = normalize.Plan(
            pick=pick,
            pagination=pagination,
            fields=fields,
            order_by=order_by,
            empty_is_404=empty == "not_found",
            shape=shape,
        )
    except ValueError as exc:
        problems.append(Problem(r.where, f"response: {exc}"))
        return None, None, {}
    return plan, order_param, status_map


def _load_cache(d: MarkedDict, problems: list[Problem]) -> CachePolicy:
    raw = d.get("cache")
    if raw is None:
        return CachePolicy()
    if raw is False:
        return CachePolicy(enabled=False)
    c = schema.mapping(raw, d.at("cache"), "cache", problems)
    if c is None:
        return CachePolicy()
    ctx = "cache"
    schema.check_keys(c, CACHE_KEYS, problems, ctx)
    conditions: list[CacheCondition] = []
    when = c.get("when")
    if when is not None:
        if not isinstance(when, MarkedList):
            problems.append(Problem(c.at("when"), "cache.when: expected a list of conditions"))
        else:
            for i, item in enumerate(when):
                wctx = f"cache.when[{i}]"
                w = schema.mapping(item, when.at(i), wctx, problems)
                if w is None:
                    continue
                schema.check_keys(w, WHEN_KEYS, problems, wctx)
                if "path" not in w or "ttl" not in w or ("equals" in w) == ("in" in w):
                    problems.append(
                        Problem(w.where, f"{wctx}: needs path, ttl and one of equals/in")
                    )
                    continue
                values = (w["equals"],) if "equals" in w else w["in"]
                if not isinstance(values, list | tuple):
                    problems.append(Problem(w.at("in"), f"{wctx}.in: expected a list"))
                    continue
                path = schema.read(w, "path", _when_path_reader, problems, None, wctx)
                ttl = schema.read(w, "ttl", schema.duration, problems, None, wctx)
                if path is not None and ttl is not None:
                    conditions.append(CacheCondition(path, tuple(values), ttl, str(w["path"])))
    return CachePolicy(
        enabled=schema.read(c, "enabled", schema.boolean, problems, True, ctx),
        ttl=schema.read(c, "ttl", schema.duration, problems, 60.0, ctx),
        stale_while_revalidate=schema.read(
            c, "stale_while_revalidate", schema.duration, problems, 0.0, ctx
        ),
        stale_if_error=schema.read(c, "stale_if_error", schema.duration, problems, 0.0, ctx),
        not_found_ttl=schema.read(c, "not_found_ttl", schema.duration, problems, None, ctx),
        credentials=schema.read(
            c, "credentials", schema.choice("bypass", "per_credential"), problems, "bypass", ctx
        ),
        when=tuple(conditions),
    )


def _when_path_reader(value: object) -> tuple[str | int, ...]:
    """``data[*].state``: a path where ``[*]`` means "any item of this list"."""
    text = schema.string(value)
    parts: list[str | int] = []
    for chunk in text.split("[*]"):
        if chunk.startswith("."):
            chunk = chunk[1:]
        if chunk:
            parts.extend(normalize.parse_path(chunk))
        parts.append("*")
    parts.pop()  # the split adds one marker too many
    return tuple(parts)


def match_condition(cond: CacheCondition, body: object) -> bool:
    """Does the body hold one of ``cond.values`` at ``cond.path``?"""
    return _any_at(body, cond.path, cond.values)


def _any_at(value: object, path: tuple[str | int, ...], wanted: tuple[Any, ...]) -> bool:
    if not path:
        return value in wanted
    head, rest = path[0], path[1:]
    if head == "*":
        return isinstance(value, list) and any(_any_at(v, rest, wanted) for v in value)
    if isinstance(head, int):
        return (
            isinstance(value, list)
            and 0 <= head < len(value)
            and _any_at(value[head], rest, wanted)
        )
    return isinstance(value, dict) and head in value and _any_at(value[head], rest, wanted)
