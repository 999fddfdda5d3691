"""The container and deployment files, tested without a Docker engine and without network.

(a) ``Dockerfile`` and ``.dockerignore`` are parsed: every ``COPY`` source exists and is in
    the build context, the stages, the non-root ``USER``, ``EXPOSE``, ``ENV``, the entrypoint
    and the ``HEALTHCHECK`` agree with the code (the default port, the real health route, the
    console script).

(b) The entrypoint runs in a fresh virtual environment built the way the Dockerfile builds
    the image, offline. The Dockerfile runs ``pip wheel .`` (which downloads setuptools for
    the isolated build and the dependency wheels from PyPI), then installs ``bloxproxy`` from
    those wheels alone (``--no-index``) into a pip-less venv. Here, once per session:

    1. the build context is laid out from the builder stage's ``COPY`` lines, filtered by
       ``.dockerignore``, in a temporary directory (a file the image needs but the Dockerfile
       does not copy makes the build fail here too);
    2. bloxproxy's wheel is built from it with ``pip wheel --no-deps --no-build-isolation
       --no-index``, by the setuptools of the environment running the tests (the isolated
       build would download one). pyproject.toml needs setuptools >= 77 (its ``license`` is
       an SPDX string): with an older one the test is skipped, saying so;
    3. the dependency wheels cannot be downloaded, and pip cannot turn installed packages
       back into wheels, so each distribution the built wheel's ``Requires-Dist`` needs
       (followed transitively, markers evaluated) is re-packed from its installed files
       (its RECORD) into a wheel with the same name, version and tag. The dependency set comes
       from the new wheel's metadata, never from the test environment, so a runtime import
       that pyproject.toml does not declare fails here as it would in the image;
    4. ``python -m venv --without-pip`` makes the venv, with no system site-packages, and
       ``pip --python VENV/bin/python install --no-index --find-links WHEELS bloxproxy``
       installs into it exactly as the Dockerfile does; only the declared runtime
       distributions end up in it (no dev extras, no pip, no setuptools).

    The Dockerfile's ``ENV`` is then applied (with ``/opt/bloxproxy`` and ``/etc/bloxproxy``
    mapped to temporary directories, the latter filled from the runtime stage's ``COPY``
    lines) and the ``ENTRYPOINT`` runs from an empty working directory: ``check`` passes on
    the packaged rules (not the repository's ``rules/``), the rules mount point adds to them
    when ``BLOXPROXY_RULES_PATHS`` names it, and ``serve`` answers the health route, a
    clean route (``--fake-upstream``), the ``HEALTHCHECK`` command, and stops cleanly on
    SIGTERM. The whole module takes a few seconds.

(c) ``docker-compose.yml``, ``deploy/nginx.conf`` and ``deploy/kubernetes/*.yaml`` parse;
    every ``BLOXPROXY_*`` variable they set is a real config key; ports, probes, mounts and
    the front's upstream agree with the defaults and the Dockerfile; and ``bloxproxy check``
    passes with the environment (and, for Kubernetes, the ConfigMap's config and the rules
    mount) each of them gives the container. ``check`` only validates: Redis is not contacted.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from bloxproxy import cli, redis_url
from bloxproxy import config as config_mod
from bloxproxy.app import RESERVED_PREFIX, create_app
from bloxproxy.config import Config
from bloxproxy.files import connection_cap
from bloxproxy.rules import load_rules, rule_files
from bloxproxy.schema import duration
from bloxproxy.serve import open_listener

ROOT = Path(__file__).resolve().parent.parent
HEALTH_PATH = RESERVED_PREFIX + "healthz"
IMAGE_VENV = "/opt/bloxproxy"  # where the Dockerfile puts the venv
IMAGE_ETC = "/etc/bloxproxy"  # the documented config and rules mount points
# BLOXPROXY_* variables the code reads that are not config keys.
NOT_KEYS = {"BLOXPROXY_CONFIG"}
DEFAULTS = Config()
ACCESS_KEY = "deploy-test-key"


# --- parsing the Dockerfile -----------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name or self.base}"
        return found[-1]


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions per stage; comment lines (also inside continuations) are dropped."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.strip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.strip().partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif keyword != "ARG" or stages:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append(Instruction(keyword, args))
    return stages


def split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    """``--from=builder --chown=x a b c`` -> flags, arguments (JSON or shell words)."""
    words = shlex.split(args)
    flags: dict[str, str] = {}
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    rest = " ".join(words)
    if rest.startswith("["):
        return flags, list(json.loads(args[args.index("[") :]))
    return flags, words


def exec_form(args: str) -> list[str]:
    assert args.startswith("["), f"use the exec (JSON) form: {args}"
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def env_of(stage: Stage, base_path: str = "/usr/local/bin:/usr/bin:/bin") -> dict[str, str]:
    """The stage's ENV, in order, with ``$VAR``/``${VAR}`` expanded."""
    env = {"PATH": base_path}

    def expand(value: str) -> str:
        return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m[1], ""), value)

    for instr in stage.all("ENV"):
        words = shlex.split(instr.args)
        if "=" not in words[0]:  # legacy form: ENV KEY value with spaces
            env[words[0]] = expand(" ".join(words[1:]))
            continue
        for word in words:
            key, _, value = word.partition("=")
            env[key] = expand(value)
    return env


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


@pytest.fixture(scope="module")
def image_env(final: Stage) -> dict[str, str]:
    return env_of(final)


def healthcheck_argv(final: Stage) -> list[str]:
    instr = final.last("HEALTHCHECK")
    options, _, command = instr.args.partition("CMD")
    assert command, "HEALTHCHECK without CMD"
    for option in options.split():
        assert re.fullmatch(
            r"--(interval|timeout|start-period|start-interval|retries)=\S+", option
        ), option
    return exec_form(command.strip())


def image_uid(final: Stage) -> int:
    user = final.last("USER").args.split(":")[0]
    assert user.isdigit(), "USER should be numeric (Kubernetes runAsNonRoot can verify it)"
    return int(user)


