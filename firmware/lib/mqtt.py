# A small MQTT 3.1.1 client, the same code on the ESP32 and the unix port.
#
# QoS 1 publish with PUBACK tracking, keep-alive pings, Last Will, subscribe (retained
# messages arrive like any other; one subscription may be marked optional: its refusal is
# noted, not an error), username/password. The socket comes from the HAL
# (plain TCP or TLS). Payloads may be given as several pieces, so a replay batch is
# written straight from its buffer without being joined into one big string.
# Any socket error or protocol surprise raises OSError: the caller reconnects.
import select

from micropython import const

import hal

try:
    from typing import Any  # for the type checker; MicroPython skips annotations
except ImportError:
    pass

_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)
_MAX_IN = const(4096)  # largest message we accept (config); bigger ones are skipped


class Client:
    def __init__(self, client_id: str, keepalive_s: int, username=None, password=None) -> None:
        self.client_id = client_id
        self.keepalive_ms = keepalive_s * 1000
        self.username = username
        self.password = password
        self.sock: Any = None
        self.poller: Any = None
        self.on_message: Any = None  # callable(topic: str, payload: bytes)
        self.on_ack: Any = None  # callable(packet_id: int), on PUBACK
        self._pid = 0
        self._hdr = bytearray(5)
        self._last_tx: Any = 0
        self._last_rx: Any = 0
        self._ping_out = False
        # The SUBSCRIBE the broker may refuse (`stored`, with `ota`): its packet id while awaited, -1 if `stored` was refused,
        # else 0 (one attribute: MicroPython keeps every name for good)
        self.refused = 0

    # --- framing -----------------------------------------------------------
    def write(self, data, off: int = 0, end: int = -1) -> None:
        """Send data[off:end] (end -1: to its end) without copying or slicing it."""
        if end < 0:
            end = len(data)
        while off < end:
            n = self.sock.write(data, off, end - off)
            if n is None:
                n = 0
                hal.sleep_ms(1)
            off += n
        self._last_tx = hal.ticks_ms()

    def _send_header(self, kind: int, length: int) -> None:
        h = self._hdr
        h[0] = kind
        i = 1
        while True:
            b = length & 0x7F
            length >>= 7
            h[i] = b | (0x80 if length else 0)
            i += 1
            if not length:
                break
        self.write(h, 0, i)

    def _str(self, s) -> None:
        b = s.encode() if type(s) is str else s
        self._hdr[0] = len(b) >> 8
        self._hdr[1] = len(b) & 0xFF
        self.write(self._hdr, 0, 2)
        self.write(b)

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.read(n - len(out))
            if not chunk:
                raise OSError("mqtt: connection closed")
            out += chunk
        return out

    def _read_byte(self) -> int:
        return self._read(1)[0]

    def _read_length(self) -> int:
        n = shift = 0
        while True:
            b = self._read_byte()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7
            if shift > 21:
                raise OSError("mqtt: bad length")

    def _next_pid(self) -> int:
        self._pid = self._pid % 65535 + 1
        return self._pid

    # --- session (opened by online.session) ----------------------------------
    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except Exception:
                pass
        self.sock = None
        self.poller = None

    def disconnect(self) -> None:
        """A clean DISCONNECT: the broker discards the Last Will."""
        try:
            self.write(b"\xe0\x00")
        except Exception:
            pass
        self.close()

    # --- messages ------------------------------------------------------------
    def publish(self, topic: str, pieces: tuple, retain: bool = False) -> int:
        """QoS 1 publish of the concatenated pieces; returns the packet id to await."""
        size = 0
        for p in pieces:
            size += len(p)
        pid = self.begin(topic, size, retain)
        for p in pieces:
            self.write(p)
        return pid

    def begin(self, topic: str, size: int, retain: bool = False) -> int:
        """Start a QoS 1 publish of `size` payload bytes, which the caller then passes to
        write() (a replay batch streams from flash); returns the packet id to await."""
        pid = self._next_pid()
        self._send_header(_PUBLISH | 0x02 | (0x01 if retain else 0), 2 + len(topic) + 2 + size)
        self._str(topic)
        self._hdr[0] = pid >> 8
        self._hdr[1] = pid & 0xFF
        self.write(self._hdr, 0, 2)
        return pid

    def poll(self, timeout_ms: int = 0) -> None:
        """Handle every packet waiting (up to timeout_ms for the first); keep the session alive."""
        now = hal.ticks_ms()
        if self._ping_out and hal.ticks_diff(now, self._last_rx) > self.keepalive_ms:
            raise OSError("mqtt: no answer to ping")
        if not self._ping_out and hal.ticks_diff(now, self._last_tx) >= self.keepalive_ms // 2:
            self.write(b"\xc0\x00")
            self._ping_out = True
        wait = timeout_ms
        while True:
            if wait:
                hal.wait(self.poller, wait)
            ev = self.poller.poll(0)
            if not ev:
                return
            if ev[0][1] & (select.POLLHUP | select.POLLERR):
                raise OSError("mqtt: connection lost (poll %d)" % ev[0][1])
            self._handle()
            wait = 0

    def _handle(self) -> None:
        kind = self._read_byte()
        n = self._read_length()
        self._last_rx = hal.ticks_ms()
        t = kind & 0xF0
        if t == _PUBACK or t == _SUBACK:
            body = self._read(n)
            if t == _SUBACK:
                pid = body[0] << 8 | body[1]
                if pid == self.refused:
                    self.refused = -1 if body[2] == 0x80 else 0
                elif body[2] == 0x80:
                    raise OSError("mqtt: subscription refused")
            elif self.on_ack:
                self.on_ack(body[0] << 8 | body[1])
        elif t == _PINGRESP:
            self._ping_out = False
        elif t == _PUBLISH:
            tl = self._read(2)
            tlen = tl[0] << 8 | tl[1]
            topic = self._read(tlen).decode()
            n -= 2 + tlen
            pid = 0
            if kind & 0x06:
                pb = self._read(2)
                pid = pb[0] << 8 | pb[1]
                n -= 2
            if n > _MAX_IN:
                while n:  # too big for us: skip it, but still acknowledge
                    n -= len(self._read(min(n, 256)))
                payload = None
            else:
                payload = self._read(n)
            if pid:
                self._hdr[0] = _PUBACK
                self._hdr[1] = 2
                self._hdr[2] = pid >> 8
                self._hdr[3] = pid & 0xFF
                self.write(self._hdr, 0, 4)
            if payload is not None and self.on_message:
                self.on_message(topic, payload)
        else:
            self._read(n)
