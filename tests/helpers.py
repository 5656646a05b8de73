"""Small helpers shared by the tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from contract.influx import Influx

T = TypeVar("T")


def wait_until(fn: Callable[[], T], timeout: float = 30.0, interval: float = 0.2, what: str = "condition") -> T:
    """Poll `fn` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    last: T = fn()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last value {last!r})")
        time.sleep(interval)
        last = fn()
    return last


def count(influx: Influx, measurement: str, field: str, where: str = "") -> int:
    q = f'SELECT count("{field}") FROM "raw"."{measurement}"' + (f" WHERE {where}" if where else "")
    rows = influx.rows(q)
    return int(rows[0]["count"]) if rows else 0


def wait_count(influx: Influx, measurement: str, field: str, expected: int, timeout: float = 60.0, settle: bool = True) -> int:
    """Wait until the count reaches `expected`; with `settle`, then until the ingest holds nothing
    more, so that any excess would be stored too."""
    wait_until(lambda: count(influx, measurement, field) >= expected, timeout, what=f"{expected} {measurement}.{field} points")
    if settle:
        wait_ingest_idle(influx)
    return count(influx, measurement, field)


def wait_ingest_idle(influx: Influx, timeout: float = 30.0) -> None:
    """Wait for a stats report from every ingest worker, made after this call, that holds nothing
    un-written (`pending` 0): whatever the broker had delivered by now is stored or dead-lettered.

    The ingest writes its own counters to `ingest_stats` every `ingest_stats_interval_s`."""
    since_ms = int(time.time() * 1000)

    def idle() -> bool:
        workers = influx.rows(f'SELECT last("pending") FROM "raw"."ingest_stats" WHERE time > {since_ms}ms GROUP BY "worker"')
        known = influx.rows('SELECT last("pending") FROM "raw"."ingest_stats" GROUP BY "worker"')
        return bool(workers) and len(workers) >= len(known) and all(r["last"] == 0 for r in workers)

    wait_until(idle, timeout, what="a stats report of every ingest worker holding nothing")


def wait_len(fn: Callable[[], list[T]], n: int, timeout: float = 30.0, what: str = "items") -> list[T]:
    """Poll `fn` until it returns at least `n` items; returns them."""
    box: list[list[T]] = [[]]

    def ready() -> bool:
        box[0] = fn()
        return len(box[0]) >= n

    wait_until(ready, timeout, what=f"{n} {what} (have {len(box[0])})")
    return box[0]
