"""Observability through the real app in front of the fake: every ``/_bloxproxy/metrics``
family and how it moves, the access log (JSON and text, nothing secret in it), the
``X-Request-ID`` rules, ``Server-Timing``, ``readyz`` with and without Redis, and the
reserved ``/_bloxproxy/`` prefix that rules and passthrough cannot reach.

The access log is captured with ``capsysbinary``: :class:`~bloxproxy.observe.AccessLog`
writes to ``sys.stderr.buffer`` as it is when the app is built, which the fixture has
already replaced; ``AccessLog.flush()`` (public) empties the buffer instead of waiting for
the 0.2 s flush task. Time-dependent states (STALE, the breaker's half-open) move the
injected clock; the only real waits are the fake's latency, kept to a tenth of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import socket
import time
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from prometheus_client.parser import text_string_to_metric_families

from bloxproxy import config as config_mod
from bloxproxy.answer import Answer as PipelineAnswer
from bloxproxy.appkeys import ACCESS_LOG, FETCHER, FRONT, GUARD
from bloxproxy.connections import use_problem_errors
from bloxproxy.errors import ConfigError
from bloxproxy.fake import FakeRoblox, Fault
from bloxproxy.front import Front
from bloxproxy.logs import JsonFormatter
from bloxproxy.observe import AccessLog, Metrics, RequestInfo
from bloxproxy.rules import load_rules
from tests.conftest import FakeClock, ProxyFactory

Client = TestClient[web.Request, web.Application]

GENERATED_ID = re.compile(r"[0-9a-f]{16}")
NO_CACHE = {"BLOXPROXY_CACHE_ENABLED": "false"}
ONE_ATTEMPT = {"BLOXPROXY_RETRIES_ATTEMPTS": "1"}
ACCESS_JSON = {"BLOXPROXY_LOGGING_ACCESS_LOG": "true", "BLOXPROXY_LOGGING_FORMAT": "json"}
ACCESS_TEXT = {"BLOXPROXY_LOGGING_ACCESS_LOG": "true", "BLOXPROXY_LOGGING_FORMAT": "text"}

FAMILIES = {
    "bloxproxy_requests_total": "counter",
    "bloxproxy_cache_results_total": "counter",
    "bloxproxy_request_duration_seconds": "histogram",
    "bloxproxy_upstream_requests_total": "counter",
    "bloxproxy_upstream_duration_seconds": "histogram",
    "bloxproxy_upstream_retries_total": "counter",
    "bloxproxy_limiter_wait_seconds": "histogram",
    "bloxproxy_limiter_rejections_total": "counter",
    "bloxproxy_breaker_state": "gauge",
    "bloxproxy_upstream_budget_rate": "gauge",
    "bloxproxy_upstream_budget_ceiling": "gauge",
    "bloxproxy_upstream_budget_limit": "gauge",
    "bloxproxy_upstream_budget_hold_seconds": "gauge",
    "bloxproxy_upstream_budget_waiting": "gauge",
    "bloxproxy_upstream_budget_slots_total": "counter",
    "bloxproxy_upstream_budget_waits_total": "counter",
    "bloxproxy_upstream_budget_refusals_total": "counter",
    "bloxproxy_cache_l1_entries": "gauge",
    "bloxproxy_cache_l1_bytes": "gauge",
    "bloxproxy_reloads_total": "counter",
    "bloxproxy_batch_calls_total": "counter",
    "bloxproxy_batch_ids_total": "counter",
    "bloxproxy_batch_capacity_total": "counter",
    "bloxproxy_coalesce_waiting": "gauge",
    "bloxproxy_workers": "gauge",
}


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)


async def call(client: Client, path: str, method: str = "GET", **kwargs: Any) -> Answer:
    async with client.request(method, path, **kwargs) as resp:
        return Answer(resp.status, resp.headers, await resp.read())


class Scrape:
    """One parsed ``/_bloxproxy/metrics`` answer."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def get(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when absent (a labelled child not created yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: Client, key: str = "") -> Scrape:
    """``key``: the access key, when the proxy has keys (metrics then need one)."""
    headers = {"X-Bloxproxy-Key": key} if key else {}
    answer = await call(client, "/_bloxproxy/metrics", headers=headers)
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=")
    return Scrape(answer.body.decode())


def access_lines(client: Client, capsysbinary: pytest.CaptureFixture[bytes]) -> list[bytes]:
    client.server.app[ACCESS_LOG].flush()
    return capsysbinary.readouterr().err.splitlines()


def access_records(
    client: Client, capsysbinary: pytest.CaptureFixture[bytes]
) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in access_lines(client, capsysbinary)]


async def poll(condition: Any, what: str, seconds: float = 2.0) -> None:
    """Poll ``condition()`` on the loop (the fake records a request as it arrives)."""
    for _ in range(int(seconds / 0.002)):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"timed out: {what}")


# -- metrics: families and their movements ---------------------------------------------------


