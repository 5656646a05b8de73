"""The connectivity layer under the ingest: one MQTT 5 session to the broker, kept up.

One thread owns the socket. It connects (backing off while the broker is
away), reads in large chunks and hands every PUBLISH in a chunk to
`on_publishes` at once, answers keepalive, and sends what other threads
queued (PUBACKs). Nothing else touches the socket, so a TLS socket is never
used from two threads at once.

Acks carry the connection's generation: an ack for a message received on an
earlier connection is not sent on the new one. The broker redelivers that
message instead; writing it again is harmless (same series and timestamp).
"""

from __future__ import annotations

import contextlib
import logging
import os
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

Publishes = list[tuple[str, bytes, int]]


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


class Session:
    def __init__(
        self,
        endpoint: Endpoint,
        on_connect: Callable[[Session, bool], None],
        on_publishes: Callable[[Publishes, int], None],
        full: Callable[[], bool] = lambda: False,
    ) -> None:
        self.endpoint = endpoint
        self.on_connect = on_connect
        self.on_publishes = on_publishes
        # True while the receiver holds all it may: we stop reading and TCP holds the broker back.
        # Mosquitto 2.0 sends a resumed session's queue past our Receive Maximum once acks flow.
        self.full = full
        self.connected = threading.Event()
        self.reconnects = 0
        self._generation = 0
        self._out: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._next_pid = 0
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
        with self._lock:
            self._out.append(packet)
        self._wake()

    def subscribe(self, filters: list[tuple[str, int]]) -> None:
        self.send(wire.subscribe(self._pid(), filters))

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
            self._next_pid = self._next_pid % 0xFFFF + 1
            return self._next_pid

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    # --- the socket's owner --------------------------------------------------
    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                sock, connack, rest = self._open()
            except (OSError, wire.ProtocolError) as exc:
                level = logging.ERROR if isinstance(exc, Refused) else logging.WARNING
                log.log(level, "cannot connect to broker, retrying", extra=kv(error=str(exc)[:200], retry_s=delay))
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.5
            with self._lock:
                self._generation += 1
                self._out.clear()  # acks of the last connection are void: the broker redelivers
            self.connected.set()
            try:
                self.on_connect(self, connack.session_present)
                self._serve(sock, rest)
            except (OSError, wire.ProtocolError) as exc:
                if not self._stop.is_set():
                    log.warning("connection to broker lost, reconnecting", extra=kv(error=str(exc)[:200]))
                    self.reconnects += 1
            finally:
                self.connected.clear()
                with contextlib.suppress(OSError):
                    sock.close()

    def _open(self) -> tuple[socket.socket, wire.Connack, bytes]:
        e = self.endpoint
        raw = socket.create_connection((e.host, e.port), timeout=10)
        sock: socket.socket = e.tls.wrap_socket(raw, server_hostname=e.host) if e.tls else raw
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(
                wire.connect(
                    e.client_id,
                    e.keepalive,
                    clean_start=False,
                    session_expiry=e.session_expiry,
                    receive_maximum=e.receive_maximum,
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
            sock.settimeout(max(5, e.keepalive))  # a send that blocks longer than this is a dead link
            # the broker sends a resumed session's messages right behind CONNACK: keep them
            return sock, connack, buf[used:]
        except BaseException:
            sock.close()
            raise

    def _serve(self, sock: socket.socket, buf: bytes) -> None:
        keepalive = self.endpoint.keepalive
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
                data = sock.recv(RECV_BYTES)
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
        used = wire.split(buf, pubs, others)
        for first, body in others:
            self._control(first, body)
        if pubs:
            self.on_publishes(pubs, gen)
        return buf[used:]

    def _control(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == wire.SUBACK:
            pid, codes = wire.parse_suback(body)
            refused = [c for c in codes if c >= 0x80]
            if refused:
                log.error("broker refused a subscription", extra=kv(packet_id=pid, reasons=[hex(c) for c in refused]))
        elif kind == wire.DISCONNECT_TYPE:
            reason = body[0] if body else 0
            raise ConnectionError(f"broker disconnected us: reason {hex(reason)}")
        elif kind not in (wire.PINGRESP, wire.UNSUBACK):
            raise wire.ProtocolError(f"unexpected packet type {kind}")
