"""Helpers for the tests on the platform `nakhon up` starts: what a technician, a device or an operator does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from contract.influx import Influx
from harness.verify.rig import MqttDevice
from nakhon import accounts
from nakhon.local import LocalPlatform


def admin_db(p: LocalPlatform) -> Influx:
    return Influx(p.influxdb.url, p.settings.influx_db, accounts.INFLUX_ADMIN, p.secrets["influx_admin"])


def api_url(p: LocalPlatform) -> str:
    return f"http://127.0.0.1:{p.settings.api_port}"


def cli(p: LocalPlatform, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAKHON_")}
    env["NAKHON_API_KEY"] = key or p.admin_key or ""
    return subprocess.run([sys.executable, "-m", "nakhon", "device", "--api", api_url(p), *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=p.root)


def provision(p: LocalPlatform, device: str, city: str = "chiang_mai") -> dict[str, Any]:
    out = p.root / f"{device}.config.json"
    r = cli(p, "provision", "--id", device, "--city", city, "--kind", "air", "--sensors", "pm25,pm10", "--lat", "18.79",
             "--lon", "98.98", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    cfg: dict[str, Any] = json.loads(out.read_text())
    return cfg


def device_from(p: LocalPlatform, cfg: dict[str, Any], password: str | None = None, client_id: str | None = None) -> MqttDevice:
    """A device dialling what its config.json says, trusting the CA it carries."""
    m = cfg["mqtt"]
    ca = p.root / f"{cfg['device_id']}.ca.pem"
    ca.write_text(m["ca"])
    assert m["host"] == "localhost"
    return MqttDevice(m["port"], client_id or m["client_id"], m["username"], password or m["password"], tls_ca=ca)


def reading(seq: int, pm25: float) -> bytes:
    return json.dumps({"v": 1, "ts": time.time() - 1, "seq": seq, "m": {"pm25": pm25}}).encode()


def stored(p: LocalPlatform, device: str) -> int:
    with admin_db(p) as db:
        rows = db.rows('SELECT count("pm25") FROM "raw"."air" WHERE "device" = $d', {"d": device})
    return int(rows[0]["count"]) if rows else 0




def run_nakhon(*args: str, cwd: Any = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`nakhon ARGS` as an operator types it (no NAKHON_* from the test's environment; `env` added)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("NAKHON_")} | (env or {})
    return subprocess.run([sys.executable, "-m", "nakhon", *args], env=full, capture_output=True, text=True, timeout=300, cwd=cwd)
