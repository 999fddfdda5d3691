"""Turn a Roblox JSON response into bloxproxy's normalized style, following a route's ``Plan``.

The rule loader builds one frozen :class:`Plan` per route at load time; :func:`apply` runs it on
each upstream body (cache misses only, but on the request path, so it is pure and cheap).
``apply(plan, body, requested_ids)`` works in this order:

1. **Extract.** With ``plan.pagination``, the items are ``get_path(body, pagination.items)`` and
   must be a list; the cursors are read from their paths and must be a string or null (missing,
   null and ``""`` all mean "no cursor"); any other shape raises :class:`ShapeError`. ``pick``
   then applies to *each item* (e.g. ``user`` unwraps ``{"user": {...}, "role": {...}}``); an
   item without the picked path becomes null. Without pagination, ``pick`` selects one part of
   the body (``data[0]``, ``data``, ``userPresences``); a missing part is "empty" (null).
2. **Order.** With ``order_by`` and ``requested_ids`` given, a list result is reordered to follow
   ``requested_ids``. Ids compare as strings (``156`` matches ``"156"``); an id requested twice
   keeps its first position; items whose id was not requested (or that lack the key) follow, in
   their upstream order. The key path is read from the *upstream* list element: before the
   per-item ``pick``, key filtering, renaming and case conversion.
3. **Empty.** With ``empty_is_404``, :class:`EmptyResult` is raised when the extracted value is
   null/missing, ``{}`` or ``[]``. A paginated list only counts as empty on the *first* page: the
   page is empty and there is no previous cursor (a route whose upstream has no previous cursor
   treats every empty page as the first). The check runs before key filtering, so an ``allow``
   list that removes every key never turns a found object into a 404.
4. **Fields.** On each dict item of a list, or on the object: drop keys not in ``allow`` (when
   set), drop ``deny`` keys, rename (the new name is used verbatim), then convert the remaining
   key names to ``case``, recursively through nested dicts and lists. Filtering and renaming
   only look at the top-level keys of an item. Non-dict items (ints, strings) pass through.
5. **Envelope.** A list becomes ``{"data": [...], "next_cursor": ..., "previous_cursor": ...}``
   (cursors null without pagination). A dict is returned as is. Null is returned as null, except
   that ``shape: list`` turns it into an empty list envelope. Any other scalar (the bare
   ``true`` from inventory is-owned) is wrapped as ``{"value": x}``. ``shape: object`` with a
   list, or ``shape: list`` with anything but a list or null, raises :class:`ShapeError`.

The input body is never mutated (it may be shared with a cache entry). The result may share
nested values that needed no change with the input, so treat both as read-only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Final, Literal, TypeAlias

Path: TypeAlias = tuple[str | int, ...]
"""A location inside a JSON value: dict keys (str) and list indices (int); ``()`` is the whole."""

_KEY_RE: Final = re.compile(r"[A-Za-z0-9_$-]+")
_INDEX_RE: Final = re.compile(r"\[(0|[1-9][0-9]*)\]")


def parse_path(text: str) -> Path:
    """Parse ``data[0].user`` into ``("data", 0, "user")``; ``""`` or ``"."`` is the whole body.

    Keys are ``[A-Za-z0-9_$-]+`` joined by dots (``data.0`` is the *key* "0"); indices are
    non-negative integers in brackets. Anything else raises ``ValueError``.
    """
    if text in ("", "."):
        return ()
    parts: list[str | int] = []
    pos = 0
    while pos < len(text):
        if text[pos] == "[":
            m = _INDEX_RE.match(text, pos)
            if m is None:
                raise ValueError(
                    f"invalid path {text!r}: expected a non-negative integer index like [0] "
                    f"at position {pos}"
                )
            parts.append(int(m.group(1)))
        else:
            start = pos
            if parts:  # after the first segment a key must follow a dot
                start += text[pos] == "."  # bool as 0/1
            m = _KEY_RE.match(text, start) if start > pos or not parts else None
            if m is None:
                raise ValueError(
                    f"invalid path {text!r}: expected a key ([A-Za-z0-9_$-]+), '.key' or "
                    f"'[index]' at position {pos}"
                )
            parts.append(m.group())
        pos = m.end()
    return tuple(parts)


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()
"""Returned by :func:`get_path` when a key or index is absent (distinct from a JSON null)."""


def get_path(value: object, path: Path) -> object:
    """Follow ``path`` into ``value``; :data:`MISSING` if a step is absent or the type does not fit
    (a key into a non-dict, an index into a non-list or out of range)."""
    for step in path:
        if isinstance(step, str):
            if not isinstance(value, dict):
                return MISSING
            value = value.get(step, MISSING)
            if value is MISSING:
                return MISSING
        elif isinstance(value, list) and 0 <= step < len(value):
            value = value[step]
        else:
            return MISSING
    return value


# "Lower" is anything that is not an ASCII capital, a digit or a separator, so `$` and non-ASCII
# letters stay inside their word instead of being dropped.
_L = r"[^A-Z0-9_\s-]"
# A number plus one capital that ends there is a unit word: 3D, 2D, 4K (but not the 2 in v2API).
_UNIT = rf"[0-9]+[A-Z](?![A-Z](?!{_L})|{_L})"
_WORD_RE: Final = re.compile(
    rf"""
      {_UNIT}
    | [0-9]*                       # leading digits join the word after them: 10games
      (?: [A-Z]{{2,}}s(?!{_L})     # plural acronym: IDs, URLs
        | [A-Z]+(?!{_L})           # acronym; its last capital starts the next word: HTML|Code
        | [A-Z]?{_L}+              # Word or word
      )
      (?:(?!{_UNIT})[0-9]+{_L}*)*  # other digits stay on the word before them: top10|games
    | [0-9]+                       # a number on its own: Foo_123
    """,
    re.VERBOSE,
)
_NEEDS_SPLIT_RE: Final = re.compile(r"[A-Z\s-]")


@lru_cache(maxsize=4096)
def to_snake(name: str) -> str:
    """Convert a key to snake_case: ``userId`` -> ``user_id``, ``HTMLCode`` -> ``html_code``.

    Words start at a capital after a lowercase letter or digit, and at the last capital of an
    acronym that is followed by lowercase (``isRNVAccount`` -> ``is_rnv_account``). A lowercase
    ``s`` right after an acronym is its plural (``userIDs`` -> ``user_ids``). Digits stay on the
    word before them (``top10Games`` -> ``top10_games``, ``HTML5Parser`` -> ``html5_parser``),
    except that a number followed by a single capital is a unit word of its own (``3DModel`` ->
    ``3d_model``, ``is3DModel`` -> ``is_3d_model``) and leading digits join the word after
    them (``10Games`` -> ``10games``). ``-``, ``_`` and whitespace separate words
    (runs collapse to one ``_``); leading underscores are kept. Names without capitals, ``-``
    or whitespace are returned unchanged (``already_snake``, ``a__b``, ``$type``).
    """
    if _NEEDS_SPLIT_RE.search(name) is None:
        return name
    body = name.lstrip("_")
    return name[: len(name) - len(body)] + "_".join(
        m.group().lower() for m in _WORD_RE.finditer(body)
    )


@lru_cache(maxsize=4096)
def to_camel(name: str) -> str:
    """Convert a key to camelCase through the words :func:`to_snake` finds: ``user_id`` ->
    ``userId``, ``HTMLCode`` -> ``htmlCode``, ``userId`` -> ``userId``; leading underscores kept."""
    snake = to_snake(name)
    body = snake.lstrip("_")
    words = [w for w in body.split("_") if w]
    if not words:
        return name
    first, *rest = words
    return snake[: len(snake) - len(body)] + first + "".join(w[:1].upper() + w[1:] for w in rest)


@dataclass(frozen=True, slots=True)
class Pagination:
    """Where a paginated upstream body keeps its items and cursors (defaults: Roblox's usual)."""

    items: Path = ("data",)
    next_cursor: Path = ("nextPageCursor",)
    previous_cursor: Path | None = ("previousPageCursor",)
    """``None``: the upstream has no previous cursor (always reported as null)."""


@dataclass(frozen=True, slots=True)
class FieldOps:
    """Key filtering, renaming and case conversion applied to each item (or to the object).

    ``allow``/``deny``/``rename`` use *upstream* key names and only touch an item's top-level
    keys; ``rename`` targets are used verbatim; ``case`` (``snake``, ``camel`` or ``keep``)
    applies to every other key, recursively.
    """

    allow: frozenset[str] | None = None
    deny: frozenset[str] = frozenset()
    rename: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    case: Literal["snake", "camel", "keep"] = "snake"
    # What each top-level upstream key becomes (None: left out), learnt as keys are seen:
    # an item's keys are looked up once instead of filtered, renamed and converted again.
    names: dict[str, str | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.case not in ("snake", "camel", "keep"):
            raise ValueError(f"case must be snake, camel or keep, not {self.case!r}")
        # copy into a read-only view so the plan stays frozen if the caller's dict changes
        object.__setattr__(self, "rename", MappingProxyType(dict(self.rename)))

    def __hash__(self) -> int:
        return hash((self.allow, self.deny, frozenset(self.rename.items()), self.case))

    def name_of(self, key: str) -> str | None:
        """The output name of the top-level upstream key ``key``; None when it is left out."""
        name: str | None
        if (self.allow is not None and key not in self.allow) or key in self.deny:
            name = None
        elif key in self.rename:
            name = self.rename[key]
        elif self.case == "keep":
            name = key
        else:
            name = to_snake(key) if self.case == "snake" else to_camel(key)
        if len(self.names) < _NAMES_MAX:  # upstream keys are data: keep the memo bounded
            self.names[key] = name
        return name


_NAMES_MAX = 1024
_UNSEEN = object()


@dataclass(frozen=True, slots=True)
class OrderBy:
    """Reorder a list to follow the requested ids; ``key`` is read from each upstream item."""

    key: Path


@dataclass(frozen=True, slots=True)
class Plan:
    """How one route normalizes its upstream body; see the module docstring for the steps.

    Raises ``ValueError`` at construction for an unknown ``shape`` and for ``pagination`` with
    ``shape="object"`` (a paginated plan always yields a list).
    """

    pick: Path | None = None
    pagination: Pagination | None = None
    fields: FieldOps = FieldOps()
    order_by: OrderBy | None = None
    empty_is_404: bool = False
    shape: Literal["auto", "object", "list"] = "auto"

    def __post_init__(self) -> None:
        if self.shape not in ("auto", "object", "list"):
            raise ValueError(f"shape must be auto, object or list, not {self.shape!r}")
        if self.pagination is not None and self.shape == "object":
            raise ValueError("a paginated plan always yields a list; shape cannot be 'object'")


class EmptyResult(Exception):
    """The plan has ``empty_is_404`` and the upstream result is empty (the route answers 404)."""


class ShapeError(Exception):
    """The upstream body does not have the shape the plan expects (the route answers 502)."""


def _where(path: Path) -> str:
    text = "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in path).lstrip(".")
    return repr(text) if text else "the body root"


_KINDS: Final[dict[type, str]] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
    _Missing: "nothing",
}


def _kind(value: object) -> str:
    # JSON names: error messages are read by rule authors, not Python programmers
    return _KINDS.get(type(value), type(value).__name__)


def _cursor(body: object, path: Path | None) -> str | None:
    if path is None:
        return None
    value = get_path(body, path)
    if value is MISSING or value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ShapeError(
            f"expected a string or null cursor at {_where(path)}, found {_kind(value)}"
        )
    return value


def _convert(value: object, fn: Callable[[str], str]) -> object:
    # recurse only into containers: the per-call overhead is skipped for scalars
    if isinstance(value, dict):
        return {
            fn(k): _convert(v, fn) if isinstance(v, _CONTAINERS) else v for k, v in value.items()
        }
    if isinstance(value, list):
        return [_convert(v, fn) if isinstance(v, _CONTAINERS) else v for v in value]
    return value


_CONTAINERS = (dict, list)  # (a tuple: isinstance with it is cheaper than with dict | list)


def _fields(item: object, ops: FieldOps) -> object:
    if not isinstance(item, dict):
        return item
    if ops.case == "keep" and ops.allow is None and not ops.deny and not ops.rename:
        return item  # nothing to do: share instead of copying
    fn = to_snake if ops.case == "snake" else to_camel
    keep = ops.case == "keep"
    names = ops.names
    out = {}
    for k, v in item.items():
        name = names.get(k, _UNSEEN)
        if name is _UNSEEN:
            name = ops.name_of(k)
        if name is not None:
            # (case applies below the top level too; ``keep`` leaves nested keys alone)
            out[name] = v if keep or not isinstance(v, _CONTAINERS) else _convert(v, fn)
    return out


def _order(items: list[object], key: Path, requested_ids: Sequence[object]) -> list[object]:
    rank: dict[str, int] = {}
    for i, rid in enumerate(requested_ids):
        rank.setdefault(str(rid), i)  # setdefault: the first occurrence of an id wins
    last = len(requested_ids)  # after every rank, even when ids repeat

    def position(item: object) -> int:
        value = get_path(item, key)
        return last if value is MISSING or value is None else rank.get(str(value), last)

    return sorted(items, key=position)  # stable: unrequested items keep their upstream order


def apply(plan: Plan, body: object, requested_ids: Sequence[object] | None = None) -> object:
    """Normalize ``body`` according to ``plan`` (steps in the module docstring).

    ``requested_ids`` are the ids the client asked for, used by ``order_by``. Raises
    :class:`EmptyResult` (route answers 404) and :class:`ShapeError` (upstream shape changed).
    """
    if isinstance(requested_ids, str | bytes):
        raise TypeError("requested_ids must be a sequence of ids, not a single string")
    next_cursor = previous_cursor = None
    result: object
    pg = plan.pagination
    if pg is not None:
        result = get_path(body, pg.items)
        if not isinstance(result, list):
            raise ShapeError(
                f"expected an array of items at {_where(pg.items)}, found {_kind(result)}"
            )
        next_cursor = _cursor(body, pg.next_cursor)
        previous_cursor = _cursor(body, pg.previous_cursor)
    else:
        result = body if plan.pick is None else get_path(body, plan.pick)
        if result is MISSING:
            result = None
    if isinstance(result, list) and plan.order_by is not None and requested_ids is not None:
        result = _order(result, plan.order_by.key, requested_ids)
    if pg is not None and plan.pick is not None and isinstance(result, list):
        pick = plan.pick
        result = [None if (v := get_path(item, pick)) is MISSING else v for item in result]
    where = pg.items if pg is not None else plan.pick or ()  # for messages: _where(where)
    # previous_cursor is always None without pagination, so this also covers plain results
    if (
        plan.empty_is_404
        and (result is None or (isinstance(result, dict | list) and not result))
        and previous_cursor is None
    ):
        raise EmptyResult(f"nothing at {_where(where)}")

    ops = plan.fields
    if isinstance(result, list):
        if plan.shape == "object":
            raise ShapeError(f"expected an object at {_where(where)}, found an array")
        return {
            "data": [_fields(item, ops) for item in result],
            "next_cursor": next_cursor,
            "previous_cursor": previous_cursor,
        }
    if plan.shape == "list":
        if result is None:
            return {"data": [], "next_cursor": None, "previous_cursor": None}
        raise ShapeError(f"expected an array at {_where(where)}, found {_kind(result)}")
    if result is None:
        return None
    if isinstance(result, dict):
        return _fields(result, ops)
    return {"value": result}
