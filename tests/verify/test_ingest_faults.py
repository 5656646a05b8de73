"""`nakhon verify` scenarios 14-16, quick sizes: the ingest's own fault paths on the real platform (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.verify.s_ingest import database_dropped, one_identity_twice, qos0_flood
from harness.verify.scenarios import load_all

pytestmark = pytest.mark.e2e  # each scenario starts its own platform


def test_scenarios_are_registered() -> None:
    scenarios = load_all()
    assert [scenarios[k][1] for k in (14, 15, 16)] == [database_dropped, one_identity_twice, qos0_flood]


def test_a_dropped_database_is_created_again_and_nothing_is_dead_lettered(workdir: Path) -> None:
    row = database_dropped(workdir, "quick")
    assert row.ok, row
    assert row.sent > 300 and row.stored == row.sent and row.lost == 0 and row.rejected == 0
    assert int(row.figures["schema created again"]) >= 1 and int(row.figures["refused requests"]) >= 1


def test_two_ingests_with_one_identity_reconnect_with_backoff_and_lose_nothing(workdir: Path) -> None:
    row = one_identity_twice(workdir, "quick")
    assert row.ok, row
    assert row.lost == 0 and row.duplicated == 0 and row.stored == row.sent
    assert float(row.figures["per second"]) <= 2.0  # was hundreds of connections a second
    assert int(row.figures["connections"]) >= 3  # they did take the session from each other


def test_a_qos0_flood_while_influxdb_hangs_stays_within_the_bound(workdir: Path) -> None:
    row = qos0_flood(workdir, "quick")
    assert row.ok, row
    assert int(row.figures["peak held"]) > 0  # the hang really held messages...
    assert int(row.figures["peak held"]) <= 2_000 + 1_000  # ...and no more than the bound (was: 51,109 with a bound of 100)
    assert row.stored > 0
