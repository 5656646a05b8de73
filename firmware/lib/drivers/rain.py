# Tipping-bucket rain gauge on a reed switch: an interrupt counts falling edges, and
# edges within `debounce_ms` of a counted tip are the contact bouncing, not rain.
import hal


class Rain:
    def __init__(self, pin, mm_per_tip: float, debounce_ms: int) -> None:
        self.mm_per_tip = mm_per_tip
        self.debounce_ms = debounce_ms
        self.tips = 0
        self.bounces = 0
        self._last = hal.ticks_add(hal.ticks_ms(), -debounce_ms)
        self.pin = pin
        hal.irq_falling(pin, self._irq)

    def _irq(self, pin) -> None:
        now = hal.ticks_ms()
        d = hal.ticks_diff(now, self._last)
        if d >= self.debounce_ms or d < 0:  # d < 0: a last tip from before a ticks wrap
            self.tips += 1
            self._last = now
        else:
            self.bounces += 1

    def read(self, m: dict) -> None:
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
        m["rain_mm"] = round(n * self.mm_per_tip, 3)
