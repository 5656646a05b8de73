# The firmware's copy of the metric catalogue (contract/catalogue.py): names and valid
# ranges. The firmware imports nothing from the Python packages; a test holds this copy
# equal to the contract's. A value outside its range is a sensor fault, never published.
# `fw` is the one string metric; its range is its length. Two flat tuples rather than a
# dict of tuples: a third of the RAM, and the catalogue is read a few times a minute.
NAMES = ("pm1", "pm25", "pm10", "co2_ppm", "o3_ppb", "co_ppm", "no2_ppb", "so2_ppb", "temp_c", "rh", "pressure_hpa",
         "rain_mm", "wind_ms", "water_level_cm", "water_capped", "laeq_db", "vehicle_count", "battery_v", "rssi_dbm", "free_mem",
         "uptime_s", "buffered", "dropped", "fw")
# (lo, hi) of NAMES[i] at RANGES[2 * i], RANGES[2 * i + 1]
RANGES = (0, 1000, 0, 1000, 0, 2000, 250, 10000, 0, 1000, 0, 100, 0, 2000, 0, 2000, -10, 60, 0, 100, 850, 1100,
          0, 300, 0, 80, 0, 1000, 0, 1, 20, 140, 0, 100000, 0, 15, -120, 0, 0, 16777216,
          0, 4294967296, 0, 16777216, 0, 4294967296, 0, 32)


def in_range(name: str, value: float) -> bool:
    if name not in NAMES:
        return False
    i = NAMES.index(name) * 2
    return RANGES[i] <= value <= RANGES[i + 1]
