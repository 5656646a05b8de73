"""Readings over a time range: raw points, or aggregates from raw or from the hourly roll-ups.

Every caller value reaches InfluxQL as a bound parameter ($id, $start, $end)
or as an identifier checked against the catalogue; the bucket width is
rebuilt from an integer. Aggregates whose width is a whole number of hours
over a day or more come from `hourly` (min of the mins, max of the maxes,
sum of the counts, and the mean weighted by the counts, so it equals the
mean of raw); other widths and shorter ranges from `raw`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any, Final, Literal

from api import queries
from api.queries import Agg, Query
from contract.catalogue import METRICS, metrics_of
from contract.influx import Influx

Source = Literal["auto", "raw", "hourly"]
EVERY_PATTERN: Final = r"^[1-9][0-9]{0,5}[smhd]$"
METRICS_PATTERN: Final = r"^[a-z0-9_]{1,32}(,[a-z0-9_]{1,32}){0,31}$"
MAX_BUCKETS: Final = 20_000
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EARLIEST: Final = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST: Final = datetime(2100, 1, 1, tzinfo=UTC)


class QueryError(ValueError):
    """A request that cannot be answered as asked; the message says why (HTTP 400)."""


def every_seconds(every: str) -> int:
    if not re.fullmatch(EVERY_PATTERN, every):
        raise QueryError("every must look like 30s, 5m, 1h or 1d")
    seconds = int(every[:-1]) * _UNIT_S[every[-1]]
    if not 10 <= seconds <= 366 * 86400:
        raise QueryError("every must be between 10s and 366d")
    return seconds


def open_end(now: datetime) -> datetime:
    """The end of a range asked "up to now": the next whole minute, so the same question within a minute is the
    same question (one answer, one ETag a proxy can keep for its max-age), and nothing received so far is left out."""
    floor = now.replace(second=0, microsecond=0)
    return floor if floor == now else floor + timedelta(minutes=1)


def time_range(start: datetime | None, end: datetime | None, default: timedelta) -> tuple[datetime, datetime]:
    end = _aware(end) if end else open_end(datetime.now(UTC))
    start = _aware(start) if start else end - default
    for t in (start, end):
        if not _EARLIEST <= t <= _LATEST:
            raise QueryError("times must lie between 2000-01-01 and 2100-01-01")
    if start >= end:
        raise QueryError("start must be before end")
    return start, end


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def metric_list(measurement: str, metrics: str | None) -> list[str]:
    """The requested metrics (all numeric ones of the measurement by default), checked."""
    numeric = [m.name for m in metrics_of(measurement) if m.kind == "float"]
    if not metrics:
        return numeric
    if not re.fullmatch(METRICS_PATTERN, metrics):
        raise QueryError("metrics must be a comma-separated list of metric names")
    names = list(dict.fromkeys(metrics.split(",")))
    for n in names:
        if n not in METRICS or METRICS[n].measurement != measurement:
            raise QueryError(f"{n!r} is not a metric of {measurement}; choose from {numeric}")
        if METRICS[n].kind != "float":
            raise QueryError(f"{n!r} is text and cannot be aggregated")
    return names


def combine_hourly(series: list[dict[str, Any]], metrics: list[str], every_s: int, agg: Agg) -> list[tuple[int, dict[str, float]]]:
    """Fold hourly points into buckets of `every_s` (epoch-aligned, as InfluxQL's GROUP BY time)."""
    every_ms = every_s * 1000
    acc: dict[int, dict[str, list[float]]] = {}
    for s in series:
        cols = s["columns"]
        idx = {c: i for i, c in enumerate(cols)}
        for v in s.get("values", []):
            t = int(v[0])
            bucket = acc.setdefault(t - t % every_ms, {})
            for m in metrics:
                if agg == "mean":
                    mean, n = v[idx[f"mean_{m}"]], v[idx[f"count_{m}"]]
                    if mean is None or not n:
                        continue
                    a = bucket.setdefault(m, [0.0, 0.0])
                    a[0] += mean * n
                    a[1] += n
                else:
                    x = v[idx[f"{agg}_{m}"]]
                    if x is None:
                        continue
                    acc_m = bucket.get(m)
                    if acc_m is None:
                        bucket[m] = [float(x)]
                    elif agg == "min":
                        acc_m[0] = min(acc_m[0], x)
                    elif agg == "max":
                        acc_m[0] = max(acc_m[0], x)
                    else:
                        acc_m[0] += x
    out = []
    for t in sorted(acc):
        values = {m: (a[0] / a[1] if agg == "mean" else a[0]) for m, a in acc[t].items()}
        if values:
            out.append((t, values))
    return out


@dataclass(frozen=True, slots=True)
class Plan:
    source: str  # raw or hourly
    query: Query
    fold: bool  # True: the answer is hourly points to fold with `buckets`; False: it is the buckets


def aggregate_query(tag: Literal["device", "city"], ident: str, measurement: str, metrics: list[str], start: datetime,
                    end: datetime, every_s: int, agg: Agg, source: Source) -> Plan:
    """Which source serves buckets of `every_s`, and the statement to run there."""
    if (end - start).total_seconds() / every_s > MAX_BUCKETS:
        raise QueryError(f"that range holds more than {MAX_BUCKETS} buckets of every; widen every or narrow the range")
    if source == "auto":  # whole-hour buckets over a day or more: the roll-ups; else raw (fresher, and cheap when short)
        source = "hourly" if every_s % 3600 == 0 and end - start >= timedelta(days=1) else "raw"
    if source == "hourly":
        if every_s % 3600:
            raise QueryError("hourly roll-ups serve only widths of whole hours")
        if tag == "device" and every_s == 3600:
            return Plan("hourly", queries.hourly_direct(ident, measurement, metrics, start, end, agg), fold=False)
        return Plan("hourly", queries.hourly_rows(tag, ident, measurement, metrics, start, end, agg), fold=True)
    return Plan("raw", queries.raw_aggregate(tag, ident, measurement, metrics, start, end, every_s, agg), fold=False)


def buckets(plan: Plan, series: list[dict[str, Any]], metrics: list[str], every_s: int, agg: Agg) -> list[tuple[Any, dict[str, Any]]]:
    """[(bucket start, values)] from the answer to `plan` (times as the answer gave them)."""
    if plan.fold:
        return combine_hourly(series, metrics, every_s, agg)
    out = []
    for s in series:
        cols = s["columns"]
        for v in s.get("values", []):
            values = {c: x for c, x in zip(cols[1:], v[1:], strict=True) if x is not None}
            if values:
                out.append((v[0], values))
    return out


def points(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """[{"time", "values"}] from an answer whose rows are the points (raw points, or buckets that need no
    folding), times as the answer gave them; nulls are left out and rows of nothing else dropped."""
    out: list[dict[str, Any]] = []
    for s in series:
        names = s["columns"][1:]
        rows = s.get("values", [])
        if None in chain.from_iterable(rows):  # gaps (the time is never null)
            for v in rows:
                values = {c: x for c, x in zip(names, v[1:], strict=True) if x is not None}
                if values:
                    out.append({"time": v[0], "values": values})
        else:  # the common answer, its dicts built in C: the hot part of a history request
            out += [{"time": v[0], "values": dict(zip(names, v[1:], strict=True))} for v in rows]
    return out


def aggregate(influx: Influx, tag: Literal["device", "city"], ident: str, measurement: str, metrics: list[str],
              start: datetime, end: datetime, every_s: int, agg: Agg, source: Source) -> tuple[str, list[tuple[int, dict[str, Any]]]]:
    """Buckets of `every_s` from the right source; returns (source used, [(time ms, values)])."""
    plan = aggregate_query(tag, ident, measurement, metrics, start, end, every_s, agg, source)
    return plan.source, buckets(plan, influx.series(plan.query.statement, plan.query.params), metrics, every_s, agg)


def latest(influx: Influx, city: str) -> dict[str, tuple[int, dict[str, float | str]]]:
    """device -> (newest reading time ms, latest value of each metric)."""
    q = queries.latest_city(city)
    return latest_values(influx.series(q.statement, q.params))


def latest_values(series: list[dict[str, Any]]) -> dict[str, tuple[int, dict[str, float | str]]]:
    """device -> (newest reading time ms, latest value of each metric), from `latest_query`'s answer."""
    out: dict[str, tuple[int, dict[str, float | str]]] = {}
    for s in series:
        cols = s["columns"]
        i_dev, i_ts = cols.index("device"), cols.index("ts") if "ts" in cols else None
        metrics = [(i, c) for i, c in enumerate(cols) if c in METRICS]
        for row in s.get("values", []):
            values = {c: row[i] for i, c in metrics if row[i] is not None}
            ts = int(row[i_ts]) if i_ts is not None and row[i_ts] is not None else 0
            prev = out.get(row[i_dev])
            if prev is not None:  # the device has other measurements too
                prev[1].update(values)
                values, ts = prev[1], max(ts, prev[0])
            out[row[i_dev]] = (ts, values)
    return out
