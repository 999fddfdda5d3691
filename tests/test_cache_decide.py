"""Tables for the pure cache decisions of bloxproxy.cache.decide."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from bloxproxy.cache import decide
from bloxproxy.cache.decide import Freshness
from bloxproxy.cache.entry import Entry
from bloxproxy.cache.policy import Policy
from bloxproxy.rules import CacheCondition
from bloxproxy.upstream.client import UpstreamRequest

T = 1_800_000_000.0


def req(
    path: str = "/v1/users/1",
    query: str = "",
    *,
    method: str = "GET",
    service: str = "users",
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes | None = None,
) -> UpstreamRequest:
    return UpstreamRequest(service, method, path, query, headers, body)


def entry(ttl: float = 10.0, swr: float = 0.0, sie: float = 0.0, at: float = T) -> Entry:
    return Entry(200, (), b"{}", at, ttl, swr, sie, '"e"')


# -- cache_key ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", "GET users/v1/users/1"),
        ("a=1", "GET users/v1/users/1?a=1"),
        ("b=2&a=1", "GET users/v1/users/1?a=1&b=2"),
        ("a=1&b=2", "GET users/v1/users/1?a=1&b=2"),
        ("ids=2&ids=1", "GET users/v1/users/1?ids=2&ids=1"),  # repeated names keep order
        ("ids=1,2", "GET users/v1/users/1?ids=1,2"),
        ("ids=1%2C2", "GET users/v1/users/1?ids=1,2"),
        ("a=1+2", "GET users/v1/users/1?a=1%202"),
        ("a=1%202", "GET users/v1/users/1?a=1%202"),
        ("flag", "GET users/v1/users/1?flag="),
        ("k=a%26b%3Dc", "GET users/v1/users/1?k=a%26b%3Dc"),
        ("x=%20body%3D1", "GET users/v1/users/1?x=%20body%3D1"),
    ],
)
def test_cache_key_canonical_query(query: str, expected: str) -> None:
    assert decide.cache_key(req(query=query)) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", ""),
        ("z=1&a=2&m=3", "a=2&m=3&z=1"),
        ("a=2&a=1", "a=2&a=1"),
        ("b=1&a=2&b=0", "a=2&b=1&b=0"),
        ("a=%FF", "raw:a=%FF"),  # not UTF-8: kept as sent, never decoded to U+FFFD
        ("a=%FE", "raw:a=%FE"),
        ("a=&b", "a=&b="),
        ("sortOrder=Asc&limit=10&cursor=", "cursor=&limit=10&sortOrder=Asc"),
    ],
)
def test_canonical_query(raw: str, expected: str) -> None:
    assert decide.canonical_query(raw) == expected


def test_cache_key_method_service_path_split_the_cache() -> None:
    keys = {
        decide.cache_key(req()),
        decide.cache_key(req(method="POST")),
        decide.cache_key(req(service="games")),
        decide.cache_key(req("/v1/users/12")),
    }
    assert len(keys) == 4


def test_cache_key_body_hash() -> None:
    body = b'{"userIds":[1,156]}'
    digest = hashlib.blake2b(body, digest_size=16).hexdigest()
    key = decide.cache_key(req("/v1/users", method="POST", body=body))
    assert key == f"POST users/v1/users body={digest}"
    assert decide.cache_key(req("/v1/users", method="POST", body=b'{"userIds":[1]}')) != key
    assert decide.cache_key(req("/v1/users", method="POST")) == "POST users/v1/users"
    assert body.decode() not in key


@pytest.mark.parametrize(
    ("headers", "vary", "suffix"),
    [
        ((), (), ""),
        ((("Accept-Language", "de"),), (), ""),
        ((("Accept-Language", "de"),), ("accept-language",), " vary=accept-language=de"),
        ((("accept-language", "de"),), ("Accept-Language",), " vary=accept-language=de"),
        ((("X-Other", "1"),), ("accept-language",), ""),
        (
            (("Roblox-Place-Id", "5"), ("Accept-Language", "de"), ("User-Agent", "x")),
            ("accept-language", "roblox-place-id"),
            " vary=accept-language=de&roblox-place-id=5",
        ),
        ((("Accept-Language", "de fr"),), ("accept-language",), " vary=accept-language=de%20fr"),
    ],
)
def test_cache_key_vary(
    headers: tuple[tuple[str, str], ...], vary: tuple[str, ...], suffix: str
) -> None:
    assert decide.cache_key(req(headers=headers), vary) == "GET users/v1/users/1" + suffix


def test_cache_key_vary_values_cannot_forge_other_pairs() -> None:
    vary = ("accept-language", "roblox-place-id")
    forged = decide.cache_key(req(headers=(("Accept-Language", "en&roblox-place-id=1"),)), vary)
    real = decide.cache_key(
        req(headers=(("Accept-Language", "en"), ("Roblox-Place-Id", "1"))), vary
    )
    assert forged != real


def test_cache_key_credential_scope() -> None:
    scope = decide.credential_scope(b"secret", "cookie=ABC")
    key = decide.cache_key(req(), (), scope)
    assert key == f"GET users/v1/users/1 cred={scope}"
    assert "ABC" not in key
    # The scope comes last, so the anonymous key is a prefix (route purges reach both).
    assert key.startswith(decide.cache_key(req()))


def test_credential_scope_is_an_hmac() -> None:
    a = decide.credential_scope(b"secret", "cookie=A")
    assert len(a) == 32 and int(a, 16) >= 0
    assert a == decide.credential_scope(b"secret", "cookie=A")
    assert a != decide.credential_scope(b"secret", "cookie=B")
    assert a != decide.credential_scope(b"other", "cookie=A")
    assert a != hashlib.sha256(b"cookie=A").hexdigest()[:32]


# -- route_prefix -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "service", "template", "prefix"),
    [
        ("GET", "users", "/v1/users/{user_id}", "GET users/v1/users/"),
        ("GET", "users", "/v1/users/{user_id}/username-history", "GET users/v1/users/"),
        ("POST", "users", "/v1/users", "POST users/v1/users"),
        (
            "GET",
            "thumbnails",
            "/v1/users/avatar-headshot",
            "GET thumbnails/v1/users/avatar-headshot",
        ),
        (
            "GET",
            "apis",
            "/universes/v1/places/{place_id}/universe",
            "GET apis/universes/v1/places/",
        ),
    ],
)
def test_route_prefix(method: str, service: str, template: str, prefix: str) -> None:
    assert decide.route_prefix(method, service, template) == prefix


def test_route_prefix_covers_the_route_keys() -> None:
    prefix = decide.route_prefix("GET", "users", "/v1/users/{user_id}")
    assert decide.cache_key(req("/v1/users/156")).startswith(prefix)
    assert not decide.cache_key(req("/v1/users/156", service="friends")).startswith(prefix)
    assert not decide.cache_key(req("/v1/users/156", method="HEAD")).startswith(prefix)


# -- store_ttl ----------------------------------------------------------------------------

ROUTE = Policy(ttl=600.0, stale_if_error=3600.0, not_found_ttl=60.0)


@pytest.mark.parametrize(
    ("status", "ttl"),
    [
        (100, 0.0),
        (200, 600.0),
        (201, 600.0),
        (203, 600.0),
        (204, 600.0),
        (206, 0.0),
        (301, 0.0),
        (302, 0.0),
        (304, 0.0),
        (400, 0.0),
        (401, 0.0),
        (403, 0.0),
        (404, 60.0),
        (407, 0.0),
        (409, 0.0),
        (410, 60.0),
        (429, 0.0),
        (500, 0.0),
        (502, 0.0),
        (503, 0.0),
        (504, 0.0),
        (599, 0.0),
    ],
)
def test_store_ttl_by_status(status: int, ttl: float) -> None:
    assert decide.store_ttl(ROUTE, status, b"{}") == ttl


@pytest.mark.parametrize(
    ("policy", "status", "ttl"),
    [
        (Policy(ttl=600.0, not_found_ttl=0.0), 404, 0.0),
        (Policy(ttl=0.0, not_found_ttl=30.0), 200, 0.0),
        (Policy(ttl=0.0, not_found_ttl=30.0), 404, 30.0),
        # a rule's status_map 400 -> 404 makes a 400 a negative answer ...
        (Policy(ttl=600.0, not_found_ttl=60.0, negative_statuses=frozenset({400, 404})), 400, 60.0),
        # ... but never a 401/403/429/5xx, whatever the rule maps them to
        (Policy(ttl=600.0, not_found_ttl=60.0, negative_statuses=frozenset({401, 404})), 401, 0.0),
        (Policy(ttl=600.0, not_found_ttl=60.0, negative_statuses=frozenset({403})), 403, 0.0),
        (Policy(ttl=600.0, not_found_ttl=60.0, negative_statuses=frozenset({429})), 429, 0.0),
        (Policy(ttl=600.0, not_found_ttl=60.0, negative_statuses=frozenset({503})), 503, 0.0),
    ],
)
def test_store_ttl_policies(policy: Policy, status: int, ttl: float) -> None:
    assert decide.store_ttl(policy, status, b"{}") == ttl


PENDING = CacheCondition(("data", "*", "state"), ("Pending",), 5.0, "data[*].state")
THUMBS = Policy(ttl=3600.0, stale_if_error=86400.0, not_found_ttl=30.0, conditions=(PENDING,))


def thumbs(*states: str) -> bytes:
    return orjson.dumps({"data": [{"targetId": i, "state": s} for i, s in enumerate(states)]})


@pytest.mark.parametrize(
    ("policy", "status", "body", "ttl"),
    [
        (THUMBS, 200, thumbs("Completed"), 3600.0),
        (THUMBS, 200, thumbs("Completed", "Completed"), 3600.0),
        (THUMBS, 200, thumbs("Pending"), 5.0),
        (THUMBS, 200, thumbs("Completed", "Pending"), 5.0),
        (THUMBS, 200, thumbs("Blocked"), 3600.0),
        (THUMBS, 200, thumbs(), 3600.0),
        (THUMBS, 200, b'{"data": "Pending"}', 3600.0),
        (THUMBS, 200, b"not json", 0.0),
        (THUMBS, 200, b"", 0.0),
        # conditions look at 2xx bodies only: a 404 keeps the negative TTL
        (THUMBS, 404, thumbs("Pending"), 30.0),
        (THUMBS, 503, thumbs("Completed"), 0.0),
        # a condition only ever shortens the TTL
        (
            Policy(ttl=10.0, conditions=(CacheCondition(("state",), ("Done",), 60.0, "state"),)),
            200,
            b'{"state": "Done"}',
            10.0,
        ),
        # ttl 0s in a condition: do not store
        (
            Policy(ttl=10.0, conditions=(CacheCondition(("state",), ("Bad",), 0.0, "state"),)),
            200,
            b'{"state": "Bad"}',
            0.0,
        ),
        # several matching conditions: the shortest wins
        (
            Policy(
                ttl=100.0,
                conditions=(
                    CacheCondition(("a",), (1,), 50.0, "a"),
                    CacheCondition(("b",), (2, 3), 20.0, "b"),
                    CacheCondition(("c",), (4,), 1.0, "c"),
                ),
            ),
            200,
            b'{"a": 1, "b": 3, "c": 5}',
            20.0,
        ),
    ],
)
def test_store_ttl_when_conditions(policy: Policy, status: int, body: bytes, ttl: float) -> None:
    assert decide.store_ttl(policy, status, body) == ttl


def test_store_ttl_without_conditions_does_not_parse_the_body() -> None:
    assert decide.store_ttl(ROUTE, 200, b"\xff not json") == 600.0


# -- freshness and usable_on_error --------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "swr", "sie", "age", "state"),
    [
        (10, 5, 20, -5, Freshness.FRESH),  # stored "in the future" (skew): fresh
        (10, 5, 20, 0, Freshness.FRESH),
        (10, 5, 20, 9.999, Freshness.FRESH),
        (10, 5, 20, 10, Freshness.STALE_WHILE_REVALIDATE),
        (10, 5, 20, 14.999, Freshness.STALE_WHILE_REVALIDATE),
        (10, 5, 20, 15, Freshness.STALE_IF_ERROR),
        (10, 5, 20, 29.999, Freshness.STALE_IF_ERROR),
        (10, 5, 20, 30, Freshness.EXPIRED),
        (10, 0, 0, 10, Freshness.EXPIRED),
        (10, 0, 20, 10, Freshness.STALE_IF_ERROR),
        (10, 0, 20, 29.999, Freshness.STALE_IF_ERROR),
        (10, 5, 0, 14.999, Freshness.STALE_WHILE_REVALIDATE),
        (10, 5, 0, 15, Freshness.EXPIRED),
        # swr longer than sie: the sie window lies inside the swr one
        (10, 20, 5, 12, Freshness.STALE_WHILE_REVALIDATE),
        (10, 20, 5, 29.999, Freshness.STALE_WHILE_REVALIDATE),
        (10, 20, 5, 30, Freshness.EXPIRED),
        (0, 0, 0, 0, Freshness.EXPIRED),
    ],
)
def test_freshness(ttl: float, swr: float, sie: float, age: float, state: Freshness) -> None:
    assert decide.freshness(entry(ttl, swr, sie), T + age) is state


@pytest.mark.parametrize(
    ("ttl", "swr", "sie", "age", "usable"),
    [
        (10, 5, 20, 0, True),
        (10, 5, 20, 12, True),
        (10, 5, 20, 29.999, True),
        (10, 5, 20, 30, False),
        (10, 0, 0, 9.999, True),
        (10, 0, 0, 10, False),
        (10, 5, 0, 14.999, True),
        (10, 5, 0, 15, False),
        (10, 0, 60, 69.999, True),
        (10, 0, 60, 70, False),
    ],
)
def test_usable_on_error(ttl: float, swr: float, sie: float, age: float, usable: bool) -> None:
    e = entry(ttl, swr, sie)
    assert decide.usable_on_error(e, T + age) is usable
    # the same boundary the stores use to drop an entry
    assert usable == (T + age < e.hard_expiry())


def test_usable_on_error_without_entry() -> None:
    assert decide.usable_on_error(None, T) is False


@pytest.mark.parametrize(
    ("status", "failed"),
    [(200, False), (304, False), (400, False), (401, False), (403, False), (404, False),
     (429, True), (500, True), (502, True), (503, True), (504, True)],
)  # fmt: skip
def test_upstream_failed(status: int, failed: bool) -> None:
    assert decide.upstream_failed(status) is failed


# -- headers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("e", "age", "shared", "value"),
    [
        (None, 0, True, "no-store"),
        (entry(0), 0, True, "no-store"),
        (entry(600, 60, 3600), 0, True, "public, max-age=600, stale-while-revalidate=60, "
         "stale-if-error=3600"),
        (entry(600, 60, 3600), 100.7, True, "public, max-age=499, stale-while-revalidate=60, "
         "stale-if-error=3600"),
        (entry(600, 0, 3600), 0, False, "private, max-age=600, stale-if-error=3600"),
        (entry(600), 599.5, True, "public, max-age=0"),
        (entry(600), 600, True, "public, max-age=0"),
        (entry(600, 60, 0), 650, True, "public, max-age=0, stale-while-revalidate=60"),
        (entry(5, 0, 86400), 0, True, "public, max-age=5, stale-if-error=86400"),
    ],
)  # fmt: skip
def test_cache_control(e: Entry | None, age: float, shared: bool, value: str) -> None:
    assert decide.cache_control(e, T + age, shared) == value


@pytest.mark.parametrize(
    ("result", "e", "age", "stored", "detail", "value"),
    [
        ("HIT", entry(600), 0, False, "", "bloxproxy; hit; ttl=600"),
        ("HIT", entry(600), 100.5, False, "", "bloxproxy; hit; ttl=499"),
        ("STALE", entry(600, 60), 610, False, "revalidating",
         'bloxproxy; hit; ttl=-10; detail="revalidating"'),
        ("STALE", entry(600, 0, 3600), 700, False, "stale-if-error",
         'bloxproxy; hit; ttl=-100; detail="stale-if-error"'),
        ("MISS", entry(600), 0, True, "", "bloxproxy; fwd=miss; stored"),
        ("MISS", entry(0), 0, False, "", "bloxproxy; fwd=miss"),
        ("COALESCED", entry(600), 0, True, "", "bloxproxy; fwd=miss; collapsed"),
        ("BYPASS", entry(0), 0, False, "", "bloxproxy; fwd=bypass"),
        ("BYPASS", entry(0), 0, False, "credentialed",
         'bloxproxy; fwd=bypass; detail="credentialed"'),
        ("HIT", None, 0, False, "", "bloxproxy; fwd=bypass"),
    ],
)  # fmt: skip
def test_cache_status(
    result: str, e: Entry | None, age: float, stored: bool, detail: str, value: str
) -> None:
    assert decide.cache_status(result, e, T + age, stored, detail) == value


@pytest.mark.parametrize(
    ("if_none_match", "etag", "matches"),
    [
        ('"abc"', '"abc"', True),
        ('"abd"', '"abc"', False),
        ("*", '"abc"', True),
        (" * ", '"abc"', True),
        ("*", "", False),
        ('"abc"', "", False),
        ("", '"abc"', False),
        ('"x", "abc"', '"abc"', True),
        ('"x","abc"', '"abc"', True),
        ('"x" ,  "y"', '"abc"', False),
        ('W/"abc"', '"abc"', True),  # weak comparison (RFC 9110 §13.1.2)
        ('"abc"', 'W/"abc"', True),
        ('W/"abc"', 'W/"abc"', True),
        ('"x", W/"abc"', '"abc"', True),
        ("abc", '"abc"', False),  # unquoted is not the same tag
        ('"ABC"', '"abc"', False),  # opaque tags compare case-sensitively
    ],
)
def test_etag_matches(if_none_match: str, etag: str, matches: bool) -> None:
    assert decide.etag_matches(if_none_match, etag) is matches
