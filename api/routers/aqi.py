"""The Thai AQI per device and per city, now and as hourly history (contract.aqi).

The ingest stores each device's AQI per hour in `hourly.aqi` with the
averaged concentrations behind it. A city's AQI is the AQI of the mean
across its devices of those averaged concentrations, judged by the table in
force in that hour.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel

from api import history, queries
from api.current import answer, aqi_value, city_now
from api.deps import READ_ERRORS, InfluxDep, SettingsDep, json_response
from api.params import CityPath, DevicePath, End, Start
from api.routers.readings import known_city
from api.security import Reader

router = APIRouter(prefix="/v1", tags=["aqi"], responses=READ_ERRORS)


class AqiValue(BaseModel):
    time: datetime  # start of the hour
    aqi: int
    band: int  # 1 very good .. 5 affects health
    colour: str
    label_en: str
    label_th: str
    pollutant: str
    concentrations: dict[str, float]


class DeviceAqi(BaseModel):
    device: str
    current: AqiValue | None
    stale: bool | None = None  # in /devices/{device}/aqi: whether the values are older than the stated bound


class AqiHistory(BaseModel):
    subject: str
    start: datetime
    end: datetime
    hours: list[AqiValue]


class CityAqi(BaseModel):
    city: str
    current: AqiValue | None
    devices: list[DeviceAqi]
    as_of: datetime  # when these values were read from storage
    stale: bool  # older than the stated bound


def _value(t_ms: int, row: dict[str, Any]) -> AqiValue | None:
    v = aqi_value(t_ms, row)
    return None if v is None else AqiValue(**v)



def _range(start: Any, end: Any, days: int) -> tuple[datetime, datetime]:
    try:
        return history.time_range(start, end, timedelta(days=days))
    except history.QueryError as exc:
        raise HTTPException(400, str(exc)) from None


@router.get("/devices/{device}/aqi", response_model=DeviceAqi)
async def device_aqi(device: DevicePath, _key: Reader, request: Request, settings: SettingsDep) -> Response:
    """The device's AQI for its latest hour with data (within two days), from the current values in memory."""
    city = request.app.state.registry.device(device)  # one indexed SQLite read
    cities = [city.city] if city is not None and city.city in settings.cities else list(settings.cities)
    found: dict[str, Any] | None = None
    stale = False
    for c in cities:
        now = await city_now(request, c)
        stale = stale or now.stale
        if device in now.value.device_aqi:
            found = now.value.device_aqi[device]
            break
    return json_response({"device": device, "current": found, "stale": stale})


@router.get("/devices/{device}/aqi/history", response_model=AqiHistory)
def device_aqi_history(device: DevicePath, _key: Reader, influx: InfluxDep, start: Start = None, end: End = None) -> AqiHistory:
    """The device's AQI hour by hour (default the last 7 days)."""
    t0, t1 = _range(start, end, 7)
    q = queries.aqi_device_hours(device, t0, t1)
    rows = influx.rows(q.statement, q.params)
    hours = [v for r in rows if (v := _value(r["time"], r)) is not None]
    return AqiHistory(subject=device, start=t0, end=t1, hours=hours)


@router.get("/cities/{city}/aqi", response_model=CityAqi)
async def city_aqi(city: CityPath, _key: Reader, request: Request, settings: SettingsDep) -> Response:
    """Every device's current AQI and the city's (from the mean concentrations of the latest hour), from memory:
    `as_of`, `stale` and the `Age` header as for the latest values."""
    known_city(settings, city)
    return answer(request, await city_now(request, city), "aqi")


@router.get("/cities/{city}/aqi/history", response_model=AqiHistory)
def city_aqi_history(city: CityPath, _key: Reader, influx: InfluxDep, settings: SettingsDep,
                     start: Start = None, end: End = None) -> AqiHistory:
    """The city's AQI hour by hour (default the last 7 days)."""
    known_city(settings, city)
    t0, t1 = _range(start, end, 7)
    if t1 - t0 > timedelta(days=400):
        raise HTTPException(400, "at most 400 days of hourly AQI at a time")
    q = queries.aqi_city_hours(city, t0, t1)
    rows = influx.rows(q.statement, q.params)
    hours = [v for r in rows if (v := _value(r["time"], r)) is not None]
    return AqiHistory(subject=city, start=t0, end=t1, hours=hours)
