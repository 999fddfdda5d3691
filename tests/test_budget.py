"""The learned budget (bloxproxy/upstream/budget.py): its parsers and its state machine, as
tables on an explicit clock.

Each scenario is a list of steps — ``(t, "take")``, ``(t, "429", gen, retry_after)``,
``(t, "limits", RateHeaders)`` — with what must be observed after each (only the fields
named). ``tests/test_shared.py`` runs the very same scenarios against the Redis script and
requires every observation, all fields, to be equal.
"""

from __future__ import annotations

from typing import Any

import pytest

from bloxproxy import config as config_mod
from bloxproxy.upstream.budget import (
    Learner,
    RateHeaders,
    Tuning,
    parse_limit,
    parse_rate_headers,
)

# -- parsers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "rate"),
    [
        ("1000, 1000;w=60", 1000 / 60),  # Open Cloud: the current quota, then the policy
        ("40, 40;w=1", 40.0),  # what the fake sends at 40/s
        ("100, 100;w=1, 1000;w=60", 1000 / 60),  # several windows: the tightest
        ("10;w=1, 50;w=60", 50 / 60),
        ("150;w=60", 2.5),
        ("300 ; w = 60", 5.0),  # spaces
        ("10;w=10;burst=5", 1.0),  # other parameters are ignored
        ("25", 25.0),  # no window anywhere: per second (the IETF draft's default)
        ("25, 60;w=60", 1.0),  # a bare item beside a timed one says nothing about time
        ("1000, 1000;w=0", 1000.0),  # a zero window is not read; the bare quota is
        ("0;w=60", None),  # no positive rate
        ("", None),
        (None, None),
        ("soon", None),
        ("-5;w=1", None),
        ("x, 60;w=60", 1.0),  # what cannot be read is skipped
    ],
)
def test_parse_limit(value: str | None, rate: float | None) -> None:
    assert parse_limit(value) == (None if rate is None else pytest.approx(rate))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "5"}, None),  # the 429's business, not these headers'
        (
            {
                "x-ratelimit-limit": "1000, 1000;w=60",
                "x-ratelimit-remaining": "999",
                "x-ratelimit-reset": "59",
            },
            RateHeaders(1000 / 60, 999, 59.0),
        ),
        ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "30"}, RateHeaders(None, 0, 30.0)),
        ({"x-ratelimit-reset": "1.5"}, RateHeaders(None, None, 1.5)),
        ({"x-ratelimit-remaining": "many"}, RateHeaders(None, None, None)),
        (
            {"x-ratelimit-remaining": "-1", "x-ratelimit-reset": "nan"},
            RateHeaders(None, None, None),
        ),
        ({"x-ratelimit-limit": "40, 40;w=1"}, RateHeaders(40.0, None, None)),
    ],
)
def test_parse_rate_headers(headers: dict[str, str], expected: RateHeaders | None) -> None:
    assert parse_rate_headers(headers) == expected


def test_tuning_of_the_config_per_scope() -> None:
    config = config_mod.load(
        None,
        env={
            "BLOXPROXY_LIMITS_UPSTREAM_RATE": "20",
            "BLOXPROXY_LIMITS_UPSTREAM_RATES": "{friends: 0.05, thumbnails: 10}",
            "BLOXPROXY_LIMITS_UPSTREAM_FLOOR": "0.5",
        },
    )
    assert Tuning.of(config, "users") == Tuning(20.0, 0.5, 0.5, 0.5, 1.0, 1.0, 60.0, True)
    assert Tuning.of(config, "thumbnails").ceiling == 10.0
    friends = Tuning.of(config, "friends")
    assert (friends.ceiling, friends.floor) == (0.05, 0.05)  # the floor never above the rate


# -- the state machine -----------------------------------------------------------------------

T = Tuning(
    ceiling=10.0, floor=0.5, decrease=0.5, increase=1.0, every=1.0, pause_base=1.0, pause_max=60.0
)
Step = tuple[Any, ...]
Scenario = list[tuple[Step, dict[str, Any]]]

