"""One metrics view over N workers: each worker's metric families merged into one.

With ``serve --workers N`` every worker counts in its own memory (the hit path stays as cheap
as in one process: nothing is shared, written or sent per request). A scrape reaches one
worker; it collects its own registry, asks its siblings for theirs over a local socket
(:mod:`bloxproxy.siblings`) and answers :func:`merge` of them all:

- counters and histograms (every ``_bucket``, ``_sum`` and ``_count``) are summed per label
  set: ``bloxproxy_requests_total`` is the proxy's, not one worker's;
- each gauge by what it means (:data:`GAUGES`): a quantity the workers hold side by side is
  summed (waiters, L1 entries and bytes, open connections, requests in line); a state or a
  bound shared by all is the highest (a breaker's worst state, a hold, Roblox's own limit);
  a per-process health number is kept per worker with a ``worker`` label (asyncio tasks, the
  peak of upstream bytes held, each against its own worker's bound);
- the upstream budgets' ``rate`` and ``ceiling`` are summed when each worker has its own
  budget (N workers send N x ``rate``) and the highest when they share one in Redis
  (``limits.upstream.shared``: one budget, every worker reads it);
- ``bloxproxy_workers{state}`` says how many workers answered and how many did not (a
  worker starting or stuck): the sums are then short of theirs.

Pure: a snapshot is plain data (:func:`families`, :func:`encode`, :func:`decode`), and
:func:`merge` a function of snapshots, tested as tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import orjson
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

Policy = Literal["sum", "max", "worker"]
WORKERS = "bloxproxy_workers"  # the family merge() writes itself

# How each gauge of ours is merged (a gauge missing here keeps a ``worker`` label: never a
# made-up sum; tests/test_metricsview.py checks that every gauge of the live exposition is
# named here).
GAUGES: dict[str, Policy] = {
    "bloxproxy_coalesce_waiting": "sum",
    "bloxproxy_cache_l1_entries": "sum",
    "bloxproxy_cache_l1_bytes": "sum",
    "bloxproxy_upstream_inflight_bytes": "sum",
    "bloxproxy_upstream_inflight_bytes_peak": "worker",
    "bloxproxy_asyncio_tasks": "worker",
    "bloxproxy_client_connections": "sum",
    "bloxproxy_breaker_state": "max",
    "bloxproxy_upstream_budget_waiting": "sum",
    "bloxproxy_upstream_budget_limit": "max",
    "bloxproxy_upstream_budget_hold_seconds": "max",
    "bloxproxy_upstream_budget_rate": "sum",  # "max" with shared budgets
    "bloxproxy_upstream_budget_ceiling": "sum",  # "max" with shared budgets
    WORKERS: "sum",
}
SHARED_BUDGET_GAUGES = frozenset(
    ("bloxproxy_upstream_budget_rate", "bloxproxy_upstream_budget_ceiling")
)
SUMMED_TYPES = frozenset(("counter", "histogram", "summary", "gaugehistogram"))


def policy(name: str, kind: str, *, shared_budgets: bool) -> Policy:
    """How family ``name`` of type ``kind`` is merged."""
    if kind in SUMMED_TYPES:
        return "sum"
    if kind != "gauge":
        return "worker"
    if shared_budgets and name in SHARED_BUDGET_GAUGES:
        return "max"
    return GAUGES.get(name, "worker")


Labels = tuple[tuple[str, str], ...]


@dataclass
class Family:
    """One metric family as plain data: its samples in order, by (sample name, labels)."""

    name: str
    kind: str
    doc: str
    unit: str = ""
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)


def families(metrics: Iterable[Metric]) -> list[Family]:
    """What a registry's ``collect()`` yields, as plain data."""
    return [
        Family(
            m.name,
            m.type,
            m.documentation,
            m.unit,
            [(s.name, tuple(s.labels.items()), float(s.value)) for s in m.samples],
        )
        for m in metrics
    ]


def encode(fams: Sequence[Family]) -> bytes:
    """A snapshot as a sibling sends it (JSON; a non-finite value as a string)."""
    return orjson.dumps(
        [
            [f.name, f.kind, f.doc, f.unit, [[n, list(ls), _out(v)] for n, ls, v in f.samples]]
            for f in fams
        ]
    )


def _out(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)


def decode(data: bytes) -> list[Family]:
    """The inverse of :func:`encode`; ValueError for anything else."""
    try:
        raw = orjson.loads(data)
        if not isinstance(raw, list):
            raise TypeError(f"a list, not {type(raw).__name__}")
        return [
            Family(
                str(name),
                str(kind),
                str(doc),
                str(unit),
                [
                    (str(n), tuple((str(k), str(v)) for k, v in labels), float(value))
                    for n, labels, value in samples
                ],
            )
            for name, kind, doc, unit, samples in raw
        ]
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"not a metrics snapshot: {exc}") from exc


def merge(
    views: Sequence[tuple[str, Sequence[Family]]],
    *,
    expected: int,
    shared_budgets: bool,
) -> list[Family]:
    """One view of ``views`` (each a worker's label and its families, the answering worker
    first), of ``expected`` workers in all. Families and samples keep their first order."""
    out: dict[str, Family] = {}
    index: dict[str, dict[tuple[str, Labels], int]] = {}
    for worker, fams in views:
        for fam in fams:
            if fam.name == WORKERS:
                continue
            how = policy(fam.name, fam.kind, shared_budgets=shared_budgets)
            merged = out.get(fam.name)
            if merged is None:
                merged = out[fam.name] = Family(fam.name, fam.kind, fam.doc, fam.unit)
                index[fam.name] = {}
            at = index[fam.name]
            for name, labels, value in fam.samples:
                if how == "worker":
                    labels = (*labels, ("worker", worker))
                i = at.get((name, labels))
                if i is None:
                    at[(name, labels)] = len(merged.samples)
                    merged.samples.append((name, labels, value))
                    continue
                old = merged.samples[i][2]
                new = old + value if how == "sum" else max(old, value)
                merged.samples[i] = (name, labels, new)
    answered = len(views)
    out[WORKERS] = Family(
        WORKERS,
        "gauge",
        WORKERS_DOC,
        samples=[
            (WORKERS, (("state", "answered"),), float(answered)),
            (WORKERS, (("state", "missing"),), float(max(0, expected - answered))),
        ],
    )
    return list(out.values())


WORKERS_DOC = (
    "Workers whose numbers this scrape includes (answered) and those that did not answer "
    "in time (missing: a worker starting or stuck); 1 and 0 in one process."
)


def metrics(fams: Iterable[Family]) -> Iterator[Metric]:
    """Families as ``prometheus_client`` metrics, for its text exposition."""
    for fam in fams:
        m = Metric(fam.name, fam.doc, fam.kind, fam.unit)
        for name, labels, value in fam.samples:
            m.add_sample(name, dict(labels), value)
        yield m


class View(Collector):
    """A collector of given families (``generate_latest`` of a registry holding it)."""

    def __init__(self, fams: Sequence[Family]) -> None:
        self._fams = fams

    def collect(self) -> Iterator[Metric]:
        return metrics(self._fams)
