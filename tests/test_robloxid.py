"""``Roblox-Id`` read defensively and checked against a key's places (a table)."""

from __future__ import annotations

import pytest

from bloxproxy.robloxid import Check, check

PLACES = (1818, 2020)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["1818"], Check("match", 1818)),
        ([" 2020\t"], Check("match", 2020)),
        (["0001818"], Check("match", 1818)),
        (["42"], Check("mismatch", 42)),
        (["0"], Check("mismatch", 0)),
        (["9223372036854775807"], Check("mismatch", 2**63 - 1)),  # PlaceId is an int64
        ([], Check("missing")),
        ([""], Check("malformed")),
        (["  "], Check("malformed")),
        (["1818", "1818"], Check("malformed")),  # the engine sends one
        (["1818", "42"], Check("malformed")),
        (["+1818"], Check("malformed")),
        (["-1818"], Check("malformed")),
        (["1818.0"], Check("malformed")),
        (["1_818"], Check("malformed")),
        (["0x71a"], Check("malformed")),
        (["placeId=1818"], Check("malformed")),
        (["1818, 2020"], Check("malformed")),
        (["\u0661\u0668\u0661\u0668"], Check("malformed")),  # Arabic-Indic digits
        (["\udcff1818"], Check("malformed")),  # a non-UTF-8 byte, as aiohttp hands it over
        (["9223372036854775808"], Check("malformed")),  # past 64 bits
        (["1" * 20], Check("malformed")),
        (["1" * 10_000], Check("malformed")),
    ],
)
def test_check(values: list[str], expected: Check) -> None:
    result = check(values, PLACES)
    assert result == expected
    assert result.ok is (expected.outcome == "match")


def test_no_places_never_match() -> None:
    assert check(["1818"], ()) == Check("mismatch", 1818)
