"""``auth.clients``: access keys with properties, read and checked once at load.

A named client is an access key and what goes with it — the places it may be used from
(checked against the ``Roblox-Id`` header Roblox adds to HttpService requests), a limit per
game server, a limit for the whole key, its weight in the upstream budget and how its
answers are written. The plain ``auth.keys`` list stays as it is: those keys have none of
this. :data:`CLIENT` declares every key of one client once (reader, default, reference
text: ``docs/CONFIG.md`` is generated from it); :func:`read_clients` reads the map, with
``file:line`` problems, and never quotes a key in them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import schema
from .errors import Problem, Where
from .yamlsrc import MarkedDict, MarkedList

__all__ = [
    "CLIENT",
    "HTTPSERVICE_PER_SERVER",
    "PASS_METHODS",
    "PASS_READS",
    "NamedClient",
    "Rate",
    "rate",
    "read_clients",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0}
_PERIODS |= {"h": 3600.0, "hour": 3600.0}


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` requests per ``period`` seconds, up to ``count`` at once (at least one)."""

    count: float
    period: float = 1.0

    @property
    def per_second(self) -> float:
        return self.count / self.period

    @property
    def burst(self) -> int:
        return max(1, math.ceil(self.count))

    @property
    def window(self) -> float:
        """Seconds an empty bucket takes to fill (``burst`` at ``per_second``)."""
        return self.period * self.burst / self.count

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(self.period)
        return f"{self.count:g}/{unit}" if unit else f"{self.per_second:g}/s"


# What HttpService allows one game server (docs/ROBLOX.md, "Game servers and HttpService").
HTTPSERVICE_PER_SERVER = Rate(500, 60.0)


