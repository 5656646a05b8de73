"""Keep the hourly roll-ups, the AQI and the latest values right, late data included.

The worker hands every committed batch to `touched()`: we note which
(measurement, hour) pairs it wrote and the newest reading per device. A
background thread then
- writes the newest values to the `latest` retention policy (one point per
  device and measurement at time 0), never replacing a newer reading with an
  older one (a replayed buffer must not move "latest" backwards);
- recomputes the touched hours from raw into `hourly` (contract.rollups), and
  the AQI of every hour whose 24-hour window those hours fall in.
Nothing is recomputed while the spool holds data that InfluxDB has not seen
yet; a failed recompute is kept and retried. Stopping is bounded in time: what
the last pass could not finish is saved beside the spool and taken up at the
next start, so a slow InfluxDB never holds a shutdown past its supervisor's
patience and no touched hour is forgotten.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from contract import rollups, storage, topics
from contract.influx import Influx, InfluxError, InfluxRefused
from contract.logs import kv

log = logging.getLogger("nakhon.ingest.rollups")

_DATA = frozenset(storage.DATA_MEASUREMENTS)
_AQI_SPAN_MS = 23 * rollups.HOUR_MS  # an hour's PM2.5 lands in the AQI of the next 23 hours too


class Rollups:
    def __init__(self, influx: Influx, interval_s: float, ready: Callable[[], bool], shared: bool = False,
                 state_file: Path | None = None, stop_budget_s: float = 5.0) -> None:
        self.influx = influx
        self.state_file = state_file  # unfinished work saved at stop, taken up at start
        self.stop_budget_s = stop_budget_s
        self.interval_s = interval_s
        self.ready = ready
        # Several workers share the stream: another may have written a newer reading since we last
        # looked, so re-read the stored times of the devices we are about to write.
        self.shared = shared
        self._lock = threading.Lock()
        self._hours: set[tuple[str, int]] = set()
        self._pending_latest: dict[str, tuple[int, str]] = {}  # series head -> (ts, fields)
        self._newest: dict[str, int] = {}  # series head -> newest ts written to `latest`
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.database = storage.DATABASE
        self._schema_ok = False

    # --- called by the worker's flusher ---------------------------------------
    def touched(self, lines: list[str]) -> None:
        """Note what a committed batch wrote (data measurements only)."""
        hours: set[tuple[str, int]] = set()
        newest: dict[str, tuple[int, str]] = {}
        for line in lines:
            comma = line.find(",")
            if comma < 0 or line[:comma] not in _DATA:
                continue
            head_end = line.find(" ")
            tail = line.rfind(" ")
            ts = int(line[tail + 1 :])
            hours.add((line[:comma], ts - ts % rollups.HOUR_MS))
            head = line[:head_end]
            if ts > newest.get(head, (-1, ""))[0]:
                newest[head] = (ts, line[head_end + 1 : tail])
        with self._lock:
            self._hours |= hours
            _keep_newer(self._pending_latest, newest)

    # --- background -------------------------------------------------------------
    def start(self, database: str) -> None:
        self.database = database
        self._load_state()
        self._ensure_schema()
        self._load_newest()
        self._thread = threading.Thread(target=self._run, name="rollups", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish within the budget; what is left is saved for the next start."""
        deadline = time.monotonic() + self.stop_budget_s
        self._stop.set()  # the thread's pass gives up between statements
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        try:
            self.run_once(force=True, deadline=deadline)
        except Exception:
            log.exception("last roll-up pass failed; its hours are saved for the next start")
        self._save_state()

    # --- unfinished work across a restart --------------------------------------
    def _save_state(self) -> None:
        with self._lock:
            hours, latest = sorted(self._hours), dict(self._pending_latest)
        if self.state_file is None or not (hours or latest):
            return
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"hours": hours, "latest": latest}))
        os.replace(tmp, self.state_file)
        log.info("roll-up work saved for the next start", extra=kv(hours=len(hours), latest=len(latest)))

    def _load_state(self) -> None:
        if self.state_file is None or not self.state_file.exists():
            return
        try:
            state = json.loads(self.state_file.read_text())
            hours = {(str(m), int(h)) for m, h in state.get("hours", [])}
            latest = {str(k): (int(v[0]), str(v[1])) for k, v in state.get("latest", {}).items()}
        except (ValueError, TypeError, KeyError) as exc:
            log.error("saved roll-up work unreadable; those hours are recomputed when next touched", extra=kv(error=str(exc)[:200]))
            hours, latest = set(), {}
        with self._lock:
            self._hours |= hours
            _keep_newer(self._pending_latest, latest)
        self.state_file.unlink()
        log.info("roll-up work from the last stop taken up", extra=kv(hours=len(hours), latest=len(latest)))
    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(min(1.0, self.interval_s)):
            due = time.monotonic() - last >= self.interval_s
            try:
                self.run_once(force=due, stoppable=True)
            except Exception:
                log.exception("roll-up pass failed; will retry")
            if due:
                last = time.monotonic()

    def schema_lost(self) -> None:
        """The database was missing and has been created again: create the roll-ups' schema again too."""
        self._schema_ok = False

    def _ensure_schema(self) -> None:
        try:
            self.influx.execute(rollups.schema_statements(self.database))
            self._schema_ok = True
        except InfluxError as exc:
            if isinstance(exc, InfluxRefused) and exc.status == 403:
                # A least-privileged ingest user (no InfluxDB admin): the schema is made at set-up (nakhon/accounts.py).
                log.info("roll-up schema left to the database administrator", extra=kv(error=exc.message[:200]))
                self._schema_ok = True
            else:
                log.warning("roll-up schema not created yet", extra=kv(error=str(exc)[:200]))

    def run_once(self, force: bool = True, deadline: float | None = None, stoppable: bool = False) -> None:
        """One pass. It gives up (keeping what is left) at `deadline`, and, when `stoppable`
        (the background thread's passes), as soon as stop() is called."""
        if not self._schema_ok:
            self._ensure_schema()
        self._write_latest()
        if force and self.ready():
            self._recompute(deadline, stoppable)

    def _load_newest(self) -> None:
        """Seed the newest-seen times from `latest`, so a restart cannot regress it."""
        try:
            sources = ",".join(f'"{rollups.RP_LATEST}"."{m}"' for m in storage.DATA_MEASUREMENTS)
            for s in self.influx.series(f'SELECT "ts" FROM {sources} GROUP BY city, device'):
                tags = s.get("tags", {})
                head = f"{s['name']},city={tags.get('city')},device={tags.get('device')}"
                self._newest[head] = max(int(v[1]) for v in s["values"] if v[1] is not None)
        except (InfluxError, ValueError) as exc:
            log.warning("could not read latest values at start", extra=kv(error=str(exc)[:200]))

    def _refresh_newest(self, heads: list[str]) -> None:
        """Re-read the stored reading time of these series (ids are checked before they go into a regex)."""
        by_meas: dict[str, set[str]] = {}
        for head in heads:
            meas, device = head.partition(",")[0], head.rpartition(",device=")[2]
            if topics.is_device_id(device):
                by_meas.setdefault(meas, set()).add(device)
        for meas, devices in by_meas.items():
            ids = sorted(devices)
            for i in range(0, len(ids), 200):
                regex = "|".join(ids[i : i + 200])
                q = f'SELECT "ts" FROM "{rollups.RP_LATEST}"."{meas}" WHERE "device" =~ /^({regex})$/ GROUP BY city, device'
                for s in self.influx.series(q):
                    tags = s.get("tags", {})
                    head = f"{meas},city={tags.get('city')},device={tags.get('device')}"
                    stored = max((int(v[1]) for v in s["values"] if v[1] is not None), default=-1)
                    self._newest[head] = max(self._newest.get(head, -1), stored)

    def _write_latest(self) -> None:
        with self._lock:
            pending, self._pending_latest = self._pending_latest, {}
        if self.shared and pending:
            try:
                self._refresh_newest(list(pending))
            except InfluxError as exc:
                log.warning("could not re-read latest values; will retry", extra=kv(error=str(exc)[:200]))
                with self._lock:
                    _keep_newer(self._pending_latest, pending)
                return
        lines = []
        for head, (ts, fields) in pending.items():
            if ts > self._newest.get(head, -1):
                lines.append(f"{head} {fields},ts={ts}i 0")
        if not lines:
            return
        try:
            self.influx.write(lines, rp=rollups.RP_LATEST)
        except InfluxError as exc:
            log.warning("latest values not written; will retry", extra=kv(error=str(exc)[:200]))
            with self._lock:
                _keep_newer(self._pending_latest, pending)
            return
        for head, (ts, _) in pending.items():
            self._newest[head] = max(ts, self._newest.get(head, -1))

    def _out_of_time(self, deadline: float | None, stoppable: bool) -> bool:
        if stoppable and self._stop.is_set():  # the background pass gives way to stop()
            return True
        return deadline is not None and time.monotonic() >= deadline

    def _recompute(self, deadline: float | None = None, stoppable: bool = False) -> None:
        with self._lock:
            hours, self._hours = self._hours, set()
        if not hours:
            return
        done: set[tuple[str, int]] = set()
        t0 = time.perf_counter()
        try:
            for meas in sorted({m for m, _ in hours}):
                for first, last in rollups.hour_ranges(h for m, h in hours if m == meas):
                    if self._out_of_time(deadline, stoppable):
                        with self._lock:
                            self._hours |= hours - done
                        return
                    params = {"start": rollups.iso(first), "end": rollups.iso(last + rollups.HOUR_MS)}
                    self.influx.query(rollups.recompute_statement(meas), params, method="POST")
                    if meas == rollups.AIR and not self._out_of_time(deadline, stoppable):
                        self._recompute_aqi(first, last)
                    done |= {(meas, h) for h in range(first, last + 1, rollups.HOUR_MS)}
        except InfluxError as exc:
            log.warning("roll-up recompute failed; will retry", extra=kv(error=str(exc)[:200]))
            with self._lock:
                self._hours |= hours - done
            return
        log.debug("roll-ups recomputed", extra=kv(hours=len(hours), ms=round((time.perf_counter() - t0) * 1000, 1)))

    def _recompute_aqi(self, first: int, last: int) -> None:
        now_hour = int(time.time() * 1000) // rollups.HOUR_MS * rollups.HOUR_MS
        last_aqi = min(last + _AQI_SPAN_MS, max(now_hour, last))
        params = {"start": rollups.iso(first - _AQI_SPAN_MS), "end": rollups.iso(last_aqi + rollups.HOUR_MS)}
        series = self.influx.series(rollups.aqi_inputs_statement(), params)
        lines = rollups.aqi_points(series, first, last_aqi)
        for i in range(0, len(lines), 5000):
            self.influx.write(lines[i : i + 5000], rp=storage.RP_HOURLY)


def _keep_newer(into: dict[str, tuple[int, str]], items: dict[str, tuple[int, str]]) -> None:
    """Merge (ts, fields) per series into `into`, keeping the newer reading of each."""
    for head, item in items.items():
        if item[0] > into.get(head, (-1, ""))[0]:
            into[head] = item