# --- the build context (.dockerignore) ------------------------------------------------------


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        rx = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pattern[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pattern[i] == "?":
                rx, i = rx + "[^/]", i + 1
            else:
                rx, i = rx + re.escape(pattern[i]), i + 1
        rules.append((keep, re.compile(rx)))
    return rules


def in_context(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = PurePosixPath(rel).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for keep, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            included = keep
    return included


def copy_into(src: Path, dest: Path, rules: list[tuple[bool, re.Pattern[str]]]) -> int:
    """Copy ``src`` (a repo file or directory) to ``dest`` as ``COPY`` would; file count."""
    count = 0
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    for f in files:
        rel = f.relative_to(ROOT).as_posix()
        if not in_context(rel, rules):
            continue
        target = dest if src.is_file() else dest / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
        count += 1
    return count


def replicate_copies(stage: Stage, fs_root: Path) -> Path:
    """Apply the stage's ``COPY`` lines (not the ``--from`` ones) from the repository to a
    directory standing in for the stage's file system; the stage's final WORKDIR there."""
    rules = dockerignore_rules()
    cwd = PurePosixPath("/")
    for instr in stage.instructions:
        if instr.keyword == "WORKDIR":
            cwd = cwd / instr.args
        if instr.keyword != "COPY":
            continue
        flags, words = split_flags(instr.args)
        if "from" in flags:
            continue
        *sources, dest = words
        for source in sources:
            src = ROOT / source
            target = fs_root / str(cwd / dest).lstrip("/")
            if dest.endswith("/") and src.is_file():
                target = target / src.name
            assert copy_into(src, target, rules), f"COPY {source}: nothing in the build context"
    return fs_root / str(cwd).lstrip("/")


# --- (a) the Dockerfile ---------------------------------------------------------------------


def test_dockerfile_stages_user_and_entrypoint(stages: list[Stage], final: Stage) -> None:
    assert len(stages) >= 2, "multi-stage: a builder and a runtime stage"
    builder = stages[0]
    assert builder.name, "the builder stage is named (the runtime stage takes files from it)"
    for stage in stages:
        # an exact tag: Python's patch release and Debian's release (a digest may follow)
        assert re.fullmatch(PINNED_PYTHON, stage.base), stage.base
    assert len({stage.base for stage in stages}) == 1, "one base image for both stages"
    run_text = " ".join(i.args for i in final.all("RUN"))
    assert not re.search(r"\b(gcc|g\+\+|build-essential|make)\b", run_text), "no compilers"
    assert "[dev]" not in (ROOT / "Dockerfile").read_text(encoding="utf-8"), "no dev extras"
    builder_runs = [i.args for i in builder.all("RUN")]
    assert any("pip wheel" in run for run in builder_runs)
    # the runtime stage installs from the builder's wheels only, into /opt/bloxproxy
    assert "--no-index" in run_text and IMAGE_VENV in run_text
    for instr in final.all("RUN"):
        flags, _ = split_flags(instr.args)
        if "mount" in flags:
            mount = dict(kv.partition("=")[::2] for kv in flags["mount"].split(","))
            assert mount.get("from") in {s.name for s in stages[:-1]}, mount

    assert image_uid(final) != 0, "the image runs as a non-root user"
    assert "useradd" in run_text and f"--uid {image_uid(final)}" in run_text
    assert final.all("WORKDIR"), "WORKDIR is set"

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    entrypoint = exec_form(final.last("ENTRYPOINT").args)
    assert entrypoint == ["bloxproxy"]
    assert entrypoint[0] in pyproject["project"]["scripts"]
    cmd = exec_form(final.last("CMD").args)
    assert cmd == ["serve"]
    cli.build_parser().parse_args([*entrypoint[1:], *cmd])  # a valid command line


def test_dockerfile_expose_env_and_config(final: Stage, image_env: dict[str, str]) -> None:
    exposed = [int(p.split("/")[0]) for i in final.all("EXPOSE") for p in i.args.split()]
    assert exposed == [DEFAULTS.server.port]
    assert image_env["BLOXPROXY_SERVER_HOST"] == "0.0.0.0", "listen on all interfaces"
    assert "BLOXPROXY_SERVER_PORT" not in image_env, "the default port is the config's"
    assert image_env["PATH"].split(":")[0] == f"{IMAGE_VENV}/bin"
    known = set(config_mod._env_paths())
    for name in image_env:
        if name.startswith("BLOXPROXY_"):
            assert name in known | NOT_KEYS, f"ENV {name} is not a config key"
    # BLOXPROXY_CONFIG names the file the runtime stage copies config.yaml to
    copies = [split_flags(i.args)[1] for i in final.all("COPY")]
    assert ["config.yaml", image_env["BLOXPROXY_CONFIG"]] in copies
    assert PurePosixPath(image_env["BLOXPROXY_CONFIG"]).parent == PurePosixPath(IMAGE_ETC)


def test_dockerfile_copy_sources_are_in_the_build_context(stages: list[Stage]) -> None:
    rules = dockerignore_rules()
    names: set[str] = set()
    for stage in stages:
        for instr in stage.all("COPY") + stage.all("ADD"):
            assert instr.keyword == "COPY", "ADD fetches URLs and unpacks archives: use COPY"
            flags, words = split_flags(instr.args)
            assert len(words) >= 2, instr.args
            if "from" in flags:
                assert flags["from"] in names, f"COPY --from={flags['from']}: no such stage"
                continue
            for source in words[:-1]:
                src = ROOT / source
                assert src.exists(), f"COPY {source}: not in the repository"
                assert in_context(source, rules), f"COPY {source}: excluded by .dockerignore"
        if stage.name:
            names.add(stage.name)
    # the context leaves out what must not be in an image
    for rel in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_deploy.py",
        "bloxproxy/__pycache__/cli.cpython-311.pyc",
        "bloxproxy.egg-info/PKG-INFO",
    ):
        assert not in_context(rel, rules), rel
    assert in_context("bloxproxy/fake/app.py", rules)
    assert in_context("rules/users.yaml", rules)


def test_dockerfile_healthcheck_asks_the_health_route(final: Stage) -> None:
    argv = healthcheck_argv(final)
    assert argv[:2] == ["python", "-c"], "no curl in a slim image: the venv's Python"
    code = argv[2]
    assert f"/{HEALTH_PATH.lstrip('/')}'" in code
    assert "http://127.0.0.1:" in code and "BLOXPROXY_SERVER_PORT" in code
    assert f"'{DEFAULTS.server.port}'" in code, "the fallback port is the default port"
    compile(code, "<HEALTHCHECK>", "exec")
    app = create_app(DEFAULTS, rules=load_rules(DEFAULTS.rule_paths()))
    assert HEALTH_PATH in {r.canonical for r in app.router.resources()}


PINNED_PYTHON = r"python:3\.11\.\d+-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?"


def lock_entries() -> dict[str, tuple[str, list[str], set[str]]]:
    """requirements.lock as {name: (version, hashes, the packages it is pulled in by)}."""
    entries: dict[str, tuple[str, list[str], set[str]]] = {}
    name = ""
    via_list = False
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        pin = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+) \\", line)
        if pin:
            name = canonicalize_name(pin[1])
            entries[name] = (pin[2], [], set())
            via_list = False
        elif m := re.fullmatch(r"    --hash=sha256:([0-9a-f]{64})( \\)?", line):
            entries[name][1].append(m[1])
        elif m := re.fullmatch(r"    # via ?(.*)", line):
            via_list = not m[1]
            if m[1]:
                entries[name][2].add(m[1])
        elif via_list and (m := re.fullmatch(r"    #   (.+)", line)):
            entries[name][2].add(m[1])
        else:
            assert not line.strip() or line.startswith("#"), f"requirements.lock: {line!r}"
    return entries


