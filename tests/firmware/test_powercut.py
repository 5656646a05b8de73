"""A power cut at every write step of the flash ring, of the seq ceiling and of a config
save (the fakes count the firmware's writes and cut the power at each in turn, leaving
flash as a FAT-like file system would, harsher than LittleFS): the next boot opens what
flash holds every time, no reading that had reached flash is lost or read twice, and
the seq ceiling and the applied config are the old or the new one, never torn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.firmware.test_units import run_mp

pytestmark = pytest.mark.integration  # the MicroPython VM

HERE = Path(__file__).resolve().parent


def test_a_power_cut_at_every_write_step_loses_nothing_that_reached_flash(tmp_path: Path) -> None:
    proc = run_mp(HERE / "mp_powercut.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert result["steps"] >= 25  # appends one by one and in a chunk, an acknowledged batch, two state files
    assert result["runs"] == result["steps"]
    assert result["bad"] == []
