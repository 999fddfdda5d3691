"""Roblox's CSRF handshake for cookie-authenticated mutations.

A POST/PUT/PATCH/DELETE with a ``.ROBLOSECURITY`` cookie that Roblox refuses with 403 and an
``x-csrf-token`` header is resent once with that token in ``X-CSRF-TOKEN`` (see
docs/ROBLOX.md, "CSRF"). The token is remembered per cookie — keyed by an HMAC of it, never
the cookie — for 30 minutes (Roblox's tokens last about that long) and sent up front next
time. A client that does the handshake itself keeps its own token.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable

from aiohttp import ClientRequest, ClientResponse
from cachetools import TTLCache

from ..credentials import roblosecurity

__all__ = ["CSRF_TTL", "MUTATIONS", "Csrf"]

CSRF_TTL = 1800.0  # Roblox tokens last about 30 minutes (noblox.js caches them 1800 s)
MUTATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Attempt = Callable[[ClientRequest], Awaitable[ClientResponse]]


class Csrf:
    """The remembered tokens, and the handshake around one attempt."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.monotonic) -> None:
        self._secret = secret
        self.tokens: TTLCache[str, str] = TTLCache(maxsize=10_000, ttl=CSRF_TTL, timer=clock)

    def _key(self, cookie: str) -> str:
        # surrogateescape: aiohttp decodes raw header bytes that way; any value is a key.
        return hmac.new(
            self._secret, cookie.encode("utf-8", "surrogateescape"), hashlib.sha256
        ).hexdigest()

    async def send(self, req: ClientRequest, attempt: Attempt) -> ClientResponse:
        """``attempt(req)``, resent once with Roblox's token when it asks for one."""
        if req.method not in MUTATIONS:
            return await attempt(req)
        cookies = roblosecurity(req.headers)
        if not cookies:
            return await attempt(req)
        key = self._key(cookies[0])
        if "X-CSRF-TOKEN" not in req.headers:
            known = self.tokens.get(key)
            if known is not None:
                req.headers["X-CSRF-TOKEN"] = known
        resp = await attempt(req)
        token = resp.headers.get("x-csrf-token")
        if resp.status != 403 or not token:
            return resp
        self.tokens[key] = token
        if req.headers.get("X-CSRF-TOKEN") == token:
            return resp  # the token Roblox just issued was refused: do not loop
        resp.release()
        req.headers["X-CSRF-TOKEN"] = token
        return await attempt(req)
