"""Reading values for simulated devices: seeded, so the same seed gives the same readings."""

from __future__ import annotations

import math
import zlib

import numpy as np

from contract.catalogue import METRICS

_BASE: dict[str, tuple[float, float]] = {  # metric -> (typical value, daily swing)
    "pm1": (12.0, 6.0),
    "pm25": (25.0, 12.0),
    "pm10": (40.0, 15.0),
    "temp_c": (29.0, 4.0),
    "rh": (70.0, 15.0),
    "pressure_hpa": (1008.0, 2.0),
    "rain_mm": (0.2, 0.2),
    "wind_ms": (2.5, 1.5),
    "water_level_cm": (60.0, 10.0),
    "laeq_db": (62.0, 8.0),
    "vehicle_count": (40.0, 30.0),
    "battery_v": (3.9, 0.2),
    "rssi_dbm": (-67.0, 3.0),
}


def reading(device_id: str, metrics: tuple[str, ...], ts: float, seed: int) -> dict[str, float]:
    """Values for one device at time `ts`: a daily cycle plus seeded noise, within the catalogue's range."""
    rng = np.random.default_rng([seed, zlib.crc32(device_id.encode()), int(ts)])
    phase = 2 * math.pi * (((ts / 3600.0) + 7) % 24) / 24  # local (UTC+7) time of day
    out: dict[str, float] = {}
    noise = rng.normal(0.0, 1.0, len(metrics))
    for k, name in enumerate(metrics):
        base, swing = _BASE[name]
        value = base + swing * math.sin(phase - math.pi / 2) + swing * 0.2 * float(noise[k])
        metric = METRICS[name]
        value = min(max(value, metric.lo), metric.hi)
        out[name] = round(value, 2) if name != "vehicle_count" else float(round(value))
    return out
