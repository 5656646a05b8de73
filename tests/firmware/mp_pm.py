# ruff: noqa: SIM105, UP031  (MicroPython: no contextlib, no f-string habit on the device side)
# Runs INSIDE the MicroPython unix port (heap capped like an ESP32): the laser PM drivers
# against the fake sensors (frames, corrupt ones, sleep/wake commands, warm-up, a laser
# on-time meter); prints one JSON line per sensor, which test_units.py asserts on.
import gc
import os

import fakehw

fakehw.configure({
    "scale": 50,  # device time 50x: a 30 s warm-up passes in 0.6 s
    "uart": {
        "1": {"type": "pms5003", "pm25": 40, "corrupt_every": 3, "corrupt_value": 999},
        "2": {"type": "sds011", "pm25": 55, "corrupt_every": 2, "corrupt_value": 999, "noise": True},
    },
})

import hal  # noqa: E402
import app  # noqa: E402, F401  (loaded first, as main.py does)
from mpcheck import out, read  # noqa: E402
from start import make  # noqa: E402


# PM over UART, with sleep between readings. The driver wakes its sensor when made
# (state unknown after a reset); a minute passes, then three readings one after another.
try:
    os.mkdir("state")
except OSError:
    pass
for uid, typ in ((1, "pms5003"), (2, "sds011")):
    drv = make({"type": typ, "name": "pm%d" % uid, "uart": uid, "rx": 16, "tx": 17})
    warm0 = drv.warming()
    hal.sleep_ms(60500)
    drv.uart.any()  # what arrived meanwhile is in the UART now (active mode only)
    before = drv.uart.frames
    reads = []
    for _ in range(3):
        m, err = read(drv)
        reads.append([m, err, drv.uart.frames])
    # sleep at a 5-minute interval: the laser's meter stands still while it sleeps
    drv.rest(300000)
    asleep = not drv.awake and not drv.uart.st[0]
    meter_a = drv.uart.laser_ms()
    hal.sleep_ms(200000)
    meter_b = drv.uart.laser_ms()
    # woken again: a read that does not wait for the warm-up gets the fan's first, low figures
    warm1 = drv.warming()
    drv.hot = True
    early, early_err = read(drv)
    drv.hot = False
    hal.sleep_ms(drv.warming())
    late, late_err = read(drv)
    rests = []
    for interval in (30000, 45000, 60000, 300000):
        drv.wake()
        drv.rest(interval)
        rests.append([interval, not drv.awake])
    out(typ, reads=reads, good=drv.good, bad=drv.bad, before=before, after=drv.uart.frames, overflow=drv.uart.overflow,
        warm=[warm0, warm1], asleep=asleep, meter=[meter_a, meter_b], early=[early, early_err], late=[late, late_err],
        rests=rests, laser=[drv.laser_ms(), drv.uart.laser_ms()], kept=int(open("state/laser.pm%d" % uid).read()))
    del drv, reads, m, early, late, rests
    gc.collect()
