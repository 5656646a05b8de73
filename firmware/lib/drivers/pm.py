# Laser PM sensors on a UART, spared between readings:
#   PMS5003: 32-byte frames, 0x42 0x4D, length 28, 13 big-endian words, 16-bit sum of bytes
#     0..29. Commands (7 bytes: 0x42 0x4D cmd 0x00 data, 16-bit sum): 0xE1 mode (0 passive,
#     1 active), 0xE4 sleep (0) / wake (1), 0xE2 "read" in passive mode (one frame back).
#     Its datasheet: stable data no sooner than 30 s after waking (the fan's spin-up).
#   SDS011: 10-byte frames, 0xAA 0xC0, PM2.5 and PM10 (little-endian, x10), sum of bytes
#     2..7, 0xAB. Commands (19 bytes: 0xAA 0xB4 cmd data[12] 0xFF 0xFF sum 0xAB): 0x06 1 0
#     sleep, 0x06 1 1 work; it answers 0xAA 0xC5 ... (skipped by the frame hunter). In
#     work it reports a frame a second (active reporting); warm-up 15 s (as airrohr).
#
# Between readings the sensor sleeps (laser and fan off) when the interval leaves it at
# least REST_MIN_MS asleep; the node wakes it `warm_ms` before the reading (app._ready).
# A reading is the mean of FRAMES frames without their minimum and maximum, each channel
# apart (one odd frame, a passing insect or a burst of smoke, does not make the reading).
# Frames with a bad header, length or checksum are counted in `bad` and never used.
# Laser on-time is counted from wake to sleep and kept in flash (state/laser.<name>),
# written when the sensor goes to sleep: status reports it as `laser_s`.
from micropython import const

import hal
from drivers import SensorError
from store import STATE, load, save

FRAMES = const(5)  # frames per reading (the mean of the middle three)
REST_MIN_MS = const(15000)  # sleep only when it stays asleep at least this long
_WAIT_MS = const(5000)  # a frame comes every 0.2-2.3 s: this long without a good one is a fault


class _UartFrames:
    SIZE = 0
    H0 = 0
    H1 = 0
    WARM_MS = 0

    def __init__(self, uart, name: str = "pm", warm_s=None) -> None:
        self.uart = uart
        self.buf = bytearray(self.SIZE)
        self.mv = memoryview(self.buf)
        self.body = self.mv[2:]  # the usual read after a header, made once (a slice per frame is heap)
        self.one = bytearray(1)  # header hunting byte by byte, without a new slice each time
        self.n = 0  # bytes of the current frame received so far
        self.good = 0
        self.bad = 0
        self.vals = [0] * (3 * FRAMES)  # raw channel values of the frames of one reading
        self.k = 0  # frames of the current reading so far
        self.warm_ms = self.WARM_MS if warm_s is None else int(warm_s * 1000)
        self.path = STATE + "/laser." + name
        try:
            self.laser_done = int(load(self.path) or 0)  # ms of laser on-time before this boot
        except ValueError:
            self.laser_done = 0
        self.saved = self.laser_done
        self.awake = False
        self.hot = False  # warmed up since it woke
        self.woke = self.lit = hal.ticks_ms()  # woken at; on-time counted up to
        self.wake()  # its state after a reset is not known: wake it (and set its mode)

    # --- power ------------------------------------------------------------------------
    def _cmd(self, cmd: int, data: int) -> None:
        raise NotImplementedError

    def wake(self) -> None:
        if not self.awake:
            self._wake()
            self.awake = True
            self.hot = False
            self.woke = self.lit = hal.ticks_ms()

    def _wake(self) -> None:
        raise NotImplementedError

    def sleep(self) -> None:
        if self.awake:
            self._sleep()
            self.laser_ms()
            self.awake = False
            self.keep(1000)

    def _sleep(self) -> None:
        raise NotImplementedError

    def keep(self, step: int) -> None:
        """The laser on-time to flash, when it grew by `step` ms since it was last written."""
        if self.laser_done - self.saved >= step:
            try:
                save(self.path, str(self.laser_done))
                self.saved = self.laser_done
            except OSError:
                pass  # flash refuses writes: the node reports that fault; kept in RAM meanwhile

    def laser_ms(self) -> int:
        """Laser on-time so far (counted in steps, right across the ticks wrap)."""
        if self.awake:
            now = hal.ticks_ms()
            self.laser_done += hal.ticks_diff(now, self.lit)
            self.lit = now
        return self.laser_done

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
        """After a reading: sleep if the interval leaves it asleep long enough."""
        if interval_ms - self.warm_ms - FRAMES * 1000 >= REST_MIN_MS:
            self.sleep()
        else:  # running on: its on-time to flash every ten minutes of it
            self.laser_ms()
            self.keep(600000)

    # --- frames -------------------------------------------------------------------------
    def _check(self) -> bool:
        raise NotImplementedError

    def _store(self, v: list, i: int) -> None:
        raise NotImplementedError

    def _pump(self) -> bool:
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
                    if self.k < FRAMES:
                        self._store(self.vals, 3 * self.k)
                        self.k += 1
                else:
                    self.bad += 1

    def _drop(self) -> None:
        # What waited in the UART is old (a full buffer keeps the oldest bytes): drop it,
        # not counted as corrupt (those frames were never looked at).
        while self.uart.readinto(self.buf):
            pass
        self.n = 0

    def _collect(self, want: int, wait_ms: int, one: bool = False) -> None:
        """Frames until self.k reaches `want` or `wait_ms` pass (`one`: or a bad frame came)."""
        deadline = hal.ticks_add(hal.ticks_ms(), wait_ms)
        bad = self.bad
        while self.k < want and not (one and self.bad > bad):
            late = hal.ticks_diff(deadline, hal.ticks_ms()) <= 0  # judged before the last look
            if not self._pump():
                if late:
                    return
                hal.sleep_ms(50)

    def _frames(self) -> None:
        raise NotImplementedError

    def read(self, m: dict) -> None:
        left = self.warming()
        if left:  # the node wakes it early (app._ready); a caller that did not, waits
            hal.sleep_ms(left)
        self._drop()
        self.k = 0
        bad0 = self.bad
        self._frames()
        if self.k < 3:
            raise SensorError("checksum" if self.bad > bad0 else "timeout")
        self._result(m)

    def _mean(self, ch: int) -> float:
        """Mean of channel ch over the frames, without its minimum and maximum."""
        v = self.vals
        lo = hi = total = v[ch]
        for i in range(1, self.k):
            x = v[3 * i + ch]
            total += x
            if x < lo:
                lo = x
            if x > hi:
                hi = x
        return (total - lo - hi) / (self.k - 2)

    def _result(self, m: dict) -> None:
        raise NotImplementedError


