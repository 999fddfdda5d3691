"""Command line: ``bloxproxy serve | check | routes | openapi | fake-roblox``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import sys
from collections.abc import Sequence

import orjson

from . import cloudlimits
from .config import Config
from .errors import ConfigError
from .logs import setup_logging
from .rules import RuleSet
from .serve import Overrides, load_all, open_listener, open_refusal, run_single, supervise

log = logging.getLogger("bloxproxy")


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        metavar="PATH",
        default=os.environ.get("BLOXPROXY_CONFIG"),
        help="config file (default: $BLOXPROXY_CONFIG, else the embedded defaults)",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


class _Version(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(
            option_strings, dest, nargs=0, help="print the version of bloxproxy and exit"
        )

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> None:
        from .openapi import version

        print(f"bloxproxy {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bloxproxy",
        description="A caching reverse proxy and protocol adapter for the Roblox web APIs.",
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve", help="run the proxy", description="Run the proxy until SIGINT/SIGTERM."
    )
    _config_arg(serve)
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument(
        "--fake-upstream",
        action="store_true",
        help="start the bundled fake Roblox in-process and send every upstream "
        "request to it (works with no network)",
    )
    serve.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="run N processes sharing the port (overrides server.workers)",
    )
    serve.add_argument(
        "--watch",
        action="store_true",
        help="reload config and rules when their files change (SIGHUP always reloads)",
    )

    check = sub.add_parser(
        "check",
        help="validate config and rules",
        description="Validate the config and every rule file; print each "
        "problem as file:line: message. Exit 1 when invalid.",
    )
    _config_arg(check)

    routes = sub.add_parser(
        "routes",
        help="list the clean routes",
        description="Print the clean routes (id, method and path, cache TTLs) and, under "
        "each, the upstream request it becomes (with its batch and its Open Cloud limit per "
        "key owner); in 100 columns.",
    )
    _config_arg(routes)

    spec = sub.add_parser(
        "openapi",
        help="print the OpenAPI document",
        description="Print the OpenAPI 3.1 document of the clean API "
        "(what GET /openapi.json serves).",
    )
    _config_arg(spec)
    spec.add_argument("--output", "-o", metavar="FILE", help="write it to FILE instead")

    imp = sub.add_parser(
        "import-limits",
        help="import Open Cloud's published limits from Roblox's OpenAPI documents",
        description="Read one or more of Roblox's OpenAPI documents (creator-docs "
        "content/en-us/reference/cloud/cloud.docs.json, the all-APIs openapi.json; the shipped "
        "table comes from rules/sources/cloud.docs.subset.json and "
        "rules/sources/openapi.subset.json) and write each operation's x-roblox-rate-limits "
        "per API key owner as the limits table beside a rule file "
        "(rules/opencloud.limits.json), which routes with limits.per_key_owner: openapi read. "
        "The table names each document; an operation two documents list with different "
        "limits is refused.",
    )
    imp.add_argument("documents", nargs="+", metavar="document", help="an OpenAPI document (JSON)")
    imp.add_argument("--output", "-o", metavar="FILE", help="write the table to FILE")
    imp.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="TEXT",
        help="where a document came from, once per document in their order (default: each "
        "one's file name)",
    )
    imp.add_argument(
        "--prefix",
        action="append",
        default=[],
        metavar="PATH",
        help="keep only operations whose path starts with PATH (repeatable; default: "
        "/cloud/ and /legacy-)",
    )

    fake = sub.add_parser(
        "fake-roblox",
        help="run the bundled fake Roblox upstream",
        description="Serve the fake Roblox upstream (/{service}/{path}) for tests and demos.",
    )
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=9000)
    fake.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    return parser


def _load(path: str | None, *, summary: bool = False) -> tuple[Config, RuleSet] | None:
    """Config and rules, or None after printing every problem as ``file:line: message``."""
    try:
        return load_all(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        if summary:
            print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    loaded = _load(args.config, summary=True)
    if loaded is None:
        return 1
    config, rules = loaded
    for override in rules.overrides:  # a notice, not a problem: the user's rule wins
        print(override)
    print(
        f"ok: config {args.config or '<defaults>'}, {len(rules.routes)} routes "
        f"from {len(rules.files)} rule file(s)"
    )
    opened = open_listener(config)
    if opened is not None and not config.server.allow_open:
        print(
            f"warning: serve will refuse to listen on {opened}: {open_refusal(config)}",
            file=sys.stderr,
        )
    return 0


def duration_text(seconds: float) -> str:
    """``600.0`` as ``10m``, ``1.5`` as ``1.5s``, ``0`` as ``-``."""
    if seconds == 0:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


ROUTES_WIDTH = 100  # columns `bloxproxy routes` fits in
_ID_MAX = 32  # a longer route id is cut (ids are usually "<family>.<name>")


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 3, 1)] + "..."


def _wrap_request(text: str, width: int) -> list[str]:
    """An upstream request in lines of at most ``width``: broken before ``?``, ``&`` (where
    a reader looks for the next parameter), `` [`` (a note) and `` name=`` (a composite's
    part), a piece longer than a line cut into lines."""
    pieces = [p for p in re.split(r"(?=[?&]| \[| (?=\w+=))", text) if p]
    lines = [""]
    for piece in pieces:
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
        while len(lines[-1]) > width:
            lines[-1:] = [lines[-1][:width], lines[-1][width:]]
    return lines


def routes_table(rules: RuleSet, width: int = ROUTES_WIDTH) -> str:
    """The clean routes in ``width`` columns: a line with the route id, method and path and
    the cache TTLs (fresh, stale-while-revalidate, stale-if-error), and under it the upstream
    request the route becomes (``-> METHOD service/path?query``), wrapped."""
    rows = []
    for r in sorted(rules.routes, key=lambda r: (r.endpoint, r.method)):
        b = r.backend
        query = "&".join(f"{k}={v}" for k, v in b.query.items)
        upstream = f"{b.method} {b.service}{b.path.text}" + (f"?{query}" if query else "")
        c = r.cache
        ttls = (
            duration_text(c.ttl) if c.enabled else "off",
            duration_text(c.stale_while_revalidate),
            duration_text(c.stale_if_error),
        )
        batch = b.batch
        if batch is not None:  # entities per id, merged calls: say which ids and how many
            upstream += f" [batch: {batch.ids} <= {batch.max}]"
        limit = r.owner_limit
        if limit is not None:  # Open Cloud: one budget per key owner
            upstream += f" [per key owner: {limit.text}, {limit.source}]"
        rows.append((_cut(r.id, _ID_MAX), f"{r.method} {r.endpoint}", ttls, upstream))
    for comp in rules.composites:  # made of other routes, each cached as its route is
        parts = " ".join(f"{p.name}={p.route.id}" for p in comp.parts)
        rows.append(
            (
                _cut(comp.id, _ID_MAX),
                f"{comp.method} {comp.endpoint}",
                ("-", "-", "-"),  # (nothing of its own: each part as its route is)
                f"[compose, each part cached as its route] {parts}",
            )
        )
    rows.sort(key=lambda row: (row[1].split(" ", 1)[1], row[1]))
    head = ("TTL", "SWR", "SIE")
    ttl_w = [max([len(head[i])] + [len(row[2][i]) for row in rows]) for i in range(3)]
    ttl_cols = sum(ttl_w) + 2 * len(ttl_w)
    id_w = max([len("ID")] + [len(row[0]) for row in rows])
    route_w = min(max([len("ROUTE")] + [len(row[1]) for row in rows]), width - id_w - 2 - ttl_cols)

    def line(ident: str, route: str, cells: tuple[str, ...]) -> str:
        ttl = "  ".join(cell.ljust(w) for cell, w in zip(cells, ttl_w, strict=True))
        return f"{ident.ljust(id_w)}  {_cut(route, route_w).ljust(route_w)}  {ttl}".rstrip()

    out = [line("ID", "ROUTE", head)]
    indent = " " * (id_w + 2)
    for ident, route, ttls, upstream in rows:
        out.append(line(ident, route, ttls))
        for i, part in enumerate(_wrap_request(upstream, width - len(indent) - 3)):
            out.append(f"{indent}{'-> ' if i == 0 else '   '}{part}")
    return "\n".join(out)


def cmd_routes(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if loaded is None:
        return 1
    print(routes_table(loaded[1]))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if loaded is None:
        return 1
    config, rules = loaded
    overrides = Overrides(host=args.host, port=args.port)
    config = overrides.apply(config)
    setup_logging(config.logging)
    opened = open_listener(config)
    if opened is not None:
        if not config.server.allow_open:
            log.error(
                "refusing to listen on %s: %s",
                opened,
                open_refusal(config),
                extra={"event": "refused_open"},
            )
            return 2
        log.warning(
            "listening on %s (server.allow_open: true): anyone who can reach that address "
            "can use this proxy",
            opened,
            extra={"event": "open"},
        )
    workers = args.workers or config.server.workers
    try:
        if workers > 1:
            return supervise(
                config,
                path=args.config,
                overrides=overrides,
                workers=workers,
                fake_upstream=args.fake_upstream,
                watch_files=args.watch,
            )
        run_single(
            config,
            rules,
            path=args.config,
            overrides=overrides,
            fake_upstream=args.fake_upstream,
            reuse_port=False,
            watch_files=args.watch,
        )
    except OSError as exc:
        print(
            f"bloxproxy: cannot listen on {config.server.host}:{config.server.port}: "
            f"{exc.strerror}",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from .openapi import dumps, openapi_for

    loaded = _load(args.config)
    if loaded is None:
        return 1
    data = dumps(openapi_for(*loaded))
    if args.output:
        with open(args.output, "wb") as f:
            f.write(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


def cmd_import_limits(args: argparse.Namespace) -> int:
    paths: list[str] = args.documents
    if args.source and len(args.source) != len(paths):
        print(
            f"import-limits: {len(paths)} document(s) but {len(args.source)} --source: give "
            "one --source per document, in the same order, or none",
            file=sys.stderr,
        )
        return 1
    prefixes = tuple(args.prefix) or ("/cloud/", "/legacy-")
    documents: list[cloudlimits.Document] = []
    for i, path in enumerate(paths):
        try:
            with open(path, "rb") as f:
                document = orjson.loads(f.read())
            limits = cloudlimits.extract(document, prefixes)
        except (OSError, orjson.JSONDecodeError, cloudlimits.TableError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 1
        info = document.get("info") if isinstance(document, dict) else None
        version = str(info.get("version", "")) if isinstance(info, dict) else ""
        source = args.source[i] if args.source else os.path.basename(path)
        documents.append(cloudlimits.Document(path, source, version, tuple(limits)))
    try:
        count = len(cloudlimits.combine(documents))
        text = cloudlimits.tables_text(documents)
    except cloudlimits.TableError as exc:
        print(f"import-limits: {exc}", file=sys.stderr)
        return 1
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"{count} operation(s) written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_fake(args: argparse.Namespace) -> int:
    from .fake import run_fake

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(
        f"fake Roblox upstream on http://{args.host}:{args.port}/{{service}}/{{path}}", flush=True
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_fake(args.host, args.port, latency=args.latency))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "serve": cmd_serve,
        "check": cmd_check,
        "routes": cmd_routes,
        "fake-roblox": cmd_fake,
        "openapi": cmd_openapi,
        "import-limits": cmd_import_limits,
    }
    try:
        return commands[args.command](args)
    except BrokenPipeError:
        # `bloxproxy routes | head`: the reader went away. No traceback; nothing more to
        # write (stdout is pointed at /dev/null so the flush at exit does not fail again).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
