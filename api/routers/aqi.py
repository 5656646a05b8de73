"""The Thai AQI per device and per city, now and as hourly history (contract.aqi).

The ingest stores each device's AQI per hour in `hourly.aqi` with the
averaged concentrations behind it. A city's AQI is the AQI of the mean
across its devices of those averaged concentrations, judged by the table in
force in that hour.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from api import history
from api.deps import READ_ERRORS, InfluxDep, SettingsDep
from api.params import CityPath, DevicePath, End, Start
from api.routers.readings import known_city
from api.security import Reader
from contract import aqi, storage
from contract.rollups import AQI_AVG_FIELDS

router = APIRouter(prefix="/v1", tags=["aqi"], responses=READ_ERRORS)
_AVG = list(AQI_AVG_FIELDS.values())  # pm25_24h, pm10_24h, o3_8h, co_8h, no2_1h, so2_1h


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


class AqiHistory(BaseModel):
    subject: str
    start: datetime
    end: datetime
    hours: list[AqiValue]


class CityAqi(BaseModel):
    city: str
    current: AqiValue | None
    devices: list[DeviceAqi]


def _value(t_ms: int, row: dict[str, Any]) -> AqiValue | None:
    """From stored or averaged concentrations: the AQI with its band (recomputed, so one rule for all)."""
    when = datetime.fromtimestamp(t_ms / 1000, UTC)
    conc = {p: row.get(f) for p, f in AQI_AVG_FIELDS.items()}
    result = aqi.thai_aqi(conc, when)
    if result is None:
        return None
    b = result.band
    return AqiValue(time=when, aqi=result.aqi, band=b.level, colour=b.colour, label_en=b.en, label_th=b.th,
                    pollutant=result.pollutant, concentrations={AQI_AVG_FIELDS[p]: float(v) for p, v in conc.items() if v is not None})


def _fields() -> str:
    return ", ".join(f'"{f}"' for f in _AVG)


def _range(start: Any, end: Any, days: int) -> tuple[datetime, datetime]:
    try:
        return history.time_range(start, end, timedelta(days=days))
    except history.QueryError as exc:
        raise HTTPException(400, str(exc)) from None


@router.get("/devices/{device}/aqi", response_model=DeviceAqi)
def device_aqi(device: DevicePath, _key: Reader, influx: InfluxDep) -> DeviceAqi:
    """The device's AQI for its latest hour with data (within two days)."""
    since = history.iso(datetime.now(UTC) - timedelta(days=2))
    rows = influx.rows(f'SELECT {_fields()} FROM "{storage.RP_HOURLY}"."{storage.AQI_MEASUREMENT}" '
                       'WHERE "device" = $id AND time >= $since ORDER BY time DESC LIMIT 1', {"id": device, "since": since})
    return DeviceAqi(device=device, current=_value(rows[0]["time"], rows[0]) if rows else None)


@router.get("/devices/{device}/aqi/history", response_model=AqiHistory)
def device_aqi_history(device: DevicePath, _key: Reader, influx: InfluxDep, start: Start = None, end: End = None) -> AqiHistory:
    """The device's AQI hour by hour (default the last 7 days)."""
    t0, t1 = _range(start, end, 7)
    rows = influx.rows(f'SELECT {_fields()} FROM "{storage.RP_HOURLY}"."{storage.AQI_MEASUREMENT}" '
                       'WHERE "device" = $id AND time >= $start AND time < $end', {"id": device, "start": history.iso(t0), "end": history.iso(t1)})
    hours = [v for r in rows if (v := _value(r["time"], r)) is not None]
    return AqiHistory(subject=device, start=t0, end=t1, hours=hours)


@router.get("/cities/{city}/aqi", response_model=CityAqi)
def city_aqi(city: CityPath, _key: Reader, influx: InfluxDep, settings: SettingsDep) -> CityAqi:
    """Every device's current AQI and the city's (from the mean concentrations of the latest hour)."""
    known_city(settings, city)
    since = history.iso(datetime.now(UTC) - timedelta(days=2))
    series = influx.series(f'SELECT {_fields()} FROM "{storage.RP_HOURLY}"."{storage.AQI_MEASUREMENT}" '
                           'WHERE "city" = $id AND time >= $since GROUP BY "device" ORDER BY time DESC LIMIT 1',
                           {"id": city, "since": since})
    devices = []
    newest = 0
    for s in series:
        row = dict(zip(s["columns"], s["values"][0], strict=True))
        newest = max(newest, int(row["time"]))
        devices.append((s["tags"]["device"], int(row["time"]), row))
    # the city's value: devices reporting in the newest hour, concentrations averaged
    current_rows = [r for _, t, r in devices if t == newest]
    mean = {f: sum(vals) / len(vals) for f in _AVG if (vals := [r[f] for r in current_rows if r.get(f) is not None])}
    current = _value(newest, mean) if current_rows else None
    return CityAqi(city=city, current=current,
                   devices=sorted((DeviceAqi(device=d, current=_value(t, r)) for d, t, r in devices), key=lambda x: x.device))


@router.get("/cities/{city}/aqi/history", response_model=AqiHistory)
def city_aqi_history(city: CityPath, _key: Reader, influx: InfluxDep, settings: SettingsDep,
                     start: Start = None, end: End = None) -> AqiHistory:
    """The city's AQI hour by hour (default the last 7 days)."""
    known_city(settings, city)
    t0, t1 = _range(start, end, 7)
    if t1 - t0 > timedelta(days=400):
        raise HTTPException(400, "at most 400 days of hourly AQI at a time")
    cols = ", ".join(f'mean("{f}") AS "{f}"' for f in _AVG)
    rows = influx.rows(f'SELECT {cols} FROM "{storage.RP_HOURLY}"."{storage.AQI_MEASUREMENT}" '
                       'WHERE "city" = $id AND time >= $start AND time < $end GROUP BY time(1h) fill(none)',
                       {"id": city, "start": history.iso(t0), "end": history.iso(t1)})
    hours = [v for r in rows if (v := _value(r["time"], r)) is not None]
    return AqiHistory(subject=city, start=t0, end=t1, hours=hours)
