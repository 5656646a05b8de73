# ruff: noqa: SIM105, UP031  (MicroPython: no contextlib, no f-string habit on the device side)
# Hardware stand-ins for the MicroPython unix port, behind firmware/lib/hal.py.
#
# They behave like the parts on a real board: a UART that streams PMS5003/SDS011
# frames (some corrupt) into a bounded receive buffer, I2C devices answering like an
# SHT3x (with CRC) and a BME280 (registers, calibration, raw ADC values), an echo pin,
# a reed switch that bounces, ADCs, a Wi-Fi that can drop, NTP, an RTC that keeps time
# across resets, RTC memory, and a watchdog that resets the "chip" when not fed.
#
# Where the ESP32 differs from the unix port, they behave like the ESP32: ticks_ms wraps
# every 2^30 ms (ticks_diff/ticks_add with that period; a world can start the count just
# before the wrap), the Wi-Fi driver raises "Wifi Internal Error" on connect() while it is
# still connecting and can report "connected" on a link that passes nothing, flash can
# refuse writes (ENOSPC, EIO), the RTC starts at 2000-01-01 on power-up and drifts, and a
# brownout is reported as a power-on reset (as the ESP32 port maps ESP_RST_BROWNOUT).
# A power cut at run time loses RTC, RTC memory and everything not yet in flash.
#
# The device's world comes from world.json in the current folder (written by the test
# runner); control.json is re-read whenever it changes, for faults injected at run time.
# Device time runs `scale` times faster than real time, so ten minutes pass in seconds.
# A reset (watchdog, machine.reset, deep sleep) writes fakestate.json and exits with
# code 75: the runner starts the process again, like the chip rebooting.
import builtins
import json
import math
import socket
import sys
import time

RESET_EXIT = 75
_EPOCH2000_MS = 946684800000
_MASK = 0x3FFFFFFF  # the ESP32's ticks period is 2^30 ms (the unix port's is 2^62)
_HALF = 0x20000000
_real_open = builtins.open  # the fakes' own files; the firmware's go through _flash_open

_world = {}
_ctl = {}
_ctl_checked = -1000  # read control.json at the first call
_state = {}
_boot_ns = time.time_ns()
# Real time since boot in microseconds, accumulated from ticks_us: time.time_ns() is a
# big int on the unix port (heap on every call), these stay small ints.
_us = 0
_us_last = time.ticks_us()
_real0_us = 0  # real time from the world's start to this boot
_override = None  # ticks value seen by an interrupt handler for its edge
_socks = []
_wdt = None
_irqs = []  # (pin number, handler)
_ntp_fails = 0
_mem = None  # RTC memory written since boot (bytes)
_ticks0 = 0  # the tick count at boot (a world can start it just before the wrap)
_ppm = 0  # RTC drift, parts per million (fast if positive)
_used_at_start = 0  # bytes the device's files took when it started


def _load():
    global _world, _state, _ntp_fails
    try:
        with _real_open("world.json") as f:
            _world = json.load(f)
    except OSError:
        _world = {}
    try:
        with _real_open("fakestate.json") as f:
            _state = json.load(f)
    except (OSError, ValueError):
        _state = {}
    _ntp_fails = _world.get("ntp_fail_first", 0)
    _set_real0()
    global _used_at_start
    _used_at_start = _used(".")
    for uid in _world.get("uart", {}):
        _fifos[int(uid)] = _fifo()


def _set_real0() -> None:
    global _real0_us, _ticks0, _ppm
    _real0_us = (_boot_ns - _world.get("real0_ns", _boot_ns)) // 1000
    _ticks0 = int(_world.get("ticks0_ms", 0)) & _MASK
    _ppm = int(_world.get("rtc_ppm", 0))


def configure(world: dict) -> None:
    """For driver tests run inside one process: set the world directly."""
    global _world
    _world = world
    _set_real0()


def _save_state() -> None:
    if _mem is not None:
        _state["mem"] = _mem.decode()
    with _real_open("fakestate.json", "w") as f:
        json.dump(_state, f)


def _scale() -> int:
    # Whole numbers only: the fakes' time arithmetic stays in small ints and allocates no
    # heap, so the firmware's heap figures are the firmware's.
    return int(_world.get("scale", 1))


def ctl(key, default=None):
    # Re-read every 100 ms of real time (stat's whole-second mtime would miss quick changes).
    # A world with "control": false takes no run-time faults: nothing to read (the
    # benchmark's, so the fakes allocate nothing while the firmware is measured).
    global _ctl, _ctl_checked
    if not _world.get("control", True):
        return default
    now = _real_us() // 1000
    if now - _ctl_checked > 100:
        _ctl_checked = now
        try:
            with _real_open("control.json") as f:
                new = json.load(f)
            if new.get("rev") != _ctl.get("rev"):
                with _real_open("control.ack", "w") as f:  # tells the runner the fault is in place
                    f.write(str(new.get("rev")))
            _ctl = new
        except (OSError, ValueError):
            pass
    return _ctl.get(key, default)


