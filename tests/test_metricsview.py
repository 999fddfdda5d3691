"""The metrics view of ``serve --workers N`` (bloxproxy/metricsview.py, bloxproxy/siblings.py).

(a) :func:`merge` as tables: counters and histograms summed per label set, each gauge by its
    policy, the budgets' rate and ceiling by whether the budget is shared, the workers that
    answered and those missing; snapshots' encoding both ways, and refusal of anything else.
(b) Every gauge of the live exposition (the real app after traffic) has a policy of its own.
(c) Siblings over real Unix sockets: a sibling's registry is summed in; one that is absent,
    answers junk or does not answer in time is left out and counted missing.

The whole thing with two real worker processes: tests/test_serve.py
(``test_one_metrics_view_over_the_workers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bloxproxy import metricsview
from bloxproxy.metricsview import GAUGES, WORKERS, Family, decode, encode, families, merge
from bloxproxy.siblings import Siblings, fetch, merged, serve_snapshots
from tests.test_observe import Client, call, scrape


def counter(value: float, **labels: str) -> Family:
    return Family("c", "counter", "a counter", samples=[("c_total", tuple(labels.items()), value)])


def gauge(name: str, value: float, **labels: str) -> Family:
    return Family(name, "gauge", "a gauge", samples=[(name, tuple(labels.items()), value)])


def samples(fams: list[Family], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    (fam,) = [f for f in fams if f.name == name]
    return {labels: value for _, labels, value in fam.samples}


def workers(fams: list[Family]) -> dict[str, float]:
    return {dict(labels)["state"]: v for labels, v in samples(fams, WORKERS).items()}


# -- (a) merge as tables ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shared", "values", "expected"),
    [
        ("bloxproxy_coalesce_waiting", False, [3, 4], {(): 7}),
        ("bloxproxy_cache_l1_entries", False, [10, 5], {(): 15}),
        ("bloxproxy_cache_l1_bytes", True, [100, 50], {(): 150}),
        ("bloxproxy_upstream_inflight_bytes", False, [1, 2], {(): 3}),
        ("bloxproxy_breaker_state", False, [0, 2], {(): 2}),  # the worst worker's state
        ("bloxproxy_upstream_budget_hold_seconds", False, [1.5, 0], {(): 1.5}),
        ("bloxproxy_upstream_budget_limit", False, [10, 10], {(): 10}),  # Roblox's one number
        ("bloxproxy_upstream_budget_waiting", True, [1, 2], {(): 3}),
        ("bloxproxy_upstream_budget_rate", False, [4, 3], {(): 7}),  # own budgets: N x rate
        ("bloxproxy_upstream_budget_rate", True, [4, 3.5], {(): 4}),  # one budget in Redis
        ("bloxproxy_upstream_budget_ceiling", False, [10, 10], {(): 20}),
        ("bloxproxy_upstream_budget_ceiling", True, [10, 10], {(): 10}),
        (
            "bloxproxy_asyncio_tasks",
            False,
            [30, 31],
            {(("worker", "0"),): 30, (("worker", "1"),): 31},
        ),
        (
            "bloxproxy_some_new_gauge",  # no policy yet: kept per worker, never a made-up sum
            False,
            [1, 1],
            {(("worker", "0"),): 1, (("worker", "1"),): 1},
        ),
    ],
)
def test_gauges_merge_by_policy(
    name: str, shared: bool, values: list[float], expected: dict[object, float]
) -> None:
    views = [(str(i), [gauge(name, v)]) for i, v in enumerate(values)]
    out = merge(views, expected=2, shared_budgets=shared)
    assert samples(out, name) == expected


def test_counters_and_histograms_sum_per_label_set_in_first_order() -> None:
    a = [counter(2, route="x"), Family("h", "histogram", "h")]
    a[1].samples = [
        ("h_bucket", (("route", "x"), ("le", "0.1")), 1),
        ("h_bucket", (("route", "x"), ("le", "+Inf")), 2),
        ("h_sum", (("route", "x"),), 0.3),
        ("h_count", (("route", "x"),), 2),
    ]
    b = [
        Family("c", "counter", "a counter", samples=[("c_total", (("route", "y"),), 5)]),
        Family("h", "histogram", "h", samples=[(n, ls, v * 10) for n, ls, v in a[1].samples]),
    ]
    b[0].samples.append(("c_total", (("route", "x"),), 1))
    out = merge([("0", a), ("1", b)], expected=2, shared_budgets=False)
    assert [f.name for f in out] == ["c", "h", WORKERS]
    assert out[0].samples == [
        ("c_total", (("route", "x"),), 3),
        ("c_total", (("route", "y"),), 5),
    ]
    assert [v for _, _, v in out[1].samples] == [11, 22, pytest.approx(3.3), 22]
    assert workers(out) == {"answered": 2, "missing": 0}


@pytest.mark.parametrize(
    ("answered", "expected", "missing"), [(1, 1, 0), (1, 3, 2), (3, 3, 0), (2, 1, 0)]
)
def test_workers_answered_and_missing(answered: int, expected: int, missing: int) -> None:
    own = Family(WORKERS, "gauge", "x", samples=[(WORKERS, (("state", "answered"),), 1)])
    views = [(str(i), [own, counter(1)]) for i in range(answered)]
    out = merge(views, expected=expected, shared_budgets=False)
    assert workers(out) == {"answered": answered, "missing": missing}
    assert samples(out, "c") == {(): answered}


def test_the_merge_renders_as_the_text_format() -> None:
    registry = CollectorRegistry()
    Counter("bloxproxy_x", "x", ["route"], registry=registry).labels("r").inc(2)
    Gauge("bloxproxy_coalesce_waiting", "w", registry=registry).set(3)
    Histogram("bloxproxy_d_seconds", "d", registry=registry, buckets=(0.1,)).observe(0.05)
    own = families(registry.collect())
    twice = merge([("0", own), ("1", decode(encode(own)))], expected=2, shared_budgets=False)
    view = CollectorRegistry(auto_describe=False)
    view.register(metricsview.View(twice))
    parsed = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(generate_latest(view).decode())
        for s in f.samples
    }
    assert parsed[("bloxproxy_x_total", (("route", "r"),))] == 4
    assert parsed[("bloxproxy_coalesce_waiting", ())] == 6
    assert parsed[("bloxproxy_d_seconds_bucket", (("le", "0.1"),))] == 2
    assert parsed[("bloxproxy_d_seconds_count", ())] == 2
    assert parsed[(WORKERS, (("state", "answered"),))] == 2


def test_snapshots_encode_both_ways_with_non_finite_values() -> None:
    fam = Family("g", "gauge", "doc", "", [("g", (("a", "1"),), math.inf), ("g", (), -math.inf)])
    nan = Family("n", "gauge", "doc", "", [("n", (), math.nan)])
    back = decode(encode([fam, nan]))
    assert back[0] == fam
    assert math.isnan(back[1].samples[0][2])


@pytest.mark.parametrize(
    "junk",
    [b"", b"not json", b"{}", b"[1]", b'[["n","gauge","d","",[["n",[],"x"]]]]', b"[[1,2]]"],
)
def test_anything_but_a_snapshot_is_refused(junk: bytes) -> None:
    with pytest.raises(ValueError, match="not a metrics snapshot"):
        decode(junk)


# -- (b) every live gauge has its policy ---------------------------------------------------------


async def test_every_gauge_of_the_live_exposition_has_a_policy(proxy: Client) -> None:
    for path in ("/v1/users/1", "/v1/users/1", "/v1/users?userIds=1,2", "/v1/nope"):
        await call(proxy, path)
    text = (await scrape(proxy)).text
    gauges = {f.name for f in text_string_to_metric_families(text) if f.type == "gauge"}
    assert "bloxproxy_coalesce_waiting" in gauges and "bloxproxy_breaker_state" in gauges
    assert gauges - set(GAUGES) == set(), "decide how each new gauge is merged (GAUGES)"
    assert "worker=" not in text, "one process: no worker label"
    assert 'bloxproxy_workers{state="answered"} 1.0' in text
    assert 'bloxproxy_workers{state="missing"} 0.0' in text


# -- (c) siblings over Unix sockets --------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A short directory (a Unix socket path has at most 107 bytes)."""
    directory = tempfile.mkdtemp(prefix="bpx-")
    yield directory
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    os.rmdir(directory)


