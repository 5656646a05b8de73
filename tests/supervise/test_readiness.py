"""The API's readiness tells the truth: not ready while no ingest worker moves readings, ready while one does.

Before, /readyz answered 200 as long as the broker and InfluxDB answered, with the ingest dead."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from contract.influx import Influx
from contract.settings import Settings
from nakhon.procs import settings_env
from nakhon.servers import InfluxDB
from tests.conftest import start_ingest
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(settings: Settings, influx: Influx) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def ready(client: TestClient) -> tuple[int, dict]:
    r = client.get("/readyz")
    return r.status_code, r.json()


def health(settings: Settings) -> tuple[int, str]:
    """`nakhon ingest --health`, as the compose healthcheck runs it."""
    out = subprocess.run([sys.executable, "-m", "nakhon", "ingest", "--health"], env=settings_env(settings), capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout


def test_readiness_follows_the_ingest(client: TestClient, settings: Settings, workdir: Path, influxdb: InfluxDB) -> None:
    code, body = ready(client)
    assert code == 503 and body["broker"] and body["influxdb"]
    assert body["ingest"]["flowing"] is False
    assert body["ingest"]["problems"] == [f"no ingest worker reported in the last {body['ingest']['window_s']} s"]

    ingest = start_ingest(settings, workdir)
    try:
        wait_until(lambda: ready(client)[0] == 200, 30, what="ready with the ingest running")
        code, body = ready(client)
        [worker] = body["ingest"]["workers"]
        assert worker["connected"] and worker["spool_depth"] == 0 and not worker["spool_growing"]
        wait_until(lambda: health(settings)[0] == 0, 30, what="nakhon ingest --health to say ok")
        assert health(settings)[1].startswith("ingest ok: 1 worker(s)")
        ingest.stop()  # its last health file says stopped
        assert health(settings) == (1, "ingest down: no worker reports its health\n")
        ingest.start()
        wait_until(lambda: ready(client)[0] == 200, 30, what="ready again")
        ingest.kill()
        wait_until(lambda: ready(client)[0] == 503, 30, what="not ready once the ingest is dead")
        assert "no ingest worker reported" in ready(client)[1]["ingest"]["problems"][0]
    finally:
        ingest.stop()

    influxdb.kill()
    code, body = ready(client)
    assert code == 503 and body["influxdb"] is False