SCENARIOS: dict[str, tuple[Tuning, Scenario]] = {
    "paced from the start, a burst after a quiet second": (
        Tuning(ceiling=4.0),
        [
            ((0.0, "take"), {"allowed": True, "gen": 0, "rate": 4.0}),
            ((0.0, "take"), {"allowed": False, "wait": 0.25, "held": False}),
            ((0.25, "take"), {"allowed": True}),
            ((0.25, "take"), {"allowed": False, "wait": 0.25}),
            ((2.5, "take"), {"allowed": True}),  # quiet: the burst of 4 is back
            ((2.5, "take"), {"allowed": True}),
            ((2.5, "take"), {"allowed": True}),
            ((2.5, "take"), {"allowed": True}),
            ((2.5, "take"), {"allowed": False, "wait": 0.25}),
        ],
    ),
    "a 429 lowers the rate once per generation; in a row they hold, doubling": (
        T,
        [
            ((0.0, "take"), {"allowed": True, "gen": 0, "rate": 10.0}),
            ((0.05, "429", 0, None), {"rate": 5.0, "hold": 0.0}),  # halved, no hold
            ((0.05, "429", 0, None), {"rate": 5.0, "hold": 0.0}),  # sent at the old rate
            ((0.1, "take"), {"allowed": False, "wait": 0.1, "gen": 1, "rate": 5.0}),
            ((0.2, "take"), {"allowed": True, "gen": 1}),
            ((0.3, "429", 1, None), {"rate": 2.5, "hold": 1.0}),  # 2nd strike: pause_base
            ((0.5, "take"), {"allowed": False, "wait": 0.8, "held": True}),
            ((1.3, "take"), {"allowed": True, "gen": 2, "rate": 2.5}),  # paced, no burst
            ((1.3, "take"), {"allowed": False, "wait": 0.4, "held": False}),
            ((1.4, "429", 2, None), {"rate": 1.25, "hold": 2.0}),  # a window spent holding
            ((3.4, "take"), {"allowed": True, "gen": 3}),  # forgives nothing
            ((3.5, "429", 3, None), {"rate": 0.625, "hold": 4.0}),
            ((7.5, "take"), {"allowed": True, "gen": 4}),
            ((7.6, "429", 4, None), {"rate": 0.5, "hold": 8.0}),  # the floor
            ((15.6, "take"), {"allowed": True, "gen": 5, "rate": 0.5}),
            ((15.7, "429", 5, None), {"rate": 0.5, "hold": 16.0}),
        ],
    ),
    "retry-after holds, never shortens, is capped": (
        T,
        [
            ((0.0, "take"), {"allowed": True}),
            ((0.0, "429", 0, 5.0), {"rate": 5.0, "hold": 5.0}),
            ((1.0, "take"), {"allowed": False, "wait": 4.0, "held": True, "gen": 1}),
            ((1.0, "429", 0, 1.0), {"rate": 5.0, "hold": 1.0}),  # asked for less: still 5
            ((2.0, "take"), {"allowed": False, "wait": 3.0, "held": True}),
            ((2.0, "429", 1, 3600.0), {"rate": 2.5, "hold": 60.0}),  # pause_max
            ((61.0, "take"), {"allowed": False, "wait": 1.0, "held": True}),
            ((62.0, "take"), {"allowed": True, "gen": 2, "rate": 2.5}),
            ((62.0, "429", 2, 0.0), {"rate": 1.25, "hold": 0.0}),  # "0": no hold at all
        ],
    ),
    "grows while its slots are used, not while idle, up to the ceiling": (
        Tuning(ceiling=10.0, increase=4.0, every=1.0),
        [
            ((0.0, "take"), {"allowed": True}),
            ((0.0, "429", 0, None), {"rate": 5.0, "hold": 0.0}),
            ((0.2, "take"), {"allowed": True, "rate": 5.0}),
            ((0.4, "take"), {"allowed": True}),
            ((0.6, "take"), {"allowed": True}),
            ((0.8, "take"), {"allowed": True}),
            ((1.0, "take"), {"allowed": True, "rate": 9.0}),  # 4 of 5 slots used: +4
            ((1.2, "take"), {"allowed": True}),
            ((1.4, "take"), {"allowed": True}),
            ((1.6, "take"), {"allowed": True}),
            ((1.8, "take"), {"allowed": True}),
            ((2.0, "take"), {"allowed": True, "rate": 10.0}),  # the ceiling
            ((2.0, "429", 1, None), {"rate": 5.0}),
            ((10.0, "take"), {"allowed": True, "rate": 5.0}),  # 8 idle seconds: no growth
        ],
    ),
    "a clean window forgives the strikes": (
        T,
        [
            ((0.0, "take"), {"allowed": True}),
            ((0.0, "429", 0, None), {"rate": 5.0, "hold": 0.0}),
            ((0.2, "take"), {"allowed": True, "gen": 1}),
            ((0.2, "429", 1, None), {"rate": 2.5, "hold": 1.0}),
            ((1.2, "take"), {"allowed": True, "gen": 2}),  # its 1st slot in a window: used
            ((2.5, "take"), {"allowed": True, "gen": 2}),  # that window ended with no 429
            ((2.5, "429", 2, None), {"rate": 1.25, "hold": 0.0}),  # a first strike again
        ],
    ),
    "x-ratelimit-limit caps the rate; remaining 0 holds until the reset": (
        T,
        [
            ((0.0, "take"), {"allowed": True, "rate": 10.0}),
            ((0.0, "limits", RateHeaders(1000 / 60, 999, 60.0)), {"rate": 10.0}),  # above
            ((0.0, "limits", RateHeaders(2.5, 10, 5.0)), {"rate": 2.5, "hold": 0.0}),
            ((0.5, "take"), {"allowed": True, "rate": 2.5}),
            ((0.5, "limits", RateHeaders(None, 0, 30.0)), {"rate": 2.5, "hold": 30.0}),
            ((10.0, "take"), {"allowed": False, "wait": 20.5, "held": True}),
            ((20.0, "limits", RateHeaders(None, 0, 900.0)), {"hold": 60.0}),  # pause_max
            ((20.0, "limits", RateHeaders(40.0, 5, 1.0)), {"rate": 2.5}),  # grows, slowly
            ((80.0, "take"), {"allowed": True, "rate": 2.5}),
        ],
    ),
    "with learn: false the rate stays; 429s in a row still hold": (
        Tuning(ceiling=10.0, learn=False),
        [
            ((0.0, "take"), {"allowed": True}),
            ((0.0, "429", 0, None), {"rate": 10.0, "hold": 0.0}),
            ((0.1, "take"), {"allowed": True, "gen": 1, "rate": 10.0}),
            ((0.1, "429", 1, None), {"rate": 10.0, "hold": 1.0}),
            ((0.1, "limits", RateHeaders(4.0, None, None)), {"rate": 4.0}),  # Roblox's cap
        ],
    ),
}


