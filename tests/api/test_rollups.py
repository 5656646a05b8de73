"""Late data: after a device replays 24 hours of readings, every affected hourly roll-up
equals the aggregate recomputed from raw (and from the values sent), the AQI of those hours
follows, and the latest value does not move back to the replayed past."""

from __future__ import annotations

import math
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from contract.aqi import thai_aqi
from contract.influx import Influx
from contract.payload import encode_batch, encode_reading
from contract.settings import load_settings
from ingest.rollups import Rollups
from nakhon.servers import InfluxDB, Mosquitto
from tests.conftest import start_ingest
from tests.helpers import wait_until

HOUR = 3600
TOPIC = "nakhon/v1/chiang_mai/cm-late-01/telemetry"


def _publisher(port: int) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cm-late-01", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def _hourly(influx: Influx) -> dict[int, dict[str, float]]:
    rows = influx.rows('SELECT mean_pm25, min_pm25, max_pm25, count_pm25 FROM "hourly"."air" WHERE device = \'cm-late-01\'')
    return {r["time"]: r for r in rows}


def _raw(influx: Influx) -> dict[int, dict[str, float]]:
    rows = influx.rows(
        'SELECT mean(pm25) AS mean_pm25, min(pm25) AS min_pm25, max(pm25) AS max_pm25, count(pm25) AS count_pm25 '
        'FROM "raw"."air" WHERE device = \'cm-late-01\' AND time >= now() - 30h GROUP BY time(1h) fill(none)'
    )
    return {r["time"]: r for r in rows}


@pytest.mark.timeout(180)
def test_replayed_day_rolls_up_exactly(workdir: Path, broker: Mosquitto, influxdb: InfluxDB, influx: Influx) -> None:
    settings = load_settings(mqtt_port=broker.port, influx_url=influxdb.url, data_dir=workdir / "data",
                             ingest_rollup_interval_s=1.0, ingest_batch_ms=50)
    ingest = start_ingest(settings, workdir)
    pub = _publisher(broker.port)
    try:
        rng = random.Random(5)
        now = time.time()
        this_hour = now - now % HOUR
        sent: dict[int, list[float]] = {}

        def reading(ts: float) -> dict[str, float]:
            v = round(rng.uniform(5, 120), 2)
            sent.setdefault(int(ts - ts % HOUR) * 1000, []).append(v)
            return {"pm25": v, "pm10": round(v * 1.6, 2)}

        # live: a reading now, and a few early ones in an hour five hours back, rolled up at once
        live_ts = now - 1
        pub.publish(TOPIC, encode_reading(live_ts, 10_000, reading(live_ts)), qos=1).wait_for_publish(10)
        early = [(this_hour - 5 * HOUR + 60 * i + 30, 9_000 + i, reading(this_hour - 5 * HOUR + 60 * i + 30)) for i in range(5)]
        pub.publish(TOPIC, encode_batch(early), qos=1).wait_for_publish(10)
        h5 = int(this_hour - 5 * HOUR) * 1000
        wait_until(lambda: _hourly(influx).get(h5, {}).get("count_pm25") == 5, 30, what="first roll-up of hour -5")

        # then the device replays its buffer: a reading a minute for the 24 hours before this hour
        start = this_hour - 24 * HOUR
        replay = []
        for i in range(24 * 60):
            ts = start + 60 * i + 7.5
            if this_hour - 5 * HOUR <= ts < this_hour - 5 * HOUR + 300:
                continue  # those minutes were sent live
            replay.append((ts, i, reading(ts)))
        for k in range(0, len(replay), 1000):
            pub.publish(TOPIC, encode_batch(replay[k:k + 1000]), qos=1).wait_for_publish(10)

        def all_equal() -> bool:
            hourly, raw = _hourly(influx), _raw(influx)
            return set(raw) == set(sent) and all(hourly.get(h) == raw[h] for h in raw)

        wait_until(all_equal, 60, 0.5, "every hourly roll-up to equal raw")
        hourly = _hourly(influx)
        assert len(hourly) == 25  # 24 replayed hours + this one
        for h, values in sent.items():  # and equal to what was sent, worked out here
            row = hourly[h]
            assert row["count_pm25"] == len(values)
            assert math.isclose(row["mean_pm25"], sum(values) / len(values), rel_tol=1e-12)
            assert (row["min_pm25"], row["max_pm25"]) == (min(values), max(values))

        # the AQI of this hour is judged on the 24-hour mean of the hourly means
        means = [hourly[h]["mean_pm25"] for h in sorted(hourly)[-24:]]
        pm10 = influx.rows('SELECT mean_pm10 FROM "hourly"."air" WHERE device = \'cm-late-01\'')[-24:]
        expected = thai_aqi({"pm25": sum(means) / 24, "pm10": sum(r["mean_pm10"] for r in pm10) / 24},
                            datetime.fromtimestamp(this_hour, UTC))
        assert expected is not None

        def aqi_now() -> dict[str, object] | None:
            rows = influx.rows('SELECT aqi, pollutant, pm25_24h FROM "hourly"."aqi" WHERE device = \'cm-late-01\' ORDER BY time DESC LIMIT 1')
            return rows[0] if rows and rows[0]["time"] == int(this_hour) * 1000 and math.isclose(
                rows[0]["pm25_24h"], sum(means) / 24, rel_tol=1e-9) else None

        row = wait_until(aqi_now, 30, 0.5, "AQI of this hour over the replayed day")
        assert (row["aqi"], row["pollutant"]) == (expected.aqi, expected.pollutant)

        # latest stays on the live reading, not the replayed past
        latest = influx.rows('SELECT ts, pm25 FROM "latest"."air" WHERE device = \'cm-late-01\'')
        assert latest[0]["ts"] == round(live_ts * 1000)
    finally:
        pub.disconnect()
        pub.loop_stop()
        ingest.stop()


def test_latest_never_moves_back_across_workers_and_restarts(influx: Influx) -> None:
    """Two workers sharing the stream (and a restart): an older reading never replaces a newer one in `latest`."""
    def line(ts: int, v: float) -> str:
        return f"air,city=chiang_mai,device=cm-late-02 pm25={v},seq=1i {ts}"

    def stored() -> tuple[int, float]:
        row = influx.rows('SELECT ts, pm25 FROM "latest"."air" WHERE device = \'cm-late-02\'')[0]
        return row["ts"], row["pm25"]

    now = int(time.time() * 1000)
    a = Rollups(influx, 1.0, ready=lambda: True, shared=True)
    b = Rollups(influx, 1.0, ready=lambda: True, shared=True)
    for w in (a, b):
        w.start(influx.database)
        w._stop.set()  # driven by hand
    b.touched([line(now - 60_000, 1.0)])
    b.run_once(force=False)
    a.touched([line(now, 3.0)])  # the live reading, through the other worker
    a.run_once(force=False)
    b.touched([line(now - 30_000, 2.0)])  # a replayed older reading reaches the worker that has not seen it
    b.run_once(force=False)
    assert stored() == (now, 3.0)
    c = Rollups(influx, 1.0, ready=lambda: True)  # a restarted single worker reads what is stored
    c.start(influx.database)
    c._stop.set()
    c.touched([line(now - 10_000, 9.0)])
    c.run_once(force=False)
    assert stored() == (now, 3.0)
