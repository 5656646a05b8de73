"""The city signal models: reproducible, and shaped like the cities (no servers needed)."""

from __future__ import annotations

import calendar
import math

import numpy as np
import pytest

from contract.catalogue import METRICS
from contract.cities import BUILTIN_CITIES
from contract.thresholds import PM25_STANDARD_24H, water_level
from simulators.devices import KIND_METRICS, PROPORTIONS, kind_counts, make_fleet
from simulators.signals import Signals, local_hours, weekday

FLEET = make_fleet(list(BUILTIN_CITIES), 40, seed=7)


def _dev(city: str, kind: str, n: int = 0):  # type: ignore[no-untyped-def]
    return [d for d in FLEET if d.city == city and d.kind == kind][n]


def _month(year: int, month: int, step: float, days: int | None = None) -> np.ndarray:
    """Timestamps every `step` s through a local (Bangkok) calendar month."""
    start = calendar.timegm((year, month, 1, 0, 0, 0)) - 7 * 3600
    n_days = days or calendar.monthrange(year, month)[1]
    return np.arange(start, start + n_days * 86400, step, dtype=float)


def test_same_seed_same_fleet_and_readings() -> None:
    again = make_fleet(list(BUILTIN_CITIES), 40, seed=7)
    assert again == FLEET
    ts = _month(2026, 3, 600, days=2)
    for dev in FLEET[::17]:
        assert Signals(7).readings(dev, ts, 600) == Signals(7).readings(dev, ts, 600)
    other = Signals(8).readings(FLEET[0], ts, 600)
    assert other != Signals(7).readings(FLEET[0], ts, 600)
    assert make_fleet(list(BUILTIN_CITIES), 40, seed=8) != FLEET


def test_readings_do_not_depend_on_how_they_are_generated() -> None:
    """One at a time (real time) or all at once (backfill): the same values."""
    dev = _dev("phuket", "water")
    ts = _month(2026, 9, 600, days=1)[:40]
    batch = Signals(7).readings(dev, ts, 600)
    single = [Signals(7).readings(dev, [t], 600)[0] for t in ts]
    assert batch == single


def test_values_are_catalogue_metrics_within_range() -> None:
    s = Signals(7)
    ts = _month(2026, 4, 3600)
    for dev in FLEET[::5]:
        assert set(dev.metrics) == set(KIND_METRICS[dev.kind])
        for name, values in s.sample(dev, ts, 3600).items():
            m = METRICS[name]
            assert m.lo <= values.min() and values.max() <= m.hi, name
            assert np.all(np.isfinite(values))


def test_chiang_mai_haze_season() -> None:
    """March daily PM2.5 far above the Thai standard and above August by a wide margin; worst at night and early morning."""
    s = Signals(7)
    for n in range(3):
        dev = _dev("chiang_mai", "air", n)
        march, august = _month(2026, 3, 900), _month(2026, 8, 900)
        pm_march = s.sample(dev, march, 900)["pm25"]
        pm_aug = s.sample(dev, august, 900)["pm25"]
        daily_march = pm_march.reshape(-1, 96).mean(axis=1)
        assert pm_march.mean() > 1.5 * PM25_STANDARD_24H
        assert pm_march.mean() > 5 * pm_aug.mean()
        assert (daily_march > PM25_STANDARD_24H).mean() > 0.8  # most March days breach the standard
        assert pm_aug.mean() < PM25_STANDARD_24H / 2  # clean rainy season
        h = local_hours(march)
        night = pm_march[(h >= 2) & (h < 8)].mean()
        afternoon = pm_march[(h >= 13) & (h < 18)].mean()
        assert night > 1.5 * afternoon