def test_requirements_lock_pins_every_runtime_dependency_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    entries = lock_entries()
    ours = "bloxproxy (pyproject.toml)"
    regenerate = "regenerate requirements.lock with scripts/lock"
    for text in [*project["dependencies"], *project["optional-dependencies"]["uvloop"]]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in entries, f"{req.name} is not in requirements.lock: {regenerate}"
        version, _, via = entries[name]
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} {req}"
        assert ours in via, f"{name}: not pulled in by bloxproxy in the lock: {regenerate}"
    dev_only = (
        {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["dev"]}
        - {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
        - {"uvloop"}
    )
    for name, (version, hashes, via) in entries.items():
        assert hashes, f"{name}=={version}: no hash"
        assert name not in dev_only, f"{name}: a dev tool in the runtime lock"
        # every pin is needed: by bloxproxy, or by another pin (the closure, nothing more)
        assert via and all(v == ours or canonicalize_name(v) in entries for v in via), (name, via)
    header = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    assert "autogenerated by pip-compile with Python 3.11" in header, "the image's Python"
    assert "#    scripts/lock\n" in header


def test_dockerfile_installs_the_locked_dependencies(stages: list[Stage], final: Stage) -> None:
    builder = stages[0]
    copies = [split_flags(i.args)[1] for i in builder.all("COPY")]
    assert ["requirements.lock", "./"] in copies
    (locked,) = [i.args for i in builder.all("RUN") if "requirements.lock" in i.args]
    words = shlex.split(locked)
    assert words[:3] == ["pip", "wheel", "--wheel-dir"] and words[3] == "/wheels"
    assert {"--require-hashes", "--only-binary=:all:"} <= set(words)
    assert words[words.index("-r") + 1] == "requirements.lock"
    (own,) = [i.args for i in builder.all("RUN") if i.args != locked]
    assert shlex.split(own) == ["pip", "wheel", "--wheel-dir", "/wheels", "--no-deps", "."]
    # the runtime stage installs with no index: from those wheels, or the build fails
    run_text = " ".join(i.args for i in final.all("RUN"))
    assert "--no-index" in run_text and "--find-links /wheels" in run_text
    assert "source=/wheels" in run_text


# --- (b) the entrypoint in a fresh venv built like the image --------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """An environment without this venv, pip's configuration or the developer's BLOXPROXY_*."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PIP_", "PYTHON", "BLOXPROXY_")) and k != "VIRTUAL_ENV"
    }
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.update(extra)
    return env


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("env", clean_env())
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False, **kwargs)
    assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stdout}\n{done.stderr}"
    return done


def runtime_closure(requires: list[str]) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions ``requires`` needs, transitively, markers evaluated."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = [(Requirement(r), "") for r in requires]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        key = canonicalize_name(req.name)
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"runtime dependency {req} is not installed here (scripts/bootstrap)")
        assert req.specifier.contains(dist.version, prereleases=True), (req, dist.version)
        if key in found:
            continue
        found[key] = dist
        for extra_name in ("", *req.extras):
            todo.extend((Requirement(r), extra_name) for r in dist.requires or [])
    return found


def repack(dist: importlib.metadata.Distribution, out: Path) -> Path:
    """Re-pack an installed distribution into a wheel from the files its RECORD lists."""
    files = dist.files
    assert files, f"{dist.metadata['Name']}: no RECORD"
    wheel_meta = dist.read_text("WHEEL") or ""
    tags = [
        line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if line.startswith("Tag:")
    ]
    assert tags, f"{dist.metadata['Name']}: no wheel tag"
    info_dir = next(f.parts[0] for f in files if f.name == "METADATA")
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    path = out / f"{name}-{dist.version}-{tags[0]}.whl"
    record: list[str] = []
    skip = {f"{info_dir}/{n}" for n in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as whl:
        for f in files:
            rel = f.as_posix()
            if ".." in f.parts or "__pycache__" in f.parts or rel in skip:
                continue
            data = Path(str(dist.locate_file(f))).read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{rel},sha256={digest.decode()},{len(data)}")
            whl.writestr(rel, data)
        record.append(f"{info_dir}/RECORD,,")
        whl.writestr(f"{info_dir}/RECORD", "\n".join(record) + "\n")
    return path


@dataclass
class Image:
    """A fresh venv standing in for /opt/bloxproxy and a directory for /etc/bloxproxy."""

    venv: Path
    etc: Path
    wheel: Path
    runtime_dists: set[str]
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str]

    def host_path(self, value: str) -> str:
        return value.replace(IMAGE_VENV, str(self.venv)).replace(IMAGE_ETC, str(self.etc))

    def environ(self, **overrides: str) -> dict[str, str]:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.etc), "LANG": "C.UTF-8"}
        env.update({k: self.host_path(v) for k, v in self.env.items()})
        env.update(overrides)
        return env


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    try:
        setuptools_version = Version(importlib.metadata.version("setuptools"))
    except importlib.metadata.PackageNotFoundError:
        setuptools_version = Version("0")
    if setuptools_version < Version("77"):
        pytest.skip(
            f"building the wheel offline needs setuptools>=77 in this environment "
            f"(pyproject.toml's SPDX license), found {setuptools_version}"
        )
    tmp = tmp_path_factory.mktemp("image")
    stages = parse_dockerfile((ROOT / "Dockerfile").read_text(encoding="utf-8"))
    builder, final = stages[0], stages[-1]

    wheels = tmp / "wheels"
    wheels.mkdir()
    context = replicate_copies(builder, tmp / "builder")  # WORKDIR, where `pip wheel .` runs
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--isolated",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(wheels),
            str(context),
        ],
        cwd=tmp,
    )
    (wheel,) = wheels.glob("bloxproxy-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        meta_name = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = HeaderParser().parsestr(whl.read(meta_name).decode())
    closure = runtime_closure(metadata.get_all("Requires-Dist") or [])  # extras left out
    for dist in closure.values():
        repack(dist, wheels)

    venv = tmp / "opt-bloxproxy"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--isolated",
            "--no-index",
            "--no-cache-dir",
            "--find-links",
            str(wheels),
            "bloxproxy",
        ]
    )

    replicate_copies(final, tmp / "runtime")
    etc = tmp / "runtime" / IMAGE_ETC.lstrip("/")
    (etc / "rules").mkdir(exist_ok=True)  # the image's empty mount point (RUN mkdir)
    return Image(
        venv=venv,
        etc=etc,
        wheel=wheel,
        runtime_dists=set(closure),
        env=env_of(final),
        entrypoint=exec_form(final.last("ENTRYPOINT").args),
        cmd=exec_form(final.last("CMD").args),
        healthcheck=healthcheck_argv(final),
    )


