# ruff: noqa
# MicroPython, unix port: the project's hardware fakes with the city signals fed in.
#
# hal.py takes its stand-ins from `fakehw`; this module comes first on MICROPYPATH, takes
# everything from the real fakes (loaded as `realhw`) and, at the fakes' safe points,
# copies the values in feed.json (written by the firmware-in-the-loop runner from the
# same signal models as the fleet) into the fake world: the PM sensor's UART frames, the
# SHT3x/BME280 registers, the ultrasonic echo, the rain gauge's tips, the microphone
# and battery ADCs and the Wi-Fi RSSI then carry the city's values.
import os

import realhw  # type: ignore  # the real fakes, compiled, under this name (see fil.py)
from realhw import *

_orig_service = realhw._service
_feed_mtime = None
_feed_checked = 0


def _set(d, key, value):
    if d is not None and value is not None:
        d[key] = value


def _apply(feed):
    w = realhw._world
    for spec in w.get("uart", {}).values():
        _set(spec, "pm25", feed.get("pm25"))
    for bus in w.get("i2c", {}).values():
        for dev in bus.values():
            for k in ("temp_c", "rh", "pressure_hpa"):
                _set(dev, k, feed.get(k))
    u = w.get("ultrasonic")
    if u is not None and feed.get("distance_cm") is not None:
        u["distance_cm"] = feed["distance_cm"]
    for adc in w.get("adc", {}).values():
        if "db" in adc:
            _set(adc, "db", feed.get("laeq_db"))
        if "volts" in adc:
            _set(adc, "volts", feed.get("battery_v"))
    _set(w, "rssi", feed.get("rssi_dbm"))
    r = w.get("rain")
    every = feed.get("tip_every_s")
    if r is not None and every is not None and every != r.get("tip_every_s"):
        for c in realhw._counters:
            c.value()  # the tips at the old rate first
        r["tip_every_s"] = every
        now = realhw.ticks_ms()
        for _, _, last in realhw._irqs:
            last[0] = now  # a new rain rate starts now: no burst of tips for the dry hours
        for c in realhw._counters:
            c.last = realhw.world_ms()
        if "rain_last" in realhw._state:
            realhw._state["rain_last"] = realhw.world_ms()


def _service():
    global _feed_mtime, _feed_checked
    _orig_service()
    now = realhw.time.time_ns() // 1000000
    if now - _feed_checked < 200:
        return
    _feed_checked = now
    try:
        m = os.stat("feed.json")[8]
        if m != _feed_mtime:
            with open("feed.json") as f:
                _apply(realhw.json.load(f))
            _feed_mtime = m
    except (OSError, ValueError):
        pass


realhw._service = _service
try:
    with open("feed.json") as f:
        _apply(realhw.json.load(f))
except (OSError, ValueError):
    pass
