"""The evaluator's health file: written by the service every few seconds, read by `nakhon up` and `nakhon alerts health`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

STALE_S = 15.0  # a file older than this belongs to an evaluator that stopped writing it
STUCK_S = 120.0  # an event undelivered this long means a target is failing


def write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({**doc, "ts": time.time(), "pid": os.getpid()}))
    os.replace(tmp, path)


def judge(path: Path, pid: int | None = None, now: float | None = None) -> tuple[str, str]:
    """(ok | degraded | down, detail); with `pid`, only a file written by that process counts."""
    now = time.time() if now is None else now
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return "down", "no health report"
    if pid is not None and doc.get("pid") != pid:
        return "down", "no health report from the running evaluator"
    age = now - float(doc.get("ts", 0))
    if age > STALE_S:
        return "down", f"last health report {age:.0f} s ago"
    detail = (f"stations {doc.get('stations', 0)}, readings {doc.get('readings', 0)}, events {doc.get('events', 0)}, "
              f"undelivered {doc.get('pending', 0)}, failed {doc.get('failed', 0)}")
    problems = []
    if not doc.get("connected"):
        problems.append("not connected to the broker")
    if float(doc.get("oldest_pending_s") or 0) > STUCK_S:
        problems.append(f"an event undelivered for {float(doc['oldest_pending_s']):.0f} s ({', '.join(doc.get('stuck_targets', []))})")
    if problems:
        return "degraded", detail + "; " + "; ".join(problems)
    return "ok", detail
