"""The connectivity layer under the ingest: one MQTT 5 session to the broker, kept up.

One thread owns the socket. It connects (backing off while the broker is
away), reads in large chunks and hands every PUBLISH in a chunk to
`on_publishes` at once, answers keepalive, and sends what other threads
queued (PUBACKs). Nothing else touches the socket, so a TLS socket is never
used from two threads at once.

It also publishes at QoS 1 (the `stored` confirmations): at most
`PUBLISH_WINDOW` in flight, and never more than the broker's Receive
Maximum; what is not PUBACKed when a connection ends is sent again on the
next one (DUP set when the broker kept our session), as MQTT 5 asks (4.4).

Acks carry the connection's generation: an ack for a message received on an
earlier connection is not sent on the new one. The broker redelivers that
message instead; writing it again is harmless (same series and timestamp).

It honours what a conforming MQTT 5 broker may send, not only what a default
Mosquitto does: CONNACK properties (Server Keep Alive replaces ours, Maximum
Packet Size bounds what we send, Maximum QoS and Shared Subscription
Available are checked), our own Maximum Packet Size enforced on what comes
in, a refused subscription (a required one drops the connection and retries
with backoff; `subscribed` stays false meanwhile), a session the broker lost
(counted and logged as a warning), and a QoS 2 or reserved QoS 3 PUBLISH (a
protocol error: DISCONNECT with its reason code). Every reconnect, whether
connecting failed or the broker ended a connection, waits an exponential
backoff with jitter; only a connection that stayed up `STABLE_S` resets it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from contract.logs import kv
from ingest import mqttwire as wire

log = logging.getLogger("nakhon.ingest.session")

RECV_BYTES = 1 << 20
# CONNACK reason codes a person can act on (MQTT 5.0, 3.2.2.2)
_REFUSALS = {
    0x80: "unspecified error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x95: "packet too large",
    0x9F: "connection rate exceeded",
}

# DISCONNECT reasons from the broker worth naming (MQTT 5.0, 3.14.2.1)
_DISCONNECTS = {
    0x8B: "server shutting down",
    0x8D: "keep alive timeout",
    0x8E: "session taken over: another client connected with our client id",
    0x93: "receive maximum exceeded",
    0x95: "packet too large",
    0x9C: "use another server",
    0x9D: "server moved",
}
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 10.0  # a broker back after an outage waits at most this long for us (and for $share subscriptions)
PUBLISH_WINDOW = 4096  # our own QoS 1 publishes un-acked at most
STABLE_S = 30.0  # a connection that lasted this long was healthy: the next reconnect starts from the base delay

Publishes = list[tuple[str, bytes, int]]
Dial = Callable[["Endpoint"], socket.socket]


class Refused(ConnectionError):
    """The broker answered CONNACK with a refusal."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    client_id: str
    keepalive: int
    session_expiry: int
    receive_maximum: int
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None
    maximum_packet_size: int | None = None  # the largest packet we take (sent in CONNECT)


def dial_tcp(e: Endpoint) -> socket.socket:
    raw = socket.create_connection((e.host, e.port), timeout=10)
    return e.tls.wrap_socket(raw, server_hostname=e.host) if e.tls else raw


