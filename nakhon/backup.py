"""Backup and restore of a local platform (`nakhon up`'s folder).

A backup is a folder (mode 700) holding:
- `influxdb/`: InfluxDB's portable backup (`influxd backup -portable`, taken over
  the running server's RPC port, consistent per shard);
- `registry.sqlite3`: the device registry and API keys, through SQLite's online
  backup (consistent while the API writes);
- `dynamic-security.json`: the broker's accounts (device passwords as the broker
  hashed them, roles, ACLs), so restored devices log in with what they have;
- `secrets.json`, `certs/`, `fleet/credentials.json`: the platform's own accounts and
  its CA (devices in the field trust it);
- `manifest.json`: when, and what it counted.

Restore goes into a stopped platform's folder: the files are put back and a fresh
InfluxDB is started there once to take the portable backup in; `nakhon up` then
starts on the restored state.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from nakhon.servers import INFLUXD_BIN, InfluxDB, free_port

RUN_FILE = "run.json"  # written by a running local platform: where its InfluxDB's RPC port is
_FILES = ("secrets.json", "fleet/credentials.json")


class BackupError(RuntimeError):
    """A backup or restore that cannot go on; the message says why."""


def _influxd(*args: str) -> None:
    r = subprocess.run([INFLUXD_BIN, *args], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise BackupError(f"influxd {args[0]} failed: {(r.stderr or r.stdout)[-800:]}")


def _sqlite_copy(src: Path, dst: Path) -> int:
    """Online copy; returns the number of devices in it."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
        return int(b.execute("SELECT COUNT(*) FROM devices").fetchone()[0])


def backup(root: Path, out: Path) -> dict[str, Any]:
    root, out = Path(root).resolve(), Path(out).resolve()
    run = root / RUN_FILE
    if not run.exists():
        raise BackupError(f"no running platform in {root} ({RUN_FILE} missing): start it with `nakhon up --root {root}`")
    info = json.loads(run.read_text())
    if out.exists():
        raise BackupError(f"{out} exists: give a new folder")
    out.mkdir(parents=True, mode=0o700)
    _influxd("backup", "-portable", "-host", f"127.0.0.1:{info['influx_rpc']}", "-db", info["database"], str(out / "influxdb"))
    devices = 0
    registry = root / "data" / "registry.sqlite3"
    if registry.exists():
        devices = _sqlite_copy(registry, out / "registry.sqlite3")
    dynsec = root / "mosquitto" / "dynamic-security.json"
    if dynsec.exists():
        shutil.copy2(dynsec, out / "dynamic-security.json")
    for name in _FILES:
        if (root / name).exists():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, out / name)
    if (root / "certs").exists():
        shutil.copytree(root / "certs", out / "certs")
    manifest = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "database": info["database"], "devices": devices}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def restore(src: Path, root: Path) -> None:
    src, root = Path(src).resolve(), Path(root).resolve()
    if not (src / "manifest.json").exists():
        raise BackupError(f"{src} is not a backup (no manifest.json)")
    run = root / RUN_FILE
    if run.exists():
        pid = json.loads(run.read_text()).get("pid")
        if pid and Path(f"/proc/{pid}").exists():
            raise BackupError(f"the platform in {root} is running (pid {pid}): stop it first")
    manifest = json.loads((src / "manifest.json").read_text())
    # the database: a fresh server in the platform's own folder takes the portable backup
    for sub in ("meta", "data", "wal"):
        shutil.rmtree(root / "influxdb" / sub, ignore_errors=True)
    server = InfluxDB(root / "influxdb", free_port(), free_port(), auth=True)
    server.start()
    try:
        _influxd("restore", "-portable", "-host", f"127.0.0.1:{server.rpc_port}", "-db", manifest["database"], str(src / "influxdb"))
    finally:
        server.stop()
    # the registry, the broker's accounts, the platform's secrets and CA
    (root / "data").mkdir(parents=True, exist_ok=True)
    for stale in ("registry.sqlite3-wal", "registry.sqlite3-shm"):
        (root / "data" / stale).unlink(missing_ok=True)
    if (src / "registry.sqlite3").exists():
        _sqlite_copy(src / "registry.sqlite3", root / "data" / "registry.sqlite3")
    if (src / "dynamic-security.json").exists():
        (root / "mosquitto").mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / "dynamic-security.json", root / "mosquitto" / "dynamic-security.json")
    for name in _FILES:
        if (src / name).exists():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, root / name)
            os.chmod(root / name, 0o600)
    if (src / "certs").exists():
        shutil.rmtree(root / "certs", ignore_errors=True)
        shutil.copytree(src / "certs", root / "certs")
