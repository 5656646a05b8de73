"""`nakhon verify` scenario 22, quick size: a rollout to 10 firmware-in-the-loop devices, 2 of which
cannot run the new version; the platform shows 8 updated, 2 rolled back, and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.verify.s_rollout import ANCHOR, build_release, current_fw, firmware_rollout, next_fw
from harness.verify.scenarios import load_all
from nakhon.firmware_tools import FIRMWARE

pytestmark = pytest.mark.e2e  # the scenario starts its own platform


def test_scenario_is_registered() -> None:
    assert load_all()[22][1] is firmware_rollout


def test_the_release_build_crashes_only_on_the_boards_named(workdir: Path) -> None:
    assert (FIRMWARE / "lib" / "start.py").read_text().count(ANCHOR) == 1
    out = build_release(workdir, next_fw(current_fw()), ["ro-x-1", "ro-x-2"])
    src = (workdir / f"src-{next_fw(current_fw())}" / "lib" / "start.py").read_text()
    assert 'if cfg["device_id"] in ("ro-x-1", "ro-x-2",):' in src
    assert next_fw(current_fw()).encode() in (out / "lib" / "app.mpy").read_bytes()


def test_rollout_shows_updated_and_rolled_back_with_reasons(workdir: Path) -> None:
    row = firmware_rollout(workdir, "quick")
    assert row.number == 22 and row.ok, row
    assert row.figures["updated"] == row.stored == 8 and row.figures["rolled back"] == row.rejected == 2
    assert row.figures["reasons"] == "no publish in 2 boots 2" and row.lost == 0 and row.accepted_bad == 0
    assert row.figures["VM crashes"] == 0
    # every device back at work on the version it reports: a reading taken since its last boot is stored
    assert row.figures["storing on new/old version"] == "8/2"
    text = (workdir / "rollout.txt").read_text()
    assert "8 updated" in text and "2 rolled_back" in text and text.count("no publish in 2 boots") == 2
    assert row.recovery_s is not None and row.recovery_s < 120
