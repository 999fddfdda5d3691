"""The rule vocabulary, declared once: every key of a rule file, how it is read, its default
and its reference text.

Each :class:`~bloxproxy.schema.Block` is one mapping of a rule file (the file, a route, a
parameter, ``backend``, ``response``…). :mod:`bloxproxy.rules` reads rule files through
these blocks (unknown keys, missing required keys and every key that has a reader come from
here) and keeps only what is genuinely relational: templates naming the route's parameters,
``order_by`` against the list parameters, a default that is a valid value of its parameter.
The key tables of ``docs/RULES.md`` are generated from these declarations
(``python -m bloxproxy.docgen``), and a test fails when they differ.
"""

from __future__ import annotations

import re
from typing import Any

from . import keyconfig, normalize, schema
from .config import SERVICE_NAME_RE
from .params import PARAM_TYPES
from .schema import Block, Key
from .tagging import TagTemplate, compile_tag

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
CLEAN_PATH_RE = re.compile(r"^/v[0-9]+(/[A-Za-z0-9._~-]+|/\{[a-z_][a-z0-9_]*\})+$")
_CLEAN_PATH_HINT = "expected a clean path like '/v1/users/{user_id}' (first segment v<N>)"
_ID_RE = re.compile(r"^[a-z0-9_.-]+$")


# -- readers ---------------------------------------------------------------------------------


def per_key_owner(value: object) -> object:
    """``openapi`` or a rate (``1000/min``: a :class:`~bloxproxy.keyconfig.Rate`)."""
    if value == "openapi":
        return "openapi"
    found = keyconfig.rate(value)
    if found is None:
        raise ValueError("expected openapi or a rate like '1000/min', not 0")
    return found


def service_name(value: object) -> str:
    text = schema.string(value)
    if not SERVICE_NAME_RE.match(text):
        raise ValueError(f"expected a service name like 'users', got {text!r}")
    return text


def route_id(value: object) -> str:
    text = schema.string(value)
    if not _ID_RE.match(text):
        raise ValueError(f"expected an id like 'users.get', got {text!r}")
    return text


def endpoint(value: object) -> str:
    if not isinstance(value, str) or not CLEAN_PATH_RE.match(value):
        raise ValueError(f"{_CLEAN_PATH_HINT}, got {value!r}")
    return value


def path(value: object) -> normalize.Path:
    """``data[0].user``: a path into a JSON value."""
    return normalize.parse_path(schema.string(value))


def optional_path(value: object) -> normalize.Path | None:
    """A path, or ``null`` for "there is none"."""
    return None if value is None else path(value)


def paths(value: object) -> tuple[normalize.Path, ...]:
    return tuple(path(text) for text in schema.string_list(value))


def when_path(value: object) -> tuple[str | int, ...]:
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


