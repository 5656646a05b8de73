"""`nakhon verify` scenarios 7-10, quick sizes: bad input through the real broker and ingest."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.verify.rig import Stack
from harness.verify.s_inputs import fuzzed_payloads, hostile_names, outside_schema, padded_batch, payload_sizes, timestamps

pytestmark = pytest.mark.e2e  # the scenario starts its own platform


def test_fuzzed_payloads_are_refused_with_a_reason_or_stored(workdir: Path) -> None:
    row = fuzzed_payloads(workdir, "quick")
    assert row.ok, row
    assert row.figures["ingest crashes"] == 0 and row.figures["without reason"] == 0
    assert row.sent >= 450 and row.lost == 0 and row.accepted_bad == 0
    assert row.rejected == int(row.figures["refused msgs"]) > 100  # every refused message is a dead letter
    assert row.stored > 100  # the valid cases hypothesis made were stored, each once


def test_hostile_ids_and_names_create_nothing_outside_the_schema(workdir: Path) -> None:
    row = hostile_names(workdir, "quick")
    assert row.ok, row
    assert row.figures["outside schema"] == 0 and row.figures["not dead-lettered"] == 0
    assert row.accepted_bad == 0 and row.stored == 3 and row.rejected == row.sent - 6


def test_the_schema_check_sees_a_forged_point(workdir: Path) -> None:
    """The probe scenario 8 relies on: a point written around the ingest with a forged tag and field is reported."""
    with Stack(workdir, ingest=False) as stack:
        stack.db.write([f"air,city=phuket,device=ok-ph-01,evil=1 pm25=1.0,sneaky=2.0 {int(time.time() * 1000)}",
                        f"air,city=atlantis,device=ok-ph-01 pm25=1.0 {int(time.time() * 1000)}"])
        bad = outside_schema(stack, {"ok-ph-01"})
    assert sorted(bad) == ["city air.'atlantis'", "field raw.air.'sneaky'", "tag key air.'evil'"]


def test_timestamps_outside_the_window_are_refused(workdir: Path) -> None:
    row = timestamps(workdir, "quick")
    assert row.ok, row
    assert row.accepted_bad == 0 and row.lost == 0 and row.figures["wrong reason"] == 0
    assert (row.sent, row.stored, row.rejected) == (42, 14, 28)  # 2 windows x (17 clocks + a 4-reading batch)


def test_payload_sizes_and_ingest_memory(workdir: Path) -> None:
    row = payload_sizes(workdir, "quick")
    assert row.ok, row
    assert (row.figures["oversize dead-lettered"], row.figures["oversize sent"]) == (22, 22)
    assert (row.figures["over broker limit refused"], row.figures["over broker limit sent"]) == (4, 4)
    assert row.stored == 10 + 1000 * 21 and row.lost == 0 and row.accepted_bad == 0


def test_padded_batch_is_exactly_the_size_asked() -> None:
    assert len(padded_batch(262_144, time.time(), 0)) == 262_144
    assert len(padded_batch(1024, time.time(), 0, readings=10)) == 1024
