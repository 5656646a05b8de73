"""Thai AQI against hand-worked values at and around every breakpoint, for both PM2.5 tables.

Each expected value was worked by hand with I = (Ij-Ii)/(Xj-Xi) * (X-Xi) + Ii
after rounding X to the table's precision; AQI rounded half up.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from contract.aqi import band_of, sub_index, table_for, thai_aqi

OLD = date(2022, 6, 1)  # the 2018 PM2.5 table
NEW = date(2024, 1, 1)  # the June 2023 PM2.5 table

CASES = [
    # PM2.5, 2018 table: 0-25 | 26-37 | 38-50 | 51-90 | 91+ (integers)
    ("pm25", OLD, 0, 0), ("pm25", OLD, 12, 12), ("pm25", OLD, 25, 25), ("pm25", OLD, 25.4, 25), ("pm25", OLD, 25.5, 26),
    ("pm25", OLD, 26, 26), ("pm25", OLD, 31, 37), ("pm25", OLD, 37, 50), ("pm25", OLD, 37.49, 50), ("pm25", OLD, 37.5, 51),
    ("pm25", OLD, 38, 51), ("pm25", OLD, 44, 76), ("pm25", OLD, 50, 100), ("pm25", OLD, 51, 101), ("pm25", OLD, 70, 149),
    ("pm25", OLD, 90, 200), ("pm25", OLD, 91, 203),
    # PM2.5, 2023 table: 0-15.0 | 15.1-25.0 | 25.1-37.5 | 37.6-75.0 | 75.1+ (one decimal)
    ("pm25", NEW, 0, 0), ("pm25", NEW, 15.0, 25), ("pm25", NEW, 15.04, 25), ("pm25", NEW, 15.05, 26), ("pm25", NEW, 15.1, 26),
    ("pm25", NEW, 20, 38), ("pm25", NEW, 25.0, 50), ("pm25", NEW, 25.1, 51), ("pm25", NEW, 30, 70), ("pm25", NEW, 37.5, 100),
    ("pm25", NEW, 37.6, 101), ("pm25", NEW, 50, 134), ("pm25", NEW, 75.0, 200), ("pm25", NEW, 75.1, 200), ("pm25", NEW, 100, 266),
    # PM10: 0-50 | 51-80 | 81-120 | 121-180
    ("pm10", NEW, 50, 25), ("pm10", NEW, 51, 26), ("pm10", NEW, 80, 50), ("pm10", NEW, 81, 51), ("pm10", NEW, 100, 75),
    ("pm10", NEW, 120, 100), ("pm10", NEW, 121, 101), ("pm10", NEW, 180, 200),
    # O3 (8 h, ppb): 0-35 | 36-50 | 51-70 | 71-120
    ("o3", NEW, 35, 25), ("o3", NEW, 36, 26), ("o3", NEW, 50, 50), ("o3", NEW, 51, 51), ("o3", NEW, 70, 100), ("o3", NEW, 71, 101),
    ("o3", NEW, 120, 200),
    # CO (8 h, ppm): 0-4.4 | 4.5-6.4 | 6.5-9.0 | 9.1-30.0
    ("co", NEW, 4.4, 25), ("co", NEW, 4.44, 25), ("co", NEW, 4.45, 26), ("co", NEW, 4.5, 26), ("co", NEW, 6.4, 50),
    ("co", NEW, 6.5, 51), ("co", NEW, 9.0, 100), ("co", NEW, 9.1, 101), ("co", NEW, 30.0, 200),
    # NO2 (1 h, ppb): 0-60 | 61-106 | 107-170 | 171-340
    ("no2", NEW, 60, 25), ("no2", NEW, 61, 26), ("no2", NEW, 106, 50), ("no2", NEW, 107, 51), ("no2", NEW, 170, 100),
    ("no2", NEW, 171, 101), ("no2", NEW, 340, 200),
    # SO2 (1 h, ppb): 0-100 | 101-200 | 201-300 | 301-400
    ("so2", NEW, 100, 25), ("so2", NEW, 101, 26), ("so2", NEW, 200, 50), ("so2", NEW, 201, 51), ("so2", NEW, 300, 100),
    ("so2", NEW, 301, 101), ("so2", NEW, 400, 200),
]


@pytest.mark.parametrize(("pollutant", "day", "conc", "expected"), CASES)
def test_sub_index_hand_worked(pollutant: str, day: date, conc: float, expected: int) -> None:
    assert sub_index(pollutant, conc, day) == expected


def test_table_changes_on_its_effective_day_in_bangkok_time() -> None:
    assert sub_index("pm25", 30, date(2023, 5, 31)) == 35  # 24/11*(30-26)+26 = 34.7
    assert sub_index("pm25", 30, date(2023, 6, 1)) == 70
    # 17:00 UTC on 31 May is midnight in Bangkok: the new table already
    assert table_for("pm25", datetime(2023, 5, 31, 16, 59, tzinfo=UTC)).effective == date(2018, 1, 1)
    assert table_for("pm25", datetime(2023, 5, 31, 17, 0, tzinfo=UTC)).effective == date(2023, 6, 1)


def test_aqi_is_the_highest_sub_index_with_its_band() -> None:
    result = thai_aqi({"pm25": 30, "pm10": 100, "o3": None}, NEW)
    assert result is not None
    assert (result.aqi, result.pollutant, result.sub) == (75, "pm10", {"pm25": 70, "pm10": 75})
    assert (result.band.level, result.band.colour) == (3, "yellow")
    assert thai_aqi({"pm25": None}, NEW) is None


@pytest.mark.parametrize(("aqi", "level", "colour", "en"), [
    (0, 1, "blue", "Very good"), (25, 1, "blue", "Very good"), (26, 2, "green", "Good"), (50, 2, "green", "Good"),
    (51, 3, "yellow", "Moderate"), (100, 3, "yellow", "Moderate"), (101, 4, "orange", "Starting to affect health"),
    (200, 4, "orange", "Starting to affect health"), (201, 5, "red", "Affects health"), (450, 5, "red", "Affects health"),
])
def test_bands(aqi: int, level: int, colour: str, en: str) -> None:
    b = band_of(aqi)
    assert (b.level, b.colour, b.en) == (level, colour, en)
    assert b.th  # Thai label present


def test_negative_concentration_is_refused() -> None:
    with pytest.raises(ValueError):
        sub_index("pm25", -1, NEW)
