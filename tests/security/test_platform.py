"""Attacks on the platform as `nakhon up` starts it (nakhon/local.py, the same code), and a device's life on it.

One platform for the module: broker with the generated configuration, InfluxDB with
authentication on, ingest, API and a small simulated fleet provisioned like real devices.
Every attempt is made from outside, as an intruder or a technician would: MQTT, HTTP, the CLI.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import paho.mqtt.client as mqtt
import pytest

from contract.settings import load_settings
from harness.verify.rig import MqttDevice
from nakhon import accounts
from nakhon.brokerconf import Listener, config_text
from nakhon.local import LocalPlatform
from nakhon.servers import dynsec_plugin, free_port
from tests.helpers import wait_until
from tests.security.platform import admin_db, api_url, cli, device_from, provision, reading, stored

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPlatform]:
    settings = load_settings(mqtt_port=free_port(), influx_url=f"http://127.0.0.1:{free_port()}", api_port=free_port(),
                             ingest_stats_interval_s=1.0, ingest_batch_ms=50)
    p = LocalPlatform(tmp_path_factory.mktemp("up"), settings, fleet_per_city=1, interval_s=2.0, tls_port=free_port())
    try:
        p.start()
        yield p
    finally:
        p.stop()


def test_the_broker_runs_the_generated_configuration_with_no_anonymous_listener(platform: LocalPlatform) -> None:
    b = platform.broker
    text = b.config_path.read_text()
    assert text == b.config_text()
    assert "allow_anonymous false" in text and "allow_anonymous true" not in text
    assert f"plugin {dynsec_plugin()}" in text
    listeners = [line for line in text.splitlines() if line.startswith("listener ")]
    assert listeners == [f"listener {b.port} 127.0.0.1", f"listener {b.tls_port} 127.0.0.1"]
    # the same text as the one generator gives for these listeners (compose takes its file from it too)
    assert text.split("listener ")[0] == config_text(listeners=[Listener(1)], data_dir=str(b.root / "data"),
                                                    dynsec=(dynsec_plugin(), str(platform.dynsec_file)), user=text.split("user ")[1].split()[0],
                                                    ).split("listener ")[0]


def test_the_simulated_fleet_connects_over_tls_with_its_own_accounts(platform: LocalPlatform) -> None:
    path = platform.credentials_path
    creds = wait_until(lambda: path.exists() and len(c := json.loads(path.read_text())) == 3 and c, 60, what="the fleet provisioned through the API")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    api = httpx.get(f"{api_url(platform)}/v1/devices", headers={"X-API-Key": platform.admin_key or ""}).json()
    assert set(creds) <= {d["id"] for d in api}  # registered in the registry like any device
    clients = {c["username"]: c for c in json.loads(platform.dynsec_file.read_text())["clients"]}
    for device in creds:
        assert clients[device]["clientid"] == device  # pinned
    assert "admin_api_key" in platform.secrets
    with admin_db(platform) as db:
        def devices() -> set[str]:
            return {r["device"] for r in db.rows('SELECT count("battery_v") FROM "raw"./.*/ WHERE time > now() - 5m GROUP BY "device"')}
        wait_until(lambda: set(creds) <= devices(), 60, what="readings from every simulated device")
    # and a simulated device's password works only over TLS with its own id
    device, password = next(iter(creds.items()))
    d = MqttDevice(platform.broker.tls_port or 0, device, device, password, tls_ca=platform.ca)
    try:
        assert d.accepted()
    finally:
        d.close()


def test_strangers_and_wrong_credentials_are_refused(platform: LocalPlatform) -> None:
    b, ca = platform.broker, platform.ca
    assert b.tls_port is not None and ca is not None
    cfg = provision(platform, "cm-sec-101")
    attempts = {
        "anonymous, services port": MqttDevice(b.port, "stranger-01"),
        "anonymous, device port": MqttDevice(b.tls_port, "stranger-02", tls_ca=ca),
        "empty username": MqttDevice(b.tls_port, "stranger-03", "", "", tls_ca=ca),
        "wrong password": device_from(platform, cfg, password=cfg["mqtt"]["password"][:-2] + "xx"),
        "the ingest's client id": device_from(platform, cfg, client_id="nakhon_ingest_0"),
        "another device's client id": device_from(platform, cfg, client_id="cm-sec-102"),
        "the API's account, guessed": MqttDevice(b.port, "nakhon_api_x", accounts.BROKER_ADMIN, "admin"),
        "plain MQTT to the device port": MqttDevice(b.tls_port, "cm-sec-101", "cm-sec-101", cfg["mqtt"]["password"]),
    }
    try:
        let_in = [what for what, d in attempts.items() if d.accepted(5)]
    finally:
        for d in attempts.values():
            d.close()
    assert let_in == []
    ok = device_from(platform, cfg)  # the control: the device itself is let in
    try:
        assert ok.accepted()
    finally:
        ok.close()


def test_a_device_cannot_write_for_another_device_or_city_and_nothing_lands(platform: LocalPlatform) -> None:
    cfg = provision(platform, "cm-sec-201")
    other = provision(platform, "cm-sec-202")
    d = device_from(platform, cfg)
    try:
        assert d.accepted()
        for topic in ("nakhon/v1/chiang_mai/cm-sec-202/telemetry", "nakhon/v1/phuket/cm-sec-201/telemetry",
                      "nakhon/v1/phuket/pk-sec-201/telemetry", "nakhon/v1/chiang_mai/cm-sec-202/config", "nakhon/v1/chiang_mai/cm-sec-201/config",
                      "nakhon/v1/chiang_mai/cm-sec-202/stored", "$CONTROL/dynamic-security/v1"):
            assert d.publish(topic, reading(1, 999.0)) == "Not authorized", topic
        for topic in ("#", "nakhon/v1/+/+/telemetry", "nakhon/v1/chiang_mai/cm-sec-202/config", "$SYS/#"):
            assert not d.subscribe(topic)[0].startswith("Granted"), topic
        assert d.publish(cfg["topics"]["telemetry"], reading(2, 12.0)) in ("Success", "No matching subscribers")
    finally:
        d.close()
    wait_until(lambda: stored(platform, "cm-sec-201") == 1, 30, what="the device's own reading")
    assert stored(platform, "cm-sec-202") == 0 and stored(platform, other["device_id"]) == 0
    with admin_db(platform) as db:
        assert db.rows('SELECT count("pm25") FROM "raw"."air" WHERE "pm25" = 999.0') == []


@pytest.mark.parametrize("device_id,status", [("nakhon-ingest-0", 400), ("nakhon-api", 400), ("nakhon_ingest_0", 422),
                                              ("nakhon_api", 422), ("admin-01", 400), ("mosquitto-01", 400)])
def test_provisioning_refuses_platform_identities(platform: LocalPlatform, device_id: str, status: int) -> None:
    body = {"id": device_id, "city": "chiang_mai", "kind": "air", "sensors": ["pm25"], "lat": 18.8, "lon": 98.9}
    r = httpx.post(f"{api_url(platform)}/v1/devices", json=body, headers={"X-API-Key": platform.admin_key or ""})
    assert r.status_code == status, r.text
    dynsec = json.loads(platform.dynsec_file.read_text())
    assert f"device-{device_id}" not in {r["rolename"] for r in dynsec["roles"]}
    assert all(c["username"] != device_id or c["username"].startswith("nakhon_") for c in dynsec["clients"])


def test_influxdb_refuses_strangers_and_services_hold_only_their_rights(platform: LocalPlatform) -> None:
    url, s = platform.influxdb.url, platform.secrets
    line = b"air,city=chiang_mai,device=cm-forged-01 pm25=1.0"
    anon = httpx.Client(base_url=url)
    assert anon.get("/query", params={"q": "SHOW DATABASES"}).status_code == 401
    assert anon.post("/query", data={"q": "DROP DATABASE nakhon"}).status_code == 401
    assert anon.post("/write", params={"db": "nakhon"}, content=line).status_code == 401
    for user in (accounts.INFLUX_API, accounts.INFLUX_GRAFANA):
        c = httpx.Client(base_url=url, auth=(user, s[f"influx_{user.removeprefix('nakhon_')}"]))
        assert c.post("/write", params={"db": "nakhon"}, content=line).status_code == 403, user
        assert c.get("/query", params={"q": 'SELECT count("pm25") FROM "raw"."air"', "db": "nakhon"}).status_code == 200, user
        assert c.post("/query", data={"q": "DROP DATABASE nakhon"}).status_code == 403, user
    with admin_db(platform) as db:
        db.query('CREATE DATABASE "elsewhere"', method="POST")
        users = {r["user"]: r["admin"] for r in db.rows("SHOW USERS")}
    assert users == {accounts.INFLUX_ADMIN: True, accounts.INFLUX_INGEST: False, accounts.INFLUX_API: False, accounts.INFLUX_GRAFANA: False,
                     accounts.INFLUX_ALERTS: False}
    # the alert evaluator writes its events and reads nothing
    alerts = httpx.Client(base_url=url, auth=(accounts.INFLUX_ALERTS, s["influx_alerts"]))
    assert alerts.get("/query", params={"q": 'SELECT count("pm25") FROM "raw"."air"', "db": "nakhon"}).status_code == 403
    assert alerts.post("/query", data={"q": "DROP DATABASE nakhon"}).status_code == 403
    ingest = httpx.Client(base_url=url, auth=(accounts.INFLUX_INGEST, s["influx_ingest"]))
    assert ingest.post("/write", params={"db": "elsewhere"}, content=line).status_code == 403
    assert ingest.get("/query", params={"q": "SHOW MEASUREMENTS", "db": "elsewhere"}).status_code == 403
    assert ingest.post("/query", data={"q": "DROP DATABASE nakhon"}).status_code == 403
    # the service environments name their own users, never the admin
    assert platform.ingest.env["NAKHON_INFLUX_USERNAME"] == accounts.INFLUX_INGEST
    assert platform.api.env["NAKHON_INFLUX_USERNAME"] == accounts.INFLUX_API
    assert all(s["influx_admin"] not in v for svc in (platform.ingest, platform.api) for v in svc.env.values())


def test_a_city_bound_key_sees_nothing_of_another_city(platform: LocalPlatform) -> None:
    api, admin = api_url(platform), {"X-API-Key": platform.admin_key or ""}
    made = [httpx.post(f"{api}/v1/apikeys", json={"name": f"{c} ops", "scope": "admin", "city": c}, headers=admin).json()
            for c in ("phuket", "chiang_mai")]
    phuket = {"X-API-Key": made[0]["key"]}
    keys = httpx.get(f"{api}/v1/apikeys", headers=phuket)
    assert keys.status_code == 200 and {k["city"] for k in keys.json()} == {"phuket"}
    devices = httpx.get(f"{api}/v1/devices", headers=phuket).json()
    assert devices and {d["city"] for d in devices} == {"phuket"}
    assert httpx.get(f"{api}/v1/devices", params={"city": "chiang_mai"}, headers=phuket).status_code == 403
    cm = next(d["id"] for d in httpx.get(f"{api}/v1/devices", params={"city": "chiang_mai"}, headers=admin).json())
    assert httpx.get(f"{api}/v1/devices/{cm}", headers=phuket).status_code == 404
    assert cli(platform, "config", "--id", cm, "--interval", "30", key=made[0]["key"]).returncode == 1
    body = {"id": "cm-sec-301", "city": "chiang_mai", "kind": "air", "sensors": ["pm25"], "lat": 18.8, "lon": 98.9}
    assert httpx.post(f"{api}/v1/devices", json=body, headers=phuket).status_code == 403


class _Listener:
    """Messages on one topic, for the device's side of a config push."""

    def __init__(self, d: MqttDevice, topic: str) -> None:
        self.got: list[bytes] = []
        self.event = threading.Event()
        d.client.on_message = self._on
        assert d.subscribe(topic)[0].startswith("Granted")

    def _on(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.got.append(msg.payload)
        self.event.set()


def test_device_lifecycle_provision_config_rotate_revoke_keeps_its_data(platform: LocalPlatform) -> None:
    cfg = provision(platform, "cm-life-001")
    assert cfg["mqtt"]["tls"] is True and cfg["mqtt"]["port"] == platform.broker.tls_port
    assert cfg["mqtt"]["ca"].startswith("-----BEGIN CERTIFICATE-----")
    d = device_from(platform, cfg)
    assert d.accepted()
    listener = _Listener(d, cfg["topics"]["config"])
    for seq in (1, 2, 3):
        assert d.publish(cfg["topics"]["telemetry"], reading(seq, 10.0 + seq)) in ("Success", "No matching subscribers")
    wait_until(lambda: stored(platform, "cm-life-001") == 3, 30, what="three readings")
    got = httpx.get(f"{api_url(platform)}/v1/devices/cm-life-001/readings", params={"metrics": "pm25"})
    assert got.status_code == 200, got.text
    assert [p["values"]["pm25"] for p in got.json()["points"]] == [11.0, 12.0, 13.0]

    r = cli(platform, "config", "--id", "cm-life-001", "--interval", "30", "--sensor", "pm=off")
    assert r.returncode == 0, r.stderr
    assert listener.event.wait(10)
    assert json.loads(listener.got[-1]) == {"v": 1, "seq": 1, "interval_s": 30, "sensors": {"pm": False}}
    history = httpx.get(f"{api_url(platform)}/v1/devices/cm-life-001/config", headers={"X-API-Key": platform.admin_key or ""}).json()
    assert [h["seq"] for h in history] == [1]

    rot = platform.root / "cm-life-001.rotated.json"
    r = cli(platform, "rotate", "--id", "cm-life-001", "--out", str(rot))
    assert r.returncode == 0, r.stderr
    new = json.loads(rot.read_text())
    assert d.disconnected.wait(10)  # the live session with the old secret is cut at once
    d.close()
    old = device_from(platform, cfg)
    assert not old.accepted(5)
    old.close()
    fresh = device_from(platform, new)
    assert fresh.accepted()
    assert fresh.publish(new["topics"]["telemetry"], reading(4, 14.0)) in ("Success", "No matching subscribers")
    wait_until(lambda: stored(platform, "cm-life-001") == 4, 30, what="the reading sent with the new credentials")

    r = cli(platform, "revoke", "--id", "cm-life-001")
    assert r.returncode == 0, r.stderr
    assert fresh.disconnected.wait(10)
    fresh.close()
    again = device_from(platform, new)
    assert not again.accepted(5)
    again.close()
    assert stored(platform, "cm-life-001") == 4  # its data stays


def test_a_device_hears_its_own_stored_confirmations_and_no_one_elses(platform: LocalPlatform) -> None:
    a_cfg, b_cfg = provision(platform, "cm-sto-401"), provision(platform, "cm-sto-402")
    a, b = device_from(platform, a_cfg), device_from(platform, b_cfg)
    try:
        assert a.accepted() and b.accepted()
        mine = _Listener(a, a_cfg["topics"]["stored"])
        # the other device may not read it, by its name or by a wildcard, nor write its own confirmations
        for topic in (a_cfg["topics"]["stored"], "nakhon/v1/+/+/stored", "nakhon/v1/chiang_mai/+/stored"):
            assert not b.subscribe(topic)[0].startswith("Granted"), topic
        assert b.publish(b_cfg["topics"]["stored"], b'{"v":1,"seq":[[1,9]]}') == "Not authorized"
        overheard: list[bytes] = []
        b.client.on_message = lambda _c, _u, msg: overheard.append(msg.payload)
        assert a.publish(a_cfg["topics"]["telemetry"], reading(41, 12.0)) in ("Success", "No matching subscribers")
        assert mine.event.wait(30), "no confirmation from the ingest (its account must be allowed to write nakhon/v1/+/+/stored)"
        assert json.loads(mine.got[-1])["seq"] == [[41, 41]]
        assert stored(platform, "cm-sto-401") == 1  # confirmed only once it is stored
        assert overheard == []
    finally:
        a.close()
        b.close()
