# Tipping-bucket rain gauge on a reed switch. Tips are counted by hardware, so none is
# lost to a blocking TLS handshake (a soft pin interrupt has a queue of 8) or to deep sleep:
# - awake: the ESP32's pulse counter (PCNT, machine.Counter) counts falling edges by
#   itself, whatever the CPU is doing. Its glitch filter reaches ~12.8 µs at most, no
#   debounce for a reed that bounces for milliseconds: the board puts an RC low-pass on the
#   gauge input (README). A port without machine.Counter falls back to the pin interrupt
#   with a software debounce (edges within `debounce_ms` of a counted tip are bounces).
# - in deep sleep (the counter stops): the gauge pin is an ext0 wake source (rainwake.py,
#   loaded only by a deep-sleep node: arm() before the sleep, tipped() at a tip's wake).
# A reading reports the tips since the previous reading (rain_mm): every tip falls in
# exactly one reading, so rain_mm over the time between two readings is the intensity,
# across deep sleep as across a long day awake.
import hal
from store import STATE

TIPS = STATE + "/tips"  # one byte per tip counted in deep sleep (or before one), not yet read


class Rain:
    def __init__(self, num: int, mm_per_tip: float, debounce_ms: int, counter=None) -> None:
        self.num = num
        self.mm_per_tip = mm_per_tip
        self.debounce_ms = debounce_ms
        self.tips = 0
        self.bounces = 0
        self.pin = hal.pin_in(num)
        self.counter = counter
        self.base = counter.value() if counter is not None else 0
        self._last = hal.ticks_add(hal.ticks_ms(), -debounce_ms)
        if counter is None:
            hal.irq_falling(self.pin, self._irq)

    def _irq(self, pin) -> None:
        now = hal.ticks_ms()
        d = hal.ticks_diff(now, self._last)
        if d >= self.debounce_ms or d < 0:  # d < 0: a last tip from before a ticks wrap
            self.tips += 1
            self._last = now
        else:
            self.bounces += 1

    def _count(self) -> int:
        """Tips since the last call."""
        if self.counter is not None:
            v = self.counter.value()
            n = v - self.base
            self.base = v
            return n
        # The last tip is forgotten once it is older than the debounce time: a tick count
        # left alone for more than 2^29 ms (6.2 days of dry weather on the ESP32, whose
        # ticks_ms wraps every 2^30 ms) would read as being in the future, and every tip
        # after it as a bounce.
        now = hal.ticks_ms()
        d = hal.ticks_diff(now, self._last)
        if d >= self.debounce_ms or d < 0:
            self._last = hal.ticks_add(now, -self.debounce_ms)
        n = self.tips
        self.tips -= n  # tips arriving meanwhile stay for the next reading
        return n

    def read(self, m: dict) -> None:
        n = self._count()
        try:
            with open(TIPS) as f:
                n += len(f.read())
            import os

            os.remove(TIPS)
        except OSError:
            pass
        m["rain_mm"] = round(n * self.mm_per_tip, 3)

    def arm(self, sleep_ms: int) -> None:
        """Before a deep sleep: see rainwake.arm."""
        from drivers import rainwake

        rainwake.arm(self, sleep_ms)
