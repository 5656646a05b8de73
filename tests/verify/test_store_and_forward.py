"""`nakhon verify` scenario 18, quick size: store-and-forward through broker kills, ingest kills and an InfluxDB outage."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.verify.s_confirm import store_and_forward
from harness.verify.scenarios import load_all

pytestmark = pytest.mark.e2e  # the scenario starts its own platform


def test_scenario_is_registered() -> None:
    assert load_all()[18][1] is store_and_forward


def test_nothing_is_lost_or_duplicated_through_every_fault(workdir: Path) -> None:
    row = store_and_forward(workdir, "quick")
    assert row.number == 18 and row.ok, row
    assert row.sent >= 1000 and row.stored == row.sent and row.lost == 0 and row.duplicated == 0 and row.accepted_bad == 0
    # every fault happened and was recovered from
    recoveries = str(row.figures["recoveries"])
    assert len(re.findall(r"broker kill \d", recoveries)) == 2 and "ingest away" in recoveries and "ingest kill 1" in recoveries
    assert "never" not in recoveries and row.recovery_s is not None
    assert row.figures["broker kills, ingest live"] == 2 and row.figures["broker kills, ingest away"] == 1 and row.figures["ingest kills"] == 1
    # with InfluxDB down the spool is durable: confirmations went on
    assert row.figures["confirmed while InfluxDB down"] > 0
    assert row.figures["device drops"] == 0 and 0 < row.figures["stored msgs per reading"] <= 1
    # the firmware-in-the-loop devices went through the same faults: every reading their consoles show, stored exactly once
    f = row.figures
    assert f["FIL devices"] == 2 and int(f["FIL fewest taken by a device"]) > 0 and int(f["FIL readings taken"]) > 0
    assert f["FIL readings stored"] == f["FIL readings taken"] and f["FIL readings lost"] == 0 and f["FIL readings duplicated"] == 0
    assert f["FIL ring dropped"] == 0 and f["FIL crashes"] == 0 and f["FIL rings drained s"] != "never"
    assert int(f["FIL reconnects"]) >= 3  # each device came back after each broker kill at least (2 with the ingest live, 1 away)
