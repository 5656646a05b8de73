"""A firmware rollout on the platform `nakhon up` starts: three devices provisioned
through the API, running the unchanged firmware on the MicroPython VM over TLS; a new
version released with `nakhon firmware release` (the API records it and publishes files
and offers through the broker's ACLs); one board cannot run it (the release crashes at
boot on it). The devices update or roll back by themselves, report it in their status,
the ingest stores it, and `nakhon firmware rollout` shows 2 updated, 1 rolled back, why."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from contract.settings import load_settings
from nakhon.local import LocalPlatform
from nakhon.servers import free_port
from tests.firmware.device import Device, world
from tests.firmware.test_live import TLS_HEAP
from tests.firmware.test_ota import built
from tests.helpers import wait_until
from tests.security.platform import api_url, provision, run_nakhon

pytestmark = pytest.mark.e2e

DEVS = ("cm-ota-01", "cm-ota-02", "cm-ota-03")


def test_rollout_shows_updated_and_rolled_back_with_reasons(tmp_path: Path) -> None:
    settings = load_settings(mqtt_port=free_port(), influx_url=f"http://127.0.0.1:{free_port()}", api_port=free_port(),
                             ingest_stats_interval_s=1.0, ingest_batch_ms=50)
    p = LocalPlatform(tmp_path / "up", settings, with_fleet=False, tls_port=free_port())
    boards: list[Device] = []
    try:
        p.start()
        for dev_id in DEVS:
            cfg = provision(p, dev_id)
            flash = {**cfg, "wifi": {"ssid": "field", "password": "secret"}, "ntp_host": "ntp.test", "watchdog_ms": 30000,
                     "status_interval_s": 60}
            boards.append(Device(tmp_path / dev_id, flash, world(scale=30), heapsize=TLS_HEAP).start())
        for b in boards:
            b.wait_log(r"net: online", 90)
        # a build that cannot run on one board (it crashes at boot there): that board must roll back by itself
        files = built(tmp_path, "0.9.0", {"start.py": ("    if cfg is None:\n",
                                                       '    if cfg and cfg["device_id"] == "cm-ota-03":\n'
                                                       '        raise RuntimeError("bad board")\n    if cfg is None:\n')})
        out = tmp_path / "build-0.9.0"
        assert sorted(str(f.relative_to(out / "lib")) for f in (out / "lib").rglob("*.mpy")) == sorted(files)
        env = {"NAKHON_API_KEY": p.admin_key or ""}
        r = run_nakhon("firmware", "release", "--version", "0.9.0", "--build", str(out), "--boots", "2", "--api", api_url(p),
                       *[a for d in DEVS for a in ("--device", d)], env=env)
        assert r.returncode == 0, r.stderr
        assert "release 1: 0.9.0" in r.stdout and "3 device(s)" in r.stdout

        def rollout() -> dict:
            got = run_nakhon("firmware", "rollout", "1", "--json", "--api", api_url(p), env=env)
            assert got.returncode == 0, got.stderr
            doc: dict = json.loads(got.stdout)
            return doc

        wait_until(lambda: rollout()["counts"] == {"updated": 2, "rolled_back": 1}, 240, what="2 updated, 1 rolled back")
        doc = rollout()
        by = {d["device"]: d for d in doc["devices"]}
        assert by["cm-ota-01"]["fw"] == by["cm-ota-02"]["fw"] == "0.9.0"
        assert by["cm-ota-03"] == {"device": "cm-ota-03", "state": "rolled_back", "fw": "0.3.0", "reason": "no publish in 2 boots"}
        text = run_nakhon("firmware", "rollout", "1", "--api", api_url(p), env=env).stdout
        assert "2 updated" in text and "1 rolled_back" in text and "no publish in 2 boots" in text
        # a release needs an admin key; a wrong version string is refused before anything is published
        bad = run_nakhon("firmware", "release", "--version", "0.9.9", "--build", str(out), "--device", DEVS[0], "--api", api_url(p), env=env)
        assert bad.returncode == 2 and "is not version 0.9.9" in bad.stderr
        # new link settings that do not work on the site (a wrong Wi-Fi password): tried, dropped, reported
        r = run_nakhon("firmware", "link", "--device", "cm-ota-01", "--wifi-ssid", "field", "--wifi-password", "wrong",
                       "--minutes", "1", "--api", api_url(p), env=env)
        assert r.returncode == 0, r.stderr
        assert "link offer 2 (wifi) to 1 device(s)" in r.stdout

        def link_rollout() -> dict:
            got = run_nakhon("firmware", "rollout", "2", "--json", "--api", api_url(p), env=env)
            assert got.returncode == 0, got.stderr
            doc: dict = json.loads(got.stdout)
            return doc

        wait_until(lambda: link_rollout()["counts"] == {"rolled_back": 1}, 120, what="the link offer rolled back")
        assert link_rollout()["devices"][0] == {"device": "cm-ota-01", "state": "rolled_back", "fw": "0.9.0",
                                                "reason": "link: no publish in 1 min"}
        # (the device said so in a status it could only publish once back on its old settings)
        assert "link: trying offer 2" in boards[0].log()
        assert "Traceback" not in boards[0].log() and "Traceback" not in boards[1].log()
    finally:
        for b in boards:
            b.stop()
        p.stop()
    assert os.path.exists(tmp_path / "cm-ota-01" / "ota" / "a" / "app.mpy")
