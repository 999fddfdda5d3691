"""Clean-route matching: a segment trie compiled once per rule set.

Literal segments beat parameters at every level, so ``/v1/users/search`` wins over
``/v1/users/{user_id}`` whatever order the rules were written in. Matching splits the
*raw* path and percent-decodes each segment on its own, so an encoded ``%2F`` stays inside
its segment instead of creating a new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import unquote

T = TypeVar("T")


@dataclass(slots=True)
class _Node(Generic[T]):
    literal: dict[str, _Node[T]] = field(default_factory=dict)
    param: _Node[T] | None = None
    param_name: str = ""
    handlers: dict[str, T] = field(default_factory=dict)  # method -> route


class DuplicateRoute(ValueError):
    """Two rules claim the same method and path shape."""


class Router(Generic[T]):
    """Maps (method, raw path) to a route and its raw path-parameter values."""

    __slots__ = ("_root",)

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()

    def add(self, method: str, template: str, route: T) -> None:
        node = self._root
        for segment in template.strip("/").split("/"):
            if segment.startswith("{") and segment.endswith("}"):
                name = segment[1:-1]
                if node.param is None:
                    node.param = _Node()
                    node.param_name = name
                elif node.param_name != name:
                    raise DuplicateRoute(
                        f"parameter {{{name}}} conflicts with {{{node.param_name}}} "
                        "at the same position of another route"
                    )
                node = node.param
            else:
                node = node.literal.setdefault(segment, _Node())
        if method in node.handlers:
            raise DuplicateRoute(f"{method} {template} is defined twice")
        node.handlers[method] = route

    def match(self, method: str, raw_path: str) -> tuple[T | None, dict[str, str], bool]:
        """Return ``(route, params, path_exists)``; ``path_exists`` with no route means 405."""
        params: dict[str, str] = {}
        node = self._match(self._root, _segments(raw_path), 0, params)
        if node is None:
            return None, {}, False
        route = node.handlers.get(method)
        if route is None and method == "HEAD":
            route = node.handlers.get("GET")
        return route, params, True

    def _match(
        self, node: _Node[T], segments: list[str], i: int, params: dict[str, str]
    ) -> _Node[T] | None:
        if i == len(segments):
            return node if node.handlers else None
        raw = segments[i]
        if not raw:
            return None  # "//" or a trailing slash never matches a clean route
        segment = unquote(raw, errors="strict") if "%" in raw else raw
        child = node.literal.get(segment)
        if child is not None:
            found = self._match(child, segments, i + 1, params)
            if found is not None:
                return found
        if node.param is not None:
            params[node.param_name] = segment
            found = self._match(node.param, segments, i + 1, params)
            if found is not None:
                return found
            del params[node.param_name]
        return None

    def methods(self, raw_path: str) -> list[str]:
        node = self._match(self._root, _segments(raw_path), 0, {})
        return sorted(node.handlers) if node else []


def _segments(raw_path: str) -> list[str]:
    # Only the one leading "/" goes: stripping them all would let "//v1/users/1" and
    # "/v1/users/1/" match, and the empty segment they leave must fail the match instead.
    return (raw_path[1:] if raw_path.startswith("/") else raw_path).split("/")
