"""Readings: the latest per device of a city, one device's history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel

from api.deps import InfluxDep, SettingsDep
from contract import storage
from contract.catalogue import MEASUREMENTS, METRICS
from contract.cities import CITY_SLUG_PATTERN
from contract.topics import DEVICE_ID_PATTERN

router = APIRouter(prefix="/v1", tags=["readings"])

CityPath = Annotated[str, Path(pattern=CITY_SLUG_PATTERN, description="city slug, e.g. chiang_mai")]
DevicePath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, description="device id")]


class LatestDevice(BaseModel):
    device: str
    city: str
    time: datetime
    values: dict[str, float | str]


class CityLatest(BaseModel):
    city: str
    devices: list[LatestDevice]


class Point(BaseModel):
    time: datetime
    seq: int | None = None
    values: dict[str, float | str | None]


class DeviceReadings(BaseModel):
    device: str
    measurement: str
    start: datetime
    end: datetime
    points: list[Point]


def _known_city(settings: SettingsDep, city: str) -> None:
    if city not in settings.cities:
        raise HTTPException(404, f"unknown city {city!r}; known: {sorted(settings.cities)}")


@router.get("/cities/{city}/latest", response_model=CityLatest)
def city_latest(city: CityPath, settings: SettingsDep, influx: InfluxDep) -> CityLatest:
    """The latest value of every metric of every device in a city."""
    _known_city(settings, city)
    merged: dict[str, LatestDevice] = {}
    for meas in MEASUREMENTS:
        # the newest whole point per device (last(*) would report the range start as its time)
        q = f'SELECT * FROM "{storage.RP_RAW}"."{meas}" WHERE city = $city GROUP BY device ORDER BY time DESC LIMIT 1'
        for s in influx.series(q, {"city": city}):
            device = s["tags"]["device"]
            cols, vals = s["columns"], s["values"][0]
            row = dict(zip(cols, vals))
            ts = datetime.fromtimestamp(row.pop("time") / 1000, UTC)
            entry = merged.setdefault(device, LatestDevice(device=device, city=city, time=ts, values={}))
            entry.time = max(entry.time, ts)
            for name, v in row.items():
                if v is not None and name in METRICS:
                    entry.values[name] = v
    return CityLatest(city=city, devices=sorted(merged.values(), key=lambda d: d.device))


@router.get("/devices/{device}/readings", response_model=DeviceReadings)
def device_readings(
    device: DevicePath,
    influx: InfluxDep,
    measurement: Annotated[str, Query(description="one of " + ", ".join(MEASUREMENTS))] = "air",
    start: Annotated[datetime | None, Query(description="ISO 8601; default 24 h before end")] = None,
    end: Annotated[datetime | None, Query(description="ISO 8601; default now")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> DeviceReadings:
    """One device's raw readings of one measurement over a time range."""
    if measurement not in MEASUREMENTS:
        raise HTTPException(422, f"measurement must be one of {list(MEASUREMENTS)}")
    end = _aware(end) if end else datetime.now(UTC)
    start = _aware(start) if start else end - timedelta(days=1)
    if start >= end:
        raise HTTPException(422, "start must be before end")
    q = (
        f'SELECT * FROM "{storage.RP_RAW}"."{measurement}" WHERE device = $device '
        f"AND time >= $start AND time < $end ORDER BY time LIMIT {int(limit)}"
    )
    rows = influx.rows(q, {"device": device, "start": start.isoformat(), "end": end.isoformat()})
    points = []
    for r in rows:
        seq = r.pop("seq", None)
        ts = r.pop("time")
        r.pop("city", None)
        r.pop("device", None)
        points.append(Point(time=datetime.fromtimestamp(ts / 1000, UTC), seq=seq, values=r))
    return DeviceReadings(device=device, measurement=measurement, start=start, end=end, points=points)


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)
