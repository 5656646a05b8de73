"""Run the unchanged firmware on the MicroPython unix port, as a device would run.

A `Device` owns a folder that plays the board's flash: config.json, the fake world
(world.json), run-time faults (control.json), and whatever the firmware writes (ring,
seq). The process runs `firmware/main.py` with `lib/` compiled to .mpy (as `nakhon
firmware build` puts it on a board) and the heap capped at a plain ESP32's; when
the firmware resets (watchdog, machine.reset, deep sleep) the fake exits with code 75
and the device is started again in the same folder, like the chip rebooting.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from contract.boards import VM_HEAP_BYTES
from nakhon.firmware_tools import fakes_mpy, firmware_mpy

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
MICROPYTHON = str(ROOT / ".venv" / "bin" / "micropython")
HEAPSIZE = VM_HEAP_BYTES  # (contract/boards.py says why)
RESET_EXIT = 75

READING_RE = re.compile(r"reading seq=(\d+) ts=(\d+\.\d+)")


def device_config(device_id: str, port: int, city: str = "chiang_mai", **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "device_id": device_id,
        "city": city,
        "kind": "air",
        "lat": 18.79,
        "lon": 98.98,
        "wifi": {"ssid": "field", "password": "secret"},
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive_s": 30},
        "ntp_host": "ntp.test",
        "interval_s": 10,
        "status_interval_s": 60,
        "sensors": [
            {"name": "pm", "type": "pms5003", "uart": 2, "rx": 16, "tx": 17},
            {"name": "th", "type": "sht3x", "i2c": 0, "scl": 22, "sda": 21, "addr": 0x44},
        ],
        "battery": {"adc": 35, "divider": 2.0},
        "ring": {"segments": 16, "segment_bytes": 4096, "chunk": 1},
        "batch": 50,
        "watchdog_ms": 30000,
        "backoff": {"base_ms": 1000, "cap_ms": 60000},
    }
    cfg.update(over)
    return cfg


def world(scale: float = 30.0, behind_s: float = 3 * 3600, **over: Any) -> dict[str, Any]:
    """The fake hardware around the device; its clock starts `behind_s` in the past so an
    accelerated device never stamps readings in the platform's future."""
    w: dict[str, Any] = {
        "scale": scale,
        "real0_ns": time.time_ns(),
        "epoch0_ms": int((time.time() - behind_s) * 1000),
        "wifi": {"ssid": "field", "password": "secret", "assoc_ms": 2000},
        "rssi": -67,
        "uart": {"2": {"type": "pms5003", "pm25": 30, "corrupt_every": 0}},
        "i2c": {"0": {"68": {"type": "sht3x", "temp_c": 31.0, "rh": 60.0}}},
        "adc": {"35": {"volts": 3.9, "divider": 2.0}},
        "wdt_min_real_ms": 5000,  # a loaded test machine must not trip a healthy device's watchdog
    }
    w.update(over)
    return w


def compiled_fakes() -> Path:
    return fakes_mpy()


def compiled_lib() -> Path:
    """firmware/lib as .mpy, as a board runs it (`nakhon firmware build`)."""
    return firmware_mpy()


class Device:
    def __init__(self, folder: Path, config: dict[str, Any], world_doc: dict[str, Any], heapsize: int = HEAPSIZE) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.world = world_doc
        self.heapsize = heapsize
        self.log_path = self.folder / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.boots = 0
        self.exit_codes: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        (self.folder / "config.json").write_text(json.dumps(config))
        (self.folder / "world.json").write_text(json.dumps(world_doc))
        self.control({})
        (self.folder / "fakestate.json").unlink(missing_ok=True)  # power-on

    # --- life cycle ---------------------------------------------------------------------
    def _spawn(self) -> subprocess.Popen[bytes]:
        # As on a board, the current folder (the device's flash) comes before lib in sys.path.
        env = dict(os.environ, MICROPYPATH=f":{compiled_lib()}:{compiled_fakes()}:.frozen")
        with open(self.log_path, "ab") as out:
            self.boots += 1
            return subprocess.Popen(
                [MICROPYTHON, "-X", f"heapsize={self.heapsize}", str(FIRMWARE / "main.py")],
                cwd=self.folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def _supervise(self) -> None:
        while not self._stop.is_set():
            assert self.proc is not None
            rc = self.proc.wait()
            if self._stop.is_set():
                return
            self.exit_codes.append(rc)
            if rc != RESET_EXIT:
                return  # a crash or a clean exit: the test sees it
            self.proc = self._spawn()

    def start(self) -> Device:
        self.proc = self._spawn()
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()
        return self

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

    def __enter__(self) -> Device:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- faults and observation ------------------------------------------------------------
    def control(self, doc: dict[str, Any], timeout: float = 10.0) -> None:
        """Inject faults; returns once a running device's fakes have taken them in."""
        self._rev = getattr(self, "_rev", 0) + 1
        tmp = self.folder / "control.json.tmp"
        tmp.write_text(json.dumps({**doc, "rev": self._rev}))
        tmp.replace(self.folder / "control.json")
        ack = self.folder / "control.ack"
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            if ack.exists() and ack.read_text() == str(self._rev):
                return
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def readings(self) -> dict[int, float]:
        """seq -> ts of every reading the firmware dated, from its console."""
        return {int(s): float(t) for s, t in READING_RE.findall(self.log())}

    def wait_log(self, pattern: str, timeout: float = 30.0, count: int = 1) -> list[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = rx.findall(self.log())
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"device log never showed {pattern!r} x{count}; tail:\n{self.log()[-3000:]}")
            if not self.running and (not self.exit_codes or self.exit_codes[-1] != RESET_EXIT) and self.proc and self.proc.poll() is not None:
                time.sleep(0.3)
                if not self.running:
                    raise AssertionError(f"device stopped (exit {self.proc.poll()}); tail:\n{self.log()[-3000:]}")
            time.sleep(0.1)
