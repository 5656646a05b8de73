"""A backup of the platform `nakhon up` runs, a wiped folder and a restore give back every
reading and every device: the devices log in again with the credentials they hold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from contract.settings import load_settings
from nakhon.local import LocalPlatform
from nakhon.servers import free_port
from tests.helpers import wait_until
from tests.security.platform import admin_db, api_url, device_from, provision, reading, run_nakhon, stored

pytestmark = pytest.mark.e2e


def _platform(root: Path, tls_port: int | None = None) -> LocalPlatform:
    settings = load_settings(mqtt_port=free_port(), influx_url=f"http://127.0.0.1:{free_port()}", api_port=free_port(),
                             ingest_stats_interval_s=1.0, ingest_batch_ms=50)
    return LocalPlatform(root, settings, with_fleet=False, tls_port=tls_port or free_port())


def _all_readings(p: LocalPlatform) -> int:
    with admin_db(p) as db:
        rows = db.rows('SELECT count("pm25") FROM "raw"."air"')
    return int(rows[0]["count"]) if rows else 0


def test_backup_wipe_restore_gives_back_every_reading_and_device(tmp_path: Path) -> None:
    root, saved = tmp_path / "up", tmp_path / "backup"
    p = _platform(root)
    try:
        p.start()
        configs = [provision(p, f"cm-bak-{i:03d}") for i in range(3)]
        for cfg in configs:
            d = device_from(p, cfg)
            assert d.accepted()
            for seq in range(1, 6):
                assert d.publish(cfg["topics"]["telemetry"], reading(seq, 20.0 + seq)) in ("Success", "No matching subscribers")
            d.close()
        wait_until(lambda: _all_readings(p) == 15, 30, what="15 readings stored")
        key = p.admin_key
        r = run_nakhon("backup", "--root", str(root), "--out", str(saved))
        assert r.returncode == 0, r.stderr
        assert json.loads((saved / "manifest.json").read_text())["devices"] == 3
        assert oct(saved.stat().st_mode & 0o777) == "0o700"
        # restoring into a running platform is refused
        busy = run_nakhon("restore", str(saved), "--root", str(root))
        assert busy.returncode == 1 and "running" in busy.stderr
    finally:
        p.stop()

    shutil.rmtree(root)  # the data folder is gone
    r = run_nakhon("restore", str(saved), "--root", str(root))
    assert r.returncode == 0, r.stderr

    q = _platform(root, tls_port=configs[0]["mqtt"]["port"])  # the devices' config.json names this port
    try:
        q.start()
        assert _all_readings(q) == 15
        assert all(stored(q, cfg["device_id"]) == 5 for cfg in configs)
        assert q.admin_key == key  # the first admin key came back with the registry and secrets
        devices = httpx.get(f"{api_url(q)}/v1/devices", headers={"X-API-Key": key or ""}).json()
        assert {d["id"] for d in devices} == {cfg["device_id"] for cfg in configs}
        # a device in the field logs in with what it holds, trusting the CA it was given, and goes on
        d = device_from(q, configs[0])
        assert d.accepted()
        assert d.publish(configs[0]["topics"]["telemetry"], reading(6, 26.0)) in ("Success", "No matching subscribers")
        d.close()
        wait_until(lambda: stored(q, configs[0]["device_id"]) == 6, 30, what="the reading after the restore")
    finally:
        q.stop()
