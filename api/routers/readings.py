"""Readings: a device's or a city's history (raw or aggregated), the latest per device of a city."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel

from api import history, queries
from api.current import answer, city_now
from api.deps import READ_ERRORS, AsyncInfluxDep, SettingsDep, json_response
from api.params import Agg, CityPath, DevicePath, End, Every, Measurement, Metrics, Source, Start
from api.security import Reader

router = APIRouter(prefix="/v1", tags=["readings"], responses=READ_ERRORS)


class Point(BaseModel):
    time: datetime
    values: dict[str, float | str]


class History(BaseModel):
    subject: str  # device id or city slug
    measurement: str
    start: datetime
    end: datetime
    every: str | None
    agg: str | None
    source: str  # raw or hourly
    points: list[Point]


class LatestDevice(BaseModel):
    device: str
    time: datetime | None
    lat: float | None
    lon: float | None
    values: dict[str, float | str]


class CityLatest(BaseModel):
    city: str
    devices: list[LatestDevice]
    as_of: datetime  # when these values were read from storage
    stale: bool  # older than the stated bound (api_live_max_age_s)


def known_city(settings: SettingsDep, city: str) -> None:
    if city not in settings.cities:
        raise HTTPException(404, f"unknown city {city!r}")


def _utc_ms(ms: int) -> datetime:
    """A time in ms as a UTC datetime: orjson writes it as RFC 3339 with Z (json_response), several times faster than isoformat."""
    return datetime.fromtimestamp(ms / 1000, UTC)


async def _history(influx: AsyncInfluxDep, settings: SettingsDep, tag: str, ident: str, measurement: str, metrics: str | None,
                   start: datetime | None, end: datetime | None, every: str | None, agg: str, source: str, limit: int) -> Response:
    try:
        names = history.metric_list(measurement, metrics)
        if every is None:
            if tag == "city":
                raise history.QueryError("a city's readings need every (e.g. 1h)")
            if source == "hourly":
                raise history.QueryError("hourly roll-ups need every (whole hours)")
            t0, t1 = history.time_range(start, end, timedelta(days=1))
            if t1 - t0 > timedelta(days=settings.api_raw_max_days):
                raise history.QueryError(f"raw points are served for up to {settings.api_raw_max_days} days; set every")
            q = queries.raw_points("device", ident, measurement, names, t0, t1, limit)
            points = history.points(await influx.series(q.statement, q.params, epoch=None))  # RFC 3339 times, passed through
            used = "raw"
        else:
            every_s = history.every_seconds(every)
            t0, t1 = history.time_range(start, end, timedelta(days=7 if every_s >= 3600 else 1))
            plan = history.aggregate_query(tag, ident, measurement, names, t0, t1, every_s, agg, source)  # type: ignore[arg-type]
            series = await influx.series(plan.query.statement, plan.query.params, epoch="ms" if plan.fold else None)
            if plan.fold:
                rows = history.combine_hourly(series, names, every_s, agg)  # type: ignore[arg-type]
                points = [{"time": _utc_ms(t), "values": v} for t, v in rows[:limit]]
            else:
                points = history.points(series)[:limit]
            used = plan.source
    except history.QueryError as exc:
        raise HTTPException(400, str(exc)) from None
    body = {"subject": ident, "measurement": measurement, "start": t0.isoformat(), "end": t1.isoformat(), "every": every,
            "agg": agg if every else None, "source": used, "points": points}
    return json_response(body)


Limit = Annotated[int, Query(ge=1, le=100_000, description="at most this many points")]


@router.get("/devices/{device}/readings", response_model=History)
async def device_readings(device: DevicePath, _key: Reader, influx: AsyncInfluxDep, settings: SettingsDep,
                          measurement: Measurement = "air", metrics: Metrics = None, start: Start = None, end: End = None,
                          every: Every = None, agg: Agg = "mean", source: Source = "auto", limit: Limit = 10_000) -> Response:
    """One device's readings: raw points, or buckets of `every` aggregated with `agg`."""
    return await _history(influx, settings, "device", device, measurement, metrics, start, end, every, agg, source, limit)


@router.get("/cities/{city}/readings", response_model=History)
async def city_readings(city: CityPath, _key: Reader, influx: AsyncInfluxDep, settings: SettingsDep,
                        measurement: Measurement = "air", metrics: Metrics = None, start: Start = None, end: End = None,
                        every: Every = "1h", agg: Agg = "mean", source: Source = "auto", limit: Limit = 10_000) -> Response:
    """A city's readings aggregated over all its devices in buckets of `every`."""
    known_city(settings, city)
    return await _history(influx, settings, "city", city, measurement, metrics, start, end, every, agg, source, limit)


@router.get("/cities/{city}/latest", response_model=CityLatest)
async def city_latest(city: CityPath, _key: Reader, request: Request, settings: SettingsDep) -> Response:
    """The latest value of every metric of every device in a city, with coordinates.

    Served from memory (refreshed every few seconds from the `latest` values the ingest keeps): `as_of` says when
    the data was read, the `Age` header how many seconds ago, and `stale` is true when that is beyond the bound
    (InfluxDB not answering: the last values known are served)."""
    known_city(settings, city)
    return answer(request, await city_now(request, city), "latest")
