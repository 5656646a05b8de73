# Wall-clock time for readings. The RTC is trusted only once NTP has set it (or it kept
# running through a deep sleep or watchdog reset) and it is past the time floor kept in
# flash (the last time NTP answered: a clock can not be earlier); before that readings
# go to flash with the RTC's own count and are dated when the time is known. NTP is asked
# again every few hours, as the RTC drifts. The NTP exchange itself is online.sync
# (loaded when due).
from micropython import const

import hal

MIN_EPOCH_MS = const(1735689600000)  # 2025-01-01: anything earlier is an RTC that was never set
EPOCH2000_MS = const(946684800000)  # where the ESP32's RTC starts at power-up


class Clock:
    def __init__(self, host: str, floor_ms: int = 0) -> None:
        self.host = host
        self.floor = max(MIN_EPOCH_MS, floor_ms)
        self.synced = hal.rtc_time_ms() >= self.floor
        self.tries = 0
        self.offset = None  # true time - the RTC's own count, once NTP first answers after power-up
        self._next = hal.ticks_ms()  # first attempt as soon as the network is up

    def now_ms(self):
        """Milliseconds since 1970, or None while the time is unknown."""
        if not self.synced:
            return None
        t = hal.rtc_time_ms()
        if t < self.floor:  # the RTC lost its time (brown-out): stop trusting it
            self.synced = False
            self._next = hal.ticks_ms()
            return None
        return t

    def due(self) -> bool:
        # Once due it stays due until served, however long that takes (a ticks deadline
        # left alone for more than 2^29 ms would read as far in the future).
        now = hal.ticks_ms()
        if hal.ticks_diff(now, self._next) >= 0:
            self._next = now
            return True
        return False
