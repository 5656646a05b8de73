"""Simulated time: real time, accelerated, or a fixed past window (backfill).

Accelerated time starts in the past and runs `speed` times faster than the
wall clock until it catches up with now; from then on it is real time, so a
device never stamps a reading in the future (the ingest would refuse it).
"""

from __future__ import annotations

import asyncio
import time


class Clock:
    def __init__(self, start: float | None = None, speed: float = 1.0, origin: float | None = None) -> None:
        if speed < 1:
            raise ValueError("speed must be >= 1")
        self.wall0 = time.time()
        self.mono0 = time.monotonic()
        self.start = self.wall0 if start is None else float(start)
        if self.start > self.wall0 + 1:
            raise ValueError("simulated time cannot start in the future")
        self.speed = float(speed)
        # where readings' fault windows are measured from: the start, or a backfill's first day
        self.origin = self.start if origin is None else float(origin)

    def now(self) -> float:
        e = time.monotonic() - self.mono0
        return min(self.start + e * self.speed, self.wall0 + e)

    def rel(self, t: float | None = None) -> float:
        """Simulated seconds since the run started."""
        return (self.now() if t is None else t) - self.start

    def wall_delay(self, t: float) -> float:
        """Wall seconds until simulated time reaches `t`."""
        needed = max((t - self.start) / self.speed, t - self.wall0)
        return needed - (time.monotonic() - self.mono0)

    async def sleep_until(self, t: float) -> None:
        delay = self.wall_delay(t)
        if delay > 0:
            await asyncio.sleep(delay)
