"""Operations: the lock file, the Dockerfile's build run without Docker, compose.yaml,
metrics docs, the Grafana dashboard, the AsyncAPI document and the configuration reference.

No Docker engine runs here, so the image is checked by running its own steps: the
Dockerfile is parsed, its COPY steps copy from this repository (minus .dockerignore),
its RUN steps run with the image's paths mapped into a temp dir, and the installed
``giftrelay`` then runs ``serve`` as the image's ENTRYPOINT + CMD would, probed by the
image's HEALTHCHECK command.
"""

from __future__ import annotations

import asyncio
import fnmatch
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import typing
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from redis.asyncio import Redis
from websockets.asyncio.client import connect

import giftrelay
from giftrelay import metrics
from giftrelay.auth import Role
from giftrelay.config import ENV_PREFIX, Settings
from giftrelay.embedded import RedisServer, free_port
from giftrelay.wire import protocol

from .relay_helpers import Client, running_relay, token

ROOT = Path(__file__).resolve().parent.parent


# -- the lock file -------------------------------------------------------------------------


def normalized(name: str) -> str:
    """A distribution name as the lock spells it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions() -> dict[str, str]:
    """Every locked distribution and its version (giftrelay itself: its own, unpinned)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return {normalized(p["name"]): p.get("version", giftrelay.__version__) for p in lock["package"]}


