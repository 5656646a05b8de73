"""A small asyncio MQTT 3.1.1 client: just what a simulated device needs.

One `Connection` is one device's TCP connection to the broker. It is an
asyncio Protocol rather than a task per connection and holds a few hundred
bytes of state, so a single process multiplexes thousands of devices (paho
would need a thread, or at least a socket loop, per client).

Supported: CONNECT with credentials and a Last Will, PUBLISH at QoS 0/1
(outgoing, acknowledged by PUBACK), SUBSCRIBE, incoming PUBLISH at QoS 0/1
(retained config), keepalive PINGREQ, DISCONNECT, and `abort()` - dropping
the TCP connection without DISCONNECT so the broker fires the Last Will.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x82, 0x90, 0xC0, 0xD0, 0xE0

CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class MqttError(Exception):
    pass


class ConnectRefused(MqttError):
    def __init__(self, code: int) -> None:
        super().__init__(f"broker refused connection: {CONNACK_REASONS.get(code, code)}")
        self.code = code


class ConnectionClosed(MqttError):
    pass


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def connect_packet(client_id: str, username: str | None, password: str | None, will: Will | None, keepalive: int, clean: bool) -> bytes:
    flags = 0x02 if clean else 0
    payload = _str(client_id)
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += _str(will.topic) + _str(will.payload)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
        if password is not None:
            flags |= 0x40
            payload += _str(password)
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + struct.pack("!H", keepalive) + payload
    return bytes([CONNECT]) + _varint(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, qos: int, retain: bool, mid: int) -> bytes:
    head = PUBLISH | (qos << 1) | (1 if retain else 0)
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"")
    return bytes([head]) + _varint(len(body) + len(payload)) + body + payload


OnMessage = Callable[[str, bytes, bool], None]


class Connection(asyncio.Protocol):
    """One MQTT client connection. Create with `await Connection.open(...)`."""

    def __init__(self, connect: bytes, keepalive: int, on_message: OnMessage | None) -> None:
        self._connect = connect
        self.keepalive = keepalive
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.connack: asyncio.Future[int] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._mid = 0
        self._last_write = time.monotonic()
        self._ping: asyncio.TimerHandle | None = None

    # --- opening and closing ---------------------------------------------------
    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        will: Will | None = None,
        keepalive: int = 60,
        clean: bool = True,
        on_message: OnMessage | None = None,
        timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
    ) -> Connection:
        loop = asyncio.get_running_loop()
        packet = connect_packet(client_id, username, password, will, keepalive, clean)
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: cls(packet, keepalive, on_message), host, port, ssl=tls, server_hostname=host if tls else None),
                timeout)
        except (TimeoutError, OSError) as exc:  # ssl.SSLError is an OSError: a refused handshake is a failed connect
            raise MqttError(f"cannot reach broker {host}:{port}: {exc or 'timeout'}") from None
        try:
            code = await asyncio.wait_for(asyncio.shield(conn.connack), timeout)
        except TimeoutError:
            conn.abort()
            raise MqttError("no CONNACK from broker") from None
        except ConnectionClosed:
            raise MqttError("broker closed the connection before CONNACK") from None
        if code != 0:
            conn.abort()
            raise ConnectRefused(code)
        conn._schedule_ping()
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._write(self._connect)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._ping is not None:
            self._ping.cancel()
        err = ConnectionClosed(str(exc) if exc else "connection closed")
        if not self.connack.done():
            self.connack.set_exception(err)
            self.connack.exception()  # mark retrieved: open() reports it
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
                fut.exception()
        self._pending.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT: the broker publishes the Last Will."""
        if self.transport is not None:
            self.transport.abort()

    async def disconnect(self) -> None:
        """Clean DISCONNECT (no Last Will)."""
        if self.is_open:
            self._write(bytes([DISCONNECT, 0]))
            self.transport.close()  # type: ignore[union-attr]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), 5)

    # --- sending -----------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self.transport is None:
            raise ConnectionClosed("not connected")
        self.transport.write(data)
        self._last_write = time.monotonic()

    def _next_mid(self) -> int:
        for _ in range(65536):
            self._mid = self._mid % 65535 + 1
            if self._mid not in self._pending:
                return self._mid
        raise MqttError("no free packet id")

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> asyncio.Future[None]:
        """Send a PUBLISH; the future completes on PUBACK (at once for QoS 0)."""
        fut: asyncio.Future[None] = self._loop.create_future()
        mid = self._next_mid() if qos else 0
        self._write(publish_packet(topic.encode(), payload, qos, retain, mid))
        if qos:
            self._pending[mid] = fut
        else:
            fut.set_result(None)
        return fut

    def subscribe(self, topic: str, qos: int = 1) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self._loop.create_future()
        mid = self._next_mid()
        body = struct.pack("!H", mid) + _str(topic) + bytes([qos])
        self._pending[mid] = fut
        self._write(bytes([SUBSCRIBE]) + _varint(len(body)) + body)
        return fut

    @property
    def inflight(self) -> int:
        return len(self._pending)

    def _schedule_ping(self) -> None:
        if self.keepalive:
            self._ping = self._loop.call_later(self.keepalive / 2, self._keepalive)

    def _keepalive(self) -> None:
        if self.transport is None:
            return
        if time.monotonic() - self._last_write >= self.keepalive / 2 - 0.5:
            self._write(bytes([PINGREQ, 0]))
        self._schedule_ping()

    # --- receiving -----------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while True:
            if len(buf) < 2:
                return
            length, mult, i = 0, 1, 1
            while True:
                if i >= len(buf):
                    return
                byte = buf[i]
                length += (byte & 0x7F) * mult
                mult *= 128
                i += 1
                if not byte & 0x80:
                    break
                if i > 4:
                    self.abort()
                    return
            end = i + length
            if len(buf) < end:
                return
            self._packet(buf[0], bytes(buf[i:end]))
            del buf[:end]

    def _packet(self, head: int, body: bytes) -> None:
        kind = head & 0xF0
        if kind == PUBACK or kind == SUBACK & 0xF0:
            fut = self._pending.pop(struct.unpack_from("!H", body)[0], None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif kind == CONNACK:
            if not self.connack.done():
                self.connack.set_result(body[1])
        elif kind == PUBLISH:
            qos = (head >> 1) & 3
            n = struct.unpack_from("!H", body)[0]
            topic = body[2 : 2 + n].decode("utf-8", "replace")
            pos = 2 + n
            if qos:
                mid = body[pos : pos + 2]
                pos += 2
                self._write(bytes([PUBACK, 2]) + mid)
            if self.on_message is not None:
                self.on_message(topic, body[pos:], bool(head & 1))
        # PINGRESP and anything else: nothing to do


@functools.lru_cache(maxsize=4)
def tls_context(ca_file: str) -> ssl.SSLContext:
    """A client context that verifies the broker against `ca_file` (the system's CAs when empty); one per process."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
