"""The API's pure cores: history folding and planning, answer shaping, the rate limiter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api.history import QueryError, aggregate_query, buckets, combine_hourly, points
from api.security import RateLimiter

pytestmark = pytest.mark.unit

H = 3_600_000
T0 = 1_764_028_800_000  # a multiple of a day


def _hourly(rows: list[tuple[int, float | None, int, float | None, float | None]]) -> list[dict]:
    cols = ["time", "mean_pm25", "count_pm25", "min_pm25", "max_pm25"]
    return [{"name": "air", "columns": cols, "values": [list(r) for r in rows]}]


def test_folding_hourly_means_weights_each_hour_by_its_count() -> None:
    series = _hourly([(T0, 10.0, 1, 10.0, 10.0), (T0 + H, 40.0, 3, 20.0, 60.0), (T0 + 6 * H, 5.0, 2, 4.0, 6.0)])
    folded = combine_hourly(series, ["pm25"], 6 * 3600, "mean")
    assert folded == [(T0, {"pm25": (10.0 * 1 + 40.0 * 3) / 4}), (T0 + 6 * H, {"pm25": 5.0})]


@pytest.mark.parametrize(("agg", "want"), [("min", 10.0), ("max", 60.0)])
def test_folding_min_and_max(agg: str, want: float) -> None:
    series = _hourly([(T0, 10.0, 1, 10.0, 10.0), (T0 + H, 40.0, 3, 20.0, 60.0)])
    assert combine_hourly(series, ["pm25"], 86400, agg) == [(T0, {"pm25": want})]  # type: ignore[arg-type]


def test_folding_skips_empty_hours_and_aligns_buckets_to_the_epoch() -> None:
    series = _hourly([(T0 + 3 * H, None, 0, None, None), (T0 + 5 * H, 7.0, 2, 6.0, 8.0)])
    assert combine_hourly(series, ["pm25"], 4 * 3600, "mean") == [(T0 + 4 * H, {"pm25": 7.0})]
    assert combine_hourly(_hourly([(T0, None, 0, None, None)]), ["pm25"], 3600, "mean") == []


def test_the_plan_picks_roll_ups_for_long_whole_hour_ranges_and_raw_otherwise() -> None:
    end = datetime(2026, 11, 29, tzinfo=UTC)
    week = aggregate_query("city", "phuket", "air", ["pm25"], end - timedelta(days=7), end, 3600, "mean", "auto")
    assert week.source == "hourly" and week.fold
    one_device = aggregate_query("device", "pk-001", "air", ["pm25"], end - timedelta(days=7), end, 3600, "mean", "auto")
    assert one_device.source == "hourly" and not one_device.fold  # its hourly points are the answer
    short = aggregate_query("city", "phuket", "air", ["pm25"], end - timedelta(hours=6), end, 3600, "mean", "auto")
    assert short.source == "raw"
    assert aggregate_query("city", "phuket", "air", ["pm25"], end - timedelta(days=7), end, 600, "mean", "auto").source == "raw"
    with pytest.raises(QueryError, match="whole hours"):
        aggregate_query("city", "phuket", "air", ["pm25"], end - timedelta(days=7), end, 600, "mean", "hourly")
    with pytest.raises(QueryError, match="more than"):
        aggregate_query("city", "phuket", "air", ["pm25"], end - timedelta(days=365), end, 60, "mean", "raw")
    assert "$id" in week.query.statement and week.query.params["id"] == "phuket"  # bound, never pasted


def test_points_leave_out_nulls_and_rows_of_nothing() -> None:
    series = [{"name": "air", "columns": ["time", "pm25", "pm10"], "values": [[1, 2.0, None], [2, None, None], [3, 4.0, 5.0]]}]
    assert points(series) == [{"time": 1, "values": {"pm25": 2.0}}, {"time": 3, "values": {"pm25": 4.0, "pm10": 5.0}}]
    plan = aggregate_query("city", "phuket", "air", ["pm25"], datetime(2026, 11, 28, tzinfo=UTC), datetime(2026, 11, 28, 6, tzinfo=UTC),
                           3600, "mean", "raw")
    assert buckets(plan, series, ["pm25", "pm10"], 3600, "mean") == [(1, {"pm25": 2.0}), (3, {"pm25": 4.0, "pm10": 5.0})]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_rate_limiter_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    rl = RateLimiter(clock=clock)
    assert [rl.take("a", 60) for _ in range(60)] == [0.0] * 60  # a burst up to the per-minute figure
    assert rl.take("a", 60) == pytest.approx(1.0)  # then one a second: wait a second
    assert rl.take("b", 60) == 0.0  # another caller has its own bucket
    clock.t += 0.5
    assert rl.take("a", 60) == pytest.approx(0.5)
    clock.t += 0.5
    assert rl.take("a", 60) == 0.0
    clock.t += 3600
    assert [rl.take("a", 60) for _ in range(60)] == [0.0] * 60  # never more than a burst, however long the pause
    assert rl.take("a", 60) > 0


def test_rate_limiter_memory_is_bounded() -> None:
    rl = RateLimiter(max_buckets=100, clock=Clock())
    for i in range(1000):
        rl.take(f"addr-{i}", 10)
    assert len(rl._buckets) <= 100
