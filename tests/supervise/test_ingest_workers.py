"""`nakhon ingest --workers N` restarts a dead worker after a growing pause: one that dies at start-up does not spin."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import orjson
import pytest

from nakhon.servers import free_port
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def test_a_worker_dying_at_start_up_is_restarted_with_growing_pauses(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "deadletter").write_text("not a folder")  # every worker fails to open its dead-letter store
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAKHON_")}
    env.update(NAKHON_DATA_DIR=str(data), NAKHON_MQTT_PORT=str(free_port()), NAKHON_INFLUX_URL=f"http://127.0.0.1:{free_port()}")
    log = tmp_path / "ingest.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nakhon", "ingest", "--workers", "2"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        def died() -> list[dict[str, object]]:
            docs = [orjson.loads(r) for r in log.read_bytes().splitlines() if r.startswith(b"{")]
            return [d for d in docs if d.get("msg") == "worker died, restarting" and d.get("worker") == 0]

        wait_until(lambda: len(died()) >= 4, 60, what="worker 0 dying four times")
        rows = died()
        assert [r["restart_in_s"] for r in rows[:4]] == [1.0, 2.0, 4.0, 8.0]
        assert [r["deaths_in_a_row"] for r in rows[:4]] == [1, 2, 3, 4]
        assert all(r["exitcode"] == 1 for r in rows)
        at = [datetime.fromisoformat(str(r["ts"]).replace("Z", "+00:00")).timestamp() for r in rows[:4]]
        gaps = [b - a for a, b in pairwise(at)]
        assert all(g >= 0.9 * w for g, w in zip(gaps, (1.0, 2.0, 4.0), strict=True)), gaps  # it waited as it said
        assert b"FileExistsError" in log.read_bytes()
        assert proc.poll() is None  # the ingest itself stays up for the other workers
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