async def test_every_family_is_exposed_with_help_and_type(proxy: Client) -> None:
    text = (await scrape(proxy)).text
    for name, kind in FAMILIES.items():
        assert f"# TYPE {name} {kind}\n" in text, name
        assert f"# HELP {name} " in text, name
    assert "_created" not in text  # scrape noise switched off


async def test_requests_by_route_and_status(proxy: Client) -> None:
    assert (await call(proxy, "/v1/users/1")).status == 200
    assert (await call(proxy, "/v1/users/1")).status == 200
    assert (await call(proxy, "/v1/users/0")).status == 400  # min: 1
    assert (await call(proxy, "/v1/no-such-route")).status == 404
    assert (await call(proxy, "/users/v1/users/1")).status == 200
    assert (await call(proxy, "/nosuchservice/v1/x")).status == 404
    m = await scrape(proxy)
    assert m.get("bloxproxy_requests_total", route="users.get", status="200") == 2
    assert m.get("bloxproxy_requests_total", route="users.get", status="400") == 1
    assert m.get("bloxproxy_requests_total", route="passthrough:users", status="200") == 1
    assert m.get("bloxproxy_requests_total", route="none", status="404") == 2
    # an unknown service does not become a label (no cardinality from client input)
    assert "nosuchservice" not in m.text
    assert m.get("bloxproxy_request_duration_seconds_count", route="users.get") == 3
    assert m.get("bloxproxy_request_duration_seconds_count", route="passthrough:users") == 1


