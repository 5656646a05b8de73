"""Every panel's query, filled in for each pilot city, returns data from a real InfluxDB.

The data goes the real way: a field of devices publishes through the real
broker, the real `nakhon ingest` validates and writes it, and the ingest's
own roll-up job fills `hourly` and `hourly.aqi`, and the real alert evaluator stores its events. A panel whose query
returns nothing, or lacks a column it names, fails the test.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from contract import storage, topics
from contract.alerts import ALERTS_MEASUREMENT
from contract.cities import BUILTIN_CITIES
from contract.influx import Influx
from contract.payload import encode_reading
from contract.settings import Settings
from dashboards import build
from nakhon.procs import Service
from nakhon.servers import Mosquitto
from tests.conftest import start_ingest
from tests.dashboards import field, queries
from tests.helpers import count, wait_until


def _committed() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted((build.ROOT / build.JSON_DIR).glob("*.json"))}


def _cities_for(name: str) -> list[str | None]:
    """Which `city` values to try: its own for a city dashboard, each city (and All) for fleet, none for platform."""
    if name.startswith("city-"):
        return [name.removeprefix("city-").removesuffix(".json")]
    if name.startswith("fleet"):
        return [c.slug for c in BUILTIN_CITIES] + [".*"]
    return [None]


def _check(influx: Influx, text: str) -> str | None:
    """None when the query returned rows with every named column non-null somewhere; else what was wrong."""
    try:
        series = influx.series(text)
    except Exception as exc:  # an InfluxQL error is a failed panel too
        return f"error {exc}"
    rows = [dict(zip(s["columns"], v, strict=True)) for s in series for v in s.get("values", [])]
    if not rows:
        return "returned no rows"
    wanted = queries.outer_aliases(text) or [c for c in series[0]["columns"] if c != "time"]
    for col in wanted:
        if not any(r.get(col) is not None for r in rows):
            return f"column {col!r} empty or missing (columns {series[0]['columns']})"
    return None


def _cross_the_lines(port: int) -> tuple[str, ...]:
    """In each city, a live reading over the flood line and one deep in the haze (the rules they open)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dashboards-test-crossings", protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = []
    for c in BUILTIN_CITIES:
        infos.append(client.publish(topics.topic(c.slug, "anno-water-1", "telemetry"), encode_reading(time.time(), 1, {"water_level_cm": 400.0}), qos=1))
        infos.append(client.publish(topics.topic(c.slug, "anno-air-1", "telemetry"), encode_reading(time.time(), 1, {"pm25": 150.0}), qos=1))
    for info in infos:
        info.wait_for_publish(30)
    client.loop_stop()
    client.disconnect()
    return ("water_flood", "aqi_red")


def test_every_panel_query_returns_data(settings: Settings, broker: Mosquitto, influx: Influx, workdir: Path) -> None:
    fast = settings.model_copy(update={"ingest_rollup_interval_s": 1.0, "ingest_stats_interval_s": 1.0})
    ingest = start_ingest(fast, workdir)
    # the alert evaluator beside it, its silence rule short: when the field stops publishing, every station's alert opens
    rules = workdir / "rules.json"
    rules.write_text(json.dumps({"version": "dashboards", "defaults": {"silent": {"interval_s": 1, "intervals": 2, "min_silence_s": 2}}}))
    alerts = Service("alerts", ["alerts", "run"], fast, workdir / "logs", alerts_rules_file=rules)
    alerts.start()
    assert alerts.wait_log('"msg":"connected"', 30), alerts.log_path.read_text()[-2000:]
    try:
        sent = field.publish("127.0.0.1", broker.port, list(BUILTIN_CITIES))
        crossings = _cross_the_lines(broker.port)  # alert events for the annotations on the air and water panels
        wait_until(lambda: count(influx, "device", "battery_v") >= sent.readings, 90, what=f"{sent.readings} readings stored")
        wait_until(lambda: count(influx, storage.STATUS_MEASUREMENT, "state") >= sent.status_docs, 30, what="status documents stored")
        for c in BUILTIN_CITIES:  # the ingest's roll-up job has reached the newest hour of every city
            wait_until(lambda c=c: influx.rows(
                f'SELECT count("aqi") FROM "{storage.RP_HOURLY}"."{storage.AQI_MEASUREMENT}" '
                f"WHERE \"city\" = '{c.slug}' AND time > now() - 1h"), 90, what=f"hourly AQI of {c.slug}")
        # enough ingest stats after the data for rates over the platform panels' 10 s interval
        t_end_ms = int(sent.t_end * 1000)
        wait_until(lambda: count(influx, storage.INGEST_MEASUREMENT, "received", f"time > {t_end_ms}ms") >= 15, 60,
                   what="15 s of ingest stats after the data")
        for c in BUILTIN_CITIES:
            wait_until(lambda c=c: count(influx, ALERTS_MEASUREMENT, "value", f"\"city\" = '{c.slug}'") > 0, 60, what=f"alerts of {c.slug}")
            for rule in crossings:
                wait_until(lambda c=c, rule=rule: count(influx, ALERTS_MEASUREMENT, "value", f"\"city\" = '{c.slug}' AND \"rule\" = '{rule}'"),
                           60, what=f"{rule} alert of {c.slug}")
    finally:
        alerts.stop()
        ingest.stop()

    failures, checked = [], 0
    now = time.time()
    for name, model in _committed().items():
        for city in _cities_for(name):
            for q in queries.queries(name, model):
                text = queries.fill(q, model, city, now)
                problem = _check(influx, text)
                checked += 1
                if problem:
                    failures.append(f"{name} [{city}] panel {q.panel} {q.ref}: {problem}\n    {text}")
    assert checked >= 60, f"only {checked} queries checked"
    assert not failures, f"{len(failures)} of {checked} panel queries failed:\n" + "\n".join(failures)
