"""Telemetry payload parsing and validation (contract v1).

    {"v": 1, "ts": 1764000000, "seq": 42, "m": {"pm25": 35.2, ...}}
    {"v": 1, "batch": [{"ts": ..., "seq": ..., "m": {...}}, ...]}

`parse_telemetry` is a pure function: bytes in, accepted readings and
rejections out. It never raises on bad input. A batch keeps its good
readings and rejects the bad ones one by one, so one corrupt reading does
not cost a device hours of buffered data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from contract.catalogue import FW_PATTERN, METRICS

VERSION: Final = 1
MAX_BATCH: Final = 1000
MAX_SEQ: Final = (1 << 53) - 1

_FW_RE: Final = re.compile(FW_PATTERN)
_SINGLE_KEYS: Final = frozenset({"v", "ts", "seq", "m"})
_BATCH_KEYS: Final = frozenset({"v", "batch"})
_READING_KEYS: Final = frozenset({"ts", "seq", "m"})


class Reason:
    """Why a message or reading was rejected: stable codes, used as labels."""

    BAD_TOPIC: Final = "bad_topic"
    BAD_ID: Final = "bad_id"
    OVERSIZE: Final = "oversize"
    BAD_JSON: Final = "bad_json"
    BAD_SCHEMA: Final = "bad_schema"
    BAD_VERSION: Final = "bad_version"
    EMPTY: Final = "empty"
    UNKNOWN_METRIC: Final = "unknown_metric"
    BAD_VALUE: Final = "bad_value"
    NOT_FINITE: Final = "not_finite"
    OUT_OF_RANGE: Final = "out_of_range"
    BAD_SEQ: Final = "bad_seq"
    BAD_TS: Final = "bad_ts"
    TS_OUT_OF_WINDOW: Final = "ts_out_of_window"
    STORAGE_REJECTED: Final = "storage_rejected"
    BAD_STATUS: Final = "bad_status"

    ALL: Final = (
        BAD_TOPIC,
        BAD_ID,
        OVERSIZE,
        BAD_JSON,
        BAD_SCHEMA,
        BAD_VERSION,
        EMPTY,
        UNKNOWN_METRIC,
        BAD_VALUE,
        NOT_FINITE,
        OUT_OF_RANGE,
        BAD_SEQ,
        BAD_TS,
        TS_OUT_OF_WINDOW,
        STORAGE_REJECTED,
        BAD_STATUS,
    )


@dataclass(frozen=True, slots=True)
class Reading:
    ts_ms: int  # the contract keeps time to the millisecond
    seq: int
    m: dict[str, float | str]


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str
    index: int | None = None  # position in a batch; None for the whole message


@dataclass(slots=True)
class Parsed:
    readings: list[Reading] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Window:
    """Accepted timestamps, relative to the receiver's clock (seconds)."""

    max_age_s: float = 35 * 86400
    max_future_s: float = 300


# name -> (lo, hi) for numeric metrics: the hot loop's one lookup per value
_NUMERIC: Final = {name: (m.lo, m.hi) for name, m in METRICS.items() if m.kind != "string"}


def _is_number(x: object) -> bool:
    return type(x) is int or type(x) is float  # bool is a subclass of int: refuse it


def _value_rejection(name: str, value: object, index: int | None) -> Rejection | None:
    """Why a metric's value is refused, or None if it is fine (the slow, exact path)."""
    metric = METRICS.get(name)
    if metric is None:
        return Rejection(Reason.UNKNOWN_METRIC, f"unknown metric {name[:40]!r}", index)
    if metric.kind == "string":
        if type(value) is not str or _FW_RE.fullmatch(value) is None:
            return Rejection(Reason.BAD_VALUE, f"{name} must match {FW_PATTERN}", index)
        return None
    if not _is_number(value):
        return Rejection(Reason.BAD_VALUE, f"{name} is not a number", index)
    if type(value) is float and not math.isfinite(value):
        return Rejection(Reason.NOT_FINITE, f"{name} is not finite", index)
    if not (metric.lo <= value <= metric.hi):  # type: ignore[operator]
        return Rejection(Reason.OUT_OF_RANGE, f"{name}={value!r} outside {metric.lo:g}..{metric.hi:g} {metric.unit}", index)
    return None