def registry_with(requests: float, waiting: float) -> CollectorRegistry:
    registry = CollectorRegistry()
    c = Counter("bloxproxy_requests", "r", ["route"], registry=registry)
    c.labels("users.get").inc(requests)
    Gauge("bloxproxy_coalesce_waiting", "w", registry=registry).set(waiting)
    return registry


async def test_siblings_are_summed_and_the_absent_counted_missing(short_dir: str) -> None:
    one = Siblings(short_dir, 1, 3)
    runner = await serve_snapshots(one, registry_with(5, 2))
    try:
        assert (await fetch(one.socket(1))) is not None
        out = await merged(
            Siblings(short_dir, 0, 3), registry_with(7, 1), shared_budgets=False, wait=0.5
        )
    finally:
        await runner.cleanup()
    assert samples(out, "bloxproxy_requests") == {(("route", "users.get"),): 12}
    assert samples(out, "bloxproxy_coalesce_waiting") == {(): 3}
    assert workers(out) == {"answered": 2, "missing": 1}  # worker 2 never started


async def test_a_restarted_sibling_takes_over_its_stale_socket(short_dir: str) -> None:
    me = Siblings(short_dir, 1, 2)
    with socket.socket(socket.AF_UNIX) as stale:  # left by the worker it replaces
        stale.bind(me.socket(1))
    assert me.socket(1).rsplit("/", 1)[1] in os.listdir(short_dir)
    runner = await serve_snapshots(me, registry_with(1, 0))
    try:
        fams = await fetch(me.socket(1))
    finally:
        await runner.cleanup()
    assert fams is not None and samples(fams, "bloxproxy_requests")


