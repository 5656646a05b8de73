"""The ingest's MQTT 5 codec, table-driven (the live broker tests are in tests/spine)."""

from __future__ import annotations

import pytest

from ingest import mqttwire as wire


def publish(topic: str, payload: bytes, pid: int = 0, qos: int = 1, props: bytes = b"\x00", dup: bool = False) -> bytes:
    body = len(topic.encode()).to_bytes(2, "big") + topic.encode() + (pid.to_bytes(2, "big") if qos else b"") + props + payload
    return bytes((0x30 | qos << 1 | (0x08 if dup else 0),)) + wire.varint(len(body)) + body


@pytest.mark.parametrize(
    ("n", "encoded"),
    [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"), (16384, b"\x80\x80\x01"), (268_435_455, b"\xff\xff\xff\x7f")],
)
def test_varint_matches_the_spec_table(n: int, encoded: bytes) -> None:
    assert wire.varint(n) == encoded


def test_varint_refuses_what_four_bytes_cannot_hold() -> None:
    with pytest.raises(ValueError):
        wire.varint(268_435_456)


SPLIT_CASES = [
    ("one qos1", publish("a/b", b"{}", 7), [("a/b", b"{}", 7)], []),
    ("qos0 has no packet id", publish("$SYS/x", b"12", qos=0), [("$SYS/x", b"12", 0)], []),
    ("redelivery keeps its id", publish("a", b"x", 65535, dup=True), [("a", b"x", 65535)], []),
    ("properties are skipped", publish("a", b"p", 3, props=b"\x05\x02\x00\x00\x00\x3c"), [("a", b"p", 3)], []),
    ("empty payload", publish("a", b"", 1), [("a", b"", 1)], []),
    ("large payload, 3-byte length", publish("t", b"z" * 300_000, 9), [("t", b"z" * 300_000, 9)], []),
    ("unicode topic", publish("nakhon/v1/เชียงใหม่/x/telemetry", b"1", 2), [("nakhon/v1/เชียงใหม่/x/telemetry", b"1", 2)], []),
    ("control packets", b"\xd0\x00" + b"\x90\x04\x00\x01\x00\x01", [], [(0xD0, b""), (0x90, b"\x00\x01\x00\x01")]),
]


@pytest.mark.parametrize(("case", "data", "pubs", "others"), SPLIT_CASES, ids=[c[0] for c in SPLIT_CASES])
def test_split_cuts_whole_packets(case: str, data: bytes, pubs: list[tuple[str, bytes, int]], others: list[tuple[int, bytes]]) -> None:
    got_pubs: list[tuple[str, bytes, int]] = []
    got_others: list[tuple[int, bytes]] = []
    assert wire.split(data, got_pubs, got_others) == len(data)
    assert got_pubs == pubs
    assert got_others == others


def test_split_leaves_an_incomplete_packet_for_the_next_read_at_every_cut() -> None:
    stream = publish("a/b", b"one", 1) + publish("c", b"two" * 100, 2) + b"\xd0\x00"
    for cut in range(len(stream) + 1):
        pubs: list[tuple[str, bytes, int]] = []
        others: list[tuple[int, bytes]] = []
        used = wire.split(stream[:cut], pubs, others)
        rest = stream[used:]
        used2 = wire.split(rest, pubs, others)
        assert used + used2 == len(stream), cut
        assert [p[1] for p in pubs] == [b"one", b"two" * 100]
        assert others == [(0xD0, b"")]


def test_split_refuses_a_five_byte_length_and_a_header_past_its_packet() -> None:
    with pytest.raises(wire.ProtocolError):
        wire.split(b"\x30\xff\xff\xff\xff\x01", [], [])
    with pytest.raises(wire.ProtocolError):  # topic length 10 in a 4-byte packet
        wire.split(b"\x32\x04\x00\x0a\x61\x62", [], [])


def test_head_returns_connack_and_what_follows_it() -> None:
    data = b"\x20\x03\x01\x00\x00" + publish("a", b"x", 1)
    first, body, used = wire.head(data)  # type: ignore[misc]
    assert (first, wire.parse_connack(body), data[used:]) == (0x20, wire.Connack(True, 0), publish("a", b"x", 1))
    assert wire.head(data[:3]) is None


def test_connect_for_a_persistent_session_with_credentials() -> None:
    """MQTT 5.0 section 3.1, byte by byte."""
    expected = (
        b"\x10\x23"  # CONNECT, remaining length 35
        b"\x00\x04MQTT\x05"  # protocol name and level
        b"\xc0"  # user name and password flags; clean start off: resume the session
        b"\x00\x1e"  # keepalive 30 s
        b"\x08\x11\x00\x09\x3a\x80\x21\x4e\x20"  # session expiry 604800 s, receive maximum 20000
        b"\x00\x08ingest-0\x00\x01u\x00\x01p"
    )
    assert wire.connect("ingest-0", 30, clean_start=False, session_expiry=604800, receive_maximum=20000, username="u", password="p") == expected


def test_subscribe_unsubscribe_and_pubacks() -> None:
    assert wire.subscribe(1, [("a/+", 1)]) == b"\x82\x09\x00\x01\x00\x00\x03a/+\x01"
    assert wire.subscribe(1, [("a/+", 1 | wire.RETAIN_IF_NEW)])[-1] == 0x11  # QoS 1, retain handling 1
    assert wire.unsubscribe(2, ["a"]) == b"\xa2\x06\x00\x02\x00\x00\x01a"
    assert wire.pubacks([1, 258]) == b"\x40\x02\x00\x01\x40\x02\x01\x02"
    assert wire.parse_suback(b"\x00\x01\x00\x01\x87") == (1, [1, 0x87])


def test_a_publish_with_its_topic_made_once_is_the_same_packet() -> None:
    name = "nakhon/v1/chiang_mai/cm-air-001/stored"
    for size in (0, 1, 84, 85, 200, 16_340, 16_341, 20_000, 3_000_000):  # the length in 1, 2 and 3+ bytes, at the edges
        payload = bytes(size)
        for pid in (1, 255, 256, 65535):
            assert wire.publish_named(wire.topic_name(name), payload, pid) == wire.publish(name, payload, pid)
