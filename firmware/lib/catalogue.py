# The firmware's copy of the metric catalogue (contract/catalogue.py): name -> valid range.
# The firmware imports nothing from the Python packages; a test holds this copy equal
# to the contract's. A value outside its range is a sensor fault, never published.
# `fw` is the one string metric; its range is its length.
METRICS = {
    "pm1": (0, 1000),
    "pm25": (0, 1000),
    "pm10": (0, 2000),
    "co2_ppm": (250, 10000),
    "o3_ppb": (0, 1000),
    "co_ppm": (0, 100),
    "no2_ppb": (0, 2000),
    "so2_ppb": (0, 2000),
    "temp_c": (-10, 60),
    "rh": (0, 100),
    "pressure_hpa": (850, 1100),
    "rain_mm": (0, 300),
    "wind_ms": (0, 80),
    "water_level_cm": (0, 1000),
    "laeq_db": (20, 140),
    "vehicle_count": (0, 100000),
    "battery_v": (0, 15),
    "rssi_dbm": (-120, 0),
    "free_mem": (0, 16777216),
    "uptime_s": (0, 4294967296),
    "buffered": (0, 16777216),
    "dropped": (0, 4294967296),
    "fw": (0, 32),
}


def in_range(name: str, value: float) -> bool:
    r = METRICS.get(name)
    return r is not None and r[0] <= value <= r[1]
