"""Every InfluxQL statement the API sends, in one place.

A statement is built only from names the project owns (retention policies
from contract.storage, measurements and fields from the catalogue and the
roll-up schema); every value a caller gives (a city, a device, a time, an
alert id) goes in as a bound parameter ($id, $start, ...), and a bucket width
is rebuilt from an integer. Callers run a `Query` and shape the answer; they
never write InfluxQL of their own (tests/test_project.py checks).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from contract import storage
from contract.alerts import ALERTS_MEASUREMENT
from contract.rollups import AQI_AVG_FIELDS, RP_LATEST

Tag = Literal["device", "city"]
Agg = Literal["mean", "min", "max", "count"]

AQI_FIELDS = list(AQI_AVG_FIELDS.values())  # pm25_24h, pm10_24h, o3_8h, co_8h, no2_1h, so2_1h
ALERT_FIELDS = ("alert_id", "event", "severity", "value", "peak", "threshold", "unit", "opened_ms", "since_ms", "closed_ms", "late",
                "rules_version", "message_en", "message_th", "city", "device", "rule")


@dataclass(frozen=True, slots=True)
class Query:
    statement: str
    params: dict[str, Any]


def iso(t: datetime) -> str:
    """UTC, as InfluxQL and the API's answers write it."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _src(rp: str, measurement: str) -> str:
    return f'"{rp}"."{measurement}"'


