"""YAML loading that remembers where every value came from.

Config and rule files are data written by people, so every complaint about them must
point at ``file:line``. PyYAML's nodes carry marks; this loader keeps them: mappings load
as :class:`MarkedDict` and sequences as :class:`MarkedList`, each knowing its own line and
the line of every child value. Duplicate keys are errors (PyYAML silently keeps the last),
and ``${VAR}`` in a scalar reads the environment so secrets stay out of files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import IO, Any

import yaml

from .errors import ConfigError, Problem, Where

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class MarkedDict(dict[str, Any]):
    """A mapping that knows where it and each of its values were written."""

    where: Where
    key_where: dict[str, Where]

    def at(self, key: str) -> Where:
        """Where the value of ``key`` was written (the mapping itself when absent)."""
        return self.key_where.get(key, self.where)


class MarkedList(list[Any]):
    """A sequence that knows where it and each item were written."""

    where: Where
    item_where: list[Where]

    def at(self, index: int) -> Where:
        if 0 <= index < len(self.item_where):
            return self.item_where[index]
        return self.where


def where_of(value: object, default: Where) -> Where:
    """The mark of a loaded container, or ``default`` for scalars."""
    if isinstance(value, MarkedDict | MarkedList):
        return value.where
    return default


def _where(node: yaml.Node) -> Where:
    return Where(node.start_mark.name, node.start_mark.line + 1)


class _Loader(yaml.SafeLoader):
    env: Mapping[str, str] = os.environ
    problems: list[Problem]

    def construct_yaml_map(self, node: yaml.MappingNode) -> Any:
        data = MarkedDict()
        data.where = _where(node)
        data.key_where = {}
        yield data
        self.flatten_mapping(node)
        key_lines: dict[str, int] = {}  # where each key was written (key_where: its value)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                key = str(key)  # YAML allows `200: x`; rules use status codes as keys
            if key in data:
                self.problems.append(
                    Problem(
                        _where(key_node), f"{key}: duplicate key (first at line {key_lines[key]})"
                    )
                )
                continue
            data[key] = self.construct_object(value_node, deep=True)
            data.key_where[key] = _where(value_node)
            key_lines[key] = _where(key_node).line

    def construct_yaml_seq(self, node: yaml.SequenceNode) -> Any:
        data = MarkedList()
        data.where = _where(node)
        data.item_where = [_where(child) for child in node.value]
        yield data
        data.extend(self.construct_object(child, deep=True) for child in node.value)

    def construct_yaml_str(self, node: yaml.ScalarNode) -> Any:
        text = super().construct_yaml_str(node)
        if "${" not in text:
            return text
        where = _where(node)

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = self.env.get(name)
            if value is None:
                if default is not None:
                    return default
                self.problems.append(Problem(where, f"environment variable {name} is not set"))
                return ""
            return value

        return _ENV_RE.sub(sub, text)


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_yaml_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _Loader.construct_yaml_seq)
_Loader.add_constructor("tag:yaml.org,2002:str", _Loader.construct_yaml_str)


def load_stream(stream: IO[str], name: str, env: Mapping[str, str] | None = None) -> Any:
    """Load one YAML document, raising :class:`ConfigError` with ``file:line`` messages."""
    text = stream.read()
    try:
        # The reader checks the first chunk already here: a control character near the
        # start of the file is a ReaderError from the constructor.
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:
        raise ConfigError(
            [Problem(Where(name, _reader_line(text, exc)), f"invalid YAML: {_reader_reason(exc)}")]
        ) from None
    loader.name = name  # marks carry the file name
    loader.problems = []
    if env is not None:
        loader.env = env
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        reason = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context:
            # PyYAML splits one sentence in two ("expected a single document in the stream",
            # "but found another document"); the context also says where an unclosed
            # bracket or quote was opened, which is often far above the problem line.
            at = exc.context_mark
            opened = f" at line {at.line + 1}" if at is not None and at.line + 1 != line else ""
            reason = f"{exc.context}{opened}, {exc.problem}"
        raise ConfigError([Problem(Where(name, line), f"invalid YAML: {reason}")]) from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(
            [Problem(Where(name, _reader_line(text, exc)), f"invalid YAML: {_reader_reason(exc)}")]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(Where(name, 1), f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    if loader.problems:
        raise ConfigError(loader.problems)
    return data


def _reader_line(text: str, exc: yaml.reader.ReaderError) -> int:
    """The line of a ReaderError, which carries a character position, not a mark."""
    return text.count("\n", 0, max(0, exc.position)) + 1


def _reader_reason(exc: yaml.reader.ReaderError) -> str:
    char = exc.character
    shown = f"#x{char:04x}" if isinstance(char, int) else repr(char)
    return f"unacceptable character {shown}: {exc.reason}"


def load_file(
    path: str, display_name: str | None = None, env: Mapping[str, str] | None = None
) -> Any:
    """Load a YAML file; unreadable files are reported as ``ConfigError`` too."""
    name = display_name or path
    try:
        with open(path, encoding="utf-8") as f:
            return load_stream(f, name, env)
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(Where(name, 1), f"not UTF-8 text: {exc.reason}")]) from None
    except OSError as exc:
        raise ConfigError([Problem(Where(name, 1), f"cannot read: {exc.strerror}")]) from None
