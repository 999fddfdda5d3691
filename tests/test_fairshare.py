"""Fair shares (bloxproxy/upstream/fairshare.py): the order deficit round robin serves
queued items in, as tables. An item is ``"<client><n>"``; a push is ``(client, weight)``."""

from __future__ import annotations

import pytest

from bloxproxy.upstream.fairshare import FairQueue


def served(pushes: list[tuple[str, float, int]], pops: int | None = None) -> list[str]:
    """Push ``count`` items per ``(client, weight, count)``, in that order; pop them all."""
    queue: FairQueue[str] = FairQueue()
    for client, weight, count in pushes:
        for n in range(count):
            queue.push(client, f"{client}{n}", weight)
    out = []
    while (item := queue.pop()) is not None and (pops is None or len(out) < pops):
        out.append(item)
    return out


@pytest.mark.parametrize(
    ("pushes", "order"),
    [
        ([("a", 1.0, 3)], ["a0", "a1", "a2"]),  # one client: first come, first served
        (
            # a client with many queued (a cache-buster) and one with a few: turns
            [("buster", 1.0, 6), ("good", 1.0, 2)],
            ["buster0", "good0", "buster1", "good1", "buster2", "buster3", "buster4", "buster5"],
        ),
        (
            [("a", 1.0, 2), ("b", 1.0, 2), ("c", 1.0, 2)],
            ["a0", "b0", "c0", "a1", "b1", "c1"],
        ),
        (  # weight 2: two slots a turn
            [("game", 2.0, 4), ("bot", 1.0, 4)],
            ["game0", "game1", "bot0", "game2", "game3", "bot1", "bot2", "bot3"],
        ),
        (  # weight 0.5: a slot every other turn
            [("slow", 0.5, 3), ("bot", 1.0, 4)],
            ["bot0", "slow0", "bot1", "bot2", "slow1", "bot3", "slow2"],
        ),
        (  # all below 1: whole rounds of credit are skipped at once, order kept
            [("x", 0.01, 2), ("y", 0.02, 2)],
            ["y0", "x0", "y1", "x1"],
        ),
        ([("a", 0.0, 2)], ["a0", "a1"]),  # a zero weight is the smallest, not never
        ([("a", float("nan"), 1)], ["a0"]),
    ],
)
def test_served_in_fair_order(pushes: list[tuple[str, float, int]], order: list[str]) -> None:
    assert served(pushes) == order


def test_a_buster_with_a_thousand_queued_gets_one_in_n() -> None:
    queue: FairQueue[str] = FairQueue()
    for n in range(1000):
        queue.push("buster", f"b{n}")
    for client in ("one", "two", "three"):
        queue.push(client, client)
    assert (len(queue), queue.clients) == (1003, 4)
    first = [queue.pop() for _ in range(8)]
    assert first == ["b0", "one", "two", "three", "b1", "b2", "b3", "b4"]
    assert (len(queue), queue.clients) == (995, 1)


def test_items_that_gave_up_are_skipped_without_costing_their_client() -> None:
    queue: FairQueue[str] = FairQueue()
    for item in ("a0", "a1-gone", "a2"):
        queue.push("a", item)
    for item in ("b0-gone", "b1-gone"):
        queue.push("b", item)
    queue.push("c", "c0")
    live = lambda item: not item.endswith("gone")  # noqa: E731
    order = []
    while (item := queue.pop(live)) is not None:
        order.append(item)
    assert order == ["a0", "c0", "a2"]  # b had only gone ones: it left the ring
    assert (len(queue), queue.clients) == (0, 0)


def test_a_client_that_comes_back_starts_without_old_credit() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.push("a", "a0", 3.0)
    assert queue.pop() == "a0"  # 2 credit left, but its queue is empty: forgotten
    queue.push("b", "b0")
    queue.push("a", "a1", 3.0)
    queue.push("a", "a2", 3.0)
    assert [queue.pop(), queue.pop(), queue.pop()] == ["b0", "a1", "a2"]


def test_the_latest_weight_counts() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.push("a", "a0", 1.0)
    queue.push("a", "a1", 2.0)
    queue.push("a", "a2", 2.0)
    queue.push("b", "b0")
    queue.push("b", "b1")
    assert [queue.pop() for _ in range(5)] == ["a0", "a1", "b0", "a2", "b1"]


def test_pop_on_empty_is_none() -> None:
    assert FairQueue[str]().pop() is None
