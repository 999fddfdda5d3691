"""Open Cloud's published limits: ``x-roblox-rate-limits`` of Roblox's OpenAPI documents,
imported into a data file beside a rule file, and read back when the rules load.

Roblox's Open Cloud v2 document (creator-docs ``content/en-us/reference/cloud/cloud.docs.json``)
and the all-APIs ``openapi.json`` beside it give each operation its limits as
``"x-roblox-rate-limits": {"perApiKeyOwner": {"period": "MINUTE", "maxInPeriod": 1000},
"perOauth2Authorization": {...}}``: how many requests all API keys of one owner (a user or a
group) may make to that operation per period. :func:`extract` takes the per-owner ones out of
one document, :func:`combine` puts several documents' together (``bloxproxy import-limits A
B ...``; an operation in two of them with two different limits is refused),
:func:`tables_text` writes the data file (``rules/<file>.limits.json`` beside
``rules/<file>.yaml``), naming each document it came from, and :func:`read_table` reads it; a
route with ``limits.per_key_owner: openapi`` gets the entry of its upstream operation (method
and path, parameters' names ignored). Nothing here is copied by hand: the shipped file is the
command's output for ``rules/sources/cloud.docs.subset.json`` and
``rules/sources/openapi.subset.json``, each a document with every key but each kept
operation's ``operationId``, ``summary`` and ``x-roblox-rate-limits`` dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "PERIODS",
    "Document",
    "OperationLimit",
    "TableError",
    "combine",
    "extract",
    "operation_key",
    "read_table",
    "tables_text",
]

PERIODS = {"SECOND": 1.0, "MINUTE": 60.0, "HOUR": 3600.0, "DAY": 86400.0}
_METHODS = ("get", "put", "post", "patch", "delete")
_PARAM = re.compile(r"\{[^{}/]*\}")
FORMAT = 1  # the data file's format version


class TableError(ValueError):
    """A data file (or document) that is not what it should be; the message says why."""


@dataclass(frozen=True, slots=True)
class OperationLimit:
    """One operation's published limit per API key owner."""

    method: str  # GET
    path: str  # /cloud/v2/users/{user_id} as the document writes it
    operation: str  # its operationId (or summary)
    max_in_period: int
    period: str  # SECOND, MINUTE, HOUR, DAY

    @property
    def seconds(self) -> float:
        return PERIODS[self.period]

    @property
    def per_second(self) -> float:
        return self.max_in_period / self.seconds

    def text(self) -> str:
        unit = {"SECOND": "s", "MINUTE": "min", "HOUR": "h", "DAY": "d"}[self.period]
        return f"{self.max_in_period}/{unit}"


def operation_key(method: str, path: str) -> tuple[str, str]:
    """What matches a route's upstream request to an operation: the method and the path
    with every ``{parameter}`` written ``{}`` (the names differ: ``{user}``, ``{user_id}``)."""
    return method.upper(), _PARAM.sub("{}", path)


def _limit(method: str, path: str, op: dict[str, Any]) -> OperationLimit | None:
    limits = op.get("x-roblox-rate-limits")
    per_owner = limits.get("perApiKeyOwner") if isinstance(limits, dict) else None
    if not isinstance(per_owner, dict):
        return None
    most, period = per_owner.get("maxInPeriod"), per_owner.get("period")
    if not isinstance(most, int) or isinstance(most, bool) or most < 1 or period not in PERIODS:
        return None
    name = op.get("operationId") or op.get("summary") or f"{method.upper()} {path}"
    return OperationLimit(method.upper(), path, str(name)[:200], most, str(period))


def extract(document: object, prefixes: tuple[str, ...] = ()) -> list[OperationLimit]:
    """Every operation of an OpenAPI ``document`` with a per-key-owner limit (whose path
    starts with one of ``prefixes``, when given), sorted by path and method. Operations
    without a usable limit (none, only ``perOauth2Authorization``, an unknown period, a max
    that is not a whole number >= 1) are left out; a document without ``paths`` is an error,
    and so are two operations that are one once parameter names are ignored
    (:func:`operation_key`) but publish different limits (with the same limit, the first
    one's path is kept: a route matches either)."""
    if not isinstance(document, dict) or not isinstance(document.get("paths"), dict):
        raise TableError("not an OpenAPI document: no 'paths' mapping")
    found: dict[tuple[str, str], OperationLimit] = {}
    for path, item in document["paths"].items():
        if not isinstance(path, str) or not isinstance(item, dict):
            continue
        if prefixes and not path.startswith(prefixes):
            continue
        for method in _METHODS:
            op = item.get(method)
            limit = _limit(method, path, op) if isinstance(op, dict) else None
            if limit is None:
                continue
            key = operation_key(limit.method, limit.path)
            first = found.setdefault(key, limit)
            if (first.max_in_period, first.period) != (limit.max_in_period, limit.period):
                raise TableError(
                    f"{limit.method} {first.path} ({first.text()}) and {limit.path} "
                    f"({limit.text()}) are one operation once parameter names are ignored"
                )
    return sorted(found.values(), key=lambda o: (o.path, o.method))


