"""The technician's and operator's commands: `nakhon apikey`, `nakhon device`, `nakhon broker-init`."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import httpx

from contract.settings import Settings
from nakhon.procs import Service, settings_env
from nakhon.servers import free_port
from tests.helpers import wait_until


def _nakhon(settings: Settings, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nakhon", *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**settings_env(settings), **env})


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_apikey_and_device_commands(api_settings: Settings, workdir: Path) -> None:
    made = _nakhon(api_settings, "apikey", "create", "--name", "field team", "--scope", "admin", cwd=workdir)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("nk_")
    listed = _nakhon(api_settings, "apikey", "list", cwd=workdir)
    assert "field team" in listed.stdout and token.split("_", 2)[2] not in listed.stdout

    port = free_port()
    api = Service("api", ["api", "--port", str(port)], api_settings, workdir / "logs")
    api.start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _up(url), 30, what="API up")
        out = workdir / "cm-air-007.json"
        r = _nakhon(api_settings, "device", "--api", url, "provision", "--id", "cm-air-007", "--city", "chiang_mai", "--kind", "air",
                    "--sensors", "pm25,pm10", "--lat", "18.79", "--lon", "98.98", "--out", str(out), cwd=workdir, NAKHON_API_KEY=token)
        assert r.returncode == 0, r.stderr
        cfg = json.loads(out.read_text())
        assert cfg["device_id"] == "cm-air-007" and cfg["mqtt"]["password"]
        assert stat.S_IMODE(out.stat().st_mode) == 0o600  # it holds a secret
        r = _nakhon(api_settings, "device", "--api", url, "list", "--city", "chiang_mai", cwd=workdir, NAKHON_API_KEY=token)
        assert "cm-air-007" in r.stdout and "active" in r.stdout
        r = _nakhon(api_settings, "device", "--api", url, "revoke", "--id", "cm-air-007", cwd=workdir, NAKHON_API_KEY=token)
        assert r.returncode == 0 and "retired" in r.stdout
        # without a key, a clear message and no change
        r = _nakhon(api_settings, "device", "--api", url, "revoke", "--id", "cm-air-007", cwd=workdir, NAKHON_API_KEY="")
        assert r.returncode == 2 and "admin API key" in r.stderr
    finally:
        api.stop()


def test_broker_init_writes_accounts_once(api_settings: Settings, workdir: Path) -> None:
    path = workdir / "broker" / "dynsec.json"
    r = _nakhon(api_settings, "broker-init", "--file", str(path), cwd=workdir)
    assert r.returncode == 0, r.stderr
    doc = json.loads(path.read_text())
    assert {c["username"] for c in doc["clients"]} == {"nakhon_api", "nakhon_ingest", "nakhon_observer", "nakhon_alerts"}
    assert "plugin " in r.stdout and "NAKHON_BROKER_ADMIN_PASSWORD=" in r.stdout
    password = r.stdout.split("NAKHON_BROKER_ADMIN_PASSWORD=")[1].split()[0]
    assert password not in path.read_text()  # stored as a salted hash
    assert _nakhon(api_settings, "broker-init", "--file", str(path), cwd=workdir).returncode == 2  # never clobbers accounts
