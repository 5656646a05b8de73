"""A power cut at every write step of two over-the-air updates (staging each file, the
switch, the confirmation, the probation's boot counts, the rollback), with flash left
as a FAT-like file system would leave it: the next boot always finds one whole version
(the factory lib/ or a slot holding every file of the version ota/boot names), never
an older one than the last switch, and the updates end where they should."""

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
    proc = run_mp(HERE / "mp_ota_powercut.py", tmp_path_factory.mktemp("flash"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    out: dict[str, Any] = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    return out


def test_a_power_cut_at_every_step_of_staging_and_swap_leaves_one_whole_version(result: dict[str, Any]) -> None:
    assert result["steps"] >= 40  # six files staged (each opened, written, closed), results, switches, boot counts
    assert result["runs"] == result["steps"]
    assert result["bad"] == []
    # the cuts landed before, between and after the switches: each version was what came up somewhere
    assert set(result["seen"]) == {"factory", "1.1.0", "1.2.0"}


def test_without_a_cut_the_second_update_is_rolled_back_to_the_first(result: dict[str, Any]) -> None:
    assert result["end"] == "1.1.0"
    assert result["result"] == {"id": 2, "fw": "1.2.0", "state": "rolled_back", "reason": "no publish in 2 boots"}
