"""Checking secrets: access keys and the admin token.

**Comparison.** A secret from the wire is compared as bytes, never decoded or encoded
strictly: aiohttp hands over header bytes that are not UTF-8 as surrogate escapes
(``b"\\xff"`` → ``"\\udcff"``), and so does Python for an environment variable, so both
sides are turned back into their bytes with ``surrogateescape`` — ``\\xff`` in a token is a
wrong token (401), never a ``UnicodeEncodeError`` (500). Both are hashed first and the
digests compared with :func:`hmac.compare_digest`, so the time taken says nothing about the
secret, its length included; every configured key is compared, so it says nothing about
which one matched either.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


def secret_bytes(text: str) -> bytes:
    """The bytes a header value or an environment variable was made of."""
    return text.encode("utf-8", "surrogateescape")


def digests(secrets: Iterable[str]) -> tuple[bytes, ...]:
    """What :func:`matches` compares against: the configured secrets, hashed once."""
    return tuple(hashlib.sha256(secret_bytes(s)).digest() for s in secrets)


def matches(given: str, secrets: tuple[bytes, ...]) -> bool:
    """Is ``given`` (as it came off the wire) one of the secrets (their :func:`digests`)?
    Constant time; an empty ``given`` never matches, not even an empty secret."""
    digest = hashlib.sha256(secret_bytes(given)).digest()
    ok = False
    for secret in secrets:  # every one of them: the time taken does not say which matched
        ok |= hmac.compare_digest(digest, secret)
    return ok and bool(given)


def bearer(authorization: str) -> str:
    """The token of ``Authorization: Bearer <token>`` ("" for any other scheme)."""
    scheme, _, token = authorization.partition(" ")
    return token if scheme.lower() == "bearer" else ""