def run_learner(tuning: Tuning, steps: list[Step]) -> list[dict[str, Any]]:
    """Every step's full observation, from a Learner started at the first step's time."""
    learner: Learner | None = None
    seen: list[dict[str, Any]] = []
    for t, op, *args in steps:
        if learner is None:
            learner = Learner(tuning, t)
        if op == "take":
            slot = learner.take(t)
            seen.append(
                {
                    "allowed": slot.allowed,
                    "wait": slot.wait,
                    "gen": slot.gen,
                    "rate": slot.rate,
                    "held": slot.held,
                }
            )
        elif op == "429":
            hold = learner.on_429(t, args[0], args[1])
            seen.append({"rate": learner.rate, "hold": hold})
        else:
            hold = learner.on_headers(t, args[0])
            seen.append({"rate": learner.rate, "hold": hold})
    return seen


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_learner(name: str) -> None:
    tuning, scenario = SCENARIOS[name]
    seen = run_learner(tuning, [step for step, _ in scenario])
    for (step, expected), got in zip(scenario, seen, strict=True):
        shown = {k: got[k] for k in expected}
        assert shown == pytest.approx(expected), (step, got)


def test_next_slot_in_changes_nothing() -> None:
    learner = Learner(Tuning(ceiling=4.0), 0.0)
    assert learner.next_slot_in(0.0) == 0.0
    assert learner.take(0.0).allowed
    assert learner.next_slot_in(0.0) == learner.next_slot_in(0.0) == 0.25
    assert learner.next_slot_in(0.1) == pytest.approx(0.15)
    learner.on_429(0.1, 0, 2.0)
    assert learner.next_slot_in(0.1) == pytest.approx(2.0)
    assert learner.hold_left(1.1) == pytest.approx(1.0)


def test_retune_keeps_what_was_learned_within_the_new_numbers() -> None:
    learner = Learner(T, 0.0)
    learner.on_429(0.0, 0, None)
    assert learner.rate == 5.0
    learner.retune(Tuning(ceiling=20.0))
    assert learner.rate == 5.0  # still learned
    learner.retune(Tuning(ceiling=2.0))
    assert learner.rate == 2.0  # under the new ceiling
    learner.retune(Tuning(ceiling=2.0, learn=False))
    assert learner.take(100.0).rate == 2.0


def test_a_legacy_host_is_learned_below_its_limit_with_few_429s() -> None:
    """The learner against a token bucket of 40/s (burst 40) that answers 429 without
    Retry-After, like Roblox's legacy hosts, driven by a line that never empties for ten
    simulated minutes: the rate settles under the limit and at most 1 % of calls are 429s."""
    limit, tokens, stamp = 40.0, 40.0, 0.0
    learner = Learner(Tuning(ceiling=100.0), 0.0)
    calls = refused = 0
    in_flight: list[tuple[float, int]] = []  # (answer time, gen) of 429s on their way
    late_rates: list[float] = []
    t = 0.0
    while t < 600.0:
        for answer in [a for a in in_flight if a[0] <= t]:
            in_flight.remove(answer)
            learner.on_429(t, answer[1], None)
        slot = learner.take(t)
        if slot.allowed:
            calls += 1
            tokens, stamp = min(40.0, tokens + (t - stamp) * limit), t
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                refused += 1
                in_flight.append((t + 0.02, slot.gen))  # the 429 comes back 20 ms later
            continue
        t += max(slot.wait, 1e-6)
        if t > 300.0:
            late_rates.append(learner.rate)
    assert refused <= 0.01 * calls, (refused, calls)
    assert calls >= 0.75 * limit * 600  # and it is not timid: most of the budget is used
    assert sum(late_rates) / len(late_rates) < limit
