"""Platform identities outside the device-id alphabet, exact device ACLs, the rotation field of
the config document: the pure rules behind the attacks in test_platform.py."""

from __future__ import annotations

import pytest

from api.broker import ALERTS_ROLE, INGEST_ROLE, bootstrap_config, device_acls, device_city, platform_roles, role_upgrade
from contract import topics
from contract.device_config import DeviceConfigError, check_device_config, encode_device_config
from contract.settings import ConfigError, load_settings

pytestmark = pytest.mark.unit


def test_platform_identities_cannot_be_device_ids() -> None:
    for name in (topics.INGEST_USER, topics.API_USER, topics.OBSERVER_USER, "nakhon_ingest_0"):
        assert topics.is_service_id(name) and not topics.is_device_id(name)
    assert load_settings().ingest_client_id == topics.INGEST_USER
    for var, value in (("ingest_client_id", "nakhon-ingest"), ("mqtt_username", "cm-air-001"), ("broker_admin_username", "ops-admin")):
        extra = {"mqtt_password": "x"} if var == "mqtt_username" else {"broker_admin_password": "x"} if var == "broker_admin_username" else {}
        with pytest.raises(ConfigError, match=f"NAKHON_{var.upper()}=.*could be a device id"):
            load_settings(**{var: value}, **extra)
    with pytest.raises(ValueError, match="could be a device id"):
        bootstrap_config(("nakhon-admin", "pw"), (topics.INGEST_USER, "pw"))


@pytest.mark.parametrize("device_id", ["nakhon-ingest-0", "nakhon-api", "admin-01", "root-01", "mosquitto-1"])
def test_platform_like_device_ids_are_reserved(device_id: str) -> None:
    assert topics.is_device_id(device_id) and topics.reserved_device_id(device_id)


def test_ordinary_ids_are_not_reserved() -> None:
    assert not topics.reserved_device_id("cm-air-001") and not topics.reserved_device_id("pk-nakhon-01")


def test_device_acl_is_exact_and_covers_its_five_topics() -> None:
    acls = device_acls("chiang_mai", "cm-air-001")
    # its own topics exactly; the one pattern is the shared, read-only firmware file tree
    assert all("+" not in a["topic"] and ("#" not in a["topic"] or a["topic"] == "nakhon/fw/#") for a in acls)
    assert {a["acltype"] for a in acls if a["topic"] == "nakhon/fw/#"} == {"subscribePattern", "publishClientReceive"}
    out = {a["topic"] for a in acls if a["acltype"] == "publishClientSend"}
    into = {a["topic"] for a in acls if a["acltype"] == "publishClientReceive"}
    base = "nakhon/v1/chiang_mai/cm-air-001/"
    assert out == {base + "telemetry", base + "status"}
    assert into == {base + "config", base + "stored", base + "ota", "nakhon/fw/#"}


def test_config_document_carries_a_rotated_password_only_if_well_formed() -> None:
    raw = encode_device_config(4, interval_s=60, password="a" * 32)
    assert b'"password":"' in raw
    for bad in ("short", "x" * 129, "has space in it ok", "quote'sinside12345", 12345678901234567):
        with pytest.raises(DeviceConfigError, match="password"):
            check_device_config({"v": 1, "seq": 1, "password": bad})


def test_settings_pairs_and_files() -> None:
    with pytest.raises(ConfigError, match="NAKHON_INFLUX_USERNAME and NAKHON_INFLUX_PASSWORD"):
        load_settings(influx_username="nakhon_api")
    with pytest.raises(ConfigError, match="NAKHON_API_TLS_CERT_FILE and NAKHON_API_TLS_KEY_FILE"):
        load_settings(api_tls_cert_file="/nonexistent.pem")
    with pytest.raises(ConfigError, match=r"NAKHON_DEVICE_CA_FILE=.* is not a file"):
        load_settings(device_ca_file="/nonexistent/ca.pem")


def test_the_ingest_role_carries_the_workers_marks_and_no_device_can() -> None:
    """Workers publish marks for their catch session (ingest/catch.py); it reads them and the broker's uptime."""
    acls = next(r["acls"] for r in platform_roles() if r["rolename"] == INGEST_ROLE)
    mark = topics.INGEST_MARK_TOPIC
    assert {(a["acltype"], a["topic"]) for a in acls} >= {
        ("publishClientSend", mark), ("subscribeLiteral", mark), ("publishClientReceive", mark), ("subscribePattern", "$SYS/#"),
    }
    assert not mark.startswith(topics.PREFIX + "/")  # outside what devices and the observer's stream cover
    assert all(a["topic"] != mark for a in device_acls("chiang_mai", "cm-air-001"))


def test_role_upgrade_adds_only_what_a_role_lacks() -> None:
    """The pure part of `ensure_roles`: per role, the entries missing by (type, topic); a device's city
    read from its own topics; nothing for a role already up to date; an unreadable device role left alone."""
    current = {r["rolename"]: r["acls"] for r in platform_roles()}
    mark = topics.INGEST_MARK_TOPIC
    old_ingest = [a for a in current[INGEST_ROLE] if a["topic"] != mark]
    full = device_acls("phuket", "pk-water-001")
    old_device = [a for a in full if not a["topic"].endswith(("/ota", "/stored")) and a["topic"] != "nakhon/fw/#"]
    operator = {"acltype": "publishClientSend", "topic": "nakhon/v1/phuket/pk-water-001/debug", "allow": False}
    roles = {**{n: a for n, a in current.items() if n != ALERTS_ROLE}, INGEST_ROLE: old_ingest,
             "device-pk-water-001": [*old_device, operator], "device-cm-air-002": device_acls("chiang_mai", "cm-air-002"),
             "device-lost-01": [], "custom_ops": []}
    commands, up = role_upgrade(roles)
    assert (up.roles_created, up.acls_added, up.device_roles, up.skipped) == (1, 3 + 6, 2, ["device-lost-01"])
    assert sorted(up.roles_changed) == sorted([ALERTS_ROLE, INGEST_ROLE, "device-pk-water-001"])
    added = {(c["rolename"], c["acltype"], c["topic"]) for c in commands if c["command"] == "addRoleACL"}
    assert {(k, t) for r, k, t in added if r == INGEST_ROLE} == {(k, mark) for k in ("publishClientSend", "subscribeLiteral", "publishClientReceive")}
    assert {(k, t) for r, k, t in added if r == "device-pk-water-001"} == {
        (a["acltype"], a["topic"]) for a in full if a not in old_device}
    assert all(c["command"] != "removeRoleACL" for c in commands)
    assert [c["rolename"] for c in commands if c["command"] == "createRole"] == [ALERTS_ROLE]
    # up to date: nothing
    roles_now = {**{r["rolename"]: r["acls"] for r in platform_roles()}, "device-pk-water-001": [*full, operator]}
    assert role_upgrade(roles_now)[0] == []
    assert device_city("device-pk-water-001", old_device) == "phuket"
    assert device_city("nakhon_ingest", current[INGEST_ROLE]) is None
    assert device_city("device-cm-air-002", [*device_acls("chiang_mai", "cm-air-002"), *device_acls("phuket", "cm-air-002")]) is None
