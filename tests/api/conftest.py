"""Fixtures for the API: a broker with the dynamic-security plugin (no anonymous access),
InfluxDB, the app driven in-process over httpx, and keys of each kind."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.broker import mosquitto_config, write_bootstrap
from contract.influx import Influx
from contract.settings import Settings, load_settings
from nakhon.servers import InfluxDB, Mosquitto

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
