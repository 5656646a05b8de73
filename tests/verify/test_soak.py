"""`nakhon verify` scenario 13, quick size: a short soak with the API read meanwhile."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.verify.s_soak import soak
from harness.verify.scenarios import load_all

pytestmark = pytest.mark.e2e  # the scenario starts its own platform


def test_soak_is_registered() -> None:
    assert load_all()[13][1] is soak


def test_soak_loses_nothing_and_the_api_answers(workdir: Path) -> None:
    row = soak(workdir, "quick")
    assert row.number == 13 and row.ok, row
    # 300 devices every 3 s for 10 s
    assert row.sent >= 800 and row.stored == row.sent and row.lost == 0 and row.duplicated == 0 and row.rejected == 0
    assert int(row.figures["API requests"]) >= 30 and row.figures["API errors"] == 0
    assert row.figures["ingest reconnects"] == 0 and row.figures["publisher reconnects"] == 0
    for name in ("ingest", "API"):
        start, end = float(row.figures[f"{name} RSS MB first"]), float(row.figures[f"{name} RSS MB last"])
        assert start > 10 and end - start < 50, (name, start, end)
    assert row.recovery_s is not None and row.recovery_s < 30
