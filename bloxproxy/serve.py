"""Running the proxy: one process, or a supervisor with N workers on one port.

- **Graceful shutdown** (SIGTERM/SIGINT): the listening socket closes at once, in-flight
  requests get ``server.shutdown_grace`` to finish, then upstream and Redis connections
  close (aiohttp's runner does it in that order).
- **Hot reload** (SIGHUP, or ``serve --watch`` when a config or rule file changes): config
  and rules are loaded and validated *in full* first; only then are they swapped in, as one
  object, so a request in flight finishes on the rules it started with. An invalid change is
  logged with the same ``file:line`` messages as ``bloxproxy check``, counted in
  ``bloxproxy_reloads_total{result="error"}``, and the old rules keep serving. Settings that
  only take effect at start (listening address, workers, Redis URL, pool and cache sizes) are
  reported as needing a restart and keep their running values.
- **Client connections** (:func:`start_runner`): header, body and keep-alive deadlines and a
  cap (:mod:`bloxproxy.connections`), the cap lowered to what the open-file limit holds,
  whose soft value is raised to the hard one at start (:mod:`bloxproxy.files`). With
  ``server.ops_port``, a second listener serves healthz, readyz and metrics without keys
  (:mod:`bloxproxy.ops`).
- **Workers** (``--workers N``): the supervisor starts N processes that bind the same port
  with ``SO_REUSEPORT``; each has its own L1 and they share Redis when configured. Signals
  are forwarded; a worker that dies is restarted. A scrape of ``/_bloxproxy/metrics``
  reaching any worker answers the sum over all of them (:mod:`bloxproxy.siblings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import ipaddress
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from . import config as config_mod
from .config import Config
from .connections import Limits, guard_connections
from .errors import ConfigError, Problem
from .files import connection_cap, open_file_limit, raise_file_limit
from .ops import OPS_MAX_CONNECTIONS, create_ops_app
from .rules import RuleSet, load_configured, rule_files
from .siblings import Siblings, serve_snapshots

log = logging.getLogger("bloxproxy")

# Settings read once at start: a reload reports a change here and keeps the running value
# (some are also read live, e.g. auth.header by the proxy: applying half of one would split
# the behaviour — a new access-key header dropped while the old one is checked and leaks).
RESTART_ONLY = (
    "server.host",
    "server.port",
    "server.allow_open",
    "server.workers",
    "server.max_body_size",
    "server.shutdown_grace",
    "server.admin_token",
    "server.header_timeout",
    "server.body_timeout",
    "server.keepalive_timeout",
    "server.max_connections",
    "server.ops_host",
    "server.ops_port",
    "cache.redis",
    "cache.max_bytes",
    "cache.max_entries",
    "cache.enabled",
    "cache.coalesce_timeout",
    "cache.credential_secret",
    "upstream.max_connections",
    "upstream.timeout",
    "upstream.connect_timeout",
    "upstream.user_agent",
    "retries.deadline",
    "limits.upstream.shared",
    "limits.clients",
    "limits.auth_failures",
    "auth",
    "logging",
)


def is_loopback(host: str) -> bool:
    """``127.0.0.0/8``, ``::1`` or ``localhost``. Anything else may be reachable from other
    machines: another address, a host name, ``0.0.0.0``/``::``, and ``""`` (every interface)."""
    name = host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def open_listener(config: Config) -> str | None:
    """What is open about serving ``config``, or None: a listening address beyond loopback
    with no access keys lets anyone who reaches it use the proxy (``serve`` refuses that
    unless ``server.allow_open`` is set)."""
    server = config.server
    if config.auth.keyed or is_loopback(server.host):
        return None
    where = f"{server.host or '*'}:{server.port}"
    if config.limits.clients.rate > 0:
        return f"{where} with no access keys"
    return f"{where} with no access keys and no client rate limit"


def open_refusal(config: Config) -> str:
    """Why ``serve`` does not start on an :func:`open_listener`, and the three ways out."""
    return (
        "anyone who can reach that address could use this proxy. Set access keys (auth.keys, "
        f"e.g. BLOXPROXY_AUTH_KEYS=key1,key2; clients send one in {config.auth.header}), "
        "listen on 127.0.0.1 (--host, BLOXPROXY_SERVER_HOST), or allow it with "
        "server.allow_open: true (BLOXPROXY_SERVER_ALLOW_OPEN=true)"
    )


def load_all(path: str | None, env: dict[str, str] | None = None) -> tuple[Config, RuleSet]:
    """Config and rules together, every problem of both in one ConfigError."""
    problems: list[Problem] = []
    config: Config | None = None
    try:
        config = config_mod.load(path, env=env)
    except ConfigError as exc:
        problems.extend(exc.problems)
    rules: RuleSet | None = None
    try:
        rules = load_configured(config or config_mod.salvage_rule_paths(path, env))
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems or config is None or rules is None:
        raise ConfigError(problems)
    return config, rules


def _get(config: Config, dotted: str) -> Any:
    value: Any = config
    for name in dotted.split("."):
        value = getattr(value, name)
    return value


def restart_needed(old: Config, new: Config) -> list[str]:
    return [key for key in RESTART_ONLY if _get(old, key) != _get(new, key)]


def _replace(obj: Any, dotted: str, value: Any) -> Any:
    name, _, rest = dotted.partition(".")
    if rest:
        value = _replace(getattr(obj, name), rest, value)
    return dataclasses.replace(obj, **{name: value})


def keep_restart_only(old: Config, new: Config) -> Config:
    """``new`` with every restart-only setting as it is in ``old`` (the running values)."""
    for key in RESTART_ONLY:
        new = _replace(new, key, _get(old, key))
    return new


@dataclasses.dataclass
class Overrides:
    """What the command line changes on top of the config file."""

    host: str | None = None
    port: int | None = None
    base_url: str | None = None  # --fake-upstream

    def apply(self, config: Config) -> Config:
        server = config.server
        if self.host:
            server = dataclasses.replace(server, host=self.host)
        if self.port is not None:
            server = dataclasses.replace(server, port=self.port)
        config = dataclasses.replace(config, server=server)
        if self.base_url:
            config = dataclasses.replace(
                config,
                upstream=dataclasses.replace(config.upstream, base_url=self.base_url, services={}),
            )
        return config


def reload_app(app: web.Application, path: str | None, overrides: Overrides) -> bool:
    """Validate config and rules from disk, then swap them in; False when rejected."""
    from .app import apply_reload
    from .appkeys import METRICS, PIPELINE

    metrics = app.get(METRICS)
    try:
        config, rules = load_all(path)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("reload rejected: %s", problem, extra={"event": "reload_rejected"})
        if metrics is not None:
            metrics.reloads.labels("error").inc()
        return False
    except Exception:
        # A loader failure that is not a ConfigError must not escape into the loop's signal
        # callback or end the --watch task: the old rules keep serving all the same.
        log.exception(
            "reload rejected: the config or rules could not be loaded",
            extra={"event": "reload_rejected"},
        )
        if metrics is not None:
            metrics.reloads.labels("error").inc()
        return False
    config = overrides.apply(config)
    running = app[PIPELINE].config
    pending = restart_needed(running, config)
    if pending:
        log.warning("reload: these settings change only on restart: %s", ", ".join(pending))
        config = keep_restart_only(running, config)
    apply_reload(app, config, rules)
    if metrics is not None:
        metrics.reloads.labels("ok").inc()
    log.info(
        "reloaded: %d routes from %d rule file(s)",
        len(rules.routes),
        len(rules.files),
        extra={"event": "reloaded"},
    )
    log_overrides(rules)
    return True


def log_overrides(rules: RuleSet) -> None:
    for override in rules.overrides:
        log.info("rules: %s", override, extra={"event": "rule_override"})


def watched_files(config: Config, path: str | None) -> list[Path]:
    files = [Path(path)] if path else []
    with contextlib.suppress(OSError):
        files.extend(rule_files(config.rule_paths()))
    return files


def _mtimes(files: Sequence[Path]) -> dict[Path, int]:
    out = {}
    for f in files:
        with contextlib.suppress(OSError):
            out[f] = f.stat().st_mtime_ns
    return out


async def watch(
    app: web.Application, path: str | None, overrides: Overrides, interval: float = 1.0
) -> None:
    """Poll the config and rule files (and rule directories for new files); reload on change."""
    from .appkeys import PIPELINE

    seen = _mtimes(watched_files(app[PIPELINE].config, path))
    while True:
        await asyncio.sleep(interval)
        now = _mtimes(watched_files(app[PIPELINE].config, path))
        if now != seen:
            seen = now
            reload_app(app, path, overrides)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def serve(
    config: Config,
    rules: RuleSet,
    *,
    path: str | None,
    overrides: Overrides,
    fake_upstream: bool = False,
    reuse_port: bool = False,
    watch_files: bool = False,
    siblings: Siblings | None = None,
) -> None:
    """Run one server process until SIGINT/SIGTERM (a worker of ``siblings`` when given)."""
    from .app import create_app
    from .appkeys import METRICS, SIBLINGS

    before, after = raise_file_limit()
    if after > before:
        log.info("raised the open-file limit from %d to %d (the hard limit)", before, after)
    runners: list[web.AppRunner] = []
    if fake_upstream:
        from .fake import create_fake_app

        fake_port = free_port()
        fake_runner = web.AppRunner(create_fake_app(), access_log=None)
        await fake_runner.setup()
        await web.TCPSite(fake_runner, "127.0.0.1", fake_port).start()
        runners.append(fake_runner)
        overrides = dataclasses.replace(
            overrides, base_url=f"http://127.0.0.1:{fake_port}/{{service}}"
        )
        config = overrides.apply(config)
        log.info("fake Roblox upstream on http://127.0.0.1:%d", fake_port)
    app = create_app(config, rules=rules)
    if siblings is not None:
        app[SIBLINGS] = siblings
    runner = await start_runner(app, config)
    runners.insert(0, runner)
    site = web.TCPSite(
        runner, config.server.host, config.server.port, reuse_port=reuse_port or None, backlog=1024
    )
    await site.start()
    if config.server.ops_port:
        ops_runner = await start_ops_runner(app, config)
        runners.insert(0, ops_runner)  # closed first: nothing there needs draining
        host, port = config.server.ops_host, config.server.ops_port
        await web.TCPSite(ops_runner, host, port, reuse_port=reuse_port or None).start()
        log.info("ops endpoints (no access keys) on http://%s:%d/_bloxproxy/", host, port)
    if siblings is not None:
        # closed last: while this worker drains, a sibling's scrape still counts its numbers
        runners.append(await serve_snapshots(siblings, app[METRICS].registry))
    _tune_gc()
    log.info(
        "bloxproxy listening on http://%s:%d (%d clean routes, pid %d)",
        config.server.host,
        config.server.port,
        len(rules.routes),
        os.getpid(),
    )
    log_overrides(rules)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_app, app, path, overrides)
    watcher = asyncio.create_task(watch(app, path, overrides)) if watch_files else None
    try:
        await stop.wait()
    finally:
        log.info(
            "shutting down: finishing in-flight requests (up to %gs)", config.server.shutdown_grace
        )
        if watcher is not None:
            watcher.cancel()
        for r in runners:
            await r.cleanup()
        log.info("stopped")


MAX_LINE = 16384


def shutdown_timeout(grace: float) -> float:
    """aiohttp's ``shutdown_timeout`` that bounds an in-flight request at ``grace``.

    aiohttp 3.14 (``RequestHandler.shutdown``) waits ``shutdown_timeout`` for a handler,
    then - its "cancel" only fails body reads - waits that long again before cancelling it,
    and takes 0 as "no limit": so half the grace, never 0."""
    return max(grace / 2, 0.001)


async def start_runner(app: web.Application, config: Config) -> web.AppRunner:
    """The runner every server of ours uses (``serve`` and the live tests): client
    connections with deadlines and a cap (:mod:`bloxproxy.connections`)."""
    server = config.server
    files = open_file_limit()
    cap = connection_cap(config, files, extra=OPS_MAX_CONNECTIONS if server.ops_port else 0)
    if cap < server.max_connections:
        log.warning(
            "server.max_connections %d lowered to %d: the open-file limit is %d "
            "(raise it, e.g. docker run --ulimit nofile=65536:65536)",
            server.max_connections,
            cap,
            files,
            extra={"event": "file_limit"},
        )
    return await _runner(app, app, config, cap, "main")


async def start_ops_runner(app: web.Application, config: Config) -> web.AppRunner:
    """The ops listener's runner (``server.ops_port``): ``app``'s healthz, readyz and
    metrics without access keys (:mod:`bloxproxy.ops`), with a connection cap of its own."""
    return await _runner(create_ops_app(app), app, config, OPS_MAX_CONNECTIONS, "ops")


async def _runner(
    serving: web.Application, app: web.Application, config: Config, cap: int, listener: str
) -> web.AppRunner:
    from .appkeys import CONNECTIONS

    server = config.server
    # Request lines and headers up to 16 KiB (aiohttp: 8 KiB): long cursors and id lists
    # fit; beyond, the client gets a 400 problem (middlewares.ProblemRequestHandler, which
    # connections.GuardedRequestHandler extends), never plain text.
    runner = web.AppRunner(
        serving,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout(server.shutdown_grace),
        max_line_size=MAX_LINE,
        max_field_size=MAX_LINE,
        keepalive_timeout=server.keepalive_timeout,
    )
    await runner.setup()
    limits = Limits(server.header_timeout, server.body_timeout, cap)
    guard_connections(runner, limits, app[CONNECTIONS].counts(listener))
    return runner


def run_single(
    config: Config,
    rules: RuleSet,
    *,
    path: str | None,
    overrides: Overrides,
    fake_upstream: bool,
    reuse_port: bool,
    watch_files: bool,
    siblings: Siblings | None = None,
) -> None:
    _use_uvloop()
    asyncio.run(
        serve(
            config,
            rules,
            path=path,
            overrides=overrides,
            fake_upstream=fake_upstream,
            reuse_port=reuse_port,
            watch_files=watch_files,
            siblings=siblings,
        )
    )


def _tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path (see docs/ARCHITECTURE.md).

    ``gc.freeze()`` moves everything alive once the server is up (modules, rules, the app)
    out of the collector's sight for good. The higher first threshold lets the objects of
    requests in flight die by reference counting before a collection looks at them, instead
    of being promoted to the old generation, whose growth triggers full collections.
    Measured on the miss path (bench/RESULTS.md): +20 % throughput, p99 halved.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)  # CPython's default: 700, 10, 10


def _use_uvloop() -> None:
    """uvloop when installed (hits x 1.17, misses x 1.12: bench/RESULTS.md, case 8); asyncio
    otherwise."""
    if os.environ.get("BLOXPROXY_NO_UVLOOP"):
        return
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


def _worker(
    path: str | None, overrides: Overrides, watch_files: bool, siblings: Siblings | None
) -> None:
    from .logs import setup_logging

    config, rules = load_all(path)
    config = overrides.apply(config)
    setup_logging(config.logging)
    run_single(
        config,
        rules,
        path=path,
        overrides=overrides,
        fake_upstream=False,
        reuse_port=True,
        watch_files=watch_files,
        siblings=siblings,
    )


WORKER_START_WINDOW = 5.0  # seconds: a worker dying sooner after its start "failed to start"
WORKER_START_FAILURES = 3


def supervise(
    config: Config,
    *,
    path: str | None,
    overrides: Overrides,
    workers: int,
    fake_upstream: bool,
    watch_files: bool,
) -> int:
    """Start ``workers`` processes on one port; forward signals; restart the dead."""
    ctx = multiprocessing.get_context("spawn")
    fake_proc = None
    if fake_upstream:
        fake_port = free_port()
        fake_proc = ctx.Process(target=_run_fake_process, args=(fake_port,), daemon=True)
        fake_proc.start()
        overrides = dataclasses.replace(
            overrides, base_url=f"http://127.0.0.1:{fake_port}/{{service}}"
        )
        log.info("fake Roblox upstream on http://127.0.0.1:%d", fake_port)

    directory = _siblings_directory()

    def start_one(index: int) -> Any:
        siblings = None if directory is None else Siblings(directory, index, workers)
        p = ctx.Process(target=_worker, args=(path, overrides, watch_files, siblings))
        p.start()
        return p

    procs: list[Any] = []
    stopping = False
    code = 0

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGTERM if signum == signal.SIGINT else signum)

    # Handlers first: a SIGTERM while workers start must still reach every worker.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for i in range(workers):
        if not stopping:
            procs.append(start_one(i))
    started = [time.monotonic()] * len(procs)
    quick_deaths = [0] * len(procs)
    log.info("supervising %d workers on port %d", workers, config.server.port)
    while not stopping:
        time.sleep(0.2)
        for i, p in enumerate(procs):
            if not p.is_alive() and not stopping:
                # A worker that cannot even start (port taken, bad file) would be restarted
                # forever: after a few deaths in a row right after start, give up.
                quick = time.monotonic() - started[i] < WORKER_START_WINDOW
                quick_deaths[i] = quick_deaths[i] + 1 if quick else 0
                if quick_deaths[i] >= WORKER_START_FAILURES:
                    log.error(
                        "worker exited with %s within %gs of starting, %d times in a row; stopping",
                        p.exitcode,
                        WORKER_START_WINDOW,
                        quick_deaths[i],
                    )
                    code = 1
                    forward(signal.SIGTERM, None)
                    break
                log.warning("worker pid %s exited with %s; restarting", p.pid, p.exitcode)
                procs[i] = start_one(i)
                started[i] = time.monotonic()
    deadline = time.monotonic() + config.server.shutdown_grace + 5
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
    if fake_proc is not None:
        fake_proc.kill()
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
    return code


def _siblings_directory() -> str | None:
    """A private directory (0700) for the workers' sockets (:mod:`bloxproxy.siblings`), in
    the temporary directory (``TMPDIR``); None, logged, when none can be made: each worker's
    metrics are then its own."""
    try:
        return tempfile.mkdtemp(prefix="bloxproxy-workers-")
    except OSError as exc:
        log.warning(
            "no directory for the workers' sockets (%s): a scrape of /_bloxproxy/metrics "
            "shows one worker's numbers, not the sum; set TMPDIR to a writable directory",
            exc,
            extra={"event": "no_metrics_view"},
        )
        return None


def _run_fake_process(port: int) -> None:
    from .fake import run_fake

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_fake("127.0.0.1", port))
