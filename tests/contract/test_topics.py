"""Topic build/parse, table-driven."""

from __future__ import annotations

import pytest

from contract.topics import Topic, TopicError, is_device_id, parse_topic, topic

CITIES = {"phuket", "khon_kaen", "chiang_mai"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("nakhon/v1/phuket/pm-001/telemetry", Topic("phuket", "pm-001", "telemetry")),
        ("nakhon/v1/khon_kaen/abc/status", Topic("khon_kaen", "abc", "status")),
        ("nakhon/v1/chiang_mai/0a-b-c/config", Topic("chiang_mai", "0a-b-c", "config")),
    ],
)
def test_parse_good(name: str, expected: Topic) -> None:
    assert parse_topic(name, CITIES) == expected


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("nakhon/v2/phuket/pm-001/telemetry", "not a nakhon/v1 topic"),
        ("nakhon/v1/phuket/pm-001", "not a nakhon/v1 topic"),
        ("nakhon/v1/phuket/pm-001/telemetry/x", "not a nakhon/v1 topic"),
        ("nakhon/v1/bangkok/pm-001/telemetry", "unknown city"),
        ("nakhon/v1/Phuket/pm-001/telemetry", "bad city"),
        ("nakhon/v1/phuket/PM-001/telemetry", "bad device id"),
        ("nakhon/v1/phuket/ab/telemetry", "bad device id"),
        ("nakhon/v1/phuket/-abc/telemetry", "bad device id"),
        ("nakhon/v1/phuket/a,b=c/telemetry", "bad device id"),
        ("nakhon/v1/phuket/abc def/telemetry", "bad device id"),
        ("nakhon/v1/phuket/abc\n/telemetry", "bad device id"),
        ('nakhon/v1/phuket/ab"c/telemetry', "bad device id"),
        ("nakhon/v1/phuket/ab\\c/telemetry", "bad device id"),
        ("nakhon/v1/phuket/" + "a" * 33 + "/telemetry", "bad device id"),
        ("nakhon/v1/phuket/ผู้/telemetry", "bad device id"),
        ("nakhon/v1/phuket/abc/telemetri", "bad channel"),
    ],
)
def test_parse_bad(name: str, fragment: str) -> None:
    with pytest.raises(TopicError, match=fragment):
        parse_topic(name, CITIES)


def test_build_round_trips() -> None:
    assert parse_topic(topic("phuket", "dev-01", "status")) == Topic("phuket", "dev-01", "status")
    with pytest.raises(TopicError):
        topic("phuket", "dev 01", "status")
    with pytest.raises(TopicError):
        topic("phuket", "dev-01", "secrets")


@pytest.mark.parametrize(("value", "ok"), [("abc", True), ("a" * 32, True), ("a" * 33, False), ("abc\n", False), ("ab", False)])
def test_device_id(value: str, ok: bool) -> None:
    assert is_device_id(value) is ok
