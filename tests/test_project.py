"""The project's own promises: every command has --help, the code is ruff-clean,
the compose file names what the code expects, imports run the way DESIGN.md says."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from contract.settings import Settings
from nakhon.cli import build_parser

pytestmark = pytest.mark.integration  # ruff, mypy and every command's --help as processes

ROOT = Path(__file__).resolve().parent.parent


def _commands(parser: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    import argparse

    out = [prefix]
    for action in parser._actions:  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _commands(sub, (*prefix, name))
    return out


@pytest.mark.parametrize("cmd", _commands(build_parser()), ids=lambda c: " ".join(c) or "nakhon")
def test_every_command_has_help(cmd: tuple[str, ...]) -> None:
    proc = subprocess.run([sys.executable, "-m", "nakhon", *cmd, "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "usage: nakhon" in proc.stdout


def test_dev_script_has_help() -> None:
    proc = subprocess.run(["bash", str(ROOT / "dev"), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "./dev test" in proc.stdout


def test_ruff_clean() -> None:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "."], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./dev test" in ci
    assert "./dev test" in (ROOT / "README.md").read_text()
    assert "./dev up" in (ROOT / "README.md").read_text()


def test_each_test_is_in_one_tier() -> None:
    """`-m unit`, `-m integration` and `-m e2e` split the suite: no test is picked by two (a module's
    marker and a test's own would both match) and none by none."""
    def collect(*args: str) -> list[str]:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode in (0, 5), proc.stdout[-3000:] + proc.stderr[-3000:]
        return [line for line in proc.stdout.splitlines() if "::" in line]

    tiers = {tier: collect("-m", tier) for tier in ("unit", "integration", "e2e")}
    picked = [nodeid for ids in tiers.values() for nodeid in ids]
    twice = sorted({nodeid for nodeid in picked if picked.count(nodeid) > 1})
    assert not twice, f"picked by two tiers: {twice}"
    assert sorted(picked) == sorted(collect()), "a test no tier picks"


def test_compose_matches_the_code() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"mosquitto", "influxdb", "ingest", "api", "alerts", "simulator"} <= set(services)
    assert services["influxdb"]["image"].startswith("influxdb:1.")  # the v1 API the code speaks
    assert services["simulator"]["profiles"] == ["sim"]
    fields = set(Settings.model_fields)
    for name in ("ingest", "api", "alerts", "simulator"):
        svc = services[name]
        assert svc["build"] == "."
        env = svc["environment"]
        for key in env:  # NAKHON_API_KEY: the admin key the CLI and the simulator's --provision read
            assert key.startswith("NAKHON_") and (key.removeprefix("NAKHON_").lower() in fields or key == "NAKHON_API_KEY"), key
        assert env["NAKHON_MQTT_HOST"] == "mosquitto" and env["NAKHON_INFLUX_URL"] == "http://influxdb:8086"
        assert env["NAKHON_INFLUX_DB"] == Settings().influx_db
    assert services["api"]["ports"] == ["8443:8443"] and services["api"]["environment"]["NAKHON_API_TLS_CERT_FILE"]
    for name in ("mosquitto", "influxdb", "api"):
        assert "healthcheck" in services[name]
    broker_conf = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    for line in ("max_inflight_messages 0", "max_queued_messages 1000000", "persistence true"):
        assert line in broker_conf


# --- import direction (DESIGN.md) -------------------------------------------
COMPONENTS = ("ingest", "api", "alerts", "simulators", "dashboards")


def _imports(folder: Path) -> set[tuple[Path, str]]:
    out = set()
    for path in folder.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                out |= {(path, a.name.split(".")[0]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.add((path, node.module.split(".")[0]))
    return out


SHIPPED = ("contract", *COMPONENTS, "nakhon", "harness")


def test_contract_imports_no_component() -> None:
    bad = [(str(p), m) for p, m in _imports(ROOT / "contract") if m in (*COMPONENTS, "nakhon", "harness")]
    assert not bad


@pytest.mark.parametrize("package", SHIPPED)
def test_shipped_code_never_reaches_into_tests(package: str) -> None:
    """Neither by import nor by path: an installed copy has no tests/ folder."""
    bad = [(str(p.relative_to(ROOT)), m) for p, m in _imports(ROOT / package) if m == "tests"]
    by_path = [str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*.py")
               if re.search(r"""["']tests["']|["'/]tests/""", p.read_text())]
    assert not bad and not by_path, (bad, by_path)


def test_signal_handlers_go_through_the_relay() -> None:
    """A Python signal handler that sets an event can deadlock the main loop waiting on it
    (contract/sigrelay.py): shipped code routes its signals through `route`, or ignores them."""
    bad = []
    for package in SHIPPED:
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "contract" / "sigrelay.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "signal"
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "signal" and len(node.args) == 2
                        and not (isinstance(node.args[1], ast.Attribute) and node.args[1].attr in ("SIG_IGN", "SIG_DFL"))):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, bad


def test_only_the_cli_dispatches_to_the_harness() -> None:
    """The product's commands stand apart from the measuring harness (benchmarks, peers, scenarios)."""
    bad = [(str(p.relative_to(ROOT)), m) for pkg in ("contract", *COMPONENTS, "nakhon") for p, m in _imports(ROOT / pkg)
           if m == "harness" and p != ROOT / "nakhon" / "cli.py"]
    assert not bad


def test_the_api_writes_influxql_in_one_place() -> None:
    """Every InfluxQL statement the API sends is built in api/queries.py (SQLite statements, run by `.execute`, are not InfluxQL)."""
    statement = re.compile(r"""["'](SELECT|SHOW|DROP|DELETE|CREATE) """)
    bad = [f"{p.relative_to(ROOT)}: {line.strip()}" for p in (ROOT / "api").rglob("*.py") if p.name not in ("queries.py", "registry.py")
           for line in p.read_text().splitlines() if statement.search(line) and ".execute(" not in line]
    assert not bad


@pytest.mark.parametrize("component", COMPONENTS)
def test_components_do_not_import_each_other(component: str) -> None:
    others = {*COMPONENTS, "nakhon", "harness"} - {component}
    bad = [(str(p.relative_to(ROOT)), m) for p, m in _imports(ROOT / component) if m in others]
    assert not bad


# --- types --------------------------------------------------------------------
def test_mypy_strict_on_the_contract_and_the_ingest() -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "contract", "ingest", "alerts"], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_mypy_on_every_python_package() -> None:
    """simulators/mpy is MicroPython (checked against the ESP32 stubs with the firmware)."""
    pkgs = ["contract", "ingest", "api", "simulators", "dashboards", "nakhon", "harness"]
    proc = subprocess.run([sys.executable, "-m", "mypy", *pkgs, "--exclude", "simulators/mpy"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