@dataclass(frozen=True, slots=True)
class Document:
    """One document's part of a table: where it came from and what :func:`extract` found."""

    name: str  # what error messages call it (the file given to the command)
    source: str  # what the table records (the repository, path and commit)
    version: str  # its info.version ("" when it has none)
    limits: tuple[OperationLimit, ...]


def combine(documents: Sequence[Document]) -> list[tuple[int, OperationLimit]]:
    """The operations of several documents, each with the index of the document it is taken
    from, sorted by path and method. An operation two documents list (the same once parameter
    names are ignored, :func:`operation_key`) with the same limit is taken once, from the first
    of them; with different limits which one a route would get is a guess, so that is a
    :class:`TableError` naming both."""
    found: dict[tuple[str, str], tuple[int, OperationLimit]] = {}
    for index, document in enumerate(documents):
        for limit in document.limits:
            key = operation_key(limit.method, limit.path)
            first_index, first = found.setdefault(key, (index, limit))
            if (first.max_in_period, first.period) != (limit.max_in_period, limit.period):
                raise TableError(
                    f"{limit.method} {first.path} is {first.text()} in "
                    f"{documents[first_index].name} but {limit.path} is {limit.text()} in "
                    f"{document.name}: one operation with two published limits"
                )
    return sorted(found.values(), key=lambda entry: (entry[1].path, entry[1].method))


def tables_text(documents: Sequence[Document]) -> str:
    """The data file: JSON, each document's source (and version) in ``sources``, then one
    operation a line (diffs stay readable), each naming its document by index."""
    head: dict[str, Any] = {
        "format": FORMAT,
        "generated_by": "bloxproxy import-limits",
        "sources": [
            {"source": d.source, "document_version": d.version}
            if d.version
            else {"source": d.source}
            for d in documents
        ],
    }
    lines = [
        orjson.dumps(
            {
                "method": o.method,
                "path": o.path,
                "operation": o.operation,
                "per_key_owner": {"max_in_period": o.max_in_period, "period": o.period},
                "document": index,
            }
        ).decode()
        for index, o in combine(documents)
    ]
    body = ",\n    ".join(lines)
    text = orjson.dumps(head).decode()[:-1]
    return (
        f'{text},\n  "operations": [\n    {body}\n  ]\n}}\n'
        if lines
        else text + ', "operations": []}\n'
    )


def read_table(raw: bytes) -> dict[tuple[str, str], OperationLimit]:
    """A data file's operations by :func:`operation_key`; :class:`TableError` says what is
    wrong with a file that is not one."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise TableError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise TableError(f"expected a limits table of format {FORMAT} (bloxproxy import-limits)")
    ops = data.get("operations")
    if not isinstance(ops, list):
        raise TableError("expected an 'operations' list")
    out: dict[tuple[str, str], OperationLimit] = {}
    seen: dict[tuple[str, str], int] = {}
    for i, op in enumerate(ops):
        try:
            limit = op["per_key_owner"]
            entry = OperationLimit(
                str(op["method"]).upper(),
                str(op["path"]),
                str(op["operation"]),
                int(limit["max_in_period"]),
                str(limit["period"]),
            )
        except (KeyError, TypeError, ValueError):
            raise TableError(
                f"operations[{i}]: expected method, path, operation, per_key_owner"
            ) from None
        if entry.period not in PERIODS or entry.max_in_period < 1:
            raise TableError(
                f"operations[{i}]: expected a period of {', '.join(PERIODS)} and a max >= 1"
            )
        key = operation_key(entry.method, entry.path)
        if key in seen:
            raise TableError(
                f"operations[{i}]: {entry.method} {entry.path} is operations[{seen[key]}] "
                "again (parameter names are ignored)"
            )
        seen[key] = i
        out[key] = entry
    return out
