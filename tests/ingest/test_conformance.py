"""The ingest's MQTT 5 session against a scripted broker: what any conforming broker may send (issue 13, findings 3, 8, 10).

Unit tier: the session dials a socket pair instead of TCP; the test plays the
broker on the other end, packet by packet, as the MQTT 5.0 specification
allows a broker to (EMQX, HiveMQ, VerneMQ and Mosquitto alike). The live
broker tests are in test_session.py and tests/spine.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

import pytest

from ingest import mqttwire as wire
from ingest.session import Endpoint, Publishes, Session
from tests.helpers import wait_until

pytestmark = pytest.mark.unit

FILTER = "nakhon/v1/+/+/telemetry"


def connack(present: bool = False, reason: int = 0, props: bytes = b"") -> bytes:
    body = bytes((int(present), reason)) + wire.varint(len(props)) + props
    return b"\x20" + wire.varint(len(body)) + body


def publish(topic: str, payload: bytes, pid: int, qos: int = 1) -> bytes:
    body = len(topic.encode()).to_bytes(2, "big") + topic.encode() + (pid.to_bytes(2, "big") if qos else b"") + b"\x00" + payload
    return bytes((0x30 | qos << 1,)) + wire.varint(len(body)) + body


def suback(pid: int, codes: list[int]) -> bytes:
    body = pid.to_bytes(2, "big") + b"\x00" + bytes(codes)
    return b"\x90" + wire.varint(len(body)) + body


class Peer:
    """The broker's end of one connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        sock.settimeout(10)

    def packet(self) -> tuple[int, bytes]:
        while (got := wire.head(self.buf)) is None:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the session closed the connection")
            self.buf += data
        first, body, used = got
        self.buf = self.buf[used:]
        return first, body

    def expect(self, kind: int) -> bytes:
        while True:
            first, body = self.packet()
            if first >> 4 == kind:
                return body
            if first >> 4 not in (wire.PINGREQ_TYPE, wire.UNSUBSCRIBE, wire.SUBSCRIBE):
                raise AssertionError(f"expected packet type {kind}, got {first >> 4}")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def closed(self, timeout: float = 10) -> bool:
        """True once the session has closed its end (reads what it sent before)."""
        self.sock.settimeout(timeout)
        try:
            while data := self.sock.recv(65536):
                self.buf += data
        except OSError:
            return False
        return True


class Rig:
    """A session whose every dial hands the test a new Peer (via `script`, run in its own thread)."""

    def __init__(self, script: Callable[[Peer, int], None], keepalive: int = 60, max_packet: int | None = None) -> None:
        self.dials = 0
        self.got: list[tuple[str, bytes, int]] = []
        self.errors: list[BaseException] = []
        self.script = script
        endpoint = Endpoint("broker.test", 1883, "nakhon_ingest_0", keepalive, 3600, 100, maximum_packet_size=max_packet)
        self.session = Session(endpoint, lambda s, present: s.subscribe([(FILTER, 1)]), self.on_publishes, dial=self.dial)

    def on_publishes(self, pubs: Publishes, generation: int) -> None:
        self.got += pubs

    def dial(self, endpoint: Endpoint) -> socket.socket:
        ours, theirs = socket.socketpair()
        n = self.dials
        self.dials += 1

        def run() -> None:
            try:
                self.script(Peer(theirs), n)
            except (EOFError, OSError):
                pass
            except BaseException as exc:  # an assertion in the script fails the test
                self.errors.append(exc)

        threading.Thread(target=run, daemon=True).start()
        return ours

    def __enter__(self) -> Rig:
        self.session.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.stop(2)
        assert not self.errors, self.errors


def accept(peer: Peer, present: bool = False, props: bytes = b"", grant: list[int] | None = None) -> bytes:
    """CONNECT in, CONNACK out, SUBSCRIBE answered; returns the CONNECT body."""
    body = peer.expect(wire.CONNECT)
    peer.send(connack(present, 0, props))
    sub = peer.expect(wire.SUBSCRIBE)
    peer.send(suback(int.from_bytes(sub[:2], "big"), grant or [1]))
    return body


def test_a_connection_the_broker_ends_at_once_is_retried_with_backoff() -> None:
    def script(peer: Peer, n: int) -> None:
        peer.expect(wire.CONNECT)
        peer.send(connack() + wire.disconnect(0x8E))  # another ingest with our client id took the session

    with Rig(script) as rig:
        time.sleep(3.0)  # the thing measured is a rate: connections in a span of time
        dials = rig.dials
    assert 2 <= dials <= 6, dials  # was: one reconnect after another, 20,187 in 10 s


def test_qos2_and_reserved_qos3_are_protocol_errors_never_acked() -> None:
    seen: dict[int, bytes] = {}

    def script(peer: Peer, n: int) -> None:
        accept(peer)
        peer.send(publish(FILTER.replace("+", "x"), b"{}", 7, qos=2 if n == 0 else 3))
        first, body = peer.packet()
        seen[n] = bytes((first,)) + body
        peer.closed()

    with Rig(script) as rig:
        wait_until(lambda: len(seen) == 2, 10, what="both connections answered")
    assert seen[0] == b"\xe0" + bytes((wire.PROTOCOL_ERROR,))  # DISCONNECT 0x82, not a PUBACK
    assert seen[1] == b"\xe0" + bytes((wire.MALFORMED_PACKET,))
    assert rig.got == []


