"""Path and query parameters shared by the routers, validated at the edge."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Path, Query

from api.history import EVERY_PATTERN, METRICS_PATTERN
from contract.catalogue import MEASUREMENTS
from contract.cities import CITY_SLUG_PATTERN
from contract.topics import DEVICE_ID_PATTERN

MeasurementName = Literal["air", "weather", "water", "noise", "traffic", "device"]
assert set(MeasurementName.__args__) == set(MEASUREMENTS)  # type: ignore[attr-defined]  # kept in step with the catalogue

CityPath = Annotated[str, Path(pattern=CITY_SLUG_PATTERN, description="city slug, e.g. chiang_mai")]
DevicePath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, description="device id")]
Start = Annotated[datetime | None, Query(description="ISO 8601 start (inclusive); default: a span before end")]
End = Annotated[datetime | None, Query(description="ISO 8601 end (exclusive); default now")]
Measurement = Annotated[MeasurementName, Query(description="sensor family")]
Metrics = Annotated[str | None, Query(pattern=METRICS_PATTERN, description="comma-separated metrics; default all numeric ones")]
Every = Annotated[str | None, Query(pattern=EVERY_PATTERN, description="bucket width, e.g. 5m, 1h, 1d; omit for raw points")]
Agg = Annotated[Literal["mean", "min", "max", "count"], Query(description="aggregate within each bucket")]
Source = Annotated[Literal["auto", "raw", "hourly"],
                   Query(description="auto: hourly roll-ups for whole-hour widths over a day or more, else raw")]
