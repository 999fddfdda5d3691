"""Upstream request templates: path, query and JSON body built from typed parameters.

``{name}`` refers to a parameter of the route. In a path, values are percent-encoded as
one segment (a ``/`` or ``..`` in a value can never change the upstream path). In a query
value or a body, a string that is exactly ``"{name}"`` takes the typed value (an int stays
an int, an id list becomes a JSON array or a comma list); a string with ``{name}`` inside
other text is interpolated. Templates are compiled at load, rendered per request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_EXACT = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")

Values = Mapping[str, Any]


class TemplateError(ValueError):
    """A template names an unknown parameter or is malformed (reported at load)."""


def placeholders(text: str) -> list[str]:
    return _PLACEHOLDER.findall(text)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ",".join(_text(v) for v in value)
    return "" if value is None else str(value)


def _check_names(text: str, known: frozenset[str]) -> None:
    if text.count("{") != text.count("}") or len(_PLACEHOLDER.findall(text)) != text.count("{"):
        raise TemplateError(f"malformed placeholder in {text!r} (use {{name}})")
    for name in placeholders(text):
        if name not in known:
            raise TemplateError(
                f"{{{name}}} is not a parameter of this route "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """``/v1/users/{user_id}/friends`` compiled into literal and parameter parts."""

    text: str
    parts: tuple[tuple[bool, str], ...]  # (is_param, literal-or-name)

    @classmethod
    def compile(cls, text: str, known: frozenset[str]) -> PathTemplate:
        if not text.startswith("/"):
            raise TemplateError(f"path must start with '/', got {text!r}")
        if any(c in text for c in "?#\\ ") or "//" in text or "/../" in text + "/":
            raise TemplateError(f"path must be a plain absolute path, got {text!r}")
        _check_names(text, known)
        parts: list[tuple[bool, str]] = []
        pos = 0
        for match in _PLACEHOLDER.finditer(text):
            if match.start() > pos:
                parts.append((False, quote(text[pos : match.start()], safe="/-._~!$&'()*+,;=:@")))
            parts.append((True, match.group(1)))
            pos = match.end()
        if pos < len(text):
            parts.append((False, quote(text[pos:], safe="/-._~!$&'()*+,;=:@")))
        return cls(text, tuple(parts))

    def render(self, values: Values) -> str:
        out = []
        for is_param, token in self.parts:
            if is_param:
                # One segment, everything reserved encoded: values cannot add segments.
                text = quote(_text(values[token]), safe="")
                if text in (".", ".."):
                    # quote() keeps dots, and a bare "."/".." segment would be resolved
                    # by the upstream (RFC 3986 §5.2.4), climbing out of the template.
                    text = text.replace(".", "%2E")
                out.append(text)
            else:
                out.append(token)
        return "".join(out)


@dataclass(frozen=True, slots=True)
class QueryTemplate:
    """The upstream query: ``{upstream_name: template}``, rendered in the written order."""

    items: tuple[tuple[str, str], ...]
    list_format: Literal["csv", "repeat"] = "csv"

    @classmethod
    def compile(
        cls,
        mapping: Mapping[str, object],
        known: frozenset[str],
        list_format: Literal["csv", "repeat"] = "csv",
    ) -> QueryTemplate:
        items = []
        for name, template in mapping.items():
            text = _text(template) if not isinstance(template, str) else template
            _check_names(text, known)
            items.append((name, text))
        return cls(tuple(items), list_format)

    def render(self, values: Values) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for name, template in self.items:
            exact = _EXACT.match(template)
            if exact:
                value = values.get(exact.group(1))
                if value is None:
                    continue  # an optional parameter the client did not send
                if isinstance(value, tuple) and self.list_format == "repeat":
                    out.extend((name, _text(v)) for v in value)
                else:
                    out.append((name, _text(value)))
            elif "{" in template:
                out.append(
                    (name, _PLACEHOLDER.sub(lambda m: _text(values.get(m.group(1))), template))
                )
            else:
                out.append((name, template))
        return out


Renderer = Callable[[Values], Any]


def compile_body(template: object, known: frozenset[str]) -> Renderer:
    """Compile a JSON body template into a function of the parameter values."""
    if isinstance(template, str):
        _check_names(template, known)
        exact = _EXACT.match(template)
        if exact:
            name = exact.group(1)
            return lambda values: _json_value(values.get(name))
        if "{" in template:
            return lambda values: _PLACEHOLDER.sub(
                lambda m: _text(values.get(m.group(1))), template
            )
        return lambda values: template
    if isinstance(template, dict):
        compiled = [(str(k), compile_body(v, known)) for k, v in template.items()]
        return lambda values: {k: render(values) for k, render in compiled}
    if isinstance(template, list):
        parts = [compile_body(v, known) for v in template]
        return lambda values: [render(values) for render in parts]
    if template is None or isinstance(template, bool | int | float):
        return lambda values: template
    raise TemplateError(f"unsupported value in body template: {template!r}")


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
