# Runs INSIDE the MicroPython unix port for `nakhon firmware bench`: boots the real
# firmware (config.json and world.json in the current folder: one laser PM sensor, the
# reading interval under test, device time accelerated) and runs its main loop for
# `hours` of device time, offline (readings go to flash). Prints one JSON line: the laser
# on-time the fake sensor metered (it counts from the sensor's wake command to its sleep
# command, as the part's laser runs), the node's own count, the readings taken.
import json
import sys

import fakehw

hours = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0

import app  # noqa: E402

node = app.boot()
if node is None:
    raise SystemExit("laser bench: the device did not boot")
start_meter = fakehw.laser_ms()
t0 = fakehw.world_ms()
end = t0 + int(hours * 3600000)
while fakehw.world_ms() < end:
    node.step()
    node.idle()
fw = 0
for _, drv in node.sensors:
    if hasattr(drv, "laser_ms"):
        fw += drv.laser_ms()
print(json.dumps({"device_ms": fakehw.world_ms() - t0, "laser_ms": fakehw.laser_ms() - start_meter, "fw_laser_ms": fw,
                  "readings": node.seq, "interval_s": node.interval_s}))
