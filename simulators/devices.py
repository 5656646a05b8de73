"""Simulated devices: identity, kind, placement and the metrics each reports.

Each city gets its device kinds in the proportions its pilot plans (Chiang
Mai watches the air, Phuket its canals, Khon Kaen its roads), placed around
named districts so that devices sit on land where such a sensor would be.
Cities added by configuration get a generic mix spread over their radius.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from contract.cities import City

# What each device kind reports (catalogue names only).
KIND_METRICS: dict[str, tuple[str, ...]] = {
    "air": ("pm1", "pm25", "pm10", "temp_c", "rh", "battery_v", "rssi_dbm"),
    "weather": ("temp_c", "rh", "pressure_hpa", "rain_mm", "wind_ms", "battery_v", "rssi_dbm"),
    "water": ("water_level_cm", "rain_mm", "battery_v", "rssi_dbm"),
    "noise": ("laeq_db", "battery_v", "rssi_dbm"),
    "traffic": ("vehicle_count", "laeq_db", "battery_v", "rssi_dbm"),
}
KINDS: tuple[str, ...] = tuple(KIND_METRICS)

# Share of each kind in a city's fleet.
PROPORTIONS: dict[str, dict[str, float]] = {
    "chiang_mai": {"air": 0.50, "weather": 0.15, "water": 0.10, "noise": 0.10, "traffic": 0.15},
    "phuket": {"air": 0.20, "weather": 0.15, "water": 0.30, "noise": 0.25, "traffic": 0.10},
    "khon_kaen": {"air": 0.25, "weather": 0.10, "water": 0.10, "noise": 0.20, "traffic": 0.35},
}
DEFAULT_PROPORTIONS = {"air": 0.35, "weather": 0.15, "water": 0.15, "noise": 0.15, "traffic": 0.20}


@dataclass(frozen=True, slots=True)
class District:
    name: str
    lat: float
    lon: float
    spread_km: float
    weight: float
    kinds: tuple[str, ...] = KINDS  # kinds that are placed here


# Places on land where each kind of sensor plausibly stands.
DISTRICTS: dict[str, tuple[District, ...]] = {
    "phuket": (
        District("phuket-town", 7.8847, 98.3880, 2.0, 3.0),
        District("patong", 7.8960, 98.2990, 1.2, 2.0, ("air", "noise", "traffic", "weather")),
        District("kathu", 7.9120, 98.3330, 1.5, 1.0),
        District("chalong", 7.8420, 98.3420, 1.5, 1.5),
        District("karon", 7.8460, 98.2980, 0.8, 0.8, ("air", "noise", "weather")),
        District("rawai", 7.7790, 98.3250, 1.0, 0.7),
        District("khlong-bang-yai", 7.8900, 98.3700, 1.0, 2.0, ("water", "weather")),
    ),
    "khon_kaen": (
        District("city-centre", 16.4322, 102.8236, 2.0, 3.0),
        District("university", 16.4740, 102.8230, 1.5, 1.5),
        District("mittraphap-road", 16.4400, 102.8050, 2.5, 2.0, ("traffic", "noise", "air")),
        District("bueng-kaen-nakhon", 16.4180, 102.8380, 0.8, 1.0, ("water", "weather", "air")),
        District("nong-khot", 16.4500, 102.8600, 2.0, 1.0),
    ),
    "chiang_mai": (
        District("old-city", 18.7883, 98.9853, 1.0, 3.0),
        District("nimman", 18.7990, 98.9680, 1.0, 1.5),
        District("chang-phueak", 18.8060, 98.9830, 1.5, 1.0),
        District("mae-ping", 18.7850, 99.0030, 1.0, 1.5, ("water", "weather", "air")),
        District("superhighway", 18.7700, 98.9750, 2.5, 1.5, ("traffic", "noise", "air")),
        District("san-sai", 18.8400, 99.0000, 2.0, 1.0, ("air", "weather", "water")),
    ),
}


@dataclass(frozen=True, slots=True)
class SimDevice:
    device_id: str
    city: str
    kind: str
    lat: float
    lon: float
    key: int  # stable per-device number: seeds its parameters and its noise

    @property
    def metrics(self) -> tuple[str, ...]:
        return KIND_METRICS[self.kind]


def city_tag(slug: str) -> str:
    return "".join(w[0] for w in slug.split("_"))[:3]


def kind_counts(city: str, n: int) -> dict[str, int]:
    """Exactly `n` devices split by the city's proportions (largest remainder)."""
    share = PROPORTIONS.get(city, DEFAULT_PROPORTIONS)
    raw = {k: n * share.get(k, 0.0) for k in KINDS}
    counts = {k: math.floor(v) for k, v in raw.items()}
    for k in sorted(KINDS, key=lambda k: (raw[k] - counts[k], share.get(k, 0)), reverse=True)[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def _interleave(counts: dict[str, int]) -> list[str]:
    """Kinds spread evenly through the list, so any prefix of the fleet is a fair mix."""
    slots = []
    for kind, c in counts.items():
        slots += [((i + 0.5) / c, kind) for i in range(c)]
    return [k for _, k in sorted(slots)]


def _place(city: City, kind: str, rng: np.random.Generator) -> tuple[float, float]:
    districts = [d for d in DISTRICTS.get(city.slug, ()) if kind in d.kinds]
    if districts:
        w = np.array([d.weight for d in districts])
        d = districts[int(rng.choice(len(districts), p=w / w.sum()))]
        lat0, lon0, spread = d.lat, d.lon, d.spread_km
        r_km = min(abs(rng.normal(0, spread)), 2.5 * spread)
    else:
        lat0, lon0 = city.lat, city.lon
        r_km = city.radius_km * math.sqrt(rng.random())
    theta = rng.random() * 2 * math.pi
    lat = lat0 + (r_km / 111.0) * math.sin(theta)
    lon = lon0 + (r_km / (111.0 * math.cos(math.radians(lat0)))) * math.cos(theta)
    return round(lat, 6), round(lon, 6)


def make_fleet(cities: list[City], per_city: int, seed: int = 1, prefix: str = "sim") -> list[SimDevice]:
    """`per_city` devices in each city, by the city's kind proportions, placed in its districts."""
    fleet = []
    for city in cities:
        rng = np.random.default_rng([seed, zlib.crc32(city.slug.encode())])
        tag = city_tag(city.slug)
        for i, kind in enumerate(_interleave(kind_counts(city.slug, per_city))):
            device_id = f"{prefix}-{tag}-{kind[:3]}-{i:05d}"
            lat, lon = _place(city, kind, rng)
            fleet.append(SimDevice(device_id, city.slug, kind, lat, lon, zlib.crc32(device_id.encode())))
    return fleet
