# Wall-clock time for readings. The RTC is trusted only once NTP has set it (or it kept
# running through a deep sleep or watchdog reset); before that readings carry their
# tick count and are back-dated when the time is known. An implausible clock is
# never published as truth. The NTP exchange itself is online.sync (loaded when due).
from micropython import const

import hal

MIN_EPOCH_MS = const(1735689600000)  # 2025-01-01: anything earlier is an RTC that was never set


class Clock:
    def __init__(self, host: str) -> None:
        self.host = host
        self.synced = hal.rtc_time_ms() >= MIN_EPOCH_MS
        self.tries = 0
        self._next = hal.ticks_ms()  # first attempt as soon as the network is up

    def now_ms(self):
        """Milliseconds since 1970, or None while the time is unknown."""
        if not self.synced:
            return None
        t = hal.rtc_time_ms()
        if t < MIN_EPOCH_MS:  # the RTC lost its time (brown-out): stop trusting it
            self.synced = False
            return None
        return t

    def due(self) -> bool:
        return hal.ticks_diff(hal.ticks_ms(), self._next) >= 0
