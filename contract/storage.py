"""The storage schema: database, retention policies, tags.

Raw readings go to the `raw` retention policy; hourly mean/min/max roll-ups
to `hourly`. Points are timestamped in milliseconds. Tags are `city` and
`device` only; everything with unbounded cardinality is a field.
"""

from __future__ import annotations

from typing import Final

from contract.catalogue import MEASUREMENTS

DATABASE: Final = "nakhon"
RP_RAW: Final = "raw"
RP_HOURLY: Final = "hourly"
PRECISION: Final = "ms"
TAGS: Final = ("city", "device")

# Platform self-metrics (ingest counters) live beside the data, in `raw`.
INGEST_MEASUREMENT: Final = "ingest_stats"
# Device status documents (contract.status), one point per document received, in `raw`.
STATUS_MEASUREMENT: Final = "device_status"
# Hourly roll-ups in `hourly` keep the measurement names of `raw`, with fields
# `mean_<f>`, `min_<f>`, `max_<f>` and `count_<f>` for every raw field f.
# Thai AQI per device and hour, in `hourly`: fields aqi, band (1-5), pollutant, pm25_24h, pm10_24h.
AQI_MEASUREMENT: Final = "aqi"

DATA_MEASUREMENTS: Final = MEASUREMENTS


def schema_statements(raw_retention: str = "400d", hourly_retention: str = "INF") -> list[str]:
    """Idempotent InfluxQL that creates the database and retention policies."""
    return [
        f'CREATE DATABASE "{DATABASE}"',
        f'CREATE RETENTION POLICY "{RP_RAW}" ON "{DATABASE}" DURATION {raw_retention} REPLICATION 1 DEFAULT',
        f'ALTER RETENTION POLICY "{RP_RAW}" ON "{DATABASE}" DURATION {raw_retention} REPLICATION 1 DEFAULT',
        f'CREATE RETENTION POLICY "{RP_HOURLY}" ON "{DATABASE}" DURATION {hourly_retention} REPLICATION 1',
        f'ALTER RETENTION POLICY "{RP_HOURLY}" ON "{DATABASE}" DURATION {hourly_retention} REPLICATION 1',
    ]
