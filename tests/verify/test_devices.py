"""`nakhon verify` scenarios 5 and 6, quick sizes: devices that go away and come back lose nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.verify.s_devices import devices_offline, reconnect_storm
from harness.verify.scenarios import load_all

pytestmark = pytest.mark.e2e  # the scenario starts its own platform


def test_scenarios_are_registered() -> None:
    scenarios = load_all()
    assert scenarios[5][1] is devices_offline and scenarios[6][1] is reconnect_storm


def test_firmware_offline_then_back_stores_every_reading_at_its_timestamp(workdir: Path) -> None:
    row = devices_offline(workdir, "quick")
    assert row.number == 5 and row.ok, row
    # 2 devices, 4 + 10 + 3 device-minutes at one reading per 30 s: about 68 readings, 40 of them taken offline
    assert row.sent >= 60 and int(row.figures["taken offline"]) >= 36
    assert row.stored == row.sent and row.lost == 0 and row.duplicated == 0
    assert row.figures["ts mismatches"] == 0 and row.accepted_bad == 0 and row.figures["ring dropped"] == 0
    assert row.recovery_s is not None and 0 <= row.recovery_s < 60


def test_reconnect_storm_drops_nothing(workdir: Path) -> None:
    row = reconnect_storm(workdir, "quick")
    assert row.number == 6 and row.ok, (row.figures, row.sent, row.stored, row.lost, row.duplicated, row.rejected)
    assert row.figures["reconnected"] == row.figures["devices"] == 200
    assert row.figures["broker dropped"] == 0 and row.figures["ingest broker_dropped"] == 0
    assert int(row.figures["broker clients after"]) >= 200
    # 200 devices for 20 s at one reading every 2 s, some of them buffered through the storm
    assert row.sent >= 1000 and row.stored == row.sent and row.lost == 0 and row.duplicated == 0 and row.rejected == 0
    assert int(row.figures["buffered in storm"]) > 0
    p50, p99, worst = (float(row.figures[f"reconnect {p} s"]) for p in ("p50", "p99", "max"))
    assert row.recovery_s is not None and 0 <= p50 <= p99 <= worst == round(row.recovery_s, 2) < 30