def test_phuket_rain_drives_water_level_over_the_warning_level() -> None:
    s = Signals(7)
    warning = water_level("phuket").warning_cm
    ts = _month(2026, 9, 600)
    crossings, wet_over = 0, 0.0
    for n in range(3):
        dev = _dev("phuket", "water", n)
        v = s.sample(dev, ts, 600)
        level, rain = v["water_level_cm"], v["rain_mm"]
        over = level > warning
        assert over.any(), "September storms must push the canal over the warning level"
        assert not over.all()
        wet_over += over.mean()
        rain_12h = np.convolve(rain, np.ones(72))[: len(rain)]  # rain in the 12 h up to each reading
        starts = np.flatnonzero(over[1:] & ~over[:-1]) + 1
        crossings += len(starts)
        for i in starts:
            assert rain_12h[i] > 15, f"crossing at {i} without a rain event before it"
        assert np.corrcoef(rain_12h, level)[0, 1] > 0.4
    assert crossings >= 2
    # the dry season (February) spends far less time over the warning level
    dry_over = sum((s.sample(_dev("phuket", "water", n), _month(2026, 2, 600), 600)["water_level_cm"] > warning).mean() for n in range(3))
    assert dry_over < wet_over / 4


def test_khon_kaen_traffic_rush_hours() -> None:
    s = Signals(7)
    ts = _month(2026, 6, 900)
    dev = _dev("khon_kaen", "traffic")
    v = s.sample(dev, ts, 900)
    weekdays = weekday(ts) < 5
    h = local_hours(ts).astype(int)
    by_hour = np.array([v["vehicle_count"][weekdays & (h == k)].mean() for k in range(24)])
    top_two = set(np.argsort(by_hour)[-4:].tolist())
    assert top_two & {7, 8} and top_two & {17, 18}, by_hour.round()
    assert by_hour[7] > 1.3 * by_hour[11] and by_hour[17] > 1.3 * by_hour[14]
    assert by_hour[7] > 5 * by_hour[3]
    noise = np.array([v["laeq_db"][weekdays & (h == k)].mean() for k in range(24)])
    assert noise[17] > noise[3] + 6  # the road is louder at rush hour


def test_temperature_humidity_battery_and_rssi_everywhere() -> None:
    s = Signals(7)
    ts = _month(2026, 4, 900)
    h = local_hours(ts)
    for city in ("phuket", "khon_kaen", "chiang_mai"):
        v = s.sample(_dev(city, "weather"), ts, 900)
        temp, rh = v["temp_c"], v["rh"]
        dawn, afternoon = temp[(h >= 5) & (h < 7)].mean(), temp[(h >= 13) & (h < 16)].mean()
        assert afternoon > dawn + 3, city
        assert 24 < temp.mean() < 33, city  # April, the hot season
        assert rh[(h >= 5) & (h < 7)].mean() > rh[(h >= 13) & (h < 16)].mean()
        bat = v["battery_v"]
        assert bat[(h >= 14) & (h < 16)].mean() > bat[(h >= 5) & (h < 7)].mean()  # charged by day, drained by night
        assert bat.min() > 3.3 and bat.max() < 4.25
        assert -100 < v["rssi_dbm"].mean() < -50
    # Chiang Mai's cool season is cooler than Phuket's
    jan = _month(2026, 1, 3600)
    assert s.sample(_dev("chiang_mai", "weather"), jan, 3600)["temp_c"].mean() < s.sample(_dev("phuket", "weather"), jan, 3600)["temp_c"].mean() - 3


@pytest.mark.parametrize("city", ["phuket", "khon_kaen", "chiang_mai"])
def test_kinds_in_proportion_and_placed_inside_the_city(city: str) -> None:
    counts = kind_counts(city, 1000)
    assert sum(counts.values()) == 1000
    for kind, share in PROPORTIONS[city].items():
        assert counts[kind] == round(1000 * share)
    c = next(c for c in BUILTIN_CITIES if c.slug == city)
    for d in (d for d in FLEET if d.city == city):
        km = math.hypot((d.lat - c.lat) * 111, (d.lon - c.lon) * 111 * math.cos(math.radians(c.lat)))
        assert km < c.radius_km * 1.5, d
