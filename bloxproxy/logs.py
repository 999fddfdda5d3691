"""Logging setup: JSON or text lines on stderr, level from config, repeats rate-limited.

No fault may fill the disk through the log: a line that keeps coming back (a traceback per
request, asyncio's "socket.accept() out of system resource" a thousand times a second once
descriptors run out) is written at most ``logging.repeat_limit`` times per
``logging.repeat_window``, then one line says how many were left out (:class:`Repeats`).
Lines are "the same" when their logger, level and first line of text are; beyond
``repeat_limit`` x :data:`DISTINCT` lines of any kind in one window, the rest wait for
the next one too, so a flood of lines that all differ is bounded as well. The access log
does not go through :mod:`logging`: it is one line per answered request.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from .config import LoggingConfig

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


DISTINCT = 20  # a window lets through repeat_limit x DISTINCT lines in all
_MAX_KEYS = 4096  # distinct lines remembered per window (beyond, they count as one)


class Repeats:
    """Which records a handler writes: each kind at most ``limit`` times per ``window``
    seconds, then a summary of what was left out (see the module docstring)."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit, self._window, self._clock = limit, window, clock
        self._lock = threading.Lock()
        self._started = clock()
        self._seen: dict[tuple[str, str], list[int]] = {}  # (logger, text) -> [seen, written]
        self._written = 0

    def admit(self, record: logging.LogRecord) -> tuple[bool, list[logging.LogRecord]]:
        """Whether to write ``record``, and the summaries of a window that just ended."""
        if self._limit <= 0:
            return True, []
        with self._lock:
            summaries = self._flush() if self._clock() - self._started >= self._window else []
            try:
                text = record.getMessage()
            except Exception:  # a broken format: logging reports it when writing
                text = str(record.msg)
            key = (record.name, f"{record.levelname} {text.split(chr(10), 1)[0][:200]}")
            if key not in self._seen and len(self._seen) >= _MAX_KEYS:
                key = ("", "distinct lines")
            counts = self._seen.setdefault(key, [0, 0])
            counts[0] += 1
            ok = counts[0] <= self._limit and self._written < self._limit * DISTINCT
            if ok:
                counts[1] += 1
                self._written += 1
            return ok, summaries

    def flush(self) -> list[logging.LogRecord]:
        """The summaries of the window so far (and a new window)."""
        with self._lock:
            return self._flush()

    def _flush(self) -> list[logging.LogRecord]:
        """One line per kind left out, the most left out first; past ``limit`` kinds, one
        line for all the others (the summary must not be a flood of its own)."""
        left = sorted(
            ((seen - written, name, text) for (name, text), (seen, written) in self._seen.items()),
            reverse=True,
        )
        left = [item for item in left if item[0] > 0]
        summaries = [
            self._summary(
                "left out %d repeats of a log line in %gs: %s: %s", n, self._window, name, text
            )
            for n, name, text in left[: self._limit]
        ]
        rest = left[self._limit :]
        if rest:
            n = sum(item[0] for item in rest)
            summaries.append(
                self._summary(
                    "left out %d more log lines of %d other kinds in %gs",
                    n,
                    len(rest),
                    self._window,
                )
            )
        self._started, self._seen, self._written = self._clock(), {}, 0
        return summaries

    @staticmethod
    def _summary(msg: str, left_out: int, *args: object) -> logging.LogRecord:
        record = logging.LogRecord(
            "bloxproxy.logs", logging.WARNING, __file__, 0, msg, (left_out, *args), None
        )
        record.__dict__.update(event="log_lines_left_out", left_out=left_out)
        return record


class LimitedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes what :class:`Repeats` admits."""

    def __init__(self, stream: Any, repeats: Repeats) -> None:
        super().__init__(stream)
        self.repeats = repeats

    def handle(self, record: logging.LogRecord) -> bool:
        ok, summaries = self.repeats.admit(record)
        for summary in summaries:
            super().handle(summary)
        return bool(super().handle(record)) if ok else False

    def close(self) -> None:
        for summary in self.repeats.flush():
            super().handle(summary)
        super().close()


def setup_logging(config: LoggingConfig) -> None:
    handler = LimitedHandler(sys.stderr, Repeats(config.repeat_limit, config.repeat_window))
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level)
