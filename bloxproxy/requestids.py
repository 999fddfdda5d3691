"""Request ids: kept from a client's ``X-Request-ID`` when it is short and plain (so it is
safe in logs and headers), else made here; echoed to the client, sent upstream, logged and
put in problem bodies."""

from __future__ import annotations

import re
import secrets

from multidict import MultiMapping

__all__ = ["REQUEST_ID_HEADER", "REQUEST_ID_RE", "RequestIds"]

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@+=-]{1,128}")


class RequestIds:
    """Unique ids without a syscall per request: a random per-process prefix and a counter."""

    __slots__ = ("_count", "_prefix")

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4)
        self._count = 0

    def of(self, headers: MultiMapping[str]) -> str:
        """The client's id when well-formed, else a new one."""
        rid = headers.get(REQUEST_ID_HEADER)
        if rid is not None and REQUEST_ID_RE.fullmatch(rid):
            return rid
        return self.new()

    def new(self) -> str:
        self._count += 1
        return f"{self._prefix}{self._count:08x}"
