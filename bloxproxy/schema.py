"""Small typed readers for YAML values, and the declared keys built on them, shared by the
config and rule loaders.

Each reader takes the raw value and returns the typed value or raises ``ValueError``
whose message says what was expected and what was found; the loaders prefix
``file:line: key:`` to it. Keeping them pure makes the error wording testable as a table.

A :class:`Key` declares one key once: its reader, its default (written the way a user
writes it, ``"10s"``) and its reference text. The config declares its keys as dataclass
fields (``config.opt``), the rules as :class:`Block` declarations (``rule_fields.py``);
both references are generated from them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import Problem, Where
from .yamlsrc import MarkedDict

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}


def show(value: object) -> str:
    """Quote a bad value for an error message, shortened."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def duration(value: object) -> float:
    """``"30s"``, ``"500ms"``, ``"5m"``, ``"1h"``, ``"1d"`` (or ``0``) → seconds."""
    if value == 0 and not isinstance(value, bool):
        return 0.0
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(f"expected a duration like '30s', '500ms' or '5m', got {show(value)}")


def size(value: object) -> int:
    """``"64MiB"``, ``"1MB"``, ``"512KiB"`` or a plain byte count → bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    raise ValueError(f"expected a size like '64MiB', '512KiB' or a byte count, got {show(value)}")


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[object], int]:
    def read(value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"expected an integer, got {show(value)}")
        if lo is not None and value < lo:
            raise ValueError(f"expected an integer >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise ValueError(f"expected an integer <= {hi}, got {value}")
        return value

    return read


def number(lo: float | None = None, hi: float | None = None) -> Callable[[object], float]:
    def read(value: object) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"expected a number, got {show(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            if hi is None:
                bounds = f">= {lo}"
            elif lo is None:
                bounds = f"<= {hi}"
            else:
                bounds = f"between {lo} and {hi}"
            raise ValueError(f"expected a number {bounds}, got {value}")
        return float(value)

    return read


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {show(value)}")
    return value


def string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {show(value)}")
    return value


def choice(*allowed: str) -> Callable[[object], str]:
    def read(value: object) -> str:
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {show(value)}")
        return str(value)

    return read


def string_list(value: object) -> tuple[str, ...]:
    if isinstance(value, str):  # "a, b" is accepted too (handy in environment variables)
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {show(value)}")
    return tuple(value)


def string_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"expected a mapping of strings to strings, got {show(value)}")
    return dict(value)


def check_keys(
    data: MarkedDict, allowed: Iterable[str], problems: list[Problem], context: str = ""
) -> None:
    """Report every unknown key, listing the allowed ones; ``_``-prefixed keys are comments."""
    allowed_set = set(allowed)
    for key in data:
        if key.startswith("_") or key in allowed_set:
            continue
        prefix = f"{context}." if context else ""
        problems.append(
            Problem(
                data.at(key),
                f"{prefix}{key}: unknown key (allowed: {', '.join(sorted(allowed_set))})",
            )
        )


def read(
    data: MarkedDict,
    key: str,
    reader: Callable[[object], Any],
    problems: list[Problem],
    default: Any,
    context: str = "",
) -> Any:
    """Read ``data[key]`` with ``reader``; on error record ``file:line: ctx.key: why``."""
    if key not in data:
        return default
    try:
        return reader(data[key])
    except ValueError as exc:
        prefix = f"{context}." if context else ""
        problems.append(Problem(data.at(key), f"{prefix}{key}: {exc}"))
        return default


def mapping(value: object, where: Where, what: str, problems: list[Problem]) -> MarkedDict | None:
    """Check that ``value`` is a mapping; record a problem otherwise."""
    if isinstance(value, MarkedDict):
        return value
    problems.append(Problem(where, f"{what}: expected a mapping, got {show(value)}"))
    return None


@dataclass(frozen=True, slots=True)
class Key:
    """One declared key: how to read it, its default, and its reference text.

    ``reader`` None means the owner reads the key itself, because its value depends on
    other keys (a template naming the route's parameters); the key is still allowed,
    documented and, when ``required``, reported missing. ``required`` is the problem
    written when the key is absent (empty: optional). ``shown`` overrides how the
    reference shows the default (``"file `service`"``); ``applies`` says which parameter
    types a parameter key applies to.
    """

    name: str
    doc: str
    reader: Callable[[object], Any] | None = None
    default: Any = None
    shown: str | None = None
    required: str = ""
    applies: str = ""

    def typed_default(self) -> Any:
        """The default as the reader returns it: ``"10s"`` becomes ``10.0``."""
        if isinstance(self.default, str) and self.reader is not None:
            return self.reader(self.default)
        return copy.copy(self.default)

    def shown_default(self) -> str:
        if self.shown is not None:
            return self.shown
        if self.required:
            return "required"
        return shown_default(self.default)


def shown_default(default: object) -> str:
    """A default as written in YAML, in a Markdown code span (``none`` for no value)."""
    if default is None:
        return "none"
    if isinstance(default, bool):
        text = "true" if default else "false"
    elif isinstance(default, tuple | list):
        text = "[" + ", ".join(str(v) for v in default) + "]"
    elif default == "":
        text = '""'
    else:
        text = str(default)
    return f"`{text}`"


@dataclass(frozen=True, slots=True)
class Block:
    """A mapping whose keys are declared: a rule file, a route, its ``backend``…

    :meth:`read` reports unknown keys (listing the allowed ones; ``_`` keys are comments)
    and missing required ones, and reads every key that has a reader, in declaration
    order; :meth:`table` is the block's reference table.
    """

    name: str  # what the reference calls it: "backend", "cache.when"
    keys: tuple[Key, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys)

    def __getitem__(self, name: str) -> Key:
        for key in self.keys:
            if key.name == name:
                return key
        raise KeyError(name)

    def read(
        self,
        data: MarkedDict,
        problems: list[Problem],
        context: str,
        *,
        skip: Collection[str] = (),
    ) -> dict[str, Any]:
        """Every key that has a reader (but those in ``skip``): its value, or its default when
        absent or invalid (the problem recorded as ``file:line: context.key: why``)."""
        check_keys(data, self.names, problems, context)
        prefix = f"{context}." if context else ""
        values: dict[str, Any] = {}
        for key in self.keys:
            if key.name in skip:
                continue
            if key.required and key.name not in data:
                problems.append(Problem(data.at(key.name), f"{prefix}{key.name}: {key.required}"))
            if key.reader is not None:
                default = key.typed_default()
                values[key.name] = read(data, key.name, key.reader, problems, default, context)
        return values

    def table(self) -> str:
        """The reference table: key, (applies to,) default, meaning."""
        applies = any(k.applies for k in self.keys)
        head = ["key", *(["applies to"] if applies else []), "default", "meaning"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for k in self.keys:
            cells = [f"`{k.name}`", *([k.applies] if applies else []), k.shown_default(), k.doc]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"
