# Laser PM sensors on a UART, spared between readings:
#   PMS5003: 32-byte frames, 0x42 0x4D, length 28, 13 big-endian words, 16-bit sum of bytes
#     0..29. Commands (0x42 0x4D cmd 0x00 data, 16-bit sum): 0xE1 mode (0 passive, 1
#     active), 0xE4 sleep (0) / wake (1), 0xE2 read (passive mode: one frame back). Its
#     datasheet: stable data no sooner than 30 s after waking (the fan's spin-up).
#   SDS011: 10-byte frames, 0xAA 0xC0, PM2.5 and PM10 (little-endian, x10), sum of bytes
#     2..7, 0xAB. Commands (0xAA 0xB4 cmd data x12 0xFF 0xFF sum 0xAB): 0x06 1 0 sleep,
#     0x06 1 1 work, answered 0xAA 0xC5 ... (skipped by the frame hunter). At work it
#     sends a frame a second; warm-up 15 s (as airrohr).
#
# Between readings the sensor sleeps (laser and fan off) when the interval leaves it at
# least REST_MIN_MS asleep; the node wakes it `warm_ms` before the reading (app._warm).
# A reading is the mean of FRAMES frames without their minimum and maximum, each channel
# apart (an odd frame, an insect or a puff of smoke, does not make the reading). Frames
# with a bad header, length or checksum are counted in `bad` and never used.
# Laser on-time is counted from wake to sleep and kept in flash (state/laser.<name>,
# written at each sleep, and every ten minutes of running on): status `laser_s`.
from micropython import const

import hal
from drivers import SensorError
from store import STATE, load, save

try:
    from typing import Any  # for the type checker; MicroPython skips annotations
except ImportError:
    pass

FRAMES = const(5)  # frames per reading (the mean of the middle three)
REST_MIN_MS = const(15000)  # sleep only when it stays asleep at least this long
_WAIT_MS = const(5000)  # a frame comes every 0.2-2.3 s: this long without a good one is a fault
# The commands are written out where they are sent, checksums included (a named constant
# per command would cost the heap a name each): PMS5003 wake + passive mode, sleep, read;
# SDS011 work, sleep.

# The commands, checksums included (wake = wake + passive mode for the PMS5003)


