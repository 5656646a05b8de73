"""Colours, labels and limits the panels share, all taken from the contract.

Thai AQI bands and PCD colours come from `contract.aqi`; the PM standards
and water-level warning/flood levels from `contract.thresholds`. Only the
noise guide level is defined here (no other component needs it).
"""

from __future__ import annotations

from typing import Final

from contract import aqi
from contract.thresholds import PM10_STANDARD_24H, PM25_STANDARD_24H, water_level
from dashboards import panels
from dashboards.panels import Json

# Thai 24-hour average noise standard (National Environment Board): 70 dB(A).
NOISE_STANDARD_24H_DBA: Final = 70.0
STANDARD_COLOR: Final = "red"
WARNING_COLOR: Final = "orange"


def band_label(band: aqi.Band) -> str:
    return f"{band.th} / {band.en}"


def aqi_thresholds() -> Json:
    """Colours by AQI value: each band from its lower edge."""
    first, *rest = aqi.BANDS
    return panels.thresholds(first.hex, *((b.lo, b.hex) for b in rest))


def band_thresholds() -> Json:
    """Colours by band number 1-5 (the `band` field of hourly.aqi)."""
    first, *rest = aqi.BANDS
    return panels.thresholds(first.hex, *((b.level, b.hex) for b in rest))


def band_mappings() -> list[Json]:
    """Band number -> band name, in PCD colours."""
    return [panels.value_mapping({str(b.level): (band_label(b), b.hex) for b in aqi.BANDS})]


def pm25_thresholds() -> Json:
    return panels.thresholds("green", (PM25_STANDARD_24H, STANDARD_COLOR))


def pm10_thresholds() -> Json:
    return panels.thresholds("green", (PM10_STANDARD_24H, STANDARD_COLOR))


def water_thresholds(city: str) -> Json:
    level = water_level(city)
    return panels.thresholds("green", (level.warning_cm, WARNING_COLOR), (level.flood_cm, STANDARD_COLOR))


def noise_thresholds() -> Json:
    return panels.thresholds("green", (NOISE_STANDARD_24H_DBA, WARNING_COLOR))
