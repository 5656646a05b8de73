"""`nakhon verify` scenarios 11-12, quick sizes: intruders at the secured broker and at the API."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.verify.s_security import api_intruders, broker_intruders

pytestmark = pytest.mark.e2e  # the scenario starts its own platform


def test_nobody_gets_into_the_broker_who_should_not(workdir: Path) -> None:
    row = broker_intruders(workdir, "quick")
    assert row.ok, row
    assert row.figures["let in"] == 0 and row.figures["landed from intruders"] == 0 and row.figures["ingest kicked off"] is False
    assert row.accepted_bad == 0 and row.stored == 2 and row.lost == 0
    assert row.rejected == row.sent - 2 >= 40  # every attempt refused; only the two control readings landed


def test_api_keys_scopes_injection_and_flood(workdir: Path) -> None:
    row = api_intruders(workdir, "quick")
    assert row.ok, row
    assert row.figures["unauthorised successes"] == 0
    assert (row.figures["injection accepted"], row.figures["injection 5xx"], row.figures["leaks"]) == (0, 0, 0)
    assert row.figures["storage or registry changed"] is False
    assert row.figures["others 429"] == 0
    assert int(row.figures["flood 429"]) > 0  # the flooding client was limited
    assert row.accepted_bad == 0
