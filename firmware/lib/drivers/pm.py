# Laser PM sensors on a UART, in their default active mode (a frame every second):
#   PMS5003: 32 bytes, 0x42 0x4D, length 28, 13 big-endian words, 16-bit sum of bytes 0..29
#   SDS011:  10 bytes, 0xAA 0xC0, PM2.5 and PM10 (little-endian, x10), sum of bytes 2..7, 0xAB
# A read drops what waited in the UART (stale), then takes the next good frame; frames
# with a bad header, length or checksum are counted in `bad` and never used.
from micropython import const

import hal
from drivers import SensorError

_WAIT_MS = const(5000)  # a frame comes every 0.2-2.3 s (PMS5003 fast/stable mode): two without a good one is a fault


class _UartFrames:
    SIZE = 0
    H0 = 0
    H1 = 0

    def __init__(self, uart) -> None:
        self.uart = uart
        self.buf = bytearray(self.SIZE)
        self.mv = memoryview(self.buf)
        self.body = self.mv[2:]  # the usual read after a header, made once (a slice per frame is heap)
        self.one = bytearray(1)  # header hunting byte by byte, without a new slice each time
        self.n = 0  # bytes of the current frame received so far
        self.good = 0
        self.bad = 0
        self._fresh = False

    def _check(self) -> bool:
        raise NotImplementedError

    def _store(self, m: dict) -> None:
        raise NotImplementedError

    def _pump(self, m: dict) -> bool:
        """Consume what the UART holds; True if any bytes came."""
        got = False
        while True:
            if self.n < 2:
                k = self.uart.readinto(self.one)
                if not k:
                    return got
                got = True
                b = self.one[0]
                self.buf[self.n] = b
                if self.n == 0:
                    if b == self.H0:
                        self.n = 1
                elif b == self.H1:
                    self.n = 2
                else:
                    self.n = 1 if b == self.H0 else 0
                continue
            k = self.uart.readinto(self.body if self.n == 2 else self.mv[self.n :])
            if not k:
                return got
            got = True
            self.n += k
            if self.n == self.SIZE:
                self.n = 0
                if self._check():
                    self.good += 1
                    self._store(m)
                    self._fresh = True
                else:
                    self.bad += 1

    def read(self, m: dict) -> None:
        # What waited in the UART is old: in active mode more than its 1 KB buffer arrives
        # between readings, and a full buffer keeps the oldest bytes (the newest are lost),
        # so its "newest" frame can be most of a minute old. Drop it (not counted as
        # corrupt: those frames were never looked at) and take the next good frame.
        while self.uart.readinto(self.buf):
            pass
        self.n = 0
        self._fresh = False
        bad0 = self.bad
        deadline = hal.ticks_add(hal.ticks_ms(), _WAIT_MS)
        while True:
            late = hal.ticks_diff(deadline, hal.ticks_ms()) <= 0  # judged before the last look
            if not self._pump(m):
                if self._fresh:
                    return
                if late:
                    raise SensorError("checksum" if self.bad > bad0 else "timeout")
                hal.sleep_ms(50)


class PMS5003(_UartFrames):
    SIZE = 32
    H0 = 0x42
    H1 = 0x4D

    def _check(self) -> bool:
        b = self.buf
        if b[2] != 0 or b[3] != 28:
            return False
        s = 0
        for i in range(30):
            s += b[i]
        return s & 0xFFFF == (b[30] << 8 | b[31])

    def _store(self, m: dict) -> None:
        b = self.buf
        # words 4..6: "atmospheric environment" concentrations, µg/m³
        m["pm1"] = b[10] << 8 | b[11]
        m["pm25"] = b[12] << 8 | b[13]
        m["pm10"] = b[14] << 8 | b[15]


class SDS011(_UartFrames):
    SIZE = 10
    H0 = 0xAA
    H1 = 0xC0

    def _check(self) -> bool:
        b = self.buf
        return b[9] == 0xAB and (b[2] + b[3] + b[4] + b[5] + b[6] + b[7]) & 0xFF == b[8]

    def _store(self, m: dict) -> None:
        b = self.buf
        m["pm25"] = (b[3] << 8 | b[2]) / 10
        m["pm10"] = (b[5] << 8 | b[4]) / 10
