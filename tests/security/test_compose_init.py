"""The start-up steps compose runs, run here as the same commands against real servers:
`nakhon db-init` (InfluxDB's admin, schema and service users from the environment) and
`nakhon broker-init --from-env --keep` (the broker's platform accounts), then the broker
loads what it wrote with the generated configuration."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from harness.verify.rig import MqttDevice
from nakhon.servers import InfluxDB, Mosquitto
from tests.security.platform import run_nakhon

pytestmark = pytest.mark.e2e

INFLUX_ENV = {"NAKHON_INFLUX_ADMIN_PASSWORD": "admin-" + "a" * 24, "NAKHON_INFLUX_INGEST_PASSWORD": "ingest-" + "b" * 24,
              "NAKHON_INFLUX_API_PASSWORD": "api-" + "c" * 24, "NAKHON_INFLUX_GRAFANA_PASSWORD": "grafana-" + "d" * 24,
              "NAKHON_INFLUX_ALERTS_PASSWORD": "alerts-" + "h" * 24}
BROKER_ENV = {"NAKHON_BROKER_ADMIN_PASSWORD": "broker-admin-" + "e" * 20, "NAKHON_INGEST_MQTT_PASSWORD": "broker-ingest-" + "f" * 20,
              "NAKHON_OBSERVER_MQTT_PASSWORD": "broker-observer-" + "g" * 20, "NAKHON_ALERTS_MQTT_PASSWORD": "broker-alerts-" + "i" * 20}


def test_db_init_sets_up_authentication_from_the_environment(tmp_path: Path) -> None:
    with InfluxDB(tmp_path / "influxdb", auth=True) as db:
        env = {"NAKHON_INFLUX_URL": db.url, **INFLUX_ENV}
        missing = run_nakhon("db-init", env={"NAKHON_INFLUX_URL": db.url})
        assert missing.returncode == 2 and "NAKHON_INFLUX_ADMIN_PASSWORD" in missing.stderr
        for _ in range(2):  # idempotent: a restarted stack runs it again
            r = run_nakhon("db-init", env=env)
            assert r.returncode == 0, r.stderr
        anon = httpx.get(f"{db.url}/query", params={"q": "SHOW DATABASES"})
        assert anon.status_code == 401
        api = httpx.Client(base_url=db.url, auth=("nakhon_api", INFLUX_ENV["NAKHON_INFLUX_API_PASSWORD"]))
        assert api.get("/query", params={"q": "SHOW RETENTION POLICIES", "db": "nakhon"}).status_code == 200
        assert api.post("/write", params={"db": "nakhon"}, content=b"air,city=phuket,device=pk-x-01 pm25=1").status_code == 403
        ingest = httpx.Client(base_url=db.url, auth=("nakhon_ingest", INFLUX_ENV["NAKHON_INFLUX_INGEST_PASSWORD"]))
        assert ingest.post("/write", params={"db": "nakhon"}, content=b"air,city=phuket,device=pk-x-01 pm25=1").status_code == 204
        wrong = run_nakhon("db-init", env={**env, "NAKHON_INFLUX_ADMIN_PASSWORD": "not-the-one-" + "z" * 20})
        assert wrong.returncode == 1 and "cannot log in with the configured admin password" in wrong.stderr


def test_broker_init_from_env_is_what_the_broker_loads(tmp_path: Path) -> None:
    path = tmp_path / "mosquitto" / "dynamic-security.json"
    missing = run_nakhon("broker-init", "--file", str(path), "--keep", "--from-env")
    assert missing.returncode == 2 and "NAKHON_BROKER_ADMIN_PASSWORD" in missing.stderr and not path.exists()
    r = run_nakhon("broker-init", "--file", str(path), "--keep", "--from-env", env=BROKER_ENV)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # nothing secret printed
    written = path.read_text()
    assert all(pw not in written for pw in BROKER_ENV.values())  # hashed
    again = run_nakhon("broker-init", "--file", str(path), "--keep", "--from-env", env={k: v + "x" for k, v in BROKER_ENV.items()})
    assert again.returncode == 0 and path.read_text() == written  # a restart keeps the accounts (and the devices')
    assert {c["username"] for c in json.loads(written)["clients"]} == {"nakhon_api", "nakhon_ingest", "nakhon_observer", "nakhon_alerts"}
    with Mosquitto(tmp_path / "mosquitto", allow_anonymous=False, dynsec_file=path) as broker:
        ingest = MqttDevice(broker.port, "nakhon_ingest_0", "nakhon_ingest", BROKER_ENV["NAKHON_INGEST_MQTT_PASSWORD"])
        stranger = MqttDevice(broker.port, "stranger-01")
        observer = MqttDevice(broker.port, "nakhon_observer_1", "nakhon_observer", BROKER_ENV["NAKHON_OBSERVER_MQTT_PASSWORD"])
        alerts = MqttDevice(broker.port, "nakhon_alerts", "nakhon_alerts", BROKER_ENV["NAKHON_ALERTS_MQTT_PASSWORD"])
        alerts_elsewhere = MqttDevice(broker.port, "nakhon_alerts_2", "nakhon_alerts", BROKER_ENV["NAKHON_ALERTS_MQTT_PASSWORD"])
        try:
            assert ingest.accepted() and observer.accepted() and not stranger.accepted(5)
            assert observer.subscribe("nakhon/v1/#")[0].startswith("Granted")
            assert observer.publish("nakhon/v1/chiang_mai/cm-air-001/config", b"{}") == "Not authorized"  # read-only
            # the alert evaluator: its one client id; reads telemetry, publishes alerts, nothing else
            assert alerts.accepted() and not alerts_elsewhere.accepted(5)
            assert alerts.subscribe("nakhon/v1/+/+/telemetry")[0].startswith("Granted")
            assert alerts.publish("nakhon/v1/phuket/alerts", b"{}") in ("Success", "No matching subscribers")
            assert alerts.publish("nakhon/v1/phuket/pk-water-001/telemetry", b"{}") == "Not authorized"
            assert alerts.publish("nakhon/v1/phuket/pk-water-001/config", b"{}") == "Not authorized"
        finally:
            for d in (ingest, stranger, observer, alerts, alerts_elsewhere):
                d.close()
