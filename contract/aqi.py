"""The Thai AQI of the Pollution Control Department (PCD).

Each pollutant's concentration, averaged over its own window (PM2.5 and
PM10 over 24 hours, O3 and CO over 8 hours, NO2 and SO2 over 1 hour), is
rounded to the precision of its breakpoint table and turned into a
sub-index by linear interpolation inside its band:

    I = (Ij - Ii) / (Xj - Xi) * (X - Xi) + Ii

The AQI is the highest sub-index (rounded half up to an integer), and the
pollutant that gave it is reported. Above the top breakpoint PCD publishes
no upper bound: the 101-200 segment's slope is carried on.

Breakpoint tables are versioned by the date they took effect, so a past day
is judged by the table in force then. PCD tightened the PM2.5 table when the
24-hour PM2.5 standard went from 50 to 37.5 µg/m³ (effective 1 June 2023).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Final


@dataclass(frozen=True, slots=True)
class Band:
    level: int  # 1..5
    lo: int  # AQI range of the band
    hi: int
    en: str
    th: str
    colour: str  # PCD's colour name
    hex: str


BANDS: Final[tuple[Band, ...]] = (
    Band(1, 0, 25, "Very good", "คุณภาพอากาศดีมาก", "blue", "#3BCCFF"),
    Band(2, 26, 50, "Good", "คุณภาพอากาศดี", "green", "#92D050"),
    Band(3, 51, 100, "Moderate", "ปานกลาง", "yellow", "#FFFF00"),
    Band(4, 101, 200, "Starting to affect health", "เริ่มมีผลกระทบต่อสุขภาพ", "orange", "#FFA200"),
    Band(5, 201, 10_000, "Affects health", "มีผลกระทบต่อสุขภาพ", "red", "#F04646"),
)

# The AQI value at each band's edges; a table gives the concentration at each.
_AQI_EDGES: Final = ((0, 25), (26, 50), (51, 100), (101, 200))

# Pollutants, their averaging window (hours), unit, and the catalogue metric they come from.
POLLUTANTS: Final[dict[str, tuple[int, str, str]]] = {
    "pm25": (24, "µg/m³", "pm25"),
    "pm10": (24, "µg/m³", "pm10"),
    "o3": (8, "ppb", "o3_ppb"),
    "co": (8, "ppm", "co_ppm"),
    "no2": (1, "ppb", "no2_ppb"),
    "so2": (1, "ppb", "so2_ppb"),
}


@dataclass(frozen=True, slots=True)
class Table:
    """Concentration ranges for the four bounded bands (the fifth is open above)."""

    pollutant: str
    effective: date
    decimals: int  # concentrations are rounded to this many decimals first
    ranges: tuple[tuple[float, float], ...]  # (Xi, Xj) for AQI 0-25, 26-50, 51-100, 101-200


# PCD's published tables. PM2.5 has two versions; the others are unchanged since 2018.
TABLES: Final[dict[str, tuple[Table, ...]]] = {
    "pm25": (
        Table("pm25", date(2018, 1, 1), 0, ((0, 25), (26, 37), (38, 50), (51, 90))),
        Table("pm25", date(2023, 6, 1), 1, ((0, 15.0), (15.1, 25.0), (25.1, 37.5), (37.6, 75.0))),
    ),
    "pm10": (Table("pm10", date(2018, 1, 1), 0, ((0, 50), (51, 80), (81, 120), (121, 180))),),
    "o3": (Table("o3", date(2018, 1, 1), 0, ((0, 35), (36, 50), (51, 70), (71, 120))),),
    "co": (Table("co", date(2018, 1, 1), 1, ((0, 4.4), (4.5, 6.4), (6.5, 9.0), (9.1, 30.0))),),
    "no2": (Table("no2", date(2018, 1, 1), 0, ((0, 60), (61, 106), (107, 170), (171, 340))),),
    "so2": (Table("so2", date(2018, 1, 1), 0, ((0, 100), (101, 200), (201, 300), (301, 400))),),
}


@dataclass(frozen=True, slots=True)
class Aqi:
    aqi: int
    band: Band
    pollutant: str  # the one with the highest sub-index
    sub: dict[str, int]  # every pollutant's sub-index


def table_for(pollutant: str, on: date | datetime) -> Table:
    """The table in force on a day (a datetime is taken in Bangkok time's date via UTC+7)."""
    day = _bangkok_date(on) if isinstance(on, datetime) else on
    tables = TABLES[pollutant]
    chosen = tables[0]
    for t in tables:
        if t.effective <= day:
            chosen = t
    return chosen


def _bangkok_date(t: datetime) -> date:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return datetime.fromtimestamp(t.timestamp() + 7 * 3600, UTC).date()


def _round(x: float, decimals: int) -> Decimal:
    return Decimal(repr(float(x))).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)


def sub_index(pollutant: str, concentration: float, on: date | datetime) -> int:
    """One pollutant's sub-index, by linear interpolation in the table in force `on`."""
    if concentration < 0:
        raise ValueError("a concentration cannot be negative")
    table = table_for(pollutant, on)
    x = _round(concentration, table.decimals)
    for (ii, ij), (xi, xj) in zip(_AQI_EDGES, table.ranges, strict=True):
        if x <= Decimal(repr(xj)):
            x_lo = max(Decimal(repr(xi)), Decimal(0))
            value = Decimal(ij - ii) / (Decimal(repr(xj)) - x_lo) * (max(x, x_lo) - x_lo) + ii
            return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    # above the table: carry the 101-200 line on
    top_lo, top_hi = (Decimal(repr(v)) for v in table.ranges[-1])
    value = Decimal(200 - 101) / (top_hi - top_lo) * (x - top_lo) + 101
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def band_of(aqi: int) -> Band:
    for b in BANDS:
        if aqi <= b.hi:
            return b
    return BANDS[-1]


def thai_aqi(concentrations: dict[str, float | None], on: date | datetime) -> Aqi | None:
    """The AQI from averaged concentrations (keys of POLLUTANTS); None if none given."""
    sub = {p: sub_index(p, c, on) for p, c in concentrations.items() if c is not None and p in POLLUTANTS}
    if not sub:
        return None
    pollutant = max(sub, key=lambda p: (sub[p], -list(POLLUTANTS).index(p)))
    value = sub[pollutant]
    return Aqi(value, band_of(value), pollutant, sub)