def rate(value: object) -> Rate | None:
    """``"500/min"``, ``"8/s"``, ``"1000/h"`` or a number of requests per second; ``0``:
    none (None)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return Rate(float(value)) if value else None
    if isinstance(value, str):
        match = _RATE_RE.match(value)
        if match:
            count = float(match.group(1))
            return Rate(count, _PERIODS[match.group(2)]) if count else None
        if value.strip() == "0":
            return None
    raise ValueError(
        f"expected a rate like '500/min', '8/s' or a number per second, got {schema.show(value)}"
    )


def _secret(value: object) -> str:
    # Never quote the value: it is (or should have been) a secret.
    if not isinstance(value, str) or not value:
        raise ValueError("expected the key as a non-empty string (use ${VAR})")
    return value


def _key_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(f"expected the name of an opencloud.keys entry, got {schema.show(value)}")
    return value


# The methods an ``opencloud_passthrough`` allow-list may name, and what ``true`` means.
PASS_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
PASS_READS = ("GET", "HEAD")


def _pass_methods(value: object) -> tuple[str, ...]:
    """``true`` (the reads: GET, HEAD), ``false`` (off) or a list of methods."""
    if isinstance(value, bool):
        return PASS_READS if value else ()
    if not isinstance(value, list) or not value:
        raise ValueError(
            f"expected true, false or a list of methods like [GET, HEAD], got {schema.show(value)}"
        )
    out: list[str] = []
    for item in value:
        method = item.upper() if isinstance(item, str) else None
        if method not in PASS_METHODS:
            raise ValueError(
                f"unknown method {schema.show(item)} (allowed: {', '.join(PASS_METHODS)})"
            )
        out.append(method)
    return tuple(dict.fromkeys(out))


def named_entries(
    data: MarkedDict, context: str, noun: str, problems: list[Problem]
) -> Iterator[tuple[str, str, MarkedDict]]:
    """The entries of a mapping of named things (``auth.clients``, ``opencloud.keys``): each
    one's name, its context (``<context>.<name>``) and its mapping; ``_comments`` skipped, a
    bad name or an entry that is not a mapping reported as a problem at its line (a name is
    letters, digits, ``_ . -``, at most 64) and left out."""
    for name, raw in data.items():
        if name.startswith("_"):
            continue  # a comment
        ctx = f"{context}.{name}"
        at = data.at(name)
        if not _NAME_RE.match(name):
            problems.append(
                Problem(
                    at, f"{ctx}: a {noun} name is letters, digits, '_', '.' or '-' (at most 64)"
                )
            )
            continue
        entry = schema.mapping(raw, at, ctx, problems)
        if entry is not None:
            yield name, ctx, entry


def _places(value: object) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, int) or isinstance(item, bool) or item < 1:
            raise ValueError(
                f"expected a list of place ids (positive integers), got {schema.show(value)}"
            )
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True, slots=True)
class NamedClient:
    """One entry of ``auth.clients`` (see :data:`CLIENT` for what each field means)."""

    name: str
    key: str = field(repr=False)  # the secret: never in a repr, a log line or an error
    places: tuple[int, ...] = ()
    roblox_id: str = "required"
    per_server: Rate | None = None
    rate: Rate | None = None  # None: limits.clients applies
    own_rate: bool = False  # True: ``rate`` was given (None then means no limit)
    weight: float = 1.0
    answer_mode: str = "http"
    opencloud_key: str = ""  # the name of the held Open Cloud key it may use ("": none)
    opencloud_passthrough: tuple[str, ...] = ()  # methods sent with it on passthrough (): off

    @property
    def bound(self) -> bool:
        """Is the key bound to places (``Roblox-Id`` checked)?"""
        return bool(self.places)

    @property
    def luau(self) -> bool:
        return self.answer_mode == "luau"


CLIENT = schema.Block(
    "auth.clients.<name>",
    (
        schema.Key(
            "key",
            "The access key (sent in `auth.header`). Write it as `${VAR}`; it is never logged "
            "or shown. Each key belongs to one client (and is not also in `auth.keys`).",
            _secret,
            required="required: the client's access key (e.g. key: ${GAME_KEY})",
        ),
        schema.Key(
            "places",
            "Place ids the key may be used from, checked against the `Roblox-Id` header "
            "Roblox adds to every HttpService request (the place id, docs/ROBLOX.md). "
            "Empty: not bound to a game. (No `universes`: the header names the place only, "
            "so list the places of the universe.)",
            _places,
            (),
        ),
        schema.Key(
            "roblox_id",
            "With `places`: `required` — a request without a `Roblox-Id` naming one of them "
            "is a 403 problem; `advisory` — it is served, logged and counted "
            "(`bloxproxy_roblox_id_total`). `Roblox-Id` is never forwarded upstream.",
            schema.choice("required", "advisory"),
            "required",
        ),
        schema.Key(
            "per_server",
            "Limit per game server: the key, the place in `Roblox-Id` and the client address "
            "(behind trusted proxies, `X-Forwarded-For`'s, as for `limits.clients`) have one "
            "bucket, `N/min` allowing N at once. Past it: 429 with `Retry-After`. `0`: none.",
            rate,
            shown="`500/min` with `places` (HttpService's limit per server), else none",
        ),
        schema.Key(
            "rate",
            "Limit of the whole key, all its servers together (`N/s`, `N/min`, or a number "
            "per second). `0`: none.",
            rate,
            shown="`limits.clients`",
        ),
        schema.Key(
            "weight",
            "The key's share of the upstream budget against other clients' (`1` each), "
            "carried on every upstream call made for the key (`Caller.weight`) for the "
            "upstream limiter to share its budget by. Today's limiter serves waiting calls "
            "first come, first served and does not read it yet.",
            schema.number(0.01, 1000.0),
            1.0,
        ),
        schema.Key(
            "answer_mode",
            "`http`: answers as they are. `luau`: every answer (errors included) is a `200` "
            "whose JSON body holds its status, headers and body — for `HttpService:GetAsync`, "
            "which raises on a non-2xx status (README, Game servers).",
            schema.choice("http", "luau"),
            "http",
        ),
        schema.Key(
            "opencloud_key",
            "The name of an Open Cloud key the proxy holds (`opencloud.keys`) that the "
            "client's requests to Open Cloud routes are sent with when they carry no "
            "`x-api-key` of their own (README, Open Cloud).",
            _key_name,
            shown="none",
        ),
        schema.Key(
            "opencloud_passthrough",
            "Send the held key (`opencloud_key`, required) on passthrough too: requests to "
            "the Open Cloud host's `/cloud/…` and `/legacy-…/…` paths "
            "(`/apis/cloud/v2/…`, or `Host: apis.<host_suffix>`) that carry no `x-api-key` "
            "or `Authorization` of their own go out with it, without the client's `Cookie`, "
            "so existing Open Cloud client libraries need not hold the key. `true`: for "
            "`GET` and `HEAD`; a list names the methods (`[GET, HEAD, POST]`, of "
            + ", ".join(f"`{m}`" for m in PASS_METHODS)
            + "); another method on those paths is a 403 problem, not sent. Other hosts "
            "and paths never get the key (README, Open Cloud).",
            _pass_methods,
            (),
            shown="`false`",
        ),
    ),
)


def _marked(value: Any, where: Where) -> Any:
    """``value`` (from an environment variable, plain YAML) as the loader's marked types."""
    if isinstance(value, MarkedDict | MarkedList):
        return value
    if isinstance(value, dict):
        out = MarkedDict({str(k): _marked(v, where) for k, v in value.items()})
        out.where, out.key_where = where, {}
        return out
    if isinstance(value, list):
        items = MarkedList(_marked(v, where) for v in value)
        items.where, items.item_where = where, []
        return items
    return value


