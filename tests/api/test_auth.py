"""The auth matrix: every endpoint with no key, a read key, an admin key and a revoked key;
public reading switched off; rate limits; and injection attempts through every parameter,
which must change nothing in InfluxDB or the registry and leak nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from contract.influx import Influx
from contract.settings import Settings
from harness.verify.rig import CITY, DEVICE, INJECTIONS, OTHER
from harness.verify.rig import seed_two_cities as _seed
from tests.api.conftest import Keys


def _provision(client: TestClient, key: str, device: str, city: str = CITY) -> Any:
    body = {"id": device, "city": city, "kind": "air", "sensors": ["pm25", "pm10"], "lat": 18.79, "lon": 98.98}
    return client.post("/v1/devices", json=body, headers={"X-API-Key": key} if key else {})


READS = [
    "/v1/cities/chiang_mai/latest",
    "/v1/cities/chiang_mai/readings?every=1h",
    f"/v1/devices/{DEVICE}/readings",
    f"/v1/devices/{DEVICE}/readings?every=5m&agg=max",
    "/v1/cities/chiang_mai/aqi",
    "/v1/cities/chiang_mai/aqi/history",
    f"/v1/devices/{DEVICE}/aqi",
    f"/v1/devices/{DEVICE}/aqi/history",
    "/v1/cities/chiang_mai/quality",
    f"/v1/devices/{DEVICE}/quality",
    "/v1/open/cities/chiang_mai/readings.csv",
    "/v1/open/cities/chiang_mai/latest.geojson",
    "/v1/open/cities/chiang_mai/dataset.json",
    "/v1/devices",
    f"/v1/devices/{DEVICE}",
]


def test_auth_matrix(client: TestClient, keys: Keys, influx: Influx, api_settings: Settings) -> None:
    _seed(influx)
    assert _provision(client, keys.admin, DEVICE).status_code == 201
    hdr = {"none": {}, "read": {"X-API-Key": keys.read}, "admin": {"X-API-Key": keys.admin},
           "revoked": {"X-API-Key": keys.revoked}, "garbage": {"X-API-Key": "nk_000000000000_" + "x" * 30}}

    for path in READS:  # public reading on: any valid key or none; a bad key is refused, never downgraded
        for who, expected in (("none", 200), ("read", 200), ("admin", 200), ("revoked", 401), ("garbage", 401)):
            r = client.get(path, headers=hdr[who])
            assert r.status_code == expected, (path, who, r.status_code, r.text[:200])
            if expected == 200:
                assert OTHER not in r.text, (path, "leaked another city's device")

    # writes need the admin scope
    writes = [
        ("post", "/v1/devices", lambda n: {"json": {"id": f"cm-new-{n}", "city": CITY, "kind": "air", "sensors": ["pm25"],
                                                  "lat": 18.8, "lon": 98.9}}, 201),
        ("post", f"/v1/devices/{DEVICE}/rotate", lambda n: {}, 200),
        ("post", "/v1/apikeys", lambda n: {"json": {"name": f"k{n}", "scope": "read"}}, 201),
        ("get", "/v1/apikeys", lambda n: {}, 200),
    ]
    for n, (method, path, kw, ok) in enumerate(writes):
        for who, expected in (("none", 401), ("read", 403), ("revoked", 401), ("garbage", 401), ("admin", ok)):
            r = getattr(client, method)(path, headers=hdr[who], **kw(n))
            assert r.status_code == expected, (method, path, who, r.status_code, r.text[:200])
    key_id = client.get("/v1/apikeys", headers=hdr["admin"]).json()[-1]["id"]
    for who, expected in (("none", 401), ("read", 403), ("revoked", 401), ("admin", 204), ("admin", 404)):
        assert client.delete(f"/v1/apikeys/{key_id}", headers=hdr[who]).status_code == expected
    for who, expected in (("none", 401), ("read", 403), ("revoked", 401), ("admin", 200)):
        assert client.post(f"/v1/devices/{DEVICE}/revoke", headers=hdr[who]).status_code == expected

    # a key revoked through the API is refused from the next call on
    created = client.post("/v1/apikeys", json={"name": "temp", "scope": "admin"}, headers=hdr["admin"]).json()
    assert client.get("/v1/apikeys", headers={"X-API-Key": created["key"]}).status_code == 200
    assert client.delete(f"/v1/apikeys/{created['id']}", headers=hdr["admin"]).status_code == 204
    assert client.get("/v1/apikeys", headers={"X-API-Key": created["key"]}).status_code == 401
    # keys are stored hashed: no token in the registry file
    blob = api_settings.registry_path.read_bytes()
    assert created["key"].split("_", 2)[2].encode() not in blob and keys.admin.split("_", 2)[2].encode() not in blob


def test_public_reading_off_needs_a_key(api_settings: Settings, client: TestClient, keys: Keys, influx: Influx) -> None:
    _seed(influx)
    assert _provision(client, keys.admin, DEVICE).status_code == 201
    closed = api_settings.model_copy(update={"api_public_read": False})
    with TestClient(create_app(closed)) as c:
        for path in READS:
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"X-API-Key": keys.read}).status_code == 200, path
            assert c.get(path, headers={"X-API-Key": keys.revoked}).status_code == 401, path
        assert c.get("/healthz").status_code == 200  # liveness stays open


def test_rate_limits_per_key_and_per_address(api_settings: Settings, keys: Keys) -> None:
    tight = api_settings.model_copy(update={"api_rate_per_key": 5, "api_rate_per_address": 3})
    with TestClient(create_app(tight)) as c:
        anon = [c.get("/v1/devices").status_code for _ in range(4)]
        assert anon == [200, 200, 200, 429]
        r = c.get("/v1/devices")
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        # a key has its own bucket, untouched by the address's
        keyed = [c.get("/v1/devices", headers={"X-API-Key": keys.read}).status_code for _ in range(6)]
        assert keyed == [200] * 5 + [429]
        assert c.get("/v1/devices", headers={"X-API-Key": keys.admin}).status_code == 200  # and per key, not shared


def _state(influx: Influx, client: TestClient, admin: str) -> tuple[Any, ...]:
    return (
        influx.query("SHOW DATABASES"),
        influx.query("SHOW MEASUREMENTS"),
        influx.query('SELECT count(pm25) FROM "raw"."air" GROUP BY city'),
        influx.query("SHOW RETENTION POLICIES"),
        client.get("/v1/devices", headers={"X-API-Key": admin}).json(),
        len(client.get("/v1/apikeys", headers={"X-API-Key": admin}).json()),
    )


@pytest.mark.timeout(120)
def test_injection_changes_nothing_and_leaks_nothing(client: TestClient, keys: Keys, influx: Influx) -> None:
    _seed(influx)
    assert _provision(client, keys.admin, DEVICE).status_code == 201
    before = _state(influx, client, keys.admin)
    admin = {"X-API-Key": keys.admin}
    history = ["measurement", "metrics", "every", "agg", "source", "start", "end", "limit"]
    query_params = {f"/v1/devices/{DEVICE}/readings": history, "/v1/cities/chiang_mai/readings": history,
                    "/v1/devices": ["city", "state"], "/v1/open/cities/chiang_mai/readings.csv": ["measurement", "start", "end"],
                    "/v1/cities/chiang_mai/aqi/history": ["start", "end"], "/v1/cities/chiang_mai/quality": ["start", "end"]}
    for bad in INJECTIONS:
        requests: list[tuple[str, str, dict[str, Any]]] = []
        for tmpl in ("/v1/cities/{x}/latest", "/v1/cities/{x}/readings", "/v1/cities/{x}/aqi", "/v1/cities/{x}/quality",
                     "/v1/devices/{x}/readings", "/v1/devices/{x}/aqi/history", "/v1/devices/{x}", "/v1/devices/{x}/quality",
                     "/v1/open/cities/{x}/readings.csv", "/v1/devices/{x}/rotate", "/v1/devices/{x}/revoke", "/v1/apikeys/{x}"):
            method = "post" if tmpl.endswith(("rotate", "revoke")) else "delete" if "apikeys" in tmpl else "get"
            requests.append((method, tmpl.replace("{x}", bad), {}))
        for base, params in query_params.items():
            for p in params:
                requests.append(("get", base, {"params": {p: bad}}))
        for field in ("id", "city", "kind", "sensors", "fw", "installed", "lat"):
            body: dict[str, Any] = {"id": "cm-inj-01", "city": CITY, "kind": "air", "sensors": ["pm25"], "lat": 18.8, "lon": 98.9}
            body[field] = [bad] if field == "sensors" else bad
            requests.append(("post", "/v1/devices", {"json": body}))
        for field in ("name", "scope", "city"):
            requests.append(("post", "/v1/apikeys", {"json": {"name": "n", "scope": "read", field: bad}}))
        for method, path, kw in requests:
            try:
                r = getattr(client, method)(path, headers=admin, **kw)
            except Exception as exc:  # the client itself may refuse a URL (e.g. a newline): that is not the server
                assert "newline" in bad or "\n" in bad, (path, exc)
                continue
            assert r.status_code in (400, 404, 405, 422), (method, path, kw, r.status_code, r.text[:300])
            # the 422 echoes the refused input; what else is said must not come from the database
            text = r.text.lower().replace(json.dumps(bad)[1:-1].lower(), "").replace(bad.lower(), "")
            assert OTHER not in text and "influx" not in text and "select " not in text, (path, kw, r.text[:300])
    assert _state(influx, client, keys.admin) == before
