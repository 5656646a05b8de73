"""The MQTT 5 packets the ingest speaks, as pure functions: values in, bytes out, and back.

Only what a durable subscriber needs: CONNECT/CONNACK, SUBSCRIBE/SUBACK,
UNSUBSCRIBE/UNSUBACK, PUBLISH in, PUBACK out, PINGREQ/PINGRESP, DISCONNECT;
and, for the `stored` confirmations, PUBLISH out at QoS 1 and PUBACK in.
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


# DISCONNECT reason codes we send (MQTT 5.0, 3.14.2.1)
MALFORMED_PACKET: Final = 0x81
PROTOCOL_ERROR: Final = 0x82
PACKET_TOO_LARGE: Final = 0x95
QOS_NOT_SUPPORTED: Final = 0x9B


class ProtocolError(ValueError):
    """The broker sent something that is not MQTT 5 as we negotiated it: DISCONNECT with `reason`, drop the connection."""

    def __init__(self, message: str, reason: int = PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool
    reason: int  # 0 success; >= 0x80 refused
    # what the broker tells us (MQTT 5.0, 3.2.2.3); None = the property was absent (its default applies)
    server_keep_alive: int | None = None  # we must use this keep alive instead of ours
    receive_maximum: int = 65535  # QoS 1/2 PUBLISHes we may have in flight to it (our `stored` confirmations)
    maximum_packet_size: int | None = None  # the largest packet it accepts from us
    maximum_qos: int = 2
    topic_alias_maximum: int = 0
    assigned_client_id: str | None = None
    session_expiry: int | None = None
    shared_subscription_available: bool = True
    wildcard_subscription_available: bool = True
    retain_available: bool = True
    reason_string: str | None = None


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
RETAIN_NEVER: Final = 2 << 4  # no retained messages at all (the catch session: the shared group gets them)


def subscribe(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    """`filters`: (topic filter, QoS | subscription option bits)."""
    body = packet_id.to_bytes(2, "big") + b"\x00"  # no properties
    for name, options in filters:
        body += _utf8(name) + bytes((options & 0x3F,))
    return _packet(SUBSCRIBE << 4 | 2, body)


def unsubscribe(packet_id: int, filters: list[str]) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"\x00" + b"".join(_utf8(f) for f in filters)
    return _packet(UNSUBSCRIBE << 4 | 2, body)


def publish(topic: str, payload: bytes, packet_id: int, dup: bool = False) -> bytes:
    """A QoS 1 PUBLISH, not retained, no properties (DUP set when sent again on a resumed session)."""
    body = _utf8(topic) + packet_id.to_bytes(2, "big") + b"\x00" + payload
    return _packet(PUBLISH << 4 | (0x08 if dup else 0) | 0x02, body)


def topic_name(topic: str) -> bytes:
    """A topic as a PUBLISH carries it (length, UTF-8): made once for a topic published again and again."""
    return _utf8(topic)


def publish_named(name: bytes, payload: bytes, packet_id: int) -> bytes:
    """`publish(topic, payload, packet_id)` with the topic already made by `topic_name` (the confirmations' path)."""
    n = len(name) + 3 + len(payload)
    head = bytes((0x32, n)) if n < 0x80 else bytes((0x32, n & 0x7F | 0x80, n >> 7)) if n < 0x4000 else b"\x32" + varint(n)
    return head + name + packet_id.to_bytes(2, "big") + b"\x00" + payload


def as_dup(packet: bytes) -> bytes:
    """The same PUBLISH with its DUP flag set (MQTT 5, 3.3.1.1)."""
    return bytes((packet[0] | 0x08,)) + packet[1:]


def parse_puback(body: bytes) -> tuple[int, int]:
    """(packet id, reason code) of a PUBACK; the reason is 0 (success) when omitted, >= 0x80 a refusal."""
    if len(body) < 2:
        raise ProtocolError("short PUBACK", MALFORMED_PACKET)
    return int.from_bytes(body[:2], "big"), body[2] if len(body) > 2 else 0


def pubacks(packet_ids: list[int]) -> bytes:
    """PUBACKs for many messages in one buffer (reason omitted = success, MQTT 5 3.4.2.1)."""
    return b"".join(b"\x40\x02" + pid.to_bytes(2, "big") for pid in packet_ids)


# property id -> (Connack field, kind); kinds: b byte, 2 two-byte int, 4 four-byte int, s UTF-8 string
_CONNACK_PROPS: Final = {
    0x11: ("session_expiry", "4"),
    0x12: ("assigned_client_id", "s"),
    0x13: ("server_keep_alive", "2"),
    0x1F: ("reason_string", "s"),
    0x21: ("receive_maximum", "2"),
    0x22: ("topic_alias_maximum", "2"),
    0x24: ("maximum_qos", "b"),
    0x25: ("retain_available", "b"),
    0x27: ("maximum_packet_size", "4"),
    0x28: ("wildcard_subscription_available", "b"),
    0x2A: ("shared_subscription_available", "b"),
}
_IGNORED_PROPS: Final = {0x15: "s", 0x16: "bin", 0x1A: "s", 0x1C: "s", 0x26: "pair", 0x29: "b"}


def parse_connack(body: bytes) -> Connack:
    """CONNACK with its properties; a property it must not carry, or a malformed one, is a protocol error."""
    if len(body) < 2:
        raise ProtocolError("short CONNACK", MALFORMED_PACKET)
    if len(body) == 2:  # no property length: an MQTT 3.1.1-style answer
        return Connack(session_present=bool(body[0] & 1), reason=body[1])
    plen, i = _read_varint(body, 2)
    end = i + plen
    if end > len(body):
        raise ProtocolError("CONNACK properties run past the packet", MALFORMED_PACKET)
    found: dict[str, object] = {}
    while i < end:
        pid = body[i]
        i += 1
        spec = _CONNACK_PROPS.get(pid)
        kind = spec[1] if spec else _IGNORED_PROPS.get(pid)
        if kind is None:
            raise ProtocolError(f"CONNACK carries property {pid:#x}, which it may not", PROTOCOL_ERROR)
        value: object
        if kind == "b":
            value, i = body[i], i + 1
        elif kind == "2":
            value, i = int.from_bytes(body[i : i + 2], "big"), i + 2
        elif kind == "4":
            value, i = int.from_bytes(body[i : i + 4], "big"), i + 4
        elif kind in ("s", "bin"):
            n = int.from_bytes(body[i : i + 2], "big")
            value, i = body[i + 2 : i + 2 + n], i + 2 + n
        else:  # a user property: two strings
            for _ in range(2):
                i += 2 + int.from_bytes(body[i : i + 2], "big")
            continue
        if i > end:
            raise ProtocolError("CONNACK property runs past its properties", MALFORMED_PACKET)
        if spec:
            name = spec[0]
            if name in found:
                raise ProtocolError(f"CONNACK carries property {pid:#x} twice", PROTOCOL_ERROR)
            if kind == "s":
                try:
                    value = bytes(value).decode()
                except UnicodeDecodeError as exc:
                    raise ProtocolError("CONNACK string is not UTF-8", MALFORMED_PACKET) from exc
            found[name] = value
    if found.get("receive_maximum") == 0 or found.get("maximum_packet_size") == 0 or found.get("maximum_qos", 0) not in (0, 1):
        raise ProtocolError("CONNACK property out of range", PROTOCOL_ERROR)
    for flag in ("retain_available", "wildcard_subscription_available", "shared_subscription_available"):
        if flag in found:
            if found[flag] not in (0, 1):
                raise ProtocolError(f"CONNACK {flag} is not 0 or 1", PROTOCOL_ERROR)
            found[flag] = bool(found[flag])
    return Connack(session_present=bool(body[0] & 1), reason=body[1], **found)  # type: ignore[arg-type]


def disconnect(reason: int) -> bytes:
    """DISCONNECT with a reason code (no properties)."""
    return _packet(DISCONNECT_TYPE << 4, bytes((reason,)))


def parse_disconnect(body: bytes) -> int:
    """The reason code of a DISCONNECT (absent = 0, normal disconnection)."""
    return body[0] if body else 0


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


def split(buf: bytes, publishes: list[tuple[str, bytes, int]], others: list[tuple[int, bytes]], limit: int = MAX_REMAINING) -> int:
    """Cut whole packets off the front of `buf`; returns the bytes consumed.

    PUBLISH packets go to `publishes` as (topic, payload, packet id; 0 at
    QoS 0), every other packet to `others` as (first byte, body). A packet
    not yet complete stays in the buffer for the next call. A packet whose
    remaining length exceeds `limit` (our Maximum Packet Size) is a protocol error.
    """
    pos = 0
    n = len(buf)
    while n - pos >= 2:
        first = buf[pos]
        got = _remaining(buf, pos)
        if got is None:
            return pos
        length, i = got
        if length > limit:
            raise ProtocolError(f"packet of {length} bytes, above our Maximum Packet Size", PACKET_TOO_LARGE)
        end = i + length
        if end > n:
            return pos
        if first >> 4 == PUBLISH:
            if first & 0x06 == 0x06:
                raise ProtocolError("PUBLISH with QoS 3 (reserved)", MALFORMED_PACKET)
            if first & 0x04:  # we subscribe at QoS 1 at most: the broker may not send QoS 2 (MQTT 5, 3.8.4)
                raise ProtocolError("PUBLISH with QoS 2, above the QoS we subscribed with", PROTOCOL_ERROR)
            try:
                tlen = buf[i] << 8 | buf[i + 1]
                if not tlen:  # a topic alias: we allow none (Topic Alias Maximum 0)
                    raise ProtocolError("PUBLISH without a topic name (topic alias not allowed)", PROTOCOL_ERROR)
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
                raise ProtocolError("topic is not UTF-8", MALFORMED_PACKET) from exc
            if j > end:
                raise ProtocolError("PUBLISH header runs past its packet", MALFORMED_PACKET)
            publishes.append((topic, buf[j:end], pid))
        else:
            others.append((first, buf[i:end]))
        pos = end
    return pos
