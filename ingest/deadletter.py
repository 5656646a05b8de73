"""The dead-letter store: every rejected message, with its reasons and raw payload.

Append-only JSON Lines files, one per worker, fsync'd before the message
is acknowledged, rotated by size and never deleted by the platform. Read
them with `nakhon deadletter`.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from contract.payload import Rejection

ROTATE_BYTES = 64 * 1024 * 1024


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
    def __init__(self, folder: Path, name: str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.path = self.folder / f"{name}.jsonl"
        self._fh = open(self.path, "ab")  # noqa: SIM115 - lives as long as the store

    def append(self, docs: list[dict[str, Any]]) -> None:
        """Append and fsync: after this returns, the records survive a crash."""
        if not docs:
            return
        self._fh.write(b"".join(orjson.dumps(d) + b"\n" for d in docs))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        if self._fh.tell() > ROTATE_BYTES:
            self._rotate()

    def _rotate(self) -> None:
        self._fh.close()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.path.rename(self.folder / f"{self.name}.{stamp}.jsonl")
        self._fh = open(self.path, "ab")  # noqa: SIM115

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
