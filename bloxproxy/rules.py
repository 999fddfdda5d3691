"""Rule files: load, validate and compile the clean API.

A rule file is data (``rules/*.yaml``): per route, the clean path with typed parameters,
the upstream request it becomes, how the response is normalized, and how it is cached and
limited. :func:`load_rules` validates every file and reports *every* problem as
``file:line: what is wrong``; a :class:`RuleSet` is only built when there are none, so a
broken file never replaces a working rule set. Everything a request needs is compiled
here, once: parameter parsers, templates, the normalization plan, the router.

Every key of a rule file is declared once, in :mod:`bloxproxy.rule_fields` (its reader,
default and reference text); this module reads the files through those declarations and
keeps what is relational: parameters against the endpoint, templates against the
parameters, ``order_by`` against the list parameters, routes against each other. The key
tables of ``docs/RULES.md`` are generated from the declarations.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import cloudlimits, normalize, rule_fields, schema
from .errors import ConfigError, Problem, Where
from .keyconfig import Rate
from .params import Param, ParamError
from .router import DuplicateRoute, Router
from .rule_fields import (
    BACKEND,
    BATCH,
    CACHE,
    COMPOSE,
    COMPOSITE,
    FILE,
    HOLD,
    LIMITS,
    ORDER_BY,
    PAGINATION,
    PARAM,
    PART,
    REDIRECT,
    RESPONSE,
    ROUTE,
    WHEN,
)
from .tagging import TagTemplate
from .templates import PathTemplate, QueryTemplate, Renderer, TemplateError, compile_body
from .yamlsrc import MarkedDict, MarkedList, load_file

if TYPE_CHECKING:
    from .config import Config

_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
# The query parameter that walks a paginated route's whole list (?all=true, walk.py): no
# rule may declare it, so it means the same on every route.
WALK_PARAM = "all"
# The query parameter that chooses a composite route's parts (?include=user,presence,
# compose.py), and the answer's own key that lists the parts missing: neither can be
# declared (as a parameter, as a part) on a composite route.
INCLUDE_PARAM = "include"
MISSING_KEY = "missing"
_HEADER_RE = re.compile(r"^[A-Za-z0-9-]+$")
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


@dataclass(frozen=True, slots=True)
class CacheCondition:
    """``when`` item: if the value at ``path`` (``[*]`` = any list item) is in ``values``,
    the entry is kept for at most ``ttl`` (the shortest of the route's TTL and every
    matching condition's, as ``cache.decide.store_ttl`` applies it; ``0s`` = do not store)."""

    path: tuple[str | int, ...]
    values: tuple[Any, ...]
    ttl: float
    text: str
    repoll: int = 0  # background re-asks when a matching entry expires


@dataclass(frozen=True, slots=True)
class Redirect:
    """``response.redirect``: answer 302 to the URL at ``url`` in the upstream body."""

    url: normalize.Path
    state: normalize.Path | None = None
    placeholder: str | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """``response.hold``: ask again every ``every`` until the value at ``path`` is one of
    ``until``, for at most ``within``."""

    path: normalize.Path | None
    until: tuple[str, ...]
    within: float = 5.0
    every: float = 1.0
    operation: normalize.Path | None = None  # an Open Cloud Operation's name in the body


@dataclass(frozen=True, slots=True)
class CachePolicy:
    enabled: bool = True
    ttl: float = 60.0
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    not_found_ttl: float | None = None  # None: the config's cache.negative_ttl
    credentials: Literal["bypass", "per_credential"] = "bypass"
    when: tuple[CacheCondition, ...] = ()
    tags: tuple[TagTemplate, ...] = ()  # entity tags of its entries (tagging.py)


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """How one upstream batch endpoint takes ids and answers them (``backend.batch``; the
    entity cache and the micro-batcher work from it: :mod:`bloxproxy.cache.entities`)."""

    service: str
    method: str
    path: str
    ids: str  # the query parameter (GET) or top-level body field (POST) with the id list
    max: int  # the endpoint's cap: more ids in one call is Roblox's 400
    items: str = "data"  # the answer's list, a top-level key
    key: str = "id"  # the field of an item that names its id
    match: Literal["exact", "case_insensitive"] = "exact"
    echo: bool = False  # the key field repeats the id as asked (usernames' requestedUsername)
    about: str = ""  # the entity kind for tags (``user`` → ``user:156``)
    window: float = 0.005  # how long a batch waits for companions once a limiter slot is free
    list_format: Literal["csv", "repeat"] = "csv"  # how a GET's id list is written
    max_window: float = 0.25  # … and when companions are expected (cache/batcher.window_for)

    @property
    def numeric(self) -> bool:
        return self.match == "exact"


@dataclass(frozen=True, slots=True)
class Backend:
    service: str
    method: str
    path: PathTemplate
    query: QueryTemplate
    body: Renderer | None
    headers: tuple[tuple[str, str], ...]
    forward_headers: tuple[str, ...]  # lower-case client header names sent upstream
    credentials: Literal["none", "forward", "api_key"]
    safe_read: bool
    batch: BatchSpec | None = None  # how the endpoint takes and answers ids (backend.batch)


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
    redirect: Redirect | None = None
    hold: Hold | None = None
    owner_limit: OwnerLimit | None = None  # limits.per_key_owner

    @property
    def owner_bucket(self) -> str:
        """The base of the route's per-owner scopes (``@<owner>`` is added per request): its
        operation's (``cloud-getuser``: routes of one operation share it, as Roblox counts
        per operation) when it has a per-owner limit, else its bucket."""
        return self.bucket if self.owner_limit is None else self.owner_limit.bucket


@dataclass(frozen=True, slots=True)
class OwnerLimit:
    """``limits.per_key_owner``: requests per second per Open Cloud key owner, as written
    (``1000/min``) and where it comes from (``openapi: Cloud_GetUser`` or ``rule``)."""

    per_second: float
    text: str
    source: str
    bucket: str  # the base of its per-owner scopes: the operation's, else the route's


def _slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")[:60]


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a composite route (``compose.parts``): the answer of ``route`` for the
    parameters ``params`` renders from the composite's own, within ``deadline``."""

    name: str
    route: Route
    params: QueryTemplate  # the part route's parameters, as templates of the composite's
    deadline: float
    first: bool = False  # the part is the first item of the route's list answer
    pick: normalize.Path | None = None  # the value kept of the part's answer


@dataclass(frozen=True, slots=True)
class Composite:
    """One compiled composite route (a rule with ``compose``): its parts, asked at once."""

    id: str
    method: str
    endpoint: str
    path_params: tuple[Param, ...]
    query_params: tuple[Param, ...]
    parts: tuple[Part, ...]
    main: str  # the part the answer cannot do without
    summary: str
    description: str
    tags: tuple[str, ...]
    deprecated: bool
    example: Any
    where: Where
    file: str

    @property
    def part_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parts)