# --- time ------------------------------------------------------------------------------
def _real_us() -> int:
    """Real microseconds since boot (callers come by far more often than ticks_us wraps)."""
    global _us, _us_last
    now = time.ticks_us()
    _us += time.ticks_diff(now, _us_last)
    _us_last = now
    return _us


def _device_ms() -> int:
    return _real_us() * _scale() // 1000


def ticks_ms() -> int:
    if _override is not None:
        return _override
    return (_ticks0 + _device_ms()) & _MASK


def ticks_add(t: int, delta: int) -> int:
    return (t + delta) & _MASK


def ticks_diff(a: int, b: int) -> int:
    """Signed a - b in the ESP32's 2^30 ms period: right while |a - b| < 2^29 ms (6.2 days)."""
    return ((a - b + _HALF) & _MASK) - _HALF


def world_ms() -> int:
    """The true wall-clock time of the fake world (what NTP answers)."""
    return _world.get("epoch0_ms", 1764000000000) + (_real0_us + _real_us()) * _scale() // 1000


def _real_sleep(ms: float) -> None:
    time.sleep_ms(max(1, int(ms)))


def sleep_ms(ms: int) -> None:
    # To the real microsecond: at 10^6x, a sleep that ended up to 1 ms early (whole real
    # milliseconds) came back up to 1,000 s of device time before its end.
    end = _real_us() + ms * 1000 // _scale()
    while True:
        _service()
        left = end - _real_us()
        if left <= 0:
            return
        time.sleep_us(min(left, 20000))


def wait(poller, ms: int) -> None:
    _service()
    real = ms // _scale()
    if poller is None:
        sleep_ms(ms)
    else:
        poller.poll(max(1, int(real)) if ms else 0)
    _service()


def _service() -> None:
    """Safe points: the watchdog, Wi-Fi drops, power faults and pin interrupts happen here."""
    _check_wdt()
    if _socks and (ctl("wifi_down") or wlan.zombie()):
        for s in _socks:
            try:
                s.close()
            except OSError:
                pass
        _socks.clear()
    _power_faults()
    _rain_edges()


def _power_faults() -> None:
    # Once per control revision: {"power": "cut"} (RTC, RTC memory and RAM lost) or
    # {"power": "brownout"} (a reset that keeps RTC and RTC memory, reported as power-on).
    what = ctl("power")
    rev = _ctl.get("rev")
    if not what or _state.get("power_rev") == rev:
        return
    if what == "cut":
        pm = _state.get("pm", {})
        _state.clear()
        _state["power_rev"] = rev
        now = world_ms()  # the PM sensors lose power too: they come back awake, in active mode
        _state["pm"] = {k: [1, 0, now, st[3] + (now - st[2] if st[0] else 0)] for k, st in pm.items()}
        global _mem
        _mem = None
        with _real_open("fakestate.json", "w") as f:
            json.dump(_state, f)
        print("FAKE power cut")
        sys.exit(RESET_EXIT)
    _state["power_rev"] = rev
    _reset("brownout")


# --- RTC, NTP, resets ---------------------------------------------------------------------
def rtc_time_ms() -> int:
    """The RTC: set by set_rtc_ms, running on through resets and deep sleep, off by
    `rtc_ppm`; on power-up (never set) it starts at 2000-01-01."""
    r = _state.get("rtc")
    if r is None:  # never set since power-up: the ESP32 RTC starts at 2000-01-01
        r = _state["rtc"] = [_EPOCH2000_MS, world_ms() - _device_ms()]
    d = world_ms() - r[1]
    return r[0] + d + d * _ppm // 1000000


def set_rtc_ms(t_ms: int) -> None:
    _state["rtc"] = [t_ms, world_ms()]
    _save_state()


