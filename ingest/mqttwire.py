"""The MQTT 5 packets the ingest speaks, as pure functions: values in, bytes out, and back.

Only what a durable subscriber needs: CONNECT/CONNACK, SUBSCRIBE/SUBACK,
UNSUBSCRIBE/UNSUBACK, PUBLISH in, PUBACK out, PINGREQ/PINGRESP, DISCONNECT.
`split` cuts a receive buffer into whole packets in one pass; it is the hot
loop of the ingest, so it works on `bytes` with plain indexing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

CONNECT: Final = 1
CONNACK: Final = 2
PUBLISH: Final = 3
PUBACK: Final = 4
SUBSCRIBE: Final = 8
SUBACK: Final = 9
UNSUBSCRIBE: Final = 10
UNSUBACK: Final = 11
PINGREQ_TYPE: Final = 12
PINGRESP: Final = 13
DISCONNECT_TYPE: Final = 14

PINGREQ: Final = b"\xc0\x00"
DISCONNECT: Final = b"\xe0\x00"  # normal disconnection, reason code omitted

# property identifiers (MQTT 5.0, 2.2.2.2)
_SESSION_EXPIRY: Final = 0x11
_RECEIVE_MAXIMUM: Final = 0x21
_MAXIMUM_PACKET_SIZE: Final = 0x27

MAX_REMAINING: Final = 268_435_455  # the largest a four-byte varint holds


class ProtocolError(ValueError):
    """The broker sent something that is not MQTT 5: drop the connection."""


@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool
    reason: int  # 0 success; >= 0x80 refused


def varint(n: int) -> bytes:
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError(f"varint out of range: {n}")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _utf8(s: str) -> bytes:
    b = s.encode()
    if len(b) > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    return len(b).to_bytes(2, "big") + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def connect(
    client_id: str,
    keepalive: int,
    *,
    clean_start: bool,
    session_expiry: int = 0,
    receive_maximum: int = 65535,
    maximum_packet_size: int | None = None,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    flags = (0x80 if username is not None else 0) | (0x40 if password is not None else 0) | (0x02 if clean_start else 0)
    props = bytes((_SESSION_EXPIRY,)) + session_expiry.to_bytes(4, "big")
    props += bytes((_RECEIVE_MAXIMUM,)) + receive_maximum.to_bytes(2, "big")
    if maximum_packet_size:
        props += bytes((_MAXIMUM_PACKET_SIZE,)) + maximum_packet_size.to_bytes(4, "big")
    body = _utf8("MQTT") + bytes((5, flags)) + keepalive.to_bytes(2, "big") + varint(len(props)) + props + _utf8(client_id)
    if username is not None:
        body += _utf8(username)
    if password is not None:
        body += _utf8(password)
    return _packet(CONNECT << 4, body)


# Subscription options (MQTT 5, 3.8.3.1) beside the QoS in the low bits: retained messages
# only when the subscription is new, not again at every re-subscribe of a resumed session.
RETAIN_IF_NEW: Final = 1 << 4


def subscribe(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    """`filters`: (topic filter, QoS | subscription option bits)."""
    body = packet_id.to_bytes(2, "big") + b"\x00"  # no properties
    for name, options in filters:
        body += _utf8(name) + bytes((options & 0x3F,))
    return _packet(SUBSCRIBE << 4 | 2, body)


def unsubscribe(packet_id: int, filters: list[str]) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"\x00" + b"".join(_utf8(f) for f in filters)
    return _packet(UNSUBSCRIBE << 4 | 2, body)


def pubacks(packet_ids: list[int]) -> bytes:
    """PUBACKs for many messages in one buffer (reason omitted = success, MQTT 5 3.4.2.1)."""
    return b"".join(b"\x40\x02" + pid.to_bytes(2, "big") for pid in packet_ids)


def parse_connack(body: bytes) -> Connack:
    if len(body) < 2:
        raise ProtocolError("short CONNACK")
    return Connack(session_present=bool(body[0] & 1), reason=body[1])


def parse_suback(body: bytes) -> tuple[int, list[int]]:
    """(packet id, reason code per filter); codes >= 0x80 are refusals."""
    if len(body) < 3:
        raise ProtocolError("short SUBACK")
    pid = int.from_bytes(body[:2], "big")
    plen, i = _read_varint(body, 2)
    return pid, list(body[i + plen :])


def _varint(buf: bytes, i: int) -> tuple[int, int] | None:
    """(value, index after it) of the variable byte integer at `i`, or None if it runs past `buf`."""
    value = shift = 0
    while True:
        if i >= len(buf):
            return None
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
        if shift > 21:
            raise ProtocolError("variable byte integer longer than four bytes")


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    """A variable byte integer inside a whole packet: running past it is a broken packet."""
    got = _varint(buf, i)
    if got is None:
        raise ProtocolError("truncated varint")
    return got


def _remaining(buf: bytes, pos: int) -> tuple[int, int] | None:
    """(remaining length, index after it) of the packet at `pos`, or None if not all here yet."""
    return _varint(buf, pos + 1)


def head(buf: bytes) -> tuple[int, bytes, int] | None:
    """The first whole packet of `buf` as (first byte, body, bytes used), or None if incomplete."""
    got = _remaining(buf, 0)
    if got is None or got[0] + got[1] > len(buf):
        return None
    length, i = got
    return buf[0], buf[i : i + length], i + length


def split(buf: bytes, publishes: list[tuple[str, bytes, int]], others: list[tuple[int, bytes]]) -> int:
    """Cut whole packets off the front of `buf`; returns the bytes consumed.

    PUBLISH packets go to `publishes` as (topic, payload, packet id; 0 at
    QoS 0), every other packet to `others` as (first byte, body). A packet
    not yet complete stays in the buffer for the next call.
    """
    pos = 0
    n = len(buf)
    while n - pos >= 2:
        first = buf[pos]
        got = _remaining(buf, pos)
        if got is None:
            return pos
        length, i = got
        end = i + length
        if end > n:
            return pos
        if first >> 4 == PUBLISH:
            try:
                tlen = buf[i] << 8 | buf[i + 1]
                j = i + 2 + tlen
                topic = buf[i + 2 : j].decode()
                pid = 0
                if first & 0x06:
                    pid = buf[j] << 8 | buf[j + 1]
                    j += 2
                plen = buf[j]  # property length: almost always one byte (0)
                if plen < 0x80:
                    j += 1 + plen
                else:
                    plen, j = _read_varint(buf, j)
                    j += plen
            except IndexError:
                j = end + 1  # reported below
            except UnicodeDecodeError as exc:  # the broker validates topics: this is a broken stream
                raise ProtocolError("topic is not UTF-8") from exc
            if j > end:
                raise ProtocolError("PUBLISH header runs past its packet")
            publishes.append((topic, buf[j:end], pid))
        else:
            others.append((first, buf[i:end]))
        pos = end
    return pos
