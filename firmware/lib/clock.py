# Wall-clock time for readings. The RTC is trusted only once NTP has set it (or it kept
# running through a deep sleep or watchdog reset); before that readings carry their
# tick count and are back-dated when the time is known. An implausible clock is
# never published as truth.
from micropython import const

import hal
import log

MIN_EPOCH_MS = const(1735689600000)  # 2025-01-01: anything earlier is an RTC that was never set
_RESYNC_MS = const(6 * 3600 * 1000)
_RETRY_MIN_MS = const(2000)
_RETRY_MAX_MS = const(300000)


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

    def sync(self) -> bool:
        """One NTP attempt; on failure the next waits twice as long (2 s .. 5 min)."""
        self.tries += 1
        try:
            t = hal.ntp_time_ms(self.host)
            if t < MIN_EPOCH_MS:
                raise ValueError("implausible time %d" % t)
        except Exception as e:
            delay = min(_RETRY_MAX_MS, _RETRY_MIN_MS << min(self.tries, 8))
            self._next = hal.ticks_add(hal.ticks_ms(), delay)
            log.warn("ntp: attempt %d failed (%s), retry in %d ms" % (self.tries, e, delay))
            return False
        hal.set_rtc_ms(t)
        self.synced = True
        self.tries = 0
        self._next = hal.ticks_add(hal.ticks_ms(), _RESYNC_MS)
        log.info("ntp: time set %d" % t)
        return True