@dataclass(frozen=True, slots=True)
class _Draft:
    """A composite route as read from its file, before its parts' routes are known."""

    values: dict[str, Any]  # COMPOSITE's values
    path_params: tuple[Param, ...]
    query_params: tuple[Param, ...]
    known: frozenset[str]
    compose: MarkedDict
    tags: tuple[str, ...]
    where: Where
    file: str

    @property
    def id(self) -> str:
        route_id: str | None = self.values["id"]
        return route_id or f"{self.values['method']} {self.values['endpoint']}"


@dataclass(frozen=True, slots=True)
class Override:
    """A route of the user's rule files that replaces the shipped route with its id."""

    route_id: str
    where: Where  # the user's route
    shipped: Where  # the shipped route it replaces

    def __str__(self) -> str:
        return f"{self.where}: overrides shipped rule {self.route_id} ({self.shipped})"


@dataclass(frozen=True)
class RuleSet:
    """All routes of all rule files, with the router built from them."""

    routes: tuple[Route, ...]
    router: Router[Route] = field(repr=False)
    files: tuple[str, ...] = ()
    overrides: tuple[Override, ...] = ()  # shipped routes replaced by the user's
    composites: tuple[Composite, ...] = ()  # routes made of other routes (compose)
    # What the clean door matches: the routes and the composites in one trie, so literal
    # segments beat parameters across both and a clash between them is a DuplicateRoute.
    clean_router: Router[Route | Composite] = field(default_factory=Router, repr=False)

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


def load_configured(config: Config) -> RuleSet:
    """The rules a config names: the shipped ones (unless ``rules.shipped: false``) and,
    beside them, the files of ``rules.paths``."""
    origin = Where(config.source, 1) if config.source else None
    return load_rules(config.user_rule_paths(), shipped=config.shipped_rule_paths(), origin=origin)