def ntp_exchange(host: str) -> bytearray:
    """An NTP server's 48-byte answer carrying the world's time (its seconds field in the
    era the date falls in: it rolls over in 2036)."""
    global _ntp_fails
    if not wlan.isconnected() or wlan.zombie() or ctl("ntp_down"):
        raise OSError(110)
    if _ntp_fails > 0:
        _ntp_fails -= 1
        raise OSError(110)
    t = world_ms()
    if _world.get("ntp_bogus") and not _state.get("ntp_bogus_done"):
        _state["ntp_bogus_done"] = True
        t = 3600000  # a server answering 1970: must not be taken as the time
    secs = (t // 1000 + 2208988800) & 0xFFFFFFFF
    frac = (t % 1000 << 32) // 1000 + 1
    m = bytearray(48)
    m[0] = 0x24
    for i in range(4):
        m[40 + i] = secs >> (24 - 8 * i) & 0xFF
        m[44 + i] = frac >> (24 - 8 * i) & 0xFF
    return m


# machine.reset_cause() codes as on the ESP32
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
_CAUSES = {"power_on": 1, "hard": 2, "watchdog": 3, "deepsleep": 4, "soft": 5, "brownout": 1}


def machine_reset_cause() -> int:
    # The ESP32 port maps ESP_RST_BROWNOUT to PWRON_RESET: a brownout looks like a power-on.
    return _CAUSES.get(_state.get("reset", "power_on"), 1)


def _reset(cause: str) -> None:
    _state["reset"] = cause
    if cause != "deepsleep":
        _state.pop("wake", None)
    for c in _counters:  # tips while the fake restarts (real time, device seconds) go to the next boot's counter
        c.value()
        _state["rain_last"] = c.last
    _save_state()
    print("FAKE reset", cause)
    sys.exit(RESET_EXIT)


def reset() -> None:
    _reset("hard")


def deepsleep(ms: int) -> None:
    """The world moves on while the chip sleeps. The pulse counter stops: a rain tip in
    that time is lost, unless the gauge pin is a wake source (wake_on_pin), when the first
    tip wakes the chip (woke_by_pin() then says so)."""
    r = _world.get("rain")
    now = world_ms()
    end = now + ms
    _state["wake"] = "timer"
    last = _state.get("rain_last")  # (a boot that made no counter: the one woken by a tip)
    if _counters:
        c = _counters[0]
        seen = c.n
        c.value()
        # tips between the firmware's last look at the counter (its arm() before the sleep) and the sleep
        # itself never reach it: an instant on a board, device-seconds when a loaded machine stalls the VM
        # at the fake's scale. Counted apart, so a test can tell them from tips lost in the sleep.
        _state["rain_unread"] = _state.get("rain_unread", 0) + c.n - seen
        last = c.last
    if r and last is not None:
        period = int(r["tip_every_s"] * 1000)
        t = last + period
        if _wake_pin[0] == r["pin"] and t < end:
            end = t  # woken by the tip
            _state["wake"] = "pin"
            last = t
            _state["tips"] = _state.get("tips", 0) + 1
        else:
            while t <= end:  # tips nobody counts
                last = t
                _state["rain_lost"] = _state.get("rain_lost", 0) + 1
                t += period
        _state["rain_last"] = last
    _wake_pin[0] = None
    _real_sleep(max(0, end - now) // _scale())
    _state["reset"] = "deepsleep"
    _save_state()
    print("FAKE reset deepsleep", _state["wake"])
    sys.exit(RESET_EXIT)


_wake_pin = [None]


def wake_on_pin(num: int) -> None:
    # A world's rain gauge with "wake": false is wired to a pin that cannot wake the chip
    # (ext0 takes RTC GPIOs only): tips in deep sleep are then lost, as without the wake path.
    r = _world.get("rain") or {}
    if r.get("pin") != num or r.get("wake", True):
        _wake_pin[0] = num


def woke_by_pin() -> bool:
    return _state.get("reset") == "deepsleep" and _state.get("wake") == "pin"


def rtc_memory(data=None) -> bytes:
    # Kept in RAM and written out with the rest of the chip's state when it resets (every
    # reset goes through _reset), as RTC memory survives resets but not a power cut.
    global _mem
    if data is not None:
        _mem = data if type(data) is bytes else bytes(data)
        return data
    if _mem is not None:
        return _mem
    return _state.get("mem", "").encode()


def unique_id() -> bytes:
    return b"\x24\x0a\xc4\x00\x00\x01"


_HOST_FILES = ("console.log", "world.json", "control.json", "control.json.tmp", "control.ack", "fakestate.json", "feed.json")


def _used(path: str) -> int:
    import os

    n = 0
    for name in os.listdir(path):
        if path == "." and name in _HOST_FILES:
            continue  # the test runner's files, not the board's flash
        p = path + "/" + name
        st = os.stat(p)
        n += _used(p) if st[0] & 0x4000 else st[6]
    return n


def fs_free() -> int:
    """Free bytes of the board's file system: a plain 4 MB ESP32 leaves about 2 MB to
    LittleFS, of which the firmware itself takes a few hundred KB (`flash_free` at
    the start), less what the device has written since."""
    if not _world.get("control", True):  # the benchmark's world: the fakes allocate nothing while measured
        return int(_world.get("flash_free", 1500000)) - _used_at_start
    return int(_world.get("flash_free", 1500000)) - _used(".")


class _WDT:
    def __init__(self, timeout_ms: int) -> None:
        # Real-time floor: a loaded test machine must not fire it by accident.
        self.real_ms = max(timeout_ms // _scale(), _world.get("wdt_min_real_ms", 3000))
        self.feed()

    def feed(self) -> None:
        self.last = _real_us()


def WDT(timeout_ms: int):
    global _wdt
    _wdt = _WDT(timeout_ms)
    return _wdt


def _check_wdt() -> None:
    if _wdt is not None and (_real_us() - _wdt.last) // 1000 > _wdt.real_ms:
        _reset("watchdog")


def _hang() -> None:
    # A peripheral that never answers: the CPU is stuck here until the watchdog bites.
    while True:
        _real_sleep(10)
        _check_wdt()


# --- UART: laser PM sensors ------------------------------------------------------------------
class _UART:
    """A UART receiving a frame a second into a bounded FIFO (bytes beyond it are lost,
    as on the chip). Allocation-free, so heap figures measure the firmware, not the fake."""

    RXBUF = 1024

    def __init__(self, uid: int, spec: dict) -> None:
        self.uid = uid
        self.spec = spec
        # The FIFO belongs to the UART driver (ESP-IDF's heap on a board, not MicroPython's):
        # taken from what the fakes set aside at import, so it is not counted as firmware.
        self.rx, self.memo = _fifos.pop(uid, None) or _fifo()
        self.f = self.memo[0][2]
        self.head = 0
        self.count = 0
        self.t0 = ticks_ms()
        self.frames = 0
        self.corrupt = 0
        self.overflow = 0
        # The sensor's own state, kept across the chip's resets (the sensor has its own
        # supply): [awake, passive, woken at (world ms), laser on-time before that (ms)].
        # Power-up: awake, in active mode (both parts' defaults).
        pm = _state.setdefault("pm", {})
        st = pm.get(str(uid))
        if st is None:
            st = pm[str(uid)] = [1, 0, world_ms(), 0]
        self.st = st
        self.cmd = bytearray(19)  # the command being received
        self.cn = 0
        self.sent = 0  # frames sent on request (passive mode)
        self.warm_ms = int(spec.get("warm_ms", 30000 if spec["type"] == "pms5003" else 15000))

    def _frame(self, k: int, sent: int = -1) -> int:
        """Frame k (the sensor's k-th measurement, one a second) into self.f; returns its
        length. `sent`: frames sent so far, where line corruption is counted (k in active
        mode). A frame is made once per value and kept (memo slot: good frames by k % 5,
        the corrupt one apart), so the fake allocates nothing per frame."""
        s = self.spec
        every = s.get("corrupt_every", 0)
        n = k if sent < 0 else sent
        bad = every and n % every == every - 1
        pm25 = s.get("corrupt_value", 999) if bad else s.get("pm25", 30) + k % 5  # a corrupt one carries a value that must never get out
        if not bad and world_ms() - self.st[2] < self.warm_ms:
            pm25 = pm25 // 2  # still warming up: the fan is not at speed, too little air passes the laser
        slot = self.memo[5 if bad else k % 5]
        f = self.f = slot[2]
        if slot[0] != pm25 or slot[1] != s["type"]:
            slot[0], slot[1], slot[3] = pm25, s["type"], self._make(f, pm25, bad)
        if bad:
            self.corrupt += 1
            print("FAKE uart%d corrupt=%d frames=%d" % (self.uid, self.corrupt, n + 1))
        return slot[3]

    def _make(self, f, pm25, bad) -> int:
        s = self.spec
        if s["type"] == "pms5003":
            f[0], f[1], f[2], f[3] = 0x42, 0x4D, 0, 28
            vals = (int(pm25 * 0.7), int(pm25 + 0.5), int(pm25 * 1.4))  # whole µg/m³, as the sensor reports
            for i in range(13):
                w = vals[i % 3] if i < 6 else (0x9700 if i == 12 else 0)
                f[4 + 2 * i] = w >> 8
                f[5 + 2 * i] = w & 0xFF
            c = 0
            for i in range(30):
                c += f[i]
            f[30] = c >> 8 & 0xFF
            f[31] = (c & 0xFF) ^ (0x5A if bad else 0)
            n = 32
        else:
            v25, v10 = int(pm25 * 10 + 0.5), int(pm25 * 14)
            f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7] = 0xAA, 0xC0, v25 & 0xFF, v25 >> 8, v10 & 0xFF, v10 >> 8, 0x12, 0x34
            f[8] = ((f[2] + f[3] + f[4] + f[5] + f[6] + f[7]) & 0xFF) ^ (0x5A if bad else 0)
            f[9] = 0xAB
            n = 10
        return n

    def _push(self, b: int) -> None:
        if self.count < self.RXBUF:
            self.rx[(self.head + self.count) % self.RXBUF] = b
            self.count += 1
        else:
            self.overflow += 1

    def _gen(self) -> None:
        due = ticks_diff(ticks_ms(), self.t0) // 1000  # one frame a second
        if ctl("uart_silent") or not self.st[0] or self.st[1]:  # silent, asleep, or passive (frames on request only)
            self.frames = due
            return
        while self.frames < due:
            n = self._frame(self.frames)
            self.frames += 1
            if self.spec.get("noise"):
                self._push(0x00)  # line noise, and a false header byte
                self._push(0x42)
            for i in range(n):
                self._push(self.f[i])

    def any(self) -> int:
        self._gen()
        return self.count

    def readinto(self, buf):
        self._gen()
        n = min(len(buf), self.count)
        if not n:
            return None
        for i in range(n):
            buf[i] = self.rx[(self.head + i) % self.RXBUF]
        self.head = (self.head + n) % self.RXBUF
        self.count -= n
        return n

    def write(self, data) -> int:
        # Commands, byte by byte as the sensor's MCU receives them; a bad checksum is ignored.
        pms = self.spec["type"] == "pms5003"
        size = 7 if pms else 19
        c = self.cmd
        for b in data:
            if self.cn == 0 and b != (0x42 if pms else 0xAA):
                continue
            if self.cn == 1 and b != (0x4D if pms else 0xB4):
                self.cn = 0
                continue
            c[self.cn] = b
            self.cn += 1
            if self.cn == size:
                self.cn = 0
                self._command(pms)
        return len(data)

    def _command(self, pms: bool) -> None:
        c = self.cmd
        if pms:
            if (c[0] + c[1] + c[2] + c[3] + c[4]) & 0xFFFF != c[5] << 8 | c[6]:
                return
            if c[2] == 0xE4:
                self._power(c[4] == 1)
            elif c[2] == 0xE1 and self.st[0]:
                self.st[1] = 1 if c[4] == 0 else 0
            elif c[2] == 0xE2 and self.st[0] and self.st[1] and not ctl("uart_silent"):
                self.sent += 1  # the latest measurement (updated once a second)
                n = self._frame(ticks_diff(ticks_ms(), self.t0) // 1000, self.sent)
                for i in range(n):
                    self._push(self.f[i])
            return
        s = 0
        for i in range(2, 17):
            s += c[i]
        if c[18] != 0xAB or s & 0xFF != c[17]:
            return
        if c[2] == 0x06 and c[3] == 1:  # set sleep / work
            self._power(c[4] == 1)
            r = (0xAA, 0xC5, 0x06, 0x01, c[4], 0x00, 0x12, 0x34)
            for b in r:
                self._push(b)
            self._push((0x06 + 0x01 + c[4] + 0x12 + 0x34) & 0xFF)
            self._push(0xAB)

    def _power(self, on: bool) -> None:
        st = self.st
        if on and not st[0]:
            st[0], st[2] = 1, world_ms()
            self.frames = ticks_diff(ticks_ms(), self.t0) // 1000  # nothing streamed while it slept
        elif not on and st[0]:
            st[0], st[3] = 0, st[3] + world_ms() - st[2]

    def laser_ms(self) -> int:
        st = self.st
        return st[3] + (world_ms() - st[2] if st[0] else 0)


def laser_ms() -> int:
    """Laser on-time of every PM sensor of the world so far (device ms), as a meter on the part would count it."""
    t = 0
    now = world_ms()
    for st in _state.get("pm", {}).values():
        t += st[3] + (now - st[2] if st[0] else 0)
    return t


def _fifo():
    # (receive FIFO, frame memo: [value, type, frame, length] for k % 5 and the corrupt frame)
    return bytearray(_UART.RXBUF), [[None, None, bytearray(34), 0] for _ in range(6)]


_fifos = {}  # uart id -> _fifo(), made by _load for the world's UARTs


def uart(uid: int, baud: int, rx: int, tx: int):
    return _UART(uid, _world["uart"][str(uid)])


# --- I2C: SHT3x and BME280 --------------------------------------------------------------------
def _crc8(data) -> int:
    crc = 0xFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


# A real chip's calibration words (BME280 datasheet layout).
BME_CAL = (28485, 26735, 50, 36738, -10635, 3024, 7580, -129, -7, 9900, -10230, 4285, 75, 362, 0, 313, 50, 30)


def bme_float(cal, adc_t, adc_p, adc_h):
    """The datasheet's floating-point compensation (section 8.1), used to invert."""
    t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9, h1, h2, h3, h4, h5, h6 = cal
    v1 = (adc_t / 16384.0 - t1 / 1024.0) * t2
    v2 = (adc_t / 131072.0 - t1 / 8192.0) ** 2 * t3
    t_fine = v1 + v2
    t = t_fine / 5120.0
    v1 = t_fine / 2.0 - 64000.0
    v2 = v1 * v1 * p6 / 32768.0
    v2 = v2 + v1 * p5 * 2.0
    v2 = v2 / 4.0 + p4 * 65536.0
    v1 = (p3 * v1 * v1 / 524288.0 + p2 * v1) / 524288.0
    v1 = (1.0 + v1 / 32768.0) * p1
    p = 1048576.0 - adc_p
    p = (p - v2 / 4096.0) * 6250.0 / v1
    v1 = p9 * p * p / 2147483648.0
    v2 = p * p8 / 32768.0
    p = p + (v1 + v2 + p7) / 16.0
    h = t_fine - 76800.0
    h = (adc_h - (h4 * 64.0 + h5 / 16384.0 * h)) * (h2 / 65536.0 * (1.0 + h6 / 67108864.0 * h * (1.0 + h3 / 67108864.0 * h)))
    h = h * (1.0 - h1 * h / 524288.0)
    return t, p / 100.0, min(100.0, max(0.0, h))


def _search(fn, target, lo, hi, rising=True):
    while lo < hi:
        mid = (lo + hi) // 2
        v = fn(mid)
        if (v < target) == rising:
            lo = mid + 1
        else:
            hi = mid
    return lo


class _I2C:
    def __init__(self, bus: int) -> None:
        self.bus = bus
        self.devs = {}
        for a, d in _world.get("i2c", {}).get(str(bus), {}).items():
            self.devs[int(a)] = d
        self.reads = {}
        self.regs = {}
        self.sht = {}  # addr -> (temp_c, rh, the SHT3x answers it cycles through), made once per value

    def _dev(self, addr: int) -> dict:
        hang = ctl("hang_i2c") or ()
        if addr in hang:
            _hang()
        d = self.devs.get(addr)
        if d is None or addr in (ctl("absent_i2c") or ()):
            raise OSError(19)  # ENODEV: no ACK on the bus
        return d

    def _sht_answer(self, d: dict, k: int) -> bytearray:
        t = d.get("temp_c", 30.0) + (k % 3) * 0.1
        rh = d.get("rh", 60.0)
        rt = int((t + 45) * 65535 / 175 + 0.5)
        rr = int(rh * 65535 / 100 + 0.5)
        w = bytearray([rt >> 8, rt & 0xFF])
        w.append(_crc8(w))
        w += bytes([rr >> 8, rr & 0xFF])
        w.append(_crc8(w[3:5]))
        return w

    # SHT3x (its answers are made once and reused: the fake allocates nothing per reading)
    def writeto(self, addr: int, buf) -> int:
        d = self._dev(addr)
        if d["type"] == "sht3x" and len(buf) == 2 and buf[0] == 0x24 and buf[1] == 0:
            k = self.reads.get(addr, 0) + 1
            self.reads[addr] = k
            made = self.sht.get(addr)
            if made is None or made[0] != d.get("temp_c") or made[1] != d.get("rh"):  # new values fed in
                made = (d.get("temp_c"), d.get("rh"), [self._sht_answer(d, i) for i in range(3)] + [bytearray(6)])
                self.sht[addr] = made
            answers = made[2]
            w = answers[k % 3]
            every = d.get("bad_crc_every", 0)
            if every and k % every == 0:
                bad = answers[3]
                for i in range(6):
                    bad[i] = w[i]
                bad[5] ^= 0x01
                w = bad
            self.regs[addr] = w
        return len(buf)

    def readfrom_into(self, addr: int, buf) -> None:
        self._dev(addr)
        data = self.regs.get(addr)
        for i in range(len(buf)):
            buf[i] = data[i] if data is not None and i < len(data) else 0xFF

    # BME280
    def _bme_regs(self, addr: int, d: dict) -> bytearray:
        r = self.regs.get(addr)
        if r is None:
            r = bytearray(256)
            r[0xD0] = 0x60
            c = BME_CAL
            import struct

            r[0x88:0xA0] = struct.pack("<HhhHhhhhhhhh", *c[:12])
            r[0xA1] = c[12]
            r[0xE1:0xE3] = struct.pack("<h", c[13])
            r[0xE3] = c[14]
            h4, h5 = c[15], c[16]
            r[0xE4] = (h4 >> 4) & 0xFF
            r[0xE5] = (h4 & 0x0F) | ((h5 & 0x0F) << 4)
            r[0xE6] = (h5 >> 4) & 0xFF
            r[0xE7] = c[17] & 0xFF
            r[0xF7:0xFF] = b"\x80\x00\x00\x80\x00\x00\x80\x00"  # reset values: no measurement yet
            self.regs[addr] = r
        return r

    def writeto_mem(self, addr: int, reg: int, buf) -> None:
        d = self._dev(addr)
        r = self._bme_regs(addr, d)
        r[reg] = buf[0]
        if reg == 0xF4 and buf[0] & 0x03 == 0x01:  # forced mode: measure once
            t, p, h = d.get("temp_c", 30.0), d.get("pressure_hpa", 1008.0), d.get("rh", 70.0)
            c = BME_CAL
            at = _search(lambda a: bme_float(c, a, 400000, 30000)[0], t, 0, 1 << 20)
            ap = _search(lambda a: bme_float(c, at, a, 30000)[1], p, 0, 1 << 20, rising=False)
            ah = _search(lambda a: bme_float(c, at, ap, a)[2], h, 0, 1 << 16)
            r[0xF7:0xFF] = bytes([ap >> 12, (ap >> 4) & 0xFF, (ap & 0x0F) << 4, at >> 12, (at >> 4) & 0xFF, (at & 0x0F) << 4, ah >> 8, ah & 0xFF])

    def readfrom_mem(self, addr: int, reg: int, n: int) -> bytes:
        d = self._dev(addr)
        return bytes(self._bme_regs(addr, d)[reg : reg + n])

    def readfrom_mem_into(self, addr: int, reg: int, buf) -> None:
        buf[:] = self.readfrom_mem(addr, reg, len(buf))


def i2c(bus: int, scl: int, sda: int, freq: int = 100000):
    return _I2C(bus)


# --- pins: ultrasonic echo, rain gauge -------------------------------------------------------
class _Pin:
    def __init__(self, num: int) -> None:
        self.num = num
        self.v = 1

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v
        return None


def pin_in(num: int, pull_up: bool = True):
    return _Pin(num)


def pin_out(num: int):
    return _Pin(num)


def irq_falling(pin, handler) -> None:
    _irqs.append((pin.num, handler, [ticks_ms()]))


_pings = [0]


def _air() -> tuple:
    """The air between the ranger and the water: the world's ultrasonic air_c/rh, else what
    its temperature/humidity sensor reads (the air the node measures), else 30 °C, dry."""
    u = _world.get("ultrasonic", {})
    t, rh, p = u.get("air_c"), u.get("rh"), u.get("pressure_hpa", 1013.25)
    for bus in _world.get("i2c", {}).values():
        for d in bus.values():
            t = d.get("temp_c") if t is None else t
            rh = d.get("rh") if rh is None else rh
    return (30.0 if t is None else t), (rh or 0.0), p


def sound_speed(t_c: float, rh: float, p_hpa: float) -> float:
    """The speed of sound (m/s) from first principles: an ideal mix of dry air (γ 1.400,
    28.965 g/mol) and water vapour (γ 1.330, 18.015 g/mol) at the vapour's mole fraction
    (saturation pressure by Buck's equation), c = sqrt(γ R T / M)."""
    p_sat = 6.1121 * math.exp((18.678 - t_c / 234.5) * (t_c / (257.14 + t_c)))
    x = rh / 100 * p_sat / p_hpa
    cv = (1 - x) / 0.400 + x / 0.330  # Cv / R of the mix
    gamma = (cv + 1) / cv
    m = ((1 - x) * 28.965 + x * 18.015) / 1000
    return math.sqrt(gamma * 8.314462 * (t_c + 273.15) / m)


def pulse_us(trig, echo, timeout_us: int) -> int:
    """The echo's round trip through the world's air. Water closer than the ranger's blind
    zone (`blind_cm`) is heard as the transducer's own ringing: a short echo (`ring_cm`)."""
    u = _world.get("ultrasonic", {})
    if u.get("absent") or ctl("ultrasonic_absent"):
        return -1  # machine.time_pulse_us: timeout waiting for the echo
    us_cm = 20000 / sound_speed(*_air())
    echoes = u.get("echoes_cm")  # a cycle of pings, None for a missed echo
    if echoes:
        cm = echoes[_pings[0] % len(echoes)]
        _pings[0] += 1
        return -1 if cm is None else int(cm * us_cm + 0.5)
    cm = u.get("distance_cm", 150)
    if cm < u.get("blind_cm", 20):
        _pings[0] += 1
        return int((u.get("ring_cm", 12) + _pings[0] % 3) * us_cm)
    return int(cm * us_cm + 0.5)


class _Counter:
    """machine.Counter on the rain gauge's pin: counts the world's tips (one every
    `tip_every_s`) while the chip runs, whatever the firmware is doing. The board's RC
    filter keeps the reed's bounces off it (README), so it sees one edge per tip.
    At a boot it resumes from the last tip accounted before the reset, as if the reboot
    took no time (the fake's restart takes real time, which is device seconds at scale;
    a board boots in about a second); after a power cut it starts from now."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.n = 0
        last = _state.get("rain_last")
        self.last = world_ms() if last is None else last

    def value(self) -> int:
        period = int(self.spec["tip_every_s"] * 1000)
        now = world_ms()
        while now - self.last >= period:
            self.last += period
            self.n += 1
            _state["tips"] = _state.get("tips", 0) + 1
        return self.n


_counters = []


def counter(num: int):
    r = _world.get("rain")
    if not r or r.get("pin") != num or r.get("counter") is False:  # "counter": false: a port without machine.Counter
        return None
    c = _Counter(r)
    _counters.append(c)
    return c


def _rain_edges() -> None:
    """A tip every `tip_every_s`, each followed by `bounces` contact bounces 2 ms apart."""
    global _override
    r = _world.get("rain")
    if not r or not _irqs:
        return
    now = ticks_ms()
    for num, handler, last in _irqs:
        if num != r["pin"]:
            continue
        period = int(r["tip_every_s"] * 1000)
        while ticks_diff(now, last[0]) >= period:
            last[0] = ticks_add(last[0], period)
            for b in range(1 + r.get("bounces", 0)):
                _override = ticks_add(last[0], 2 * b)
                try:
                    handler(None)
                finally:
                    _override = None
            _state["tips"] = _state.get("tips", 0) + 1


# --- ADC: microphone, battery divider ---------------------------------------------------------
class _ADC:
    def __init__(self, spec: dict, num: int = -1) -> None:
        self.spec = spec
        self.num = num
        self.k = 0

    def read_u16(self) -> int:
        if self.num in (ctl("adc_absent") or ()):
            return 0  # a microphone unplugged: the input sits at ground
        s = self.spec
        self.k += 1
        rms = 10 ** ((s.get("db", 60) - s.get("cal_db", 28.0)) / 20)
        return int(32768 + rms * math.sqrt(2) * math.sin(self.k * 0.7) + 0.5)

    def read_uv(self) -> int:
        if self.spec.get("adc2") and wlan.requested:
            raise OSError(263)  # ESP_ERR_TIMEOUT: ADC2 is taken by the Wi-Fi driver
        s = self.spec
        if "dba" in s:  # an A-weighted sound level module: volts in proportion to dB(A);
            lv = s["dba"]  # a list: the level steps through it, `step_s` device-seconds each
            if type(lv) is list:
                lv = lv[world_ms() // int(s.get("step_s", 10) * 1000) % len(lv)]
            return int(lv / s.get("dba_per_v", 50) * 1000000)
        return int(s.get("volts", 3.9) / s.get("divider", 2.0) * 1000000)


def adc(num: int):
    return _ADC(_world.get("adc", {}).get(str(num), {}), num)


# --- Wi-Fi and sockets ---------------------------------------------------------------------------
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010


class _WLAN:
    """network.WLAN(STA_IF) of the ESP32 port: connect() starts an association that the
    driver retries by itself (reconnects forever) until disconnect(); connect() again
    while it is at it raises "Wifi Internal Error". {"wifi_down": true} takes the access
    point away; {"wifi_zombie": true} leaves the station associated ("connected") while
    nothing passes (sockets die, new ones time out) until it re-associates;
    {"wifi_zombie": "uplink"}: the same, and no re-association helps."""

    def __init__(self) -> None:
        self.requested = False
        self.good = False
        self.at = None  # ticks when the association completes
        self.zombie_rev = None  # control revision of a zombie link already healed by reassociation
        self.errors = 0

    def active(self, on=None):
        return True

    def connect(self, ssid: str, password: str) -> None:
        if self.requested and not self.isconnected():
            self.errors += 1
            raise OSError("Wifi Internal Error")
        w = _world.get("wifi", {})
        self.requested = True
        self.good = ssid == w.get("ssid", ssid) and password == w.get("password", password)
        self.at = None

    def disconnect(self) -> None:
        self.requested = False
        self.at = None
        if ctl("wifi_zombie") and ctl("wifi_zombie") != "uplink":
            self.zombie_rev = _ctl.get("rev")  # a fresh association gets a working link
            # ("uplink": the access point's own uplink is dead: no association helps)

    def isconnected(self) -> bool:
        if ctl("wifi_crash"):  # a driver bug the firmware does not expect: an exception it does not catch
            raise RuntimeError("wifi driver bug")
        if not self.requested or not self.good or ctl("wifi_down"):
            self.at = None
            return False
        if self.at is None:
            self.at = ticks_add(ticks_ms(), _world.get("wifi", {}).get("assoc_ms", 2000))
        return ticks_diff(ticks_ms(), self.at) >= 0

    def zombie(self) -> bool:
        return bool(ctl("wifi_zombie")) and self.zombie_rev != _ctl.get("rev") and self.isconnected()

    def status(self, param=None):
        if param == "rssi":
            return _world.get("rssi", -67)
        if self.isconnected():
            return STAT_GOT_IP
        return STAT_CONNECTING if self.requested else STAT_IDLE


wlan = _WLAN()


def connect(host: str, port: int, tls: bool, verify: bool, cadata, timeout_ms: int):
    if not wlan.isconnected():
        raise OSError(113)  # EHOSTUNREACH
    if wlan.zombie():
        sleep_ms(timeout_ms)
        raise OSError(110)  # ETIMEDOUT: associated, but nothing gets through
    addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
    s = socket.socket()
    s.settimeout(max(timeout_ms / _scale(), 2000) / 1000)
    try:
        s.connect(addr)
        if tls:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
            for der in cadata or ():  # every CA of the bundle (one DER each)
                ctx.load_verify_locations(cadata=der)
            s = ctx.wrap_socket(s, server_hostname=host)
    except Exception:
        s.close()
        raise
    _socks[:] = [s]  # one link at a time; closed ones must not be kept alive here
    return s


# --- flash ----------------------------------------------------------------------------------------
class PowerCut(BaseException):
    """The power went at a write step (BaseException: no `except Exception` stops it)."""


_cut = [0, 0]  # [write steps so far, the step at which the power goes (0: never)]


def cut_at(step: int) -> None:
    """Power cut injection for in-VM tests: count the firmware's write steps (opening a
    file for writing, each write, each close) from now, and cut the power at `step`.
    The harsh model (FAT-like, harsher than LittleFS, which keeps a file's old content
    until it is closed): what was written before the cut is on flash, a write cut in the
    middle leaves its first half, a file opened with "w" is already empty."""
    _cut[0] = 0
    _cut[1] = step


def write_steps() -> int:
    return _cut[0]


def _step() -> bool:
    _cut[0] += 1
    return _cut[1] > 0 and _cut[0] == _cut[1]


class _CutFile:
    def __init__(self, f) -> None:
        self.f = f

    def write(self, data):
        if _step():
            self.f.write(data[: len(data) // 2])
            self.f.close()
            raise PowerCut()
        return self.f.write(data)

    def close(self) -> None:
        if _step():
            self.f.close()
            raise PowerCut()
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is PowerCut:
            return
        self.close()


def _flash_open(path, mode="r", *args):
    """The firmware's open(): {"flash": "full"} makes every write fail with ENOSPC,
    {"flash": "eio"} with EIO (a worn or failing flash), as LittleFS reports them; with
    cut_at() armed, writes are counted steps where the power can go."""
    if "w" in mode or "a" in mode or "+" in mode:
        e = ctl("flash")
        if e:
            raise OSError(28 if e == "full" else 5)
        if _cut[1]:
            f = _CutFile(_real_open(path, mode, *args))
            if _step():
                f.f.close()
                raise PowerCut()
            return f
    return _real_open(path, mode, *args)


builtins.open = _flash_open
_load()
print("FAKE clock world-ticks=%d" % (world_ms() - ticks_ms()))  # a test's true time of a console line
