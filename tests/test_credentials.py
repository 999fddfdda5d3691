"""The one credential parser (bloxproxy.credentials), as tables of the spellings clients send.

The cache (per-credential keys, and whether a request may touch the shared cache at all),
the CSRF handshake (which cookie a token belongs to) and the access log (which kind of
credential came) all read a request through these functions, so every spelling below means
the same to all three.
"""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from bloxproxy.credentials import credential_of, kind, roblosecurity

SECRET = "_|WARNING:-DO-NOT-SHARE-THIS.--Sharing-this-will-allow-someone-to-log-in|_ABC123"


def headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


@pytest.mark.parametrize(
    ("cookies", "values"),
    [
        ((), []),
        ((".ROBLOSECURITY=abc",), ["abc"]),
        ((".roblosecurity=abc",), ["abc"]),  # the name, case-insensitively
        ((".RoBloSecurity=abc",), ["abc"]),
        ((".ROBLOSECURITY=",), []),  # empty: anonymous (some clients always send one)
        ((".ROBLOSECURITY= ; a=1",), []),
        (('.ROBLOSECURITY=""',), []),
        (("a=1; .ROBLOSECURITY=abc; b=2",), ["abc"]),
        ((" .ROBLOSECURITY = abc ",), ["abc"]),
        (('.ROBLOSECURITY="abc"',), ["abc"]),
        (("x=1, .ROBLOSECURITY=abc",), ["abc"]),  # old-style comma lists
        ((f".ROBLOSECURITY={SECRET}",), [SECRET]),  # '|' and ':' in the value, kept whole
        (("a=1", ".ROBLOSECURITY=abc"), ["abc"]),  # a second Cookie header counts
        ((".ROBLOSECURITY=abc", ".ROBLOSECURITY=def"), ["abc", "def"]),
        ((".ROBLOSECURITY=abc; .ROBLOSECURITY=def",), ["abc", "def"]),
        (("ROBLOSECURITY=abc",), []),  # not the name
        (("a=.ROBLOSECURITY=abc",), []),  # a value that mentions it
        ((".ROBLOSECURITYX=abc",), []),
    ],
)
def test_roblosecurity_spellings(cookies: tuple[str, ...], values: list[str]) -> None:
    h = headers(*(("Cookie", c) for c in cookies))
    assert roblosecurity(h) == values
    assert bool(credential_of(h)) == bool(values)
    assert kind(h) == ("cookie" if values else "")


@pytest.mark.parametrize(
    ("pairs", "credentialed", "what"),
    [
        ((), False, ""),
        ((("Authorization", "Bearer t"),), True, "authorization"),
        ((("Authorization", "  "),), False, ""),
        ((("x-api-key", "k"),), True, "api-key"),
        ((("X-API-KEY", "k"),), True, "api-key"),
        ((("x-api-key", ""),), False, ""),
        ((("Authorization", ""), ("Authorization", "Bearer t")), True, "authorization"),
        ((("Cookie", ".ROBLOSECURITY=a"), ("x-api-key", "k")), True, "cookie+api-key"),
        ((("Cookie", "a=1"),), False, ""),
    ],
)
def test_other_credentials(
    pairs: tuple[tuple[str, str], ...], credentialed: bool, what: str
) -> None:
    h = headers(*pairs)
    assert bool(credential_of(h)) is credentialed
    assert kind(h) == what


def test_each_credential_is_its_own_scope() -> None:
    """Two requests share a per-credential entry only when every credential matches."""
    a = credential_of(headers(("Cookie", ".ROBLOSECURITY=abc")))
    assert a == credential_of(headers(("Cookie", "x=1; .roblosecurity=abc")))
    assert a != credential_of(headers(("Cookie", ".ROBLOSECURITY=abc,def")))
    assert a != credential_of(headers(("Cookie", ".ROBLOSECURITY=abc"), ("x-api-key", "k")))
    assert a != credential_of(headers(("Cookie", ".ROBLOSECURITY=abc; .ROBLOSECURITY=x")))


def test_undecodable_bytes_still_make_a_credential() -> None:
    """aiohttp decodes non-UTF-8 header bytes with surrogateescape: such a credential must
    still be one (hashable into its HMAC scope), never taken for anonymous."""
    value = credential_of(headers(("x-api-key", "k\udcff")))
    assert value.startswith("\x00raw:")
    value.encode()  # encodable: the HMAC takes it
