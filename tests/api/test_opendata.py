"""Open-data exports on a real InfluxDB: the GeoJSON validates against RFC 7946 (a JSON Schema check), the CSV
round-trips through Python's csv module with one header per column and each unit once, and the CKAN metadata
gives the temporal coverage and the number of stations from the data itself."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import jsonschema
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.registry import Device
from api.routers.opendata import csv_column
from contract.catalogue import METRICS, metrics_of
from contract.influx import Influx
from contract.settings import load_settings
from ingest.rollups import Rollups
from nakhon.servers import InfluxDB

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000

# RFC 7946 as a JSON Schema: a FeatureCollection of Features whose geometry is a Point (this export's only kind)
# or null, positions [longitude, latitude(, altitude)] in WGS 84 degrees, properties an object or null, an optional
# string-or-number id and bbox, and no `crs` member (removed by RFC 7946, section 4).
POSITION = {"type": "array", "minItems": 2, "maxItems": 3,
            "prefixItems": [{"type": "number", "minimum": -180, "maximum": 180}, {"type": "number", "minimum": -90, "maximum": 90},
                            {"type": "number"}]}
BBOX = {"type": "array", "minItems": 4, "items": {"type": "number"}}
POINT = {"type": "object", "required": ["type", "coordinates"], "not": {"required": ["crs"]},
         "properties": {"type": {"const": "Point"}, "coordinates": POSITION, "bbox": BBOX}}
FEATURE = {"type": "object", "required": ["type", "geometry", "properties"], "not": {"required": ["crs"]},
           "properties": {"type": {"const": "Feature"}, "id": {"type": ["string", "number"]},
                          "geometry": {"oneOf": [{"type": "null"}, POINT]}, "properties": {"type": ["object", "null"]}, "bbox": BBOX}}
RFC7946 = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "required": ["type", "features"],
           "not": {"required": ["crs"]},
           "properties": {"type": {"const": "FeatureCollection"}, "features": {"type": "array", "items": FEATURE}, "bbox": BBOX}}

REPORTING = {"cm-air-101": (18.7883, 98.9853), "cm-air-102": (18.7990, 98.9680)}
SILENT = "cm-air-103"  # registered, never reported
UNREGISTERED = "cm-air-104"  # reports, but is not in the registry (so it has no coordinates)


@pytest.fixture
def client(workdir: Path, influxdb: InfluxDB, influx: Influx) -> Iterator[TestClient]:
    settings = load_settings(influx_url=influxdb.url, data_dir=workdir / "data", api_rate_per_address=100_000)
    app = create_app(settings)
    app.state.registry.import_devices([
        Device(d, "chiang_mai", "air", ["pm25", "pm10", "co2_ppm"], lat, lon, date(2025, 1, 1), "1.0.0", 300)
        for d, (lat, lon) in [*REPORTING.items(), (SILENT, (18.80, 99.00))]
    ])
    with TestClient(app) as c:
        yield c


def _seed(influx: Influx) -> int:
    """Five hours of air readings for three devices; returns the first hour (ms)."""
    now = int(time.time() * 1000)
    h0 = now - now % HOUR_MS - 5 * HOUR_MS
    lines = []
    for k, dev in enumerate([*REPORTING, UNREGISTERED]):
        for h in range(5):
            for i in range(4):
                t = h0 + h * HOUR_MS + i * 900_000 + k
                lines.append(f"air,city=chiang_mai,device={dev} pm25={10.0 + h + k},pm10={20.0 + h},co2_ppm={400.0 + i},"
                             f"o3_ppb=12.5,seq={h * 10 + i}i {t}")
    influx.write(lines)
    roll = Rollups(influx, 1.0, ready=lambda: True)  # the ingest's own roll-up code, driven by hand
    roll.start(influx.database)
    roll._stop.set()  # no background pass: this test runs the one pass itself, with a deadline
    roll.touched(lines)
    roll.run_once(force=True, deadline=time.monotonic() + 120)
    return h0


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def test_geojson_is_rfc7946_with_every_registered_station_that_reported(client: TestClient, influx: Influx) -> None:
    _seed(influx)
    r = client.get("/v1/open/cities/chiang_mai/latest.geojson")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/geo+json")
    geo = r.json()
    jsonschema.validate(geo, RFC7946, cls=jsonschema.Draft202012Validator)
    got = {f["properties"]["device"]: f["geometry"]["coordinates"] for f in geo["features"]}
    assert got == {d: [lon, lat] for d, (lat, lon) in REPORTING.items()}  # longitude first; no silent or unplaced station
    for f in geo["features"]:
        assert f["properties"]["pm25"] > 0 and f["properties"]["time"].endswith("Z")


def test_rfc7946_schema_refuses_what_it_should() -> None:
    """The schema is not a rubber stamp: latitude first, a crs member, or a bare list all fail it."""
    ok = {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [98.98, 18.79]},
                                                     "properties": {}}]}
    jsonschema.validate(ok, RFC7946, cls=jsonschema.Draft202012Validator)
    swapped = {**ok, "features": [{**ok["features"][0], "geometry": {"type": "Point", "coordinates": [18.79, 98.98, 0, 1]}}]}
    for bad in ({**ok, "crs": {"type": "name"}}, {"type": "FeatureCollection"}, swapped,
                {**ok, "features": [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [200, 18]}, "properties": {}}]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, RFC7946, cls=jsonschema.Draft202012Validator)


def test_csv_round_trips_with_one_header_per_column_and_each_unit_once(client: TestClient, influx: Influx) -> None:
    h0 = _seed(influx)
    r = client.get("/v1/open/cities/chiang_mai/readings.csv", params={"start": _iso(h0), "end": _iso(h0 + 5 * HOUR_MS)})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    header, body = rows[0], rows[1:]
    air = [m.name for m in metrics_of("air") if m.kind == "float"]
    assert header == ["time_bangkok", "time_utc", "city", "device", "lat", "lon",
                      "pm1_µg/m³", "pm25_µg/m³", "pm10_µg/m³", "co2_ppm", "o3_ppb", "co_ppm", "no2_ppb", "so2_ppb"]
    assert len(header) == len(set(header)) == 6 + len(air)
    assert all(len(row) == len(header) for row in body) and len(body) == 3 * 5
    # written again by csv.writer, read again: the same table
    again = io.StringIO()
    csv.writer(again, lineterminator="\n").writerows(rows)
    assert again.getvalue() == r.text
    by = {(row[3], row[1]): dict(zip(header, row, strict=True)) for row in body}
    first = by[("cm-air-102", _iso(h0))]
    assert float(first["pm25_µg/m³"]) == 11.0 and float(first["co2_ppm"]) == 401.5 and first["no2_ppb"] == ""
    assert first["time_bangkok"].endswith("+07:00") and (first["lat"], first["lon"]) == ("18.799", "98.968")
    assert by[(UNREGISTERED, _iso(h0))]["lat"] == ""


@pytest.mark.parametrize("measurement", ["air", "weather", "water", "noise", "traffic", "device"])
def test_every_csv_header_names_its_unit_once(measurement: str) -> None:
    for m in metrics_of(measurement):
        col = csv_column(m.name)
        unit = m.unit.lower()
        assert col.startswith(m.name)
        if unit:
            assert col.lower().count(unit) <= 1 and not col.endswith(f"_{unit}_{unit}"), col
    assert [csv_column(n) for n in ("co2_ppm", "o3_ppb", "no2_ppb", "temp_c", "pressure_hpa", "wind_ms", "laeq_db", "rssi_dbm",
                                    "battery_v", "uptime_s", "vehicle_count", "rh", "pm25", "free_mem")] == \
        ["co2_ppm", "o3_ppb", "no2_ppb", "temp_c", "pressure_hpa", "wind_ms", "laeq_db", "rssi_dbm",
         "battery_v", "uptime_s", "vehicle_count", "rh_%", "pm25_µg/m³", "free_mem_bytes"]
    assert set(METRICS) >= {"co2_ppm", "vehicle_count"}


def test_ckan_metadata_has_coverage_and_station_count(client: TestClient, influx: Influx) -> None:
    empty = client.get("/v1/open/cities/chiang_mai/dataset.json").json()
    assert (empty["temporal_start"], empty["temporal_end"]) == (None, None)
    assert {e["key"]: e["value"] for e in empty["extras"]}["devices"] == "0"
    h0 = _seed(influx)
    meta = client.get("/v1/open/cities/chiang_mai/dataset.json").json()
    assert meta["temporal_start"] == _iso(h0)
    assert meta["temporal_end"] == _iso(h0 + 5 * HOUR_MS)  # the end of the newest hour with data
    extras = {e["key"]: e["value"] for e in meta["extras"]}
    assert extras["devices"] == "3"  # stations with data, registered or not
    assert extras["devices_registered"] == "3"
    assert "co2_ppm" in extras["columns"] and "co2_ppm_ppm" not in extras["columns"]
