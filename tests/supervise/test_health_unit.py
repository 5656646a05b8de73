"""Pure cores of health and supervision: the ingest's verdict, the API's readiness judgement, status lines, backoff."""

from __future__ import annotations

import signal

import pytest

from api.routers.health import judge_ingest
from ingest.health import Health
from nakhon.status import line
from nakhon.supervisor import Policy, describe_exit, last_error

pytestmark = pytest.mark.unit


def snap(**kw: int) -> dict[str, int]:
    base = {"received": 0, "acked": 0, "pending": 0, "spool_depth": 0, "influx_errors": 0, "broker_dropped": 0}
    base.update(kw)
    return base


def test_ingest_health_ok_while_readings_flow() -> None:
    h = Health("w0")
    for t in range(0, 200, 2):
        doc = h.update(float(t), True, snap(received=t * 10, acked=t * 10))
    assert doc["status"] == "ok" and doc["writing"] and not doc["spool_growing"] and doc["problems"] == []
    assert doc["last_message_age_s"] == 0.0


def test_ingest_idle_is_not_a_fault() -> None:
    h = Health("w0")
    for t in range(0, 300, 2):
        doc = h.update(float(t), True, snap(received=5, acked=5))
    assert doc["status"] == "ok"
    assert doc["last_message_age_s"] == 298.0


def test_ingest_not_connected_is_down() -> None:
    doc = Health("w0").update(0.0, False, snap())
    assert doc["status"] == "down" and "not connected to the broker" in doc["problems"]


def test_ingest_holding_messages_that_never_get_acked_is_down() -> None:
    h = Health("w0", stall_s=60)
    h.update(0.0, True, snap(received=100, acked=50, pending=50))
    doc = h.update(59.0, True, snap(received=100, acked=50, pending=50))
    assert doc["status"] == "ok"
    doc = h.update(61.0, True, snap(received=100, acked=50, pending=50))
    assert doc["status"] == "down" and not doc["writing"]
    assert any("none acknowledged for 61 s" in p for p in doc["problems"])


def test_a_spool_that_only_grows_is_reported_and_one_that_drains_is_not() -> None:
    h = Health("w0", spool_window_s=120)
    for t in range(0, 130, 2):
        doc = h.update(float(t), True, snap(received=t, acked=t, spool_depth=t * 100))
        if t == 60:
            assert doc["status"] == "degraded" and not doc["spool_growing"]  # an outage of a minute: spooling, not yet alarming
    assert doc["status"] == "down" and doc["spool_growing"]
    assert any("growing" in p for p in doc["problems"])
    for t in range(130, 300, 2):  # InfluxDB is back: the spool drains
        doc = h.update(float(t), True, snap(received=t, acked=t, spool_depth=max(0, 12_800 - (t - 130) * 200)))
        if t == 140:
            assert doc["status"] == "degraded" and not doc["spool_growing"]  # draining: behind, but flowing
    assert not doc["spool_growing"] and doc["status"] == "ok"


def test_readiness_wants_a_connected_worker_whose_spool_does_not_only_grow() -> None:
    assert not judge_ingest([], 30).flowing
    assert "no ingest worker reported in the last 30 s" in judge_ingest([], 30).problems
    ok = {"worker": "nakhon-ingest-0", "connected": 1, "spool": 0, "spool0": 0, "spool_min": 0, "reports": 10, "received": 500}
    assert judge_ingest([ok], 30).flowing
    down = dict(ok, connected=0)
    state = judge_ingest([down], 30)
    assert not state.flowing and state.problems == ["nakhon-ingest-0: not connected to the broker"]
    growing = dict(ok, spool=900, spool0=100, spool_min=100)
    assert not judge_ingest([growing], 30).flowing
    draining = dict(ok, spool=100, spool0=900, spool_min=100)
    assert judge_ingest([draining], 30).flowing
    # one of two workers well: readings still flow, and the other's trouble is said
    state = judge_ingest([ok, dict(down, worker="nakhon-ingest-1")], 30)
    assert state.flowing and state.problems == ["nakhon-ingest-1: not connected to the broker"]


def test_backoff_doubles_up_to_the_cap() -> None:
    p = Policy(backoff_base_s=1, backoff_cap_s=30)
    assert [p.backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_exit_descriptions() -> None:
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert describe_exit(0) == "exit code 0"


def test_last_error_prefers_the_error_line() -> None:
    tail = '{"level":"info","msg":"starting"}\n{"level":"error","msg":"cannot open registry"}\n{"level":"info","msg":"bye"}'
    assert last_error(tail) == '{"level":"error","msg":"cannot open registry"}'
    tail = "Traceback (most recent call last):\n  File x\nsqlite3.OperationalError: unable to open database file\n"
    assert last_error(tail) == "sqlite3.OperationalError: unable to open database file"
    assert last_error("") == ""


def test_status_line() -> None:
    e = {"name": "ingest", "state": "running", "pid": 42, "since": 1000.0, "restarts": 2, "last_exit": "killed by SIGKILL",
         "last_error": "", "health": "ok", "health_detail": "1 worker(s), received 5, acked 5, spool 0"}
    assert line(e, now=1125.0) == (
        "ingest     running   pid 42  up 2m05s  restarts 2 (last: killed by SIGKILL)  health ok: 1 worker(s), received 5, acked 5, spool 0"
    )
    f = dict(e, state="failed", pid=None, last_error="sqlite3.OperationalError: unable to open database file", health="", health_detail="")
    assert line(f, now=1010.0) == (
        "ingest     failed    for 10s  restarts 2 (last: killed by SIGKILL)  last error: sqlite3.OperationalError: unable to open database file"
    )
