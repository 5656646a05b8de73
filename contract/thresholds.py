"""Alert thresholds the simulators, API and dashboards agree on.

Water level is measured above each gauge's datum (catalogue `water_level_cm`).
The warning level is where a city's drainage office starts watching a canal;
the flood level is where water leaves the channel. Cities not listed use
DEFAULT_WATER_LEVEL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Thai 24-hour ambient standard for PM2.5 (Pollution Control Department, 2023).
PM25_STANDARD_24H: Final = 37.5
# Thai 24-hour ambient standard for PM10.
PM10_STANDARD_24H: Final = 120.0


@dataclass(frozen=True, slots=True)
class WaterLevel:
    warning_cm: float
    flood_cm: float


DEFAULT_WATER_LEVEL: Final = WaterLevel(warning_cm=180.0, flood_cm=250.0)

WATER_LEVEL: Final[dict[str, WaterLevel]] = {
    "phuket": WaterLevel(warning_cm=180.0, flood_cm=250.0),
    "khon_kaen": WaterLevel(warning_cm=200.0, flood_cm=280.0),
    "chiang_mai": WaterLevel(warning_cm=220.0, flood_cm=300.0),
}


def water_level(city: str) -> WaterLevel:
    return WATER_LEVEL.get(city, DEFAULT_WATER_LEVEL)
