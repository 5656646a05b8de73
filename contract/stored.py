"""The `stored` confirmation (contract v1): platform -> device, which readings are durable.

    nakhon/v1/{city}/{device_id}/stored   (QoS 1, never retained)
      {"v": 1, "seq": [[40, 52], [55, 55]], "t": 1764000000.25}

`seq` lists inclusive ranges of the device's reading `seq` numbers that are now
durable (in InfluxDB, or in the ingest's fsync'd spool), ascending and
disjoint. A range says nothing about the seqs outside it: a reading the broker
lost is simply never confirmed, and the device replays it. The device frees a
reading from flash only once a confirmation covers its seq; a repeat of a
reading already stored overwrites itself (idempotent writes), so confirmations
may be lost or repeated without harm.

`seq` may be empty (`{"v": 1, "seq": [], "t": ...}`): the ingest also answers
each `online` status of a device, with whatever ranges wait for it, or none,
so that a device whose NTP is blocked (it has only undated readings and so
sends no telemetry) still learns `t`. A device takes such a message as a
sign that the platform is there and frees nothing.

`t` (optional) is the platform's Unix time in seconds when it sent the
message: a second time source for a device whose NTP is blocked.

The ingest sends one message per device per confirmation round (batched, so
the cost is small next to the readings); a round carries at most MAX_RANGES
ranges, the lowest first, so a device that skips seqs cannot make it unbounded:
what is left out is confirmed in a later round or replayed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, NamedTuple

import orjson

from contract.payload import MAX_SEQ

VERSION: Final = 1
MAX_RANGES: Final = 32

Ranges = list[tuple[int, int]]


class StoredError(ValueError):
    """A `stored` payload that does not follow the contract."""


class Stored(NamedTuple):
    ranges: Ranges
    t: float | None  # the platform's clock when sent, if it said


def _is_time(t: object) -> bool:
    return type(t) in (int, float) and 0 <= t < 2**33  # type: ignore[operator]


def to_ranges(seqs: Iterable[int]) -> Ranges:
    """Sorted, merged inclusive ranges covering exactly `seqs`."""
    out: Ranges = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def stamp(t: float | None) -> bytes:
    """The end of a payload stamped with `t` (or not): made once per confirmation round, shared by its messages."""
    return b"}" if t is None else b',"t":' + orjson.dumps(round(t, 3)) + b"}"


def encode_stamped(ranges: Ranges, end: bytes) -> bytes:
    """The payload for `ranges` (already sorted and disjoint, at most MAX_RANGES) with `end` from `stamp`:
    compact JSON, keys in this order (the firmware reads this form without a parser, firmware/lib/ring.py)."""
    if len(ranges) == 1:  # the common case: a device's readings since the last round, without a gap
        return b'{"v":1,"seq":[[%d,%d]]%b' % (ranges[0][0], ranges[0][1], end)
    if len(ranges) > MAX_RANGES:
        raise StoredError(f"at most {MAX_RANGES} ranges per message, got {len(ranges)}")
    return b'{"v":1,"seq":[%b]%b' % (b",".join([b"[%d,%d]" % (lo, hi) for lo, hi in ranges]), end)


def encode_stored(ranges: Ranges, t: float | None = None) -> bytes:
    """The payload for `ranges` (already sorted and disjoint, at most MAX_RANGES), stamped with `t` if given."""
    return encode_stamped(ranges, stamp(t))


def parse_stored(payload: bytes) -> Stored:
    """The ranges (and time) of a `stored` payload; StoredError says what is wrong."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise StoredError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict) or type(obj.get("v")) is not int or obj["v"] != VERSION or not isinstance(obj.get("seq"), list):
        raise StoredError('stored must be an object {"v": 1, "seq": [[lo, hi], ...]}')
    seq = obj["seq"]
    if len(seq) > MAX_RANGES:
        raise StoredError(f"at most {MAX_RANGES} ranges, got {len(seq)}")
    out: Ranges = []
    for r in seq:
        if not (isinstance(r, list) and len(r) == 2 and all(type(x) is int and 0 <= x <= MAX_SEQ for x in r)):
            raise StoredError(f"a range is [lo, hi] with integers 0..2^53-1, got {r!r}")
        lo, hi = r
        if lo > hi or (out and lo <= out[-1][1]):
            raise StoredError("ranges must be ascending and disjoint, each with lo <= hi")
        out.append((lo, hi))
    t = obj.get("t")
    if t is not None and not _is_time(t):
        raise StoredError(f"t is Unix time in seconds, got {t!r}")
    return Stored(out, t)


def covers(ranges: Ranges, seq: int) -> bool:
    """Whether `seq` is inside one of `ranges`."""
    return any(lo <= seq <= hi for lo, hi in ranges)
