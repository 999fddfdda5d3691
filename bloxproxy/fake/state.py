"""Mutable state of a fake Roblox upstream: request log, counters, latency, faults, CSRF."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .data import PENDING_THUMBNAIL_USER_ID
from .faults import Fault

#: Default number of requests kept in :attr:`FakeRoblox.requests` (about 1 KB each; the
#: counters are unbounded).
DEFAULT_LOG_LIMIT = 20_000


def normalize_path(path: str) -> str:
    """Drop any query string and collapse duplicate/trailing slashes: ``//v1//x/`` -> ``/v1/x``."""
    return "/" + "/".join(s for s in path.partition("?")[0].split("/") if s)


def viewer_tag(credential: str) -> str:
    """The ``_fakeViewer`` value: first 16 hex digits of sha256 of the credential value."""
    return hashlib.sha256(credential.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request that reached a Roblox path of the fake (control requests are not logged)."""

    method: str
    service: str  # lower-case, e.g. "users"
    path: str  # without service and query, duplicate slashes collapsed, e.g. "/v1/users/1"
    query: tuple[tuple[str, str], ...]
    headers: dict[str, str]  # lower-case names
    body: bytes
    raw_path: str = ""  # the request path exactly as received (with service, without query)
    at: float = 0.0  # the state's clock() when the request arrived


class FakeRoblox:
    """State shared by the fake's handlers; usable in-process by tests.

    ``clock`` timestamps :class:`Recorded` entries and drives CSRF token expiry
    (``csrf_ttl`` seconds, None = tokens never expire).
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        log_limit: int = DEFAULT_LOG_LIMIT,
        csrf_secret: bytes = b"bloxproxy-fake-roblox",
    ) -> None:
        self.latency: float = latency
        self.clock = clock
        self.csrf_ttl: float | None = None
        #: User ids whose avatar headshot is ``Pending`` (imageUrl null).
        self.pending_thumbnails: set[int] = {PENDING_THUMBNAIL_USER_ID}
        self._secret = csrf_secret
        self._csrf_epoch = 0
        self._log: deque[Recorded] = deque(maxlen=log_limit)
        self._counts: dict[tuple[str, str, str], int] = {}
        self._total = 0
        self._faults: dict[tuple[str | None, str, str], deque[Fault]] = {}

    # -- request log and counters -------------------------------------------------------------
    def record(self, entry: Recorded) -> None:
        """Log a request and bump its counters (called by the app for every Roblox request)."""
        self._log.append(entry)
        key = (entry.method, entry.service, entry.path)
        self._counts[key] = self._counts.get(key, 0) + 1
        self._total += 1

    @property
    def total(self) -> int:
        """Number of Roblox requests received since the last reset."""
        return self._total

    @property
    def requests(self) -> list[Recorded]:
        """The request log (oldest first, at most ``log_limit`` entries)."""
        return list(self._log)

    def count(self, service: str, path: str, method: str | None = None) -> int:
        """Requests to ``service`` + ``path`` (query ignored, slashes collapsed), optionally
        only those with the given method."""
        service, path = service.lower(), normalize_path(path)
        if method is not None:
            return self._counts.get((method.upper(), service, path), 0)
        return sum(n for (_, s, p), n in self._counts.items() if s == service and p == path)

    def counts(self) -> dict[str, int]:
        """All counters as ``{"GET users /v1/users/1": n, ...}``."""
        return {f"{m} {s} {p}": n for (m, s, p), n in self._counts.items()}

    def reset(self) -> None:
        """Clear the request log, the counters and all scripted faults (latency is kept)."""
        self._log.clear()
        self._counts.clear()
        self._total = 0
        self._faults.clear()

    # -- scripted faults ----------------------------------------------------------------------
    def script(
        self, service: str, path: str, faults: Iterable[Fault], method: str | None = None
    ) -> None:
        """Queue faults for ``(method or any, service, path)``; replaces an earlier script for
        the same key.  An empty list removes the script."""
        key = (None if method is None else method.upper(), service.lower(), normalize_path(path))
        queue = deque(faults)
        if queue:
            self._faults[key] = queue
        else:
            self._faults.pop(key, None)

    def take_fault(self, method: str, service: str, path: str) -> Fault | None:
        """Pop the next fault for a request (method-specific script first, then any-method)."""
        if not self._faults:
            return None
        for key in ((method, service, path), (None, service, path)):
            queue = self._faults.get(key)
            if queue:
                fault = queue.popleft()
                if not queue:
                    del self._faults[key]
                return fault
        return None

    def pending_faults(self) -> int:
        """Number of scripted faults not consumed yet."""
        return sum(len(q) for q in self._faults.values())

    # -- CSRF ---------------------------------------------------------------------------------
    def csrf_token(self, cookie: str | None) -> str:
        """The currently valid X-CSRF-TOKEN for a ``.ROBLOSECURITY`` value (None = anonymous)."""
        epoch = self._csrf_epoch
        if self.csrf_ttl is not None and self.csrf_ttl > 0:
            epoch += int(self.clock() // self.csrf_ttl) << 20
        msg = f"{epoch}:{cookie or ''}".encode()
        digest = hmac.new(self._secret, msg, hashlib.sha256).digest()
        return base64.b64encode(digest[:9]).decode()

    def rotate_csrf(self) -> None:
        """Invalidate every CSRF token handed out so far."""
        self._csrf_epoch += 1
