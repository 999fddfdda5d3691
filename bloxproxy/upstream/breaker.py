"""A service's health as the guard sees it: the circuit breaker.

A small state machine on an injected clock (the guard passes ``now``), no I/O. A refusal is
an :class:`~bloxproxy.errors.Unavailable` (503 with ``Retry-After``), which lets a stale
entry answer instead. (429s are not failures: they teach the scope's budget,
:mod:`.budget`.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import Unavailable

__all__ = ["BREAKER_CODES", "Breaker"]

log = logging.getLogger("bloxproxy.upstream")

BREAKER_CODES = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(slots=True)
class Breaker:
    """Consecutive-failure circuit breaker: closed → open → half-open (one probe) → …"""

    threshold: int
    open_for: float
    failures: int = 0
    state: str = "closed"
    opened_until: float = 0.0
    probing: bool = False

    def before(self, now: float, service: str) -> None:
        if self.state == "open":
            if now < self.opened_until:
                raise Unavailable(
                    f"{service} is failing; circuit open", "circuit_open", self.opened_until - now
                )
            self.state = "half_open"
        if self.state == "half_open":
            if self.probing:
                raise Unavailable(f"{service} is failing; waiting for a probe", "circuit_open", 1.0)
            self.probing = True

    def success(self) -> None:
        if self.state != "closed":
            log.info("circuit closed", extra={"event": "breaker_closed"})
        self.failures, self.state, self.probing = 0, "closed", False

    def failure(self, now: float, service: str) -> None:
        self.failures += 1
        self.probing = False
        if self.state == "half_open" or (
            self.state == "closed" and self.failures >= self.threshold
        ):
            if self.state == "closed":
                log.warning(
                    "circuit opened for %s after %d failures",
                    service,
                    self.failures,
                    extra={"event": "breaker_open", "service": service},
                )
            self.state, self.opened_until = "open", now + self.open_for

    def neutral(self) -> None:
        """An attempt that says nothing about health (a 429, a cancel) ends a probe."""
        self.probing = False
