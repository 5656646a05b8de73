"""InfluxDB line-protocol encoding, the only way points are built.

Tag values are never built from unchecked text: every tag value must match
`SAFE_TAG` (the alphabet of city slugs and device ids), else `encode_*`
raises. Escaping is still applied, so a future wider alphabet stays safe.
"""

from __future__ import annotations

import math
import re
from typing import Final

from contract.catalogue import METRICS
from contract.payload import Reading

SAFE_TAG: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_TAG_ESCAPES: Final = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_MEAS_ESCAPES: Final = str.maketrans({",": r"\,", " ": r"\ "})


class LineProtocolError(ValueError):
    """A value that cannot be encoded safely."""


def escape_tag(value: str) -> str:
    if SAFE_TAG.fullmatch(value) is None:
        raise LineProtocolError(f"unsafe tag value {value[:64]!r}")
    return value.translate(_TAG_ESCAPES)


def escape_measurement(name: str) -> str:
    if "\n" in name or not name:
        raise LineProtocolError(f"bad measurement {name[:64]!r}")
    return name.translate(_MEAS_ESCAPES)


def field_value(value: float | int | str | bool) -> str:
    """One field value; floats keep full precision (repr round-trips)."""
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is int:
        return f"{value}i"
    if type(value) is float:
        if not math.isfinite(value):
            raise LineProtocolError("non-finite float")
        return repr(value)
    if type(value) is str:
        if "\n" in value:
            raise LineProtocolError("newline in string field")
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise LineProtocolError(f"unsupported field type {type(value).__name__}")


def encode_point(measurement: str, tags: dict[str, str], fields: dict[str, float | int | str | bool], ts_ms: int) -> str:
    """One line: measurement,tags fields timestamp(ms). Tags sorted, as InfluxDB likes."""
    if not fields:
        raise LineProtocolError("a point needs at least one field")
    head = escape_measurement(measurement)
    tag_part = "".join(f",{escape_tag(k)}={escape_tag(v)}" for k, v in sorted(tags.items()))
    field_part = ",".join(f"{escape_tag(k)}={field_value(v)}" for k, v in fields.items())
    return f"{head}{tag_part} {field_part} {int(ts_ms)}"


# metric name -> (measurement, "name="): one lookup per value when encoding readings
_FIELDS: Final = {name: (m.measurement, f"{escape_tag(name)}=") for name, m in METRICS.items()}


def series_tags(city: str, device: str) -> str:
    """The tag part of a device's points, checked and escaped once per device."""
    return f",city={escape_tag(city)},device={escape_tag(device)} "


def encode_reading(city: str, device: str, reading: Reading, tags: str | None = None) -> list[str]:
    """The lines of one validated reading: one point per measurement touched.

    Numbers are stored as floats whatever JSON type they came in, so a field
    never changes type (InfluxDB refuses a type change for a whole shard).
    `seq` rides along as an integer field for gap and duplicate checks.
    `tags` is `series_tags(city, device)` when the caller has it cached.
    """
    if tags is None:
        tags = series_tags(city, device)
    by_meas: dict[str, list[str]] = {}
    for name, value in reading.m.items():
        meas, key = _FIELDS[name]
        t = type(value)
        text = repr(value) if t is float else repr(float(value)) if t is int else field_value(value)
        parts = by_meas.get(meas)
        if parts is None:
            by_meas[meas] = [key + text]
        else:
            parts.append(key + text)
    tail = f",seq={reading.seq}i {reading.ts_ms}"
    return [meas + tags + ",".join(parts) + tail for meas, parts in by_meas.items()]
