"""The firmware's time arithmetic on the ESP32's clock: `ticks_ms` wraps every 2^30 ms
(12.4 days; the 64-bit unix port's every 2^62). The fakes give the firmware the ESP32's
ticks (a week is more than half their period); a week of dry weather, a clock schedule and a
node's uptime are run across it on the real MicroPython VM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nakhon.servers import free_port
from tests.firmware.device import device_config
from tests.firmware.test_units import run_mp

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
DAY_S = 86400


@pytest.fixture(scope="module")
def checks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("wrap")
    cfg = device_config("kk-wrap-001", free_port(), city="khon_kaen", kind="weather",
                        sensors=[{"name": "rain", "type": "rain", "pin": 27}], battery=None)
    (folder / "config.json").write_text(json.dumps(cfg))
    proc = run_mp(HERE / "mp_wrap.py", folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            out[doc["check"]] = doc
    return out


def test_rain_after_a_dry_week_counts_tips_not_bounces(checks: dict[str, dict[str, Any]]) -> None:
    c = checks["rain"]
    # More than half the ticks period passed: beyond what ticks_diff can tell from the future.
    assert (c["raw_now"] - c["raw_t0"]) % (1 << 30) > 1 << 29
    assert c["first"] == 0.2
    # Three tips after seven dry days: 0.6 mm, and only their six contact bounces ignored
    # (a last-tip time over 2^29 ms old would read as in the future: every tip a bounce).
    assert c["mm"] == 0.6
    assert c["bounces"] == 6


def test_a_due_clock_stays_due_across_the_wrap(checks: dict[str, dict[str, Any]]) -> None:
    # Due after 6 hours and not served: still due after 7 and 8 days (a deadline left for
    # more than 2^29 ms would read as 6 days ahead and put NTP off that long).
    assert checks["clock"]["due"] == [True] * 8


def test_uptime_runs_on_across_the_wrap(checks: dict[str, dict[str, Any]]) -> None:
    c = checks["uptime"]
    assert c["true_ms"] >= 8 * DAY_S * 1000  # eight days on: more than half the 2^30 ms period, across its wrap
    assert c["uptime_ms"] == c["true_ms"]  # every millisecond counted, none twice
    assert c["uptime_s"] == c["uptime_ms"] // 1000
