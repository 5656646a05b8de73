"""The evaluator's health as `nakhon up` and the compose healthcheck judge it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson
import pytest

from alerts.health import judge, write

pytestmark = pytest.mark.unit

BASE = {"connected": True, "stations": 3, "readings": 10, "events": 2, "pending": 0, "failed": 0, "oldest_pending_s": None, "stuck_targets": []}


@pytest.mark.parametrize(("doc", "age", "state", "says"), [
    (BASE, 0, "ok", "stations 3"),
    ({**BASE, "connected": False}, 0, "degraded", "not connected"),
    ({**BASE, "pending": 4, "oldest_pending_s": 300.0, "stuck_targets": ["webhook:0"]}, 0, "degraded", "undelivered for 300 s (webhook:0)"),
    (BASE, 60, "down", "60 s ago"),
])
def test_health(tmp_path: Path, doc: dict, age: float, state: str, says: str) -> None:
    path = tmp_path / "health.json"
    write(path, doc)
    got, detail = judge(path, os.getpid(), now=time.time() + age)
    assert got == state and says in detail


def test_another_process_file_or_none_is_down(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    assert judge(path)[0] == "down"
    path.write_bytes(orjson.dumps({**BASE, "ts": time.time(), "pid": os.getpid() + 1}))
    assert judge(path, os.getpid()) == ("down", "no health report from the running evaluator")
