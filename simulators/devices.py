"""Simulated devices: identity, kind, placement and the metrics each reports."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from contract.cities import City

# What each device kind reports, and its share of a city's fleet.
KIND_METRICS: dict[str, tuple[str, ...]] = {
    "air": ("pm1", "pm25", "pm10", "temp_c", "rh", "battery_v", "rssi_dbm"),
    "weather": ("temp_c", "rh", "pressure_hpa", "rain_mm", "wind_ms", "battery_v", "rssi_dbm"),
    "water": ("water_level_cm", "rain_mm", "battery_v", "rssi_dbm"),
    "noise": ("laeq_db", "vehicle_count", "battery_v", "rssi_dbm"),
}
KINDS: tuple[str, ...] = tuple(KIND_METRICS)


@dataclass(frozen=True, slots=True)
class SimDevice:
    device_id: str
    city: str
    kind: str
    lat: float
    lon: float

    @property
    def metrics(self) -> tuple[str, ...]:
        return KIND_METRICS[self.kind]


def make_fleet(cities: list[City], per_city: int, seed: int = 1, prefix: str = "sim") -> list[SimDevice]:
    """`per_city` devices in each city, kinds in turn, placed within the city radius."""
    rng = np.random.default_rng(seed)
    fleet = []
    for city in cities:
        tag = "".join(w[0] for w in city.slug.split("_"))[:3]
        for i in range(per_city):
            kind = KINDS[i % len(KINDS)]
            r_km = city.radius_km * math.sqrt(rng.random())
            theta = rng.random() * 2 * math.pi
            lat = city.lat + (r_km / 111.0) * math.sin(theta)
            lon = city.lon + (r_km / (111.0 * math.cos(math.radians(city.lat)))) * math.cos(theta)
            fleet.append(SimDevice(f"{prefix}-{tag}-{kind[:3]}-{i:05d}", city.slug, kind, round(lat, 6), round(lon, 6)))
    return fleet
