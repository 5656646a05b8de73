"""The roll-up keeper's bookkeeping: a stop bounded in time that forgets no touched hour."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from contract import rollups as rq
from contract.influx import Influx
from ingest.rollups import Rollups
from tests.influx_stub import InfluxStub

pytestmark = pytest.mark.unit

HOUR = rq.HOUR_MS
T0 = 1_764_000_000_000 // HOUR * HOUR


def _lines(hours: int) -> list[str]:
    return [f"air,city=phuket,device=pk-{h:03d} pm25=10.0 {T0 + h * HOUR + 60_000}" for h in range(0, hours * 2, 2)]


def test_touched_notes_each_hour_and_the_newest_reading_per_series() -> None:
    with InfluxStub() as stub:
        r = Rollups(Influx(stub.url), 60, ready=lambda: True)
        r.touched([*_lines(3), f"air,city=phuket,device=pk-000 pm25=11.0 {T0 + 120_000}", "ingest_stats,worker=w received=1i 5"])
        assert r._hours == {("air", T0), ("air", T0 + 2 * HOUR), ("air", T0 + 4 * HOUR)}
        assert r._pending_latest["air,city=phuket,device=pk-000"] == (T0 + 120_000, "pm25=11.0")


def test_a_slow_database_cannot_hold_the_stop_and_the_hours_survive_it(tmp_path: Path) -> None:
    state = tmp_path / "rollups.json"
    with InfluxStub() as slow:
        r = Rollups(Influx(slow.url), 3600, ready=lambda: True, state_file=state, stop_budget_s=0.5)
        r.start("nakhon")
        slow.state.hang_s = 2.0  # from now each request takes 2 s: all the work would take over 10 s
        r.touched(_lines(3))
        t0 = time.monotonic()
        r.stop()
        took = time.monotonic() - t0
    # the budget, plus the one request in flight when it ran out (and room for a loaded machine)
    assert took < 0.5 + 2.0 + 2.0, f"stop took {took:.2f} s against a budget of 0.5 s"
    saved = json.loads(state.read_text())
    assert saved["hours"], "the unfinished hours were not saved"

    with InfluxStub() as fast:  # the next start takes them up and recomputes them
        r2 = Rollups(Influx(fast.url), 3600, ready=lambda: True, state_file=state)
        r2.start("nakhon")
        r2.run_once(force=True)
        r2.stop()
        recomputed = [q for q in fast.state.queries if q.startswith("SELECT") and " INTO " in q]
    assert not state.exists()
    assert len(recomputed) >= len(saved["hours"]), (saved, recomputed)


def test_a_quick_stop_finishes_everything_and_saves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "rollups.json"
    with InfluxStub() as stub:
        r = Rollups(Influx(stub.url), 3600, ready=lambda: True, state_file=state, stop_budget_s=10)
        r.start("nakhon")
        r.touched(_lines(3))
        r.stop()
        assert len([q for q in stub.state.queries if q.startswith("SELECT") and " INTO " in q]) == 3
        assert any(w.endswith(" 0") for w in stub.points()), "latest values were not written"
    assert not state.exists()
