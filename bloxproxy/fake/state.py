"""Mutable state of a fake Roblox upstream: request log, counters, latency, faults, CSRF,
the per-client-IP rate limit and scripted thumbnail states."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .cloud import CloudState
from .data import PENDING_THUMBNAIL_USER_ID
from .faults import Fault
from .limits import IpLimit, IpLimiter, Verdict

#: Default number of requests kept in :attr:`FakeRoblox.requests` (about 1 KB each; the
#: counters are unbounded).
DEFAULT_LOG_LIMIT = 20_000

#: Thumbnail states Roblox answers: Completed, Pending and Blocked (noblox.js typings), plus
#: Error, InReview, Moderated (ro.py ``ThumbnailState``) and TemporarilyUnavailable (typed
#: Roblox clients).  Every state but Completed comes with ``imageUrl: null`` in the fake.
THUMBNAIL_STATES = frozenset(
    {"Completed", "Pending", "Blocked", "Error", "InReview", "Moderated", "TemporarilyUnavailable"}
)


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

    ``clock`` timestamps :class:`Recorded` entries, drives CSRF token expiry (``csrf_ttl``
    seconds, None = tokens never expire) and refills the per-client-IP rate limit
    (``ip_limit``, None = off; see :mod:`bloxproxy.fake.limits`).
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        log_limit: int = DEFAULT_LOG_LIMIT,
        csrf_secret: bytes = b"bloxproxy-fake-roblox",
        ip_limit: IpLimit | None = None,
    ) -> None:
        self.latency: float = latency
        self.clock = clock
        self.csrf_ttl: float | None = None
        #: User ids whose avatar thumbnails (headshot, full, bust) are ``Pending``.
        self.pending_thumbnails: set[int] = {PENDING_THUMBNAIL_USER_ID}
        self._secret = csrf_secret
        self._csrf_epoch = 0
        self._log: deque[Recorded] = deque(maxlen=log_limit)
        self._counts: dict[tuple[str, str, str], int] = {}
        self._total = 0
        self._faults: dict[tuple[str | None, str, str], deque[Fault]] = {}
        self._statuses: dict[int, int] = {}
        self._limited = 0
        self._limiter: IpLimiter | None = None
        self.ip_limit = ip_limit
        self._thumbnail_scripts: dict[tuple[str | None, int], deque[str]] = {}
        #: Open Cloud: API keys, the per-owner limit, long-running operations.
        self.cloud = CloudState(lambda: self.clock())

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

    def note_status(self, status: int) -> None:
        """Count an answer's status (called by the app for every answer it sends)."""
        self._statuses[status] = self._statuses.get(status, 0) + 1

    def statuses(self) -> dict[int, int]:
        """Answers sent per status since the last reset (dropped connections not included)."""
        return dict(self._statuses)

    @property
    def limited(self) -> int:
        """Requests refused with 429 by the per-client-IP limit since the last reset."""
        return self._limited

    def reset(self) -> None:
        """Clear the request log, the counters, all scripted faults and thumbnail states, and
        refill the rate-limit buckets (latency and the ``ip_limit`` setting are kept)."""
        self._log.clear()
        self._counts.clear()
        self._total = 0
        self._faults.clear()
        self._statuses.clear()
        self._limited = 0
        self._thumbnail_scripts.clear()
        if self._limiter is not None:
            self._limiter.clear()
        self.cloud.clear()

    # -- per-client-IP rate limit -------------------------------------------------------------
    @property
    def ip_limit(self) -> IpLimit | None:
        """The per-client-IP limit (None = off, the default).  Setting it refills the buckets."""
        return None if self._limiter is None else self._limiter.limit

    @ip_limit.setter
    def ip_limit(self, limit: IpLimit | None) -> None:
        # through self.clock at call time, so a test may swap the clock after setting a limit
        self._limiter = None if limit is None else IpLimiter(limit, lambda: self.clock())

    def take_token(self, ip: str, service: str) -> Verdict | None:
        """Charge one request from ``ip`` to ``service`` to the limit (None when it is off);
        a refused request is counted in :attr:`limited`."""
        if self._limiter is None:
            return None
        verdict = self._limiter.take(ip, service)
        if not verdict.allowed:
            self._limited += 1
        return verdict

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

    # -- thumbnail states ---------------------------------------------------------------------
    def script_thumbnail(
        self, target_id: int, states: Iterable[str], thumbnail_type: str | None = None
    ) -> None:
        """Answer ``target_id``'s thumbnails with ``states`` in turn, one per appearance in an
        answer; the last state then stays (``["Pending", "Completed"]``: Pending once, then
        Completed).  ``thumbnail_type`` (a ``POST /v1/batch`` type such as ``AvatarHeadShot``
        or ``GameIcon``) limits the script to one kind; None = every kind.  An empty list
        removes the script."""
        queue = deque(states)
        bad = sorted(set(queue) - THUMBNAIL_STATES)
        if bad:
            raise ValueError(f"unknown thumbnail state(s) {bad}; use {sorted(THUMBNAIL_STATES)}")
        key = (thumbnail_type, target_id)
        if queue:
            self._thumbnail_scripts[key] = queue
        else:
            self._thumbnail_scripts.pop(key, None)

    def thumbnail_state(self, thumbnail_type: str, target_id: int, user: bool = False) -> str:
        """The state of one thumbnail in an answer being built (consumes a scripted state).
        Unscripted: Pending for users in :attr:`pending_thumbnails` (``user`` kinds), else
        Completed."""
        if self._thumbnail_scripts:
            for key in ((thumbnail_type, target_id), (None, target_id)):
                queue = self._thumbnail_scripts.get(key)
                if queue:
                    state = queue[0]
                    if len(queue) > 1:
                        queue.popleft()
                    return state
        if user and target_id in self.pending_thumbnails:
            return "Pending"
        return "Completed"

    def thumbnail_scripts(self) -> int:
        """Number of thumbnail scripts in place."""
        return len(self._thumbnail_scripts)

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
