"""Typed path and query parameters of clean routes.

A :class:`Param` is compiled once from a rule and parses the raw strings of one request.
Failures raise :class:`ParamError` with a message a client can act on; the handler turns
them into one 400 problem listing every invalid parameter, before any upstream call.

Types: ``int``, ``string``, ``bool``, ``int_list`` and ``string_list``. Lists accept both
``ids=1,156`` and ``ids=1&ids=156`` (and mixes), drop duplicates keeping the first, and
are bounded by ``max_items``. ``enum`` restricts a scalar to listed values (Roblox page
sizes are ``[10, 25, 50, 100]``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

ParamType = Literal["int", "string", "bool", "int_list", "string_list"]
PARAM_TYPES: tuple[str, ...] = ("int", "string", "bool", "int_list", "string_list")

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# \Z, not $: "$" also matches before a trailing newline, which would let "12\n" through.
_INT_RE = re.compile(r"^-?[0-9]{1,19}\Z")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


class ParamError(ValueError):
    """One parameter value is invalid; ``name`` and ``reason`` go into the problem body."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def _shown(raw: str) -> str:
    return repr(raw if len(raw) <= 40 else raw[:37] + "...")


@dataclass(frozen=True, slots=True)
class Param:
    """A typed parameter (see the rule reference for every field)."""

    name: str
    location: Literal["path", "query"]
    type: ParamType = "string"
    required: bool = False
    default: Any = None
    enum: tuple[Any, ...] = ()
    min: int | None = None
    max: int | None = None
    min_length: int = 0
    max_length: int = 1000
    pattern: re.Pattern[str] | None = None
    min_items: int = 1
    max_items: int = 100
    description: str = ""
    example: Any = None

    @property
    def is_list(self) -> bool:
        return self.type in ("int_list", "string_list")

    def parse(self, raw: Sequence[str]) -> Any:
        """Parse the raw values of this parameter (several when repeated in the query)."""
        if not raw:
            if self.required:
                raise ParamError(self.name, "is required")
            return self.default
        if self.is_list:
            return self._parse_list(raw)
        if len(raw) > 1:
            raise ParamError(self.name, "given more than once")
        return self._parse_one(raw[0])

    def _parse_one(self, text: str) -> Any:
        value: Any
        if self.type in ("int", "int_list"):
            value = self._int(text)
        elif self.type == "bool":
            low = text.lower()
            if low in _TRUE:
                value = True
            elif low in _FALSE:
                value = False
            else:
                raise ParamError(self.name, f"expected true or false, got {_shown(text)}")
        else:
            value = self._str(text)
        if self.enum and value not in self.enum:
            allowed = ", ".join(str(v) for v in self.enum)
            raise ParamError(self.name, f"must be one of {allowed}, got {_shown(text)}")
        return value

    def _int(self, text: str) -> int:
        if not _INT_RE.match(text):
            raise ParamError(self.name, f"expected an integer, got {_shown(text)}")
        value = int(text)
        if not INT64_MIN <= value <= INT64_MAX:
            raise ParamError(self.name, f"is out of range, got {_shown(text)}")
        if self.min is not None and value < self.min:
            raise ParamError(self.name, f"must be at least {self.min}, got {value}")
        if self.max is not None and value > self.max:
            raise ParamError(self.name, f"must be at most {self.max}, got {value}")
        return value

    def _str(self, text: str) -> str:
        if len(text) < self.min_length:
            raise ParamError(self.name, f"must be at least {self.min_length} characters long")
        if len(text) > self.max_length:
            raise ParamError(self.name, f"must be at most {self.max_length} characters long")
        if self.pattern is not None and not self.pattern.fullmatch(text):
            raise ParamError(self.name, f"has an invalid format, got {_shown(text)}")
        return text

    def _parse_list(self, raw: Sequence[str]) -> tuple[Any, ...]:
        items: list[Any] = []
        seen: set[Any] = set()
        for chunk in raw:
            for part in chunk.split(","):
                part = part.strip()
                if not part:
                    raise ParamError(self.name, "contains an empty item")
                value = self._parse_one(part)
                if value not in seen:
                    seen.add(value)
                    items.append(value)
                if len(items) > self.max_items:
                    raise ParamError(self.name, f"accepts at most {self.max_items} items")
        if len(items) < self.min_items:
            raise ParamError(self.name, f"needs at least {self.min_items} item(s)")
        return tuple(items)

    def to_text(self, value: Any) -> str:
        """Render a parsed scalar the way Roblox expects it in a URL."""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