async def test_a_sibling_that_answers_junk_or_late_is_left_out(short_dir: str) -> None:
    hold = asyncio.Event()

    async def junk(request: web.Request) -> web.Response:
        return web.Response(body=b"<html>no</html>")

    async def late(request: web.Request) -> web.Response:
        await hold.wait()
        return web.Response(body=b"[]")

    async def error(request: web.Request) -> web.Response:
        return web.Response(status=500, body=b"[]")

    runners = []
    for index, handler in ((1, junk), (2, late), (3, error)):
        app = web.Application()
        app.router.add_get("/snapshot", handler)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.UnixSite(runner, Siblings(short_dir, index, 4).socket(index)).start()
        runners.append(runner)
    try:
        started = asyncio.get_running_loop().time()
        out = await merged(
            Siblings(short_dir, 0, 4), registry_with(3, 0), shared_budgets=False, wait=0.3
        )
        took = asyncio.get_running_loop().time() - started
    finally:
        hold.set()
        for runner in runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()
    assert took < 1.0, "the siblings are asked at once, each within the wait"
    assert samples(out, "bloxproxy_requests") == {(("route", "users.get"),): 3}
    assert workers(out) == {"answered": 1, "missing": 3}


def test_no_directory_for_the_sockets_is_logged_and_not_fatal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Where no private directory can be made (a read-only root and no writable /tmp), the
    workers still serve, each scrape showing one worker's numbers, and the log says why."""
    from bloxproxy.serve import _siblings_directory

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with caplog.at_level(logging.WARNING, logger="bloxproxy"):
        assert _siblings_directory() is None
    (record,) = caplog.records
    assert "one worker's numbers, not the sum" in record.getMessage()
    assert "TMPDIR" in record.getMessage()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = _siblings_directory()
    assert made is not None and Path(made).parent == tmp_path
    assert Path(made).stat().st_mode & 0o777 == 0o700
