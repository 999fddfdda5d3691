"""The Grafana dashboard and the Prometheus alert rules in ``deploy/``, against the live
exposition.

Every ``bloxproxy_*`` name in their PromQL must be a metric the real proxy exposes after
traffic (a histogram's ``_bucket``, ``_sum`` and ``_count`` counting as its family's): a
renamed metric breaks this test, not an operator's dashboard. The dashboard must show what
the issue asks of it (hit ratio, calls avoided, learned rate against use, 429s, breakers,
coalescing waiters, batch fill), filter every selector by its ``$job`` variable and lay its
panels out without overlap; every alert must say how severe it is and what it is about, and
name in its text only labels its expression keeps.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.test_observe import Client, call, scrape

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "bloxproxy-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
NAME = re.compile(r"\bbloxproxy_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(bloxproxy_[a-z0-9_]+)(\{[^}]*\})?")
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    (group,) = data["groups"]
    assert group["name"] == "bloxproxy"
    out: list[dict[str, Any]] = group["rules"]
    return out


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


async def exposed(proxy: Client) -> tuple[set[str], str]:
    """Every sample name the proxy exposes, after hits, misses, a passthrough and a 404."""
    for path in ("/v1/users/1", "/v1/users/1", "/users/v1/users/2", "/v1/nope"):
        await call(proxy, path)
    text = (await scrape(proxy)).text
    names = set()
    for family in text_string_to_metric_families(text):
        kind = family.type
        base = family.name + ("_total" if kind == "counter" else "")
        names.add(base)
        names.update(family.name + s for s in SUFFIXES.get(kind, ()))
    return names, text


def balanced(expr: str) -> bool:
    depth = {"(": 0, "[": 0, "{": 0}
    closing = {")": "(", "]": "[", "}": "{"}
    for ch in re.sub(r'"[^"]*"', '""', expr):
        if ch in depth:
            depth[ch] += 1
        elif ch in closing:
            depth[closing[ch]] -= 1
            if depth[closing[ch]] < 0:
                return False
    return not any(depth.values()) and expr.count('"') % 2 == 0


async def test_every_metric_they_use_is_exposed(
    proxy: Client, dashboard: dict[str, Any], rules: list[dict[str, Any]]
) -> None:
    names, text = await exposed(proxy)
    used = {
        "dashboard": {n for e in dashboard_exprs(dashboard) for n in NAME.findall(e)},
        "alerts": {n for r in rules for n in NAME.findall(r["expr"])},
    }
    for where, found in used.items():
        assert len(found) >= 8, where
        assert found - names == set(), f"{where}: not in the live exposition"
    # and the traffic shows in the families they are built on
    assert 'bloxproxy_cache_results_total{result="HIT",route="users.get"} 1.0' in text
    assert 'bloxproxy_cache_results_total{result="MISS",route="users.get"} 1.0' in text


def test_the_dashboard_shows_what_operators_ask(dashboard: dict[str, Any]) -> None:
    exprs = dashboard_exprs(dashboard)
    joined = "\n".join(exprs)
    wanted = {
        "hit ratio": r'bloxproxy_cache_results_total\{[^}]*result=~"HIT\|STALE\|COALESCED"',
        "calls avoided": r"bloxproxy_batch_ids_total.*-\s*sum\(rate\(bloxproxy_batch_calls_total",
        "learned rate": r"bloxproxy_upstream_budget_rate",
        "use per scope": r"sum by \(scope\) \(rate\(bloxproxy_upstream_budget_slots_total",
        "429s": r'bloxproxy_upstream_requests_total\{[^}]*status="429"',
        "breaker state": r"bloxproxy_breaker_state",
        "coalescing waiters": r"sum\(bloxproxy_coalesce_waiting",
        "batch fill": r"bloxproxy_batch_ids_total[^/]*/ sum by \(endpoint\) "
        r"\(rate\(bloxproxy_batch_capacity_total",
    }
    for what, pattern in wanted.items():
        assert re.search(pattern, joined), what
    for expr in exprs:
        assert balanced(expr), expr
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name, labels in SELECTOR.findall(target["expr"]):
                assert '$job"' in labels, f"{panel['title']}: {name} not filtered by $job"
            assert target["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job"} <= names


def test_every_alert_is_complete(rules: list[dict[str, Any]]) -> None:
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    assert {"BloxproxyRoblox429s", "BloxproxyBreakerOpen", "BloxproxyCoalescingBacklog"} <= set(
        names
    )
    for rule in rules:
        assert balanced(rule["expr"]), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"], rule["alert"]
        kept = {
            label.strip()
            for group in re.findall(r"\bby \(([^)]*)\)", rule["expr"])
            for label in group.split(",")
        }
        texts = " ".join(rule["annotations"].values())
        for label in re.findall(r"\$labels\.([a-z_]+)", texts):
            assert label in kept, f"{rule['alert']}: {label} is not kept by its expression"
