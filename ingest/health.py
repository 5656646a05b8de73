"""Whether readings flow through one ingest worker, from its own counters.

`Health.update()` takes the worker's connection state and a stats snapshot
every few seconds and says:

- `connected`: the MQTT session is up;
- `writing`: nothing waits for a write, or acks advanced within `stall_s`
  (messages held without ever becoming durable mean a stalled write path);
- `spool_growing`: the spool (what InfluxDB has not taken yet) has only grown
  over the last `spool_window_s` seconds;
- `status`: `ok`; `degraded` while the spool holds readings InfluxDB has
  not taken yet (nothing is lost, but the dashboards lag); `down` when not
  connected, stalled, or the spool only grows (readings are not flowing).

`write_file()` puts it where an operator and `nakhon up` can read it (one JSON
file per worker, replaced atomically; its `ts` shows a dead worker as stale).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from ingest.stats import Stats

COUNTERS = ("received", "acked", "pending", "spool_depth", "influx_errors", "broker_dropped")


def counters(stats: Stats) -> dict[str, int]:
    """The counters health needs, read without taking a snapshot (which empties the latency samples)."""
    with stats.lock:
        return {k: int(getattr(stats, k)) for k in COUNTERS}


class Health:
    def __init__(self, worker: str, stall_s: float = 60.0, spool_window_s: float = 120.0) -> None:
        self.worker = worker
        self.stall_s = stall_s
        self.spool_window_s = spool_window_s
        self._spool: deque[tuple[float, int]] = deque()
        self._acked = -1
        self._acked_at = 0.0
        self._received = -1
        self._received_at: float | None = None
        self._connected_since: float | None = None

    def update(self, now: float, connected: bool, snap: Mapping[str, float | int]) -> dict[str, Any]:
        acked, received, pending = int(snap.get("acked", 0)), int(snap.get("received", 0)), int(snap.get("pending", 0))
        depth = int(snap.get("spool_depth", 0))
        if acked != self._acked:
            self._acked, self._acked_at = acked, now
        if received != self._received and received > 0:
            self._received, self._received_at = received, now
        if connected and self._connected_since is None:
            self._connected_since = now
        elif not connected:
            self._connected_since = None
        self._spool.append((now, depth))
        while len(self._spool) > 1 and self._spool[1][0] <= now - self.spool_window_s:
            self._spool.popleft()
        t0, d0 = self._spool[0]
        full_window = now - t0 >= self.spool_window_s * 0.9
        spool_growing = full_window and depth > d0 and all(b[1] >= a[1] for a, b in zip(self._spool, list(self._spool)[1:], strict=False))
        writing = pending == 0 or now - self._acked_at < self.stall_s
        # a spool that only grows: readings reach no storage but the disk, until it is full
        status = "down" if not connected or not writing or spool_growing else ("degraded" if depth > 0 else "ok")
        problems = []
        if not connected:
            problems.append("not connected to the broker")
        if not writing:
            problems.append(f"{pending} messages held and none acknowledged for {now - self._acked_at:.0f} s")
        if depth:
            problems.append(f"{depth} lines in the spool (InfluxDB not taking writes)" + (", growing" if spool_growing else ""))
        if snap.get("broker_dropped"):
            problems.append(f"the broker dropped {snap['broker_dropped']} messages")
        return {
            "worker": self.worker,
            "ts": time.time(),
            "status": status,
            "connected": connected,
            "writing": writing,
            "spool_depth": depth,
            "spool_growing": spool_growing,
            "pending": pending,
            "received": received,
            "acked": acked,
            "last_message_age_s": round(now - self._received_at, 1) if self._received_at is not None else None,
            "influx_errors": int(snap.get("influx_errors", 0)),
            "broker_dropped": int(snap.get("broker_dropped", 0)),
            "problems": problems,
            "pid": os.getpid(),
        }


def write_file(folder: Path, doc: Mapping[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{doc['worker']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(doc))
    os.replace(tmp, path)
    return path


def read_files(folder: Path) -> list[dict[str, Any]]:
    """Every worker's last health document (a worker that stopped leaves a stale one: see `ts`)."""
    docs = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            docs.append(orjson.loads(path.read_bytes()))
        except (OSError, orjson.JSONDecodeError):
            continue
    return docs
