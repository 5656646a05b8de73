# The status document (contract/status.py), published retained on connect, on change and
# every status_interval_s. Loaded on demand and dropped again (app._done): it runs once in
# minutes, not every cycle. A field that cannot be read (a battery ADC on ADC2 while the
# Wi-Fi is on) is left out and reported as a fault, never an exception that drops the link.
import gc
import json

import hal
import log
from app import FW

try:
    from typing import Any  # for the type checker; MicroPython skips annotations
except ImportError:
    pass


def doc(node: Any) -> bytes:
    """The status document of the node as it stands."""
    gc.collect()
    battery = None
    bat = node.battery
    if bat:
        try:  # e.g. an ADC2 pin, which the ESP32 cannot read while Wi-Fi is on
            battery = round(bat[0].read_uv() * bat[1] / 1000000, 2)
            if not 0 <= battery <= 15:
                raise ValueError(battery)
            node.fault("battery", None)
        except Exception as e:
            battery = None
            if "battery" not in node.faults:
                log.warn("battery: %r" % (e,))
            node.fault("battery", "error")
    d = {
        "v": 1, "state": "online", "fw": FW, "reset": node.reset,
        "rssi_dbm": max(-120, min(0, hal.rssi())), "free_mem": gc.mem_free(),
        "uptime_s": node.uptime_ms // 1000,
        "buffered": node.ring.pending + len(node.staging) + node.pretime,
        "dropped": node.ring.dropped,
        "faults": sorted(["%s:%s" % kv for kv in node.faults.items()])[:16],
        "interval_s": node.interval_s, "kind": node.place[0], "lat": node.place[1], "lon": node.place[2],
    }
    laser = -1
    for _, drv in node.sensors:
        if hasattr(drv, "laser_ms"):  # a laser PM sensor: its on-time, kept in flash across resets
            laser = max(0, laser) + drv.laser_ms()
    if laser >= 0:
        d["laser_s"] = laser // 1000
    if node.config_seq >= 0:
        d["config_seq"] = node.config_seq
    if battery is not None:
        d["battery_v"] = battery
    try:  # the last over-the-air update: staging, trial, updated, refused or rolled_back, and why (ota.py)
        with open("ota/result") as f:
            d["ota"] = json.loads(f.read())
    except (OSError, ValueError):
        pass
    return json.dumps(d).encode()


def status(node: Any) -> None:
    """Publish the status document (retained)."""
    text = doc(node)
    node.client.publish(node.t_status, (text,), retain=True)
    node.status_due = False
    node.status_at = hal.ticks_ms()
    log.info("status: " + text.decode())
