"""The metric catalogue: the one list of what a device may report.

Each metric has a unit, the InfluxDB measurement it is stored in and the
physically valid range. Ingest validates against it, the API and dashboards
read it, the simulators produce it and the firmware mirrors it (a test
holds the firmware's copy to this one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    unit: str
    measurement: str
    lo: float
    hi: float
    description: str
    kind: str = "float"  # "float" or "string" (only `fw`)


# Measurements (one per sensor family); the storage schema uses these names.
AIR: Final = "air"
WEATHER: Final = "weather"
WATER: Final = "water"
NOISE: Final = "noise"
TRAFFIC: Final = "traffic"
DEVICE: Final = "device"
MEASUREMENTS: Final = (AIR, WEATHER, WATER, NOISE, TRAFFIC, DEVICE)

_METRICS: tuple[Metric, ...] = (
    # air: laser PM counters read 0..1000 µg/m³; beyond that the sensor is saturated.
    Metric("pm1", "µg/m³", AIR, 0, 1000, "PM1.0 mass concentration"),
    Metric("pm25", "µg/m³", AIR, 0, 1000, "PM2.5 mass concentration"),
    Metric("pm10", "µg/m³", AIR, 0, 2000, "PM10 mass concentration"),
    Metric("co2_ppm", "ppm", AIR, 250, 10000, "CO2 concentration"),
    Metric("o3_ppb", "ppb", AIR, 0, 1000, "ozone, 8-hour AQI input"),
    Metric("co_ppm", "ppm", AIR, 0, 100, "carbon monoxide, 8-hour AQI input"),
    Metric("no2_ppb", "ppb", AIR, 0, 2000, "nitrogen dioxide, 1-hour AQI input"),
    Metric("so2_ppb", "ppb", AIR, 0, 2000, "sulphur dioxide, 1-hour AQI input"),
    # weather: Thai extremes with generous margins.
    Metric("temp_c", "°C", WEATHER, -10, 60, "air temperature"),
    Metric("rh", "%", WEATHER, 0, 100, "relative humidity"),
    Metric("pressure_hpa", "hPa", WEATHER, 850, 1100, "barometric pressure"),
    Metric("rain_mm", "mm", WEATHER, 0, 300, "rain since the previous reading"),
    Metric("wind_ms", "m/s", WEATHER, 0, 80, "wind speed"),
    # water: ultrasonic ranger mounted above a canal or drain.
    Metric("water_level_cm", "cm", WATER, 0, 1000, "water level above the gauge datum"),
    # 1: the water is at or above water_level_cm, the highest level the ranger can measure
    # (the water is inside its blind zone, as at a flood peak): a level, not a fault.
    # 0 (or absent, from older firmware): water_level_cm was measured.
    Metric("water_capped", "", WATER, 0, 1, "1: the water is at or above water_level_cm (the sensor's blind zone)"),
    # noise: A-weighted equivalent level over the reading interval.
    Metric("laeq_db", "dB(A)", NOISE, 20, 140, "equivalent continuous sound level"),
    # traffic
    Metric("vehicle_count", "vehicles", TRAFFIC, 0, 100000, "vehicles since the previous reading"),
    # device health
    Metric("battery_v", "V", DEVICE, 0, 15, "battery voltage"),
    Metric("rssi_dbm", "dBm", DEVICE, -120, 0, "Wi-Fi signal strength"),
    Metric("free_mem", "bytes", DEVICE, 0, 1 << 24, "free heap"),
    Metric("uptime_s", "s", DEVICE, 0, 1 << 32, "seconds since boot"),
    Metric("buffered", "readings", DEVICE, 0, 1 << 24, "readings held in the flash ring"),
    Metric("dropped", "readings", DEVICE, 0, 1 << 32, "readings dropped from a full ring"),
    Metric("fw", "", DEVICE, 0, 32, "firmware version (string, up to 32 chars)", kind="string"),
)

METRICS: Final[dict[str, Metric]] = {m.name: m for m in _METRICS}

# Firmware versions are stored as a string field: keep them to a safe alphabet.
FW_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$"


def metrics_of(measurement: str) -> list[Metric]:
    """The metrics stored in one measurement, in catalogue order."""
    return [m for m in _METRICS if m.measurement == measurement]
