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
        if hal.ticks_diff(now, self._last) >= self.debounce_ms:
            self.tips += 1
            self._last = now
        else:
            self.bounces += 1

    def read(self, m: dict) -> None:
        n = self.tips
        self.tips -= n  # tips arriving meanwhile stay for the next reading
        m["rain_mm"] = round(n * self.mm_per_tip, 3)
