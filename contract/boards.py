"""Pin maps of the pilot boards (ESP32 DevKitC), one per device kind.

The `sensors` entries of a device's config.json: `nakhon firmware config`
writes them for a technician, and the firmware-in-the-loop simulator wires its
fake hardware by them, so both describe the same board.
"""

from __future__ import annotations

from typing import Any, Final

MM_PER_TIP: Final = 0.2794  # rain gauge: millimetres per bucket tip

SENSORS: Final[dict[str, list[dict[str, Any]]]] = {
    "air": [
        {"name": "pm", "type": "pms5003", "uart": 2, "rx": 16, "tx": 17},
        {"name": "th", "type": "sht3x", "i2c": 0, "scl": 22, "sda": 21, "addr": 0x44},
    ],
    "weather": [
        {"name": "thp", "type": "bme280", "i2c": 0, "scl": 22, "sda": 21, "addr": 0x76},
        {"name": "rain", "type": "rain", "pin": 27, "mm_per_tip": MM_PER_TIP, "debounce_ms": 50},
    ],
    "water": [{"name": "level", "type": "ultrasonic", "trig": 5, "echo": 18, "mount_cm": 400}],
    "noise": [{"name": "mic", "type": "sound", "adc": 34, "cal_db": 28.0}],
}