def load_rules(
    paths: Iterable[Path], shipped: Iterable[Path] = (), origin: Where | None = None
) -> RuleSet:
    """Load and compile the rule files of ``paths`` beside those of ``shipped`` (the rules
    that come with bloxproxy); raise one ConfigError listing every problem (no file at all
    is reported at ``origin``, the config file that named them, when given).

    A route of ``paths`` whose id is a shipped route's replaces that route (listed in
    :attr:`RuleSet.overrides`); every other clash (one id twice among the user's files, one
    endpoint for two ids) is a problem. A file named in both is loaded once, as shipped.
    """
    problems: list[Problem] = []
    paths, shipped = list(paths), list(shipped)
    if origin is not None:
        # A path the config names that is not there: said where it was named, not as a
        # "line 1" of a file that does not exist.
        for path in [p for p in paths if not p.exists()]:
            problems.append(Problem(origin, f"rules.paths: {path}: no such file or directory"))
        paths = [p for p in paths if p.exists()]
    shipped_files = rule_files(shipped)
    known = {f.resolve() for f in shipped_files}
    user_files = [f for f in rule_files(paths) if f.resolve() not in known]
    shipped_drafts: list[_Draft] = []
    user_drafts: list[_Draft] = []
    shipped_routes = _load_files(shipped_files, problems, shipped_drafts)
    user_routes = _load_files(user_files, problems, user_drafts)
    replacing = {r.id: r for r in reversed(user_routes)}  # the first of each id
    overrides = tuple(
        Override(r.id, replacing[r.id].where, r.where) for r in shipped_routes if r.id in replacing
    )
    kept = [r for r in shipped_routes if r.id not in replacing]
    routes = [*kept, *user_routes]
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
            if (
                other is not None
                and other.endpoint == route.endpoint
                and any(other is k for k in kept)
            ):
                see = (
                    f" (see {other.where}: the shipped route {other.id}; "
                    f"give this route id: {other.id} to replace it)"
                )
            problems.append(Problem(route.where, f"endpoint: {exc}{see}"))
        else:
            added.append(route)
    files = [*shipped_files, *user_files]
    if not files:
        if origin is not None:
            problems.append(
                Problem(origin, "rules: no rule files found (none shipped, none in rules.paths)")
            )
        else:
            where = ", ".join(str(p) for p in [*shipped, *paths]) or "rules"
            problems.append(Problem(Where(where, 0), "no rule files found"))
    composites, clean_router = _composites(shipped_drafts, user_drafts, added, seen_ids, problems)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.where.file, p.where.line)))
    return RuleSet(
        tuple(routes),
        router,
        tuple(str(f) for f in files),
        overrides,
        tuple(composites),
        clean_router,
    )


def _load_files(
    files: Iterable[Path], problems: list[Problem], drafts: list[_Draft]
) -> list[Route]:
    routes: list[Route] = []
    for path in files:
        try:
            data = load_file(str(path), display_name=_display(path))
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        table = _limits_table(path, problems)
        routes.extend(_load_file(data, _display(path), problems, drafts, table))
    return routes


def limits_table_path(rule_file: Path) -> Path:
    """The data file of Open Cloud limits beside a rule file: ``opencloud.limits.json``."""
    return rule_file.with_name(rule_file.stem + ".limits.json")


def _limits_table(
    rule_file: Path, problems: list[Problem]
) -> dict[tuple[str, str], cloudlimits.OperationLimit] | None:
    path = limits_table_path(rule_file)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        problems.append(Problem(Where(_display(path), 1), f"cannot read: {exc.strerror}"))
        return None
    try:
        return cloudlimits.read_table(raw)
    except cloudlimits.TableError as exc:
        problems.append(Problem(Where(_display(path), 1), str(exc)))
        return None


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


def _load_file(
    data: object,
    name: str,
    problems: list[Problem],
    drafts: list[_Draft],
    table: dict[tuple[str, str], cloudlimits.OperationLimit] | None = None,
) -> list[Route]:
    top = schema.mapping(data, Where(name, 1), "rule file", problems)
    if top is None:
        return []
    values = FILE.read(top, problems, "")
    if "routes" not in top:
        return []  # FILE.read reported it
    raw_routes = top["routes"]
    if not isinstance(raw_routes, MarkedList):
        problems.append(Problem(top.at("routes"), "routes: expected a list of routes"))
        return []
    out: list[Route] = []
    for i, raw in enumerate(raw_routes):
        route_map = schema.mapping(raw, raw_routes.at(i), f"routes[{i}]", problems)
        if route_map is None:
            continue
        before = len(problems)
        if "compose" in route_map:
            draft = _load_draft(route_map, name, values["tags"], problems)
            if draft is not None and len(problems) == before:
                drafts.append(draft)
            continue
        route = _load_route(route_map, name, values["service"], values["tags"], problems, table)
        if route is not None and len(problems) == before:
            out.append(route)
    return out


