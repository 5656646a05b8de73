"""Pin maps of the pilot boards (ESP32 DevKitC), one per device kind.

The `sensors` entries of a device's config.json: `nakhon firmware config`
writes them for a technician, and the firmware-in-the-loop simulator wires its
fake hardware by them, so both describe the same board.
"""

from __future__ import annotations

from typing import Any, Final

MM_PER_TIP: Final = 0.2794  # rain gauge: millimetres per bucket tip

# The heap the firmware gets on the 64-bit MicroPython unix port (tests, firmware in the
# loop, `nakhon firmware bench`). A plain ESP32 without PSRAM leaves about 110 KB to
# MicroPython, in 32-bit objects; the 64-bit VM needs about 1.47x for the same objects
# (0.68x the other way), and here the fake hardware and the test's feed share the heap,
# where a board has `machine` in ROM. 130,000 B is still less than the board's 110 KB in
# 32-bit terms (about 88 KB); the bench judges the firmware's own peaks against its budget.
VM_HEAP_BYTES: Final = 130_000

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