class PM:
    def __init__(self, uart, pms: bool, name: str = "pm", warm_s=None) -> None:
        self.uart = uart
        self.pms = pms
        self.buf = bytearray(32 if pms else 10)
        self.mv = memoryview(self.buf)
        self.one = bytearray(1)  # header hunting byte by byte, without a new slice each time
        self.n = 0  # bytes of the current frame received so far
        self.good = 0
        self.bad = 0
        self.vals = [0] * (3 * FRAMES)  # the channels of the frames of one reading
        self.k = 0  # frames of the current reading so far
        self.warm_ms = (30000 if pms else 15000) if warm_s is None else int(warm_s * 1000)
        self.path = STATE + "/laser." + name
        try:
            self.laser = self.saved = int(load(self.path) or 0)  # ms of laser on-time, kept in flash
        except ValueError:
            self.laser = self.saved = 0
        self.awake = False
        self.hot = False  # warmed up since it woke
        self.woke: Any = 0  # ticks: woken at
        self.lit: Any = 0  # ticks: on-time counted up to
        self.wake()  # its state after a reset is not known: wake it (and set its mode)

    # --- power and laser on-time ------------------------------------------------------------
    def wake(self) -> None:
        if not self.awake:
            self.uart.write(b"BM\xe4\x00\x01\x01tBM\xe1\x00\x00\x01p" if self.pms else b"\xaa\xb4\x06\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\x06\xab")
            self.awake = True
            self.hot = False
            self.woke = self.lit = hal.ticks_ms()

    def sleep(self) -> None:
        if self.awake:
            self.uart.write(b"BM\xe4\x00\x00\x01s" if self.pms else b"\xaa\xb4\x06\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\x05\xab")
            self.laser_ms()
            self.awake = False
            self._keep(1000)

    def _keep(self, step: int) -> None:
        if self.laser - self.saved >= step:  # grown by `step` ms since it was last written
            try:
                save(self.path, str(self.laser))
                self.saved = self.laser
            except OSError:
                pass  # flash refuses writes: the node reports that fault; kept in RAM meanwhile

    def laser_ms(self) -> int:
        """Laser on-time so far (counted in steps: right across the ticks wrap)."""
        if self.awake:
            now = hal.ticks_ms()
            self.laser += hal.ticks_diff(now, self.lit)
            self.lit = now
        return self.laser

    def warming(self) -> int:
        """ms until a reading may start (0: warm); wakes the sensor if it sleeps."""
        self.wake()
        self.laser_ms()
        if self.hot:
            return 0
        left = self.warm_ms - hal.ticks_diff(hal.ticks_ms(), self.woke)
        self.hot = left <= 0  # (and stays warm while awake, whatever the ticks wrap does)
        return max(0, left)

    def rest(self, interval_ms: int) -> None:
        """After a reading: sleep if the interval leaves it asleep long enough (0: sleep)."""
        if not interval_ms or interval_ms - self.warm_ms - FRAMES * 1000 >= REST_MIN_MS:
            self.sleep()
        else:  # running on: its on-time to flash every ten minutes of it
            self.laser_ms()
            self._keep(600000)

    # --- frames ---------------------------------------------------------------------------
    def _pump(self) -> bool:
        """Consume what the UART holds; True if any bytes came."""
        got = False
        b = self.buf
        while True:
            if self.n < 2:
                if not self.uart.readinto(self.one):
                    return got
                got = True
                c = self.one[0]
                b[self.n] = c
                h0 = 0x42 if self.pms else 0xAA
                if self.n == 0:
                    if c == h0:
                        self.n = 1
                elif c == (0x4D if self.pms else 0xC0):
                    self.n = 2
                else:
                    self.n = 1 if c == h0 else 0
                continue
            k = self.uart.readinto(self.mv[self.n :])
            if not k:
                return got
            got = True
            self.n += k
            if self.n < len(b):
                continue
            self.n = 0
            if self.pms:
                s = 0
                for i in range(30):
                    s += b[i]
                ok = b[2] == 0 and b[3] == 28 and s & 0xFFFF == (b[30] << 8 | b[31])
            else:
                ok = b[9] == 0xAB and (b[2] + b[3] + b[4] + b[5] + b[6] + b[7]) & 0xFF == b[8]
            if not ok:
                self.bad += 1
            elif self.k < FRAMES:
                self.good += 1
                v, i = self.vals, 3 * self.k
                if self.pms:  # words 4..6: "atmospheric environment" µg/m³
                    v[i], v[i + 1], v[i + 2] = b[10] << 8 | b[11], b[12] << 8 | b[13], b[14] << 8 | b[15]
                else:  # PM2.5, PM10 x10
                    v[i], v[i + 1], v[i + 2] = b[3] << 8 | b[2], b[5] << 8 | b[4], 0
                self.k += 1

    def read(self, m: dict) -> None:
        left = self.warming()
        if left:  # the node wakes it early (app._prep); a caller that did not, waits
            hal.sleep_ms(left)
        # What waited in the UART is old (a full buffer keeps the oldest bytes): drop it,
        # not counted as corrupt (those frames were never looked at).
        while self.uart.readinto(self.buf):
            pass
        self.n = self.k = 0
        bad0 = self.bad
        tries = 3 * FRAMES
        while self.k < FRAMES and tries:
            # PMS5003 (passive): ask, a frame a second (its figures change about that
            # often); SDS011 (at work): it sends a frame a second. A frame spoilt on the
            # line is asked for again at once; no answer at all ends the reading.
            tries -= 1
            k, bad = self.k, self.bad
            if self.pms:
                self.uart.write(b"BM\xe2\x00\x00\x01q")
            deadline = hal.ticks_add(hal.ticks_ms(), 1500 if self.pms else _WAIT_MS)
            while self.k == k and self.bad == bad:
                late = hal.ticks_diff(deadline, hal.ticks_ms()) <= 0  # judged before the last look
                if not self._pump():
                    if late:
                        break
                    hal.sleep_ms(50)
            if self.k == k and self.bad == bad:
                break
            if self.pms and k < self.k < FRAMES:
                hal.sleep_ms(1000)
        if self.k < 3:
            raise SensorError("checksum" if self.bad > bad0 else "timeout")
        n = self.k - 2
        v = self.vals
        for ch in range(3 if self.pms else 2):
            lo = hi = total = v[ch]
            for i in range(1, self.k):
                x = v[3 * i + ch]
                total += x
                lo = x if x < lo else lo
                hi = x if x > hi else hi
            mean = (total - lo - hi) / n  # without the minimum and the maximum
            if self.pms:
                m[("pm1", "pm25", "pm10")[ch]] = round(mean, 1)
            else:
                m[("pm25", "pm10")[ch]] = round(mean / 10, 1)