def installed_versions(python: str | Path) -> dict[str, str]:
    listing = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m, json; print(json.dumps("
         "{d.metadata['Name']: d.version for d in m.distributions()}))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return {normalized(k): v for k, v in json.loads(listing.stdout).items()}


def assert_installed_from_lock(installed: dict[str, str], *, dev: bool) -> None:
    locked = locked_versions()
    off = {n: (v, locked[n]) for n, v in installed.items() if n in locked and locked[n] != v}
    assert not off, f"installed (left) differs from uv.lock (right): {off}"
    tools = {"pip", "setuptools", "wheel", "uv"}  # the installers, not the application's
    unlocked = set(installed) - set(locked) - tools
    assert not unlocked, f"installed but not in uv.lock: {sorted(unlocked)}"
    expected = {"redis", "hiredis", "websockets", "msgspec", "structlog", "giftrelay"}
    expected |= {"pytest", "mypy", "ruff"} if dev else set()
    assert expected <= set(installed), sorted(expected - set(installed))
    if not dev:
        assert "pytest" not in installed, "the image holds no dev tools"


def test_the_test_environment_is_the_lock() -> None:
    """`make test` (and so CI) runs on exactly the locked versions, dev tools included."""
    assert_installed_from_lock(installed_versions(sys.executable), dev=True)


def test_one_uv_version_everywhere() -> None:
    """make, the Dockerfile and pyproject's required-version name the same lock tool."""
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]
    pinned = re.fullmatch(r"==(\S+)", required["required-version"])
    assert pinned, "pin uv exactly: required-version = '==X.Y.Z'"
    make = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    docker = re.findall(r"uv==(\S+)", (ROOT / "Dockerfile").read_text())
    assert make, "Makefile: UV_VERSION := X.Y.Z"
    assert make[1] == pinned[1]
    assert docker == [pinned[1]]


def test_the_lock_matches_pyproject() -> None:
    """uv.lock was refreshed after pyproject.toml last changed (`make lock`)."""
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        pytest.skip("uv is not in this environment (make installs it)")
    done = subprocess.run(
        [uv, "lock", "--check", "--offline"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


# -- Dockerfile ----------------------------------------------------------------------------


@dataclass
class Instruction:
    op: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    steps: list[Instruction] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [step.args for step in self.steps if step.op == op]

    def last(self, op: str) -> str:
        found = self.all(op)
        assert found, f"no {op} in the stage FROM {self.base}"
        return found[-1]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their instructions; continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends in a continuation line"
    stages: list[Stage] = []
    for line in logical:
        op, _, args = line.partition(" ")
        op = op.upper()
        args = args.strip()
        if op == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        else:
            assert stages, f"{op} before FROM"
            stages[-1].steps.append(Instruction(op, args))
    return stages


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) argument, or a shell-form one run by /bin/sh -c."""
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list)
        return [str(v) for v in value]
    return ["/bin/sh", "-c", args]


def env_pairs(args: str) -> list[tuple[str, str]]:
    pairs = []
    for word in shlex.split(args):
        key, sep, value = word.partition("=")
        assert sep, f"ENV {word!r}: use the KEY=VALUE form"
        pairs.append((key, value))
    return pairs


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip().lstrip("/") for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rules, as far as this repository needs them: a path or an ancestor matches."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        path = "/".join(parts[:i])
        for pattern in patterns:
            if pattern.startswith("**/"):
                tail = pattern[3:]
                if fnmatch.fnmatch(path, tail) or fnmatch.fnmatch(path, "*/" + tail):
                    return True
            elif fnmatch.fnmatch(path, pattern):
                return True
    return False


STAGE_PATHS = ("/src", "/wheels", "/opt/giftrelay", "/home/giftrelay")
"""The image's own directories, which the build steps below map into a temp dir."""


class Image:
    """The Dockerfile's steps, run on this machine with the image's paths under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stages = parse_dockerfile((ROOT / "Dockerfile").read_text())
        self.final = self.stages[-1]
        self.patterns = dockerignore()
        bindir = root.parent / "bin"  # `python` in a RUN step: this interpreter
        bindir.mkdir(exist_ok=True)
        wrapper = bindir / "python"
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        wrapper.chmod(0o755)
        self.host_path = f"{bindir}:{os.environ['PATH']}"

    def host(self, path: str) -> Path:
        assert path.startswith("/"), path
        return self.root / path.lstrip("/")

    def map_paths(self, text: str) -> str:
        """The image's absolute paths in ``text`` as paths under ``root``."""
        pattern = "|".join(re.escape(p) for p in STAGE_PATHS)
        return re.sub(
            rf"(?<![\w.-])({pattern})(?=[/\s:\"']|$)", lambda m: str(self.host(m[1])), text
        )

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", ENV_PREFIX))}
        env.pop("PYTHONPATH", None)
        env["PATH"] = self.host_path
        return env

    def stage_env(self, stage: Stage) -> dict[str, str]:
        env = self.base_env()
        for args in stage.all("ENV"):
            for key, value in env_pairs(args):
                value = value.replace("$PATH", env["PATH"]).replace("${PATH}", env["PATH"])
                env[key] = self.map_paths(value)
        return env

    def build(self) -> None:
        for stage in self.stages:
            if stage is self.final:
                self._prune_to(stage)
            self._run_stage(stage)

    def _run_stage(self, stage: Stage) -> None:
        workdir = "/"
        env = self.base_env()
        for step in stage.steps:
            if step.op == "WORKDIR":
                workdir = step.args
                self.host(workdir).mkdir(parents=True, exist_ok=True)
            elif step.op == "ENV":
                for key, value in env_pairs(step.args):
                    value = value.replace("$PATH", env["PATH"])
                    env[key] = self.map_paths(value)
            elif step.op == "COPY":
                self._copy(step.args, workdir)
            elif step.op == "RUN":
                self._run(step.args, workdir, env)

    def _copy(self, args: str, workdir: str) -> None:
        words = args.split()
        from_stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
        words = [w for w in words if not w.startswith("--")]
        *sources, dest = words
        target = self.host(dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest}")
        for source in sources:
            if from_stage is not None:
                origin = self.host(source)
                if origin != target:
                    shutil.copytree(origin, target, symlinks=True, dirs_exist_ok=True)
                continue
            origin = ROOT / source
            assert not ignored(source, self.patterns), f"COPY {source}: .dockerignore drops it"
            if origin.is_dir():

                def skip(directory: str, names: list[str], base: Path = origin) -> set[str]:
                    rel_dir = Path(directory).relative_to(ROOT).as_posix()
                    return {n for n in names if ignored(f"{rel_dir}/{n}", self.patterns)}

                shutil.copytree(origin, target, ignore=skip, dirs_exist_ok=True)
            else:
                dest_file = target / origin.name if dest.endswith("/") else target
                dest_file.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, dest_file)

    def _run(self, command: str, workdir: str, env: dict[str, str]) -> None:
        if command.startswith("apt-get"):
            # System packages and the user: not run here. What they provide is checked
            # instead (redis-server on PATH; the user and its volume directory).
            assert "redis-server" in command
            for volume in json.loads(self.final.last("VOLUME")):
                assert f"-o {self.final.last('USER')}" in command
                assert volume in command
                self.host(volume).mkdir(parents=True, exist_ok=True)
            assert shutil.which("redis-server"), "the image's redis-server step needs one here"
            return
        mapped = self.map_paths(command)
        leftover = re.findall(
            r"(?<![\w.$-])/[a-z][\w/.-]*", mapped.replace(str(self.root), "@root")
        )
        assert not leftover, f"RUN {command!r}: the test does not map {leftover}; see STAGE_PATHS"
        done = subprocess.run(
            ["/bin/sh", "-c", mapped],
            cwd=self.host(workdir),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"RUN {command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    def _prune_to(self, stage: Stage) -> None:
        """The final stage starts with only what it copies from the earlier ones."""
        keep = {
            self.host(words[-2])
            for words in (s.split() for s in stage.all("COPY"))
            if any(w.startswith("--from=") for w in words)
        }

        def prune(directory: Path) -> None:
            for child in directory.iterdir():
                if child in keep:
                    continue
                if any(child in k.parents for k in keep):
                    prune(child)
                elif child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()

        prune(self.root)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_dockerfile_shape() -> None:
    stages = parse_dockerfile((ROOT / "Dockerfile").read_text())
    assert len(stages) >= 2, "multi-stage: build the wheel in one stage, ship another"
    final = stages[-1]
    assert final.base.endswith("-slim"), final.base
    assert all(s.base == final.base for s in stages), "one Python for the venv in every stage"
    user = final.last("USER")
    assert user not in ("root", "0")
    assert not user.startswith("0:")
    assert exec_form(final.last("ENTRYPOINT")) == ["giftrelay"]
    assert exec_form(final.last("CMD")) == ["serve"]
    env = dict(p for args in final.all("ENV") for p in env_pairs(args))
    assert final.last("EXPOSE") == env["GIFTRELAY_PORT"]
    assert env["GIFTRELAY_HOST"] == "0.0.0.0"
    assert set(json.loads(final.last("VOLUME"))) == {f"/home/{user}/var"}
    assert final.last("WORKDIR") == f"/home/{user}"  # var/ (the embedded default) is the volume
    health = final.last("HEALTHCHECK")
    assert "/healthz" in health
    assert " CMD " in f" {health} "
    assert any("--from=" in c for c in final.all("COPY"))
    assert not any("pip" in r for r in final.all("RUN")), "the final stage installs nothing"


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest() -> None:
    patterns = dockerignore()
    kept = ("pyproject.toml", "README.md", "src/giftrelay/cli/__init__.py",
            "src/giftrelay/money/lua/gift.lua", "loadtest/cli.py")  # fmt: skip
    for rel in kept:
        assert not ignored(rel, patterns), rel
    dropped = (
        ".venv/bin/python",
        "src/giftrelay/__pycache__/cli.cpython-311.pyc",
        ".git",
        "var/redis/appendonly.aof",
        "loadtest/peers/socketio/node_modules/x.js",
    )
    for rel in dropped:
        assert ignored(rel, patterns), rel


def test_image_build_steps_install_a_working_relay(tmp_path: Path) -> None:
    """The Dockerfile's steps, in a clean virtualenv; then ENTRYPOINT + CMD and HEALTHCHECK."""
    image = Image(tmp_path / "root")
    image.build()
    final = image.final
    env = image.stage_env(final)
    venv_bin = image.host("/opt/giftrelay/bin")
    # Only what the final stage copied is left: no sources, no wheels.
    assert not image.host("/src").exists()
    assert not image.host("/wheels").exists()

    entrypoint = exec_form(final.last("ENTRYPOINT"))
    program = shutil.which(entrypoint[0], path=env["PATH"])
    assert program is not None
    assert Path(program).parent == venv_bin, program
    # A clean virtualenv: giftrelay comes from the wheel, not from this checkout.
    where = subprocess.run(
        [venv_bin / "python", "-c", "import giftrelay; print(giftrelay.__file__)"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(image.root)), where.stdout
    version = subprocess.run(
        [program, "--version"], env=env, capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"giftrelay, version {giftrelay.__version__}"
    # Exactly the locked versions, hash-checked by pip, and no dev tools.
    assert_installed_from_lock(installed_versions(venv_bin / "python"), dev=False)

    health_args = final.last("HEALTHCHECK").split(" CMD ", 1)[1].strip()
    healthcheck = exec_form(health_args)
    port = free_port()
    env["GIFTRELAY_PORT"] = str(port)
    # Nothing listens yet: the health check must fail.
    probe = subprocess.run(healthcheck, env=env, capture_output=True, timeout=30)
    assert probe.returncode != 0

    workdir = image.host(final.last("WORKDIR"))
    workdir.mkdir(parents=True, exist_ok=True)
    relay = subprocess.Popen(
        [program, *exec_form(final.last("CMD"))],
        env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            probe = subprocess.run(healthcheck, env=env, capture_output=True, timeout=30)
            if probe.returncode == 0:
                break
            assert relay.poll() is None, relay.communicate()[0].decode()[-3000:]
            assert time.monotonic() < deadline, "the image's HEALTHCHECK never passed"
            time.sleep(0.5)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while http_status(f"{base}/readyz") != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.2)
        assert http_status(f"{base}/metrics") == 200
        assert http_status(f"{base}/catalog.json") == 200
        # The embedded default kept its data in the volume's directory.
        assert (workdir / "var" / "redis").is_dir()
        # compose.yaml's relay health check (readiness) passes against it too.
        compose_check = compose()["services"]["relay-1"]["healthcheck"]["test"][1:]
        compose_check = [a.replace(":8080/", f":{port}/") for a in compose_check]
        assert subprocess.run(compose_check, env=env, timeout=30).returncode == 0
    finally:
        relay.send_signal(signal.SIGTERM)
        try:
            output = relay.communicate(timeout=30)[0].decode()
        except subprocess.TimeoutExpired:
            relay.kill()
            raise
    assert relay.returncode == 0, output[-3000:]


# -- compose.yaml --------------------------------------------------------------------------

TEST_SECRET = "compose-test-secret-" + "s" * 32


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m["name"], m["op"], m["arg"] or ""
        if name in env and env[name] != "":
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(?P<name>\w+)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}", one, value)


def service_env(service: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    raw = service.get("environment", {})
    assert isinstance(raw, dict), "environment as a mapping"
    return {k: interpolate(str(v), env) for k, v in raw.items()}


GIFTRELAY_SERVICES = ("relay-1", "relay-2", "ledger", "giftrelay-cluster")


def test_compose_services_and_wiring() -> None:
    doc = compose()
    services = doc["services"]
    default = {name for name, service in services.items() if not service.get("profiles")}
    assert default == {"redis", "postgres", "relay-1", "relay-2", "ledger"}
    assert set(services) - default == CLUSTER_SERVICES
    volumes = set(doc.get("volumes") or {})

    for name, service in services.items():
        assert "image" in service, name
        for dep, cond in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond.get("condition") == "service_healthy":
                check = services[dep].get("healthcheck", {})
                assert check.get("test"), f"{dep} has no healthcheck"
                assert not check.get("disable"), f"{dep} has its healthcheck disabled"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source in volumes, f"{name}: volume {source} is not declared"

    redis = services["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes", "Redis with AOF on"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert redis["healthcheck"]["test"][1:] == ["redis-cli", "ping"]

    postgres = services["postgres"]
    pg_env = service_env(postgres, {})
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pg_isready" in postgres["healthcheck"]["test"]

    ports = set()
    for name in ("relay-1", "relay-2"):
        relay = services[name]
        assert relay["build"] == "."
        assert relay["image"] == services["ledger"]["image"]
        assert relay["command"] == ["serve", "--no-ledger"]
        env = service_env(relay, {"GIFTRELAY_SECRET": TEST_SECRET})
        assert env["GIFTRELAY_HOST"] == "0.0.0.0"
        redis_url = urlsplit(env["GIFTRELAY_REDIS_URL"])
        assert redis_url.scheme == "redis"
        assert redis_url.hostname == "redis"
        assert relay["depends_on"]["redis"]["condition"] == "service_healthy"
        host_port, container_port = relay["ports"][0].split(":")
        assert container_port == env["GIFTRELAY_PORT"]
        ports.add(host_port)
        check = " ".join(relay["healthcheck"]["test"])
        assert f"127.0.0.1:{env['GIFTRELAY_PORT']}/readyz" in check
        with pytest.raises(KeyError, match="GIFTRELAY_SECRET"):
            service_env(relay, {})  # compose refuses to start without a secret
    assert len(ports) == 2, "each replica its own host port"

    ledger = services["ledger"]
    assert ledger["command"] == ["ledger"]
    env = service_env(ledger, {})
    url = urlsplit(env["GIFTRELAY_LEDGER_URL"])
    assert url.scheme == "postgresql"
    assert url.hostname == "postgres"
    assert url.username == pg_env["POSTGRES_USER"]
    assert url.password == pg_env["POSTGRES_PASSWORD"]
    assert url.path == "/" + pg_env["POSTGRES_DB"]
    assert urlsplit(env["GIFTRELAY_REDIS_URL"]).hostname == "redis"
    assert set(ledger["depends_on"]) == {"redis", "postgres"}
    assert ledger["healthcheck"] == {"disable": True}, "no HTTP port: the image's check fails"


CLUSTER_NODES = [f"redis-node-{n}" for n in range(1, 7)]
CLUSTER_SERVICES = {*CLUSTER_NODES, "redis-cluster-init", "giftrelay-cluster"}


def test_compose_cluster_profile() -> None:
    """``--profile cluster``: six cluster nodes with AOF, formed once by a one-shot
    redis-cli, and a relay that starts once the cluster is formed."""
    services = compose()["services"]
    for name in CLUSTER_SERVICES:
        assert services[name]["profiles"] == ["cluster"], name
    for name in CLUSTER_NODES:
        command = services[name]["command"]
        assert command[0] == "redis-server"
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert command[command.index("--appendonly") + 1] == "yes"
        assert services[name]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]

    init = services["redis-cluster-init"]
    assert init["depends_on"] == {n: {"condition": "service_healthy"} for n in CLUSTER_NODES}
    script = init["command"][0]
    assert "--cluster create" in script
    assert "--cluster-replicas 1 --cluster-yes" in script
    assert "for n in 1 2 3 4 5 6;" in script, "all six nodes"
    assert "getent ahostsv4 redis-node-$$n" in script, "by IP address: MEET refuses names"
    assert init.get("restart") == "no", "one-shot"

    relay = services["giftrelay-cluster"]
    assert relay["build"] == "."
    assert relay["image"] == services["relay-1"]["image"]
    assert relay["depends_on"] == {
        "redis-cluster-init": {"condition": "service_completed_successfully"}
    }
    env = service_env(relay, {"GIFTRELAY_SECRET": TEST_SECRET})
    for key in env:
        assert key[len(ENV_PREFIX) :].lower() in Settings.__struct_fields__, key
    url = urlsplit(env["GIFTRELAY_REDIS_URL"])
    assert url.scheme == "redis+cluster"
    assert url.netloc == ",".join(f"{node}:6379" for node in CLUSTER_NODES[:3])
    relay_ports = {services[n]["ports"][0].split(":")[0] for n in ("relay-1", "relay-2")}
    assert relay["ports"][0].split(":")[0] not in relay_ports


def test_compose_environment_is_valid_configuration() -> None:
    """Every GIFTRELAY_* variable is a setting, and each service's settings load."""
    services = compose()["services"]
    for name in GIFTRELAY_SERVICES:
        env = service_env(services[name], {"GIFTRELAY_SECRET": TEST_SECRET})
        for key in env:
            assert key.startswith(ENV_PREFIX), f"{name}: {key}"
            assert key[len(ENV_PREFIX) :].lower() in Settings.__struct_fields__, f"{name}: {key}"
        settings = Settings.load(env)
        assert not settings.embedded, f"{name} must use the compose Redis"


# -- metrics: docs/metrics.md and the Grafana dashboard -------------------------------------

TARGET_LABELS = {"job", "instance"}
"""Labels Prometheus adds to every scraped series."""


def registry_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every giftrelay metric in the process's registry: exposed name -> (type, labels)."""
    import giftrelay.cli  # noqa: F401 - every module that could define a metric

    wrappers = {
        value._name: value
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
    }
    found = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("giftrelay_"):
            continue
        assert family.name in wrappers, f"{family.name} is defined outside giftrelay.metrics"
        wrapper = wrappers[family.name]
        exposed = family.name + ("_total" if family.type == "counter" else "")
        found[exposed] = (family.type, tuple(wrapper._labelnames))
    assert len(found) == len(wrappers)
    return found


def documented_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    rows = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        if not line.startswith("| `giftrelay_"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = cells[0].strip("`")
        kind = cells[1].split()[0]
        labels = tuple(re.findall(r"`(\w+)`", cells[2]))
        assert cells[3], f"{name}: say what it means"
        rows[name] = (kind, labels)
    return rows


def test_every_metric_is_documented() -> None:
    registry = registry_metrics()
    documented = documented_metrics()
    assert set(registry) - set(documented) == set(), "metrics missing from docs/metrics.md"
    assert set(documented) - set(registry) == set(), (
        "docs/metrics.md lists metrics that do not exist"
    )
    for name, (kind, labels) in registry.items():
        assert documented[name] == (kind, labels), f"{name}: type or labels differ in the doc"


def sample_names(registry: dict[str, tuple[str, tuple[str, ...]]]) -> dict[str, tuple[str, ...]]:
    """Every series name a scrape shows -> its labels."""
    names: dict[str, tuple[str, ...]] = {}
    for name, (kind, labels) in registry.items():
        if kind == "histogram":
            names[f"{name}_bucket"] = (*labels, "le")
            names[f"{name}_sum"] = labels
            names[f"{name}_count"] = labels
        else:
            names[name] = labels
    return names


def dashboard() -> dict[str, Any]:
    data = json.loads((ROOT / "deploy" / "grafana" / "giftrelay.json").read_text())
    assert isinstance(data, dict)
    return data


def test_dashboard_queries_use_metrics_that_exist() -> None:
    registry = registry_metrics()
    series = sample_names(registry)
    board = dashboard()
    assert board["uid"]
    assert board["title"]
    variables = {v["name"] for v in board["templating"]["list"]}
    exprs = []
    ids = set()
    for panel in board["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            exprs.append(target["expr"])
    for expr in exprs:
        used = re.findall(r"\bgiftrelay_\w+", expr)
        assert used, f"{expr}: uses no giftrelay metric"
        labels = set(TARGET_LABELS)
        for name in used:
            assert name in series, f"{expr}: {name} is not a series giftrelay exposes"
            labels |= set(series[name])
        for name, matchers in re.findall(r"\b(giftrelay_\w+)\{([^}]*)\}", expr):
            for label in re.findall(r"(\w+)\s*=~?", matchers):
                assert label in set(series[name]) | TARGET_LABELS, f"{expr}: {name} has no {label}"
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            for label in (g.strip() for g in group.split(",")):
                assert label in labels, f"{expr}: grouped by {label}, which it does not have"
        for fn, name in re.findall(r"\b(rate|increase)\((giftrelay_\w+)", expr):
            assert name.endswith(("_total", "_bucket")), f"{expr}: {fn} of a gauge"
        for name in re.findall(r"histogram_quantile\([\d.]+, sum by \(le\) \(rate\((\w+)", expr):
            assert name.endswith("_bucket"), expr
        for variable in re.findall(r"\$\{?(\w+)", expr):
            assert variable in variables, f"{expr}: ${variable} is not a dashboard variable"
        assert expr.count("(") == expr.count(")"), expr
    text = "\n".join(exprs)
    # The key panels the operators asked for.
    assert "giftrelay_open_connections" in text
    assert re.search(r"sum by \(outcome\) \(rate\(giftrelay_gifts_total", text)
    assert "histogram_quantile(0.99, sum by (le) (rate(giftrelay_fanout_lag_seconds_bucket" in text
    assert "histogram_quantile(0.99, sum by (le) (rate(giftrelay_gift_seconds_bucket" in text
    assert "giftrelay_ledger_lag_entries" in text
    assert 'outcome="dead_letter"' in text
    assert "giftrelay_slow_client_closes_total" in text


def test_dashboard_check_catches_a_metric_that_does_not_exist() -> None:
    series = sample_names(registry_metrics())
    assert "giftrelay_gift_seconds_bucket" in series
    assert "giftrelay_gifts_seconds_bucket" not in series
    assert "giftrelay_open_connections_total" not in series


# -- AsyncAPI: generated from the msgspec types, checked against real traffic -------------------


def asyncapi_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "giftrelay_asyncapi", ROOT / "scripts" / "asyncapi.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_asyncapi_document_is_generated_from_the_types() -> None:
    generator = asyncapi_module()
    committed = (ROOT / "docs" / "asyncapi.yaml").read_text()
    assert committed == generator.render(), (
        "docs/asyncapi.yaml is stale: python -m scripts.asyncapi"
    )


def test_asyncapi_document_is_complete_and_its_references_resolve() -> None:
    doc = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    assert doc["asyncapi"].startswith("3.")

    def resolve(pointer: str) -> Any:
        assert pointer.startswith("#/"), pointer
        node = doc
        for part in pointer[2:].split("/"):
            node = node[part]
        return node

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    for pointer in walk(doc):
        resolve(pointer)
    channel_messages = doc["channels"]["relay"]["messages"]
    client = {m.__struct_config__.tag for m in typing.get_args(protocol.ClientMessage)}
    received = {
        doc["components"]["messages"][op["messages"][0]["$ref"].rsplit("/", 1)[1]]["name"]
        for op in doc["operations"].values()
        if op["action"] == "receive"
    }
    assert received == client, "an operation for every client message"
    server = {m.__struct_config__.tag for m in protocol.Reply.__subclasses__()}
    names = {m["name"] for m in doc["components"]["messages"].values()}
    assert names == client | server
    for op in doc["operations"].values():
        for message in [*op["messages"], *op.get("reply", {}).get("messages", [])]:
            assert message["$ref"].rsplit("/", 1)[1] in channel_messages


def validator_for(doc: dict[str, Any], schema_name: str) -> Any:
    import jsonschema

    root = {"$ref": f"#/components/schemas/{schema_name}", "components": doc["components"]}
    return jsonschema.Draft7Validator(root)


class RecordingClient(Client):
    """A test client that keeps every message it receives, for schema checks."""

    def __init__(self, ws: Any) -> None:
        super().__init__(ws)
        self.received: list[dict[str, Any]] = []

    def on_message(self, msg: dict[str, Any]) -> None:
        self.received.append(msg)
        super().on_message(msg)


async def test_real_traffic_matches_the_asyncapi_schemas(
    redis: Redis, redis_server: RedisServer
) -> None:
    """Every message a relay sends in a session that uses the whole protocol, and every
    message sent to it, is valid against the document's schemas."""
    doc = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    messages = doc["components"]["messages"]

    def schema_of(tag: str, *, client: bool = False) -> Any:
        """The validator of the client's (or else the server's) message of this type."""
        kinds = protocol.ClientMessage if client else protocol.Reply
        (cls,) = [
            c
            for c in (typing.get_args(kinds) if client else protocol.Reply.__subclasses__())
            if c.__struct_config__.tag == tag
        ]
        payload = messages[cls.__name__]["payload"]["$ref"]
        return validator_for(doc, payload.rsplit("/", 1)[1])

    sent: list[dict[str, Any]] = []
    async with running_relay(redis_server.url, combo_window_ms=200) as h:
        clients: list[RecordingClient] = []

        async def open_client(tok: str | None) -> RecordingClient:
            full = f"{h.ws}?token={tok}" if tok else h.ws
            ws = await connect(full, max_size=None)
            client = RecordingClient(ws)
            client.hello = json.loads(await ws.recv())
            client.received.append(client.hello)
            client.reader = asyncio.create_task(client._read())
            clients.append(client)
            return client

        async def ask(client: Client, **message: Any) -> dict[str, Any]:
            sent.append(dict(message))
            return await client.request(**message)

        creator = await open_client(token("cre", Role.CREATOR))
        admin = await open_client(token("adm", Role.ADMIN))
        viewer = await open_client(token("vie"))
        await open_client(None)
        assert (await ask(creator, type="stream_open", stream="s1", title="Live"))[
            "type"
        ] == "stream_ok"
        assert (await ask(admin, type="topup", user="vie", coins=5000, id="receipt-0001"))[
            "type"
        ] == "topup_ok"
        assert (await ask(admin, type="topup", user="cre", coins=1, id="receipt-0002"))[
            "type"
        ] == "topup_ok"
        joined = await ask(viewer, type="join", stream="s1")
        assert joined["type"] == "joined"
        assert (await ask(creator, type="set_goal", stream="s1", title="Goal", target=100))[
            "type"
        ] == "goal_ok"
        for i in range(3):
            reply = await ask(
                viewer, type="gift", stream="s1", gift="rose", count=2, id=f"gift-id-{i:04}"
            )
            assert reply["type"] == "gift_ok"
        assert (
            await ask(viewer, type="gift", stream="s1", gift="rose", count=2, id="gift-id-0000")
        )["type"] == "gift_ok"
        assert (await ask(viewer, type="gift", stream="nope", gift="rose", id="gift-id-9999"))[
            "type"
        ] == "error"
        assert (await ask(viewer, type="balance"))["type"] == "balance"
        assert (await ask(viewer, type="set_cap", daily_coins=1000))["type"] == "cap_ok"
        assert (await ask(viewer, type="set_cap", daily_coins=None))["type"] == "cap_ok"
        assert (await ask(viewer, type="set_confirm", coins=1))["type"] == "confirm_ok"
        asked = dict(type="gift", stream="s1", gift="rose", count=2, id="gift-id-conf")
        assert (await ask(viewer, **asked))["code"] == "confirm_required"
        assert (await ask(viewer, **asked, confirm=True))["type"] == "gift_ok"
        assert (await ask(viewer, type="set_confirm", coins=None))["type"] == "confirm_ok"
        cooldown = await ask(viewer, type="set_cooldown", coins=1, minutes=1)
        assert cooldown["type"] == "cooldown_ok"
        assert (await ask(viewer, type="gift", stream="s1", gift="rose", id="gift-id-cool"))[
            "type"
        ] == "gift_ok"
        cooling = await ask(viewer, type="gift", stream="s1", gift="rose", id="gift-id-wait")
        assert cooling["code"] == "cooling_down"
        assert cooling["resume_at"]
        spending = await ask(viewer, type="spending")
        assert spending["cooldown"]["resume_at"] == cooling["resume_at"]
        assert (await ask(viewer, type="set_cooldown", coins=None))["type"] == "cooldown_ok"
        assert (await ask(viewer, type="catalog"))["type"] == "catalog"
        assert (await ask(viewer, type="ping"))["type"] == "pong"
        assert (await ask(creator, type="test_alert", stream="s1", gift="rose", count=1))[
            "type"
        ] == "test_ok"
        assert (await ask(creator, type="payout", diamonds=1, id="payout-0001"))["type"] == "error"
        for i in range(2):  # 2,000 diamonds for the creator: the minimum payout
            big = dict(type="gift", stream="s1", gift="rose", count=1000, id=f"big-gift-{i}")
            assert (await ask(viewer, **big))["type"] == "gift_ok"
        paid = await ask(creator, type="payout", diamonds=2000, id="payout-0002")
        assert paid["type"] == "payout_ok"
        await viewer.wait_for(
            lambda: (
                {"gift", "goal", "top", "combo_end"} <= {e["kind"] for e in viewer.events["s1"]}
            ),
            what="gift, goal, top and combo_end events",
        )
        # A battle: invited, one declined, one accepted, played and ended (v1.2).
        rival = await open_client(token("cre2", Role.CREATOR))
        assert (await ask(rival, type="stream_open", stream="s2", title="Rival"))[
            "type"
        ] == "stream_ok"
        for n, answer in enumerate(("battle_decline", "battle_accept")):
            invite = dict(type="battle_invite", stream="s1", opponent="s2", duration_s=60)
            invited = await ask(creator, **invite, id=f"invite-{n:04}")
            assert invited["type"] == "battle_ok"
            assert (await ask(rival, type=answer, battle=invited["battle"]))["type"] == "battle_ok"
        gift = dict(type="gift", stream="s1", gift="rose", count=5, id="battle-gift-1")
        assert (await ask(viewer, **gift))["type"] == "gift_ok"
        await viewer.wait_for(
            lambda: any(e["kind"] == "battle" for e in viewer.events["s1"]), what="battle"
        )
        assert await h.money.end_battles(grace_ms=-61_000) == 1  # as the referee, a minute on
        await viewer.wait_for(
            lambda: any(e["kind"] == "battle_end" for e in viewer.events["s1"]), what="its end"
        )
        assert (await ask(creator, type="revoke_overlays", stream="s1"))["type"] == "revoke_ok"
        assert (await ask(creator, type="stream_close", stream="s1"))["type"] == "stream_ok"
        await viewer.wait_for(lambda: any(e["kind"] == "stream_ended" for e in viewer.events["s1"]))
        since = joined["offset"]
        rejoined = await ask(viewer, type="join", stream="s1", since=since)
        assert rejoined["recovered"]
        assert rejoined["missed"]
        assert (await ask(viewer, type="leave", stream="s1"))["type"] == "left"
        for client in clients:
            await client.close()

    received = [m for c in clients for m in c.received]
    types = {m["type"] for m in received}
    assert {m.__struct_config__.tag for m in protocol.Reply.__subclasses__()} <= types
    kinds = set()
    for message in received:
        errors = [e.message for e in schema_of(message["type"]).iter_errors(message)]
        assert not errors, f"{message}: {errors}"
        for event in message.get("events", []) + message.get("missed", []):
            kinds.add(event["kind"])
    assert kinds >= {"gift", "goal", "top", "combo_end", "stream_ended", "level_up",
                     "battle_declined", "battle_start", "battle", "battle_end"}  # fmt: skip
    for message in sent:
        errors = [e.message for e in schema_of(message["type"], client=True).iter_errors(message)]
        assert not errors, f"{message}: {errors}"
    # And the schemas do refuse: a gift without an id, a join with a bad stream name.
    gift = schema_of("gift", client=True)
    assert list(gift.iter_errors({"type": "gift", "stream": "s1", "gift": "rose"}))
    assert list(schema_of("join", client=True).iter_errors({"type": "join", "stream": "bad name!"}))
    assert list(schema_of("events").iter_errors({"type": "events", "stream": "s1", "events": [{}]}))


# -- configuration reference --------------------------------------------------------------


def test_configuration_reference_lists_every_setting_with_its_default() -> None:
    rows = {}
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        if line.startswith(f"| `{ENV_PREFIX}"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells[1]
    expected = {
        f"{ENV_PREFIX}{f.name.upper()}": "—" if f.default is None else f"`{f.default}`"
        for f in msgspec.structs.fields(Settings)
    }
    assert set(rows) == set(expected), "docs/configuration.md and config.Settings differ"
    for name, default in expected.items():
        assert rows[name] == default, f"{name}: documented default {rows[name]}, real {default}"


def test_every_variable_the_docs_mention_exists() -> None:
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.__struct_fields__}
    # The test suite's own, not settings: PostgreSQL for the store tests, the simulation's seeds.
    known |= {"GIFTRELAY_TEST_POSTGRES_URL", "GIFTRELAY_SIM_SEEDS", "GIFTRELAY_SIM_SEED"}
    files = [ROOT / "README.md", ROOT / "compose.yaml", ROOT / "Dockerfile"]
    files += sorted((ROOT / "docs").glob("*.md"))
    for path in files:
        for name in re.findall(r"\bGIFTRELAY_[A-Z_]*[A-Z]", path.read_text()):
            assert name in known, f"{path.name}: {name} is not a setting"
