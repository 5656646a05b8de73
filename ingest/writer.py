"""Make a batch durable: InfluxDB if it answers, the spool if it does not.

What InfluxDB answers decides (contract.influx.classify):
- unavailable (down, timeout, 5xx, 429) or refused as a request (401/403
  credentials, 404 database missing): nothing is wrong with the data, so the
  batch goes to the spool and is retried; a missing database or retention
  policy is created again before the retry, and a refusal is counted and
  logged as an error an operator must see;
- 413 (body too large): the batch is split in halves until it passes;
- 400 (partial write): InfluxDB has stored the good lines; the bad ones are
  found by bisection (re-writing good lines is harmless: writes are
  idempotent) and set aside in the dead-letter store with InfluxDB's reason.
  Only this path dead-letters anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from contract.influx import Influx, InfluxError, InfluxRefused, InfluxRejected, InfluxTooLarge, InfluxUnavailable
from contract.payload import Reason, Rejection
from ingest import deadletter
from ingest.deadletter import DeadLetterStore
from ingest.spool import Spool
from ingest.stats import Stats

log = logging.getLogger("nakhon.ingest.writer")

LOG_EVERY_S = 30.0  # an outage is logged when it starts and then this often, not at every retry


class DurableWriter:
    def __init__(
        self,
        influx: Influx,
        spool: Spool,
        dead: DeadLetterStore,
        stats: Stats,
        schema: Callable[[], None] | None = None,
        credentials: Callable[[], bool] | None = None,
    ) -> None:
        self.influx = influx
        self.credentials = credentials or (lambda: False)  # reads a rotated secret when InfluxDB refuses ours
        self.schema = schema or (lambda: None)  # creates the database and retention policies (idempotent)
        self.spool = spool
        self.dead = dead
        self.stats = stats
        self._logged_at = -LOG_EVERY_S
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
        logins = self.influx.logins
        try:
            self._write(lines)
        except InfluxUnavailable as exc:
            # A rotated password read again (or the one before it), here or by a write beside
            # this one since it began: the same batch goes again at once.
            if isinstance(exc, InfluxRefused) and exc.status in (401, 403) and (self.credentials() or self.influx.logins != logins):
                try:
                    self._write(lines)
                    return
                except InfluxUnavailable as again:
                    exc = again
            self._unavailable(exc, len(lines))
            with self._lock:
                self._to_spool(lines)

    def _unavailable(self, exc: InfluxUnavailable, points: int) -> None:
        with self.stats.lock:
            self.stats.influx_errors += 1
            if isinstance(exc, InfluxRefused):
                self.stats.influx_refused += 1
            self.stats.influx_last_error = str(exc)[:200]
        if isinstance(exc, InfluxRefused) and exc.status in (401, 403):
            self.credentials()
        now = time.monotonic()
        if now - self._logged_at < LOG_EVERY_S:
            return  # the replayer retries every second: say it once in a while, the stats count every one
        self._logged_at = now
        if isinstance(exc, InfluxRefused):
            # not a passing fault: someone must fix credentials or the database; we keep everything meanwhile
            fields = {"points": points, "status": exc.status, "error": exc.message[:200]}
            log.error("influxdb refused the request, spooling and retrying", extra={"fields": fields})
        else:
            log.warning("influxdb unavailable, spooling", extra={"fields": {"points": points, "error": str(exc)[:200]}})

    def _to_spool(self, lines: list[str]) -> None:
        self.spool.append(lines)
        with self.stats.lock:
            self.stats.points_spooled += len(lines)
            self.stats.spool_depth = self.spool.lines

    def _write(self, lines: list[str]) -> None:
        """Write, splitting what is too large and setting aside lines InfluxDB refuses; raises InfluxUnavailable."""
        t0 = time.perf_counter()
        try:
            self.influx.write(lines)
        except InfluxTooLarge as exc:
            with self.stats.lock:
                self.stats.influx_too_large += 1
            if len(lines) == 1:
                self._dead_line(lines[0], exc)
                return
            mid = len(lines) // 2
            self._write(lines[:mid])
            self._write(lines[mid:])
            return
        except InfluxRejected as exc:
            with self.stats.lock:
                self.stats.influx_errors += 1
            self._bisect(lines, exc)
            return
        with self.stats.lock:
            self.stats.write_ms.append((time.perf_counter() - t0) * 1000)
            self.stats.points_written += len(lines)
            self.stats.batches += 1
            self.stats.batch_points_total += len(lines)

    def _dead_line(self, line: str, exc: InfluxRejected) -> None:
        log.error("influxdb refused a line", extra={"fields": {"line": line[:300], "error": exc.message[:300]}})
        rej = Rejection(Reason.STORAGE_REJECTED, exc.message[:500])
        self.dead.append([deadletter.record("(line-protocol)", line.encode(), [rej])])
        with self.stats.lock:
            self.stats.readings_rejected += 1
            self.stats.rejected_by_reason[Reason.STORAGE_REJECTED] += 1

    def _bisect(self, lines: list[str], exc: InfluxRejected) -> None:
        if len(lines) == 1:
            self._dead_line(lines[0], exc)
            return
        mid = len(lines) // 2
        for half in (lines[:mid], lines[mid:]):
            try:
                self.influx.write(half)
            except InfluxTooLarge:
                self._write(half)
                continue
            except InfluxRejected as sub:
                self._bisect(half, sub)
                continue
            with self.stats.lock:
                self.stats.points_written += len(half)

    def _recreate_schema(self) -> None:
        try:
            self.schema()
        except InfluxError as exc:
            log.warning("could not create the storage schema yet", extra={"fields": {"error": str(exc)[:200]}})
            return
        with self.stats.lock:
            self.stats.schema_created += 1
        log.warning("storage schema was missing: created it again", extra={"fields": {"database": self.influx.database}})

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
                except InfluxUnavailable as exc:
                    self._unavailable(exc, len(lines))
                    if isinstance(exc, InfluxRefused) and exc.schema_missing:
                        self._recreate_schema()
                    return False
                self.spool.remove(path, len(lines))
                with self.stats.lock:
                    self.stats.spool_depth = self.spool.lines
                log.info("replayed spooled batch", extra={"fields": {"points": len(lines), "spool_depth": self.spool.lines}})
