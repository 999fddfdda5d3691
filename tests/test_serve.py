"""``bloxproxy serve`` as real processes: hot reload on SIGHUP and ``--watch`` under load,
graceful shutdown on SIGTERM under load, and ``--workers 2`` sharing one port.

Every process starts in its own session and its whole group is killed in a finalizer, so a
failing test leaves nothing behind. Waits are polls with a bound; the only fixed delays are
the fake's latency (to have requests in flight) and short load windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.test_reload import BROKEN, USERS_GET, USERS_V2, rules_text

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses /proc and SO_REUSEPORT")

STARTUP = 20.0  # seconds a process may take to answer its first health check
SECRET_COOKIE = "SECRETCOOKIEserve01"
SECRET_QUERY = "SECRETQUERYserve02"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def messages(self) -> list[str]:
        """The ``message`` of every JSON log line on stderr."""
        out = []
        for line in self.text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    record = orjson.loads(line)
                    if "message" in record:
                        out.append(record["message"])
        return out

    async def exited(self, within: float) -> int:
        deadline = time.monotonic() + within
        while (code := self.popen.poll()) is None:
            assert time.monotonic() < deadline, f"pid {self.pid} still running:\n{self.text()}"
            await asyncio.sleep(0.05)
        return code


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOXPROXY_")}

    def start(*args: str, name: str, **extra_env: str) -> Proc:
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, *args],
                cwd=tmp_path,
                env={**env, **extra_env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed whole below
            )
        proc = Proc(popen, log)
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.popen.wait(timeout=10)


async def wait_http(proc: Proc, url: str, within: float = STARTUP) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while True:
            assert proc.popen.poll() is None, f"exited early:\n{proc.text()}"
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                    if resp.status == 200:
                        return
            assert time.monotonic() < deadline, f"{url} never answered:\n{proc.text()}"
            await asyncio.sleep(0.05)


async def wait_until(
    condition: Callable[[], Any], what: str, within: float, proc: Proc | None = None
) -> None:
    deadline = time.monotonic() + within
    while not await _value(condition()):
        assert time.monotonic() < deadline, f"timed out: {what}\n{proc.text() if proc else ''}"
        await asyncio.sleep(0.05)


async def _value(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


async def status_of(url: str, **kwargs: Any) -> int:
    """One request on a fresh connection."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        async with s.get(url, **kwargs) as resp:
            await resp.read()
            return resp.status


@dataclass
class Load:
    """Client loops sending requests until stopped; every outcome is kept."""

    urls: list[str]
    fresh_connections: bool = False
    results: dict[str, tuple[object, float]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    running: bool = True
    sent: int = 0

    def start(self, loops: int) -> None:
        self.tasks = [asyncio.create_task(self._loop(i)) for i in range(loops)]

    async def _loop(self, n: int) -> None:
        connector = aiohttp.TCPConnector(force_close=self.fresh_connections)
        async with aiohttp.ClientSession(connector=connector) as session:
            i = 0
            while self.running:
                rid = f"load-{n}-{i}"
                url = self.urls[i % len(self.urls)]
                i += 1
                self.sent += 1
                outcome: object
                try:
                    async with session.get(
                        url, headers={"X-Request-ID": rid}, timeout=aiohttp.ClientTimeout(total=15)
                    ) as resp:
                        await resp.read()
                        outcome = resp.status
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    outcome = type(exc).__name__
                    await asyncio.sleep(0.01)
                self.results[rid] = (outcome, time.monotonic())

    async def stop(self) -> None:
        self.running = False
        await asyncio.wait_for(asyncio.gather(*self.tasks), 20)

    def outcomes(self) -> list[object]:
        return [outcome for outcome, _ in self.results.values()]


def write_setup(
    tmp_path: Path, port: int, *, upstream: str = "", server: str = "", extra: str = ""
) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "users.yaml").write_text(rules_text(USERS_GET))
    config = tmp_path / "bloxproxy.yaml"
    text = (
        f"server: {{host: 127.0.0.1, port: {port}{server}}}\n"
        "rules: {paths: [rules]}\n"
        "logging: {format: json, access_log: true}\n" + extra
    )
    if upstream:
        text += f"upstream: {{base_url: '{upstream}'}}\n"
    config.write_text(text)
    return config