class PMS5003(_UartFrames):
    SIZE = 32
    H0 = 0x42
    H1 = 0x4D
    WARM_MS = 30000

    def _cmd(self, cmd: int, data: int) -> None:
        s = 0x42 + 0x4D + cmd + data
        self.uart.write(bytes((0x42, 0x4D, cmd, 0, data, s >> 8, s & 0xFF)))

    def _wake(self) -> None:
        self._cmd(0xE4, 1)
        self._cmd(0xE1, 0)  # passive: a frame only when asked (nothing piles up in the UART)

    def _sleep(self) -> None:
        self._cmd(0xE4, 0)

    def _frames(self) -> None:
        # Passive mode: ask for a frame once a second (the sensor updates its figures
        # about that often; asking faster would return the same measurement). A frame
        # spoilt on the line is asked for again at once (up to FRAMES times in a reading).
        retries = FRAMES
        while self.k < FRAMES:
            k, bad = self.k, self.bad
            self._cmd(0xE2, 0)
            self._collect(k + 1, 1500, True)
            if self.k > k:
                if self.k < FRAMES:
                    hal.sleep_ms(1000)
            elif self.bad > bad and retries:
                retries -= 1
            else:
                return  # no answer: a fault (or fewer frames)

    def _check(self) -> bool:
        b = self.buf
        if b[2] != 0 or b[3] != 28:
            return False
        s = 0
        for i in range(30):
            s += b[i]
        return s & 0xFFFF == (b[30] << 8 | b[31])

    def _store(self, v: list, i: int) -> None:
        b = self.buf
        # words 4..6: "atmospheric environment" concentrations, µg/m³
        v[i] = b[10] << 8 | b[11]
        v[i + 1] = b[12] << 8 | b[13]
        v[i + 2] = b[14] << 8 | b[15]

    def _result(self, m: dict) -> None:
        m["pm1"] = round(self._mean(0), 1)
        m["pm25"] = round(self._mean(1), 1)
        m["pm10"] = round(self._mean(2), 1)


class SDS011(_UartFrames):
    SIZE = 10
    H0 = 0xAA
    H1 = 0xC0
    WARM_MS = 15000

    def _cmd(self, cmd: int, data: int) -> None:
        # 0xAA 0xB4 cmd data1 data2 0 x 10 0xFF 0xFF (all sensors) checksum 0xAB
        s = (cmd + 1 + data + 0xFF + 0xFF) & 0xFF
        self.uart.write(bytes((0xAA, 0xB4, cmd, 1, data, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, s, 0xAB)))

    def _wake(self) -> None:
        self._cmd(0x06, 1)  # work (in active reporting: a frame a second)

    def _sleep(self) -> None:
        self._cmd(0x06, 0)

    def _frames(self) -> None:
        self._collect(FRAMES, FRAMES * 1000 + _WAIT_MS)

    def _check(self) -> bool:
        b = self.buf
        return b[9] == 0xAB and (b[2] + b[3] + b[4] + b[5] + b[6] + b[7]) & 0xFF == b[8]

    def _store(self, v: list, i: int) -> None:
        b = self.buf
        v[i] = b[3] << 8 | b[2]  # PM2.5 x10
        v[i + 1] = b[5] << 8 | b[4]  # PM10 x10
        v[i + 2] = 0

    def _result(self, m: dict) -> None:
        m["pm25"] = round(self._mean(0) / 10, 1)
        m["pm10"] = round(self._mean(1) / 10, 1)
