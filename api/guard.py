"""InfluxDB protected from the API: a bound on the queries in flight, and a breaker.

- At most `api_influx_concurrency` queries of a process are at InfluxDB at
  once (that many from the event loop, that many from the thread pool). A
  request that cannot get a slot within `api_query_wait_s` is answered 503
  (`InfluxBusy`): under a burst the API queues briefly, then sheds load;
  requests never pile up on a slow database.
- A query that fails for want of InfluxDB (timeout, refused connection, 5xx)
  opens the breaker for `api_influx_retry_s`: meanwhile queries are answered
  503 at once, without being sent. The current-values cache (api.live) keeps
  probing (its loads pass the breaker) and its first success closes it, so the
  API recovers by itself as soon as InfluxDB answers again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from api.ainflux import AsyncInflux, parse_series
from contract.influx import Influx, InfluxUnavailable


class InfluxBusy(InfluxUnavailable):
    """No query slot came free in time (the API's bound on concurrent queries); answered 503."""


class Breaker:
    """Open for `retry_s` after a failure; any success closes it."""

    def __init__(self, retry_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_s = retry_s
        self._clock = clock
        self._open_until = 0.0

    def allow(self) -> bool:
        return self._clock() >= self._open_until

    def failure(self) -> None:
        self._open_until = self._clock() + self.retry_s

    def success(self) -> None:
        self._open_until = 0.0

    def retry_after(self) -> float:
        return max(0.0, self._open_until - self._clock())


def _refuse(breaker: Breaker) -> InfluxUnavailable:
    return InfluxUnavailable(f"InfluxDB did not answer just now; not asked again for {breaker.retry_after():.1f} s")


class GuardedAsyncInflux(AsyncInflux):
    """AsyncInflux behind the slot bound and the breaker (one semaphore per event loop)."""

    def __init__(self, url: str, database: str, username: str | None, password: str | None, timeout: float,
                 breaker: Breaker, limit: int, wait_s: float) -> None:
        super().__init__(url, database, username, password, timeout)
        self.breaker = breaker
        self.limit = limit
        self.wait_s = wait_s
        self._slots: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}
        self.in_flight = 0

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        sem = self._slots.get(loop)
        if sem is None:
            sem = self._slots[loop] = asyncio.Semaphore(self.limit)
        return sem

    async def fetch(self, q: str, params: dict[str, Any] | None = None, epoch: str | None = "ms", timeout: float | None = None,
                    *, probe: bool = False) -> bytes:
        """As AsyncInflux.fetch; `probe` passes an open breaker (the cache's refreshes, which close it again)."""
        if not probe and not self.breaker.allow():
            raise _refuse(self.breaker)
        sem = self._semaphore()
        try:
            await asyncio.wait_for(sem.acquire(), self.wait_s)
        except TimeoutError:
            raise InfluxBusy(f"{self.limit} queries already waiting on InfluxDB") from None
        self.in_flight += 1
        try:
            out = await super().fetch(q, params, epoch, timeout=timeout)
        except InfluxUnavailable:
            self.breaker.failure()
            raise
        finally:
            self.in_flight -= 1
            sem.release()
        self.breaker.success()
        return out

    async def series(self, q: str, params: dict[str, Any] | None = None, epoch: str | None = "ms", timeout: float | None = None,
                     *, probe: bool = False) -> list[dict[str, Any]]:
        """As AsyncInflux.series, through the guard (`fetch`)."""
        return parse_series(await self.fetch(q, params, epoch, timeout, probe=probe))


class GuardedInflux(Influx):
    """The blocking client (thread-pool routes) behind the same kind of bound and the shared breaker."""

    def __init__(self, url: str, database: str, username: str | None, password: str | None, timeout: float,
                 breaker: Breaker, limit: int, wait_s: float) -> None:
        super().__init__(url, database, username, password, timeout)
        self.breaker = breaker
        self.wait_s = wait_s
        self._slots = threading.BoundedSemaphore(limit)
        self.limit = limit

    def query(self, q: str, params: dict[str, Any] | None = None, epoch: str = "ms", method: str = "GET",
              database: str | None = None) -> list[dict[str, Any]]:
        if not self.breaker.allow():
            raise _refuse(self.breaker)
        if not self._slots.acquire(timeout=self.wait_s):
            raise InfluxBusy(f"{self.limit} queries already waiting on InfluxDB")
        try:
            out = super().query(q, params, epoch, method, database)
        except InfluxUnavailable:
            self.breaker.failure()
            raise
        finally:
            self._slots.release()
        self.breaker.success()
        return out