def _load_route(
    d: MarkedDict,
    file: str,
    file_service: str | None,
    file_tags: tuple[str, ...],
    problems: list[Problem],
    table: dict[tuple[str, str], cloudlimits.OperationLimit] | None = None,
) -> Route | None:
    values = ROUTE.read(d, problems, "")
    endpoint: str | None = values["endpoint"]
    if endpoint is None:
        return None  # its parameters and templates cannot be checked against it
    method: str = values["method"]
    route_id: str = values["id"] or f"{method} {endpoint}"

    path_params, query_params, known = _route_params(d, endpoint, problems)

    backend = _load_backend(d, file_service, known, problems)
    response = _load_response(d, query_params, problems)
    cache = _load_cache(d, known, problems)
    bucket, per_owner = _load_limits(d, backend.service if backend else "", problems)
    if backend is None or response is None:
        return None
    owner_limit = _owner_limit(d, file, backend, per_owner, table, problems)
    plan, order_param, status_map, require, redirect, hold = response
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
        summary=values["summary"],
        description=values["description"],
        tags=file_tags if values["tags"] is None else values["tags"],
        deprecated=values["deprecated"],
        example=values["example"],
        where=d.where,
        file=file,
        redirect=redirect,
        hold=hold,
        owner_limit=owner_limit,
    )


def _route_params(
    d: MarkedDict, endpoint: str, problems: list[Problem]
) -> tuple[list[Param], list[Param], frozenset[str]]:
    """A route's path and query parameters, checked against its endpoint, and every name
    declared (valid or not: templates are checked against these)."""
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
    if WALK_PARAM in query_names:
        problems.append(
            Problem(
                d["query"].at(WALK_PARAM),
                f"query.{WALK_PARAM}: reserved: ?{WALK_PARAM}=true walks a paginated route's "
                "whole list (docs/RULES.md, Whole lists); give the parameter another name",
            )
        )
    known = frozenset(declared) | frozenset(query_names)
    return path_params, query_params, known


