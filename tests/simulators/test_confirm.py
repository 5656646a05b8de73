"""Store-and-forward in the fleet simulator (issue 18): a reading is freed when the platform confirms it, not at PUBACK."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from pathlib import Path

import pytest

from contract.cities import BUILTIN_CITIES
from contract.influx import Influx
from contract.settings import Settings
from nakhon.procs import Service
from simulators.devices import make_fleet
from simulators.fleet import Fleet
from simulators.runconfig import RunConfig
from tests.conftest import start_ingest
from tests.helpers import wait_count, wait_until

pytestmark = pytest.mark.e2e


def _seqs(influx: Influx, device: str) -> list[int]:
    rows = influx.rows('SELECT "seq" FROM "raw"."device" WHERE "device" = $d', params={"d": device})
    return sorted(int(r["seq"]) for r in rows)


def test_the_fleet_frees_each_reading_once_the_platform_confirms_it(settings: Settings, ingest: Service, influx: Influx) -> None:
    devices = make_fleet(list(BUILTIN_CITIES), 2, seed=18)
    cfg = RunConfig(port=settings.mqtt_port, interval_s=1.0, duration_s=6, keep_ledger=True, seed=18, confirm=True)
    fleet = Fleet(devices, cfg)
    asyncio.run(fleet.run(settle_s=60))
    st = fleet.stats
    assert st.ledger is not None
    made = sum(len(v) for v in st.ledger.values())
    assert made >= len(devices) * 5
    assert st.unconfirmed == 0 and st.confirmed == made  # every reading freed by a confirmation, each once
    # at most one per reading, and one answering each online status (it carries the platform's time)
    assert 0 < st.stored_messages <= made + st.status_sent and st.stored_bad == 0 and st.dropped == 0
    assert wait_count(influx, "device", "battery_v", made, 60) == made


def test_a_device_whose_confirmations_stop_drops_its_oldest_and_nothing_else(settings: Settings, workdir: Path, influx: Influx) -> None:
    """No ingest at first: nothing is confirmed, the ring of 5 keeps the newest; once the platform is back, those are stored."""
    devices = make_fleet(list(BUILTIN_CITIES)[:1], 2, seed=19)
    cfg = RunConfig(port=settings.mqtt_port, interval_s=0.5, count=12, seed=19, confirm=True, confirm_timeout_s=2.0, buffer_max=5)
    fleet = Fleet(devices, cfg)
    t = threading.Thread(target=lambda: asyncio.run(fleet.run(settle_s=90)), daemon=True)
    t.start()
    st = fleet.stats
    wait_until(lambda: st.readings_sent >= 12 * len(devices) and st.dropped == 7 * len(devices), 60,
               what="every reading made, the oldest seven of each device dropped")
    assert st.confirmed == 0 and st.unconfirmed == 5 * len(devices)
    svc = start_ingest(settings, workdir)  # the platform comes back: the next resend reaches it
    try:
        t.join(120)
        assert not t.is_alive()
        assert st.unconfirmed == 0 and st.confirmed == 5 * len(devices) and st.resent >= 5 * len(devices)
        for d in devices:
            wait_until(lambda d=d: _seqs(influx, d.device_id) == list(range(8, 13)), 60, what=f"{d.device_id}: seqs 8..12 stored once")
    finally:
        svc.stop()


def test_resends_back_off_while_the_ingest_is_away(settings: Settings) -> None:
    """No ingest: nothing is confirmed. A device sends its unconfirmed readings again after the wait, and the wait
    doubles each time, as the firmware's confirm_ms: in T seconds with base b, at most log2(T / b + 1) + 1 resends
    (without the backoff, one every b: T / b of them)."""
    devices = make_fleet(list(BUILTIN_CITIES)[:1], 2, seed=20)
    base = 0.2
    cfg = RunConfig(port=settings.mqtt_port, interval_s=0.05, count=120, seed=20, confirm=True, confirm_timeout_s=base)
    fleet = Fleet(devices, cfg)
    began = time.monotonic()
    asyncio.run(fleet.run(settle_s=0.1))
    took = time.monotonic() - began
    st = fleet.stats
    assert st.readings_sent >= 120 * len(devices) and st.confirmed == 0
    per_device = st.resends / len(devices)
    assert per_device >= 3, "resent at all, the wait doubling from the base"
    assert per_device <= math.log2(took / base + 1) + 1, f"{per_device} resends per device in {took:.1f} s"
    assert took / base > 3 * per_device  # the bound means something: without backoff there would be far more
    assert all(a.confirm_wait > 4 * base for a in fleet.agents)
