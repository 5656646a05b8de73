"""The dead-letter store: every rejected message, with its reasons and raw payload.

Append-only JSON Lines files, one per worker, fsync'd before the message
is acknowledged, rotated by size into a name no other rotation can take.
The store is bounded: past `max_bytes` the oldest rotated files of this
worker are removed and their records counted in `dropped` (logged as an
error and reported in the ingest's stats), so a device sending junk cannot
fill the disk. Read them with `nakhon deadletter`.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from contract.payload import Rejection

ROTATE_BYTES = 64 * 1024 * 1024
MAX_BYTES = 1024 * 1024 * 1024

log = logging.getLogger("nakhon.ingest.deadletter")


def record(topic: str, payload: bytes, rejections: list[Rejection], received_at: float | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "received_at": round(received_at or time.time(), 3),
        "topic": topic,
        "reason": rejections[0].reason,
        "rejections": [{"reason": r.reason, "detail": r.detail, "index": r.index} for r in rejections],
    }
    try:
        doc["payload"] = payload.decode("utf-8")
    except UnicodeDecodeError:
        doc["payload_b64"] = base64.b64encode(payload).decode()
    return doc


class DeadLetterStore:
    def __init__(self, folder: Path, name: str, max_bytes: int = MAX_BYTES, rotate_bytes: int = ROTATE_BYTES) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.max_bytes = max_bytes
        self.rotate_bytes = min(rotate_bytes, max(1, max_bytes // 4))
        self.path = self.folder / f"{name}.jsonl"
        self.dropped = 0  # records removed to keep the store within max_bytes
        self._fh = open(self.path, "ab")  # noqa: SIM115 - lives as long as the store

    def append(self, docs: list[dict[str, Any]]) -> None:
        """Append and fsync: after this returns, the records survive a crash."""
        if not docs:
            return
        self._fh.write(b"".join(orjson.dumps(d) + b"\n" for d in docs))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        if self._fh.tell() > self.rotate_bytes:
            self._rotate()

    def _rotated(self) -> list[Path]:
        """This worker's rotated files, oldest first (their names sort by time, then sequence)."""
        return sorted(self.folder.glob(f"{self.name}.*.jsonl"))

    def _rotate(self) -> None:
        self._fh.close()
        now = time.time_ns()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now / 1e9))
        ns = now % 1_000_000_000  # names sort in rotation order, within a second too
        while (target := self.folder / f"{self.name}.{stamp}.{ns:09d}.jsonl").exists():
            ns += 1  # two rotations in one second never overwrite each other
        os.link(self.path, target)  # fails rather than replaces, should the name be taken after all
        self.path.unlink()
        self._fh = open(self.path, "ab")  # noqa: SIM115
        self._bound()

    def _bound(self) -> None:
        files = self._rotated()
        total = sum(p.stat().st_size for p in files) + self._fh.tell()
        while files and total > self.max_bytes:
            oldest = files.pop(0)
            size = oldest.stat().st_size
            with open(oldest, "rb") as fh:
                records = sum(1 for line in fh if line.strip())
            oldest.unlink()
            total -= size
            self.dropped += records
            fields = {"file": oldest.name, "records": records, "dropped_total": self.dropped}
            log.error("dead-letter store full: oldest records removed", extra={"fields": fields})

    def close(self) -> None:
        self._fh.close()


def read_all(folder: Path) -> Iterator[dict[str, Any]]:
    """Every record in a dead-letter folder, oldest file first."""
    folder = Path(folder)
    if not folder.exists():
        return
    files = sorted(folder.glob("*.jsonl"), key=lambda p: (p.stat().st_mtime, p.name))
    for path in files:
        with open(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    try:
                        yield orjson.loads(line)
                    except orjson.JSONDecodeError:
                        # a torn last line after a crash: show it rather than hide it
                        yield {"reason": "corrupt_record", "raw": line.decode("utf-8", "replace")}