def _check_reading(obj: Any, now: float, window: Window, index: int | None) -> Reading | Rejection:
    if type(obj) is not dict:
        return Rejection(Reason.BAD_SCHEMA, "reading is not an object", index)
    keys = obj.keys()
    if keys != _READING_KEYS and not (index is None and keys == _SINGLE_KEYS):
        missing = sorted(_READING_KEYS - keys)
        extra = sorted(keys - _READING_KEYS - {"v"})
        return Rejection(Reason.BAD_SCHEMA, f"missing {missing} unexpected {extra}"[:200], index)
    ts = obj["ts"]
    if not _is_number(ts):
        return Rejection(Reason.BAD_TS, "ts is not a number", index)
    if not math.isfinite(ts):
        return Rejection(Reason.BAD_TS, "ts is not finite", index)
    if ts < now - window.max_age_s or ts > now + window.max_future_s:
        return Rejection(Reason.TS_OUT_OF_WINDOW, f"ts {ts!r} outside [now-{window.max_age_s:g}s, now+{window.max_future_s:g}s]", index)
    seq = obj["seq"]
    if type(seq) is not int or seq < 0 or seq > MAX_SEQ:
        return Rejection(Reason.BAD_SEQ, "seq must be an integer 0..2^53-1", index)
    m = obj["m"]
    if type(m) is not dict:
        return Rejection(Reason.BAD_SCHEMA, "m is not an object", index)
    if not m:
        return Rejection(Reason.EMPTY, "m holds no metrics", index)
    numeric = _NUMERIC
    for name, value in m.items():
        # fast path: a known numeric metric with a number in range (NaN and inf fail the
        # range test); anything else takes the exact path, which names the reason
        bounds = numeric.get(name)
        t = type(value)
        if bounds is not None and (t is float or t is int) and bounds[0] <= value <= bounds[1]:
            continue
        rejection = _value_rejection(name, value, index)
        if rejection is not None:
            return rejection
    return Reading(round(ts * 1000), seq, m)


def parse_telemetry(raw: bytes, now: float, window: Window = Window(), max_bytes: int = 262144) -> Parsed:
    """Validate one telemetry message. Never raises on bad input."""
    out = Parsed()
    if len(raw) > max_bytes:
        out.rejections.append(Rejection(Reason.OVERSIZE, f"{len(raw)} bytes > {max_bytes}"))
        return out
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        out.rejections.append(Rejection(Reason.BAD_JSON, str(exc)[:200]))
        return out
    if type(doc) is not dict:
        out.rejections.append(Rejection(Reason.BAD_SCHEMA, "payload is not a JSON object"))
        return out
    if doc.get("v") != VERSION or type(doc.get("v")) is not int:
        out.rejections.append(Rejection(Reason.BAD_VERSION, f"v must be {VERSION}"))
        return out
    if "batch" not in doc:
        result = _check_reading(doc, now, window, None)
        if isinstance(result, Reading):
            out.readings.append(result)
        else:
            out.rejections.append(result)
        return out
    if doc.keys() != _BATCH_KEYS:
        out.rejections.append(Rejection(Reason.BAD_SCHEMA, "a batch holds only v and batch"))
        return out
    batch = doc["batch"]
    if type(batch) is not list:
        out.rejections.append(Rejection(Reason.BAD_SCHEMA, "batch is not a list"))
        return out
    if not batch:
        out.rejections.append(Rejection(Reason.EMPTY, "batch is empty"))
        return out
    if len(batch) > MAX_BATCH:
        out.rejections.append(Rejection(Reason.OVERSIZE, f"batch of {len(batch)} > {MAX_BATCH} readings"))
        return out
    for i, item in enumerate(batch):
        result = _check_reading(item, now, window, i)
        if isinstance(result, Reading):
            out.readings.append(result)
        else:
            out.rejections.append(result)
    return out


def encode_reading(ts: float, seq: int, m: Mapping[str, float | str]) -> bytes:
    """A single-reading payload, as devices and simulators send it."""
    return orjson.dumps({"v": VERSION, "ts": ts, "seq": seq, "m": m})


def encode_batch(readings: list[tuple[float, int, dict[str, float | str]]]) -> bytes:
    """A batch payload (offline replay, backfill)."""
    return orjson.dumps({"v": VERSION, "batch": [{"ts": t, "seq": s, "m": m} for t, s, m in readings]})
