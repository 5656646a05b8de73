"""Data completeness (readings received vs expected) and staleness (time since the last reading).

Received counts the readings (points carrying `seq`) of the device's busiest
measurement in the range; expected is the range divided by the device's
reading interval (registry, else `api_default_interval_s`), counted from
its install date if that is later than the start.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from api import history, queries
from api.deps import READ_ERRORS, InfluxDep, RegistryDep, SettingsDep
from api.params import CityPath, DevicePath, End, Start
from api.registry import Device
from api.routers.readings import known_city
from api.security import Reader

router = APIRouter(prefix="/v1", tags=["data quality"], responses=READ_ERRORS)


class DeviceQuality(BaseModel):
    device: str
    interval_s: int
    expected: int
    received: int
    completeness: float | None  # received / expected, capped at 1
    last_seen: datetime | None
    staleness_s: float | None  # seconds since the newest reading


class CityQuality(BaseModel):
    city: str
    start: datetime
    end: datetime
    expected: int
    received: int
    completeness: float | None
    stale_devices: int  # devices silent for more than three intervals
    devices: list[DeviceQuality]



def _counts(influx: InfluxDep, tag: str, ident: str, t0: datetime, t1: datetime) -> dict[str, int]:
    out: dict[str, int] = {}
    q = queries.counts_by_device(tag, ident, t0, t1)  # type: ignore[arg-type]
    for s in influx.series(q.statement, q.params):
        d = s["tags"]["device"]
        out[d] = max(out.get(d, 0), int(s["values"][0][1] or 0))
    return out


def _newest(influx: InfluxDep, tag: str, ident: str) -> dict[str, int]:
    out: dict[str, int] = {}
    q = queries.newest_by_device(tag, ident)  # type: ignore[arg-type]
    for s in influx.series(q.statement, q.params):
        d = s["tags"]["device"]
        ts = [int(v[1]) for v in s["values"] if v[1] is not None]
        if ts:
            out[d] = max(out.get(d, 0), *ts)
    return out


def _quality(device: str, reg: Device | None, default_interval: int, t0: datetime, t1: datetime, received: int,
             newest_ms: int | None, now: datetime) -> DeviceQuality:
    interval = reg.interval_s if reg else default_interval
    begin = t0
    if reg is not None:
        begin = max(t0, datetime(reg.installed.year, reg.installed.month, reg.installed.day, tzinfo=UTC))
    expected = max(0, math.floor((t1 - begin).total_seconds() / interval)) if begin < t1 else 0
    seen = datetime.fromtimestamp(newest_ms / 1000, UTC) if newest_ms else None
    return DeviceQuality(device=device, interval_s=interval, expected=expected, received=received,
                         completeness=min(1.0, received / expected) if expected else None, last_seen=seen,
                         staleness_s=round((now - seen).total_seconds(), 3) if seen else None)


def _range(start: Any, end: Any) -> tuple[datetime, datetime]:
    try:
        t0, t1 = history.time_range(start, end, timedelta(days=1))
    except history.QueryError as exc:
        raise HTTPException(400, str(exc)) from None
    if t1 - t0 > timedelta(days=400):
        raise HTTPException(400, "at most 400 days at a time")
    return t0, t1


@router.get("/devices/{device}/quality", response_model=DeviceQuality)
def device_quality(device: DevicePath, _key: Reader, influx: InfluxDep, registry: RegistryDep, settings: SettingsDep,
                   start: Start = None, end: End = None) -> DeviceQuality:
    """Completeness over the range (default the last 24 h) and staleness now."""
    t0, t1 = _range(start, end)
    reg = registry.device(device)
    received = _counts(influx, "device", device, t0, t1).get(device, 0)
    newest = _newest(influx, "device", device).get(device)
    if reg is None and not received and newest is None:
        raise HTTPException(404, f"unknown device {device!r}")
    return _quality(device, reg, settings.api_default_interval_s, t0, t1, received, newest, datetime.now(UTC))


@router.get("/cities/{city}/quality", response_model=CityQuality)
def city_quality(city: CityPath, _key: Reader, influx: InfluxDep, registry: RegistryDep, settings: SettingsDep,
                 start: Start = None, end: End = None) -> CityQuality:
    """Per device and for the whole city: completeness over the range, staleness now."""
    known_city(settings, city)
    t0, t1 = _range(start, end)
    now = datetime.now(UTC)
    registered = {d.id: d for d in registry.devices(city=city) if d.state == "active"}
    counts = _counts(influx, "city", city, t0, t1)
    newest = _newest(influx, "city", city)
    devices = [_quality(d, registered.get(d), settings.api_default_interval_s, t0, t1, counts.get(d, 0), newest.get(d), now)
               for d in sorted(set(registered) | set(counts) | set(newest))]
    expected = sum(d.expected for d in devices)
    received = sum(min(d.received, d.expected) for d in devices)
    stale = sum(1 for d in devices if d.staleness_s is None or d.staleness_s > 3 * d.interval_s)
    return CityQuality(city=city, start=t0, end=t1, expected=expected, received=received,
                       completeness=round(received / expected, 6) if expected else None, stale_devices=stale, devices=devices)
