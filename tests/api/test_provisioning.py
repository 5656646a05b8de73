"""A device provisioned through the API connects to the real broker with the returned
credentials and its readings land through a real ingest; it cannot publish as another
device; rotated credentials replace the old ones; once revoked it cannot connect."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from fastapi.testclient import TestClient

from contract.influx import Influx
from contract.payload import encode_reading
from contract.settings import Settings
from tests.api.conftest import Keys
from tests.conftest import start_ingest
from tests.helpers import count, wait_ingest_idle, wait_until


class Device:
    """A device as firmware would be: MQTT 5, credentials from config.json."""

    def __init__(self, cfg: dict[str, Any], client_id: str | None = None, password: str | None = None) -> None:
        self.cfg = cfg
        self.connack = threading.Event()
        self.reason: str = ""
        self.acks: dict[int, str] = {}
        self.subacks: dict[int, list[str]] = {}
        self.disconnected = threading.Event()
        m = cfg["mqtt"]
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or m["client_id"], protocol=mqtt.MQTTv5)
        self.client.username_pw_set(m["username"], password or m["password"])
        self.client.on_connect = self._on_connect
        self.client.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, str(rc))
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnected.set()
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subacks.__setitem__(mid, [str(x) for x in codes])
        self.client.connect(m["host"], m["port"])
        self.client.loop_start()

    def _on_connect(self, c: mqtt.Client, u: object, f: object, rc: mqtt.ReasonCode, p: object) -> None:
        self.reason = str(rc)
        self.connack.set()

    def accepted(self) -> bool:
        assert self.connack.wait(10), "no CONNACK"
        return self.reason == "Success"

    def publish(self, topic: str, payload: bytes) -> str:
        info = self.client.publish(topic, payload, qos=1)
        wait_until(lambda: info.mid in self.acks, 10, 0.02, "PUBACK")
        return self.acks[info.mid]

    def subscribe(self, topic: str) -> list[str]:
        _, mid = self.client.subscribe(topic, 1)
        wait_until(lambda: mid in self.subacks, 10, 0.02, "SUBACK")
        return self.subacks[mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


HARDWARE = [{"name": "pm", "type": "pms5003", "uart": 1, "rx": 16, "tx": 17}]


def _provision(client: TestClient, key: str, device: str, city: str = "chiang_mai") -> dict[str, Any]:
    body = {"id": device, "city": city, "kind": "air", "sensors": ["pm25", "pm10"], "lat": 18.79, "lon": 98.98, "interval_s": 60,
            "hardware": HARDWARE}
    r = client.post("/v1/devices", json=body, headers={"X-API-Key": key})
    assert r.status_code == 201, r.text
    return r.json()


def test_provisioned_device_lands_cannot_impersonate_and_is_shut_out_when_revoked(
    client: TestClient, keys: Keys, api_settings: Settings, workdir: Path, influx: Influx
) -> None:
    out = _provision(client, keys.admin, "cm-air-001")
    cfg = out["config"]
    assert cfg["mqtt"]["username"] == cfg["mqtt"]["client_id"] == "cm-air-001"
    assert cfg["topics"]["telemetry"] == "nakhon/v1/chiang_mai/cm-air-001/telemetry"
    # shaped as the firmware reads it (firmware/lib/config.py); the technician adds `wifi` on site
    assert {"device_id", "city", "kind", "lat", "lon", "interval_s", "sensors", "mqtt"} <= cfg.keys()
    assert cfg["sensors"] == HARDWARE and cfg["metrics"] == ["pm25", "pm10"]
    assert {"host", "port", "tls", "username", "password", "keepalive_s"} <= cfg["mqtt"].keys()
    # shown once: never in the registry listing, and the registry keeps only a hash
    listing = client.get("/v1/devices", headers={"X-API-Key": keys.read}).text
    assert cfg["mqtt"]["password"] not in listing
    assert cfg["mqtt"]["password"].encode() not in Path(api_settings.registry_path).read_bytes()
    assert cfg["mqtt"]["password"].encode() not in (workdir / "mosquitto" / "dynamic-security.json").read_bytes()
    _provision(client, keys.admin, "cm-air-002")

    ingest = start_ingest(api_settings, workdir)  # the ingest logs in with its own credentials
    try:
        dev = Device(cfg)
        assert dev.accepted()
        now = time.time()
        ack = dev.publish(cfg["topics"]["telemetry"], encode_reading(now, 1, {"pm25": 21.5, "pm10": 40.0}))
        assert ack in ("Success", "No matching subscribers")
        wait_until(lambda: count(influx, "air", "pm25", "device = 'cm-air-001'") == 1, 30, what="reading to land")

        # impersonation: another device's topic, another city's topic, and a forged status are refused by the broker
        for topic in ("nakhon/v1/chiang_mai/cm-air-002/telemetry", "nakhon/v1/phuket/cm-air-001/telemetry",
                      "nakhon/v1/chiang_mai/cm-air-002/status"):
            assert dev.publish(topic, encode_reading(now + 1, 2, {"pm25": 999.0})) == "Not authorized"
        # it may read its own config only, and nothing else
        assert dev.subscribe(cfg["topics"]["config"]) == ["Granted QoS 1"]
        for other in ("nakhon/v1/chiang_mai/cm-air-002/config", "nakhon/v1/+/+/telemetry", "#"):
            assert dev.subscribe(other) == ["Not authorized"]
        wait_ingest_idle(influx)
        assert count(influx, "air", "pm25", "device = 'cm-air-002'") == 0
        assert count(influx, "air", "pm25") == 1

        # a client id other than its own is refused even with the right password
        assert not Device(cfg, client_id="someone-else").accepted()

        # rotate: the old password stops working, the new one works
        r = client.post("/v1/devices/cm-air-001/rotate", headers={"X-API-Key": keys.admin})
        assert r.status_code == 200, r.text
        new_cfg = r.json()["config"]
        assert new_cfg["mqtt"]["password"] != cfg["mqtt"]["password"]
        assert dev.disconnected.wait(10), "the live session was not dropped on rotation"
        dev.close()
        assert not Device(cfg).accepted()
        dev = Device(new_cfg)
        assert dev.accepted()

        # revoke: kicked at once, and can no longer connect
        r = client.post("/v1/devices/cm-air-001/revoke", headers={"X-API-Key": keys.admin})
        assert r.status_code == 200 and r.json()["state"] == "retired"
        assert dev.disconnected.wait(10), "the revoked device was not disconnected"
        dev.close()
        assert not Device(new_cfg).accepted()
        # a retired id is never handed out again
        body = {"id": "cm-air-001", "city": "chiang_mai", "kind": "air", "sensors": ["pm25"], "lat": 18.8, "lon": 98.9}
        assert client.post("/v1/devices", json=body, headers={"X-API-Key": keys.admin}).status_code == 409
    finally:
        ingest.stop()


def test_city_bound_admin_manages_only_its_city(client: TestClient, keys: Keys) -> None:
    body = {"id": "pk-air-001", "city": "phuket", "kind": "air", "sensors": ["pm25"], "lat": 7.88, "lon": 98.39}
    assert client.post("/v1/devices", json=body, headers={"X-API-Key": keys.city_admin}).status_code == 403
    assert client.post("/v1/devices", json={**body, "id": "cm-air-009", "city": "chiang_mai"},
                       headers={"X-API-Key": keys.city_admin}).status_code == 201
