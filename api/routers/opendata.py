"""Open data: a city's readings as CSV and GeoJSON, with CKAN dataset metadata.

CSV rows are hourly means per device (from the roll-ups), stamped in both
Asia/Bangkok and UTC. The metadata is a CKAN `package` document (title,
notes, licence, update frequency, spatial and temporal coverage, language,
resources), ready for `package_create` on a government open-data portal.
"""

from __future__ import annotations

import csv
import io
import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from api import history, queries
from api.current import answer, city_now
from api.deps import READ_ERRORS, InfluxDep, RegistryDep, SettingsDep
from api.params import CityPath, End, Measurement, Start
from api.routers.readings import known_city
from api.security import Reader
from contract.catalogue import METRICS

router = APIRouter(prefix="/v1/open", tags=["open data"], responses=READ_ERRORS)
BANGKOK = ZoneInfo("Asia/Bangkok")


class Resource(BaseModel):
    name: str
    url: str
    format: str
    description: str


class Extra(BaseModel):
    key: str
    value: str


class CkanPackage(BaseModel):
    name: str
    title: str
    notes: str
    license_id: str
    author: str
    language: list[str]
    frequency: str
    spatial: dict[str, Any]
    temporal_start: str | None
    temporal_end: str | None
    tags: list[dict[str, str]]
    resources: list[Resource]
    extras: list[Extra]


def csv_column(metric: str) -> str:
    """The CSV header of a metric: its name, with its unit once (`pm25_µg/m³`, `rh_%`, but `co2_ppm`, `temp_c`, `laeq_db`)."""
    unit = METRICS[metric].unit
    slug = "".join(ch for ch in unit.lower() if ch.isascii() and ch.isalnum())
    words = metric.split("_") if "_" in metric else []
    if not unit or any(slug.startswith(w) for w in words if w):  # the name already says it: ppm, ppb, c, hpa, ms, db, dbm, v, s, count
        return metric
    return f"{metric}_{unit}"


def _rows(influx: InfluxDep, city: str, measurement: str, t0: datetime, t1: datetime) -> tuple[list[str], list[dict[str, Any]]]:
    metrics = history.metric_list(measurement, None)
    q = queries.hourly_means_by_device(city, measurement, metrics, t0, t1)
    rows = influx.rows(q.statement, q.params)
    return metrics, rows


@router.get("/cities/{city}/readings.csv", response_class=Response,
            responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "hourly means per device"}})
