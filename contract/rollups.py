"""Hourly roll-ups, the Thai AQI per device and hour, and the latest values.

- `hourly`: for every raw measurement and every numeric field f, one point
  per device and hour with mean_f, min_f, max_f and count_f. `recompute`
  statements rebuild chosen hours from raw (the ingest runs them for every
  hour a committed batch touched, so late data is folded in); continuous
  queries are installed as well, as a backstop for data written by others.
- `hourly.aqi`: the Thai AQI per device and hour, from the hourly means
  (24-hour PM averages, 8-hour O3/CO, 1-hour NO2/SO2; contract.aqi).
- `latest`: one point per device and measurement at time 0, overwritten by
  the ingest with the newest reading it has seen (field `ts` = reading time
  in ms). Reading it is a scan of one point per series, whatever the history.

Every statement binds its times as `$start`/`$end`; identifiers come from the
catalogue, never from a caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

from contract import aqi, storage
from contract.catalogue import MEASUREMENTS, metrics_of
from contract.lineprotocol import encode_point

HOUR_MS: Final = 3_600_000
RP_LATEST: Final = "latest"
AGGREGATES: Final = ("mean", "min", "max", "count")
AIR: Final = "air"
# The hourly fields the AQI needs: pollutant -> raw field.
AQI_INPUTS: Final = {p: field for p, (_, _, field) in aqi.POLLUTANTS.items()}
# Names of the averaged concentrations stored with each AQI point.
AQI_AVG_FIELDS: Final = {p: f"{p}_{hours}h" for p, (hours, _, _) in aqi.POLLUTANTS.items()}


def numeric_fields(measurement: str) -> list[str]:
    return [m.name for m in metrics_of(measurement) if m.kind == "float"]


def _select(measurement: str) -> str:
    parts = []
    for f in numeric_fields(measurement):
        parts += [f'{agg}("{f}") AS "{agg}_{f}"' for agg in AGGREGATES]
    return ", ".join(parts)


def recompute_statement(measurement: str) -> str:
    """Rebuild the hourly points of [$start, $end) (whole hours) from raw."""
    if measurement not in MEASUREMENTS:
        raise ValueError(f"not a data measurement: {measurement!r}")
    return (
        f'SELECT {_select(measurement)} INTO "{storage.RP_HOURLY}"."{measurement}" '
        f'FROM "{storage.RP_RAW}"."{measurement}" WHERE time >= $start AND time < $end '
        "GROUP BY time(1h), * fill(none)"
    )


def schema_statements(database: str) -> list[str]:
    """Idempotent: the `latest` retention policy and the continuous queries."""
    out = [f'CREATE RETENTION POLICY "{RP_LATEST}" ON "{database}" DURATION INF REPLICATION 1']
    for m in MEASUREMENTS:
        out.append(
            f'CREATE CONTINUOUS QUERY "rollup_{m}" ON "{database}" RESAMPLE EVERY 10m FOR 2h BEGIN '
            f'SELECT {_select(m)} INTO "{database}"."{storage.RP_HOURLY}"."{m}" '
            f'FROM "{database}"."{storage.RP_RAW}"."{m}" GROUP BY time(1h), * END'
        )
    return out


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def aqi_inputs_statement() -> str:
    """Hourly means of the AQI pollutants per device over [$start, $end)."""
    cols = ", ".join(f'"mean_{f}"' for f in AQI_INPUTS.values())
    return f'SELECT {cols} FROM "{storage.RP_HOURLY}"."{AIR}" WHERE time >= $start AND time < $end GROUP BY city, device'


def aqi_points(series: Iterable[dict[str, Any]], first_hour_ms: int, last_hour_ms: int) -> list[str]:
    """AQI lines for hours first..last (inclusive) of every device in `series`.

    `series` holds the hourly means from at least 23 hours before `first`.
    An hour gets an AQI only when the device has air data in that hour.
    """
    lines: list[str] = []
    for s in series:
        tags = s.get("tags", {})
        cols = s["columns"]
        hours: dict[int, dict[str, float | None]] = {}
        for values in s.get("values", []):
            point = dict(zip(cols, values, strict=True))
            hours[int(point["time"])] = {p: point.get(f"mean_{f}") for p, f in AQI_INPUTS.items()}
        for h in sorted(hours):
            if not first_hour_ms <= h <= last_hour_ms:
                continue
            averaged: dict[str, float | None] = {}
            for p, (window, _, _) in aqi.POLLUTANTS.items():
                vals = [v for k in range(window) if (row := hours.get(h - k * HOUR_MS)) is not None and (v := row.get(p)) is not None]
                averaged[p] = sum(vals) / len(vals) if vals else None
            result = aqi.thai_aqi(averaged, datetime.fromtimestamp(h / 1000, UTC))
            if result is None:
                continue
            fields: dict[str, float | int | str] = {"aqi": result.aqi, "band": result.band.level, "pollutant": result.pollutant}
            for p, v in averaged.items():
                if v is not None:
                    fields[AQI_AVG_FIELDS[p]] = float(v)
            lines.append(encode_point(storage.AQI_MEASUREMENT, {"city": tags["city"], "device": tags["device"]}, fields, h))
    return lines


def hour_ranges(hours: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive hour starts (ms) merged into [first, last] ranges."""
    out: list[tuple[int, int]] = []
    for h in sorted(set(hours)):
        if out and h == out[-1][1] + HOUR_MS:
            out[-1] = (out[-1][0], h)
        else:
            out.append((h, h))
    return out
