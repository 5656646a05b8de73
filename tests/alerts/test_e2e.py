"""The real path: simulated readings through the real broker -> `nakhon alerts run` -> webhook, MQTT, InfluxDB -> the API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from contract.alerts import ALERTS_FILTER
from contract.influx import Influx
from contract.payload import encode_batch, encode_reading
from contract.settings import Settings
from nakhon.procs import Service
from tests.alerts.receiver import Receiver
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

SECRET = "e2e-hook-secret"
RULES = {
    "version": "e2e-1",
    "defaults": {"silent": {"intervals": 3, "interval_s": 1, "min_silence_s": 3}},
    "stations": {"pk-water-002": {"water": {"warning_cm": 150, "flood_cm": 200}}},
}


class Device:
    """A device publishing telemetry at QoS 1 (client id = username = its id)."""

    def __init__(self, port: int, city: str, device: str) -> None:
        self.topic = f"nakhon/v1/{city}/{device}/telemetry"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv311)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.seq = 0
        self.sent: dict[float, float] = {}  # value -> publish time

    def send(self, metrics: dict[str, float], ts: float | None = None) -> None:
        self.seq += 1
        info = self.client.publish(self.topic, encode_reading(ts or time.time(), self.seq, metrics), qos=1)
        info.wait_for_publish(10)
        self.sent[next(iter(metrics.values()))] = time.time()

    def batch(self, readings: list[tuple[float, dict[str, float | str]]]) -> None:
        rows = []
        for ts, m in readings:
            self.seq += 1
            rows.append((ts, self.seq, m))
        self.client.publish(self.topic, encode_batch(rows), qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Listener:
    """Anyone allowed reading nakhon/v1/{city}/alerts."""

    def __init__(self, port: int) -> None:
        self.docs: list[dict[str, Any]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="e2e_listener", protocol=mqtt.MQTTv311)
        self.client.on_message = lambda _c, _u, msg: self.docs.append(json.loads(msg.payload))
        self.client.on_connect = lambda c, *_: c.subscribe(ALERTS_FILTER, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def rig(settings: Settings, workdir: Path, influx: Influx) -> Iterator[tuple[Receiver, Service]]:
    rules = workdir / "rules.json"
    rules.write_text(json.dumps(RULES))
    with Receiver(SECRET, fail_first=3) as rx:
        svc = Service("alerts", ["alerts", "run"], settings, workdir / "logs", alerts_webhook_urls=rx.url, alerts_webhook_secret=SECRET,
                      alerts_rules_file=rules, alerts_retry_cap_s=2.0)
        svc.start()
        assert svc.wait_log('"msg":"connected"', 30), svc.log_path.read_text()[-3000:]
        yield rx, svc
        svc.stop()


def _seen(rx: Receiver, device: str) -> list[tuple[str, str]]:
    return [(e["rule"], e["event"]) for e in rx.events() if e["device"] == device]


def test_flood_peak_silence_and_replay_through_the_platform(rig: tuple[Receiver, Service], settings: Settings, influx: Influx) -> None:
    rx, _svc = rig
    listener = Listener(settings.mqtt_port)
    gauge = Device(settings.mqtt_port, "phuket", "pk-water-001")
    low = Device(settings.mqtt_port, "phuket", "pk-water-002")  # its own, lower levels (station override)
    replaying = Device(settings.mqtt_port, "phuket", "pk-water-003")
    try:
        for level in (100.0, 190.0, 262.0):
            gauge.send({"water_level_cm": level})
        low.send({"water_level_cm": 160.0})
        wait_until(lambda: {("water_warning", "opened"), ("water_flood", "opened")} <= set(_seen(rx, "pk-water-001")), timeout=60,
                   what="warning and flood at the webhook")
        gauge.send({"water_level_cm": 120.0})
        wait_until(lambda: _seen(rx, "pk-water-001").count(("water_flood", "closed")) == 1
                   and ("water_warning", "closed") in _seen(rx, "pk-water-001"), timeout=60, what="both closed")
        # a day of buffered readings with a flood in it, replayed now: history, not a notification
        t0 = time.time() - 86400
        replaying.batch([(t0 + i * 600, {"water_level_cm": 280.0 if 30 <= i < 40 else 90.0}) for i in range(100)])
        # pk-water-002 goes silent: its alert after 3 intervals, closed when it returns
        wait_until(lambda: ("silent", "opened") in _seen(rx, "pk-water-002"), timeout=60, what="silent alert")
        low.send({"water_level_cm": 161.0})
        wait_until(lambda: ("silent", "closed") in _seen(rx, "pk-water-002"), timeout=60, what="silent closed")

        events = rx.events()
        assert len({e["id"] for e in events}) == len(events)  # each once
        assert rx.bad_signatures == 0 and len(rx.attempts) == len(events) + 3  # three refused, the rest accepted first time
        assert _seen(rx, "pk-water-003") == []
        first = next(e for e in events if e["device"] == "pk-water-001" and e["rule"] == "water_warning" and e["event"] == "opened")
        assert first["value"] == 190.0 and first["threshold"] == 180.0 and first["rules_version"] == "e2e-1"
        assert "ระดับน้ำถึงระดับเฝ้าระวัง" in first["message_th"] and "Water at warning level" in first["message_en"]
        assert ("water_warning", "opened") in _seen(rx, "pk-water-002")  # 160 cm: over its own 150 cm
        body = rx.accepted[0]
        assert isinstance(body["text"], str) and body["text"]  # what a chat service's incoming webhook shows

        wait_until(lambda: {e["id"] for e in events} <= {d["id"] for d in listener.docs}, timeout=30, what="events on the alerts topic")

        app = create_app(settings)
        with TestClient(app) as client:
            def get(**q: str) -> list[dict[str, Any]]:
                r = client.get("/v1/cities/phuket/alerts", params=q)
                assert r.status_code == 200, r.text
                return r.json()["alerts"]

            wait_until(lambda: any(a["device"] == "pk-water-003" for a in get(state="past")), timeout=30, what="past alert stored")
            open_now = get()
            assert {(a["device"], a["rule"]) for a in open_now} == {("pk-water-002", "water_warning")}
            history = get(state="all")
            closed = {(a["device"], a["rule"]) for a in history if a["state"] == "closed"}
            assert {("pk-water-001", "water_warning"), ("pk-water-001", "water_flood"), ("pk-water-002", "silent")} <= closed
            past = [a for a in get(state="past") if a["device"] == "pk-water-003"]
            assert sorted((a["rule"], a["peak"]) for a in past) == [("water_flood", 280.0), ("water_warning", 280.0)]
            assert all(a["late"] for a in past)
            assert get(state="all", rule="water_flood", device="pk-water-001")[0]["events"] == 2

            registry = app.state.registry
            _, admin = registry.create_key("duty officer", "admin", city="phuket")
            _, other = registry.create_key("chiang mai", "admin", city="chiang_mai")
            alert_id = open_now[0]["id"]
            assert client.post(f"/v1/cities/phuket/alerts/{alert_id}/ack").status_code == 401
            assert client.post(f"/v1/cities/phuket/alerts/{alert_id}/ack", headers={"X-API-Key": other}).status_code == 403
            assert client.get("/v1/cities/phuket/alerts", headers={"X-API-Key": other}).status_code == 403
            r = client.post(f"/v1/cities/phuket/alerts/{alert_id}/ack", headers={"X-API-Key": admin})
            assert r.status_code == 200 and r.json()["by"] == "duty officer"
            assert get()[0]["acknowledged"]["by"] == "duty officer"
            assert client.post("/v1/cities/phuket/alerts/phuket.pk-water-001.silent.1/ack", headers={"X-API-Key": admin}).status_code == 404
    finally:
        for c in (gauge, low, replaying, listener):
            c.close()


def test_killed_mid_episode_no_duplicate_and_no_missed_close(rig: tuple[Receiver, Service], settings: Settings) -> None:
    rx, svc = rig
    gauge = Device(settings.mqtt_port, "phuket", "pk-water-001")
    try:
        gauge.send({"water_level_cm": 200.0})
        wait_until(lambda: ("water_warning", "opened") in _seen(rx, "pk-water-001"), timeout=60, what="warning opened")
        svc.kill()  # SIGKILL: no goodbye
        gauge.send({"water_level_cm": 260.0})  # while it is down: the broker keeps them for its session
        gauge.send({"water_level_cm": 100.0})
        svc.start()
        wait_until(lambda: ("water_warning", "closed") in _seen(rx, "pk-water-001"), timeout=60, what="the close after the restart")
        # a marker after everything: delivery is in order, so a repeat of anything earlier would have come before it
        marker = Device(settings.mqtt_port, "phuket", "pk-water-009")
        marker.send({"water_level_cm": 190.0})
        marker.close()
        wait_until(lambda: ("water_warning", "opened") in _seen(rx, "pk-water-009"), timeout=60, what="the marker")
        seen = _seen(rx, "pk-water-001")
        assert seen.count(("water_warning", "opened")) == 1
        assert seen.count(("water_flood", "opened")) == 1 and seen.count(("water_flood", "closed")) == 1
        assert seen.count(("water_warning", "closed")) == 1
        ids = [e["id"] for e in rx.events()]
        assert len(ids) == len(set(ids))
    finally:
        gauge.close()