def path_template(value: object) -> str:
    """The text of an upstream path template (compiled by the route, which knows its names)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a path template like /v1/users/{{user_id}}, got {value!r}")
    return value


def regex(value: object) -> re.Pattern[str]:
    try:
        return re.compile(schema.string(value))
    except re.error as exc:
        raise ValueError(f"invalid regex: {exc}") from None


def value_list(value: object) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise ValueError("expected a list")
    return tuple(value)


def tag_templates(value: object) -> tuple[TagTemplate, ...]:
    """``["user:{user_id}"]``: tag templates (their names are checked against the route)."""
    return tuple(compile_tag(text) for text in schema.string_list(value))


def anything(value: object) -> object:
    return value


# -- the blocks ------------------------------------------------------------------------------

FILE = Block(
    "file",
    (
        Key(
            "service",
            "Default `backend.service` of every route in the file: a Roblox service name "
            "(`users`, `games`, `apis`; lower-case letters, digits and `-`), the `{service}` "
            "of the config's `upstream.base_url`.",
            service_name,
        ),
        Key(
            "tags",
            "Default `tags` of every route in the file (a list of strings).",
            schema.string_list,
            (),
        ),
        Key(
            "routes",
            "The list of routes (see [Routes](#routes)). An empty list is allowed.",
            required="expected a list of routes",
        ),
    ),
)

ROUTE = Block(
    "route",
    (
        Key(
            "endpoint",
            "The clean path, `/v<N>/...`: the first segment is a version (`v1`, `v2`…); every "
            "other segment is either literal text (`[A-Za-z0-9._~-]+`) or one whole-segment "
            "parameter `{snake_name}`. No trailing slash, no empty segments, no query. Each "
            "`{name}` must be declared under `params`, and may appear only once.",
            endpoint,
            required=f"{_CLEAN_PATH_HINT}, got None",
        ),
        Key(
            "id",
            "Stable route id, `[a-z0-9_.-]+` (convention: `family.name`, e.g. `users.get`), "
            "unique across all files, except that a route in your own files (`rules.paths`) "
            "with a shipped route's id replaces that route. Used by "
            '`POST /_bloxproxy/admin/purge` (`{"route": "users.get"}`) and as the OpenAPI '
            "operation id.",
            route_id,
            shown='`"GET <endpoint>"`',
        ),
        Key(
            "method",
            "The client method. Only `GET` is accepted: the clean API is read-only. `HEAD` is "
            "answered by the `GET` route.",
            schema.choice("GET"),
            "GET",
        ),
        Key("summary", "One line for the docs.", schema.string, "", shown="none"),
        Key("description", "Longer text for the docs (Markdown).", schema.string, "", shown="none"),
        Key(
            "tags",
            "Docs grouping (a list of strings); replaces the file's `tags`.",
            schema.string_list,
            shown="file `tags`",
        ),
        Key("deprecated", "`true` marks the route deprecated in the docs.", schema.boolean, False),
        Key(
            "example",
            "An example of the normalized response, for the docs (any YAML value; not validated). "
            "Shown in OpenAPI instead of the fake's sample answer, and one of the samples the "
            "200 schema's members are inferred from.",
            anything,
        ),
        Key(
            "params",
            "Path parameters: a mapping `name: {type: ..., ...}` (see "
            "[Parameters](#parameters)). Exactly the `{names}` of `endpoint`: required when it "
            "has any.",
        ),
        Key(
            "query",
            "Query parameters the clean route accepts: a mapping `name: {type: ..., ...}`. A "
            "name cannot be both a path and a query parameter.",
        ),
        Key(
            "backend",
            "The upstream request (see [Backend](#backend-the-upstream-request)).",
            required="required (the upstream request)",
        ),
        Key(
            "response",
            "How the upstream JSON is normalized (see [Response](#response-normalization)).",
            shown="snake_case keys, nothing else",
        ),
        Key(
            "cache",
            "Caching policy (see [Cache](#cache)); `cache: false` turns caching off for the route.",
            shown="the cache defaults below",
        ),
        Key(
            "limits",
            "Which upstream limiter bucket the route draws from (see [Limits](#limits)).",
            shown="its service's bucket",
        ),
    ),
)

PARAM = Block(
    "param",
    (
        Key(
            "type",
            "`int`, `string`, `bool`, `int_list` or `string_list` (see [Types](#types)).",
            schema.choice(*PARAM_TYPES),
            "string",
            required=f"required ({', '.join(PARAM_TYPES)})",
            applies="all",
        ),
        Key(
            "required",
            "`true`: the parameter must be present (400 otherwise). Path parameters are always "
            "required.",
            schema.boolean,
            False,
            applies="query",
        ),
        Key(
            "default",
            "Value used when the parameter is absent (otherwise it is absent: `null` for the "
            "templates). Checked at load against the type and every constraint. Lists: a YAML "
            'list or `"1,2"`. A path parameter cannot have one.',
            applies="query",
        ),
        Key(
            "example",
            "Example value for the docs and the docs page's try-it form; checked at load like "
            "`default`. The route's sample answer (OpenAPI) is the fake's answer to these.",
            applies="all",
        ),
        Key("description", "Docs text.", schema.string, "", shown="none", applies="all"),
        Key(
            "enum",
            "Non-empty list of allowed values: integers for `int`/`int_list`, strings for "
            "`string`/`string_list` (not for `bool`).",
            applies="scalars, list items",
        ),
        Key("min", "Smallest allowed value.", schema.integer(), applies="`int`, `int_list` items"),
        Key("max", "Largest allowed value.", schema.integer(), applies="`int`, `int_list` items"),
        Key(
            "min_length",
            "Minimum length in characters.",
            schema.integer(0),
            0,
            applies="strings, `string_list` items",
        ),
        Key(
            "max_length",
            "Maximum length in characters.",
            schema.integer(1),
            1000,
            applies="strings, `string_list` items",
        ),
        Key(
            "pattern",
            "A Python regular expression the **whole** value must match (`[A-Za-z0-9_]+`; no "
            "`^…$` needed). Compiled at load; an invalid regex is a load error.",
            regex,
            applies="strings, `string_list` items",
        ),
        Key(
            "min_items",
            "Fewest items after dropping duplicates.",
            schema.integer(1),
            1,
            applies="lists",
        ),
        Key(
            "max_items",
            "Most items after dropping duplicates. Roblox's batch limits: users by id 200, "
            "`games?universeIds=` 50, presence 50.",
            schema.integer(1),
            100,
            applies="lists",
        ),
    ),
)

BACKEND = Block(
    "backend",
    (
        Key(
            "service",
            "The Roblox service (host) to call: `users` → `https://users.roblox.com` with the "
            "default `upstream.base_url`. Required here or at file level.",
            service_name,
            shown="file `service`",
        ),
        Key(
            "method",
            "Upstream method: `GET`, `POST`, `PUT`, `PATCH` or `DELETE`. A clean `GET` may "
            "become an upstream `POST` (Roblox's batch lookups).",
            schema.choice(*METHODS),
            "GET",
        ),
        Key(
            "path",
            "Upstream path template: absolute (`/…`), no `?`, `#`, `\\`, spaces, `//`, `.` or "
            "`..` segments.",
            path_template,
            required="required, e.g. /v1/users/{user_id}",
        ),
        Key(
            "query",
            "Upstream query: a mapping `upstreamName: template`, sent in the written order. "
            'Values are `"{name}"`, text with `{name}` inside, or constants (`returnPolicy: '
            "PlaceHolder`, `count: 10`, `flag: true` → `true`). Keys and values are "
            "percent-encoded; commas stay literal.",
        ),
        Key(
            "list_format",
            "How a list parameter in `query` is sent: `csv` (`userIds=1,156`) or `repeat` "
            "(`userIds=1&userIds=156`).",
            schema.choice("csv", "repeat"),
            "csv",
        ),
        Key(
            "body",
            "A JSON body template (mappings, lists, strings, numbers, booleans, null), sent "
            "with `Content-Type: application/json`. Not allowed when `method` is `GET`.",
        ),
        Key(
            "headers",
            "Constant headers set on the upstream request: a mapping of header name to string "
            "value.",
            schema.string_map,
            {},
            shown="none",
        ),
        Key(
            "forward_headers",
            "Client request headers copied upstream when present (e.g. `[Accept-Language]`). "
            "They are also part of the cache key (the cache varies on them).",
            schema.string_list,
            (),
            shown="none",
        ),
        Key(
            "credentials",
            "`none`: the client's `Cookie`, `Authorization` and `x-api-key` never go upstream. "
            "`forward`: they are sent (for routes that need the caller's identity); see "
            "`cache.credentials` for how such answers are cached. `api_key`: only the "
            "client's `x-api-key` is sent (Open Cloud; never its cookie).",
            schema.choice("none", "forward", "api_key"),
            "none",
        ),
        Key(
            "safe_read",
            "Marks the upstream request as a read: only safe reads are cached and retried. Set "
            "it on POSTs Roblox documents as reads (`POST users.roblox.com/v1/users`, "
            "`/v1/usernames/users`, `presence/v1/presence/users`).",
            schema.boolean,
            shown="`true` for `GET`, else `false`",
        ),
        Key(
            "batch",
            "The upstream request is a batch endpoint: how it takes ids and answers them (see "
            "[Batches](#batches-entities-and-micro-batching)). Its answers are then cached per "
            "id, any request to it — one id or many, clean or passthrough — is assembled from "
            "those entries, and the missing ids of concurrent requests go upstream together.",
            shown="none",
        ),
    ),
)

BATCH = Block(
    "backend.batch",
    (
        Key(
            "ids",
            "The query parameter (`GET`) or top-level body field (`POST`) that carries the "
            "list of ids, as Roblox names it: `userIds`, `universeIds`, `usernames`.",
            schema.string,
            required="required: the parameter or body field with the ids, e.g. userIds",
        ),
        Key(
            "max",
            "The endpoint's cap: the most ids one call may carry (more is Roblox's 400). A "
            "request for more ids goes upstream as it is.",
            schema.integer(1, 1000),
            required="required: the endpoint's cap, e.g. 100",
        ),
        Key(
            "items",
            "The top-level key of the answer's list (`data`, `userPresences`).",
            schema.string,
            "data",
        ),
        Key(
            "key",
            "The field of an item that says which id it answers (`id`, `targetId`, `userId`, "
            "`requestedUsername`). An id Roblox leaves out of the answer is cached as absent.",
            schema.string,
            required="required: the item field naming its id, e.g. id",
        ),
        Key(
            "match",
            "`exact` (numeric ids) or `case_insensitive` (names: `Builderman` is `builderman`).",
            schema.choice("exact", "case_insensitive"),
            "exact",
        ),
        Key(
            "echo",
            "The `key` field repeats the id as the caller wrote it (usernames' "
            "`requestedUsername`): each caller's answer then says its own spelling.",
            schema.boolean,
            False,
        ),
        Key(
            "about",
            "What the ids are (`user`, `group`, `universe`, `asset`): the entity tag of each "
            "entry (`user:156`).",
            service_name,
            shown="none",
        ),
        Key(
            "window",
            "How long a batch waits for other callers' ids once the upstream limiter has a "
            "slot for it (while it has none, the batch keeps filling anyway).",
            schema.duration,
            "5ms",
        ),
        Key(
            "max_window",
            "How long a batch waits instead when companions are expected: the endpoint's new "
            "ids have lately been asked at least once per max_window (an arrival rate over "
            "the last 2 s). A lone lookup pays `window`; a steady trickle of single lookups, "
            "which no limiter queue would merge, is merged into one call per max_window.",
            schema.duration,
            "250ms",
        ),
    ),
)

RESPONSE = Block(
    "response",
    (
        Key(
            "pick",
            "A path selecting part of the body (`data`, `data[0]`, `userPresences`); with "
            "`pagination`, applied to each item.",
            path,
            shown="whole body",
        ),
        Key(
            "pagination",
            "`true` for Roblox's usual cursor pagination (`data`, `nextPageCursor`, "
            "`previousPageCursor`), or a mapping of the paths (see "
            "[Pagination keys](#pagination-keys)).",
        ),
        Key(
            "allow",
            "Upstream top-level keys to keep (a list).",
            schema.string_list,
            shown="all keys",
        ),
        Key("deny", "Upstream top-level keys to drop (a list).", schema.string_list, (), "none"),
        Key(
            "rename",
            "`{upstreamKey: our_key}`; the new name is used verbatim (no case conversion).",
            schema.string_map,
            {},
            "none",
        ),
        Key(
            "case",
            "Key style: `snake` (`displayName` → `display_name`, `userIDs` → `user_ids`), "
            "`camel` (`user_id` → `userId`) or `keep`.",
            schema.choice("snake", "camel", "keep"),
            "snake",
        ),
        Key(
            "order_by",
            "Put a list back in the order of the requested ids: the key path of each upstream "
            "item (`id`, `targetId`, `userId`), or `{key: ..., param: ...}` naming the list "
            "query parameter to follow (see [Order-by keys](#order-by-keys)). Without `param`, "
            "the route must have exactly one list query parameter.",
        ),
        Key(
            "empty",
            "`not_found`: an empty result is a 404 (`keep`: answered as is).",
            schema.choice("keep", "not_found"),
            "keep",
        ),
        Key(
            "shape",
            "`object` or `list` insists on that shape (a 502 otherwise); `auto` accepts both. "
            "`object` cannot be combined with `pagination`.",
            schema.choice("auto", "object", "list"),
            "auto",
        ),
        Key(
            "status_map",
            "`{upstream status: our status}`, both `400` to `599`, e.g. `{400: 404}`.",
        ),
        Key(
            "require",
            "Paths that must be present and non-null in the upstream body, else 404 "
            '(`require: [universeId]` for `{"universeId": null}`).',
            paths,
            (),
            "none",
        ),
        Key(
            "redirect",
            "Answer `302 Found` to a URL in the upstream body instead of a JSON body (image "
            "endpoints for `<img>` tags and embeds; see [Redirect keys](#redirect-keys)).",
            shown="none",
        ),
        Key(
            "hold",
            "Hold the answer until a value in the upstream body says it is done (a thumbnail "
            "`Completed`), asking again within a deadline (see [Hold keys](#hold-keys)).",
            shown="none",
        ),
    ),
)

REDIRECT = Block(
    "response.redirect",
    (
        Key(
            "url",
            "Path of the URL in the upstream body (`data[0].imageUrl`); only `https://` and "
            "`http://` URLs are followed.",
            path,
            required="required: the path of the URL, e.g. data[0].imageUrl",
        ),
        Key(
            "state",
            "Path of a state that says why there is no URL (`data[0].state`: `Pending`, "
            "`Blocked`…), named in the answer when there is none.",
            path,
            shown="none",
        ),
        Key(
            "placeholder",
            "Where to redirect when the body has no URL (an image of your own). Without it, "
            "no URL is a `404` problem (`code: no_image`) naming the state.",
            schema.string,
            shown="none: 404",
        ),
    ),
)

HOLD = Block(
    "response.hold",
    (
        Key(
            "path",
            "Path of the value to wait on (`data[0].state`). Not with `operation`.",
            path,
            shown="required without `operation`",
        ),
        Key(
            "until",
            "The values that end the wait (`[Completed, Blocked]`). Not with `operation`.",
            schema.string_list,
            shown="required without `operation`",
        ),
        Key(
            "operation",
            "The answer is an Open Cloud long-running Operation: the path of its name in "
            "the body (`path`: `users/156/operations/…`). The wait ends when its `done` is "
            "`true`; meanwhile the proxy polls `GET /cloud/v2/<name>` (same service and "
            "credentials). Still not done after `within`: a `202` with the operation's name "
            "and `Retry-After`.",
            path,
        ),
        Key(
            "within",
            "The longest the client waits; past it, the answer as it stands.",
            schema.duration,
            "5s",
        ),
        Key("every", "How often Roblox is asked again meanwhile.", schema.duration, "1s"),
    ),
)

PAGINATION = Block(
    "response.pagination",
    (
        Key("items", "Path of the list of items.", path, "data"),
        Key("next", "Path of the next-page cursor.", path, "nextPageCursor"),
        Key(
            "previous",
            "Path of the previous-page cursor; `null` when the upstream has none (then every "
            "empty page counts as the first for `empty: not_found`).",
            optional_path,
            "previousPageCursor",
        ),
    ),
)

ORDER_BY = Block(
    "response.order_by",
    (
        Key(
            "key",
            "The key path of each upstream item (`id`, `targetId`, `userId`), read before "
            "`pick`, renaming and case conversion.",
            shown="required",
        ),
        Key(
            "param",
            "The list query parameter whose order the answer follows.",
            shown="the only list query parameter",
        ),
    ),
)

CACHE = Block(
    "cache",
    (
        Key(
            "enabled",
            "`false` turns caching off for the route (same as `cache: false`). The config's "
            "`cache.enabled: false` turns it off everywhere.",
            schema.boolean,
            True,
        ),
        Key("ttl", "How long a 2xx answer is fresh.", schema.duration, "60s"),
        Key(
            "stale_while_revalidate",
            "Window after `ttl` in which a stale answer is served while it is refreshed in the "
            "background.",
            schema.duration,
            "0s",
        ),
        Key(
            "stale_if_error",
            "Window after `ttl` in which a stale answer stands in for a failed upstream call.",
            schema.duration,
            "0s",
        ),
        Key(
            "not_found_ttl",
            "How long a 404/410 answer is cached.",
            schema.duration,
            shown="config `cache.negative_ttl` (30s)",
        ),
        Key(
            "credentials",
            "Credentialed requests: `bypass` (no cache) or `per_credential` (entries private "
            "to each credential).",
            schema.choice("bypass", "per_credential"),
            "bypass",
        ),
        Key(
            "tags",
            "Entity tags of the route's entries, as templates filled with its parameters: "
            "`user:{user_id}` (a list parameter gives one tag per item; a parameter "
            "left out, none). A purge by tag drops every entry carrying it (see "
            "[Tags](#tags-and-purge-by-entity)). An entity entry of `backend.batch` is tagged "
            "`<about>:<id>` without this.",
            tag_templates,
            (),
            shown="none",
        ),
        Key(
            "when",
            "Conditions that shorten the TTL of particular answers (see "
            "[`when` conditions](#when-conditions)).",
            shown="none",
        ),
    ),
)

WHEN = Block(
    "cache.when",
    (
        Key(
            "path",
            "Path into the upstream body; `[*]` matches any list item (`data[*].state`, "
            "`data[0].state`, `universeId`). A missing key never matches (it is not null).",
            when_path,
            shown="required",
        ),
        Key(
            "equals",
            "The value to look for (string, number, boolean or null).",
            anything,
            shown="one of `equals`/`in`",
        ),
        Key("in", "A list of values to look for.", value_list, shown="one of `equals`/`in`"),
        Key(
            "ttl",
            "A duration: the TTL when the condition matches.",
            schema.duration,
            shown="required",
        ),
        Key(
            "repoll",
            "Ask again in the background this many times (at most 10), each time an entry "
            "that matches expires, so that the next client gets the finished answer (a "
            "`Pending` thumbnail). `0`: only when a client asks.",
            schema.integer(0, 10),
            0,
        ),
    ),
)

LIMITS = Block(
    "limits",
    (
        Key(
            "bucket",
            "The upstream limiter bucket the route draws from (a name like a service name: "
            "lower-case letters, digits, `-`), its rate set per bucket in the config's "
            "upstream limits (see `docs/CONFIG.md`). Meant for giving a heavily limited "
            "endpoint its own bucket (`users-search`) so it cannot starve the rest of its "
            "service.",
            service_name,
            shown="`backend.service`",
        ),
        Key(
            "per_key_owner",
            "Open Cloud: the operation's limit per API key owner (Roblox counts all keys of "
            "one user or group together). `openapi`: the one Roblox publishes for the "
            "route's upstream operation (`x-roblox-rate-limits`), from the data file beside "
            "the rule file (`<file>.limits.json`, written by `bloxproxy import-limits`); or a "
            "rate (`1000/min`). A request sent with a key the proxy holds draws on one "
            "scope per route and owner (`opencloud-user@group-7`), seeded with it and "
            "learned from Roblox's `x-ratelimit-*` headers like any scope.",
            per_key_owner,
            shown="none",
        ),
    ),
)


def _route_key(name: str) -> Key:
    return next(k for k in ROUTE.keys if k.name == name)


COMPOSITE = Block(
    "composite route",
    (
        *(
            _route_key(n)
            for n in (
                "endpoint",
                "id",
                "method",
                "summary",
                "description",
                "tags",
                "deprecated",
                "example",
                "params",
                "query",
            )
        ),
        Key(
            "compose",
            "The parts this route is made of (see [Composite routes](#composite-routes)): a "
            "route with `compose` has no `backend`, `response`, `cache` or `limits` of its own; "
            "each part is an ordinary route with its own.",
            required="required (the parts of a composite route)",
        ),
    ),
)

COMPOSE = Block(
    "compose",
    (
        Key(
            "parts",
            "The parts, a mapping `name: {route: ..., ...}` in the order the answer lists them "
            "(see [Part keys](#part-keys)). Names are snake_case; `missing` is the answer's own "
            "key and cannot be a part's name.",
            required="required: a mapping of part names to parts",
        ),
        Key(
            "main",
            "The part the answer cannot do without (the user of a profile): always asked, "
            "whatever `include` says; when it is missing the whole answer is that part's "
            "problem (a 404 for an unknown user), with `missing` listing every missing part.",
            schema.string,
            shown="the first part",
        ),
        Key(
            "deadline",
            "How long each part may take unless it says otherwise; past it the part is "
            "reported missing with reason `timeout` (its upstream call, if any, goes on and "
            "fills the part's cache entry for the next request).",
            schema.duration,
            "2s",
        ),
    ),
)

PART = Block(
    "compose.parts",
    (
        Key(
            "route",
            "The id of the clean route that makes this part (`users.batch`), shipped or your "
            "own; a redirect (image) route cannot be a part.",
            route_id,
            required="required: the id of the route that makes this part",
        ),
        Key(
            "params",
            "The part route's parameters: a mapping `name: template`, each template a literal "
            '(`150x150`) or naming the composite\'s own parameters (`"{user_id}"`), rendered '
            "like `backend.query` and then parsed by the part route's parameter as a client's "
            "value would be. Every required parameter of the part route must be given; the "
            "others take their defaults.",
            shown="none",
        ),
        Key(
            "deadline",
            "How long this part may take (overrides `compose.deadline`).",
            schema.duration,
            shown="`compose.deadline`",
        ),
        Key(
            "first",
            "`true`: the part route answers a list (`{data: [...]}`, e.g. a batch route asked "
            "for one id) and the part is its first item; an empty list is the part missing "
            "with reason `not found`.",
            schema.boolean,
            False,
        ),
        Key(
            "pick",
            "A path into the part's answer (after `first`) to keep only that value: `count` "
            "makes `{count: 47}` the number `47`. Missing there: reason `not found`.",
            optional_path,
        ),
    ),
)

BLOCKS: tuple[Block, ...] = (
    FILE,
    ROUTE,
    PARAM,
    BACKEND,
    BATCH,
    RESPONSE,
    REDIRECT,
    HOLD,
    PAGINATION,
    ORDER_BY,
    CACHE,
    WHEN,
    LIMITS,
    COMPOSITE,
    COMPOSE,
    PART,
)