def _cols(names: Iterable[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _range(tag: Tag, ident: str, start: datetime, end: datetime) -> tuple[str, dict[str, Any]]:
    return f'"{tag}" = $id AND time >= $start AND time < $end', {"id": ident, "start": iso(start), "end": iso(end)}


# --- readings ------------------------------------------------------------------
def raw_points(tag: Tag, ident: str, measurement: str, metrics: list[str], start: datetime, end: datetime, limit: int) -> Query:
    where, params = _range(tag, ident, start, end)
    return Query(f'SELECT {_cols(metrics)}, "seq" FROM {_src(storage.RP_RAW, measurement)} WHERE {where} ORDER BY time LIMIT {int(limit)}',
                 params)


def raw_aggregate(tag: Tag, ident: str, measurement: str, metrics: list[str], start: datetime, end: datetime, every_s: int,
                  agg: Agg) -> Query:
    where, params = _range(tag, ident, start, end)
    cols = ", ".join(f'{agg}("{m}") AS "{m}"' for m in metrics)
    return Query(f"SELECT {cols} FROM {_src(storage.RP_RAW, measurement)} WHERE {where} GROUP BY time({int(every_s)}s) fill(none)", params)


def hourly_rows(tag: Tag, ident: str, measurement: str, metrics: list[str], start: datetime, end: datetime, agg: Agg) -> Query:
    """The hourly points an aggregate is combined from (mean needs the counts as weights)."""
    where, params = _range(tag, ident, start, end)
    need = ["mean", "count"] if agg == "mean" else [agg]
    return Query(f"SELECT {_cols(f'{a}_{m}' for m in metrics for a in need)} FROM {_src(storage.RP_HOURLY, measurement)} WHERE {where}",
                 params)


def hourly_direct(ident: str, measurement: str, metrics: list[str], start: datetime, end: datetime, agg: Agg) -> Query:
    """One device, hourly buckets: the roll-up points are the answer, named like raw aggregates."""
    where, params = _range("device", ident, start, end)
    cols = ", ".join(f'"{agg}_{m}" AS "{m}"' for m in metrics)
    return Query(f"SELECT {cols} FROM {_src(storage.RP_HOURLY, measurement)} WHERE {where}", params)


def hourly_means_by_device(city: str, measurement: str, metrics: list[str], start: datetime, end: datetime) -> Query:
    """Open data: the hourly means of every device of a city."""
    where, params = _range("city", city, start, end)
    return Query(f'SELECT {_cols(f"mean_{m}" for m in metrics)} FROM {_src(storage.RP_HOURLY, measurement)} WHERE {where} GROUP BY "device"',
                 params)


def _latest_sources() -> str:
    return ",".join(_src(RP_LATEST, m) for m in storage.DATA_MEASUREMENTS)


def latest_city(city: str) -> Query:
    """One point per device and measurement, kept by the ingest: cheap whatever the history.

    Not grouped by device: the tags come back as columns of one series per measurement,
    which InfluxDB answers several times faster than a thousand one-point series."""
    return Query(f'SELECT * FROM {_latest_sources()} WHERE "city" = $city', {"city": city})


def latest_device(device: str) -> Query:
    return Query(f'SELECT * FROM {_latest_sources()} WHERE "device" = $id', {"id": device})


def hourly_coverage(city: str, measurement: str) -> tuple[Query, Query, Query]:
    """Open-data metadata: the city's first and last hourly point (every field: a device need not
    report the first metric) and the devices with a latest point in `measurement`."""
    src = _src(storage.RP_HOURLY, measurement)
    p = {"id": city}
    return (Query(f'SELECT * FROM {src} WHERE "city" = $id ORDER BY time ASC LIMIT 1', p),
            Query(f'SELECT * FROM {src} WHERE "city" = $id ORDER BY time DESC LIMIT 1', p),
            Query(f'SELECT "ts", "device" FROM {_src(RP_LATEST, measurement)} WHERE "city" = $id', p))


# --- data quality ----------------------------------------------------------------
def counts_by_device(tag: Tag, ident: str, start: datetime, end: datetime) -> Query:
    """Readings received per device and measurement (`seq` is in every reading)."""
    where, params = _range(tag, ident, start, end)
    sources = ",".join(_src(storage.RP_RAW, m) for m in storage.DATA_MEASUREMENTS)
    return Query(f'SELECT count("seq") FROM {sources} WHERE {where} GROUP BY "device"', params)


def newest_by_device(tag: Tag, ident: str) -> Query:
    return Query(f'SELECT "ts" FROM {_latest_sources()} WHERE "{tag}" = $id GROUP BY "device"', {"id": ident})


# --- air quality -------------------------------------------------------------------
def aqi_latest_by_device(city: str, since: datetime) -> Query:
    """Each device's newest hourly AQI concentrations within the last days."""
    return Query(f'SELECT {_cols(AQI_FIELDS)} FROM {_src(storage.RP_HOURLY, storage.AQI_MEASUREMENT)} '
                 'WHERE "city" = $id AND time >= $since GROUP BY "device" ORDER BY time DESC LIMIT 1', {"id": city, "since": iso(since)})


def aqi_device_hours(device: str, start: datetime, end: datetime) -> Query:
    where, params = _range("device", device, start, end)
    return Query(f"SELECT {_cols(AQI_FIELDS)} FROM {_src(storage.RP_HOURLY, storage.AQI_MEASUREMENT)} WHERE {where}", params)


def aqi_city_hours(city: str, start: datetime, end: datetime) -> Query:
    """The city's concentrations hour by hour: the mean over its devices."""
    where, params = _range("city", city, start, end)
    cols = ", ".join(f'mean("{f}") AS "{f}"' for f in AQI_FIELDS)
    return Query(f"SELECT {cols} FROM {_src(storage.RP_HOURLY, storage.AQI_MEASUREMENT)} WHERE {where} GROUP BY time(1h) fill(none)", params)


# --- alerts ---------------------------------------------------------------------------
def _alert_filter(city: str, rule: str | None, device: str | None) -> tuple[str, dict[str, Any]]:
    where, params = '"city" = $city', {"city": city}
    if rule is not None:
        where += ' AND "rule" = $rule'
        params["rule"] = rule
    if device is not None:
        where += ' AND "device" = $device'
        params["device"] = device
    return where, params


def alert_newest_events(city: str, rule: str | None, device: str | None) -> Query:
    """The newest event of every series (station x rule)."""
    where, params = _alert_filter(city, rule, device)
    return Query(f'SELECT {_cols(ALERT_FIELDS)} FROM {_src(storage.RP_RAW, ALERTS_MEASUREMENT)} WHERE {where} '
                 'GROUP BY "device", "rule" ORDER BY time DESC LIMIT 1', params)


def alert_events_of(city: str, rule: str | None, device: str | None, alert_ids: list[str]) -> Query:
    where, params = _alert_filter(city, rule, device)
    ids = {f"a{i}": a for i, a in enumerate(alert_ids)}
    cond = " OR ".join(f'"alert_id" = ${k}' for k in ids)
    return Query(f"SELECT {_cols(ALERT_FIELDS)} FROM {_src(storage.RP_RAW, ALERTS_MEASUREMENT)} WHERE {where} AND ({cond})", {**params, **ids})


def alert_events_between(city: str, rule: str | None, device: str | None, start: datetime, end: datetime) -> Query:
    where, params = _alert_filter(city, rule, device)
    return Query(f"SELECT {_cols(ALERT_FIELDS)} FROM {_src(storage.RP_RAW, ALERTS_MEASUREMENT)} WHERE {where} AND time >= $start AND time < $end",
                 {**params, "start": iso(start), "end": iso(end)})


def alert_exists(city: str, alert_id: str) -> Query:
    return Query(f'SELECT "alert_id" FROM {_src(storage.RP_RAW, ALERTS_MEASUREMENT)} WHERE "city" = $city AND "alert_id" = $id LIMIT 1',
                 {"city": city, "id": alert_id})


# --- the platform itself -----------------------------------------------------------
def ingest_reports(window_s: int) -> Query:
    """The ingest workers' self-reports of the last `window_s` seconds, one series per worker."""
    return Query('SELECT last("connected") AS connected, last("spool_depth") AS spool, first("spool_depth") AS spool0, '
                 'min("spool_depth") AS spool_min, count("received") AS reports, last("received") AS received '
                 f'FROM "{storage.INGEST_MEASUREMENT}" WHERE time > now() - {int(window_s)}s GROUP BY "worker"', {})


def config_acknowledged(device: str) -> Query:
    """The newest config `seq` the device confirmed in a status document."""
    return Query(f'SELECT last("config_seq") AS seq FROM {_src(storage.RP_RAW, storage.STATUS_MEASUREMENT)} WHERE "device" = $d', {"d": device})