def readings_csv(city: CityPath, _key: Reader, influx: InfluxDep, registry: RegistryDep, settings: SettingsDep,
                 measurement: Measurement = "air", start: Start = None, end: End = None) -> Response:
    """Hourly means per device as CSV (default the last 24 h, at most 31 days)."""
    known_city(settings, city)
    try:
        t0, t1 = history.time_range(start, end, timedelta(days=1))
    except history.QueryError as exc:
        raise HTTPException(400, str(exc)) from None
    if t1 - t0 > timedelta(days=31):
        raise HTTPException(400, "at most 31 days per download")
    metrics, rows = _rows(influx, city, measurement, t0, t1)
    coords = {d.id: d for d in registry.devices(city=city)}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["time_bangkok", "time_utc", "city", "device", "lat", "lon", *[csv_column(m) for m in metrics]])
    for r in sorted(rows, key=lambda r: (r["time"], r["device"])):
        t = datetime.fromtimestamp(r["time"] / 1000, UTC)
        d = coords.get(r["device"])
        w.writerow([t.astimezone(BANGKOK).isoformat(), t.isoformat().replace("+00:00", "Z"), city, r["device"],
                    d.lat if d else "", d.lon if d else "", *[_num(r.get(f"mean_{m}")) for m in metrics]])
    name = f"nakhon-{city}-{measurement}-{t0:%Y%m%d}-{t1:%Y%m%d}.csv"
    return Response(buf.getvalue(), media_type="text/csv; charset=utf-8", headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _coverage(influx: InfluxDep, city: str, measurement: str) -> tuple[datetime | None, datetime | None, set[str]]:
    """The first and the end of the last hour of the city's hourly data in `measurement`, and the devices that reported in it."""
    first, last, latest = (influx.rows(q.statement, q.params) for q in queries.hourly_coverage(city, measurement))
    start = datetime.fromtimestamp(first[0]["time"] / 1000, UTC) if first else None
    end = datetime.fromtimestamp(last[0]["time"] / 1000, UTC) + timedelta(hours=1) if last else None
    return start, end, {r["device"] for r in latest if r.get("device")}


def _num(v: Any) -> str:
    return "" if v is None else f"{v:.6g}"


_GEOJSON: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/geo+json": {"schema": {"type": "object"}}}, "description": "GeoJSON FeatureCollection"}}


@router.get("/cities/{city}/latest.geojson", responses=_GEOJSON)
async def latest_geojson(city: CityPath, _key: Reader, request: Request, settings: SettingsDep) -> Response:
    """The latest reading of every registered station that has reported, as GeoJSON points (RFC 7946: lon, lat; WGS 84).

    From memory, as `/v1/cities/{city}/latest`: `metadata.as_of` and `metadata.stale`, and the `Age` header."""
    known_city(settings, city)
    return answer(request, await city_now(request, city), "geojson", media_type="application/geo+json")


@router.get("/cities/{city}/dataset.json", response_model=CkanPackage)
def dataset(city: CityPath, request: Request, _key: Reader, influx: InfluxDep, registry: RegistryDep, settings: SettingsDep,
            measurement: Annotated[Measurement, Query()] = "air") -> CkanPackage:
    """CKAN package metadata for the city's open data: temporal coverage from the data itself, and the stations behind it."""
    known_city(settings, city)
    c = settings.cities[city]
    first, last, stations = _coverage(influx, city, measurement)
    registered = registry.devices(city=city)
    base = str(request.base_url).rstrip("/")
    r = c.radius_km / 111.0  # degrees of latitude; good enough for a bounding box
    rl = r / max(0.1, math.cos(math.radians(c.lat)))
    bbox = [[c.lon - rl, c.lat - r], [c.lon + rl, c.lat - r], [c.lon + rl, c.lat + r], [c.lon - rl, c.lat + r], [c.lon - rl, c.lat - r]]
    return CkanPackage(
        name=f"nakhon-{city.replace('_', '-')}-{measurement}",
        title=f"{c.name_en} ({c.name_th}) — {measurement} sensor readings",
        notes=(f"Hourly {measurement} readings from the Nakhon smart-city sensors in {c.name_en}. "
               f"ข้อมูลรายชั่วโมงจากเซนเซอร์เมืองอัจฉริยะ {c.name_th}. Times in Asia/Bangkok and UTC; "
               "each column names its unit once (pm25_µg/m³; co2_ppm is already in ppm)."),
        license_id=settings.open_data_license,
        author=settings.open_data_publisher,
        language=["th", "en"],
        frequency="hourly",
        spatial={"type": "Polygon", "coordinates": [bbox]},
        temporal_start=first.isoformat().replace("+00:00", "Z") if first else None,
        temporal_end=last.isoformat().replace("+00:00", "Z") if last else None,  # the end of the newest hour; the series goes on
        tags=[{"name": t} for t in ("iot", "smart-city", measurement, city.replace("_", "-"))],
        resources=[
            Resource(name="Hourly readings (CSV)", url=f"{base}/v1/open/cities/{city}/readings.csv?measurement={measurement}",
                     format="CSV", description="hourly means per device; ?start=&end= for a range (31 days at most)"),
            Resource(name="Latest readings (GeoJSON)", url=f"{base}/v1/open/cities/{city}/latest.geojson", format="GeoJSON",
                     description="the latest value of every metric per device, as points"),
        ],
        extras=[Extra(key="update_frequency", value="hourly"), Extra(key="timezone", value="Asia/Bangkok"),
                Extra(key="devices", value=str(len(stations))), Extra(key="devices_registered", value=str(len(registered))),
                Extra(key="columns", value=", ".join(csv_column(m) for m in history.metric_list(measurement, None)))],
    )
