"""A broker set up by an older version: the ingest role without the catch session's marks or the
`stored` confirmations, a device role from before over-the-air updates and store-and-forward.
`ensure_roles` (and `nakhon broker-upgrade`) add what is missing, keep what an operator added,
and change nothing the second time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api.broker import ALERTS_ROLE, INGEST_ROLE, DynSec, bootstrap_config, device_role, ensure_roles
from contract import topics
from contract.settings import load_settings
from harness.verify.rig import MqttDevice
from nakhon.local import LocalPlatform
from nakhon.servers import Mosquitto, free_port
from tests.helpers import wait_until
from tests.security.platform import device_from, provision, run_nakhon

ADMIN = (topics.API_USER, "admin-" + "a" * 24)
INGEST = (topics.INGEST_USER, "ingest-" + "b" * 24)
CITY, DEVICE, DEVICE_PW = "chiang_mai", "cm-old-role-02", "device-" + "c" * 24
MARK = topics.INGEST_MARK_TOPIC
OLD_INGEST = {("publishClientSend", MARK), ("subscribeLiteral", MARK), ("publishClientReceive", MARK),
              ("publishClientSend", f"{topics.PREFIX}/+/+/stored")}


def old_bootstrap(path: Path) -> None:
    """The JSON an older version wrote: an ingest role without the marks and `stored`, no alert evaluator's role."""
    cfg = bootstrap_config(ADMIN, INGEST)
    cfg["roles"] = [r for r in cfg["roles"] if r["rolename"] != ALERTS_ROLE]
    ingest = next(r for r in cfg["roles"] if r["rolename"] == INGEST_ROLE)
    ingest["acls"] = [a for a in ingest["acls"] if (a["acltype"], a["topic"]) not in OLD_INGEST]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))


@pytest.mark.integration
def test_old_roles_are_brought_up_to_date_once(tmp_path: Path) -> None:
    path = tmp_path / "mosquitto" / "dynamic-security.json"
    old_bootstrap(path)
    stored, ota = (topics.topic(CITY, DEVICE, ch) for ch in ("stored", "ota"))
    fw = f"{topics.FIRMWARE_PREFIX}/#"
    with Mosquitto(tmp_path / "mosquitto", allow_anonymous=False, dynsec_file=path) as broker:
        dynsec = DynSec("127.0.0.1", broker.port, *ADMIN)
        dynsec.create_device(CITY, DEVICE, DEVICE_PW)
        role = device_role(DEVICE)
        # the device's role as provisioning gave it before updates and store-and-forward, plus an operator's own entry
        dynsec.run([{"command": "removeRoleACL", "rolename": role, "acltype": kind, "topic": t}
                    for t in (stored, ota, fw) for kind in (("subscribePattern" if t == fw else "subscribeLiteral"), "publishClientReceive")]
                   + [{"command": "addRoleACL", "rolename": role, "acltype": "publishClientSend", "topic": f"{topics.PREFIX}/{CITY}/{DEVICE}/debug",
                       "allow": False}])
        device = MqttDevice(broker.port, DEVICE, DEVICE, DEVICE_PW)
        ingest = MqttDevice(broker.port, "nakhon_ingest_0", *INGEST)
        try:
            assert device.accepted() and ingest.accepted()
            # before: the refusals are real
            assert device.subscribe(stored) == ["Not authorized"] and device.subscribe(ota) == ["Not authorized"]
            assert ingest.publish(MARK, b"1") == "Not authorized"
            assert ingest.publish(stored, b"{}") == "Not authorized"

            up = ensure_roles(dynsec)
            assert (up.roles_created, up.acls_added, up.device_roles, up.skipped) == (1, 4 + 6, 1, [])
            assert up.clients_reconnected == 2  # the device's and the ingest's accounts
            assert sorted(up.roles_changed) == sorted([ALERTS_ROLE, INGEST_ROLE, role])
            # the broker disconnects a changed role's clients: they come back and subscribe again, now allowed
            wait_until(device.disconnected.is_set, 10, 0.05, what="the device's session ended by the role change")
            wait_until(ingest.disconnected.is_set, 10, 0.05, what="the ingest's session ended by the role change")
        finally:
            device.close()
            ingest.close()

        device = MqttDevice(broker.port, DEVICE, DEVICE, DEVICE_PW)
        ingest = MqttDevice(broker.port, "nakhon_ingest_0", *INGEST)
        try:
            assert device.accepted() and ingest.accepted()
            assert device.subscribe(stored)[0].startswith("Granted") and device.subscribe(ota)[0].startswith("Granted")
            assert device.subscribe(f"{topics.FIRMWARE_PREFIX}/#")[0].startswith("Granted")
            assert ingest.subscribe(MARK)[0].startswith("Granted")
            assert ingest.publish(MARK, b"1") in ("Success", "No matching subscribers")
            assert ingest.publish(stored, b"{}") in ("Success", "No matching subscribers")
            assert device.publish(f"{topics.PREFIX}/{CITY}/{DEVICE}/debug", b"x") == "Not authorized"  # the operator's entry kept

            # a second run, as an operator types it: nothing to change, nobody disconnected
            again = run_nakhon("broker-upgrade", env={"NAKHON_MQTT_PORT": str(broker.port), "NAKHON_BROKER_ADMIN_USERNAME": ADMIN[0],
                                                      "NAKHON_BROKER_ADMIN_PASSWORD": ADMIN[1]})
            assert again.returncode == 0, again.stderr
            assert "roles created: 0, ACL entries added: 0, device roles checked: 1, clients reconnected: 0" in again.stdout
            assert "nothing to change" in again.stdout
            assert ensure_roles(dynsec) == type(up)(device_roles=1)
            assert not device.disconnected.is_set() and not ingest.disconnected.is_set()
        finally:
            device.close()
            ingest.close()


@pytest.mark.e2e
def test_nakhon_up_brings_an_old_folder_up_to_date(tmp_path: Path) -> None:
    """A `nakhon up` folder whose broker file an older version wrote: at start its roles are brought
    up to date, so the catch session stands down on the workers' marks and the device may subscribe
    to its `stored` and `ota`."""
    settings = load_settings(mqtt_port=free_port(), influx_url=f"http://127.0.0.1:{free_port()}", api_port=free_port(),
                             ingest_stats_interval_s=1.0, ingest_batch_ms=50, ingest_workers=2)  # worker 0 runs the catch session
    p = LocalPlatform(tmp_path / "up", settings, with_fleet=False, tls_port=free_port())
    dev_id = "cm-old-role-03"
    try:
        p.start()
        cfg = provision(p, dev_id)
    finally:
        p.stop()
    doc = json.loads(p.dynsec_file.read_text())
    old = OLD_INGEST | {(k, t) for k in ("subscribeLiteral", "subscribePattern", "publishClientReceive")
                        for t in (cfg["topics"]["stored"], cfg["topics"]["ota"], f"{topics.FIRMWARE_PREFIX}/#")}
    for role in doc["roles"]:
        if role["rolename"] in (INGEST_ROLE, device_role(dev_id)):
            role["acls"] = [a for a in role["acls"] if (a["acltype"], a["topic"]) not in old]
    p.dynsec_file.write_text(json.dumps(doc))
    try:
        p.start()
        assert p.ingest.wait_log("catch session stands down", 60), "the catch session never stood down"
        device = device_from(p, cfg)
        try:
            assert device.accepted()
            assert device.subscribe(cfg["topics"]["stored"])[0].startswith("Granted")
            assert device.subscribe(cfg["topics"]["ota"])[0].startswith("Granted")
        finally:
            device.close()
    finally:
        p.stop()
