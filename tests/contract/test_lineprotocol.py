"""Line-protocol encoding: escaping, and the round trip through the real InfluxDB."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.catalogue import METRICS
from contract.influx import Influx
from contract.lineprotocol import LineProtocolError, encode_point, encode_reading, escape_tag, field_value
from contract.payload import Reading, Window, parse_telemetry
from contract.payload import encode_reading as payload_of
from contract.topics import TopicError, parse_topic
from nakhon.servers import InfluxDB

NASTY = [",", " ", "=", '"', "\\", "\n", "\r", "\t", "ü", "🙂", "\x00"]


@pytest.mark.parametrize("ch", NASTY)
def test_tag_values_with_special_characters_are_refused(ch: str) -> None:
    with pytest.raises(LineProtocolError):
        escape_tag(f"dev{ch}x")
    with pytest.raises(LineProtocolError):
        encode_point("air", {"device": f"dev{ch}x"}, {"pm25": 1.0}, 0)
    with pytest.raises(TopicError):
        parse_topic(f"nakhon/v1/phuket/dev{ch}x/telemetry")


@pytest.mark.parametrize(
    ("value", "text"),
    [(1.5, "1.5"), (1e-7, "1e-07"), (3, "3i"), (True, "true"), ('a"b\\c', '"a\\"b\\\\c"'), (0.1 + 0.2, "0.30000000000000004")],
)
def test_field_values(value: float | int | bool | str, text: str) -> None:
    assert field_value(value) == text


def test_non_finite_and_newline_refused() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(LineProtocolError):
            field_value(bad)
    with pytest.raises(LineProtocolError):
        field_value("a\nb")


def test_reading_lines_group_by_measurement() -> None:
    lines = encode_reading("phuket", "dev-1", Reading(1_764_000_000_000, 7, {"pm25": 3, "temp_c": 30.5, "fw": "1.0"}))
    assert lines == [
        "air,city=phuket,device=dev-1 pm25=3.0,seq=7i 1764000000000",
        "weather,city=phuket,device=dev-1 temp_c=30.5,seq=7i 1764000000000",
        'device,city=phuket,device=dev-1 fw="1.0",seq=7i 1764000000000',
    ]


# --- property: any accepted payload reads back exactly as sent -----------------
@pytest.fixture(scope="module")
def influx_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influx]:
    root = Path(__file__).resolve().parents[2] / "var" / "test" / f"lp-{int(time.time() * 1000)}"
    server = InfluxDB(root)
    server.start()
    client = Influx(server.url)
    client.ensure_schema()
    yield client
    client.close()
    server.stop()


NUMERIC = [m for m in METRICS.values() if m.kind == "float"]


@st.composite
def readings(draw: st.DrawFn) -> dict[str, float | str]:
    chosen = draw(st.lists(st.sampled_from(NUMERIC), min_size=1, max_size=6, unique_by=lambda m: m.name))
    m: dict[str, float | str] = {}
    for metric in chosen:
        m[metric.name] = draw(st.floats(min_value=metric.lo, max_value=metric.hi, allow_nan=False, allow_infinity=False))
    if draw(st.booleans()):
        m["fw"] = draw(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._+-]{0,31}\Z"))
    return m


_ids = itertools.count()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=readings(), ts_off=st.floats(min_value=-86400 * 30, max_value=0, allow_nan=False), seq=st.integers(0, 2**53 - 1))
def test_accepted_payload_reads_back_exactly(influx_db: Influx, m: dict[str, float | str], ts_off: float, seq: int) -> None:
    now = time.time()
    device = f"prop-{next(_ids):06d}"
    raw = payload_of(now + ts_off, seq, m)
    parsed = parse_telemetry(raw, now, Window())
    assert not parsed.rejections, parsed.rejections
    reading = parsed.readings[0]
    influx_db.write(encode_reading("phuket", device, reading))
    back: dict[str, float | str] = {}
    for meas in {METRICS[k].measurement for k in m}:
        rows = influx_db.rows(f'SELECT * FROM "raw"."{meas}" WHERE device = $d', {"d": device})
        assert len(rows) == 1
        row = rows[0]
        assert row["time"] == reading.ts_ms == round((now + ts_off) * 1000)
        assert row["seq"] == seq
        back.update({k: v for k, v in row.items() if k in METRICS and v is not None})
    assert back == {k: (v if isinstance(v, str) else float(v)) for k, v in m.items()}
