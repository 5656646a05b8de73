"""`nakhon verify` scenarios 19-21, quick sizes: broker restarts with two workers, a rotated InfluxDB password, a long outage drained."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.verify.s_operations import credentials_rotated, outage_drained, workers_across_restarts
from harness.verify.scenarios import load_all

pytestmark = pytest.mark.e2e  # each scenario starts its own servers


def test_scenarios_are_registered() -> None:
    scenarios = load_all()
    assert [scenarios[k][1] for k in (19, 20, 21)] == [workers_across_restarts, credentials_rotated, outage_drained]


def test_two_workers_lose_nothing_across_broker_restarts(workdir: Path) -> None:
    row = workers_across_restarts(workdir, "quick")
    assert row.ok, row
    assert row.lost == 0 and row.duplicated == 0 and row.stored == row.sent > 1000
    assert row.figures["broker restarts"] == row.figures["broker kills"] == 1
    assert isinstance(row.figures["catch stand-downs"], int) and row.figures["catch stand-downs"] >= 2  # at start, and after a fault
    assert isinstance(row.figures["stored by the catch"], int) and row.figures["stored by the catch"] > 0


def test_a_rotated_influxdb_password_loses_nothing(workdir: Path) -> None:
    row = credentials_rotated(workdir, "quick")
    assert row.ok, row
    assert row.lost == 0 and row.stored == row.sent > 1000 and row.rejected == 0
    assert isinstance(row.figures["A refused requests"], int) and row.figures["A refused requests"] > 0  # the rotation really bit
    # the file first and SIGHUP: at most two refusals per writer (2 flushers and the spool's replayer): one with the
    # new password before InfluxDB has it (then the one before it goes on), one with that after InfluxDB changed
    refused_b = row.figures["B refused requests"]
    assert isinstance(refused_b, int) and refused_b <= 6, row.figures


def test_an_outage_spool_drains_under_live_traffic(workdir: Path) -> None:
    row = outage_drained(workdir, "quick")
    assert row.ok, row
    assert row.lost == 0 and row.duplicated == 0 and row.stored == row.sent
    assert isinstance(row.figures["points spooled"], int) and row.figures["points spooled"] >= 2 * 5400
    assert isinstance(row.figures["live readings during drain"], int) and row.figures["live readings during drain"] > 0
