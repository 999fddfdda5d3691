"""Checking secrets (access keys, the admin token) and throttling those who guess them.

**Comparison.** A secret from the wire is compared as bytes, never decoded or encoded
strictly: aiohttp hands over header bytes that are not UTF-8 as surrogate escapes
(``b"\\xff"`` → ``"\\udcff"``), and so does Python for an environment variable, so both
sides are turned back into their bytes with ``surrogateescape`` — ``\\xff`` in a token is a
wrong token (401), never a ``UnicodeEncodeError`` (500). Both are hashed first and the
digests compared with :func:`hmac.compare_digest`, so the time taken says nothing about the
secret, its length included; every configured key is compared, so it says nothing about
which one matched either.

**Throttle.** :class:`FailureThrottle` is a GCRA bucket per client address
(:mod:`bloxproxy.ratelimit`; in Redis when configured, so replicas share it): each failed
attempt takes a token, and an address with none left is answered 429 with ``Retry-After``
— whatever it sends, the right secret included, since answering a right guess with a 200
while refusing the wrong ones would still tell the guesser which was right. Successful
attempts only look at the bucket (a dry run) and take nothing from it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import time
from collections.abc import Callable, Iterable

from .errors import HTTPProblem
from .ratelimit import Decision, FallbackBuckets, RedisBuckets


def secret_bytes(text: str) -> bytes:
    """The bytes a header value or an environment variable was made of."""
    return text.encode("utf-8", "surrogateescape")


def digests(secrets: Iterable[str]) -> tuple[bytes, ...]:
    """What :func:`matches` compares against: the configured secrets, hashed once."""
    return tuple(hashlib.sha256(secret_bytes(s)).digest() for s in secrets)


def matches(given: str, secrets: tuple[bytes, ...]) -> bool:
    """Is ``given`` (as it came off the wire) one of the secrets (their :func:`digests`)?
    Constant time; an empty ``given`` never matches, not even an empty secret."""
    return which(given, secrets) >= 0


def which(given: str, secrets: tuple[bytes, ...]) -> int:
    """The index of the secret ``given`` is (-1: none), as :func:`matches` compares: every
    secret, in constant time (the index is picked without a branch on the comparison)."""
    digest = hashlib.sha256(secret_bytes(given)).digest()
    found = -1
    for index, secret in enumerate(secrets):  # all of them: the time does not say which
        hit = hmac.compare_digest(digest, secret)
        found += (index - found) * (hit & (found < 0))
    return found if given else -1


def bearer(authorization: str) -> str:
    """The token of ``Authorization: Bearer <token>`` ("" for any other scheme)."""
    scheme, _, token = authorization.partition(" ")
    return token if scheme.lower() == "bearer" else ""


def basic_password(authorization: str) -> str:
    """The password of ``Authorization: Basic base64(user:password)`` — what a browser
    sends after its login prompt — with its bytes kept as :func:`secret_bytes` wants them
    ("" for any other scheme, or a value that is not base64 of ``user:password``)."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        raw = base64.b64decode(token.strip().encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        return ""
    _, colon, password = raw.partition(b":")
    return password.decode("utf-8", "surrogateescape") if colon else ""


class FailureThrottle:
    """Failed authentication per client address (see the module docstring).

    ``rate`` failures per second, ``burst`` at once; ``rate`` 0 turns it off. ``counts`` is
    told each outcome that is not a plain success (``unauthorized``, ``throttled``).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        redis: RedisBuckets | None,
        clock: Callable[[], float] = time.monotonic,
        counts: Callable[[str], None] | None = None,
    ) -> None:
        self._buckets = (
            FallbackBuckets(rate, burst, redis, clock, "failed-auth limits") if rate > 0 else None
        )
        self._counts = counts

    async def check(self, address: str, ok: bool) -> None:
        """Raise a 429 problem when ``address`` has no failures left; else count a failure
        (``ok`` False) and return, for the caller to answer it (401)."""
        if self._buckets is None:
            if not ok:
                self._count("unauthorized")
            return
        decision = await self._buckets.take("ip:" + address, dry_run=ok)
        if not decision.allowed:
            self._count("throttled")
            raise throttled(decision)
        if not ok:
            self._count("unauthorized")

    def _count(self, outcome: str) -> None:
        if self._counts is not None:
            self._counts(outcome)


def throttled(decision: Decision) -> HTTPProblem:
    retry = max(1, math.ceil(decision.retry_after))
    return HTTPProblem(
        429,
        f"too many failed authentication attempts from this address; retry after {retry} s",
        code="auth_throttled",
        headers={"Retry-After": str(retry)},
        extra={"retry_after": retry},
    )
