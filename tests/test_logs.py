"""Log lines: repeats are rate-limited so that no fault can fill the disk.

A real :class:`~bloxproxy.logs.LimitedHandler` on a logger of its own, writing to a
buffer; the window moves with the injected clock. The whole process under a flood (asyncio's
accept errors once descriptors run out) is ``test_hostile_front.py``'s.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from bloxproxy.config import LoggingConfig
from bloxproxy.logs import DISTINCT, JsonFormatter, LimitedHandler, Repeats, setup_logging
from tests.conftest import FakeClock


class Captured:
    def __init__(self, limit: int, clock: FakeClock) -> None:
        self.stream = io.StringIO()
        self.handler = LimitedHandler(self.stream, Repeats(limit, 60.0, clock))
        self.handler.setFormatter(JsonFormatter())
        self.log = logging.getLogger(f"bloxproxy.test_logs.{id(self)}")
        self.log.propagate = False
        self.log.setLevel(logging.DEBUG)
        self.log.addHandler(self.handler)

    def lines(self) -> list[dict[str, object]]:
        out = [orjson.loads(line) for line in self.stream.getvalue().splitlines()]
        self.stream.seek(0)
        self.stream.truncate()
        return out

    def close(self) -> None:
        self.log.removeHandler(self.handler)


@pytest.fixture
def captured(clock: FakeClock) -> Iterator[Captured]:
    c = Captured(3, clock)
    yield c
    c.close()


def test_a_repeated_line_is_written_limit_times_then_summarized(
    captured: Captured, clock: FakeClock
) -> None:
    for i in range(1000):
        try:
            raise RuntimeError(f"boom {i}")
        except RuntimeError:
            captured.log.exception("unhandled error")
    lines = captured.lines()
    assert [line["message"] for line in lines] == ["unhandled error"] * 3
    assert all("Traceback" in str(line["exception"]) for line in lines)
    clock.advance(60)
    captured.log.warning("something else")
    summary, other = captured.lines()
    assert summary["event"] == "log_lines_left_out" and summary["left_out"] == 997
    assert "unhandled error" in str(summary["message"]) and summary["level"] == "WARNING"
    assert other["message"] == "something else"


def test_lines_are_the_same_by_logger_level_and_first_line(captured: Captured) -> None:
    for i in range(5):
        captured.log.error("socket.accept() out of system resource\nsocket: fd=%d", i)
        captured.log.warning("socket.accept() out of system resource")
        captured.log.error("reload rejected: rules/users.yaml:%d: bad", i)
    messages = [str(line["message"]).split("\n")[0] for line in captured.lines()]
    assert messages.count("socket.accept() out of system resource") == 6  # 3 ERROR, 3 WARNING
    assert len([m for m in messages if m.startswith("reload rejected")]) == 5  # all distinct


def test_lines_that_all_differ_are_bounded_too(captured: Captured, clock: FakeClock) -> None:
    for i in range(5000):
        captured.log.error("peer %d went away", i)
    assert len(captured.lines()) == 3 * DISTINCT
    clock.advance(60)
    captured.log.error("after")
    lines = captured.lines()
    # one summary per kind up to the limit, then one for the rest: never a flood itself
    assert len(lines) == 3 + 1 + 1
    assert sum(int(str(line.get("left_out", 0))) for line in lines) == 5000 - 3 * DISTINCT
    assert lines[-1]["message"] == "after"


def test_closing_the_handler_writes_the_last_summary(captured: Captured) -> None:
    for _ in range(10):
        captured.log.error("again")
    captured.handler.close()
    assert [line.get("left_out") for line in captured.lines()] == [None] * 3 + [7]


def test_zero_is_no_limit(clock: FakeClock) -> None:
    c = Captured(0, clock)
    for _ in range(500):
        c.log.error("again")
    assert len(c.lines()) == 500
    c.close()


def test_setup_logging_installs_the_limit(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        setup_logging(LoggingConfig(repeat_limit=2, repeat_window=30.0))
        assert isinstance(root.handlers[0], LimitedHandler)
        for _ in range(5):
            logging.getLogger("bloxproxy.test_logs").error("the same, again")
        assert capsys.readouterr().err.count("the same, again") == 2
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
