"""What the read endpoints answer, on data with a known shape: history from raw and from the
roll-ups agree (means weighted by counts), latest values with coordinates, Thai AQI, data
completeness and staleness, and the open-data exports with their CKAN metadata."""

from __future__ import annotations

import csv
import io
import math
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from contract.influx import Influx
from ingest.rollups import Rollups
from tests.api.conftest import Keys

HOUR_MS = 3_600_000
DEVICES = ("cm-air-001", "cm-air-002")


def _seed(influx: Influx) -> tuple[int, dict[str, list[tuple[int, float]]]]:
    """6 hours of data with uneven counts per hour (so a plain mean of means would be wrong)."""
    now = int(time.time() * 1000)
    h0 = now - now % (6 * HOUR_MS) - 6 * HOUR_MS  # aligned, so 3-hour buckets fall on it
    sent: dict[str, list[tuple[int, float]]] = {d: [] for d in DEVICES}
    lines = []
    for k, dev in enumerate(DEVICES):
        for h in range(6):
            n = 6 + 5 * ((h + k) % 3)  # 6, 11 or 16 readings in the hour
            for i in range(n):
                t = h0 + h * HOUR_MS + i * 180_000 + k * 1000
                v = 10.0 + 3 * h + i * 0.5 + 20 * k
                sent[dev].append((t, v))
                lines.append(f"air,city=chiang_mai,device={dev} pm25={v!r},pm10={2 * v!r},seq={h * 100 + i}i {t}")
    influx.write(lines)
    roll = Rollups(influx, 1.0, ready=lambda: True)  # the ingest's own roll-up code, driven by hand
    roll.start(influx.database)
    roll._stop.set()
    roll.touched(lines)
    roll.run_once(force=True, deadline=time.monotonic() + 120)  # with the stop set, a pass without a deadline gives up
    return h0, sent


def _provision(client: TestClient, keys: Keys) -> None:
    for i, dev in enumerate(DEVICES):
        body = {"id": dev, "city": "chiang_mai", "kind": "air", "sensors": ["pm25", "pm10"], "lat": 18.7 + i / 100, "lon": 98.9,
                "interval_s": 180, "installed": "2020-01-01"}
        assert client.post("/v1/devices", json=body, headers={"X-API-Key": keys.admin}).status_code == 201


def _get(client: TestClient, path: str, **params: Any) -> Any:
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json() if "json" in r.headers["content-type"] else r.text


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


@pytest.mark.parametrize("agg", ["mean", "min", "max", "count"])
def test_history_from_hourly_equals_raw(client: TestClient, keys: Keys, influx: Influx, agg: str) -> None:
    h0, sent = _seed(influx)
    rng = {"start": _iso(h0), "end": _iso(h0 + 6 * HOUR_MS), "metrics": "pm25", "agg": agg}
    for path in (f"/v1/devices/{DEVICES[0]}/readings", "/v1/cities/chiang_mai/readings"):
        for every in ("1h", "3h"):
            raw = _get(client, path, every=every, source="raw", **rng)
            hourly = _get(client, path, every=every, source="hourly", **rng)
            assert (raw["source"], hourly["source"]) == ("raw", "hourly")
            assert [p["time"] for p in raw["points"]] == [p["time"] for p in hourly["points"]]
            assert len(raw["points"]) == 6 // int(every[0])
            for a, b in zip(raw["points"], hourly["points"], strict=True):
                assert math.isclose(a["values"]["pm25"], b["values"]["pm25"], rel_tol=1e-12), (path, every, a, b)
    # auto: raw for a short range, the roll-ups for a day or more
    assert _get(client, f"/v1/devices/{DEVICES[0]}/readings", every="1h", **rng)["source"] == "raw"
    day = {**rng, "start": _iso(h0 - 18 * HOUR_MS)}
    assert _get(client, f"/v1/devices/{DEVICES[0]}/readings", every="1h", **day)["source"] == "hourly"
    # and against what was sent: one device, 3-hour buckets
    values = [v for t, v in sent[DEVICES[0]] if t < h0 + 3 * HOUR_MS]
    expected = {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "count": len(values)}[agg]
    got = _get(client, f"/v1/devices/{DEVICES[0]}/readings", every="3h", **rng)["points"][0]["values"]["pm25"]
    assert math.isclose(got, expected, rel_tol=1e-12)


def test_raw_points_and_bad_requests(client: TestClient, influx: Influx) -> None:
    h0, sent = _seed(influx)
    body = _get(client, f"/v1/devices/{DEVICES[1]}/readings", start=_iso(h0), end=_iso(h0 + 7 * HOUR_MS), metrics="pm25")
    assert [p["values"]["pm25"] for p in body["points"]] == [v for _, v in sent[DEVICES[1]]]
    for params in ({"every": "1h", "source": "hourly", "start": _iso(h0 + HOUR_MS), "end": _iso(h0)},  # start after end
                   {"every": "90s", "source": "hourly"},  # not whole hours
                   {"metrics": "temp_c"},  # not an air metric
                   {"start": _iso(h0 - 30 * 86_400_000)}):  # raw over too long a range
        assert client.get(f"/v1/devices/{DEVICES[0]}/readings", params=params).status_code == 400, params


def test_latest_aqi_quality_and_open_data(client: TestClient, keys: Keys, influx: Influx) -> None:
    h0, sent = _seed(influx)
    _provision(client, keys)
    latest = _get(client, "/v1/cities/chiang_mai/latest")["devices"]
    assert [d["device"] for d in latest] == list(DEVICES)
    assert latest[1]["lat"] == pytest.approx(18.71) and latest[1]["values"]["pm25"] == sent[DEVICES[1]][-1][1]

    aqi = _get(client, "/v1/cities/chiang_mai/aqi")
    assert {d["device"] for d in aqi["devices"]} == set(DEVICES)
    cur = aqi["current"]
    assert cur["colour"] in ("blue", "green", "yellow", "orange", "red") and cur["label_th"] and cur["label_en"]
    assert cur["pollutant"] in ("pm25", "pm10")
    hist = _get(client, f"/v1/devices/{DEVICES[0]}/aqi/history", start=_iso(h0), end=_iso(h0 + 7 * HOUR_MS))
    assert len(hist["hours"]) == 6

    q = _get(client, "/v1/cities/chiang_mai/quality", start=_iso(h0), end=_iso(h0 + 6 * HOUR_MS))
    by = {d["device"]: d for d in q["devices"]}
    for dev in DEVICES:
        assert by[dev]["expected"] == 6 * 3600 // 180
        assert by[dev]["received"] == len(sent[dev])
        assert by[dev]["completeness"] == pytest.approx(len(sent[dev]) / 120)
        assert by[dev]["staleness_s"] > 0
    assert q["expected"] == 240 and q["received"] == sum(len(v) for v in sent.values())

    text = _get(client, "/v1/open/cities/chiang_mai/readings.csv", start=_iso(h0), end=_iso(h0 + 6 * HOUR_MS))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 12 and rows[0]["time_bangkok"].endswith("+07:00") and rows[0]["lat"]
    geo = _get(client, "/v1/open/cities/chiang_mai/latest.geojson")
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 2
    assert geo["features"][0]["geometry"]["coordinates"] == [98.9, 18.7]
    meta = _get(client, "/v1/open/cities/chiang_mai/dataset.json")
    assert meta["license_id"] and meta["frequency"] == "hourly" and meta["language"] == ["th", "en"]
    assert meta["spatial"]["type"] == "Polygon" and {r["format"] for r in meta["resources"]} == {"CSV", "GeoJSON"}
