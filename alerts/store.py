"""The evaluator's durable state: each station's rule state and an outbox of events to deliver.

One SQLite file. A batch of messages commits the stations it changed and the
events it produced in one transaction, and only then are the messages
acknowledged to the broker: after a crash the broker redelivers what was not
committed (the core ignores what it has seen), and the outbox still holds
every event not yet delivered. An event is queued once per target (`mqtt`,
`influx`, `webhook:N`); its id makes a second insert a no-op.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

_SCHEMA = """
PRAGMA journal_mode=WAL;
CREATE TABLE IF NOT EXISTS stations (
    city TEXT NOT NULL, device TEXT NOT NULL, doc BLOB NOT NULL, PRIMARY KEY (city, device)
);
CREATE TABLE IF NOT EXISTS storms (
    city TEXT PRIMARY KEY, doc BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    target TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT,
    UNIQUE (event_id, target)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (target, state, seq);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, created);
"""


@dataclass(frozen=True, slots=True)
class Item:
    seq: int
    event_id: str
    target: str
    body: bytes
    created: float
    attempts: int
    next_at: float


class Store:
    def __init__(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.executescript(_SCHEMA)
        self._db.execute("PRAGMA synchronous=FULL")
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def stations(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute("SELECT city, device, doc FROM stations").fetchall()
        for city, device, doc in rows:
            yield city, device, orjson.loads(doc)

    def storms(self) -> Iterator[tuple[str, dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute("SELECT city, doc FROM storms").fetchall()
        for city, doc in rows:
            yield city, orjson.loads(doc)

    def commit(self, stations: Iterable[tuple[str, str, dict[str, Any]]], items: Iterable[tuple[str, str, bytes]], now: float | None = None,
               storms: Iterable[tuple[str, dict[str, Any]]] = ()) -> None:
        """Station states, cities' storm states and outbox items (event id, target, body), all or nothing."""
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO stations (city, device, doc) VALUES (?, ?, ?)",
                                     [(c, d, orjson.dumps(doc)) for c, d, doc in stations])
                self._db.executemany("INSERT OR REPLACE INTO storms (city, doc) VALUES (?, ?)", [(c, orjson.dumps(doc)) for c, doc in storms])
                self._db.executemany("INSERT OR IGNORE INTO outbox (event_id, target, body, created, next_at) VALUES (?, ?, ?, ?, ?)",
                                     [(e, t, b, now, now) for e, t, b in items])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def head(self, target: str, limit: int = 1) -> list[Item]:
        """The oldest undelivered items of a target, in order (delivery keeps each target in order)."""
        with self._lock:
            rows = self._db.execute("SELECT seq, event_id, target, body, created, attempts, next_at FROM outbox "
                                    "WHERE target = ? AND state = 'pending' ORDER BY seq LIMIT ?", (target, limit)).fetchall()
        return [Item(*r) for r in rows]

    def done(self, seqs: list[int]) -> None:
        """One transaction (in autocommit each UPDATE of executemany was its own, an fsync each: a batch of 1,000
        delivered held the lock, and so the judge's commit, for seconds)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("UPDATE outbox SET state = 'done', attempts = attempts + 1, last_error = NULL WHERE seq = ?",
                                     [(s,) for s in seqs])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def retry(self, seq: int, next_at: float, error: str) -> None:
        with self._lock:
            self._db.execute("UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ? WHERE seq = ?", (next_at, error[:500], seq))

    def failed(self, seq: int, error: str) -> None:
        with self._lock:
            self._db.execute("UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ? WHERE seq = ?", (error[:500], seq))

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall()
        return {state: n for state, n in rows}

    def undelivered(self) -> dict[str, int]:
        """Pending and failed items, from the index (cheap however many delivered ones the outbox keeps)."""
        with self._lock:
            return {state: self._db.execute("SELECT count(*) FROM outbox WHERE state = ?", (state,)).fetchone()[0]
                    for state in ("pending", "failed")}

    def oldest_pending(self, targets: Iterable[str]) -> tuple[float | None, list[str]]:
        """When the oldest undelivered item was queued, and which of `targets` have undelivered items (index look-ups only:
        a DISTINCT over the pending items was a tenth of the service's time while a storm was being delivered)."""
        with self._lock:
            oldest = self._db.execute("SELECT min(created) FROM outbox WHERE state = 'pending'").fetchone()[0]
            if oldest is None:
                return None, []
            stuck = [t for t in targets
                     if self._db.execute("SELECT 1 FROM outbox WHERE target = ? AND state = 'pending' LIMIT 1", (t,)).fetchone()]
        return oldest, sorted(stuck)

    def prune(self, older_than_s: float = 7 * 86400) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE state = 'done' AND created < ?", (time.time() - older_than_s,))
