"""The spine's delivery guarantee, against real Mosquitto, InfluxDB and ingest processes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from contract.influx import Influx
from contract.settings import Settings
from ingest.deadletter import read_all
from nakhon.procs import Service
from nakhon.servers import InfluxDB, Mosquitto
from tests.conftest import start_ingest
from tests.helpers import count, wait_count, wait_until
from tests.spine.publisher import Publisher


def stored(influx: Influx) -> dict[tuple[str, str], list[tuple[int, int, float, float]]]:
    """Every stored reading, by (city, device), from the air and weather points."""
    out: dict[tuple[str, str], dict[int, list[float]]] = {}
    for meas, fld in (("air", "pm25"), ("weather", "temp_c")):
        for r in influx.rows(f'SELECT "{fld}", seq FROM "raw"."{meas}" GROUP BY city, device'):
            out.setdefault((r["city"], r["device"]), {}).setdefault(r["time"], [r["seq"]]).append(r[fld])
    return {k: sorted((t, int(v[0]), *v[1:]) for t, v in pts.items()) for k, pts in out.items()}  # type: ignore[misc]


def assert_exactly_once(influx: Influx, pub: Publisher) -> None:
    got = stored(influx)
    want = {k: sorted(v) for k, v in pub.sent.readings.items()}
    assert set(got) == set(want)
    for key in want:
        assert got[key] == want[key], f"{key}: stored {len(got[key])} readings, sent {len(want[key])}"


def test_fleet_of_60_devices_lands_exactly(settings: Settings, influx: Influx, ingest: Service) -> None:
    pub = Publisher(settings.mqtt_port, per_city=20)
    try:
        pub.publish(100)
        assert pub.settle() == 6000
    finally:
        pub.close()
    assert wait_count(influx, "air", "pm25", 6000) == 6000
    assert count(influx, "weather", "temp_c") == 6000
    assert_exactly_once(influx, pub)
    assert not list(read_all(settings.data_dir / "deadletter"))


def test_ingest_sigkill_mid_stream_loses_and_duplicates_nothing(settings: Settings, workdir: Path, influx: Influx) -> None:
    svc = start_ingest(settings, workdir)
    pub = Publisher(settings.mqtt_port, per_city=10)
    try:
        t = threading.Thread(target=pub.publish, args=(700,), kwargs={"rate": 5000})  # 21,000 readings over ~4 s
        t.start()
        wait_until(lambda: count(influx, "air", "pm25") > 2000, 30, what="part of the stream stored")
        svc.kill()  # SIGKILL: un-acked messages stay with the broker's session
        killed_at = count(influx, "air", "pm25")
        svc = start_ingest(settings, workdir, name="ingest-2")
        t.join()
        assert pub.settle() == 21_000
        assert killed_at < 21_000, "the kill happened after the stream ended: the test proved nothing"
        assert wait_count(influx, "air", "pm25", 21_000, timeout=90) == 21_000
        assert_exactly_once(influx, pub)
    finally:
        pub.close()
        svc.stop()


def test_influxdb_down_30s_spools_then_replays(settings: Settings, workdir: Path, influxdb: InfluxDB, influx: Influx) -> None:
    svc = start_ingest(settings, workdir)
    pub = Publisher(settings.mqtt_port, per_city=10)
    try:
        pub.publish(50, rate=2000)
        wait_count(influx, "air", "pm25", 1500, settle=False)
        influxdb.stop()
        down_at = time.monotonic()
        pub.publish(200, rate=1000, start_index=50)  # 6,000 readings while the database is away
        assert pub.settle() == 7500  # the broker has them all acked: the ingest made them durable (spool)
        spool = settings.data_dir / "spool"
        assert any(spool.rglob("*.lp")), "nothing was spooled while InfluxDB was down"
        time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
        influxdb.start()
        pub.publish(50, rate=2000, start_index=250)
        assert pub.settle() == 9000
        assert wait_count(influx, "air", "pm25", 9000, timeout=90) == 9000
        wait_until(lambda: not any(spool.rglob("*.lp")), 30, what="the spool to drain")
        assert_exactly_once(influx, pub)
    finally:
        pub.close()
        svc.stop()


def test_broker_restart_while_ingest_is_away_loses_nothing(settings: Settings, workdir: Path, broker: Mosquitto, influx: Influx) -> None:
    svc = start_ingest(settings, workdir)
    svc.stop()  # the ingest's persistent session and subscription stay with the broker
    broker.stop()
    broker.start()  # a clean restart restores sessions from the persistence file
    pub = Publisher(settings.mqtt_port, per_city=2)
    try:
        pub.publish(100)
        assert pub.settle() == 600
    finally:
        pub.close()
    svc = start_ingest(settings, workdir, name="ingest-2")
    try:
        assert wait_count(influx, "air", "pm25", 600, timeout=30) == 600
        assert_exactly_once(influx, pub)
    finally:
        svc.stop()