async def test_cache_results_by_route_match_x_cache(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy()
    seen = [
        (await call(proxy, "/v1/users/1")).headers["X-Cache"],
        (await call(proxy, "/v1/users/1")).headers["X-Cache"],
    ]
    clock.advance(10 * 60 + 1)  # past the 10m TTL, inside the 1m stale-while-revalidate
    seen.append((await call(proxy, "/v1/users/1")).headers["X-Cache"])
    fake.latency = 0.1  # the second request arrives while the first is upstream
    pair = await asyncio.gather(call(proxy, "/v1/users/1000002"), call(proxy, "/v1/users/1000002"))
    fake.latency = 0.0
    seen += sorted(a.headers["X-Cache"] for a in pair)
    cookie = {"Cookie": ".ROBLOSECURITY=credentialed"}
    seen.append((await call(proxy, "/v1/users/1000003", headers=cookie)).headers["X-Cache"])
    seen.append((await call(proxy, "/users/v1/users/1000003")).headers["X-Cache"])
    assert seen == ["MISS", "HIT", "STALE", "COALESCED", "MISS", "BYPASS", "MISS"]
    assert fake.count("users", "/v1/users/1000002") == 1

    m = await scrape(proxy)
    route = {"route": "users.get"}
    assert m.get("bloxproxy_cache_results_total", result="MISS", **route) == 2
    assert m.get("bloxproxy_cache_results_total", result="HIT", **route) == 1
    assert m.get("bloxproxy_cache_results_total", result="STALE", **route) == 1
    assert m.get("bloxproxy_cache_results_total", result="COALESCED", **route) == 1
    assert m.get("bloxproxy_cache_results_total", result="BYPASS", **route) == 1
    assert m.get("bloxproxy_cache_results_total", result="MISS", route="passthrough:users") == 1


async def test_cache_off_counts_bypass(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(**NO_CACHE)
    for _ in range(2):
        assert (await call(proxy, "/v1/users/1")).headers["X-Cache"] == "BYPASS"
    m = await scrape(proxy)
    assert m.get("bloxproxy_cache_results_total", result="BYPASS", route="users.get") == 2
    assert m.get("bloxproxy_cache_results_total", result="MISS", route="users.get") == 0


async def test_coalesced_waiters_show_while_they_wait(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy()
    fake.script("users", "/v1/users/1", [Fault(delay=0.5)])
    herd = [asyncio.ensure_future(call(proxy, "/v1/users/1")) for _ in range(4)]
    fetcher = proxy.server.app[FETCHER]
    for _ in range(1000):
        if fetcher.waiting == 3:
            break
        await asyncio.sleep(0.001)
    assert (await scrape(proxy)).get("bloxproxy_coalesce_waiting") == 3
    assert [a.status for a in await asyncio.gather(*herd)] == [200] * 4
    assert (await scrape(proxy)).get("bloxproxy_coalesce_waiting") == 0


async def test_upstream_attempts_latency_and_retries(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**NO_CACHE)
    fake.script("users", "/v1/users/1", [Fault(drop=True), Fault(status=503)])
    answer = await call(proxy, "/users/v1/users/1")
    assert answer.status == 200
    assert fake.count("users", "/v1/users/1") == 3
    assert proxy.server.app[GUARD].services["users"].retries == 2
    assert (await call(proxy, "/games/v1/games?universeIds=1")).status == 200

    m = await scrape(proxy)
    for service, status, n in (
        ("users", "error", 1),
        ("users", "503", 1),
        ("users", "200", 1),
        ("games", "200", 1),
    ):
        assert m.get("bloxproxy_upstream_requests_total", service=service, status=status) == n
    assert m.get("bloxproxy_upstream_retries_total", service="users") == 2
    assert m.get("bloxproxy_upstream_retries_total", service="games") == 0
    # one latency observation per answered attempt (the dropped one has no answer)
    assert m.get("bloxproxy_upstream_duration_seconds_count", service="users") == 2
    assert m.get("bloxproxy_upstream_duration_seconds_count", service="games") == 1
    # a whole histogram: cumulative buckets up to +Inf = the count, and a sum of seconds
    name = "bloxproxy_upstream_duration_seconds"
    assert m.get(f"{name}_bucket", service="users", le="+Inf") == 2
    assert m.get(f"{name}_bucket", service="users", le="10.0") == 2
    assert 0 < m.get(f"{name}_sum", service="users") < 10


async def test_limiter_waits_and_rejections(make_proxy: ProxyFactory, fake: FakeRoblox) -> None:
    proxy = await make_proxy(
        **NO_CACHE, BLOXPROXY_LIMITS_UPSTREAM_RATE="1", BLOXPROXY_LIMITS_UPSTREAM_MAX_WAIT="50ms"
    )
    answers = await asyncio.gather(call(proxy, "/v1/users/1"), call(proxy, "/v1/users/2"))
    assert sorted(a.status for a in answers) == [200, 503]
    assert proxy.server.app[GUARD].services["users"].rejected == 1
    m = await scrape(proxy)
    assert m.get("bloxproxy_limiter_rejections_total", service="users") == 1
    assert m.get("bloxproxy_limiter_wait_seconds_count", service="users") == 1  # the admitted one
    # it did not wait (the second's first token): in a low bucket, not only under +Inf
    assert m.get("bloxproxy_limiter_wait_seconds_bucket", service="users", le="0.01") == 1


async def test_learned_budgets_per_scope(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(
        **NO_CACHE,
        **ONE_ATTEMPT,
        BLOXPROXY_LIMITS_UPSTREAM_RATE="2",
        BLOXPROXY_LIMITS_UPSTREAM_MAX_WAIT="1s",
    )
    answers = await asyncio.gather(*(call(proxy, f"/v1/users/{1_000_001 + i}") for i in range(4)))
    assert sorted(a.status for a in answers) == [200, 200, 200, 503]  # at 0, 0.5 and 1 s
    fake.script("games", "/v1/games", [Fault(status=429, retry_after="5")])
    assert (await call(proxy, "/games/v1/games?universeIds=1")).status == 429
    m = await scrape(proxy)
    rate, rows = "bloxproxy_upstream_budget_rate", "bloxproxy_upstream_budget"
    assert (m.get(rate, scope="users"), m.get(rate, scope="games")) == (2.0, 1.0)  # learned
    assert m.get(f"{rows}_ceiling", scope="games") == 2.0
    assert m.get(f"{rows}_hold_seconds", scope="games") == 5.0
    assert m.get(f"{rows}_limit", scope="users") == 0.0  # Roblox said nothing
    assert m.get(f"{rows}_waiting", scope="users") == 0.0
    assert m.get(f"{rows}_slots_total", scope="users") == 3
    assert m.get(f"{rows}_waits_total", scope="users") == 3
    assert m.get(f"{rows}_refusals_total", scope="users") == 1
    assert m.get("bloxproxy_limiter_rejections_total", service="users") == 1


async def test_breaker_state_gauge_closed_open_half_open(
    make_proxy: ProxyFactory, fake: FakeRoblox, clock: FakeClock
) -> None:
    proxy = await make_proxy(**NO_CACHE, **ONE_ATTEMPT, BLOXPROXY_LIMITS_BREAKER_FAILURES="2")
    gauge = "bloxproxy_breaker_state"
    assert (await call(proxy, "/v1/users/1")).status == 200
    assert (await scrape(proxy)).get(gauge, service="users") == 0
    for uid in (1_000_002, 1_000_003):
        fake.script("users", f"/v1/users/{uid}", [Fault(status=503)])
        assert (await call(proxy, f"/v1/users/{uid}")).status == 503
    assert proxy.server.app[GUARD].services["users"].breaker.state == "open"
    assert (await scrape(proxy)).get(gauge, service="users") == 2

    clock.advance(30)  # open_for: the next request is the half-open probe
    fake.latency = 0.1
    before = fake.total
    probe = asyncio.create_task(call(proxy, "/v1/users/1000004"))
    await poll(lambda: fake.total > before, "the probe reached the fake")
    assert proxy.server.app[GUARD].services["users"].breaker.state == "half_open"
    half_open = (await scrape(proxy)).get(gauge, service="users")
    assert (await probe).status == 200
    assert half_open == 1
    assert (await scrape(proxy)).get(gauge, service="users") == 0


async def test_l1_entries_and_bytes_gauges(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(BLOXPROXY_SERVER_ADMIN_TOKEN="admintoken")
    m = await scrape(proxy)
    assert (m.get("bloxproxy_cache_l1_entries"), m.get("bloxproxy_cache_l1_bytes")) == (0, 0)
    await call(proxy, "/users/v1/users/1")
    one = await scrape(proxy)
    assert one.get("bloxproxy_cache_l1_entries") == 1
    assert one.get("bloxproxy_cache_l1_bytes") > 0
    await call(proxy, "/users/v1/users/2")
    two = await scrape(proxy)
    assert two.get("bloxproxy_cache_l1_entries") == 2
    assert two.get("bloxproxy_cache_l1_bytes") > one.get("bloxproxy_cache_l1_bytes")
    purged = await call(
        proxy,
        "/_bloxproxy/admin/purge",
        "POST",
        json={"all": True},
        headers={"Authorization": "Bearer admintoken"},
    )
    assert purged.status == 200
    m = await scrape(proxy)
    assert (m.get("bloxproxy_cache_l1_entries"), m.get("bloxproxy_cache_l1_bytes")) == (0, 0)


# -- the access log --------------------------------------------------------------------------


async def test_access_log_json_one_line_per_request(
    make_proxy: ProxyFactory, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    proxy = await make_proxy(**ACCESS_JSON)
    agent = {"User-Agent": "my-bot/1.2 (+https://example.com/bot)"}
    answers = [
        await call(proxy, "/v1/users/1", headers=agent),
        await call(proxy, "/v1/users/1", headers=agent),
        await call(proxy, "/v1/nope", headers=agent),
        await call(proxy, "/users/v1/users/2", headers=agent),
    ]
    records = access_records(proxy, capsysbinary)
    assert len(records) == len(answers)
    for record, answer in zip(records, answers, strict=True):
        assert list(record) == [
            "time",
            "type",
            "request_id",
            "client",
            "method",
            "path",
            "route",
            "status",
            "bytes",
            "cache",
            "upstream_ms",
            "total_ms",
            "user_agent",
        ]
        assert record["type"] == "access"
        assert record["request_id"] == answer.headers["X-Request-ID"]
        assert record["status"] == answer.status
        assert record["cache"] == answer.headers.get("X-Cache", "")
        assert record["method"] == "GET"
        assert record["total_ms"] >= record["upstream_ms"] >= 0
        assert record["client"] == "127.0.0.1"
        assert record["bytes"] == len(answer.body) > 0
        assert record["user_agent"] == agent["User-Agent"]
    assert [(r["path"], r["route"], r["status"], r["cache"]) for r in records] == [
        ("/v1/users/1", "users.get", 200, "MISS"),
        ("/v1/users/1", "users.get", 200, "HIT"),
        ("/v1/nope", "none", 404, ""),
        ("/users/v1/users/2", "passthrough:users", 200, "MISS"),
    ]
    assert records[0]["upstream_ms"] > 0 and records[3]["upstream_ms"] > 0
    assert records[1]["upstream_ms"] == records[2]["upstream_ms"] == 0


async def test_access_log_text_format(
    make_proxy: ProxyFactory, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    proxy = await make_proxy(**ACCESS_TEXT)
    miss = await call(proxy, "/v1/users/1", headers={"User-Agent": 'a "quoted" agent'})
    missing = await call(proxy, "/v1/nope", skip_auto_headers=["User-Agent"])
    lines = [line.decode() for line in access_lines(proxy, capsysbinary)]
    assert len(lines) == 2
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    rid = re.escape(miss.headers["X-Request-ID"])
    size = len(miss.body)
    assert re.fullmatch(
        rf"{stamp} {rid} 127\.0\.0\.1 GET /v1/users/1 users\.get 200 {size} MISS \d+\.\dms "
        r'\d+\.\dms "a \\"quoted\\" agent"',
        lines[0],
    ), lines[0]
    rid = re.escape(missing.headers["X-Request-ID"])
    size = len(missing.body)
    assert re.fullmatch(
        rf"{stamp} {rid} 127\.0\.0\.1 GET /v1/nope none 404 {size} - 0\.0ms \d+\.\dms -",
        lines[1],
    ), lines[1]


@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_access_fields_choose_the_fields_and_their_order(
    make_proxy: ProxyFactory, capsysbinary: pytest.CaptureFixture[bytes], fmt: str
) -> None:
    proxy = await make_proxy(
        BLOXPROXY_LOGGING_FORMAT=fmt,
        BLOXPROXY_LOGGING_ACCESS_FIELDS="status, path, user_agent, bytes",
    )
    answer = await call(proxy, "/v1/users/1", headers={"User-Agent": "ua"})
    (line,) = access_lines(proxy, capsysbinary)
    if fmt == "json":
        assert line == b'{"type":"access","status":200,"path":"/v1/users/1","user_agent":"ua",' + (
            b'"bytes":%d}' % len(answer.body)
        )
    else:
        assert line == b'200 /v1/users/1 "ua" %d' % len(answer.body)


async def test_access_fields_one_field(
    make_proxy: ProxyFactory, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    proxy = await make_proxy(BLOXPROXY_LOGGING_ACCESS_FIELDS="[time]")
    await call(proxy, "/v1/nope")
    (line,) = access_lines(proxy, capsysbinary)
    assert re.fullmatch(rb'\{"time":"[0-9T:.-]+Z","type":"access"\}', line), line


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[status, referer]", "'referer' is not an access log field (time, request_id, "),
        ("[]", "expected at least one of time, request_id, "),
        ("[status, status]", "a field is named twice in ['status', 'status']"),
    ],
)
def test_access_fields_are_checked(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc_info:
        config_mod.load(None, env={"BLOXPROXY_LOGGING_ACCESS_FIELDS": value})
    (problem,) = exc_info.value.problems
    assert f"logging.access_fields: {message}" in str(problem)


async def raw_lines(
    proxy: Client, capsysbinary: pytest.CaptureFixture[bytes], *requests: bytes
) -> list[dict[str, Any]]:
    """Send raw HTTP/1.1 requests on one connection; the access records they leave."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        for request in requests:
            writer.write(request)
        await writer.drain()
        with contextlib.suppress(asyncio.TimeoutError):
            while await asyncio.wait_for(reader.read(65536), 1.0):
                pass
    finally:
        writer.close()
    return access_records(proxy, capsysbinary)


async def test_access_log_user_agent_is_escaped_cut_and_valid_utf8(
    make_proxy: ProxyFactory, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    proxy = await make_proxy(**ACCESS_JSON)
    long_agent = b"x" * 1000
    records = await raw_lines(
        proxy,
        capsysbinary,
        b'GET /v1/nope HTTP/1.1\r\nHost: x\r\nUser-Agent: a "b" \\ c\t}{\r\n\r\n',
        b"GET /v1/nope HTTP/1.1\r\nHost: x\r\nUser-Agent: " + long_agent + b"\r\n\r\n",
        b"GET /v1/nope HTTP/1.1\r\nHost: x\r\nUser-Agent: caf\xc3\xa9 \xff\xfe\r\n\r\n",
        b"GET /v1/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert [r["user_agent"] for r in records] == [
        'a "b" \\ c\t}{',
        "x" * 256,
        "caf\u00e9 \ufffd\ufffd",
        None,
    ]


async def test_access_log_client_behind_a_trusted_proxy(
    make_proxy: ProxyFactory, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    proxy = await make_proxy(**ACCESS_TEXT, BLOXPROXY_LIMITS_CLIENTS_FORWARDED_FOR_HOPS="1")
    await call(proxy, "/v1/nope", headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.7"})
    await call(proxy, "/v1/nope", headers={"X-Forwarded-For": 'forged "x" y'})
    await call(proxy, "/v1/nope")
    lines = [line.decode().split(" ") for line in access_lines(proxy, capsysbinary)]
    assert lines[0][2] == "198.51.100.7", "the entry the one trusted proxy appended"
    assert " ".join(lines[1]).count('"forged \\"x\\" y"') == 1, "not plain: quoted, escaped"
    assert lines[2][2] == "127.0.0.1", "no header: the peer"


async def test_access_log_bytes_of_head_304_and_fast_answers(
    make_proxy: ProxyFactory, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    proxy = await make_proxy(**ACCESS_JSON)
    first = await call(proxy, "/v1/users/1")
    await call(proxy, "/v1/users/1")  # a pipeline hit: remembered for the fast path
    fast = await call(proxy, "/v1/users/1")
    head = await call(proxy, "/v1/users/1", method="HEAD")
    unchanged = await call(proxy, "/v1/users/1", headers={"If-None-Match": first.headers["ETag"]})
    assert (fast.status, head.status, unchanged.status) == (200, 200, 304)
    records = access_records(proxy, capsysbinary)
    assert [(r["method"], r["status"], r["bytes"]) for r in records] == [
        ("GET", 200, len(first.body)),
        ("GET", 200, len(first.body)),
        ("GET", 200, len(first.body)),
        ("HEAD", 200, 0),
        ("GET", 304, 0),
    ]
    assert proxy.server.app[FRONT].fast_answers >= 1


async def test_access_log_off_writes_nothing(
    make_proxy: ProxyFactory, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    proxy = await make_proxy(BLOXPROXY_LOGGING_ACCESS_LOG="false")
    assert ACCESS_LOG not in proxy.server.app
    assert (await call(proxy, "/v1/users/1")).status == 200
    assert capsysbinary.readouterr().err == b""


async def test_a_request_cut_off_still_gets_its_line_and_count() -> None:
    """A handler cancelled mid-request (the shutdown grace ran out) answers nothing; the
    request is still logged and counted, as 499."""
    metrics = Metrics()
    stream = io.BytesIO()
    access = AccessLog(stream)
    front = Front(metrics=metrics, access=access, gate=None, clock=time.time, host_routing=False)
    request = make_mocked_request("GET", "/v1/users/1?token=x")

    async def cancelled(req: web.Request, info: RequestInfo) -> PipelineAnswer:
        info.route = "users.get"  # the pipeline matched a route, then was cut off
        raise asyncio.CancelledError

    front.inner = cancelled
    with pytest.raises(asyncio.CancelledError):
        await front.handle(request)
    access.flush()
    line = orjson.loads(stream.getvalue())
    assert (line["route"], line["status"], line["path"]) == ("users.get", 499, "/v1/users/1")
    count = metrics.registry.get_sample_value(
        "bloxproxy_requests_total", {"route": "users.get", "status": "499"}
    )
    assert count == 1


SECRETS = {
    "cookie": "SECRETCOOKIEc00k1e",
    "api_key": "SECRETAPIKEYx9x9",
    "authorization": "SECRETAUTHbear3r",
    "access_key": "SECRETACCESSKEYk3y",
    "wrong_access_key": "SECRETWRONGKEYzz",
    "admin_token": "SECRETADMINTOKENad",
    "wrong_admin_token": "SECRETWRONGADMINqq",
    "query": "SECRETQUERYq5",
}


async def test_no_secret_in_access_log_app_log_or_metrics(
    make_proxy: ProxyFactory,
    fake: FakeRoblox,
    capsysbinary: pytest.CaptureFixture[bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = await make_proxy(
        **ACCESS_JSON,
        **ONE_ATTEMPT,
        BLOXPROXY_AUTH_KEYS=SECRETS["access_key"],
        BLOXPROXY_SERVER_ADMIN_TOKEN=SECRETS["admin_token"],
    )
    fake.script("games", "/v1/games", [Fault(status=429)])  # something for the app log
    creds = {
        "Cookie": f".ROBLOSECURITY={SECRETS['cookie']}",
        "x-api-key": SECRETS["api_key"],
        "Authorization": f"Bearer {SECRETS['authorization']}",
        "X-Bloxproxy-Key": SECRETS["access_key"],
    }
    q = SECRETS["query"]
    statuses = [
        (await call(proxy, f"/v1/users/1?token={q}", headers=creds)).status,
        (await call(proxy, f"/users/v1/users/1?token={q}&cursor={q}", headers=creds)).status,
        (await call(proxy, f"/v1/users/0?api_key={q}", headers=creds)).status,
        (await call(proxy, f"/games/v1/games?universeIds=1&t={q}", headers=creds)).status,
        (
            await call(
                proxy,
                f"/users/v1/users/1?k={q}",
                headers={**creds, "X-Bloxproxy-Key": SECRETS["wrong_access_key"]},
            )
        ).status,
        (
            await call(
                proxy,
                f"/_bloxproxy/admin/purge?t={q}",
                "POST",
                json={"all": True},
                headers={"Authorization": f"Bearer {SECRETS['admin_token']}"},
            )
        ).status,
        (
            await call(
                proxy,
                "/_bloxproxy/admin/purge",
                "POST",
                json={"all": True},
                headers={"Authorization": f"Bearer {SECRETS['wrong_admin_token']}"},
            )
        ).status,
    ]
    assert statuses == [200, 200, 400, 429, 401, 200, 401]
    # the credentials did reach Roblox (they are Roblox's), the access key did not
    sent = fake.requests[-1].headers
    assert fake.requests[-1].service == "games"
    assert SECRETS["cookie"] in sent["cookie"] and sent["x-api-key"] == SECRETS["api_key"]
    assert "x-bloxproxy-key" not in sent

    access = b"\n".join(access_lines(proxy, capsysbinary))
    assert len(access.splitlines()) == len(statuses)
    metrics = (await scrape(proxy, SECRETS["access_key"])).text.encode()
    formatter = JsonFormatter()
    # aiohttp.access: the test server's own access logger (serve runs with access_log=None;
    # test_serve checks the real process's stderr)
    app_log = "\n".join(
        formatter.format(r) for r in caplog.records if not r.name.startswith("aiohttp.access")
    ).encode()
    assert b"429" in app_log  # the pause warning: there is something to look at
    for name, secret in SECRETS.items():
        for where, data in (("access log", access), ("metrics", metrics), ("app log", app_log)):
            assert secret.encode() not in data, f"{name} leaked into the {where}"
    assert b"?" not in access  # no query string at all


# -- X-Request-ID ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "accepted"),
    [
        ("abc-123", True),
        ("req:1@host+x=y.z_A", True),
        ("a" * 128, True),
        ("a" * 129, False),  # too long
        ("has space", False),
        ("<script>", False),
        ("a/b", False),
        ("a;b", False),
        ("", False),  # empty
        ("\u00e9t\u00e9", False),  # non-ASCII
    ],
    ids=[
        "plain",
        "all-allowed-punctuation",
        "128-chars",
        "129-chars",
        "space",
        "angle",
        "slash",
        "semicolon",
        "empty",
        "non-ascii",
    ],
)
async def test_request_id_accepted_or_generated(
    make_proxy: ProxyFactory,
    fake: FakeRoblox,
    capsysbinary: pytest.CaptureFixture[bytes],
    sent: str,
    accepted: bool,
) -> None:
    proxy = await make_proxy(**ACCESS_JSON, **NO_CACHE)
    answer = await call(proxy, "/v1/users/1", headers={"X-Request-ID": sent})
    assert answer.status == 200
    rid = answer.headers["X-Request-ID"]
    if accepted:
        assert rid == sent
    else:
        assert GENERATED_ID.fullmatch(rid), rid
    assert fake.requests[-1].headers["x-request-id"] == rid  # sent upstream
    problem = await call(proxy, "/v1/users/0", headers={"X-Request-ID": sent})
    assert problem.headers["Content-Type"] == "application/problem+json"
    assert problem.json()["request_id"] == problem.headers["X-Request-ID"]
    if accepted:
        assert problem.json()["request_id"] == sent
    records = access_records(proxy, capsysbinary)
    assert [r["request_id"] for r in records] == [rid, problem.headers["X-Request-ID"]]


async def test_generated_request_ids_differ(proxy: Client) -> None:
    ids = {(await call(proxy, "/v1/nope")).headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5 and all(GENERATED_ID.fullmatch(i) for i in ids)


@pytest.mark.parametrize(
    "sent",
    [
        "abc\r\nX-Injected: yes",
        "abc\r",
        "abc\n",
    ],
    ids=["crlf-injection", "cr", "trailing-lf"],
)
async def test_request_id_with_line_breaks_is_replaced(sent: str) -> None:
    # Over the wire aiohttp's parser refuses CR/LF in a header value, so the front handler
    # is driven directly with a request that carries one.
    request = make_mocked_request("GET", "/v1/users/1", headers={"X-Request-ID": sent})

    async def handler(req: web.Request) -> web.StreamResponse:
        return web.Response()

    front = Front(metrics=None, access=None, gate=None, clock=time.time, host_routing=False)
    resp = await front.wrap(handler, gated=False)(request)
    assert GENERATED_ID.fullmatch(resp.headers["X-Request-ID"]), resp.headers["X-Request-ID"]


@pytest.mark.parametrize(
    "header",
    [b"abc\rX-Injected: yes", b"abc\nX-Injected: yes", b"abc\x00def"],
    ids=["cr", "lf", "nul"],
)
async def test_request_id_with_control_characters_over_the_wire(
    proxy: Client, header: bytes
) -> None:
    """Raw bytes on a socket: the parser refuses the request; the refusal is a problem with
    a generated id, never an echo of the client's bytes. (``serve`` installs the problem
    handler on its runner; here it goes on the test server's runner the same way.)"""
    assert proxy.server.port is not None and proxy.server.runner is not None
    use_problem_errors(proxy.server.runner)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(
        b"GET /v1/users/1 HTTP/1.1\r\nHost: x\r\nX-Request-ID: "
        + header
        + b"\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0].split(b" ")[1] == b"400", lines[0]
    ids = [line.split(b": ", 1)[1] for line in lines if line.lower().startswith(b"x-request-id:")]
    assert len(ids) == 1 and GENERATED_ID.fullmatch(ids[0].decode()), ids
    assert orjson.loads(body)["request_id"] == ids[0].decode()
    assert b"abc" not in raw and b"x-injected" not in raw.lower()


# -- Server-Timing ---------------------------------------------------------------------------

TIMING_TOTAL = re.compile(r"(cache;desc=HIT;dur=\d+\.\d\d, )?total;dur=\d+\.\d")
TIMING_BOTH = re.compile(
    r"cache;desc=MISS;dur=\d+\.\d\d, upstream;dur=(\d+\.\d), total;dur=(\d+\.\d)"
)


async def test_server_timing_total_always_upstream_on_a_miss(proxy: Client) -> None:
    miss = await call(proxy, "/v1/users/1")
    hit = await call(proxy, "/v1/users/1")
    missing = await call(proxy, "/v1/nope")
    invalid = await call(proxy, "/v1/users/0")
    health = await call(proxy, "/_bloxproxy/healthz")
    assert miss.headers["X-Cache"] == "MISS"
    both = TIMING_BOTH.fullmatch(miss.headers["Server-Timing"])
    assert both, miss.headers["Server-Timing"]
    assert float(both.group(1)) <= float(both.group(2))
    for answer in (hit, missing, invalid, health):
        assert TIMING_TOTAL.fullmatch(answer.headers["Server-Timing"]), answer.headers


# -- readyz ----------------------------------------------------------------------------------


async def test_readyz_without_redis(proxy: Client) -> None:
    answer = await call(proxy, "/_bloxproxy/readyz")
    assert answer.status == 200
    body = answer.json()
    assert body["status"] == "ok"
    assert body["checks"]["config"] == "ok"
    assert re.fullmatch(r"[1-9]\d* routes", body["checks"]["rules"])
    assert "redis" not in body["checks"]
    assert (await call(proxy, "/_bloxproxy/healthz")).json() == {"status": "ok"}


async def test_readyz_lists_each_scopes_learned_budget(
    make_proxy: ProxyFactory, fake: FakeRoblox
) -> None:
    proxy = await make_proxy(**NO_CACHE, **ONE_ATTEMPT, BLOXPROXY_LIMITS_UPSTREAM_RATE="8")
    assert (await call(proxy, "/_bloxproxy/readyz")).json()["budgets"] == {}
    fake.script("users", "/v1/users/1", [Fault(status=429, retry_after="30")])
    assert (await call(proxy, "/v1/users/1")).status == 429
    assert (await call(proxy, "/games/v1/games?universeIds=1")).status == 200
    budgets = (await call(proxy, "/_bloxproxy/readyz")).json()["budgets"]
    assert budgets == {
        "games": {"rate": 8.0, "ceiling": 8.0, "waiting": 0},
        "users": {"rate": 4.0, "ceiling": 8.0, "hold_seconds": 30.0, "waiting": 0},
    }


async def test_readyz_with_redis(make_proxy: ProxyFactory, redis_url: str) -> None:
    proxy = await make_proxy(BLOXPROXY_CACHE_REDIS_URL=redis_url)
    answer = await call(proxy, "/_bloxproxy/readyz")
    assert (answer.status, answer.json()["status"]) == (200, "ok")
    assert answer.json()["checks"]["redis"] == "ok"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port  # closed again when the with-block ends: nothing listens there


async def test_readyz_degraded_not_dead_when_redis_is_unreachable(
    make_proxy: ProxyFactory,
) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    proxy = await make_proxy(BLOXPROXY_CACHE_REDIS_URL=url, BLOXPROXY_CACHE_REDIS_TIMEOUT="200ms")
    answer = await call(proxy, "/_bloxproxy/readyz")
    assert answer.status == 200
    body = answer.json()
    assert body["status"] == "degraded"
    assert body["checks"]["redis"].startswith("unreachable")
    assert (await call(proxy, "/_bloxproxy/healthz")).status == 200
    assert (await call(proxy, "/v1/users/1")).status == 200  # still serving from L1/upstream


# -- the reserved prefix ---------------------------------------------------------------------


def test_a_rule_cannot_claim_the_reserved_prefix(tmp_path: Any) -> None:
    (tmp_path / "evil.yaml").write_text(
        "service: users\n"
        "routes:\n"
        "  - endpoint: /_bloxproxy/metrics\n"
        "    backend: {path: /v1/users/1}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_rules([tmp_path])
    assert any(
        p.where.line == 3 and "endpoint: expected a clean path" in str(p) and "v<N>" in str(p)
        for p in err.value.problems
    ), err.value.problems


def test_reserved_name_is_not_a_service(tmp_path: Any) -> None:
    (tmp_path / "evil.yaml").write_text(
        "service: _bloxproxy\nroutes:\n  - endpoint: /v1/x\n    backend: {path: /healthz}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_rules([tmp_path])
    assert any("service: expected a service name" in str(p) for p in err.value.problems)
    for env in (
        {"BLOXPROXY_UPSTREAM_ALLOWED_SERVICES": "[users, _bloxproxy]"},
        {"BLOXPROXY_UPSTREAM_SERVICES": "{_bloxproxy: 'http://127.0.0.1:1'}"},
    ):
        with pytest.raises(ConfigError) as err:
            config_mod.load(None, env=env)
        assert "'_bloxproxy' is not a service name" in str(err.value.problems[0])


@pytest.mark.parametrize(
    "path", ["/_bloxproxy/users/v1/users/1", "/_bloxproxy/nothing", "/_bloxproxy/v1/users/1"]
)
async def test_reserved_paths_never_reach_passthrough(
    make_proxy: ProxyFactory, fake: FakeRoblox, path: str
) -> None:
    proxy = await make_proxy(BLOXPROXY_AUTH_KEYS="k")
    answer = await call(proxy, path, headers={"X-Bloxproxy-Key": "k"})
    assert answer.status == 404
    assert answer.json()["code"] == "no_route"
    assert fake.total == 0


async def test_probes_do_not_need_the_access_key_metrics_do(make_proxy: ProxyFactory) -> None:
    """With keys on, healthz and readyz's bare status answer without one (orchestrators'
    probes); metrics need one (tests/test_hostile_front.py has the rest of the rules)."""
    proxy = await make_proxy(BLOXPROXY_AUTH_KEYS="k")
    assert (await call(proxy, "/v1/users/1")).status == 401
    for path in ("healthz", "readyz"):
        assert (await call(proxy, f"/_bloxproxy/{path}")).status == 200, path
    assert (await call(proxy, "/_bloxproxy/metrics")).status == 401
    assert (await scrape(proxy, "k")).get("bloxproxy_requests_total", route="none", status="401")
