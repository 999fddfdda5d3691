"""The ``Roblox-Id`` header: which place a game server's HttpService request comes from.

Roblox adds ``Roblox-Id`` to every request a game server makes through HttpService, and
scripts cannot set it; its value is the place id (``DataModel.PlaceId``) in decimal
(docs/ROBLOX.md, "Game servers and HttpService"). It proves nothing by itself — any other
client can send the header too — so it only tells which game a key is being used from;
the access key is the secret. It is never forwarded upstream
(:mod:`bloxproxy.upstream.client`).

:func:`check` reads it defensively and says how a request stands against a key's places,
as a pure function (tested as a table in ``tests/test_robloxid.py``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["HEADER", "Check", "check"]

HEADER = "Roblox-Id"
# A place id: decimal digits, no sign, within a signed 64-bit integer (19 digits at most).
_PLACE_RE = re.compile(r"[0-9]{1,19}")
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Check:
    """How a request stands against a key's places: ``outcome`` is ``match``, ``mismatch``
    (a place, not one of the key's), ``missing`` (no header) or ``malformed``; ``place`` is
    the place id when the header had one."""

    outcome: str
    place: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "match"


def check(values: Sequence[str], places: Sequence[int]) -> Check:
    """Check the ``Roblox-Id`` header(s) ``values`` (every copy the request carried)
    against ``places``. Read defensively: several copies, an empty or non-decimal value, a
    sign or a number past 64 bits are ``malformed``; spaces around the digits are allowed."""
    if not values:
        return Check("missing")
    if len(values) > 1:
        return Check("malformed")  # the engine sets one; two disagree or one was forged
    text = values[0].strip(" \t")
    if not _PLACE_RE.fullmatch(text) or int(text) > _INT64_MAX:
        return Check("malformed")
    place = int(text)
    return Check("match" if place in places else "mismatch", place)
