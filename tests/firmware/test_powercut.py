"""A power cut at every write step of the flash ring (appends, and the head moved by the
platform's confirmations: a cut between a confirmation and the head's update), of the seq
ceiling and of a config
save (the fakes count the firmware's writes and cut the power at each in turn, leaving
flash as a FAT-like file system would, harsher than LittleFS): the next boot opens what
flash holds every time, no reading that had reached flash is lost or read twice, and
the seq ceiling and the applied config are the old or the new one, never torn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.firmware.test_units import run_mp

pytestmark = pytest.mark.integration  # the MicroPython VM

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    proc = run_mp(HERE / "mp_powercut.py", tmp_path_factory.mktemp("flash"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out: dict[str, Any] = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    return out


def test_a_power_cut_at_every_write_step_loses_nothing_that_reached_flash(result: dict[str, Any]) -> None:
    assert result["steps"] >= 25  # appends one by one and in a chunk, a batch confirmed out of order (the head saved), two state files
    assert result["runs"] == result["steps"]
    assert result["bad"] == []


def test_ring_sized_from_free_flash_holds_days(result: dict[str, Any]) -> None:
    segments, again, free = result["auto"]
    assert free < 1_500_000  # the ring's own segments took some of the fake's 1.5 MB
    assert segments == 1_500_000 * 3 // 4 // 4096  # three quarters of the free flash, whole segments
    assert again == segments  # what the ring holds counts as free: a reboot does not shrink it
    # An air node's reading is under 100 bytes: once a minute, more than a week.
    assert segments * 4096 / 100 / 1440 >= 7