def test_wheel_ships_the_rules_and_nothing_else(image: Image) -> None:
    with zipfile.ZipFile(image.wheel) as whl:
        names = set(whl.namelist())
    for rule in rule_files([ROOT / "rules"]):
        assert f"bloxproxy/shipped_rules/{rule.name}" in names, f"{rule.name} not in the wheel"
    tables = sorted((ROOT / "rules").glob("*.limits.json"))  # Open Cloud limits beside rules
    assert tables
    for table in tables:
        assert f"bloxproxy/shipped_rules/{table.name}" in names, f"{table.name} not in the wheel"
    assert "bloxproxy/py.typed" in names
    assert {n.split("/")[0] for n in names} == {"bloxproxy", wheel_info_dir(names)}


def wheel_info_dir(names: set[str]) -> str:
    return next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))


def test_fresh_venv_holds_only_the_runtime_dependencies(image: Image) -> None:
    site = next((image.venv / "lib").glob("python3.*/site-packages"))
    installed = {canonicalize_name(p.name.split("-")[0]) for p in site.glob("*.dist-info")}
    assert installed == image.runtime_dists | {"bloxproxy"}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    dev = {
        canonicalize_name(Requirement(r).name)
        for r in pyproject["project"]["optional-dependencies"]["dev"]
    }
    assert not installed & (dev | {"pip", "setuptools", "wheel"})
    assert "include-system-site-packages = false" in (image.venv / "pyvenv.cfg").read_text()
    assert (image.venv / "bin" / image.entrypoint[0]).is_file()


def test_check_in_the_image_uses_the_packaged_rules(image: Image, tmp_path: Path) -> None:
    env = image.environ()
    done = run([*image.entrypoint, "check"], env=env, cwd=tmp_path)
    shipped = load_rules([ROOT / "rules"])
    config_path = env["BLOXPROXY_CONFIG"]
    assert Path(config_path) == image.etc / "config.yaml"
    assert done.stdout == (
        f"ok: config {config_path}, {len(shipped.routes)} routes from "
        f"{len(shipped.files)} rule file(s)\n"
    )
    where = run(
        ["python", "-c", "from bloxproxy.config import load; print(*load(None).rule_paths())"],
        env=env,
        cwd=tmp_path,
    ).stdout.strip()
    assert Path(where).is_relative_to(image.venv), "not the repository's rules/"
    assert Path(where).name == "shipped_rules"


# A rule file of one's own, as the mount point or the sidecar's ConfigMap would hold it.
MY_RULES = """\
service: thumbnails
routes:
  - id: mine.group_icons
    endpoint: /v1/mine/group-icons
    summary: Icons of groups
    query:
      ids: {type: int_list, required: true, min: 1, max_items: 100}
    backend:
      path: /v1/groups/icons
      query: {groupIds: "{ids}"}
    response: {pick: data}
"""


