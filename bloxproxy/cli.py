"""Command line: ``bloxproxy serve | check | routes | fake-roblox``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

from aiohttp import web

from . import config as config_mod
from .config import Config
from .errors import ConfigError
from .logs import setup_logging
from .rules import RuleSet, load_rules

log = logging.getLogger("bloxproxy")


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", metavar="PATH", default=os.environ.get("BLOXPROXY_CONFIG"),
        help="config file (default: $BLOXPROXY_CONFIG, else the embedded defaults)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bloxproxy",
        description="A caching reverse proxy and protocol adapter for the Roblox web APIs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the proxy",
                           description="Run the proxy until SIGINT/SIGTERM.")
    _config_arg(serve)
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument("--fake-upstream", action="store_true",
                       help="start the bundled fake Roblox in-process and send every upstream "
                            "request to it (works with no network)")

    check = sub.add_parser("check", help="validate config and rules",
                           description="Validate the config and every rule file; print each "
                                       "problem as file:line: message. Exit 1 when invalid.")
    _config_arg(check)

    routes = sub.add_parser("routes", help="list the clean routes",
                            description="Print the clean routes, the upstream request each "
                                        "becomes, and their cache TTLs.")
    _config_arg(routes)

    fake = sub.add_parser("fake-roblox", help="run the bundled fake Roblox upstream",
                          description="Serve the fake Roblox upstream (/{service}/{path}) for "
                                      "tests and demos.")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=9000)
    fake.add_argument("--latency", type=float, default=0.0,
                      help="seconds added to every answer")
    return parser


def load_all(path: str | None) -> tuple[Config, RuleSet]:
    """Config and rules together, every problem of both in one ConfigError."""
    problems = []
    config: Config | None = None
    try:
        config = config_mod.load(path)
    except ConfigError as exc:
        problems.extend(exc.problems)
    rules: RuleSet | None = None
    try:
        rules = load_rules((config or Config()).rule_paths())
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems or config is None or rules is None:
        raise ConfigError(problems)
    return config, rules


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config, rules = load_all(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"ok: config {args.config or '<defaults>'}, {len(rules.routes)} routes "
          f"from {len(rules.files)} rule file(s)")
    return 0


def _duration(seconds: float) -> str:
    if seconds == 0:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def routes_table(rules: RuleSet) -> str:
    rows = [("ROUTE", "UPSTREAM", "TTL", "SWR", "SIE")]
    for r in sorted(rules.routes, key=lambda r: r.endpoint):
        b = r.backend
        query = "&".join(f"{k}={v}" for k, v in b.query.items)
        upstream = f"{b.method} {b.service}{b.path.text}" + (f"?{query}" if query else "")
        c = r.cache
        ttl = _duration(c.ttl) if c.enabled else "off"
        rows.append((f"{r.method} {r.endpoint}", upstream, ttl,
                     _duration(c.stale_while_revalidate), _duration(c.stale_if_error)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def cmd_routes(args: argparse.Namespace) -> int:
    try:
        _, rules = load_all(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    print(routes_table(rules))
    return 0


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def _serve(config: Config, rules: RuleSet, fake_upstream: bool) -> None:
    from .app import create_app

    runners: list[web.AppRunner] = []
    if fake_upstream:
        from .fake import create_fake_app

        fake_port = _free_port("127.0.0.1")
        fake_runner = web.AppRunner(create_fake_app(), access_log=None)
        await fake_runner.setup()
        await web.TCPSite(fake_runner, "127.0.0.1", fake_port).start()
        runners.append(fake_runner)
        config = dataclasses.replace(config, upstream=dataclasses.replace(
            config.upstream, base_url=f"http://127.0.0.1:{fake_port}/{{service}}", services={}))
        log.info("fake Roblox upstream on http://127.0.0.1:%d", fake_port)
    app = create_app(config, rules=rules)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    runners.insert(0, runner)
    site = web.TCPSite(runner, config.server.host, config.server.port)
    await site.start()
    log.info("bloxproxy listening on http://%s:%d (%d clean routes)",
             config.server.host, config.server.port, len(rules.routes))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        for r in runners:
            await r.cleanup()


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config, rules = load_all(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    server = config.server
    if args.host:
        server = dataclasses.replace(server, host=args.host)
    if args.port is not None:
        server = dataclasses.replace(server, port=args.port)
    config = dataclasses.replace(config, server=server)
    setup_logging(config.logging)
    try:
        asyncio.run(_serve(config, rules, args.fake_upstream))
    except OSError as exc:
        print(f"bloxproxy: cannot listen on {server.host}:{server.port}: {exc.strerror}",
              file=sys.stderr)
        return 1
    return 0


def cmd_fake(args: argparse.Namespace) -> int:
    from .fake import run_fake

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"fake Roblox upstream on http://{args.host}:{args.port}/{{service}}/{{path}}",
          flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_fake(args.host, args.port, latency=args.latency))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"serve": cmd_serve, "check": cmd_check, "routes": cmd_routes,
                "fake-roblox": cmd_fake}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
