"""A real device's life on the platform `nakhon up` starts: the unchanged firmware on the
MicroPython VM, booted with the config.json provisioning returned (CA bundle inside, TLS),
configured, rotated in the field and revoked, all through the `nakhon device` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from contract.settings import load_settings
from harness.verify.rig import MqttDevice
from nakhon import accounts
from nakhon.local import LocalPlatform
from nakhon.servers import free_port
from tests.firmware.device import Device, world
from tests.firmware.test_live import TLS_HEAP, no_crash
from tests.firmware.watch import Watch
from tests.helpers import wait_until
from tests.security.platform import api_url, cli, provision, stored

pytestmark = pytest.mark.e2e

DEV = "cm-fw-life-01"


def test_firmware_device_lifecycle_on_the_platform_up_starts(tmp_path: Path) -> None:
    settings = load_settings(mqtt_port=free_port(), influx_url=f"http://127.0.0.1:{free_port()}", api_port=free_port(),
                             ingest_stats_interval_s=1.0, ingest_batch_ms=50)
    p = LocalPlatform(tmp_path / "up", settings, with_fleet=False, tls_port=free_port())
    dev = watch = None
    try:
        p.start()
        cfg = provision(p, DEV)
        assert cfg["sensors"] and cfg["mqtt"]["tls"] and cfg["mqtt"]["ca"]
        # on site the technician adds the Wi-Fi; everything else is flashed as provisioning wrote it
        flash = {**cfg, "wifi": {"ssid": "field", "password": "secret"}, "ntp_host": "ntp.test", "watchdog_ms": 30000}
        dev = Device(tmp_path / "board", flash, world(scale=30), heapsize=TLS_HEAP)
        watch = Watch(p.broker.port, "chiang_mai", DEV, accounts.BROKER_OBSERVER, p.secrets["broker_observer"])
        dev.start()
        dev.wait_log(r"net: online", 60)
        wait_until(lambda: stored(p, DEV) >= 3, 60, what="the device's readings in InfluxDB")
        got = httpx.get(f"{api_url(p)}/v1/devices/{DEV}/readings", params={"metrics": "pm25"}).json()
        assert len(got["points"]) >= 3  # and served by the API

        # a config change, published retained, applied and confirmed by the device in its status
        r = cli(p, "config", "--id", DEV, "--interval", "120", "--sensor", "th=off")
        assert r.returncode == 0, r.stderr
        dev.wait_log(r"config: applied seq=1 interval_s=120 disabled=\['th'\]", 30)
        wait_until(lambda: (watch.last_status() or {}).get("config_seq") == 1, 30, what="config_seq 1 in the device's status")

        # rotation in the field: the password travels over the device's own config topic; the broker switches when
        # the device confirms, the device comes back with the new one, the old one is refused
        onlines = len(dev.wait_log(r"net: online", 1))
        r = cli(p, "rotate", "--id", DEV, "--grace", "10m", "--out", str(tmp_path / "rotated.json"))
        assert r.returncode == 0, r.stderr
        new = json.loads((tmp_path / "rotated.json").read_text())["mqtt"]["password"]
        dev.wait_log(r"config: applied seq=2 .* new credentials", 30)
        dev.wait_log(r"net: online", 60, count=onlines + 1)  # cut by the switch, back with the new password
        history = httpx.get(f"{api_url(p)}/v1/devices/{DEV}/config", headers={"X-API-Key": p.admin_key or ""}).json()
        assert [h["seq"] for h in history][:2] == [3, 2] and new not in json.dumps(history)  # the secret is retracted, not recorded
        ca = tmp_path / "ca.pem"
        ca.write_text(cfg["mqtt"]["ca"])
        old_login = MqttDevice(cfg["mqtt"]["port"], "cm-fw-life-09", DEV, cfg["mqtt"]["password"], tls_ca=ca)
        assert not old_login.accepted(5)
        old_login.close()
        before = stored(p, DEV)
        wait_until(lambda: stored(p, DEV) > before, 60, what="readings sent with the new credentials")

        # revoked: cut off at once and refused afterwards; nothing it sent before is lost
        r = cli(p, "revoke", "--id", DEV)
        assert r.returncode == 0, r.stderr
        dev.wait_log(r"mqtt: refused", 60)
        sent = {int(x["seq"]) for x in watch.readings()}
        wait_until(lambda: stored(p, DEV) == len(sent), 30, what="every reading the device got through before revocation")
        no_crash(dev)
    finally:
        if dev is not None:
            dev.stop()
        if watch is not None:
            watch.close()
        p.stop()