def test_rules_mount_point_adds_to_the_packaged_rules(image: Image, tmp_path: Path) -> None:
    mount = image.etc / "rules"  # the image's /etc/bloxproxy/rules
    env = image.environ(BLOXPROXY_RULES_PATHS=image.host_path(f"{IMAGE_ETC}/rules"))
    assert Path(env["BLOXPROXY_RULES_PATHS"]) == mount and mount.is_dir()
    shipped = load_rules([ROOT / "rules"])
    counts = f", {len(shipped.routes)} routes from {len(shipped.files)} rule file(s)"
    assert counts in run([*image.entrypoint, "check"], env=env, cwd=tmp_path).stdout  # empty
    (mount / "mine.yaml").write_text(MY_RULES, encoding="utf-8")
    shutil.copy(ROOT / "rules" / "presence.yaml", mount)  # a copy of a packaged file
    try:
        done = run([*image.entrypoint, "check"], env=env, cwd=tmp_path)
        alone = subprocess.run(
            [*image.entrypoint, "check"],
            env={**env, "BLOXPROXY_RULES_SHIPPED": "false"},
            cwd=tmp_path,
            text=True,
            capture_output=True,
            timeout=60,
            check=False,
        )
    finally:
        (mount / "mine.yaml").unlink()
        (mount / "presence.yaml").unlink()
    notice, ok = done.stdout.splitlines()
    # the copy's route replaces the packaged one, in the venv's bloxproxy/shipped_rules
    assert re.fullmatch(
        rf"{re.escape(str(mount))}/presence\.yaml:5: overrides shipped rule presence\.batch "
        r"\(/\S+/site-packages/bloxproxy/shipped_rules/presence\.yaml:5\)",
        notice,
    ), notice
    assert ok.endswith(
        f", {len(shipped.routes) + 1} routes from {len(shipped.files) + 2} rule file(s)"
    )
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.endswith(", 2 routes from 2 rule file(s)\n")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=5
        ) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def served(image: Image, tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """The image's command (plus --fake-upstream: no network) on a free loopback port, with
    an access key required, as in the Kubernetes example (probes need none)."""
    port = free_port()
    # 127.0.0.1 rather than the image's 0.0.0.0: nothing here listens beyond loopback.
    env = image.environ(
        BLOXPROXY_SERVER_HOST="127.0.0.1",
        BLOXPROXY_SERVER_PORT=str(port),
        BLOXPROXY_AUTH_KEYS=ACCESS_KEY,
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*image.entrypoint, *image.cmd, "--fake-upstream"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"serve exited: {log.read_text()}"
            try:
                if get(f"http://127.0.0.1:{port}{HEALTH_PATH}")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no health answer: {log.read_text()}"
            time.sleep(0.1)
        yield port, env
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_answers_and_healthcheck_passes(
    image: Image, served: tuple[int, dict[str, str]], tmp_path: Path
) -> None:
    port, env = served
    status, body = get(f"http://127.0.0.1:{port}{HEALTH_PATH}")
    assert status == 200 and json.loads(body)["status"] == "ok"
    users = f"http://127.0.0.1:{port}/v1/users/156"
    assert get(users)[0] == 401, "the access key is required"
    status, body = get(users, {DEFAULTS.auth.header: ACCESS_KEY})
    assert status == 200, body
    assert json.loads(body)["name"] == "builderman"
    # the HEALTHCHECK command, run as Docker runs it (exec form, the image's environment)
    assert subprocess.run(image.healthcheck, env=env, cwd=tmp_path, timeout=30).returncode == 0
    dead = {**env, "BLOXPROXY_SERVER_PORT": str(free_port())}
    unhealthy = subprocess.run(
        image.healthcheck, env=dead, cwd=tmp_path, timeout=30, capture_output=True
    )
    assert unhealthy.returncode == 1, "1 is unhealthy to Docker (2 is reserved)"


def test_the_image_refuses_to_serve_open_without_keys(image: Image, tmp_path: Path) -> None:
    """The image's own environment (0.0.0.0, no keys): ``serve`` stops before it listens,
    with exit code 2 and one log line naming the fix; keys, or allow_open, let it start."""
    port = free_port()
    env = image.environ(BLOXPROXY_SERVER_PORT=str(port))
    assert env["BLOXPROXY_SERVER_HOST"] == "0.0.0.0" and "BLOXPROXY_AUTH_KEYS" not in env
    done = subprocess.run(
        [*image.entrypoint, *image.cmd],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    record = json.loads(line)
    assert record["level"] == "ERROR" and record["event"] == "refused_open"
    assert record["message"].startswith(f"refusing to listen on 0.0.0.0:{port} with no access")
    for fix in (
        "BLOXPROXY_AUTH_KEYS=",
        "BLOXPROXY_SERVER_HOST",
        "BLOXPROXY_SERVER_ALLOW_OPEN=true",
    ):
        assert fix in record["message"]
    check = run([*image.entrypoint, "check"], env=env, cwd=tmp_path)
    assert "warning: serve will refuse to listen on 0.0.0.0:" in check.stderr


# --- (c) docker-compose.yml and Kubernetes --------------------------------------------------


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}``/``${VAR-default}`` give the default here; ``${VAR}`` and
    ``${VAR:?message}`` a stand-in value."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m[1], m[2] or "", m[3] or ""
        return arg if op.endswith("-") else f"test-{name.lower()}"

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}", one, value).replace(
        "$$", "$"
    )


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.partition("=")[::2] for item in raw)
    return {str(k): interpolate(str(v)) for k, v in raw.items()}


def assert_known_env(names: list[str], where: str) -> None:
    known = set(config_mod._env_paths())
    for name in names:
        if name.startswith("BLOXPROXY_"):
            assert name in known | NOT_KEYS, f"{where}: {name} is not a config key"


