"""Laser PM sensors sleep between readings: the fake sensors' meters, on the real firmware
(the quick size of `nakhon firmware bench`'s laser section)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nakhon.firmware_tools import LASER_GOAL, laser_bench, laser_report

pytestmark = pytest.mark.integration  # the MicroPython VM


def test_laser_hours_per_day(tmp_path: Path) -> None:
    r = laser_bench(tmp_path, hours=0.5)
    rows = r["rows"]
    for sensor, warm_s in (("pms5003", 30), ("sds011", 15)):
        cont = rows[f"{sensor}/20"]
        assert cont["h_per_day"] > 23.5  # at a 20 s interval it never sleeps: running on
        at60 = rows[f"{sensor}/60"]["h_per_day"] / cont["h_per_day"]
        at300 = rows[f"{sensor}/300"]["h_per_day"] / cont["h_per_day"]
        # awake per reading: the warm-up and about five seconds of frames (the first reading
        # after boot also waits its warm-up), never the whole interval
        assert at300 <= (warm_s + 8) / 300, (sensor, at300)
        assert at60 <= (warm_s + 8) / 60, (sensor, at60)
        for row in (cont, rows[f"{sensor}/60"], rows[f"{sensor}/300"]):
            assert abs(row["fw_laser_ms"] - row["laser_ms"]) <= 0.01 * row["laser_ms"] + 2000  # the node counts what the part does
            # and reads on schedule (the first reading after boot waits for the warm-up). The fake clock runs
            # many times real time, so a stall of the loaded VM skips device-seconds: allow a tenth fewer. A node
            # that slept a whole interval after each warm-up (drifting by it) would make a third fewer at 60 s.
            assert row["readings"] >= 0.9 * (row["device_ms"] / 1000 - warm_s) / row["interval_s"] - 1, (sensor, row)
    assert rows["sds011/300"]["h_per_day"] / rows["sds011/20"]["h_per_day"] <= LASER_GOAL
    text, _ = laser_report(r)
    assert "pms5003" in text and "sds011" in text and "300 s" in text
