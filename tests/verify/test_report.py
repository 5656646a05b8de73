"""The verification report: one row per scenario; a partial run updates only its rows."""

from __future__ import annotations

from pathlib import Path

from harness.verify.cli import _read_report, _report
from harness.verify.report import Row


def test_a_partial_run_replaces_its_rows_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "verify.md"
    first = [Row(1, "one", sent=10, stored=10, ok=True, note="first"), Row(3, "three", ok=True)]
    path.write_text(_report(first, ([], [], []), "A: `nakhon verify --only 1,3`"))
    path.write_text(_report([Row(3, "three again", lost=2, ok=False, note="lost two")], _read_report(path), "B: `nakhon verify --only 3`"))
    text = path.read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| 1 ") or ln.startswith("| 3 ")]
    assert rows[0].startswith("| 1 | one | readings | 10 | 10 | 0 |") and rows[0].endswith("PASS |")
    assert rows[1].startswith("| 3 | three again |") and rows[1].endswith("FAIL |")
    assert len(rows) == 2
    assert "1. first" in text and "3. lost two" in text
    assert text.index("- A: `nakhon verify --only 1,3`") < text.index("- B: `nakhon verify --only 3`")


def test_figures_are_values_printed_for_people() -> None:
    row = Row(4, "four", figures={"lost": 0, "queued": 12_345, "p99 ms": 16.66, "ratio": 0.254, "kicked off": False, "reasons": "bad_json 3"})
    assert row.figures["queued"] == 12_345  # what tests compare
    assert row.figure_text() == "lost 0; queued 12,345; p99 ms 16.7; ratio 0.254; kicked off no; reasons bad_json 3"
