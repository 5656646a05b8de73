"""Webhook delivery against a real HTTP receiver on 127.0.0.1: retries with backoff, HMAC signature, exactly once, in order."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import orjson
import pytest

from alerts.deliver import InfluxTarget, Webhook, Worker, signature
from alerts.store import Store
from contract.influx import Influx
from nakhon.servers import InfluxDB
from tests.alerts.receiver import Receiver
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

SECRET = "hook-secret-for-tests"


def _run(store: Store, hook: Webhook, **kw: float) -> tuple[Worker, threading.Event]:
    stop, wake = threading.Event(), threading.Event()
    w = Worker(store, "webhook:0", hook, wake, stop, **kw)
    w.start()
    return w, stop


def test_a_receiver_failing_its_first_3_attempts_gets_each_event_once_signed_in_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.sqlite3")
    with Receiver(SECRET, fail_first=3) as rx:
        hook = Webhook(rx.url, SECRET, timeout_s=5)
        store.commit([], [(f"e{i}", "webhook:0", orjson.dumps({"text": f"t{i}", "event": {"id": f"e{i}"}})) for i in range(5)])
        w, stop = _run(store, hook, base_s=0.2, cap_s=2.0)
        try:
            wait_until(lambda: len(rx.accepted) == 5, timeout=60, what="5 events accepted")
            wait_until(lambda: store.counts().get("done") == 5, timeout=10, what="outbox drained")
        finally:
            stop.set()
            w.join(10)
            hook.close()
        assert [e["id"] for e in rx.events()] == ["e0", "e1", "e2", "e3", "e4"]  # each once, in order
        assert rx.bad_signatures == 0
        tries = [t for t, ev in rx.attempts if ev == "e0"]
        assert len(tries) == 4  # three failures, then accepted
        gaps = [b - a for a, b in itertools.pairwise(tries)]
        assert gaps[2] > gaps[0]  # backing off, not hammering
    store.close()


def test_a_refusing_receiver_is_not_retried_and_the_failure_is_kept(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.sqlite3")
    with Receiver(SECRET, fail_first=1, status=400) as rx:
        hook = Webhook(rx.url, SECRET)
        store.commit([], [("e0", "webhook:0", b'{"text":"a"}'), ("e1", "webhook:0", b'{"text":"b","event":{"id":"e1"}}')])
        w, stop = _run(store, hook, base_s=0.1)
        try:
            wait_until(lambda: store.counts() == {"failed": 1, "done": 1}, timeout=30, what="one refused, one delivered")
        finally:
            stop.set()
            w.join(10)
            hook.close()
        assert len(rx.attempts) == 2
    store.close()


def test_a_wrong_secret_does_not_verify(tmp_path: Path) -> None:
    assert signature("a", "1", b"x") != signature("b", "1", b"x")
    assert signature("a", "1", b"x") != signature("a", "2", b"x")  # the time is signed too


def _event(i: int) -> bytes:
    return orjson.dumps({
        "id": f"phuket.pk-water-001.water_warning.{1764000000000 + i}.0", "alert_id": f"phuket.pk-water-001.water_warning.{1764000000000 + i}",
        "event": "opened", "city": "phuket", "device": "pk-water-001", "rule": "water_warning", "severity": "warning",
        "at_ms": 1764000000000 + i * 1000, "opened_ms": 1764000000000 + i, "since_ms": 1764000000000 + i, "value": 190.0, "peak": 190.0,
        "threshold": 180.0, "unit": "cm", "late": False, "closed_ms": None, "rules_version": "t", "message_en": "Water, \"quoted\"",
        "message_th": "ระดับน้ำ",
    })


def test_influx_target_writes_in_batches_and_retries_a_missing_database(tmp_path: Path, influxdb: InfluxDB) -> None:
    """A real InfluxDB: the database does not exist yet (404, a fixable refusal: retried), then it does and every event lands once."""
    store = Store(tmp_path / "state.sqlite3")
    store.commit([], [(f"e{i}", "influx", _event(i)) for i in range(300)])
    db = Influx(influxdb.url)
    stop, wake = threading.Event(), threading.Event()
    w = Worker(store, "influx", InfluxTarget(db), wake, stop, base_s=0.2, cap_s=0.5, batch=1000)
    w.start()
    try:
        wait_until(lambda: w.failures >= 2, timeout=30, what="writes refused while the database is missing")
        assert store.counts() == {"pending": 300}
        db.ensure_schema()
        wait_until(lambda: store.counts() == {"done": 300}, timeout=60, what="all written")
    finally:
        stop.set()
        w.join(10)
    rows = db.rows('SELECT count("value") AS n FROM "raw"."alerts"')
    assert rows[0]["n"] == 300
    one = db.rows('SELECT "message_en", "message_th", "late" FROM "raw"."alerts" LIMIT 1')[0]
    assert one["message_en"] == 'Water, "quoted"' and one["message_th"] == "ระดับน้ำ" and one["late"] is False
    db.close()
    store.close()


def test_the_outbox_forgets_delivered_events_after_a_week_and_keeps_the_rest(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.sqlite3")
    old = time.time() - 8 * 86400
    store.commit([], [("old-done", "mqtt", b"{}"), ("old-pending", "mqtt", b"{}")], now=old)
    store.commit([], [("new-done", "mqtt", b"{}")])
    items = {i.event_id: i.seq for i in store.head("mqtt", 10)}
    store.done([items["old-done"], items["new-done"]])
    store.prune()
    assert store.counts() == {"done": 1, "pending": 1}
    store.close()
