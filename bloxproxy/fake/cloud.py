"""Open Cloud state of the fake: API keys (owner and scopes), the per-owner rate limit and
long-running operations.

* **Keys.** Roblox checks an ``x-api-key`` against the scopes its creator gave it and counts
  its requests against the key's *owner* (a user or a group: every key of one owner shares
  one limit; Roblox creator docs, ``cloud/reference/rate-limits.md``).  The fake knows the
  keys registered with :meth:`CloudState.add_key`; any other non-empty key is accepted with
  every scope and is its own owner (``keys/<viewer tag>``), so ad-hoc keys in tests work.
* **Per-owner limit** (off by default): one token bucket per owner, the same
  :class:`~bloxproxy.fake.limits.IpLimiter` the per-IP limit uses, keyed by owner.
* **Operations.** ``GenerateUserThumbnail`` answers a long-running ``Operation``
  (``{"path": "users/<id>/operations/<op>", "done": false}``) that is done after
  ``polls`` polls of ``GET /cloud/v2/users/<id>/operations/<op>`` (default 2); once a
  thumbnail was made, asking again answers ``done: true`` at once (Roblox keeps rendered
  thumbnails).  Operation ids are numbers here (Roblox's are opaque strings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .limits import IpLimit, IpLimiter, Verdict


@dataclass(frozen=True, slots=True)
class CloudKey:
    """A registered API key: its owner (``users/1`` or ``groups/7``) and scopes."""

    owner: str
    scopes: frozenset[str] = field(default_factory=frozenset)


@dataclass(slots=True)
class Operation:
    """A long-running operation: polls left before it is done, and its result."""

    path: str
    polls_left: int
    response: dict[str, object]


class CloudState:
    """Keys, the per-owner limit and the operations in flight."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._keys: dict[str, CloudKey] = {}
        self._limiter: IpLimiter | None = None
        self.limited = 0
        self.polls = 2  # polls before a new operation is done
        self._operations: dict[int, Operation] = {}
        self._made: dict[tuple[object, ...], dict[str, object]] = {}
        self._next_op = 1_000_001
        self._pending_what: dict[int, tuple[object, ...]] = {}

    # -- keys ---------------------------------------------------------------------------------
    def add_key(
        self, key: str, owner: str, scopes: frozenset[str] | set[str] = frozenset()
    ) -> None:
        """Register ``key`` for ``owner`` with ``scopes`` (others are refused with 403)."""
        self._keys[key] = CloudKey(owner, frozenset(scopes))

    def key(self, key: str) -> CloudKey | None:
        """The registered key, or None (an ad-hoc key: every scope, its own owner)."""
        return self._keys.get(key)

    # -- per-owner limit ----------------------------------------------------------------------
    @property
    def owner_limit(self) -> IpLimit | None:
        return None if self._limiter is None else self._limiter.limit

    @owner_limit.setter
    def owner_limit(self, limit: IpLimit | None) -> None:
        self._limiter = None if limit is None else IpLimiter(limit, lambda: self._clock())

    def take(self, owner: str) -> Verdict | None:
        """Charge one request to ``owner`` (None when the limit is off)."""
        if self._limiter is None:
            return None
        verdict = self._limiter.take(owner, "")
        if not verdict.allowed:
            self.limited += 1
        return verdict

    # -- operations ---------------------------------------------------------------------------
    def start(
        self, what: tuple[object, ...], prefix: str, response: dict[str, object]
    ) -> dict[str, object]:
        """The Operation for making ``what`` (``response`` once done); done at once when it
        was made before or ``polls`` is 0."""
        op_id = self._next_op
        self._next_op += 1
        path = f"{prefix}/operations/{op_id}"
        if what in self._made or self.polls <= 0:
            self._made[what] = response
            return {"path": path, "done": True, "response": response}
        self._operations[op_id] = Operation(path, self.polls, response)
        self._pending_what[op_id] = what
        return {"path": path, "done": False}

    def poll(self, prefix: str, op_id: int) -> dict[str, object] | None:
        """One poll of an operation (None: no such operation under ``prefix``)."""
        op = self._operations.get(op_id)
        if op is None or op.path != f"{prefix}/operations/{op_id}":
            return None
        op.polls_left = max(0, op.polls_left - 1)
        if op.polls_left > 0:
            return {"path": op.path, "done": False}
        what = self._pending_what.get(op_id)
        if what is not None:
            self._made[what] = op.response
        return {"path": op.path, "done": True, "response": op.response}

    def clear(self) -> None:
        """Forget operations, made results and the limit's buckets (keys are kept)."""
        self._operations.clear()
        self._pending_what.clear()
        self._made.clear()
        self.limited = 0
        if self._limiter is not None:
            self._limiter.clear()
