"""An alert storm through the platform: a real broker, `nakhon alerts run`, a real webhook receiver and InfluxDB.

23 Chiang Mai stations enter the haze bands together: the officials' webhook gets one
notification for the city, while every alert still travels on MQTT and is stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.alerts import CITY_SUBJECT
from contract.influx import Influx
from contract.settings import Settings
from nakhon.procs import Service
from tests.alerts.receiver import Receiver
from tests.alerts.test_e2e import Device, Listener
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

SECRET = "storm-hook-secret"
RULES = {"version": "storm-1", "defaults": {"storm": {"stations": 5, "window_s": 600, "gather_s": 2, "digest_s": 600, "quiet_s": 600}}}
STATIONS = 23


def test_23_stations_entering_the_haze_bands_are_one_notification_and_every_alert_is_kept(settings: Settings, workdir: Path,
                                                                                          influx: Influx) -> None:
    rules = workdir / "rules.json"
    rules.write_text(json.dumps(RULES))
    with Receiver(SECRET) as rx:
        svc = Service("alerts", ["alerts", "run"], settings, workdir / "logs", alerts_webhook_urls=rx.url, alerts_webhook_secret=SECRET,
                      alerts_rules_file=rules)
        listener = Listener(settings.mqtt_port)
        devices = [Device(settings.mqtt_port, "chiang_mai", f"cm-air-{i:03d}") for i in range(STATIONS)]
        gauge = Device(settings.mqtt_port, "phuket", "pk-water-001")
        try:
            svc.start()
            assert svc.wait_log('"msg":"connected"', 30), svc.log_path.read_text()[-3000:]
            for d in devices:  # a haze morning: every station's first reading at 100 µg/m³ (AQI red)
                d.send({"pm25": 100.0, "pm10": 80.0})
            storms = wait_until(rx.storms, timeout=120, what="the storm notification")
            assert len(storms) == 1
            body = storms[0]
            storm = body["storm"]
            assert storm["city"] == "chiang_mai" and storm["severity"] == "critical"
            by = {(g["rule"], g["event"], g["subject"]): g["n"] for g in storm["groups"]}
            individually = [e for e in rx.events() if e["city"] == "chiang_mai"]  # went out before the storm was recognised
            assert len({e["device"] for e in individually} - {CITY_SUBJECT}) < 5 and storm["sent_before"] == len(individually)
            assert by[("aqi_red", "opened", "station")] == STATIONS  # all 23, those sent alone recalled too
            assert f"{STATIONS} stations entered AQI affects health (red)" in storm["message_en"]
            assert f"{STATIONS} สถานีเข้าสู่ AQI มีผลกระทบต่อสุขภาพ (แดง)" in storm["message_th"]
            assert body["text"] == f"{storm['message_th']}\n{storm['message_en']}"
            assert rx.bad_signatures == 0

            # every alert is still its own event on the alerts topic and in InfluxDB
            total = storm["events"]
            opened = [d for d in listener.docs if d["city"] == "chiang_mai" and d["event"] == "opened"]
            wait_until(lambda: len([d for d in listener.docs if d["city"] == "chiang_mai"]) >= total, timeout=60, what="every event on MQTT")
            assert len({d["device"] for d in opened if d["rule"] == "aqi_red"} - {CITY_SUBJECT}) == STATIONS

            def stored() -> int:
                rows = influx.rows('SELECT count("event_id") FROM "raw"."alerts" WHERE "city" = \'chiang_mai\'')
                return int(rows[0]["count"]) if rows else 0

            wait_until(lambda: stored() >= total, timeout=60, what="every event in InfluxDB")
            assert stored() == total

            # another city is not held by Chiang Mai's storm: its one crossing goes out on its own
            gauge.send({"water_level_cm": 200.0})
            wait_until(lambda: any(e["device"] == "pk-water-001" for e in rx.events()), timeout=60, what="Phuket's alert")
            assert len(rx.storms()) == 1
        finally:
            for c in (*devices, gauge, listener):
                c.close()
            svc.stop()
