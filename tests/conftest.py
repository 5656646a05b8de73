"""Fixtures that start real servers: each test gets its own, on free ports.

Nothing has to be running beforehand: Mosquitto and InfluxDB are started
from the OS packages with the project's own config (nakhon.servers), the
ingest as a real `nakhon ingest` process.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.influx import Influx
from contract.settings import Settings, load_settings
from nakhon.procs import Service
from nakhon.servers import InfluxDB, Mosquitto

ROOT = Path(__file__).resolve().parent.parent
TEST_VAR = ROOT / "var" / "test"


@pytest.fixture
def workdir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A folder inside the working tree (git-ignored) for this test's servers and data."""
    path = TEST_VAR / f"{request.node.name[:40]}-{uuid.uuid4().hex[:6]}".replace("/", "_").replace("[", "_").replace("]", "")
    path.mkdir(parents=True)
    yield path
    if not request.session.testsfailed:  # keep the evidence when something failed
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def broker(workdir: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(workdir / "mosquitto")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def influxdb(workdir: Path) -> Iterator[InfluxDB]:
    server = InfluxDB(workdir / "influxdb")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def influx(influxdb: InfluxDB) -> Iterator[Influx]:
    client = Influx(influxdb.url)
    client.ensure_schema()
    yield client
    client.close()


@pytest.fixture
def settings(workdir: Path, broker: Mosquitto, influxdb: InfluxDB) -> Settings:
    return load_settings(
        mqtt_port=broker.port,
        influx_url=influxdb.url,
        data_dir=workdir / "data",
        ingest_stats_interval_s=1.0,
        api_port=18080,
    )


def start_ingest(settings: Settings, workdir: Path, name: str = "ingest", workers: int | None = None) -> Service:
    svc = Service(name, ["ingest"] + (["--workers", str(workers)] if workers else []), settings, workdir / "logs")
    svc.start()
    if not svc.wait_log('"msg":"connected"', 30):
        raise AssertionError(f"ingest did not connect:\n{svc.log_path.read_text()[-3000:]}")
    return svc


@pytest.fixture
def ingest(settings: Settings, workdir: Path, influx: Influx) -> Iterator[Service]:
    """A running `nakhon ingest` process connected to this test's servers."""
    svc = start_ingest(settings, workdir)
    yield svc
    svc.stop()


# --- tiers ------------------------------------------------------------------
TIERS = ("unit", "integration", "e2e")
_SERVERS = {"broker", "secure_broker", "influxdb"}
_PLATFORM = {"ingest", "settings", "api_settings"}


def _tier(item: pytest.Item) -> str:
    """An explicit marker wins; else the servers the test's fixtures start decide."""
    marked = {m.name for m in item.iter_markers() if m.name in TIERS}
    if len(marked) > 1:  # `-m` matches any of them, so the test would run in each of those tiers
        raise pytest.UsageError(f"{item.nodeid} is marked {' and '.join(sorted(marked))}: give it one tier "
                                "(a module's pytestmark and a test's own marker both count)")
    if marked:
        return marked.pop()
    names = set(getattr(item, "fixturenames", ()))
    if names & _PLATFORM or len(names & _SERVERS) > 1:
        return "e2e"
    if names & _SERVERS:
        return "integration"
    return "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test its tier marker (so `-m unit` selects it) and run the fastest tier first."""
    for item in items:
        tier = _tier(item)
        if not any(m.name == tier for m in item.iter_markers()):
            item.add_marker(tier)
        item.stash[_TIER] = tier
    items.sort(key=lambda it: TIERS.index(it.stash[_TIER]))  # stable: file order within a tier


_TIER = pytest.StashKey[str]()


@pytest.fixture(autouse=True)
def _unit_tier_starts_nothing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit test that starts a process is in the wrong tier: fail it, saying so."""
    if request.node.stash.get(_TIER, None) != "unit":
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{request.node.nodeid} starts a process: mark it integration or e2e (tests/conftest.py)")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
