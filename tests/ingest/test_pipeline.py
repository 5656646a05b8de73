"""The ingest's pure core: an MQTT message in, line-protocol lines or a dead letter out."""

from __future__ import annotations

import json

import pytest

from contract.cities import load_cities
from contract.payload import Reason, Window
from ingest.pipeline import Pipeline

pytestmark = pytest.mark.unit

NOW = 1_764_000_000.0
TOPIC = "nakhon/v1/phuket/pk-001/telemetry"
STATUS = "nakhon/v1/phuket/pk-001/status"


def _pipeline() -> Pipeline:
    return Pipeline(load_cities(None), Window(), 65536)


def _reading(**m: float) -> bytes:
    return json.dumps({"v": 1, "ts": NOW - 10, "seq": 1, "m": m}).encode()


CASES = [
    # (what, topic, payload, lines, accepted, reasons)
    ("one reading", TOPIC, _reading(pm25=35.2, temp_c=31.0), 2, 1, []),
    ("a batch of two", TOPIC, json.dumps({"v": 1, "batch": [{"ts": NOW - 20, "seq": 1, "m": {"pm25": 1.0}},
                                                            {"ts": NOW - 10, "seq": 2, "m": {"pm25": 2.0}}]}).encode(), 2, 2, []),
    ("an unknown city", "nakhon/v1/atlantis/pk-001/telemetry", _reading(pm25=1.0), 0, 0, [Reason.BAD_ID]),
    ("a forged id", "nakhon/v1/phuket/pk,city=x/telemetry", _reading(pm25=1.0), 0, 0, [Reason.BAD_ID]),
    ("not JSON", TOPIC, b"{nope", 0, 0, [Reason.BAD_JSON]),
    ("out of range", TOPIC, _reading(pm25=-5.0), 0, 0, [Reason.OUT_OF_RANGE]),
    ("a status on the telemetry path", "nakhon/v1/phuket/pk-001/config", _reading(pm25=1.0), 0, 0, [Reason.BAD_TOPIC]),
    ("an online status", STATUS, b'{"v": 1, "state": "online", "fw": "1.2.0"}', 1, 1, []),
    ("a bad status", STATUS, b'{"v": 1, "state": "sleepy"}', 0, 0, [Reason.BAD_STATUS]),
    ("a cleared retained status", STATUS, b"", 0, 0, []),
]


@pytest.mark.parametrize(("what", "topic", "payload", "lines", "accepted", "reasons"), CASES, ids=[c[0] for c in CASES])
def test_message(what: str, topic: str, payload: bytes, lines: int, accepted: int, reasons: list[str]) -> None:
    out = _pipeline().message(topic, payload, NOW)
    assert len(out.lines) == lines, out.lines
    assert out.accepted == accepted
    assert [r.reason for r in out.rejections][: len(reasons)] == reasons
    if reasons:
        assert out.dead is not None and out.dead["topic"] == topic, "a rejection is kept as a dead letter with its topic"
    else:
        assert out.dead is None


def test_status_documents_in_one_millisecond_keep_a_point_each() -> None:
    """Online, then the Last Will, within the same millisecond: two points, in order (not one overwriting the other)."""
    p = _pipeline()
    stamps = [int(p.message(STATUS, doc, NOW).lines[0].rsplit(" ", 1)[1])
              for doc in (b'{"v": 1, "state": "online"}', b'{"v": 1, "state": "offline"}', b'{"v": 1, "state": "online"}')]
    assert stamps == sorted(set(stamps)) and len(stamps) == 3, stamps
    assert stamps[0] == int(NOW * 1000)
    other = p.message("nakhon/v1/phuket/pk-002/status", b'{"v": 1, "state": "online"}', NOW)
    assert int(other.lines[0].rsplit(" ", 1)[1]) == int(NOW * 1000), "another device keeps its own arrival time"
