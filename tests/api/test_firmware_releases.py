"""Firmware releases through the API against the real broker: who may release to whom,
what a bad request gets, what a device may read and write of the update topics, and
the rollout view before any device has answered."""

from __future__ import annotations

import base64
import hashlib

from fastapi.testclient import TestClient

from tests.api.conftest import Keys
from tests.api.test_provisioning import Device, _provision

APP = b"\x4d\x06" + b"0.9.0" * 300  # stands in for a built app.mpy (1.5 KB: two chunks)
FILES = {"app.mpy": base64.b64encode(APP).decode(), "drivers/pm.mpy": base64.b64encode(b"pm").decode()}


def test_release_cohorts_rights_and_rollout(client: TestClient, keys: Keys) -> None:
    cm1 = _provision(client, keys.admin, "cm-air-101")
    _provision(client, keys.admin, "cm-air-102")
    _provision(client, keys.admin, "pk-air-101", city="phuket")
    admin = {"X-API-Key": keys.admin}
    city = {"X-API-Key": keys.city_admin}

    def post(body: dict, headers: dict) -> tuple[int, dict]:
        r = client.post("/v1/firmware/releases", json={"fw": "0.9.0", "files": FILES, **body}, headers=headers)
        return r.status_code, r.json()

    assert post({"all": True}, {"X-API-Key": keys.read})[0] == 403
    assert post({"all": True}, city)[0] == 403  # a city's admin releases to its own city only
    assert post({"city": "phuket"}, city)[0] == 403
    assert post({"devices": ["pk-air-101"]}, city)[0] == 403
    assert post({}, admin)[0] == 400  # no cohort
    assert post({"devices": ["cm-air-999"]}, admin)[0] == 400
    code, body = post({"city": "chiang_mai", "files": {"app.mpy": "not base64!"}}, admin)
    assert code == 400 and "base64" in body["detail"]
    code, body = post({"city": "chiang_mai", "files": {"ota.mpy": FILES["app.mpy"]}}, admin)
    assert code == 400 and "app.mpy" in body["detail"]
    assert client.get("/v1/firmware/releases", headers=admin).json() == []  # nothing refused was recorded

    code, body = post({"city": "chiang_mai"}, city)
    assert code == 201, body
    assert body["targets"] == ["cm-air-101", "cm-air-102"] and body["files"] == 2 and body["cohort"] == {"city": "chiang_mai", "share": 100}
    rollout = client.get(f"/v1/firmware/releases/{body['id']}", headers=admin).json()
    assert rollout["counts"] == {"pending": 2} and rollout["fw"] == "0.9.0"
    assert client.get("/v1/firmware/releases/999", headers=admin).status_code == 404

    # the device reads its own offer and the shared files, nobody else's offer, and writes neither
    dev = Device(cm1["config"])
    try:
        assert dev.accepted()
        assert dev.subscribe("nakhon/v1/chiang_mai/cm-air-101/ota") == ["Granted QoS 1"]
        sha = hashlib.sha256(APP).hexdigest()
        assert dev.subscribe(f"nakhon/fw/{sha}/1") == ["Granted QoS 1"]
        assert dev.subscribe("nakhon/v1/chiang_mai/cm-air-102/ota") == ["Not authorized"]
        assert dev.publish(f"nakhon/fw/{sha}/0", b"evil") == "Not authorized"
        assert dev.publish("nakhon/v1/chiang_mai/cm-air-101/ota", b"{}") == "Not authorized"
    finally:
        dev.close()


def test_link_offers_are_checked_and_keep_no_secret(client: TestClient, keys: Keys) -> None:
    _provision(client, keys.admin, "cm-air-201")
    admin = {"X-API-Key": keys.admin}

    def post(body: dict) -> tuple[int, dict]:
        r = client.post("/v1/firmware/links", json={"devices": ["cm-air-201"], **body}, headers=admin)
        return r.status_code, r.json()

    assert post({})[0] == 400  # nothing to change
    assert post({"mqtt": {"ca": "not a certificate"}})[0] == 400
    assert post({"mqtt": {"host": "bad host"}})[0] == 422
    code, body = post({"wifi": {"ssid": "city-iot-2", "password": "s3cret-wifi"}, "mqtt": {"port": 8884}, "minutes": 5})
    assert code == 201, body
    assert body["fw"] == "link" and body["targets"] == ["cm-air-201"] and body["cohort"]["link"] == ["mqtt.port", "wifi"]
    listed = client.get("/v1/firmware/releases", headers=admin).json()
    assert "s3cret-wifi" not in str(listed) and listed[0]["id"] == body["id"]
