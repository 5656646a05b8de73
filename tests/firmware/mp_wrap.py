# ruff: noqa: SIM105, UP031  (MicroPython: no contextlib, no f-string habit on the device side)
# Runs INSIDE the MicroPython unix port with the ESP32's ticks (2^30 ms period) run a
# million times faster than real time: a week (more than half the period) passes in
# under a second. Drives the real rain driver, clock and node across the wrap and prints
# one JSON line per check (test_esp32_time.py asserts on them). cwd holds config.json.
import json

import fakehw

# No access point in reach: the node runs on its own (no broker to escalate about).
fakehw.configure({"scale": 1000000, "ticks0_ms": (1 << 30) - 60000, "wifi": {"ssid": "elsewhere"}})

import hal  # noqa: E402
import app  # noqa: E402
from mpcheck import out  # noqa: E402
from clock import Clock  # noqa: E402
from drivers.rain import Rain  # noqa: E402

DAY = 86400000


def edge(rain, t):
    fakehw._override = t  # the tick count the interrupt handler sees for this edge
    try:
        rain._irq(None)
    finally:
        fakehw._override = None


# Rain: one tip, seven dry days (read once a day), then three tips with two bounces each.
rain = Rain(27, 0.2, 50)  # no counter: the pin-interrupt path, debounced in software
t0 = hal.ticks_ms()
edge(rain, t0)
m = {}
rain.read(m)
first = m["rain_mm"]
for _ in range(7):
    hal.sleep_ms(DAY)
    rain.read({})
now = hal.ticks_ms()
for k in range(3):
    t = hal.ticks_add(now, k * 600000)
    for b in (0, 2, 4):
        edge(rain, hal.ticks_add(t, b))
m = {}
rain.read(m)
out("rain", first=first, mm=m["rain_mm"], bounces=rain.bounces, raw_now=hal.ticks_ms(), raw_t0=t0)

# The clock's schedule: NTP due in 6 hours, asked daily (the node asks every loop) for 8 days.
clock = Clock("ntp.test")
clock._next = hal.ticks_add(hal.ticks_ms(), 6 * 3600 * 1000)
due = []
for _ in range(8):
    hal.sleep_ms(DAY)
    due.append(clock.due())
out("clock", due=due)

# A node up for 8 days, its loop run once a day: uptime in status.
# The true time passed comes from the fake's own clock, which does not wrap.
node = app.boot()  # as main.py boots it (config, drivers, then the boot code)


def unwrapped(t):
    # The fake's device time (no wrap) at tick count t, from one reading of its clock.
    d = fakehw._device_ms()
    return d - hal.ticks_diff((fakehw._ticks0 + d) & fakehw._MASK, t)


born = unwrapped(node.boot)
for _ in range(8):
    hal.sleep_ms(DAY)
    node.step()
true_ms = unwrapped(node.ticks) - born
import report  # noqa: E402

doc = json.loads(report.doc(node))
out("uptime", uptime_s=doc["uptime_s"], uptime_ms=node.uptime_ms, true_ms=true_ms, faults=doc["faults"])
