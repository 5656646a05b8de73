"""The catch session's data path (issue 13, finding 11): store from each connect until a worker's fresh mark, then ack only.

Unit tier: worker 0 of two against the InfluxDB stub; the worker's and the
catch's sessions are real Session objects that are never started (what they
would send is read from their outgoing queues). The real broker and restarts
are in tests/spine/test_workers.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from contract import topics
from contract.payload import encode_reading
from contract.settings import Settings, load_settings
from ingest import mqttwire as wire
from ingest.catch import Catch, catch_id, mark, mark_time
from ingest.session import Session
from ingest.worker import Worker
from tests.influx_stub import InfluxStub

pytestmark = pytest.mark.unit

TOPIC = "nakhon/v1/phuket/pk-air-{:03d}/telemetry"
T0 = int(time.time()) - 3600  # whole seconds: the stored timestamps compare exactly
MARK = topics.INGEST_MARK_TOPIC


def _settings(tmp: Path, url: str, **kw: Any) -> Settings:
    base: dict[str, Any] = {"influx_url": url, "data_dir": tmp, "mqtt_port": 1, "influx_timeout_s": 2.0, "ingest_batch_ms": 20, "ingest_workers": 2}
    return load_settings(**(base | kw))


def _reading(pid: int, device: int = 1) -> tuple[str, bytes, int]:
    return (TOPIC.format(device), encode_reading(T0 + pid, pid, {"pm25": 10.0 + pid % 50}), pid)


def _mark(pid: int, t: float) -> tuple[str, bytes, int]:
    return (MARK, mark("nakhon_ingest_1", t), pid)


def _acks(session: Session) -> list[int]:
    """Packet ids of the PUBACKs the session has queued, in order (SUBSCRIBE packets skipped)."""
    data = b"".join(p for p in session._out if p[0] >> 4 == wire.PUBACK)
    return [int.from_bytes(data[i + 2 : i + 4], "big") for i in range(0, len(data), 4)]


def _connect(catch: Catch, now: float, broker_started: float | None = None, present: bool = True) -> None:
    catch.clock = lambda: now
    catch.probe = lambda: broker_started  # what $SYS/broker/uptime says (None: a broker that does not say)
    catch.session._generation += 1
    catch.session.connected.set()
    catch.session._out.clear()
    catch._on_connect(catch.session, present)


def _catch(w: Worker) -> Catch:
    assert w.catch is not None
    return w.catch


def test_only_worker_0_of_several_keeps_the_catch_and_every_worker_marks(tmp_path: Path) -> None:
    with InfluxStub() as stub:
        w0 = Worker(_settings(tmp_path, stub.url), 0)
        w1 = Worker(_settings(tmp_path, stub.url), 1)
        one = Worker(_settings(tmp_path, stub.url, ingest_workers=1), 0)
        off = Worker(_settings(tmp_path, stub.url, ingest_share_catch=False), 0)
    assert _catch(w0).session.endpoint.client_id == catch_id("nakhon_ingest") == "nakhon_ingest_catch"
    assert w1.catch is None and w0.marker is not None and w1.marker is not None
    assert one.catch is None and one.marker is None and one._retire  # a catch left from a run with several workers is removed
    assert off.catch is None and off.marker is None


def test_the_catch_subscribes_plain_filters_without_retained_messages(tmp_path: Path) -> None:
    with InfluxStub() as stub:
        c = _catch(Worker(_settings(tmp_path, stub.url), 0))
    _connect(c, 1000.0)
    sub = b"".join(c.session._out)
    for f in (topics.TELEMETRY_FILTER, topics.STATUS_FILTER, MARK):
        at = sub.index(f.encode())
        assert sub[at + len(f)] == topics.QOS | wire.RETAIN_NEVER  # plain (no $share), QoS 1, retain handling 2
    assert b"$share" not in sub


def test_it_stores_until_a_fresh_mark_then_acks_only_in_order(tmp_path: Path) -> None:
    with InfluxStub() as stub:
        w = Worker(_settings(tmp_path, stub.url), 0)
        c = _catch(w)
        _connect(c, 1000.0)
        gen = c.session.generation
        # the gap after a broker restart: readings, a mark the broker routed before it (stale), more readings,
        # a worker's fresh mark, then what the shared group has as well
        c._on_publishes([_reading(1), _reading(2), _mark(3, 999.0), _reading(4), _mark(5, 1000.5), _reading(6), _reading(7)], gen)
        assert not c.covering and c.covered == 3 and c.passed == 2 and c.stand_downs == 1
        assert _acks(c.session) == []  # nothing acked ahead of the stored messages
        w.flush()
        assert _acks(c.session) == [1, 2, 3, 4, 5, 6, 7]  # MQTT 5, 4.6: in the order they came
        assert sorted(int(p.split()[-1]) for p in stub.points() if p.startswith("air")) == [(T0 + k) * 1000 for k in (1, 2, 4)]
        # standing down, nothing is held: acks go out at once and nothing more is written
        c._on_publishes([_reading(8), _mark(9, 1001.5)], gen)
        assert _acks(c.session)[-2:] == [8, 9] and w.stats.pending == 0
        assert len([p for p in stub.points() if p.startswith("air")]) == 3
        assert w.stats.received == 3  # the worker counts what it stored for the catch, not what it passed on


def test_a_reconnect_covers_again_and_a_mark_from_before_it_proves_nothing(tmp_path: Path) -> None:
    with InfluxStub() as stub:
        w = Worker(_settings(tmp_path, stub.url), 0)
        c = _catch(w)
        _connect(c, 1000.0)
        c._on_publishes([_mark(1, 1000.5)], c.session.generation)
        assert not c.covering
        _connect(c, 2000.0)  # the broker restarted: its queue for us may hold marks it routed before
        assert c.covering
        c._on_publishes([_mark(2, 1500.0), _reading(3), _mark(4, 1999.0)], c.session.generation)
        assert c.covering and c.covered == 1
        w.flush()
        assert _acks(c.session) == [2, 3, 4]


def test_a_mark_is_a_time_or_nothing() -> None:
    assert mark_time(mark("w", 12.5)) == 12.5
    for junk in (b"", b"x", b"[]", b'{"t": true}', b'{"t": "1"}', b"{}"):
        assert mark_time(junk) is None


def test_a_queued_mark_counts_when_the_broker_says_it_has_run_since_before_it(tmp_path: Path) -> None:
    with InfluxStub() as stub:
        w = Worker(_settings(tmp_path, stub.url), 0)
        c = _catch(w)
        c.state_file = None
        _connect(c, 1000.0, broker_started=500.0)  # up since 500: a mark stamped at 600 was routed by this broker
        c._on_publishes([_reading(1), _mark(2, 499.0), _reading(3), _mark(4, 600.0), _reading(5)], c.session.generation)
        assert not c.covering and c.covered == 2 and c.passed == 1
        _connect(c, 2000.0, broker_started=1990.0)  # restarted at 1990: the same kind of mark proves nothing now
        c._on_publishes([_mark(6, 1500.0), _reading(7)], c.session.generation)
        assert c.covering and c.covered == 3


def test_after_a_restart_of_ours_it_resumes_standing_down_only_if_the_broker_did_not_restart(tmp_path: Path) -> None:
    with InfluxStub() as stub:
        w = Worker(_settings(tmp_path, stub.url), 0)
        c = _catch(w)
        assert c.state_file is not None
        _connect(c, 1000.0, broker_started=500.0)
        c._on_publishes([_reading(1), _mark(2, 1000.5)], c.session.generation)
        assert not c.state_file.exists()  # reading 1 is stored but not acked yet: a restart now must cover again
        w.flush()
        c._on_publishes([_reading(3), _mark(4, 1001.5)], c.session.generation)
        assert orjson.loads(c.state_file.read_bytes()) == {"last_mark": 1001.5}  # the latest mark of this broker
        c._on_publishes([_mark(5, 1002.5)], c.session.generation)
        assert orjson.loads(c.state_file.read_bytes()) == {"last_mark": 1001.5}  # on disk at most every few seconds...
        c._save(True)  # what stop() does after the session's last acks
        assert orjson.loads(c.state_file.read_bytes()) == {"last_mark": 1002.5}  # ...and at stop
        # our process restarts; the broker kept running: its queue for us (a backlog the workers' sessions also got) is passed on
        _connect(c, 3000.0, broker_started=500.0)
        assert not c.covering
        c._on_publishes([_reading(6), _reading(7)], c.session.generation)
        assert _acks(c.session) == [6, 7] and c.covered == 1
        # the broker restarted meanwhile: cover
        _connect(c, 4000.0, broker_started=3500.0)
        assert c.covering
        # a broker that does not say when it started, or a session it lost: cover
        _connect(c, 5000.0, broker_started=None)
        assert c.covering
        _connect(c, 5000.0, broker_started=500.0, present=False)
        assert c.covering