class Session:
    def __init__(
        self,
        endpoint: Endpoint,
        on_connect: Callable[[Session, bool], None],
        on_publishes: Callable[[Publishes, int], None],
        full: Callable[[], bool] = lambda: False,
        dial: Dial = dial_tcp,
        room: Callable[[], int] = lambda: RECV_BYTES,
    ) -> None:
        self.room = room  # bytes we may read now without passing the receiver's bound by more than a few messages
        self.endpoint = endpoint
        self.dial = dial
        self.on_connect = on_connect
        self.on_publishes = on_publishes
        # True while the receiver holds all it may: we stop reading and TCP holds the broker back.
        # Mosquitto 2.0 sends a resumed session's queue past our Receive Maximum once acks flow.
        self.full = full
        self.connected = threading.Event()
        self.subscribed = False  # every required subscription of this connection granted as asked
        self.reconnects = 0
        self.connections = 0  # CONNACKs accepted
        self.sessions_lost = 0  # reconnects on which the broker no longer had our session
        self.connack: wire.Connack | None = None
        self.keepalive = endpoint.keepalive  # what the broker decided (Server Keep Alive), else ours
        self._disconnected_at = time.monotonic()
        self._subs: dict[int, tuple[list[int], bool]] = {}  # SUBSCRIBE packet id -> (QoS asked per filter, required)
        self._generation = 0
        self._out: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._next_pid = 0
        self._inflight: dict[int, bytes] = {}  # our QoS 1 PUBLISHes not yet PUBACKed, by packet id
        self.published = 0  # our publishes the broker accepted (PUBACK below 0x80)
        self.publish_refused = 0  # ... and refused (an ACL that does not let us write there, say)
        self.on_puback: Callable[[], None] = lambda: None  # room again in the publish window
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)

    # --- what other threads call ---------------------------------------------
    @property
    def generation(self) -> int:
        return self._generation

    def start(self) -> None:
        self._thread.start()

    def ack(self, packet_ids: list[int], generation: int) -> bool:
        """Queue PUBACKs; False if the connection they came on is gone (they will be redelivered)."""
        if not packet_ids:
            return True
        data = wire.pubacks(packet_ids)
        with self._lock:
            if generation != self._generation or not self.connected.is_set():
                return False
            self._out.append(data)
        self._wake()
        return True

    def send(self, packet: bytes) -> None:
        limit = self.connack.maximum_packet_size if self.connack else None
        if limit is not None and len(packet) > limit:  # MQTT 5, 3.1.2.24: we may not send it
            log.error("packet larger than the broker's Maximum Packet Size, not sent", extra=kv(bytes=len(packet), limit=limit))
            return
        with self._lock:
            self._out.append(packet)
        self._wake()

    def publish_room(self) -> int:
        """QoS 1 publishes we may queue now: 0 while not connected."""
        with self._lock:
            return self._room_locked()

    def _room_locked(self) -> int:
        if not self.connected.is_set():
            return 0
        limit = min(PUBLISH_WINDOW, self.connack.receive_maximum if self.connack else PUBLISH_WINDOW)
        return max(0, limit - len(self._inflight))

    def publish(self, messages: list[tuple[bytes, bytes]]) -> int:
        """Queue QoS 1 PUBLISHes (not retained), as many as the window takes; returns how many, in order.
        Each topic as `mqttwire.topic_name` makes it (the caller keeps it for the next time)."""
        with self._lock:
            room = self._room_locked()
            taken = messages[:room]
            for name, payload in taken:
                pid = self._pid_locked()
                packet = wire.publish_named(name, payload, pid)
                self._inflight[pid] = packet
                self._out.append(packet)
        if taken:
            self._wake()
        return len(taken)

    @property
    def inflight(self) -> int:
        return len(self._inflight)
    def publish_if_subscribed(self, topic: str, payload: bytes) -> bool:
        """Publish at QoS 1 on this connection only if every required subscription of it is granted
        (so the broker handles it after them). Not resent if lost; False when not sent."""
        with self._lock:
            if not (self.subscribed and self.connected.is_set()):
                return False
            self._out.append(wire.publish(topic, payload, self._pid_locked()))
        self._wake()
        return True

    def subscribe(self, filters: list[tuple[str, int]], required: bool = True) -> None:
        """Subscribe; a refused required filter drops the connection (then retried with backoff)."""
        pid = self._pid()
        with self._lock:
            self._subs[pid] = ([q & 3 for _, q in filters], required)  # the QoS, without the subscription options
        self.send(wire.subscribe(pid, filters))

    def disconnected_for(self) -> float:
        """Seconds since the session was last connected; 0 while connected."""
        return 0.0 if self.connected.is_set() else time.monotonic() - self._disconnected_at

    def unsubscribe(self, filters: list[str]) -> None:
        self.send(wire.unsubscribe(self._pid(), filters))

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued, DISCONNECT, close."""
        self._stop.set()
        self._wake()
        self._thread.join(timeout)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _pid(self) -> int:
        with self._lock:
            return self._pid_locked()

    def _pid_locked(self) -> int:
        """The next packet id not held by one of our publishes in flight."""
        while True:
            self._next_pid = self._next_pid % 0xFFFF + 1
            if self._next_pid not in self._inflight:
                return self._next_pid

    def wake(self) -> None:
        """Make the session thread look again (room under the bound, something to send)."""
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    # --- the socket's owner --------------------------------------------------
    def _run(self) -> None:
        delay = BACKOFF_BASE_S
        while not self._stop.is_set():
            try:
                sock, connack, rest = self._open()
            except (OSError, wire.ProtocolError) as exc:
                wait = random.uniform(delay / 2, delay)  # jitter: a fleet of workers does not come back in step
                level = logging.ERROR if isinstance(exc, Refused) else logging.WARNING
                log.log(level, "cannot connect to broker, retrying", extra=kv(error=str(exc)[:200], retry_s=round(wait, 2)))
                self._stop.wait(wait)
                delay = min(delay * 2, BACKOFF_CAP_S)
                continue
            opened = time.monotonic()
            self._accepted(connack)
            try:
                self.on_connect(self, connack.session_present)
                self._serve(sock, rest)
            except wire.ProtocolError as exc:
                log.error("broker broke the protocol, disconnecting", extra=kv(error=str(exc)[:200], reason=hex(exc.reason)))
                with contextlib.suppress(OSError):
                    sock.sendall(wire.disconnect(exc.reason))
                self.reconnects += 1
            except OSError as exc:
                if not self._stop.is_set():
                    log.warning("connection to broker lost, reconnecting", extra=kv(error=str(exc)[:200]))
                    self.reconnects += 1
            finally:
                self.connected.clear()
                self.subscribed = False
                self._disconnected_at = time.monotonic()
                with contextlib.suppress(OSError):
                    sock.close()
            if self._stop.is_set():
                break
            # A connection the broker ends (a peer with our client id, a refused subscription, a
            # broker that drops us at once) must not turn into a reconnect loop: back off as for a failed connect.
            if time.monotonic() - opened >= STABLE_S:
                delay = BACKOFF_BASE_S  # a healthy connection ended: try again at once (a failed connect backs off)
                continue
            wait = random.uniform(delay / 2, delay)
            self._stop.wait(wait)
            delay = min(delay * 2, BACKOFF_CAP_S)

    def _accepted(self, connack: wire.Connack) -> None:
        """A new connection: note what the broker decided and tell whoever should know."""
        e = self.endpoint
        with self._lock:
            self._generation += 1
            self._out.clear()  # acks of the last connection are void: the broker redelivers
            self._subs.clear()
            # our publishes it did not acknowledge go again, first (MQTT 5, 4.4): DUP when it kept our session
            self._out += [wire.as_dup(p) if connack.session_present else p for p in self._inflight.values()]
        if connack.session_present is False and self.connections:
            self.sessions_lost += 1
            log.warning("the broker had no session for us: what it queued while we were away is gone; devices replay what is unconfirmed",
                        extra=kv(client_id=e.client_id, sessions_lost=self.sessions_lost))
        self.connections += 1
        self.connack = connack
        self.keepalive = connack.server_keep_alive if connack.server_keep_alive is not None else e.keepalive
        if connack.maximum_qos == 0:
            log.error("the broker offers QoS 0 only: messages cannot be acknowledged after they are durable", extra=kv(client_id=e.client_id))
        if not connack.shared_subscription_available:
            log.warning("the broker has no shared subscriptions", extra=kv(client_id=e.client_id))
        if connack.assigned_client_id and connack.assigned_client_id != e.client_id:
            log.warning("the broker assigned another client id", extra=kv(client_id=e.client_id, assigned=connack.assigned_client_id))
        self.connected.set()

    def _open(self) -> tuple[socket.socket, wire.Connack, bytes]:
        e = self.endpoint
        sock = self.dial(e)
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(
                wire.connect(
                    e.client_id,
                    e.keepalive,
                    clean_start=False,
                    session_expiry=e.session_expiry,
                    receive_maximum=e.receive_maximum,
                    maximum_packet_size=e.maximum_packet_size,
                    username=e.username,
                    password=e.password,
                )
            )
            buf = b""
            while (packet := wire.head(buf)) is None:
                data = sock.recv(4096)
                if not data:
                    raise ConnectionError("broker closed the connection before CONNACK")
                buf += data
            first, body, used = packet
            if first >> 4 != wire.CONNACK:
                raise wire.ProtocolError(f"expected CONNACK, got packet type {first >> 4}")
            connack = wire.parse_connack(body)
            if connack.reason >= 0x80:
                raise Refused(f"broker refused the connection: {_REFUSALS.get(connack.reason, hex(connack.reason))}")
            keepalive = connack.server_keep_alive if connack.server_keep_alive is not None else e.keepalive
            sock.settimeout(max(5, keepalive or 60))  # a send that blocks longer than this is a dead link
            # the broker sends a resumed session's messages right behind CONNACK: keep them
            return sock, connack, buf[used:]
        except BaseException:
            sock.close()
            raise

    def _serve(self, sock: socket.socket, buf: bytes) -> None:
        keepalive = self.keepalive or 1e9  # 0: the broker wants no keep alive from us
        tls = isinstance(sock, ssl.SSLSocket)
        last_in = last_out = time.monotonic()
        gen = self._generation
        buf = self._consume(buf, gen)  # what came in behind CONNACK
        while True:
            with self._lock:
                out, self._out = self._out, []
            if out:
                sock.sendall(b"".join(out))
                last_out = time.monotonic()
            if self._stop.is_set():
                sock.sendall(wire.DISCONNECT)
                return
            if self.full():
                # hold: only acks (which wake us) and keepalive go out until there is room
                ready, _, _ = select.select([self._wake_r], [], [], 1.0)
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                now = time.monotonic()
                last_in = now  # the broker is not silent: we are not listening
                if now - last_out > keepalive / 2:
                    sock.sendall(wire.PINGREQ)
                    last_out = now
                continue
            if not (tls and cast(ssl.SSLSocket, sock).pending()):
                watch: list[Any] = [sock, self._wake_r]
                readable, _, _ = select.select(watch, [], [], 1.0)
                if self._wake_r in readable:
                    os.read(self._wake_r, 4096)
                if sock not in readable:
                    now = time.monotonic()
                    if now - last_out > keepalive / 2:
                        sock.sendall(wire.PINGREQ)
                        last_out = now
                    if now - last_in > keepalive * 1.5:
                        raise TimeoutError(f"no packet from the broker for {now - last_in:.0f} s")
                    continue
            try:
                data = sock.recv(max(4096, min(RECV_BYTES, self.room())))
            except ssl.SSLWantReadError:
                continue
            if not data:
                raise ConnectionError("broker closed the connection")
            last_in = time.monotonic()
            buf = self._consume(buf + data if buf else data, gen)
            if last_in - last_out > keepalive / 2:  # a busy inbound stream still needs our keepalive
                sock.sendall(wire.PINGREQ)
                last_out = last_in

    def _consume(self, buf: bytes, gen: int) -> bytes:
        """Handle every whole packet in `buf`; return the incomplete rest."""
        pubs: Publishes = []
        others: list[tuple[int, bytes]] = []
        # our Maximum Packet Size counts the whole packet; the remaining length is at most that less 2
        used = wire.split(buf, pubs, others, (self.endpoint.maximum_packet_size or wire.MAX_REMAINING + 5) - 2)
        for first, body in others:
            self._control(first, body)
        if pubs:
            self.on_publishes(pubs, gen)
        return buf[used:]

    def _control(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == wire.SUBACK:
            pid, codes = wire.parse_suback(body)
            with self._lock:
                asked, required = self._subs.pop(pid, ([], False))
            refused = [c for c in codes if c >= 0x80]
            downgraded = [c for c, q in zip(codes, asked, strict=False) if c < 0x80 and c < q]
            if refused or downgraded:
                fields = kv(packet_id=pid, codes=[hex(c) for c in codes], required=required)
                if required:
                    log.error("broker refused a subscription we need: reconnecting with backoff", extra=fields)
                    raise ConnectionError(f"subscription refused: {[hex(c) for c in codes]}")
                log.warning("broker refused an optional subscription", extra=fields)
            with self._lock:
                was, self.subscribed = self.subscribed, not any(req for _, req in self._subs.values())
            if self.subscribed and not was:  # from here on the broker delivers to us (and a $share group counts us)
                log.info("subscribed", extra=kv(client_id=self.endpoint.client_id))
        elif kind == wire.PUBACK:
            pid, reason = wire.parse_puback(body)
            with self._lock:
                known = self._inflight.pop(pid, None)
            if known is None:
                return  # an ack of a publish from before a lost session: nothing waits for it
            if reason >= 0x80:
                self.publish_refused += 1
                if self.publish_refused == 1 or self.publish_refused % 1000 == 0:
                    log.error(
                        "broker refused our publish: check this account's ACL",
                        extra=kv(client_id=self.endpoint.client_id, reason=hex(reason), refused=self.publish_refused),
                    )
            else:
                self.published += 1
            self.on_puback()
        elif kind == wire.DISCONNECT_TYPE:
            reason = wire.parse_disconnect(body)
            text = _DISCONNECTS.get(reason, hex(reason))
            if reason == 0x8E:
                log.error("another client took our session", extra=kv(client_id=self.endpoint.client_id))
            raise ConnectionError(f"broker disconnected us: {text}")
        elif kind not in (wire.PINGRESP, wire.UNSUBACK, wire.PUBACK):  # PUBACK: of a publish_if_subscribed
            raise wire.ProtocolError(f"unexpected packet type {kind}")