def effective_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str]
) -> Config:
    """Run ``bloxproxy check`` in-process with exactly these BLOXPROXY_* variables."""
    for name in list(os.environ):
        if name.startswith("BLOXPROXY_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("BLOXPROXY_"):
            monkeypatch.setenv(name, value)
    code = cli.main(["check"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[-1].startswith("ok: config ")  # after any override notices
    return config_mod.load(env.get("BLOXPROXY_CONFIG"))


@pytest.fixture
def etc_dir(tmp_path: Path, final: Stage) -> Path:
    """/etc/bloxproxy as the image has it, under tmp_path."""
    replicate_copies(final, tmp_path / "root")
    etc = tmp_path / "root" / IMAGE_ETC.lstrip("/")
    (etc / "rules").mkdir(exist_ok=True)
    return etc


def mapped(env: dict[str, str], etc: Path) -> dict[str, str]:
    return {k: v.replace(IMAGE_ETC, str(etc)) for k, v in env.items()}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def published(service: dict[str, Any]) -> list[tuple[int, int]]:
    out = []
    for port in service.get("ports") or []:
        host, _, container = str(port).rpartition(":")
        out.append((int(host.rpartition(":")[2]), int(container.split("/")[0])))
    return out


def test_compose_two_replicas_one_redis_one_port(
    compose: dict[str, Any],
    image_env: dict[str, str],
    etc_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    services: dict[str, dict[str, Any]] = compose["services"]
    built = [n for n, s in services.items() if s.get("build")]
    assert len(built) == 1, "one bloxproxy service, built from this repository"
    name = built[0]
    proxy = services[name]
    assert proxy["build"] in (".", {"context": "."})
    assert proxy["deploy"]["replicas"] == 2
    assert not proxy.get("ports"), "replicas cannot share a published port: the front has it"
    for dep in proxy.get("depends_on") or {}:
        assert dep in services
    redis = [s for s in services.values() if str(s.get("image", "")).startswith("redis:")]
    assert len(redis) == 1 and re.fullmatch(r"redis:7\.\d+\.\d+-alpine", redis[0]["image"])
    assert redis[0].get("healthcheck"), "bloxproxy waits for a healthy Redis"

    env = compose_env(proxy)
    assert_known_env(list(env), "docker-compose.yml")
    config = effective_check(monkeypatch, capsys, mapped({**image_env, **env}, etc_dir))
    assert config.server.host == "0.0.0.0" and config.server.port == DEFAULTS.server.port
    assert open_listener(config) is None, "serve would refuse: the replicas need access keys"
    assert proxy["environment"]["BLOXPROXY_AUTH_KEYS"].startswith("${BLOXPROXY_AUTH_KEYS:?"), (
        "no default key: compose stops with a message when none is set"
    )
    redis_name = next(n for n, s in services.items() if s is redis[0])
    assert re.fullmatch(rf"redis://{redis_name}:6379/\d+", config.cache.redis.url)
    assert config.limits.upstream.shared, "the replicas share the upstream rate"
    assert duration(proxy["stop_grace_period"]) > config.server.shutdown_grace
    nofile = proxy["ulimits"]["nofile"]
    assert nofile["soft"] == nofile["hard"]
    assert connection_cap(config, nofile["soft"]) == config.server.max_connections, (
        "the open-file limit holds every client connection beside the pools"
    )

    # one published port, on the front, which round-robins over the replicas
    fronts = [(n, s) for n, s in services.items() if published(s)]
    assert len(fronts) == 1 and len(published(fronts[0][1])) == 1
    front_name, front = fronts[0]
    nginx = re.fullmatch(r"nginx:(\d+)\.(\d+)\.(\d+)-alpine", str(front["image"]))
    assert nginx, f"an exact nginx version, not {front['image']}"
    assert tuple(map(int, nginx.groups())) >= (1, 27, 3), "`server ... resolve` needs 1.27.3"
    host_port, container_port = published(front)[0]
    assert host_port == DEFAULTS.server.port
    mounts = [str(v).split(":") for v in front.get("volumes") or []]
    conf_src = next(src for src, dst, *_ in mounts if dst == "/etc/nginx/nginx.conf")
    conf = (ROOT / conf_src).read_text(encoding="utf-8")
    assert re.search(rf"^\s*listen {container_port};", conf, re.MULTILINE)
    servers = re.findall(r"^\s*server (\S+?):(\d+)\b(.*);", conf, re.MULTILINE)
    assert [(h, int(p)) for h, p, _ in servers] == [(name, config.server.port)]
    assert "resolve" in servers[0][2], "re-resolved: every replica, restarts and --scale"
    assert re.search(r"^\s*resolver 127\.0\.0\.11\b", conf, re.MULTILINE), "Docker's DNS"
    assert "X-Forwarded-For $proxy_add_x_forwarded_for" in conf
    assert config.limits.clients.forwarded_for_hops == 1, "one proxy (the front) in front"
    assert name in front.get("depends_on", {}), front_name


@pytest.fixture(scope="module")
def kube_docs() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                assert isinstance(doc, dict) and {"apiVersion", "kind", "metadata"} <= set(doc)
                docs.append((path, doc))
    assert docs
    return docs


def kinds(
    docs: list[tuple[Path, dict[str, Any]]], file: str
) -> dict[str, dict[str, dict[str, Any]]]:
    """One manifest's objects by kind and name."""
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for path, doc in docs:
        if path.name == file:
            by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    assert by_kind, file
    return by_kind


def quantity(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    m = re.fullmatch(r"(\d+)([KMG]i?)?", str(text))
    assert m, text
    return int(m[1]) * units.get(m[2] or "", 1)


def test_kubernetes_sidecar(
    kube_docs: list[tuple[Path, dict[str, Any]]],
    final: Stage,
    image_env: dict[str, str],
    etc_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    by_kind = kinds(kube_docs, "sidecar.yaml")
    texts = (ROOT / "deploy" / "kubernetes" / "sidecar.yaml").read_text(encoding="utf-8")
    (deployment,) = by_kind["Deployment"].values()
    pod = deployment["spec"]["template"]["spec"]
    containers = [*pod.get("initContainers", []), *pod["containers"]]
    (sidecar,) = [c for c in containers if str(c["image"]).startswith("bloxproxy")]
    if sidecar in pod.get("initContainers", []):
        assert sidecar.get("restartPolicy") == "Always", "a native sidecar keeps running"
    apps = [c for c in pod["containers"] if c is not sidecar]
    assert apps, "an app container beside the sidecar"
    cli.build_parser().parse_args(sidecar.get("args") or exec_form(final.last("CMD").args))

    # environment: real keys; secrets from the Secret; the loopback address
    env: dict[str, str] = {}
    secret_refs = set()
    for item in sidecar["env"]:
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            secret = by_kind["Secret"][ref["name"]]
            values = {
                **secret.get("stringData", {}),
                **{k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()},
            }
            env[item["name"]] = values[ref["key"]]
            secret_refs.add(item["name"])
        else:
            env[item["name"]] = str(item["value"])
    assert_known_env(list(env), "sidecar.yaml")
    assert {"BLOXPROXY_SERVER_ADMIN_TOKEN", "BLOXPROXY_AUTH_KEYS"} <= secret_refs
    assert env["BLOXPROXY_SERVER_HOST"] == "127.0.0.1"

    # mounts: the ConfigMap's config.yaml at $BLOXPROXY_CONFIG, the rules at the mount point
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    config_path = env.get("BLOXPROXY_CONFIG", image_env["BLOXPROXY_CONFIG"])
    config_mount = mounts[config_path]
    config_map = by_kind["ConfigMap"][volumes[config_mount["name"]]["configMap"]["name"]]
    config_text = config_map["data"][config_mount["subPath"]]
    rules_path = env["BLOXPROXY_RULES_PATHS"]
    assert rules_path == f"{IMAGE_ETC}/rules"
    rules_cm = volumes[mounts[rules_path]["name"]]["configMap"]["name"]
    assert rules_cm in by_kind.get("ConfigMap", {}) or re.search(
        rf"kubectl create configmap {rules_cm} --from-file=my-rules/", texts
    ), f"ConfigMap {rules_cm}: neither defined nor created from rules/ in the instructions"
    for volume in volumes.values():
        if "configMap" in volume and volume["configMap"]["name"] != rules_cm:
            assert volume["configMap"]["name"] in by_kind["ConfigMap"]
    for mount in sidecar["volumeMounts"]:
        assert mount["name"] in volumes

    # `bloxproxy check` with that config file, that environment and the rules mounted
    (etc_dir / "config.yaml").write_text(config_text, encoding="utf-8")
    # kubectl create configmap --from-file=my-rules/: rules of one's own, beside the packaged
    (etc_dir / "rules" / "mine.yaml").write_text(MY_RULES, encoding="utf-8")
    config = effective_check(monkeypatch, capsys, mapped({**image_env, **env}, etc_dir))
    assert config.server.host == "127.0.0.1"
    assert open_listener(config) is None and not config.server.allow_open
    port = config.server.port
    assert port == DEFAULTS.server.port
    for app in apps:
        app_env = [str(e.get("value", "")) for e in app.get("env", [])]
        assert f"http://127.0.0.1:{port}" in app_env, "the app calls the sidecar on loopback"
        assert config.auth.header in " ".join(app.get("args", [])), "the app sends its key"

    # probes: the image's HEALTHCHECK, run in the container (httpGet would go to the pod IP)
    health = healthcheck_argv(final)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert sidecar[probe]["exec"]["command"] == health, probe
        assert sidecar[probe].get("timeoutSeconds", 1) >= 5, "Python starts in the probe"

    # resources and security
    resources = sidecar["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert quantity(resources["limits"]["memory"]) > 2 * config.cache.max_bytes
    uid = image_uid(final)
    for c in containers:
        ctx = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
        assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser") == uid
        assert ctx.get("readOnlyRootFilesystem") is True, c["name"]
        assert ctx.get("allowPrivilegeEscalation") is False, c["name"]
        assert c.get("resources", {}).get("limits", {}).get("memory"), c["name"]
    assert pod.get("terminationGracePeriodSeconds", 30) > config.server.shutdown_grace


def secret_env(
    container: dict[str, Any], by_kind: dict[str, dict[str, dict[str, Any]]]
) -> tuple[dict[str, str], set[str]]:
    """A container's environment, its Secret references resolved, and which came from one."""
    env: dict[str, str] = {}
    from_secret = set()
    for item in container["env"]:
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            secret = by_kind["Secret"][ref["name"]]
            env[item["name"]] = {**secret.get("stringData", {})}[ref["key"]]
            from_secret.add(item["name"])
        else:
            env[item["name"]] = str(item["value"])
    return env, from_secret


# an exact version (bloxproxy's own, redis 7.x), optionally with its digest; never a floating tag
PINNED_IMAGE = re.compile(
    r"(bloxproxy:\d+\.\d+\.\d+|redis:7\.\d+\.\d+-alpine)(@sha256:[0-9a-f]{64})?"
)


def conf_lines(text: str) -> list[list[str]]:
    """A redis.conf or sentinel.conf: its directives, split, without comments."""
    return [shlex.split(line) for line in text.splitlines() if line.strip()[:1] not in ("", "#")]


def check_redis_sentinel(
    by_kind: dict[str, dict[str, dict[str, Any]]], namespace: str, url: str, tmp: Path
) -> None:
    """replicas.yaml's Redis: a StatefulSet of 3 pods, each a redis and a Sentinel watching the
    master bloxproxy's redis+sentinel:// URL names, through the Sentinels of those pods."""
    redis_set = by_kind["StatefulSet"]["redis"]
    replicas = redis_set["spec"]["replicas"]
    assert replicas == 3, "a primary, two replicas, three Sentinels"
    labels = redis_set["spec"]["template"]["metadata"]["labels"]
    assert redis_set["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = redis_set["spec"]["template"]["spec"]
    boxes = {c["name"]: c for c in pod["containers"]}
    assert set(boxes) == {"redis", "sentinel"}
    (init,) = pod["initContainers"]
    ports = {
        name: {p["name"]: p["containerPort"] for p in box["ports"]} for name, box in boxes.items()
    }
    redis_port, sentinel_port = ports["redis"]["redis"], ports["sentinel"]["sentinel"]

    # the headless Service names the pods (before they are ready: the Sentinels resolve them)
    headless = by_kind["Service"][redis_set["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"].items() <= labels.items()
    hosts = [
        f"{redis_set['metadata']['name']}-{i}.{headless['metadata']['name']}.{namespace}.svc"
        for i in range(replicas)
    ]
    # the Sentinels' Service, on the port bloxproxy asks them on
    sentinels = by_kind["Service"]["redis-sentinel"]
    assert sentinels["spec"]["selector"].items() <= labels.items()
    (service_port,) = [
        p["port"] for p in sentinels["spec"]["ports"] if p["targetPort"] == "sentinel"
    ]
    assert service_port == sentinel_port == redis_url.SENTINEL_PORT

    # bloxproxy asks every pod's Sentinel for the master's primary
    topology = redis_url.parse(url)
    assert isinstance(topology, redis_url.SentinelTopology), url
    assert [(n.host, n.port) for n in topology.sentinels] == [(h, service_port) for h in hosts]

    # the config templates, and the writable copies (an emptyDir) the containers run from
    volumes = {v["name"]: v for v in pod["volumes"]}
    init_mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    templates_mount = init_mounts["/templates"]
    templates = by_kind["ConfigMap"][volumes[templates_mount["name"]]["configMap"]["name"]]
    assert templates_mount["readOnly"] is True
    conf_dir = init_mounts["/conf"]["name"]
    assert volumes[conf_dir].get("emptyDir") is not None, "the Sentinel rewrites its config"
    commands = {
        "redis": ["redis-server", "/conf/redis.conf"],
        "sentinel": ["redis-sentinel", "/conf/sentinel.conf"],
    }
    for name, box in boxes.items():
        assert {m["mountPath"]: m["name"] for m in box["volumeMounts"]}["/conf"] == conf_dir
        assert box["command"] == commands[name], "run from the written, writable copies"
        assert box["resources"]["limits"]["memory"] and box["resources"]["requests"]["cpu"]
        assert box["readinessProbe"] and box["livenessProbe"], name
    assert init["resources"]["limits"]["memory"]
    for c in [init, *boxes.values()]:
        ctx = {**pod["securityContext"], **c["securityContext"]}
        assert ctx["runAsNonRoot"] is True and ctx["readOnlyRootFilesystem"] is True, c["name"]

    sentinel_conf = conf_lines(templates["data"]["sentinel.conf"])
    directives = [line[:2] for line in sentinel_conf]
    monitor_at = directives.index(["sentinel", "monitor"])
    for option in ("resolve-hostnames", "announce-hostnames"):
        assert directives.index(["sentinel", option]) < monitor_at, "names need them first"
        assert ["sentinel", option, "yes"] in sentinel_conf
    _, _, master, primary, port, quorum = sentinel_conf[monitor_at]
    assert master == topology.master, "bloxproxy asks for the master the Sentinels watch"
    assert (primary, int(port)) == (hosts[0], redis_port), "pod 0 starts as the primary"
    assert replicas // 2 < int(quorum) <= replicas
    assert ["sentinel", "down-after-milliseconds", master, "5000"] in sentinel_conf
    assert ["sentinel", "failover-timeout", master, "10000"] in sentinel_conf
    assert ["port", str(sentinel_port)] in sentinel_conf
    redis_conf = conf_lines(templates["data"]["redis.conf"])
    assert ["port", str(redis_port)] in redis_conf
    assert ["save", ""] in redis_conf and ["appendonly", "no"] in redis_conf

    # init.sh, run per pod: pod 0 the primary, the others its replicas, and after a failover
    # (the Sentinels answer) whichever primary they name; every pod announces its own name
    assert init["command"] == ["sh", "/templates/init.sh"]
    (tmp / "templates").mkdir()
    for key, value in templates["data"].items():
        (tmp / "templates" / key).write_text(value, encoding="utf-8")
    script = templates["data"]["init.sh"].replace("/templates/", f"{tmp}/templates/")
    script = script.replace("/conf/", f"{tmp}/conf/")
    (tmp / "init.sh").write_text(script, encoding="utf-8")
    stubs = tmp / "bin"
    stubs.mkdir()
    (stubs / "redis-cli").write_text(
        '#!/bin/sh\n[ -n "$ANSWER" ] || exit 1\nprintf "%s\\n" $ANSWER\n', encoding="utf-8"
    )
    (stubs / "getent").write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    for pod_name, answer, expected in [
        ("redis-0", "", None),
        ("redis-1", "", hosts[0]),
        ("redis-2", "", hosts[0]),
        ("redis-0", f"{hosts[2]} {redis_port}", hosts[2]),
        ("redis-2", f"{hosts[2]} {redis_port}", None),
    ]:
        shutil.rmtree(tmp / "conf", ignore_errors=True)
        (tmp / "conf").mkdir()
        env = {
            "PATH": f"{stubs}:{os.environ['PATH']}",
            "HOSTNAME": pod_name,
            "POD_NAMESPACE": namespace,
            "ANSWER": answer,
        }
        subprocess.run(
            ["sh", str(tmp / "init.sh")], env=env, check=True, timeout=30, capture_output=True
        )
        self_host = f"{pod_name}.{headless['metadata']['name']}.{namespace}.svc"
        written = conf_lines((tmp / "conf" / "redis.conf").read_text(encoding="utf-8"))
        assert written[: len(redis_conf)] == redis_conf
        assert ["replica-announce-ip", self_host] in written
        replicaof = [line[1:] for line in written if line[0] == "replicaof"]
        assert replicaof == ([] if expected is None else [[expected, str(redis_port)]])
        watched = conf_lines((tmp / "conf" / "sentinel.conf").read_text(encoding="utf-8"))
        assert ["sentinel", "announce-ip", self_host] in watched
        assert ["sentinel", "monitor", master, expected or self_host, str(redis_port), quorum] in (
            watched
        ), (pod_name, answer)

    # a drain keeps two Sentinels of three: a quorum, and a majority to fail over
    pdb = by_kind["PodDisruptionBudget"]["redis"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


def test_kubernetes_replicas_share_redis_and_one_budget(
    kube_docs: list[tuple[Path, dict[str, Any]]],
    final: Stage,
    image_env: dict[str, str],
    etc_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """deploy/kubernetes/replicas.yaml: N pods, Redis with Sentinel, one budget per Roblox
    service, PodDisruptionBudgets and an autoscaler on a bloxproxy gauge; `bloxproxy check`
    passes."""
    from bloxproxy.metricsview import GAUGES

    path = ROOT / "deploy" / "kubernetes" / "replicas.yaml"
    text = path.read_text(encoding="utf-8")
    by_kind = kinds(kube_docs, "replicas.yaml")
    (namespace,) = by_kind["Namespace"]
    for kind, objects in by_kind.items():
        for name, doc in objects.items():
            if kind != "Namespace":
                assert doc["metadata"].get("namespace") == namespace, f"{kind} {name}"
    assert "MORE PODS ADD NO ROBLOX BUDGET" in text
    assert "A Sentinel failover loses no request" in text and "RELIABILITY.md" in text
    for doc in [*by_kind["Deployment"].values(), *by_kind["StatefulSet"].values()]:
        spec = doc["spec"]["template"]["spec"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            assert PINNED_IMAGE.fullmatch(c["image"]), f"{c['name']}: {c['image']} not pinned"

    deployment = by_kind["Deployment"]["bloxproxy"]
    assert deployment["spec"]["replicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = deployment["spec"]["template"]["spec"]
    (proxy,) = pod["containers"]
    assert str(proxy["image"]).startswith("bloxproxy")
    cli.build_parser().parse_args(proxy.get("args") or exec_form(final.last("CMD").args))
    env, from_secret = secret_env(proxy, by_kind)
    assert_known_env(list(env), "replicas.yaml")
    assert {"BLOXPROXY_SERVER_ADMIN_TOKEN", "BLOXPROXY_AUTH_KEYS"} <= from_secret
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in proxy["volumeMounts"]}
    config_mount = mounts[env.get("BLOXPROXY_CONFIG", image_env["BLOXPROXY_CONFIG"])]
    config_map = by_kind["ConfigMap"][volumes[config_mount["name"]]["configMap"]["name"]]
    (etc_dir / "config.yaml").write_text(config_map["data"][config_mount["subPath"]])
    (etc_dir / "rules" / "mine.yaml").write_text(MY_RULES, encoding="utf-8")
    config = effective_check(monkeypatch, capsys, mapped({**image_env, **env}, etc_dir))

    # one budget, shared in Redis, one egress (the default), keys on 0.0.0.0
    assert config.limits.upstream.shared and config.upstream.egress_id == "shared"
    assert config.server.host == "0.0.0.0" and open_listener(config) is None
    check_redis_sentinel(by_kind, namespace, config.cache.redis.url, tmp_path)

    # the Service reaches the proxy's port; Prometheus the ops port, which it does not expose
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert ports["http"] == config.server.port and ports["ops"] == config.server.ops_port
    service = by_kind["Service"]["bloxproxy"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == config.server.ops_port
    assert annotations["prometheus.io/path"] == RESERVED_PREFIX + "metrics"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = proxy[probe]["httpGet"]
        assert get["port"] == "ops" and get["path"].startswith(RESERVED_PREFIX), probe

    # workers: their sockets need a writable /tmp; memory holds every worker's L1
    assert config.server.workers >= 2
    assert volumes[mounts["/tmp"]["name"]].get("emptyDir") is not None
    limit = quantity(proxy["resources"]["limits"]["memory"])
    assert limit > 2 * config.cache.max_bytes * config.server.workers
    assert pod["terminationGracePeriodSeconds"] > config.server.shutdown_grace
    uid = image_uid(final)
    ctx = {**pod["securityContext"], **proxy["securityContext"]}
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == uid
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False

    # a drain takes one pod at a time; the autoscaler scales the Deployment on a summed gauge
    pdb = by_kind["PodDisruptionBudget"]["bloxproxy"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    (hpa,) = by_kind["HorizontalPodAutoscaler"].values()
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "bloxproxy")
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"]
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    assert GAUGES[name] == "sum", "a pod's load: its workers' sum"
    assert f"name: {{as: {name}}}" in text, "the Prometheus Adapter rule that serves it"
