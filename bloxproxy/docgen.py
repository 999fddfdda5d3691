"""The parts of the docs that follow from the code and the shipped rules, generated.

- ``docs/CONFIG.md``, the whole file, from the config's declared keys (``config.py``);
- the key tables of ``docs/RULES.md``, from the rule vocabulary (``rule_fields.py``);
- the route table of ``README.md``, from the shipped rules (``rules/*.yaml``).

In the hand-written files a generated part sits between ``<!-- generated: NAME -->`` and
``<!-- end generated -->`` lines; everything around it is left alone. Run
``python -m bloxproxy.docgen`` in a checkout after changing a rule or a declaration (it
rewrites what is out of date); ``--check`` only names those files. ``tests/test_docs.py``
fails when any of them differs from what this module generates.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from . import config, rule_fields
from .cli import duration_text
from .errors import ConfigError
from .rules import Route, RuleSet, load_rules

ROOT = Path(__file__).resolve().parent.parent
_MARK_RE = re.compile(r"^<!-- (generated: (?P<name>[^>]*?)|end generated) -->$")


class DocError(Exception):
    """A marker is unknown, missing, repeated or never closed."""


def fill(text: str, parts: Mapping[str, Callable[[], str]], file: str) -> str:
    """``text`` with every generated part replaced by ``parts[name]()``; each part of
    ``parts`` must appear exactly once."""
    out: list[str] = []
    open_at: tuple[str, int] | None = None
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        match = _MARK_RE.match(line.rstrip("\n"))
        if open_at is not None and match is None:
            continue  # the old generated text
        if match is None:
            out.append(line)
        elif match["name"] is not None:
            name = match["name"]
            if open_at is not None:
                raise DocError(f"{file}:{number}: {name!r} opens inside {open_at[0]!r}")
            if name not in parts:
                raise DocError(
                    f"{file}:{number}: unknown generated part {name!r} "
                    f"(known: {', '.join(sorted(parts))})"
                )
            if name in seen:
                raise DocError(f"{file}:{number}: generated part {name!r} appears twice")
            seen.add(name)
            open_at = (name, number)
            out.extend([line, parts[name]()])
        else:
            if open_at is None:
                raise DocError(f"{file}:{number}: 'end generated' without a start")
            out.append(line)
            open_at = None
    if open_at is not None:
        raise DocError(f"{file}:{open_at[1]}: generated part {open_at[0]!r} is never closed")
    missing = sorted(set(parts) - seen)
    if missing:
        raise DocError(f"{file}: no place for the generated part(s) {', '.join(missing)}")
    return "".join(out)


def rule_key_parts() -> dict[str, Callable[[], str]]:
    """One table per block of the rule vocabulary: ``<!-- generated: backend keys -->``."""
    return {f"{block.name} keys": block.table for block in rule_fields.BLOCKS}


def route_table(rules: RuleSet) -> str:
    """The README's route table: each clean route, what it is, its upstream request, TTL;
    a composite route with the routes of its parts instead (each cached as its route)."""
    lines = ["| route | what | upstream | TTL |", "| --- | --- | --- | --- |"]
    rows: list[tuple[str, str]] = []
    for r in rules.routes:
        summary = r.summary.replace("|", "\\|")  # a | would end the cell
        rows.append(
            (
                r.endpoint,
                f"| `{r.method} {r.endpoint}{_required_query(r)}`{_notes(r)} | {summary} "
                f"| `{_upstream(r)}` | {_ttl(r)} |",
            )
        )
    for c in rules.composites:
        summary = c.summary.replace("|", "\\|")
        parts = ", ".join(f"`{p.route.id}`" for p in c.parts)
        rows.append(
            (
                c.endpoint,
                f"| `{c.method} {c.endpoint}` (composite) | {summary} | parts: {parts} "
                "| each part's |",
            )
        )
    lines.extend(row for _, row in sorted(rows, key=lambda row: row[0]))
    return "\n".join(lines) + "\n"


def _required_query(r: Route) -> str:
    names = [p.name for p in r.query_params if p.required]
    return "?" + "&".join(f"{n}=…" for n in names) if names else ""


def _notes(r: Route) -> str:
    notes = [f"≤ {p.max_items}" for p in r.query_params if p.required and p.is_list]
    if r.plan.pagination is not None:
        notes.append("paginated")
    return f" ({', '.join(notes)})" if notes else ""


def _upstream(r: Route) -> str:
    """``METHOD service path``, with the query items that carry a required parameter."""
    b = r.backend
    needed = [p.name for p in (*r.path_params, *r.query_params) if p.required]
    items = [
        f"{key}={value}"
        for key, value in b.query.items
        if any(f"{{{name}}}" in str(value) for name in needed)
    ]
    return f"{b.method} {b.service} {b.path.text}" + ("?" + "&".join(items) if items else "")


def _shown(value: object) -> str:
    """A ``when`` value as YAML writes it (``false``, not Python's ``False``)."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


def _ttl(r: Route) -> str:
    c = r.cache
    if not c.enabled:
        return "off"
    shorter = [
        f"{'/'.join(_shown(v) for v in cond.values)}: {duration_text(cond.ttl)}" for cond in c.when
    ]
    return duration_text(c.ttl) + (f" ({'; '.join(shorter)})" if shorter else "")


def generated(root: Path = ROOT) -> dict[Path, str]:
    """Every generated file of the checkout at ``root`` and its text as it should be."""
    rules_md, readme = root / "docs" / "RULES.md", root / "README.md"
    shipped = load_rules([root / "rules"])
    return {
        root / "docs" / "CONFIG.md": config.reference_markdown(),
        rules_md: fill(rules_md.read_text(encoding="utf-8"), rule_key_parts(), "docs/RULES.md"),
        readme: fill(
            readme.read_text(encoding="utf-8"),
            {"routes": lambda: route_table(shipped)},
            "README.md",
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bloxproxy.docgen",
        description="Regenerate docs/CONFIG.md, the key tables of docs/RULES.md and the "
        "route table of README.md from the code and the shipped rules.",
    )
    parser.add_argument("--check", action="store_true", help="only list what is out of date")
    args = parser.parse_args(argv)
    if not (ROOT / "README.md").is_file():
        print(f"docgen: {ROOT} is not a bloxproxy checkout", file=sys.stderr)
        return 2
    try:
        files = generated()
    except DocError as exc:
        print(f"docgen: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # a broken rule file: nothing to generate from
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    stale = [p for p, text in files.items() if p.read_text(encoding="utf-8") != text]
    for path in stale:
        shown = path.relative_to(ROOT)
        if args.check:
            print(f"{shown}: out of date (run python -m bloxproxy.docgen)")
        else:
            path.write_text(files[path], encoding="utf-8")
            print(f"{shown}: rewritten")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
