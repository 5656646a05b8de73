"""`nakhon verify` scenario 23, quick size: firmware devices through Wi-Fi, broker, power
and sensor faults for six device hours lose no reading, never loop, keep the ring in its
bound, and show every fault in their status."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.verify.s_filsoak import fil_soak
from harness.verify.scenarios import load_all

pytestmark = pytest.mark.e2e  # the scenario starts its own platform


def test_fil_soak_is_registered() -> None:
    assert load_all()[23][1] is fil_soak


def test_fil_soak_loses_nothing_and_every_fault_shows(workdir: Path) -> None:
    row = fil_soak(workdir, "quick")
    assert row.number == 23 and row.ok, row
    # 2 devices, six device hours at one reading per 300 s: 72 readings each
    assert row.sent >= 2 * 72 * 0.9 and row.stored == row.sent and row.lost == 0
    assert row.figures["faults per device"] == 4 and row.figures["faults not in status"] == 0
    assert row.figures["crashes"] == 0 and row.figures["safe modes"] == 0 and row.figures["ring dropped"] == 0
    assert int(row.figures["resets"]) >= 2  # the power cut, on each device
    assert int(row.figures["most buffered"]) > 0
