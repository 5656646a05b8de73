"""Fixtures for the API: a broker with the dynamic-security plugin (no anonymous access),
InfluxDB, the app driven in-process over httpx, and keys of each kind."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.broker import mosquitto_config, write_bootstrap
from contract.influx import Influx
from contract.settings import Settings, load_settings
from nakhon.servers import InfluxDB, Mosquitto
from tests.helpers import wait_until

ADMIN = ("nakhon_api", "admin-secret-for-tests")
INGEST = ("nakhon_ingest", "ingest-secret-for-tests")


@pytest.fixture
def secure_broker(workdir: Path) -> Iterator[Mosquitto]:
    dynsec = workdir / "mosquitto" / "dynamic-security.json"
    write_bootstrap(dynsec, ADMIN, INGEST)
    server = Mosquitto(workdir / "mosquitto", allow_anonymous=False, extra=mosquitto_config(dynsec))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def api_settings(workdir: Path, secure_broker: Mosquitto, influxdb: InfluxDB, influx: Influx) -> Settings:
    return load_settings(
        mqtt_port=secure_broker.port,
        mqtt_username=INGEST[0],
        mqtt_password=INGEST[1],
        broker_admin_username=ADMIN[0],
        broker_admin_password=ADMIN[1],
        influx_url=influxdb.url,
        data_dir=workdir / "data",
        ingest_stats_interval_s=1.0,
        ingest_rollup_interval_s=1.0,
        ingest_batch_ms=50,
        api_rate_per_key=100_000,
        api_rate_per_address=100_000,
    )


@dataclass
class Keys:
    admin: str
    read: str
    revoked: str
    city_admin: str  # admin of chiang_mai only


@pytest.fixture
def app(api_settings: Settings) -> FastAPI:
    return create_app(api_settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def keys(app: FastAPI) -> Keys:
    reg = app.state.registry
    _, admin = reg.create_key("ops", "admin")
    _, read = reg.create_key("agency", "read")
    gone, revoked = reg.create_key("old", "admin")
    reg.revoke_key(gone.id)
    _, city_admin = reg.create_key("cm-tech", "admin", "chiang_mai")
    return Keys(admin, read, revoked, city_admin)


def current(client: TestClient, path: str, since: datetime) -> Any:
    """The JSON of a current-values answer once it was read from storage after `since` (api.live reloads it
    within `api_live_refresh_s`): a test that has just written data waits for the answer that includes it."""
    def body() -> Any:
        r = client.get(path)
        assert r.status_code == 200, r.text
        doc = r.json()
        as_of = doc.get("as_of") or doc["metadata"]["as_of"]
        return doc if datetime.fromisoformat(as_of.replace("Z", "+00:00")) > since else None

    return wait_until(body, timeout=30, what=f"{path} read after {since.isoformat()}")
