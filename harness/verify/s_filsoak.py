"""Scenario 23: a firmware-in-the-loop soak of 30 device days (accelerated).

Real firmware devices (firmware/ on the MicroPython unix port, the fakes' clock at
360x: a device day in four real minutes, one reading every 300 s) against a fresh platform,
through a cycle of faults repeated every three device days: Wi-Fi down for three hours,
the broker stopped for two, a power cut, and a sensor that stops answering for two
(the PM sensor's UART silent on an air node, the I2C sensor gone on a weather node).

Judged by: readings lost (every reading a device's console says it took must be in
InfluxDB once the run drains), reset loops (no crash exit, no safe mode: three crashes
in a row), the ring's bound (no reading dropped from it; the most it held is reported),
and each fault seen in the status the device publishes: the backlog after Wi-Fi and
broker outages (`buffered` > 0 in the first status after), `reset: power_on` after the
cut, the sensor's fault in `faults` while it is silent.

The broker, the ingest and the database run in real time: the devices' MQTT keepalive is
300 s of theirs (under a second of real time), as 30 s would be a ping every 80 ms. (At
1440x even that fails: a ping's answer takes longer than the device waits for it, the
link drops at every keepalive and the ring only grows.)

Quick: two devices (air, weather) for six device hours, the cycle pressed into them
(each fault a twelfth as long; about 2 real minutes with the platform); full: four
devices for 30 device days (about two hours).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from contract.boards import SENSORS
from contract.cities import BUILTIN_CITIES
from contract.influx import Influx
from harness.verify.report import Row, Size
from harness.verify.s_devices import _platform, _say, _stored_points
from harness.verify.scenarios import register
from nakhon.firmware_tools import FIRMWARE, MICROPYTHON, fakes_mpy, firmware_mpy
from simulators.fil import FirmwareDevice, FirmwareFleet, FirmwarePaths, console_dropped
from simulators.run import firmware_fleet, run_config
from simulators.scenario import Scenario

T23 = "firmware-in-the-loop soak of 30 device days with Wi-Fi, broker, power and sensor faults"
SCALE = 360  # device seconds per real second
KEEPALIVE_S = 300
INTERVAL_S = 300
CYCLE_S = 3 * 86400  # the faults' cycle, device seconds
# (kind, start, length) in device seconds within a cycle; none overlap
CYCLE = (("wifi", 8 * 3600, 3 * 3600), ("broker", 26 * 3600, 2 * 3600), ("power", 44 * 3600, 0), ("sensor", 56 * 3600, 2 * 3600))
SAFE_MODE_RE = re.compile(r"safe mode")


@dataclass
class _Fault:
    kind: str
    start: float  # real monotonic
    end: float


class _Statuses:
    """Every status document the devices publish, with the real time it arrived; reconnects
    quickly after the broker comes back."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.got: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="verify-soak-watch", protocol=mqtt.MQTTv311)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe("nakhon/v1/+/+/status", 1)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        if msg.retain or not isinstance(doc, dict) or doc.get("state") != "online":
            return  # a retained copy is an old status, not one published now
        with self.lock:
            self.got.setdefault(msg.topic.split("/")[3], []).append((time.monotonic(), doc))

    def of(self, device: str) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return list(self.got.get(device, []))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _sensor_fault(d: FirmwareDevice) -> tuple[dict[str, Any], str]:
    """The control that silences a sensor of this device, and the sensor's name in `faults`."""
    if d.dev.kind == "air":
        return {"uart_silent": True}, "pm"
    for s in SENSORS[d.dev.kind]:
        if "addr" in s:  # an I2C sensor gone from the bus
            return {"absent_i2c": [s["addr"]]}, s["name"]
        if s["type"] == "ultrasonic":  # no echo comes back
            return {"ultrasonic_absent": True}, s["name"]
        if "adc" in s:  # a microphone unplugged
            return {"adc_absent": [s["adc"]]}, s["name"]
    raise ValueError(f"no sensor fault for a {d.dev.kind} node")


def _seen(kind: str, f: _Fault, statuses: list[tuple[float, dict[str, Any]]], sensor: str) -> bool:
    """Whether the device's statuses show fault `f`."""
    after = [doc for t, doc in statuses if t >= f.end]
    during = [doc for t, doc in statuses if f.start <= t <= f.end + 2.0]
    if kind in ("wifi", "broker"):  # the backlog, in the first status once back
        return bool(after) and after[0].get("buffered", 0) > 0
    if kind == "power":
        return any(doc.get("reset") == "power_on" for doc in after[:3])
    return any(any(x.startswith(sensor + ":") for x in doc.get("faults", [])) for doc in during)


