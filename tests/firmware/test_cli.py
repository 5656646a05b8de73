"""`nakhon firmware ...`: build, flash dry run, device config."""

from __future__ import annotations

import pytest

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from nakhon.firmware_tools import HEAPSIZE, MICROPYTHON, fakes_mpy

pytestmark = pytest.mark.integration  # mpy-cross and the MicroPython VM

ROOT = Path(__file__).resolve().parents[2]


def nakhon(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nakhon", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_build_compiles_the_firmware_and_the_board_can_load_it(tmp_path: Path) -> None:
    out = tmp_path / "build"
    proc = nakhon("firmware", "build", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "boot.py").exists() and (out / "main.py").exists()
    mpys = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mpy"))
    assert "lib/app.mpy" in mpys and "lib/drivers/pm.mpy" in mpys
    assert not list((out / "lib").rglob("*.py"))
    total = proc.stdout.strip().splitlines()[-1]
    built = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.name != "clean_board.py")  # (run by flash, not copied)
    assert total.startswith("total") and f"{built} B built" in total
    # The .mpy files load in the MicroPython VM (same .mpy version as the boards).
    env = dict(os.environ, MICROPYPATH=f"{out / 'lib'}:{fakes_mpy()}:.frozen")
    run = subprocess.run([MICROPYTHON, "-X", f"heapsize={HEAPSIZE}", "-c", "import app, config, drivers.pm, drivers.bme280; print(app.FW)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip(), run.stderr


def test_flash_dry_run_prints_the_exact_commands(tmp_path: Path) -> None:
    proc = nakhon("firmware", "flash", "--port", "/dev/ttyUSB0", "--image", "ESP32_GENERIC-v1.24.1.bin",
                  "--config", "cm-air-001.json", "--build", "build/firmware", "--file", "certs/ca.pem", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert [shlex.split(line) for line in proc.stdout.strip().splitlines()] == [
        ["esptool", "--chip", "esp32", "--port", "/dev/ttyUSB0", "erase-flash"],
        ["esptool", "--chip", "esp32", "--port", "/dev/ttyUSB0", "--baud", "460800", "write-flash", "-z", "0x1000", "ESP32_GENERIC-v1.24.1.bin"],
        ["mpremote", "connect", "/dev/ttyUSB0", "run", "build/firmware/clean_board.py",
         "+", "fs", "cp", "-r", "build/firmware/lib", ":", "+", "fs", "cp", "build/firmware/boot.py", ":boot.py",
         "+", "fs", "cp", "build/firmware/main.py", ":main.py", "+", "fs", "cp", "cm-air-001.json", ":config.json",
         "+", "fs", "cp", "certs/ca.pem", ":ca.pem", "+", "reset"],
    ]


def test_flash_removes_what_the_new_build_no_longer_has(tmp_path: Path) -> None:
    """A board flashed with an older build: its lib/ holds a module the new build dropped,
    a source file the board would import before the new .mpy, and a dropped driver. The
    build's clean_board.py (what `flash` runs first, via mpremote) runs here in the
    MicroPython VM on a folder standing for the board's file system."""
    out = tmp_path / "build"
    assert nakhon("firmware", "build", "--out", str(out)).returncode == 0
    board = tmp_path / "board"
    shutil.copytree(out / "lib", board / "lib")  # what the board has of the new build
    stale = ["lib/app.py", "lib/oldmod.mpy", "lib/drivers/gone.mpy", "lib/old/x.mpy"]
    for rel in stale:
        (board / rel).parent.mkdir(parents=True, exist_ok=True)
        (board / rel).write_text("stale")
    (board / "config.json").write_text("{}")
    (board / "state").mkdir()
    (board / "state" / "seq").write_text("1000")
    (board / "main.py").write_text("# main")
    run = subprocess.run([MICROPYTHON, str(out / "clean_board.py")], cwd=board, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    left = sorted(p.relative_to(board).as_posix() for p in board.rglob("*") if p.is_file())
    built = sorted(p.relative_to(out).as_posix() for p in (out / "lib").rglob("*") if p.is_file())
    assert left == sorted([*built, "config.json", "main.py", "state/seq"])  # the stale files gone, nothing else
    assert not (board / "lib" / "old").exists()  # and the folder they left empty
    assert sorted(ln.split()[1] for ln in run.stdout.splitlines()) == sorted([*stale, "lib/old/"])


def test_config_writes_a_bootable_config_and_refuses_a_bad_one(tmp_path: Path) -> None:
    out = tmp_path / "config.json"
    args = ["firmware", "config", "--device-id", "cm-air-007", "--city", "chiang_mai", "--kind", "air", "--lat", "18.79", "--lon", "98.98",
            "--wifi-ssid", "cm-field", "--wifi-password", "pw", "--mqtt-host", "mqtt.example.org", "--tls", "--ca-file", "ca.pem", "--password", "s3cret"]
    proc = nakhon(*args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(out.read_text())
    assert cfg["device_id"] == "cm-air-007" and cfg["mqtt"]["port"] == 8883 and cfg["mqtt"]["tls"] is True
    assert cfg["mqtt"]["username"] == "cm-air-007" and cfg["mqtt"]["password"] == "s3cret"
    assert [s["type"] for s in cfg["sensors"]] == ["pms5003", "sht3x"]

    bad = nakhon(*args, "--sensor", "pm=pms5003,uart=2", "--out", "-")
    assert bad.returncode == 2
    assert "sensors[0] (pms5003) needs a number 'rx'" in bad.stderr
    assert nakhon(*[a if a != "chiang_mai" else "atlantis" for a in args]).returncode == 2
    # Verified TLS without a CA could never connect (the ESP32 has no CA store): refused.
    no_ca = nakhon(*[a for a in args if a not in ("--ca-file", "ca.pem")], "--out", "-")
    assert no_ca.returncode == 2
    assert "mqtt.tls_verify needs mqtt.ca" in no_ca.stderr


def test_bench_measures_the_build_against_the_heap_target(tmp_path: Path) -> None:
    proc = nakhon("firmware", "bench", "--root", str(tmp_path / "bench"), "--readings", "120", "--laser-hours", "0.1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert "all .mpy as on a board" in text
    rows = {}
    for line in text.splitlines():
        if line.strip().startswith("peak,") and "TLS connect" not in line:
            label = line.split(",", 1)[1].split("  ")[0].strip()
            kb32 = float(line.split("32-bit ~")[1].split("KB")[0])  # the ESP32's 32-bit figure, where the target applies
            ratio = float(line.split("ratio ")[1].split()[0])
            assert "target 40.0 KB" in line
            assert abs(ratio - kb32 / 40.0) < 0.007  # the ratio is the peak over the target (both rounded)
            rows["OTA" if label.startswith("OTA:") else label] = kb32
    assert set(rows) == {"boot (config check, drivers, state restore)", "read-publish-confirm cycle", "120-reading replay (batches of 50)",
                         "status publish", "retained config document", "reconnect (session, config, status)", "OTA"}
    assert "staged, checked and switched to: yes" in text  # the over-the-air step updated to this very build
    assert rows["read-publish-confirm cycle"] < 40.0 and rows["120-reading replay (batches of 50)"] < 40.0
    assert "peak, TLS connect (CA verified; mbedtls buffers incl.)" in text
    assert "replay: 120 of 120 readings published, 120 confirmed and freed, 0 dropped" in text
    assert "laser on-time" in text and "sds011" in text  # the laser section (its own test: test_laser.py)
