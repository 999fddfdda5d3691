"""What identifies a caller to Roblox: one parser for every place that needs to know.

A request is credentialed when it carries a non-empty ``.ROBLOSECURITY`` cookie (in any
``Cookie`` header, the name matched case-insensitively), an ``Authorization`` or an
``x-api-key``. The cache keys per-credential entries by an HMAC of :func:`credential_of`
(and never shares an answer between credentials), the CSRF handshake remembers tokens per
:func:`roblosecurity` value, and the access log says which :func:`kind` of credential came —
never the credential itself.
"""

from __future__ import annotations

import re

from multidict import MultiMapping

__all__ = ["credential_of", "kind", "roblosecurity"]

_OTHER_CREDENTIALS = ("authorization", "x-api-key")
_SURROGATE = re.compile("[\udc80-\udcff]")


def roblosecurity(headers: MultiMapping[str]) -> list[str]:
    """Non-empty ``.ROBLOSECURITY`` values in every ``Cookie`` header, in order: the name
    matched case-insensitively (some servers do), cookies split on ``;`` and also found
    after a ``,`` (old-style lists), quotes around a value dropped. A value is kept whole
    up to its ``;``, so two cookies that differ after a comma are two credentials. An empty
    ``.ROBLOSECURITY=`` is anonymous (some clients always send one)."""
    out = []
    for header in headers.getall("Cookie", ()):
        for part in header.split(";"):
            for piece in (part, *part.split(",")[1:]):
                name, eq, value = piece.partition("=")
                value = value.strip().strip('"').strip()
                if eq and value and name.strip().lower() == ".roblosecurity":
                    out.append(value)
    return out


def credential_of(headers: MultiMapping[str]) -> str:
    """Everything that identifies the caller, as one string; ``""`` when anonymous.

    Every occurrence counts: passthrough forwards repeated headers as they are, and the
    upstream may read any of them (a second ``Cookie`` header, a later duplicate
    ``.ROBLOSECURITY``, ``Authorization:`` then ``Authorization: Bearer …``). Looking at the
    first one only would take a credentialed request for an anonymous one and put its
    answer in the shared cache.
    """
    if "Cookie" not in headers and "Authorization" not in headers and "X-Api-Key" not in headers:
        return ""  # (most requests: spare the parsing below)
    parts = [f"cookie={value}" for value in roblosecurity(headers)]
    for name in _OTHER_CREDENTIALS:
        for value in headers.getall(name, ()):
            if value.strip():
                parts.append(f"{name}={value}")
    value = "\n".join(parts)
    if _SURROGATE.search(value):
        # aiohttp decodes header bytes that are not UTF-8 with surrogateescape; such a value
        # cannot be encoded for the per-credential HMAC. NUL never survives the HTTP parser,
        # so this spelling cannot collide with a real header value.
        value = "\x00raw:" + value.encode("utf-8", "surrogateescape").hex()
    return value


def kind(headers: MultiMapping[str]) -> str:
    """Which credential the request carries, for logs: ``cookie``, ``api-key``,
    ``authorization`` (several joined by ``+``), or ``""``."""
    if "Cookie" not in headers and "Authorization" not in headers and "X-Api-Key" not in headers:
        return ""
    kinds = []
    if roblosecurity(headers):
        kinds.append("cookie")
    if any(v.strip() for v in headers.getall("x-api-key", ())):
        kinds.append("api-key")
    if any(v.strip() for v in headers.getall("authorization", ())):
        kinds.append("authorization")
    return "+".join(kinds)