@register(23, T23)
def fil_soak(root: Path, size: Size) -> Row:
    full = size == "full"
    n_devices, days = (4, 30.0) if full else (2, 0.25)
    run_s = int(days * 86400)
    squeeze = 1 if full else 12  # quick: the three-day cycle in six hours
    row = Row(23, f"firmware soak, {days:g} device days, Wi-Fi/broker/power/sensor faults")
    with _platform(root) as platform:
        settings = platform.settings
        db = Influx(settings.influx_url)
        sc = Scenario(seed=23, mode="accelerated", speed=SCALE, since=run_s + 150 * SCALE + 6 * 3600, interval_s=INTERVAL_S, firmware=n_devices)
        paths = FirmwarePaths(FIRMWARE, fakes_mpy(), MICROPYTHON, firmware_mpy())
        fw: FirmwareFleet = firmware_fleet(sc, list(BUILTIN_CITIES), run_config(sc, settings), paths, root / "firmware")
        for d in fw.devices:
            d.config["mqtt"]["keepalive_s"] = KEEPALIVE_S
        watch = _Statuses(platform.broker.port)
        cycle_s = CYCLE_S // squeeze
        schedule = [(kind, c * cycle_s + at / squeeze, length / squeeze) for c in range(run_s // cycle_s) for kind, at, length in CYCLE]
        _say(f"{n_devices} firmware devices at {SCALE}x, a reading every {INTERVAL_S} s, for {days:g} device days "
             f"(about {run_s / SCALE / 60:.1f} real minutes); {len(schedule)} faults on each device")
        faults: list[_Fault] = []
        fw.start()
        try:
            t0 = time.monotonic()
            rev = 0
            for kind, at, length in schedule:
                time.sleep(max(0.0, t0 + at / SCALE - time.monotonic()))
                start = time.monotonic()
                if kind == "wifi":
                    for d in fw.devices:
                        d.control({"wifi_down": True})
                elif kind == "broker":
                    platform.broker.stop()
                elif kind == "power":
                    rev += 1
                    for d in fw.devices:
                        d.control({"power": "cut", "rev": rev})
                else:
                    for d in fw.devices:
                        d.control(_sensor_fault(d)[0])
                time.sleep(max(0.0, start + length / SCALE - time.monotonic()))
                if kind == "broker":
                    platform.broker.start()
                elif kind != "power":
                    for d in fw.devices:
                        d.control({})
                faults.append(_Fault(kind, start, time.monotonic()))
                _say(f"device day {at / 86400:4.1f}: {kind} fault over; "
                     f"{sum(len(d.readings()) for d in fw.devices)} readings taken so far")
            time.sleep(max(0.0, t0 + run_s / SCALE - time.monotonic()))
            taken = {d.dev.device_id: d.readings() for d in fw.devices}
            drain_t = time.monotonic()
            drained: float | None = None
            while time.monotonic() - drain_t < 120:
                if not any(set(t) - set(_stored_points(db, dev)) for dev, t in taken.items()):
                    drained = time.monotonic() - drain_t
                    break
                time.sleep(0.5)
        finally:
            fw.stop()
            watch.close()
        summary = fw.summary()
        taken_n = stored = lost = 0
        for dev, readings in taken.items():
            points = _stored_points(db, dev)
            taken_n += len(readings)
            got = sum(1 for s in readings if s in points)
            stored += got
            lost += len(readings) - got
        db.close()
        safe_modes = ring_dropped = 0
        max_buffered = 0
        unseen: list[str] = []
        for d in fw.devices:
            text = d.log_text()
            safe_modes += len(SAFE_MODE_RE.findall(text))
            ring_dropped += console_dropped(text)
            st = watch.of(d.dev.device_id)
            max_buffered = max([max_buffered, *(doc.get("buffered", 0) for _, doc in st)])
            ring_dropped = max([ring_dropped, *(doc.get("dropped", 0) for _, doc in st)])
            sensor = _sensor_fault(d)[1]
            unseen += [f"{d.dev.device_id} {f.kind}@{i}" for i, f in enumerate(faults) if not _seen(f.kind, f, st, sensor)]

    row.sent, row.stored, row.lost, row.recovery_s = taken_n, stored, lost, drained
    row.figures = {
        "devices": n_devices,
        "device days": float(days),
        "faults per device": len(faults),
        "faults not in status": len(unseen),
        "resets": summary["resets"],
        "crashes": summary["crashes"],
        "safe modes": safe_modes,
        "ring dropped": ring_dropped,
        "most buffered": max_buffered,
    }
    row.ok = (taken_n >= n_devices * run_s // INTERVAL_S * 0.9 and lost == 0 and summary["crashes"] == 0 and safe_modes == 0
              and ring_dropped == 0 and not unseen and drained is not None)
    row.note = (f"{n_devices} devices running firmware/ on the MicroPython unix port (ESP32 heap), fake clock at {SCALE}x, a reading every "
                f"{INTERVAL_S} s; every {cycle_s / 86400:g} device days: Wi-Fi down {3 / squeeze:g} h, broker stopped {2 / squeeze:g} h, "
                f"a power cut, a sensor silent {2 / squeeze:g} h. Lost = readings a console says were taken and InfluxDB lacks after "
                "the drain; faults are matched to the statuses the devices published" + (f"; not seen: {', '.join(unseen[:6])}" if unseen else ""))
    return row