def read_clients(
    value: object, where: Where, problems: list[Problem], context: str, plain_keys: Collection[str]
) -> tuple[NamedClient, ...]:
    """The ``auth.clients`` map (``value``, written at ``where``) as :class:`NamedClient`\\ s,
    every problem recorded as ``file:line: auth.clients.<name>.<key>: why``. ``plain_keys``
    are ``auth.keys``: a named client's key must not be one of them, nor another's."""
    data = _marked(value, where)
    if not isinstance(data, MarkedDict):
        problems.append(
            Problem(
                where, f"{context}: expected a mapping of client names, got {schema.show(value)}"
            )
        )
        return ()
    clients: list[NamedClient] = []
    owners: dict[str, str] = {key: "auth.keys" for key in plain_keys}
    for name, ctx, entry in named_entries(data, context, "client", problems):
        if "universes" in entry:
            problems.append(
                Problem(
                    entry.at("universes"),
                    f"{ctx}.universes: Roblox-Id names the place, not the universe: list the "
                    "universe's places in places",
                )
            )
            rest = MarkedDict({k: v for k, v in entry.items() if k != "universes"})
            rest.where, rest.key_where = entry.where, entry.key_where
            entry = rest
        before = len(problems)
        values = CLIENT.read(entry, problems, ctx)
        if len(problems) > before:
            continue
        key = values["key"]
        owner = owners.get(key)
        if owner is not None:
            problems.append(
                Problem(
                    entry.at("key"),
                    f"{ctx}.key: the same key as {owner} (a key belongs to one client)",
                )
            )
            continue
        owners[key] = ctx
        places = values["places"]
        if "roblox_id" in entry and not places:
            problems.append(
                Problem(entry.at("roblox_id"), f"{ctx}.roblox_id: applies to a key with places")
            )
            continue
        if values["opencloud_passthrough"] and not values["opencloud_key"]:
            problems.append(
                Problem(
                    entry.at("opencloud_passthrough"),
                    f"{ctx}.opencloud_passthrough: needs opencloud_key (the held key it sends)",
                )
            )
            continue
        per_server = values["per_server"]
        if "per_server" not in entry and places:
            per_server = HTTPSERVICE_PER_SERVER
        clients.append(
            NamedClient(
                name=name,
                key=key,
                places=places,
                roblox_id=values["roblox_id"],
                per_server=per_server,
                rate=values["rate"],
                own_rate="rate" in entry,
                weight=values["weight"],
                answer_mode=values["answer_mode"],
                opencloud_key=values["opencloud_key"] or "",
                opencloud_passthrough=values["opencloud_passthrough"],
            )
        )
    return tuple(clients)
