"""Backfill: the last 7 days of 300 devices, as batches with original timestamps, land completely."""

from __future__ import annotations

import asyncio
import time

from contract.cities import BUILTIN_CITIES
from contract.influx import Influx
from contract.settings import Settings
from ingest.deadletter import read_all
from nakhon.procs import Service
from simulators.devices import make_fleet
from simulators.fleet import Fleet
from simulators.runconfig import RunConfig
from tests.helpers import count, wait_ingest_idle, wait_until

DAYS = 7
INTERVAL_S = 900  # 15-minute readings: 672 per device


def test_backfill_seven_days_for_300_devices_lands_completely(settings: Settings, ingest: Service, influx: Influx) -> None:
    devices = make_fleet(list(BUILTIN_CITIES), 100, seed=11)
    assert len(devices) == 300
    expected = 300 * DAYS * 86400 // INTERVAL_S
    cfg = RunConfig(port=settings.mqtt_port, mode="backfill", backfill_days=DAYS, interval_s=INTERVAL_S, batch=672, seed=11)
    fleet = Fleet(devices, cfg)
    t0 = time.monotonic()
    asyncio.run(fleet.run())
    st = fleet.stats
    assert st.readings_sent == st.readings_acked == expected
    assert st.messages_sent == 300  # one batch per device
    wait_until(lambda: count(influx, "device", "battery_v") >= expected, 150, interval=1.0, what=f"{expected} readings stored")
    took = time.monotonic() - t0
    wait_ingest_idle(influx)
    assert count(influx, "device", "battery_v") == expected
    # every device's week, first to last reading, with nothing refused
    first = influx.rows('SELECT first("battery_v") FROM "raw"."device"')[0]["time"]
    last = influx.rows('SELECT last("battery_v") FROM "raw"."device"')[0]["time"]
    assert (last - first) / 1000 == (DAYS * 86400 // INTERVAL_S - 1) * INTERVAL_S
    assert not list(read_all(settings.data_dir / "deadletter"))
    print(f"backfill: {expected} readings stored in {took:.1f} s ({expected / took:,.0f} readings/s)")
