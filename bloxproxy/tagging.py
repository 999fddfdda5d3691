"""Entity tags: which entities a cached entry is about (``user:156``, ``group:7``), so that a
purge by tag (``POST /_bloxproxy/admin/purge`` with ``{"tag": "user:156"}``) drops every
entry about one entity, whatever its URL. Pure functions, tested as tables.

An entry's tags come from two places:

- the rule's ``cache.tags``: templates like ``user:{user_id}`` filled with the request's
  parameters (:class:`TagTemplate`; a list parameter gives one tag per item, a parameter
  left out gives none); a passthrough request a rule describes fills them from its upstream
  path (:func:`path_values`), so both front doors tag their shared entry alike;
- an entity entry of a batch endpoint (``backend.batch`` with ``about: user``): ``user:<id>``
  (:mod:`bloxproxy.cache.entities`).

A tag is 1 to :data:`MAX_TAG_LENGTH` characters of ``A-Z a-z 0-9 _ . : @ / + = -`` (no
spaces: the tag header lists them space-separated); a filled template that is not a tag is
left out. An entry carries at most :data:`MAX_TAGS`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = [
    "MAX_TAGS",
    "MAX_TAG_LENGTH",
    "TagTemplate",
    "compile_tag",
    "path_values",
    "render_tags",
    "valid_tag",
]

MAX_TAG_LENGTH = 128
MAX_TAGS = 200  # a batch of 200 users asked whole (users' cap) still tags each of them
_TAG_RE = re.compile(rf"[A-Za-z0-9_.:@/+=-]{{1,{MAX_TAG_LENGTH}}}")
_NAME_RE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_LITERAL_RE = re.compile(r"[A-Za-z0-9_.:@/+=-]*")


def valid_tag(tag: object) -> bool:
    """Is ``tag`` a tag (a string of the tag alphabet, 1 to 128 characters)?"""
    return isinstance(tag, str) and _TAG_RE.fullmatch(tag) is not None


@dataclass(frozen=True, slots=True)
class TagTemplate:
    """``user:{user_id}`` compiled: the literal parts between the parameter names."""

    text: str
    literals: tuple[str, ...]  # one more than names
    names: tuple[str, ...]

    def render(self, values: Mapping[str, object]) -> list[str]:
        """The tags this template gives for ``values`` (none when a name has no value)."""
        if len(self.names) == 1:
            value = values.get(self.names[0])
            if type(value) is int:  # the usual case (an id), every request of its route
                tag = f"{self.literals[0]}{value}{self.literals[1]}"
                return [tag] if len(tag) <= MAX_TAG_LENGTH else []
        choices: list[list[str]] = []
        for name in self.names:
            spelled = _spellings(values.get(name))
            if not spelled:
                return []
            choices.append(spelled)
        out: list[str] = []
        for combo in itertools.product(*choices):
            parts = [self.literals[0]]
            for value, literal in zip(combo, self.literals[1:], strict=True):
                parts += (value, literal)
            tag = "".join(parts)
            if valid_tag(tag):
                out.append(tag)
            if len(out) >= MAX_TAGS:
                break
        return out


def compile_tag(text: object) -> TagTemplate:
    """A tag template of a rule (``cache.tags``); ValueError when it is not one."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected a tag template like 'user:{{user_id}}', got {text!r}")
    names = tuple(_NAME_RE.findall(text))
    literals = tuple(_NAME_RE.split(text)[::2])
    if not all(_LITERAL_RE.fullmatch(lit) for lit in literals) or not any(literals + names):
        raise ValueError(
            f"{text!r}: a tag template is letters, digits, _ . : @ / + = - and "
            "{parameter} names (no spaces)"
        )
    if len(text) > MAX_TAG_LENGTH:
        raise ValueError(f"{text!r}: longer than {MAX_TAG_LENGTH} characters")
    return TagTemplate(text, literals, names)


def _spellings(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _spellings(v)]
    return [str(value)]


def render_tags(templates: Sequence[TagTemplate], values: Mapping[str, object]) -> tuple[str, ...]:
    """Every tag ``templates`` give for ``values``: each once, in order, at most MAX_TAGS."""
    if len(templates) == 1:
        tags = templates[0].render(values)
        if len(tags) == 1:
            return (tags[0],)
    out: dict[str, None] = {}
    for template in templates:
        for tag in template.render(values):
            out.setdefault(tag, None)
            if len(out) >= MAX_TAGS:
                return tuple(out)
    return tuple(out)


def path_values(template: str, path: str) -> dict[str, str]:
    """The values of ``template``'s whole-segment parameters in ``path`` (an upstream path
    the template matched: ``/v1/users/{user_id}`` and ``/v1/users/156`` → ``{user_id:
    "156"}``); {} when the two do not line up segment by segment."""
    want, got = template.split("/"), path.split("/")
    if len(want) != len(got):
        return {}
    out: dict[str, str] = {}
    for pattern, segment in zip(want, got, strict=True):
        m = _NAME_RE.fullmatch(pattern)
        if m is not None:
            out[m.group(1)] = unquote(segment)
    return out