async def metric(base: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    async with (
        aiohttp.ClientSession() as session,
        session.get(base + "/_bloxproxy/metrics") as resp,
    ):
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


# -- SIGHUP and --watch ----------------------------------------------------------------------


async def test_sighup_under_load_rejects_a_broken_change_then_applies_a_valid_one(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    port = free_port()
    config = write_setup(tmp_path, port)
    proxy = spawn("-m", "bloxproxy", "serve", "-c", config.name, "--fake-upstream", name="serve")
    base = f"http://127.0.0.1:{port}"
    await wait_http(proxy, base + "/_bloxproxy/healthz")
    load = Load(
        [
            base + "/v1/users/1",
            base + "/v1/users/1000001?x=1",
            base + f"/users/v1/users/1?token={SECRET_QUERY}",
        ]
    )
    load.start(4)
    try:
        await wait_until(lambda: load.sent > 50, "load is running", 10, proxy)

        (tmp_path / "rules" / "users.yaml").write_text(rules_text(USERS_GET, BROKEN))
        os.kill(proxy.pid, signal.SIGHUP)
        await wait_until(
            lambda: any(m.startswith("reload rejected: ") for m in proxy.messages()),
            "the rejection is logged",
            5,
            proxy,
        )
        before = load.sent
        await wait_until(lambda: load.sent > before + 50, "load continues", 10, proxy)
        assert await status_of(base + "/v3/users/1") == 404

        (tmp_path / "rules" / "users.yaml").write_text(rules_text(USERS_GET, USERS_V2))
        os.kill(proxy.pid, signal.SIGHUP)

        async def v2_served() -> bool:
            return await status_of(base + "/v2/users/1") == 200

        await wait_until(v2_served, "the new route is served", 5, proxy)
        before = load.sent
        await wait_until(lambda: load.sent > before + 50, "load continues", 10, proxy)
    finally:
        await load.stop()
    outcomes = load.outcomes()
    assert len(outcomes) > 150
    assert set(outcomes) == {200}, {o for o in outcomes if o != 200}
    assert await metric(base, "bloxproxy_reloads_total", result="error") == 1
    assert await metric(base, "bloxproxy_reloads_total", result="ok") == 1

    # the same file:line messages as `bloxproxy check` (against the broken file)
    (tmp_path / "rules" / "users.yaml").write_text(rules_text(USERS_GET, BROKEN))
    check = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bloxproxy", "check", "-c", config.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 1
    problems = check.stderr.splitlines()[:-1]  # the last line is the count
    assert problems and problems[0].startswith("rules/users.yaml:16: cache.ttl:"), problems
    rejected = [
        m.removeprefix("reload rejected: ")
        for m in proxy.messages()
        if m.startswith("reload rejected: ")
    ]
    assert rejected == problems

    os.kill(proxy.pid, signal.SIGTERM)  # (flushes the access log)
    assert await proxy.exited(10) == 0
    # one JSON access line per request, with the id the client sent; nothing secret
    access = [
        orjson.loads(line)
        for line in proxy.text().splitlines()
        if line.startswith('{"time":') and '"type":"access"' in line
    ]
    ids = [a["request_id"] for a in access if a["request_id"].startswith("load-")]
    assert sorted(ids) == sorted(load.results)
    assert {a["status"] for a in access if a["request_id"] in load.results} == {200}
    assert SECRET_QUERY not in proxy.text()


async def test_credentials_never_reach_the_process_log(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    port = free_port()
    config = write_setup(
        tmp_path,
        port,
        server=", admin_token: SECRETADMINserve04",
        extra="auth: {keys: [SECRETACCESSKEYserve03]}\n",
    )
    proxy = spawn(
        "-m",
        "bloxproxy",
        "serve",
        "-c",
        config.name,
        "--fake-upstream",
        name="serve",
        BLOXPROXY_LOGGING_LEVEL="DEBUG",
    )
    base = f"http://127.0.0.1:{port}"
    await wait_http(proxy, base + "/_bloxproxy/healthz")
    creds = {
        "Cookie": f".ROBLOSECURITY={SECRET_COOKIE}",
        "x-api-key": "SECRETAPIKEYserve05",
        "Authorization": "Bearer SECRETAUTHserve06",
        "X-Bloxproxy-Key": "SECRETACCESSKEYserve03",
    }
    statuses = [
        await status_of(f"{base}/v1/users/1?q={SECRET_QUERY}", headers=creds),
        await status_of(f"{base}/users/v1/users/1?q={SECRET_QUERY}", headers=creds),
        await status_of(
            f"{base}/users/v1/users/1", headers={**creds, "X-Bloxproxy-Key": "SECRETWRONGserve07"}
        ),
    ]
    async with aiohttp.ClientSession() as session:
        for token in ("SECRETADMINserve04", "SECRETWRONGADMINserve08"):
            async with session.post(
                base + "/_bloxproxy/admin/purge",
                json={"all": True},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                statuses.append(resp.status)
        async with session.get(base + "/_bloxproxy/metrics") as resp:
            metrics = await resp.text()
    assert statuses == [200, 200, 401, 200, 401]

    # a header the parser refuses (bare CR): a 400 problem with a generated id, no echo
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /v1/users/1 HTTP/1.1\r\nHost: x\r\nCookie: .ROBLOSECURITY="
        + SECRET_COOKIE.encode()
        + b"\r\nX-Request-ID: xyzzy\rX-Injected: yes\r\n\r\n"
    )
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert head.split(b" ")[1] == b"400"
    assert headers[b"Content-Type"] == b"application/problem+json"
    rid = headers[b"X-Request-ID"].decode()
    assert len(rid) == 16 and int(rid, 16) >= 0
    assert orjson.loads(body)["request_id"] == rid
    # ("xyzzy": not hex, so the generated id can never contain it by chance, as "abc" could)
    assert b"xyzzy" not in raw and b"X-Injected" not in raw and SECRET_COOKIE.encode() not in raw

    os.kill(proxy.pid, signal.SIGTERM)
    assert await proxy.exited(10) == 0
    text = proxy.text()
    assert text.count('"type":"access"') >= 6  # + health polls and the scrape
    for secret in (
        SECRET_COOKIE,
        SECRET_QUERY,
        "SECRETAPIKEYserve05",
        "SECRETAUTHserve06",
        "SECRETACCESSKEYserve03",
        "SECRETWRONGserve07",
        "SECRETADMINserve04",
        "SECRETWRONGADMINserve08",
    ):
        assert secret not in text, secret
        assert secret not in metrics, secret


async def test_watch_reloads_when_a_file_changes(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    port = free_port()
    config = write_setup(tmp_path, port)
    proxy = spawn(
        "-m", "bloxproxy", "serve", "-c", config.name, "--fake-upstream", "--watch", name="serve"
    )
    base = f"http://127.0.0.1:{port}"
    await wait_http(proxy, base + "/_bloxproxy/healthz")
    assert await status_of(base + "/v2/users/1") == 404

    (tmp_path / "rules" / "users.yaml").write_text(rules_text(USERS_GET, BROKEN))
    await wait_until(
        lambda: any(
            m.startswith("reload rejected: rules/users.yaml:16:") for m in proxy.messages()
        ),
        "a broken file is rejected",
        5,
        proxy,
    )
    assert await status_of(base + "/v1/users/1") == 200

    # a file the YAML reader itself refuses: rejected too, and the watcher keeps watching
    (tmp_path / "rules" / "users.yaml").write_text("\x08" + rules_text(USERS_GET))
    await wait_until(
        lambda: any(
            m.startswith("reload rejected: rules/users.yaml:1: invalid YAML: unacceptable")
            for m in proxy.messages()
        ),
        "an unreadable file is rejected",
        5,
        proxy,
    )

    (tmp_path / "rules" / "extra.yaml").write_text(rules_text(USERS_V2))  # a new file
    (tmp_path / "rules" / "users.yaml").write_text(rules_text(USERS_GET))
    started = time.monotonic()

    async def v2_served() -> bool:
        return await status_of(base + "/v2/users/1") == 200

    await wait_until(v2_served, "the new route is served", 5, proxy)
    assert time.monotonic() - started < 3.5  # polled every second
    assert await status_of(base + "/v1/users/1") == 200
    assert await metric(base, "bloxproxy_reloads_total", result="ok") >= 1


# -- SIGTERM ---------------------------------------------------------------------------------


async def upstream_total(fake_base: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(fake_base + "/_fake/stats") as resp:
        total: int = (await resp.json())["total"]
        return total


async def proxy_behind_slow_fake(
    spawn: Callable[..., Proc], tmp_path: Path, latency: str, grace: str
) -> tuple[Proc, str, str]:
    """``serve`` (cache off) in front of the fake as a process of its own, ``latency`` s slow."""
    fake_port, port = free_port(), free_port()
    fake = spawn(
        "-m", "bloxproxy.fake", "--port", str(fake_port), "--latency", latency, name="fake"
    )
    fake_base = f"http://127.0.0.1:{fake_port}"
    config = write_setup(tmp_path, port, upstream=fake_base + "/{service}")
    proxy = spawn(
        "-m",
        "bloxproxy",
        "serve",
        "-c",
        config.name,
        name="serve",
        BLOXPROXY_SERVER_SHUTDOWN_GRACE=grace,
        BLOXPROXY_CACHE_ENABLED="false",
    )
    base = f"http://127.0.0.1:{port}"
    await wait_http(fake, fake_base + "/_fake/stats")
    await wait_http(proxy, base + "/_bloxproxy/healthz")
    return proxy, base, fake_base


async def test_sigterm_under_load_drains_in_flight_requests(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    proxy, base, fake_base = await proxy_behind_slow_fake(spawn, tmp_path, "0.5", "5s")
    port = int(base.rsplit(":", 1)[1])

    load = Load([base + "/v1/users/1", base + "/users/v1/users/2"], fresh_connections=True)
    load.start(8)
    try:

        async def busy() -> bool:  # answers came back, and most loops are waiting again
            return (
                len(load.results) >= 8 and await upstream_total(fake_base) - len(load.results) >= 6
            )

        await wait_until(busy, "requests in flight", 10, proxy)
        sigterm = time.monotonic()
        os.kill(proxy.pid, signal.SIGTERM)

        refused_at = None
        while refused_at is None:  # the listening socket closes at once
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    pass
            except ConnectionRefusedError:
                refused_at = time.monotonic()
            else:
                assert time.monotonic() - sigterm < 2, "still accepting after SIGTERM"
                await asyncio.sleep(0.01)
        pending_when_refused = load.sent - len(load.results)
        assert await proxy.exited(5 + 3) == 0
        exited = time.monotonic()
    finally:
        await load.stop()

    assert pending_when_refused >= 4, "requests were still in flight when accepting stopped"
    assert exited - sigterm < 5, "drained within server.shutdown_grace"
    async with (
        aiohttp.ClientSession() as s,
        s.get(fake_base + "/_fake/requests?limit=10000") as resp,
    ):
        upstream_ids = {r["headers"].get("x-request-id") for r in await resp.json()}
    reached = {rid: v for rid, v in load.results.items() if rid in upstream_ids}
    in_flight = {rid: v for rid, v in reached.items() if v[1] > sigterm}
    assert len(in_flight) >= 4
    assert {outcome for outcome, _ in reached.values()} == {200}, reached
    for rid, (outcome, _) in load.results.items():  # the rest never got an answer at all
        assert rid in reached or isinstance(outcome, str), (rid, outcome)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    messages = proxy.messages()
    assert any(
        m.startswith("shutting down: finishing in-flight requests (up to 5s)") for m in messages
    )
    assert messages[-1] == "stopped"


# -- workers ---------------------------------------------------------------------------------


def listening_pids(port: int, candidates: list[int]) -> set[int]:
    """Which of ``candidates`` hold a socket listening on ``port`` (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in list(f)[1:]:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":
                    inodes.add(cols[9])
    out = set()
    for pid in candidates:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        out.add(pid)
    return out


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                fields = stat.rsplit(")", 1)[1].split()
                if int(fields[1]) == pid and fields[0] != "Z":
                    out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_workers_share_the_port_each_with_its_own_l1(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    port = free_port()
    config = write_setup(tmp_path, port)
    supervisor = spawn(
        "-m",
        "bloxproxy",
        "serve",
        "-c",
        config.name,
        "--fake-upstream",
        "--workers",
        "2",
        name="serve",
    )
    base = f"http://127.0.0.1:{port}"
    await wait_http(supervisor, base + "/_bloxproxy/healthz")
    await wait_until(
        lambda: len(listening_pids(port, children(supervisor.pid))) == 2,
        "two workers listen on the port",
        10,
        supervisor,
    )
    workers = listening_pids(port, children(supervisor.pid))
    assert supervisor.pid not in listening_pids(port, [supervisor.pid])

    caches = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for _ in range(40):  # a new connection each time: the kernel spreads them
            async with s.get(base + "/v1/users/1") as resp:
                assert resp.status == 200
                caches.append(resp.headers["X-Cache"])
    assert caches.count("MISS") == 2, caches  # one per worker's L1, no shared cache
    assert set(caches) == {"MISS", "HIT"}

    # SIGHUP to the supervisor reloads every worker
    (tmp_path / "rules" / "users.yaml").write_text(rules_text(USERS_GET, USERS_V2))
    os.kill(supervisor.pid, signal.SIGHUP)
    await wait_until(
        lambda: sum(m.startswith("reloaded: ") for m in supervisor.messages()) == 2,
        "both workers reloaded",
        5,
        supervisor,
    )
    for _ in range(10):
        assert await status_of(base + "/v2/users/1") == 200

    os.kill(supervisor.pid, signal.SIGTERM)
    assert await supervisor.exited(15) == 0
    assert not any(alive(pid) for pid in workers)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


async def scrape_text(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One scrape on a fresh connection (the kernel picks the worker), as samples."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        async with s.get(url) as resp:
            assert resp.status == 200
            text = await resp.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_one_metrics_view_over_the_workers(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """Whichever worker a scrape reaches, it answers the sum over both (bloxproxy.siblings):
    the requests sent, each worker's own numbers adding up to it, gauges as documented."""
    from bloxproxy.metricsview import Family
    from bloxproxy.siblings import fetch

    port = free_port()
    config = write_setup(tmp_path, port)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    supervisor = spawn(
        "-m", "bloxproxy", "serve", "-c", config.name, "--fake-upstream", "--workers", "2",
        name="serve", TMPDIR=str(tmp),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    await wait_http(supervisor, base + "/_bloxproxy/healthz")
    (directory,) = list(tmp.iterdir())  # the supervisor's, private
    assert directory.stat().st_mode & 0o777 == 0o700
    await wait_until(
        lambda: sorted(p.name for p in directory.iterdir()) == ["worker-0.sock", "worker-1.sock"],
        "both workers serve their snapshots",
        10,
        supervisor,
    )
    sent, caches = 40, []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for _ in range(sent):  # a new connection each time: the kernel spreads them
            async with s.get(base + "/v1/users/1") as resp:
                assert resp.status == 200
                caches.append(resp.headers["X-Cache"])
    assert caches.count("MISS") == 2, caches  # both workers answered some

    users = ("bloxproxy_requests_total", (("route", "users.get"), ("status", "200")))
    for _ in range(8):
        view = await scrape_text(base + "/_bloxproxy/metrics")
        assert view[users] == sent
        assert view[("bloxproxy_workers", (("state", "answered"),))] == 2
        assert view[("bloxproxy_workers", (("state", "missing"),))] == 0
        tasks = {k[1] for k in view if k[0] == "bloxproxy_asyncio_tasks"}
        assert tasks == {(("worker", "0"),), (("worker", "1"),)}

    def value(fams: list[Family], name: str) -> float:
        return sum(v for f in fams for n, labels, v in f.samples if (n, labels) == (name, ()))

    own = [await fetch(str(directory / f"worker-{i}.sock")) for i in (0, 1)]
    assert own[0] is not None and own[1] is not None
    counts = [sum(v for f in fams for n, ls, v in f.samples if (n, ls) == users) for fams in own]
    assert sum(counts) == sent and min(counts) > 0, counts
    for name in ("bloxproxy_cache_l1_entries", "bloxproxy_cache_l1_bytes"):
        assert view[(name, ())] == value(own[0], name) + value(own[1], name) > 0, name
    assert (
        view[("bloxproxy_cache_results_total", (("result", "MISS"), ("route", "users.get")))] == 2
    )

    os.kill(supervisor.pid, signal.SIGTERM)
    assert await supervisor.exited(15) == 0
    assert list(tmp.iterdir()) == [], "the sockets' directory is removed"


async def test_sigterm_cuts_requests_that_outlive_the_grace(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    proxy, base, fake_base = await proxy_behind_slow_fake(spawn, tmp_path, "3", "1s")
    load = Load([base + "/v1/users/1"], fresh_connections=True)
    load.start(4)
    try:

        async def all_upstream() -> bool:
            return await upstream_total(fake_base) >= 4

        await wait_until(all_upstream, "four requests upstream", 10, proxy)
        sigterm = time.monotonic()
        os.kill(proxy.pid, signal.SIGTERM)
        assert await proxy.exited(5) == 0
        took = time.monotonic() - sigterm
    finally:
        await load.stop()
    assert 0.9 < took < 1.6, f"exited {took:.2f}s after SIGTERM with a 1s grace"
    outcomes = load.outcomes()
    assert len(outcomes) >= 4 and 200 not in outcomes, outcomes  # cut, none answered late
    assert not any(isinstance(o, int) and o >= 500 for o in outcomes), outcomes
    # ... and each cut request still has its access line, as 499
    cut = {
        a["request_id"]: a["status"]
        for a in map(orjson.loads, proxy.text().splitlines())
        if a.get("type") == "access" and a["path"] == "/v1/users/1"
    }
    assert len(cut) >= 4 and set(cut.values()) == {499}, cut


async def test_workers_that_cannot_start_stop_the_supervisor(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    with socket.socket() as taken:  # a listener without SO_REUSEPORT: the workers' bind fails
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_setup(tmp_path, port)
        supervisor = spawn(
            "-m",
            "bloxproxy",
            "serve",
            "-c",
            config.name,
            "--fake-upstream",
            "--workers",
            "2",
            name="serve",
        )
        assert await supervisor.exited(20) == 1
    assert any("times in a row; stopping" in m for m in supervisor.messages()), supervisor.text()
    assert supervisor.text().count("address already in use") >= 3