def _owner_limit(
    d: MarkedDict,
    file: str,
    backend: Backend,
    per_owner: object,
    table: dict[tuple[str, str], cloudlimits.OperationLimit] | None,
    problems: list[Problem],
) -> OwnerLimit | None:
    """``limits.per_key_owner``: a rate as written, or (``openapi``) the published limit
    of the route's upstream operation from the file's limits table."""
    if per_owner is None:
        return None
    if isinstance(per_owner, Rate):
        route_id = d.get("id")
        base = _slug(route_id if isinstance(route_id, str) else backend.path.text)
        return OwnerLimit(per_owner.per_second, str(per_owner), "rule", base or "route")
    where = d["limits"].at("per_key_owner")
    method, path = cloudlimits.operation_key(backend.method, backend.path.text)
    table_name = limits_table_path(Path(file)).name
    if table is None:
        problems.append(
            Problem(
                where,
                f"limits.per_key_owner: openapi, but there is no {table_name} beside the rule "
                "file (write it with bloxproxy import-limits)",
            )
        )
        return None
    found = table.get((method, path))
    if found is None:
        problems.append(
            Problem(
                where,
                f"limits.per_key_owner: {table_name} has no operation {method} "
                f"{backend.path.text} (run bloxproxy import-limits again, or write a rate)",
            )
        )
        return None
    slug = _slug(found.operation) or _slug(f"{method} {path}")
    return OwnerLimit(found.per_second, found.text(), f"openapi: {found.operation}", slug)


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
    # A path parameter is always required: its `required` is not even read.
    v = PARAM.read(m, problems, ctx, skip=("required",) if location == "path" else ())
    ptype = v["type"]
    is_int = ptype in ("int", "int_list")
    kwargs: dict[str, Any] = {
        "name": name,
        "location": location,
        "type": ptype,
        "required": location == "path" or v["required"],
        **{k: v[k] for k in _PARAM_FIELDS},
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
    if "enum" in m:
        enum = m["enum"]
        item_reader = schema.integer() if is_int else schema.string
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
                param = replace(param, default=value)
            else:
                param = replace(param, example=value)
    return param


# The PARAM keys a Param takes as read (type and required are decided above).
_PARAM_FIELDS = (
    "description",
    "min",
    "max",
    "min_length",
    "max_length",
    "pattern",
    "min_items",
    "max_items",
)


def _load_backend(
    d: MarkedDict, file_service: str | None, known: frozenset[str], problems: list[Problem]
) -> Backend | None:
    if "backend" not in d:
        return None  # ROUTE.read reported it
    raw = d["backend"]
    if raw is None:
        problems.append(Problem(d.where, "backend: required (the upstream request)"))
        return None
    b = schema.mapping(raw, d.at("backend"), "backend", problems)
    if b is None:
        return None
    before = len(problems)
    v = BACKEND.read(b, problems, "backend")
    service: str | None = file_service if v["service"] is None else v["service"]
    if service is None:
        problems.append(Problem(b.where, "backend.service: required (here or at file level)"))
    method: str = v["method"]
    path = None
    if v["path"] is not None:
        try:
            path = PathTemplate.compile(v["path"], known)
        except TemplateError as exc:
            problems.append(Problem(b.at("path"), f"backend.path: {exc}"))
    query = QueryTemplate((), v["list_format"])
    if "query" in b:
        qm = schema.mapping(b["query"], b.at("query"), "backend.query", problems)
        if qm is not None:
            try:
                query = QueryTemplate.compile(
                    {k: x for k, x in qm.items() if not k.startswith("_")}, known, v["list_format"]
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
    headers: dict[str, str] = v["headers"]
    forward: tuple[str, ...] = v["forward_headers"]
    for name in (*headers, *forward):
        if not _HEADER_RE.match(name) or name.lower() in _FORBIDDEN_FORWARD:
            problems.append(
                Problem(
                    b.at("headers" if name in headers else "forward_headers"),
                    f"backend: header {name!r} cannot be set or forwarded here",
                )
            )
    safe_read: bool = method == "GET" if v["safe_read"] is None else v["safe_read"]
    batch = None
    if "batch" in b and service is not None and path is not None:
        batch = _load_batch(b, service, method, path, v["list_format"], safe_read, problems)
    if len(problems) > before or service is None or path is None:
        return None
    return Backend(
        service,
        method,
        path,
        query,
        body,
        tuple((k, x) for k, x in headers.items()),
        tuple(h.lower() for h in forward),
        v["credentials"],
        safe_read,
        batch,
    )


def _load_batch(
    b: MarkedDict,
    service: str,
    method: str,
    path: PathTemplate,
    list_format: Literal["csv", "repeat"],
    safe_read: bool,
    problems: list[Problem],
) -> BatchSpec | None:
    m = schema.mapping(b["batch"], b.at("batch"), "backend.batch", problems)
    if m is None:
        return None
    before = len(problems)
    v = BATCH.read(m, problems, "backend.batch")
    if "{" in path.text:
        problems.append(
            Problem(b.at("batch"), "backend.batch: a batch endpoint's path has no parameters")
        )
    if not safe_read:
        problems.append(Problem(b.at("batch"), "backend.batch: needs a safe read (safe_read)"))
    if v["max_window"] < v["window"]:
        problems.append(Problem(b.at("batch"), "backend.batch: max_window is shorter than window"))
    if len(problems) > before:
        return None
    return BatchSpec(
        service,
        method,
        path.text,
        v["ids"],
        v["max"],
        v["items"],
        v["key"],
        v["match"],
        v["echo"],
        v["about"] or "",
        v["window"],
        list_format,
        v["max_window"],
    )


_Response = tuple[
    normalize.Plan,
    str | None,
    Mapping[int, int],
    tuple[normalize.Path, ...],
    Redirect | None,
    Hold | None,
]


def _load_response(
    d: MarkedDict, query_params: list[Param], problems: list[Problem]
) -> _Response | None:
    """The plan, the list parameter ``order_by`` follows, ``status_map`` and ``require``."""
    raw = d.get("response")
    if raw is None:
        return normalize.Plan(), None, {}, (), None, None
    r = schema.mapping(raw, d.at("response"), "response", problems)
    if r is None:
        return None
    before = len(problems)
    v = RESPONSE.read(r, problems, "response")
    pagination = _load_pagination(r, problems)
    order_by, order_param = _load_order_by(r, query_params, problems)
    status_map = _load_status_map(r, problems)
    fields = normalize.FieldOps(
        allow=frozenset(v["allow"]) if v["allow"] is not None else None,
        deny=frozenset(v["deny"]),
        rename=dict(v["rename"]),
        case=v["case"],
    )
    try:
        # Built even when another key failed (it then holds that key's default): its own
        # check (pagination with shape: object) is about two keys that were both read.
        plan = normalize.Plan(
            pick=v["pick"],
            pagination=pagination,
            fields=fields,
            order_by=order_by,
            empty_is_404=v["empty"] == "not_found",
            shape=v["shape"],
        )
    except ValueError as exc:
        problems.append(Problem(r.where, f"response: {exc}"))
        return None
    redirect = _load_redirect(r, problems)
    hold = _load_hold(r, problems)
    if len(problems) > before:
        return None
    return plan, order_param, status_map, v["require"], redirect, hold


def _load_redirect(r: MarkedDict, problems: list[Problem]) -> Redirect | None:
    if "redirect" not in r:
        return None
    m = schema.mapping(r["redirect"], r.at("redirect"), "response.redirect", problems)
    if m is None:
        return None
    v = REDIRECT.read(m, problems, "response.redirect")
    placeholder = v["placeholder"]
    if placeholder is not None and not placeholder.startswith(("https://", "http://")):
        problems.append(
            Problem(m.at("placeholder"), "response.redirect.placeholder: expected an http(s) URL")
        )
    if v["url"] is None:
        return None
    return Redirect(v["url"], v["state"], placeholder)


def _load_hold(r: MarkedDict, problems: list[Problem]) -> Hold | None:
    if "hold" not in r:
        return None
    m = schema.mapping(r["hold"], r.at("hold"), "response.hold", problems)
    if m is None:
        return None
    v = HOLD.read(m, problems, "response.hold")
    if v["every"] <= 0:
        problems.append(Problem(m.at("every"), "response.hold.every: expected more than 0s"))
    operation = v["operation"]
    if "operation" in m:
        for name in ("path", "until"):
            if name in m:
                problems.append(
                    Problem(
                        m.at(name), f"response.hold.{name}: not with operation (it waits on done)"
                    )
                )
        if operation is None:
            return None  # (its problem is reported)
        return Hold(None, (), v["within"], v["every"], operation)
    for name, hint in (("path", "e.g. data[0].state"), ("until", "e.g. [Completed]")):
        if name not in m:
            problems.append(
                Problem(m.where, f"response.hold.{name}: required without operation ({hint})")
            )
    if v["path"] is None or not v["until"]:
        return None
    return Hold(v["path"], v["until"], v["within"], v["every"])


def _load_pagination(r: MarkedDict, problems: list[Problem]) -> normalize.Pagination | None:
    if "pagination" not in r:
        return None
    if r["pagination"] is True:
        return normalize.Pagination()
    pm = schema.mapping(r["pagination"], r.at("pagination"), "response.pagination", problems)
    if pm is None:
        return None
    v = PAGINATION.read(pm, problems, "response.pagination")
    return normalize.Pagination(
        items=v["items"], next_cursor=v["next"], previous_cursor=v["previous"]
    )


def _load_order_by(
    r: MarkedDict, query_params: list[Param], problems: list[Problem]
) -> tuple[normalize.OrderBy | None, str | None]:
    """``order_by`` and the list query parameter it follows (relational: the route's list
    parameters decide which one, and whether there is one)."""
    if "order_by" not in r:
        return None, None
    ov = r["order_by"]
    key_text, param_name = ov, None
    if isinstance(ov, MarkedDict):
        ORDER_BY.read(ov, problems, "response.order_by")
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
        return normalize.OrderBy(rule_fields.path(key_text)), param_name
    except ValueError as exc:
        problems.append(Problem(r.at("order_by"), f"response.order_by: {exc}"))
        return None, None


def _load_status_map(r: MarkedDict, problems: list[Problem]) -> dict[int, int]:
    status_map: dict[int, int] = {}
    if "status_map" not in r:
        return status_map
    sm = schema.mapping(r["status_map"], r.at("status_map"), "response.status_map", problems)
    for k, v in (sm or {}).items():
        if not (k.isdigit() and 400 <= int(k) <= 599 and isinstance(v, int) and 400 <= v <= 599):
            problems.append(
                Problem(
                    sm.at(k) if sm else r.where,
                    "response.status_map: expected upstream "
                    f"status: our status (4xx/5xx), got {k}: {v!r}",
                )
            )
        else:
            status_map[int(k)] = v
    return status_map


def _load_cache(d: MarkedDict, known: frozenset[str], problems: list[Problem]) -> CachePolicy:
    raw = d.get("cache")
    if raw is None:
        return CachePolicy()
    if raw is False:
        return CachePolicy(enabled=False)
    c = schema.mapping(raw, d.at("cache"), "cache", problems)
    if c is None:
        return CachePolicy()
    v = CACHE.read(c, problems, "cache")
    for template in v["tags"]:
        for name in template.names:
            if name not in known:
                problems.append(
                    Problem(
                        c.at("tags"),
                        f"cache.tags: {template.text!r}: {{{name}}} is not a parameter of "
                        "the route",
                    )
                )
    return CachePolicy(
        enabled=v["enabled"],
        ttl=v["ttl"],
        stale_while_revalidate=v["stale_while_revalidate"],
        stale_if_error=v["stale_if_error"],
        not_found_ttl=v["not_found_ttl"],
        credentials=v["credentials"],
        when=_load_when(c, problems),
        tags=v["tags"],
    )


def _load_when(c: MarkedDict, problems: list[Problem]) -> tuple[CacheCondition, ...]:
    when = c.get("when")
    if when is None:
        return ()
    if not isinstance(when, MarkedList):
        problems.append(Problem(c.at("when"), "cache.when: expected a list of conditions"))
        return ()
    conditions: list[CacheCondition] = []
    for i, item in enumerate(when):
        ctx = f"cache.when[{i}]"
        w = schema.mapping(item, when.at(i), ctx, problems)
        if w is None:
            continue
        v = WHEN.read(w, problems, ctx)
        if "path" not in w or "ttl" not in w or ("equals" in w) == ("in" in w):
            problems.append(Problem(w.where, f"{ctx}: needs path, ttl and one of equals/in"))
            continue
        values = (v["equals"],) if "equals" in w else v["in"]
        if values is not None and v["path"] is not None and v["ttl"] is not None:
            conditions.append(
                CacheCondition(v["path"], values, v["ttl"], str(w["path"]), v["repoll"])
            )
    return tuple(conditions)


def _load_limits(d: MarkedDict, service: str, problems: list[Problem]) -> tuple[str, object]:
    """``limits.bucket``, else the route's service (``""`` when the backend failed), and
    ``limits.per_key_owner`` as read (None, ``openapi`` or a rate)."""
    limits = d.get("limits")
    if limits is None:
        return service, None
    lm = schema.mapping(limits, d.at("limits"), "limits", problems)
    if lm is None:
        return service, None
    values = LIMITS.read(lm, problems, "limits")
    bucket: str | None = values["bucket"]
    return (service if bucket is None else bucket), values["per_key_owner"]


# What an ordinary route has and a composite route leaves to its parts.
_NOT_COMPOSED = ("backend", "response", "cache", "limits")


def _load_draft(
    d: MarkedDict, file: str, file_tags: tuple[str, ...], problems: list[Problem]
) -> _Draft | None:
    """A composite route (``compose``) as far as its own file tells: its parameters are
    checked here, its parts once every route is known (:func:`_composites`)."""
    own = [key for key in _NOT_COMPOSED if key in d]
    for key in own:
        problems.append(
            Problem(
                d.at(key),
                f"{key}: a composite route (compose) has none of its own: each part is "
                "asked, normalized, cached and limited as its own route is",
            )
        )
    if own:  # reported above: not again as unknown keys
        rest = MarkedDict({k: v for k, v in d.items() if k not in own})
        rest.where, rest.key_where = d.where, d.key_where
        d = rest
    values = COMPOSITE.read(d, problems, "")
    endpoint: str | None = values["endpoint"]
    if endpoint is None:
        return None
    path_params, query_params, known = _route_params(d, endpoint, problems)
    if INCLUDE_PARAM in _declared_names(d, "query"):
        problems.append(
            Problem(
                d["query"].at(INCLUDE_PARAM),
                f"query.{INCLUDE_PARAM}: reserved: ?{INCLUDE_PARAM}= chooses a composite "
                "route's parts (docs/RULES.md, Composite routes); give the parameter another name",
            )
        )
    compose = schema.mapping(d["compose"], d.at("compose"), "compose", problems)
    if compose is None:
        return None
    tags = file_tags if values["tags"] is None else values["tags"]
    return _Draft(
        values, tuple(path_params), tuple(query_params), known, compose, tags, d.where, file
    )


def _composites(
    shipped: list[_Draft],
    user: list[_Draft],
    routes: list[Route],
    route_ids: Mapping[str, Route],
    problems: list[Problem],
) -> tuple[list[Composite], Router[Route | Composite]]:
    """The composite routes, their parts resolved against the final ``routes`` (a user's
    composite with a shipped composite's id replaces it), and the trie of both kinds."""
    router: Router[Route | Composite] = Router()
    for route in routes:
        router.add(route.method, route.endpoint, route)  # (added once already: no clash)
    replacing = {d.id for d in user}
    drafts = [*(d for d in shipped if d.id not in replacing), *user]
    by_id = {r.id: r for r in routes}
    seen: dict[str, Where] = {}
    out: list[Composite] = []
    for draft in drafts:
        other = route_ids.get(draft.id)
        first = other.where if other is not None else seen.get(draft.id)
        if first is not None:
            problems.append(Problem(draft.where, f"id: {draft.id!r} is already used at {first}"))
            continue
        seen[draft.id] = draft.where
        before = len(problems)
        composite = _resolve(draft, by_id, {d.id for d in drafts}, problems)
        if composite is None or len(problems) > before:
            continue
        try:
            router.add(composite.method, composite.endpoint, composite)
        except DuplicateRoute as exc:
            problems.append(Problem(draft.where, f"endpoint: {exc}"))
            continue
        out.append(composite)
    return out, router


def _resolve(
    draft: _Draft, by_id: Mapping[str, Route], composites: set[str], problems: list[Problem]
) -> Composite | None:
    c = draft.compose
    v = COMPOSE.read(c, problems, "compose")
    if "parts" not in c:
        return None  # COMPOSE.read reported it
    pm = schema.mapping(c["parts"], c.at("parts"), "compose.parts", problems)
    if pm is None:
        return None
    parts: list[Part] = []
    for name, raw in pm.items():
        if name.startswith("_"):
            continue
        ctx = f"compose.parts.{name}"
        if not _NAME_RE.match(name):
            problems.append(Problem(pm.at(name), f"{ctx}: part names are snake_case"))
            continue
        if name == MISSING_KEY:
            problems.append(
                Problem(pm.at(name), f"{ctx}: reserved: the answer lists missing parts there")
            )
            continue
        m = schema.mapping(raw, pm.at(name), ctx, problems)
        if m is not None:
            part = _load_part(m, name, ctx, draft, v["deadline"], by_id, composites, problems)
            if part is not None:
                parts.append(part)
    if not pm or not any(not k.startswith("_") for k in pm):
        problems.append(Problem(c.at("parts"), "compose.parts: expected at least one part"))
        return None
    main: str | None = v["main"]
    names = [p.name for p in parts]
    if main is not None and main not in pm:
        problems.append(
            Problem(c.at("main"), f"compose.main: {main!r} is not a part (parts: {list(pm)})")
        )
        return None
    if not parts:
        return None
    values = draft.values
    return Composite(
        id=draft.id,
        method=values["method"],
        endpoint=values["endpoint"],
        path_params=draft.path_params,
        query_params=draft.query_params,
        parts=tuple(parts),
        main=main if main is not None else names[0],
        summary=values["summary"],
        description=values["description"],
        tags=draft.tags,
        deprecated=values["deprecated"],
        example=values["example"],
        where=draft.where,
        file=draft.file,
    )


def _load_part(
    m: MarkedDict,
    name: str,
    ctx: str,
    draft: _Draft,
    default_deadline: float,
    by_id: Mapping[str, Route],
    composites: set[str],
    problems: list[Problem],
) -> Part | None:
    before = len(problems)
    v = PART.read(m, problems, ctx)
    deadline: float = default_deadline if v["deadline"] is None else v["deadline"]
    if deadline <= 0:
        problems.append(Problem(m.at("deadline"), f"{ctx}.deadline: expected more than 0s"))
    route_id: str | None = v["route"]
    route = by_id.get(route_id) if route_id is not None else None
    if route_id is not None and route is None and route_id in composites:
        problems.append(
            Problem(
                m.at("route"),
                f"{ctx}.route: {route_id} is a composite route: a part is an ordinary route",
            )
        )
    elif route_id is not None and route is None:
        problems.append(Problem(m.at("route"), f"{ctx}.route: no route has the id {route_id!r}"))
    elif route is not None and route.redirect is not None:
        problems.append(
            Problem(m.at("route"), f"{ctx}.route: {route_id} answers a redirect, not JSON")
        )
    template = QueryTemplate(())
    if "params" in m:
        pm = schema.mapping(m["params"], m.at("params"), f"{ctx}.params", problems)
        if pm is not None:
            try:
                template = QueryTemplate.compile(
                    {k: x for k, x in pm.items() if not k.startswith("_")}, draft.known
                )
            except TemplateError as exc:
                problems.append(Problem(m.at("params"), f"{ctx}.params: {exc}"))
    if route is not None and len(problems) == before:
        _check_part_params(m, ctx, route, template, draft, problems)
    if len(problems) > before or route is None:
        return None
    return Part(name, route, template, deadline, v["first"], v["pick"])


def _check_part_params(
    m: MarkedDict,
    ctx: str,
    route: Route,
    template: QueryTemplate,
    draft: _Draft,
    problems: list[Problem],
) -> None:
    """The part's parameters against its route's: each one the route has, every required
    one given, and each value as the route would take it (for the composite's examples)."""
    where = m.at("params") if "params" in m else m.where
    before = len(problems)
    own = {p.name: p for p in (*route.path_params, *route.query_params)}
    given = [name for name, _ in template.items]
    for name in given:
        if name not in own:
            problems.append(
                Problem(
                    where,
                    f"{ctx}.params.{name}: {route.id} has no such parameter "
                    f"(its parameters: {', '.join(own) or 'none'})",
                )
            )
    for p in own.values():
        if p.required and p.name not in given:
            problems.append(
                Problem(where, f"{ctx}.params: {route.id} needs its parameter {p.name!r}")
            )
    if len(problems) > before:
        return
    examples = {
        p.name: p.example if p.example is not None else p.default
        for p in (*draft.path_params, *draft.query_params)
    }
    for name, text in template.render(examples):
        try:
            own[name].parse([text])
        except ParamError as exc:
            problems.append(Problem(where, f"{ctx}.params.{name}: {exc.reason}"))


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