def test_server_keep_alive_replaces_ours() -> None:
    pinged = threading.Event()

    def script(peer: Peer, n: int) -> None:
        accept(peer, props=b"\x13\x00\x01")  # Server Keep Alive 1 s (ours is 60)
        first, _ = peer.packet()
        if first >> 4 == wire.PINGREQ_TYPE:
            pinged.set()
            peer.send(b"\xd0\x00")
        peer.closed()

    with Rig(script, keepalive=60) as rig:
        assert pinged.wait(10)
        assert rig.session.keepalive == 1


def test_our_maximum_packet_size_is_sent_and_enforced() -> None:
    connects: list[bytes] = []
    answers: list[bytes] = []

    def script(peer: Peer, n: int) -> None:
        connects.append(accept(peer))
        if n == 0:
            peer.send(publish("nakhon/v1/phuket/pk-air-001/telemetry", b"x" * 5000, 1))
            first, body = peer.packet()
            answers.append(bytes((first,)) + body)
        peer.closed()

    with Rig(script, max_packet=4096) as rig:
        wait_until(lambda: answers, 10, what="the answer to an oversized packet")
    assert b"\x27" + (4096).to_bytes(4, "big") in connects[0]
    assert answers[0] == b"\xe0" + bytes((wire.PACKET_TOO_LARGE,))
    assert rig.got == []


def test_the_brokers_maximum_packet_size_bounds_what_we_send() -> None:
    subs: list[bytes] = []
    waited = threading.Event()

    def script(peer: Peer, n: int) -> None:
        peer.expect(wire.CONNECT)
        peer.send(connack(props=b"\x27\x00\x00\x00\x10"))  # 16 bytes: our SUBSCRIBE does not fit
        peer.sock.settimeout(1.5)
        with contextlib.suppress(TimeoutError):
            subs.append(bytes(peer.packet()[1]))
        waited.set()
        peer.closed()

    with Rig(script) as rig:
        assert waited.wait(10)
        assert subs == []
        assert not rig.session.subscribed


def test_a_refused_required_subscription_drops_the_connection_and_is_not_ready() -> None:
    def script(peer: Peer, n: int) -> None:
        accept(peer, grant=[0x87])  # not authorized
        peer.closed()

    with Rig(script) as rig:
        wait_until(lambda: rig.dials >= 2, 10, what="a reconnect after the refusal")
        assert not rig.session.subscribed


def test_a_granted_subscription_makes_the_session_ready() -> None:
    def script(peer: Peer, n: int) -> None:
        accept(peer, grant=[1])
        peer.closed()

    with Rig(script) as rig:
        wait_until(lambda: rig.session.subscribed, 10, what="subscribed")
        assert rig.dials == 1


def test_a_lost_session_on_reconnect_is_counted() -> None:
    def script(peer: Peer, n: int) -> None:
        accept(peer, present=False)
        if n == 0:
            peer.sock.close()  # the broker restarts and forgot us
            return
        peer.closed()

    with Rig(script) as rig:
        wait_until(lambda: rig.session.sessions_lost == 1, 10, what="the lost session noticed")


CONNACK_TABLE = [
    ("no properties", b"", {}),
    ("server keep alive", b"\x13\x00\x05", {"server_keep_alive": 5}),
    ("receive maximum", b"\x21\x00\x0a", {"receive_maximum": 10}),
    ("maximum packet size", b"\x27\x00\x01\x00\x00", {"maximum_packet_size": 65536}),
    ("maximum qos 0", b"\x24\x00", {"maximum_qos": 0}),
    ("topic alias maximum", b"\x22\x00\x08", {"topic_alias_maximum": 8}),
    ("assigned client id", b"\x12\x00\x03abc", {"assigned_client_id": "abc"}),
    ("no shared subscriptions", b"\x2a\x00", {"shared_subscription_available": False}),
    ("user property skipped", b"\x26\x00\x01k\x00\x01v", {}),
    ("reason string", b"\x1f\x00\x02ok", {"reason_string": "ok"}),
]


@pytest.mark.parametrize(("case", "props", "fields"), CONNACK_TABLE, ids=[c[0] for c in CONNACK_TABLE])
def test_connack_properties(case: str, props: bytes, fields: dict[str, object]) -> None:
    got = wire.parse_connack(bytes((1, 0)) + wire.varint(len(props)) + props)
    assert got.session_present
    for name, value in fields.items():
        assert getattr(got, name) == value


@pytest.mark.parametrize(
    ("case", "props"),
    [("receive maximum 0", b"\x21\x00\x00"), ("maximum qos 2", b"\x24\x02"), ("twice", b"\x13\x00\x01\x13\x00\x02"),
     ("not a connack property", b"\x23\x00\x01"), ("runs past", b"\x27\x00\x01")],
)
def test_connack_properties_a_broker_may_not_send(case: str, props: bytes) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.parse_connack(bytes((0, 0)) + wire.varint(len(props)) + props)
