"""A device provisioned before over-the-air updates: its broker role has no `ota` entries, so
the secured broker (dynamic security, default deny) refuses that subscription. The firmware
must go on publishing on the one session, not treat the refusal as a broken link."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.broker import DynSec, device_role
from contract import topics
from contract.settings import load_settings
from nakhon import accounts
from nakhon.local import LocalPlatform
from nakhon.servers import free_port
from tests.firmware.device import Device, world
from tests.firmware.test_live import TLS_HEAP
from tests.helpers import wait_until
from tests.security.platform import provision, stored

pytestmark = pytest.mark.e2e


def test_a_device_whose_role_predates_updates_keeps_its_link(tmp_path: Path) -> None:
    settings = load_settings(mqtt_port=free_port(), influx_url=f"http://127.0.0.1:{free_port()}", api_port=free_port(),
                             ingest_stats_interval_s=1.0, ingest_batch_ms=50)
    p = LocalPlatform(tmp_path / "up", settings, with_fleet=False, tls_port=free_port())
    dev_id = "cm-old-role-01"
    board: Device | None = None
    try:
        p.start()
        cfg = provision(p, dev_id)
        # take the role back to what provisioning gave before updates existed
        dynsec = DynSec("127.0.0.1", p.broker.port, accounts.BROKER_ADMIN, p.secrets["broker_admin"])
        ota = topics.topic(cfg["city"], dev_id, "ota")
        dynsec.run([{"command": "removeRoleACL", "rolename": device_role(dev_id), "acltype": kind, "topic": topic}
                    for kind, topic in (("subscribeLiteral", ota), ("publishClientReceive", ota),
                                        ("subscribePattern", f"{topics.FIRMWARE_PREFIX}/#"),
                                        ("publishClientReceive", f"{topics.FIRMWARE_PREFIX}/#"))])
        flash = {**cfg, "wifi": {"ssid": "field", "password": "secret"}, "ntp_host": "ntp.test", "status_interval_s": 60}
        board = Device(tmp_path / dev_id, flash, world(scale=30), heapsize=TLS_HEAP).start()
        wait_until(lambda: stored(p, dev_id) >= 6, 120, what="six readings stored from a device with the old role")
    finally:
        if board is not None:
            board.stop()
        p.stop()
    log = board.log()
    assert "subscription refused" not in log and log.count("net: online") == 1  # one session, never dropped
