"""Current values served from memory: a cache of snapshots kept fresh, with their age known.

Each key (a city) holds the snapshot its loader built and when the load
started. A request gets the snapshot at once while it is younger than
`refresh_s`; past that, the same request starts one reload in the
background (one at a time per key, however many requests see it due) and
still gets the snapshot it has; past `max_age_s` (the stated bound) it waits
up to `wait_s` for the reload (not while the last load failed: then the
answer is the stale snapshot, at once). A snapshot is never dropped for a failed
load: when InfluxDB does not answer, requests keep getting the last one,
marked stale (older than the bound) with its age; only a key never loaded
answers 503. The app also reloads every city every `refresh_s` in the
background (api.app), so a quiet city is as fresh as a busy one and the
breaker (api.guard) learns at once when InfluxDB comes back.

The clock is injected, so the rules are tested without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from contract.influx import InfluxError
from contract.logs import kv

log = logging.getLogger("nakhon.api.live")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Current(Generic[T]):
    value: T
    age_s: float  # since the load that built it started: the data is at least this fresh
    stale: bool  # older than the bound


@dataclass(slots=True)
class _Entry(Generic[T]):
    value: T
    loaded: float


class LiveCache(Generic[T]):
    def __init__(self, refresh_s: float, max_age_s: float, wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < refresh_s <= max_age_s:
            raise ValueError("refresh_s must be positive and at most max_age_s")
        self.refresh_s = refresh_s
        self.max_age_s = max_age_s
        self.wait_s = wait_s
        self._clock = clock
        self._entries: dict[str, _Entry[T]] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._failing: set[str] = set()

    def peek(self, key: str) -> T | None:
        """The snapshot `key` holds now, whatever its age (None if never loaded)."""
        e = self._entries.get(key)
        return None if e is None else e.value

    def age(self, key: str) -> float | None:
        e = self._entries.get(key)
        return None if e is None else self._clock() - e.loaded

    async def get(self, key: str, load: Callable[[], Awaitable[T]]) -> Current[T]:
        """The snapshot of `key` (see the module's note); InfluxError if there is none and none can be loaded."""
        e = self._entries.get(key)
        age = None if e is None else self._clock() - e.loaded
        if age is None or age >= self.refresh_s:
            task = self.refresh(key, load)
            if e is None:
                await asyncio.shield(task)  # the first load: nothing to serve without it (raises its error)
            elif age is not None and age > self.max_age_s and key not in self._failing:
                await asyncio.wait([task], timeout=self.wait_s)  # beyond the bound: a moment for a fresh one, unless loads fail
        e = self._entries.get(key)
        if e is None:
            raise InfluxError("no current values yet")
        age = self._clock() - e.loaded
        return Current(e.value, age, age > self.max_age_s)

    def refresh(self, key: str, load: Callable[[], Awaitable[T]]) -> asyncio.Task[None]:
        """Start reloading `key` unless a reload is under way; the task raises what the loader raised."""
        task = self._loading.get(key)
        if task is None:
            task = self._loading[key] = asyncio.get_running_loop().create_task(self._load(key, load))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)  # retrieved: no warning
        return task

    async def _load(self, key: str, load: Callable[[], Awaitable[T]]) -> None:
        started = self._clock()
        try:
            value = await load()
        except InfluxError as exc:
            if key not in self._failing:
                self._failing.add(key)
                log.warning("current values not refreshed; serving the last ones", extra=kv(key=key, error=str(exc)[:200]))
            raise
        finally:
            self._loading.pop(key, None)
        if key in self._failing:
            self._failing.discard(key)
            log.info("current values refreshed again", extra=kv(key=key))
        old = self._entries.get(key)
        if old is None or old.loaded <= started:
            self._entries[key] = _Entry(value, started)
