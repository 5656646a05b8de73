"""Make a batch durable: InfluxDB if it answers, the spool if it does not.

A 400 (partial write) has already stored the good lines; the bad ones are
found by bisection (re-writing good lines is harmless: writes are
idempotent) and set aside in the dead-letter store with InfluxDB's reason.
"""

from __future__ import annotations

import logging
import threading
import time

from contract.influx import Influx, InfluxRejected, InfluxUnavailable
from contract.payload import Reason, Rejection
from ingest import deadletter
from ingest.deadletter import DeadLetterStore
from ingest.spool import Spool
from ingest.stats import Stats

log = logging.getLogger("nakhon.ingest.writer")


class DurableWriter:
    def __init__(self, influx: Influx, spool: Spool, dead: DeadLetterStore, stats: Stats) -> None:
        self.influx = influx
        self.spool = spool
        self.dead = dead
        self.stats = stats
        self._lock = threading.Lock()  # spool order: one writer of the spool at a time
        with stats.lock:
            stats.spool_depth = spool.lines

    def commit(self, lines: list[str]) -> None:
        """Returns only once `lines` are in InfluxDB, the spool or the dead letters."""
        if not lines:
            return
        with self._lock:
            if len(self.spool):
                self._to_spool(lines)  # keep order behind what waits already
                return
        try:
            self._write(lines)
        except InfluxUnavailable as exc:
            log.warning("influxdb unavailable, spooling", extra={"fields": {"points": len(lines), "error": str(exc)[:200]}})
            with self._lock:
                self._to_spool(lines)

    def _to_spool(self, lines: list[str]) -> None:
        self.spool.append(lines)
        with self.stats.lock:
            self.stats.points_spooled += len(lines)
            self.stats.spool_depth = self.spool.lines

    def _write(self, lines: list[str]) -> None:
        """Write, setting aside lines InfluxDB refuses; raises InfluxUnavailable."""
        t0 = time.perf_counter()
        try:
            self.influx.write(lines)
        except InfluxRejected as exc:
            with self.stats.lock:
                self.stats.influx_errors += 1
            self._bisect(lines, exc)
            return
        except InfluxUnavailable:
            with self.stats.lock:
                self.stats.influx_errors += 1
            raise
        with self.stats.lock:
            self.stats.write_ms.append((time.perf_counter() - t0) * 1000)
            self.stats.points_written += len(lines)
            self.stats.batches += 1
            self.stats.batch_points_total += len(lines)

    def _bisect(self, lines: list[str], exc: InfluxRejected) -> None:
        if len(lines) == 1:
            log.error("influxdb refused a line", extra={"fields": {"line": lines[0][:300], "error": exc.message[:300]}})
            rej = Rejection(Reason.STORAGE_REJECTED, exc.message[:500])
            self.dead.append([deadletter.record("(line-protocol)", lines[0].encode(), [rej])])
            with self.stats.lock:
                self.stats.readings_rejected += 1
                self.stats.rejected_by_reason[Reason.STORAGE_REJECTED] += 1
            return
        mid = len(lines) // 2
        for half in (lines[:mid], lines[mid:]):
            try:
                self.influx.write(half)
            except InfluxRejected as sub:
                self._bisect(half, sub)
                continue
            with self.stats.lock:
                self.stats.points_written += len(half)

    def drain_spool(self) -> bool:
        """Replay spooled batches oldest first; False when InfluxDB is still away."""
        while True:
            with self._lock:
                item = self.spool.oldest()
                if item is None:
                    with self.stats.lock:
                        self.stats.spool_depth = 0
                    return True
                path, lines = item
                try:
                    self._write(lines)
                except InfluxUnavailable:
                    return False
                self.spool.remove(path, len(lines))
                with self.stats.lock:
                    self.stats.spool_depth = self.spool.lines
                log.info("replayed spooled batch", extra={"fields": {"points": len(lines), "spool_depth": self.spool.lines}})
