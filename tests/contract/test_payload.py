"""Payload validation, table-driven: every reason code has a case."""

from __future__ import annotations

import pytest

from contract.payload import MAX_BATCH, Reason, Window, encode_batch, encode_reading, parse_telemetry

NOW = 1_764_000_000.0
W = Window(max_age_s=86400, max_future_s=300)


def one(raw: bytes) -> tuple[int, list[str]]:
    p = parse_telemetry(raw, NOW, W, max_bytes=4096)
    return len(p.readings), [r.reason for r in p.rejections]


GOOD = [
    b'{"v":1,"ts":1764000000,"seq":42,"m":{"pm25":35.2,"pm10":51.0,"temp_c":31.2,"rh":60.1}}',
    b'{"v":1,"ts":1763999999.5,"seq":0,"m":{"fw":"1.2.0-rc1","battery_v":3.7}}',
    b'{"v":1,"ts":1764000000,"seq":9007199254740991,"m":{"vehicle_count":12}}',
    b'{"v":1,"ts":1763913601,"seq":1,"m":{"pm25":0}}',  # just inside the age window
    b'{"v":1,"ts":1764000299,"seq":1,"m":{"pm25":1000}}',  # just inside the future window, range edge
]


@pytest.mark.parametrize("raw", GOOD)
def test_good(raw: bytes) -> None:
    assert one(raw) == (1, [])


BAD = [
    (b"", Reason.BAD_JSON),
    (b"not json", Reason.BAD_JSON),
    (b"\xff\xfe\x00binary", Reason.BAD_JSON),
    (b'{"v":1,"ts":NaN,"seq":1,"m":{"pm25":1}}', Reason.BAD_JSON),
    (b"[1,2,3]", Reason.BAD_SCHEMA),
    (b'"text"', Reason.BAD_SCHEMA),
    (b'{"ts":1764000000,"seq":1,"m":{"pm25":1}}', Reason.BAD_VERSION),
    (b'{"v":2,"ts":1764000000,"seq":1,"m":{"pm25":1}}', Reason.BAD_VERSION),
    (b'{"v":true,"ts":1764000000,"seq":1,"m":{"pm25":1}}', Reason.BAD_VERSION),
    (b'{"v":1,"ts":1764000000,"seq":1}', Reason.BAD_SCHEMA),
    (b'{"v":1,"ts":1764000000,"seq":1,"m":{"pm25":1},"x":1}', Reason.BAD_SCHEMA),
    (b'{"v":1,"ts":"1764000000","seq":1,"m":{"pm25":1}}', Reason.BAD_TS),
    (b'{"v":1,"ts":true,"seq":1,"m":{"pm25":1}}', Reason.BAD_TS),
    (b'{"v":1,"ts":0,"seq":1,"m":{"pm25":1}}', Reason.TS_OUT_OF_WINDOW),
    (b'{"v":1,"ts":1764000301,"seq":1,"m":{"pm25":1}}', Reason.TS_OUT_OF_WINDOW),
    (b'{"v":1,"ts":4102444800,"seq":1,"m":{"pm25":1}}', Reason.TS_OUT_OF_WINDOW),
    (b'{"v":1,"ts":1e300,"seq":1,"m":{"pm25":1}}', Reason.TS_OUT_OF_WINDOW),
    (b'{"v":1,"ts":1764000000,"seq":-1,"m":{"pm25":1}}', Reason.BAD_SEQ),
    (b'{"v":1,"ts":1764000000,"seq":1.5,"m":{"pm25":1}}', Reason.BAD_SEQ),
    (b'{"v":1,"ts":1764000000,"seq":9007199254740992,"m":{"pm25":1}}', Reason.BAD_SEQ),
    (b'{"v":1,"ts":1764000000,"seq":1,"m":[]}', Reason.BAD_SCHEMA),
    (b'{"v":1,"ts":1764000000,"seq":1,"m":{}}', Reason.EMPTY),
    (b'{"v":1,"ts":1764000000,"seq":1,"m":{"pm2.5":1}}', Reason.UNKNOWN_METRIC),
    (b'{"v":1,"ts":1764000000,"seq":1,"m":{"pm25":"35"}}', Reason.BAD_VALUE),
    (b'{"v":1,"ts":1764000000,"seq":1,"m":{"pm25":null}}', Reason.BAD_VALUE),
    (b'{"v":1,"ts":1764000000,"seq":1,"m":{"pm25":true}}', Reason.BAD_VALUE),
    (b'{"v":1,"ts":1764000000,"seq":1,"m":{"pm25":-0.1}}', Reason.OUT_OF_RANGE),
    (b'{"v":1,"ts":1764000000,"seq":1,"m":{"rh":100.01}}', Reason.OUT_OF_RANGE),
    (b'{"v":1,"ts":1764000000,"seq":1,"m":{"pm25":1e308}}', Reason.OUT_OF_RANGE),
    (b'{"v":1,"ts":1764000000,"seq":1,"m":{"fw":"1.0 beta"}}', Reason.BAD_VALUE),
    (b'{"v":1,"ts":1764000000,"seq":1,"m":{"fw":"a\\"b"}}', Reason.BAD_VALUE),
    (b'{"v":1,"batch":[]}', Reason.EMPTY),
    (b'{"v":1,"batch":{}}', Reason.BAD_SCHEMA),
    (b'{"v":1,"batch":[1]}', Reason.BAD_SCHEMA),
    (b'{"v":1,"batch":[{"v":1,"ts":1764000000,"seq":1,"m":{"pm25":1}}]}', Reason.BAD_SCHEMA),
    (b'{"v":1,"batch":[],"ts":1}', Reason.BAD_SCHEMA),
    (b"[" * 5000 + b"]" * 5000, Reason.OVERSIZE),
    (b"{" + b" " * 5000 + b"}", Reason.OVERSIZE),
]


@pytest.mark.parametrize(("raw", "reason"), BAD)
def test_bad(raw: bytes, reason: str) -> None:
    assert one(raw) == (0, [reason])


def test_deep_nesting_within_size_is_refused() -> None:
    raw = b"[" * 2000 + b"]" * 2000
    p = parse_telemetry(raw, NOW, W, max_bytes=10_000)
    assert not p.readings and p.rejections[0].reason in (Reason.BAD_JSON, Reason.BAD_SCHEMA)


def test_batch_keeps_good_and_rejects_bad_readings() -> None:
    raw = encode_batch([(NOW - 60, 1, {"pm25": 10.0}), (NOW - 30, 2, {"pm25": -5.0}), (NOW, 3, {"pm25": 12.0})])
    p = parse_telemetry(raw, NOW, W)
    assert [r.seq for r in p.readings] == [1, 3]
    assert [(r.reason, r.index) for r in p.rejections] == [(Reason.OUT_OF_RANGE, 1)]


def test_batch_limit() -> None:
    readings = [(NOW, i, {"pm25": 1.0}) for i in range(MAX_BATCH + 1)]
    p = parse_telemetry(encode_batch(readings), NOW, W, max_bytes=10**7)
    assert not p.readings and p.rejections[0].reason == Reason.OVERSIZE
    p = parse_telemetry(encode_batch(readings[:MAX_BATCH]), NOW, W, max_bytes=10**7)
    assert len(p.readings) == MAX_BATCH


def test_timestamp_kept_to_the_millisecond() -> None:
    p = parse_telemetry(encode_reading(NOW + 0.1234, 5, {"pm25": 1.0}), NOW, W)
    assert p.readings[0].ts_ms == 1_764_000_000_123
