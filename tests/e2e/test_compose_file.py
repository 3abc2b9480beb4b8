"""compose/docker-compose.yml stays valid: YAML, references, and flags each service accepts.

No Docker engine runs here, so the file is checked, not run: every service's
command uses only flags that the service's own argument parser (or `--help`) lists.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse the compose file")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose" / "docker-compose.yml"
DOCKERFILE = ROOT / "compose" / "Dockerfile"
PARSER_BUILDERS = ("build_parser", "make_parser", "create_parser", "parser", "get_parser")
FLAG_RE = re.compile(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)")


def _scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _flags_from_parser(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}


def accepted_flags(program: str) -> set[str]:
    """The long flags `program` accepts: from its parser builder if it has one, else `--help`."""
    scripts = _scripts()
    if program in scripts:
        module_name, _, func = scripts[program].partition(":")
        module = importlib.import_module(module_name)
        for name in PARSER_BUILDERS:
            builder = getattr(module, name, None)
            if callable(builder):
                try:
                    parser = builder()
                except TypeError:
                    continue
                if isinstance(parser, argparse.ArgumentParser):
                    return _flags_from_parser(parser)
        exe = shutil.which(program, path=str(Path(sys.executable).parent)) or shutil.which(program)
        argv = [exe] if exe else [sys.executable, "-c", f"import sys; from {module_name} import {func}; "
                                                     f"sys.exit({func}())"]
    else:
        argv = [program]
    proc = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    text = proc.stdout + proc.stderr
    flags = set(FLAG_RE.findall(text))
    assert flags, f"{program} --help listed no flags:\n{text}"
    return flags


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_structure(compose):
    services = compose["services"]
    assert {"etcd", "region", "scheduler"} <= set(services)
    agents = [n for n, s in services.items() if s["command"][0] == "ferry-host"]
    assert len(agents) == 3
    volumes = set(compose.get("volumes") or {})
    for name, svc in services.items():
        assert svc["build"]["dockerfile"] == "compose/Dockerfile", name
        assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
        assert isinstance(svc["command"], list) and svc["command"], name
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for v in svc.get("volumes", []):
            source = v.split(":", 1)[0]
            if not source.startswith(("/", ".")):
                assert source in volumes, f"{name} mounts undeclared volume {source}"
    for name in agents:
        svc = services[name]
        assert svc["privileged"] is True
        assert "/dev/kvm:/dev/kvm" in svc["devices"]
        assert any(v.startswith("shared:") for v in svc["volumes"]), f"{name} lacks the shared storage"
    # Each agent has its own identity and state.
    ids = {_flag_values(services[n]["command"])["--host-id"] for n in agents}
    assert len(ids) == 3


def _flag_values(command: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, arg in enumerate(command):
        if arg.startswith("--"):
            flag, eq, value = arg.partition("=")
            if not eq and i + 1 < len(command) and not command[i + 1].startswith("--"):
                value = command[i + 1]
            out[flag] = value
    return out


def test_compose_addresses_match_services(compose):
    services = compose["services"]
    region = _flag_values(services["region"]["command"])
    assert region["--scheduler"] == "scheduler:7710"
    assert region["--etcd"] == "etcd:2379"
    sched = _flag_values(services["scheduler"]["command"])
    assert sched["--region"] == "region:7700"
    for name, svc in services.items():
        if svc["command"][0] == "ferry-host":
            f = _flag_values(svc["command"])
            assert f["--advertise"] == f"{name}:7720"
            assert f["--region"] == "region:7700" and f["--etcd"] == "etcd:2379"


@pytest.mark.parametrize("service", ["etcd", "region", "scheduler", "host1", "host2", "host3"])
def test_compose_command_flags_are_accepted(compose, service):
    command = compose["services"][service]["command"]
    program = command[0]
    if program.startswith("/") and not Path(program).exists():
        pytest.skip(f"{program} is not installed here")
    accepted = accepted_flags(program)
    used = set(_flag_values(command))
    unknown = used - accepted
    assert not unknown, f"{service}: {program} does not accept {sorted(unknown)}"


def test_dockerfile_installs_what_the_services_need():
    text = DOCKERFILE.read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    for pkg in ("qemu-system-x86", "qemu-utils", "etcd-server"):
        assert pkg in text
    assert "pip install ." in text
    for path in re.findall(r"^COPY (\S+)", text, flags=re.M):
        assert (ROOT / path).exists(), f"Dockerfile copies missing {path}"
