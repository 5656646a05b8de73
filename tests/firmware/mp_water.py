# ruff: noqa: SIM105, UP031  (MicroPython: no contextlib, no f-string habit on the device side)
# Runs INSIDE the MicroPython unix port: the water-level driver against the fake ranger,
# whose echo crosses the world's air at the speed of sound that air has (temperature,
# humidity), and the flood peak inside the ranger's blind zone; then the whole node, so
# the ranger gets the temperature its own SHT3x measured, in a VM of its own (argument
# "node": a board boots into a fresh heap). One JSON line per check.
import json
import sys

import fakehw

W = {"scale": 50, "ultrasonic": {"distance_cm": 300}, "i2c": {"0": {"68": {"type": "sht3x", "temp_c": 40.0, "rh": 50.0}}}}
fakehw.configure(W)

import app  # noqa: E402  (loaded first, as main.py does)
from mpcheck import out, read  # noqa: E402

NODE = sys.argv[-1] == "node"


if not NODE:
    from start import make

    us = make({"type": "ultrasonic", "trig": 5, "echo": 18, "mount_cm": 400})
    rows = []
    for t in (20, 25, 30, 35, 40, 45):
        for rh in (0, 60, 95):
            W["ultrasonic"] = {"distance_cm": 300, "air_c": t, "rh": rh}
            us.air({"temp_c": t, "rh": rh})
            m, err = read(us)
            rows.append([t, rh, m.get("water_level_cm"), m.get("water_capped"), err])
    out("water_temp", rows=rows)

    us.air({"temp_c": 30.0})
    W["ultrasonic"] = {"distance_cm": 8, "air_c": 30.0, "blind_cm": 20}  # the flood peak, 8 cm under the ranger
    peak = read(us)
    W["ultrasonic"] = {"absent": True}
    absent = read(us)
    out("water_peak", peak=peak, absent=absent)
    raise SystemExit(0)

# The whole node: the ranger is listed before the SHT3x, and still gets this cycle's air.
W["ultrasonic"] = {"distance_cm": 300}  # the air the SHT3x measures: 40 °C, 50 %
with open("config.json", "w") as f:
    json.dump({"device_id": "pk-water-001", "city": "phuket", "kind": "water", "lat": 7.9, "lon": 98.4,
               "wifi": {"ssid": "nowhere", "password": "x"}, "mqtt": {"host": "127.0.0.1", "port": 1},
               "sensors": [{"name": "level", "type": "ultrasonic", "trig": 5, "echo": 18, "mount_cm": 400},
                           {"name": "th", "type": "sht3x", "i2c": 0, "scl": 22, "sda": 21, "addr": 0x44}]}, f)
node = app.boot()
node.take_reading()
with open("state/pretime") as f:
    line = f.read().strip().split("\n")[-1]
out("water_node", m=json.loads(line.split(" ", 3)[3]), order=[n for n, _ in node.sensors])

