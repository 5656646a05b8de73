"""Store-and-forward, the ingest's side (issue 18): the confirmation tracker and the worker's `stored` rounds.

Unit tier: the tracker is pure; the worker runs against the InfluxDB stub with a
real Session that is never started (what it would send is read from its queue).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

from contract.payload import encode_batch, encode_reading
from contract.settings import Settings, load_settings
from contract.status import encode_status
from contract.stored import MAX_RANGES, parse_stored
from ingest import mqttwire as wire
from ingest.confirm import Tracker, merge, to_ranges
from ingest.deadletter import read_all
from ingest.worker import Worker
from tests.influx_stub import InfluxStub

pytestmark = pytest.mark.unit

T0 = time.time() - 3600
A = ("phuket", "pk-air-001")
B = ("chiang_mai", "cm-air-002")


# --- the tracker ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seqs", "ranges"),
    [([], []), ([7], [(7, 7)]), ([1, 2, 3], [(1, 3)]), ([5, 1, 2, 2, 9, 8], [(1, 2), (5, 5), (8, 9)]), ([4, 6], [(4, 4), (6, 6)])],
)
def test_seqs_become_sorted_disjoint_ranges(seqs: list[int], ranges: list[tuple[int, int]]) -> None:
    assert to_ranges(seqs) == ranges


def test_merge_joins_touching_and_overlapping_ranges() -> None:
    assert merge([(1, 3)], [(4, 6)]) == [(1, 6)]
    assert merge([(1, 3)], [(6, 6)]) == [(1, 3), (6, 6)]
    assert merge([(5, 9)], [(1, 2)]) == [(1, 2), (5, 9)]
    assert merge([(1, 2), (8, 9)], [(3, 7)]) == [(1, 9)]
    assert merge([(1, 10)], [(3, 4)]) == [(1, 10)]


def test_batches_committing_out_of_order_confirm_exactly_what_is_durable() -> None:
    rng = random.Random(18)
    batches = [list(range(k, k + 10)) for k in range(0, 200, 10)]
    rng.shuffle(batches)
    t = Tracker()
    done: set[int] = set()
    for b in batches[:-1]:  # every batch but one is durable
        t.add(A, b)
        done |= set(b)
    [(key, ranges)] = t.take(10)
    assert key == A
    covered = {s for lo, hi in ranges for s in range(lo, hi + 1)}
    assert covered == done  # the missing batch is not confirmed, everything else is
    assert len(ranges) <= 2
    assert t.take(10) == []  # taken: nothing waits


def test_a_round_sends_one_message_per_device_lowest_ranges_first() -> None:
    t = Tracker()
    t.add(A, list(range(0, 2 * (MAX_RANGES + 5), 2)))  # every other seq: MAX_RANGES + 5 ranges
    t.add(B, [1, 2, 3])
    first = dict(t.take(100))
    assert first[B] == [(1, 3)]
    assert first[A] == [(2 * i, 2 * i) for i in range(MAX_RANGES)]  # at most MAX_RANGES, the lowest
    second = t.take(100)
    assert second == [(A, [(2 * i, 2 * i) for i in range(MAX_RANGES, MAX_RANGES + 5)])]  # the rest, next round


def test_devices_waiting_longest_go_first_when_the_window_is_small() -> None:
    t = Tracker()
    for i in range(5):
        t.add(("phuket", f"pk-air-{i:03d}"), [i])
    assert [k[1] for k, _ in t.take(2)] == ["pk-air-000", "pk-air-001"]
    t.add(("phuket", "pk-air-000"), [50])
    assert [k[1] for k, _ in t.take(10)] == ["pk-air-002", "pk-air-003", "pk-air-004", "pk-air-000"]


def test_memory_is_bounded_and_what_is_forgotten_is_counted() -> None:
    t = Tracker(max_devices=3, max_ranges=MAX_RANGES)
    t.add(A, list(range(0, 4 * MAX_RANGES, 2)))  # a device that skips every other seq: 2 x the bound in ranges
    assert t.held() == MAX_RANGES and t.ranges_forgotten == MAX_RANGES
    for i in range(10):  # more devices than the bound
        t.add(("khon_kaen", f"kk-air-{i:03d}"), [1])
    assert len(t) == 3 and t.held() <= 3 * MAX_RANGES
    assert t.devices_forgotten == 8  # the oldest went first: A and the first seven
    assert [k[1] for k, _ in t.take(10)] == ["kk-air-007", "kk-air-008", "kk-air-009"]


def test_a_long_stream_of_one_device_stays_one_range() -> None:
    t = Tracker()
    for k in range(0, 100_000, 100):
        t.add(A, list(range(k, k + 100)))
    assert t.held() == 1 and t.take(1) == [(A, [(0, 99_999)])]


# --- the worker: confirmations only for what is durable ----------------------------------------------

TOPIC = "nakhon/v1/{}/{}/telemetry"


def _settings(tmp: Path, url: str, **kw: Any) -> Settings:
    base: dict[str, Any] = {"influx_url": url, "data_dir": tmp, "mqtt_port": 1, "influx_timeout_s": 2.0, "ingest_batch_ms": 20}
    return load_settings(**(base | kw))


def _connected(worker: Worker) -> None:
    worker.session._generation = 1
    worker.session.connected.set()


def _pubs(key: tuple[str, str], seqs: list[int], first_pid: int = 1) -> list[tuple[str, bytes, int]]:
    return [(TOPIC.format(*key), encode_reading(T0 + s, s, {"pm25": 10.0}), first_pid + i) for i, s in enumerate(seqs)]


def _sent(worker: Worker) -> dict[str, list[tuple[int, int]]]:
    """The `stored` PUBLISHes the session has queued: topic -> ranges (several messages to one topic are joined)."""
    pubs: list[tuple[str, bytes, int]] = []
    wire.split(b"".join(worker.session._out), pubs, [])
    out: dict[str, list[tuple[int, int]]] = {}
    for topic, payload, pid in pubs:
        assert pid and topic.endswith("/stored")
        doc = parse_stored(payload)
        assert doc.t is not None and abs(doc.t - time.time()) < 60
        out.setdefault(topic, []).extend(doc.ranges)
    return out


def test_nothing_is_confirmed_before_it_is_durable_then_each_device_gets_its_own(tmp_path: Path) -> None:
    with InfluxStub() as stub:
        w = Worker(_settings(tmp_path, stub.url))
        _connected(w)
        w._on_publishes(_pubs(A, [1, 2, 3, 5]) + _pubs(B, [40, 41], first_pid=10), 1)
        assert w.confirm_round() == 0 and _sent(w) == {}  # parsed, not durable: nothing said
        w.flush()
        assert w.confirm_round() == 2
        assert _sent(w) == {"nakhon/v1/phuket/pk-air-001/stored": [(1, 3), (5, 5)], "nakhon/v1/chiang_mai/cm-air-002/stored": [(40, 41)]}
        assert len(stub.points()) == 6
        assert w.stats.confirmed_readings == 6 and w.stats.confirm_messages == 2
        assert w.confirm_round() == 0  # each confirmation once


def test_a_batch_whose_save_fails_is_not_confirmed(tmp_path: Path) -> None:
    class Broken:
        def commit(self, lines: list[str]) -> None:
            raise OSError("no space left on device")

    with InfluxStub() as stub:
        w = Worker(_settings(tmp_path, stub.url))
        _connected(w)
        w._on_publishes(_pubs(A, [1, 2]), 1)
        real, w.writer = w.writer, Broken()  # type: ignore[assignment]
        batch = w._take_batch()
        with pytest.raises(OSError):
            w._write_batch(batch)
        w._retry_later(batch, OSError("disk"))
        assert w.confirm_round() == 0 and _sent(w) == {}
        w.writer = real
        w.flush()
        w.confirm_round()
        assert _sent(w) == {"nakhon/v1/phuket/pk-air-001/stored": [(1, 2)]}


def test_with_influxdb_down_the_spool_is_durable_enough_to_confirm(tmp_path: Path) -> None:
    with InfluxStub() as stub:
        stub.state.fail_5xx = 10**9
        w = Worker(_settings(tmp_path, stub.url))
        _connected(w)
        w._on_publishes(_pubs(A, list(range(100, 120))), 1)
        w.flush()
        assert stub.points() == [] and w.spool.lines == 20  # only on our disk, fsync'd
        w.confirm_round()
        assert _sent(w) == {"nakhon/v1/phuket/pk-air-001/stored": [(100, 119)]}


def test_readings_dead_lettered_as_bad_data_are_confirmed_too(tmp_path: Path) -> None:
    with InfluxStub() as stub:
        w = Worker(_settings(tmp_path, stub.url))
        _connected(w)
        bad_value = encode_batch([(T0, 7, {"pm25": 12.0}), (T0 + 1, 8, {"pm25": -5.0}), (T0 + 2, 9, {"nope": 1.0})])
        w._on_publishes([(TOPIC.format(*A), bad_value, 1), (TOPIC.format(*B), b"not json", 2)], 1)
        w.flush()
        w.dead.close()
        assert len(list(read_all(tmp_path / "deadletter"))) == 2
        w.confirm_round()
        # 7 stored, 8 and 9 kept in the dead letters: all done. The unparsable message names no seq: nothing to confirm
        assert _sent(w) == {"nakhon/v1/phuket/pk-air-001/stored": [(7, 9)]}


def test_without_a_connection_confirmations_wait_and_go_after_reconnect(tmp_path: Path) -> None:
    with InfluxStub() as stub:
        w = Worker(_settings(tmp_path, stub.url))
        _connected(w)
        w._on_publishes(_pubs(A, [1, 2]), 1)
        w.flush()
        w.session.connected.clear()  # the broker went away after the write
        assert w.confirm_round() == 0 and w.stats.confirm_waiting == 1
        _connected(w)
        assert w.confirm_round() == 1
        assert _sent(w) == {"nakhon/v1/phuket/pk-air-001/stored": [(1, 2)]}


def test_unacknowledged_confirmations_are_sent_again_on_the_next_connection(tmp_path: Path) -> None:
    with InfluxStub() as stub:
        w = Worker(_settings(tmp_path, stub.url))
        _connected(w)
        w._on_publishes(_pubs(A, [1, 2]), 1)
        w.flush()
        w.confirm_round()
        assert w.session.inflight == 1
        w.session._accepted(wire.Connack(session_present=True, reason=0))
        packets: list[tuple[str, bytes, int]] = []
        data = b"".join(w.session._out)
        wire.split(data, packets, [])
        assert [p[0] for p in packets] == ["nakhon/v1/phuket/pk-air-001/stored"] and data[0] & 0x08  # again, marked DUP
        w.session._control(wire.PUBACK << 4, packets[0][2].to_bytes(2, "big"))
        assert w.session.inflight == 0 and w.session.published == 1


def test_the_window_bounds_what_is_in_flight_and_refusals_are_counted(tmp_path: Path) -> None:
    with InfluxStub() as stub:
        w = Worker(_settings(tmp_path, stub.url))
        _connected(w)
        w.session.connack = wire.Connack(session_present=True, reason=0, receive_maximum=3)  # the broker's Receive Maximum
        for i in range(5):
            w._on_publishes(_pubs(("phuket", f"pk-air-{i:03d}"), [1], first_pid=i + 1), 1)
        w.flush()
        assert w.confirm_round() == 3 and w.confirm_round() == 0 and w.stats.confirm_waiting == 2
        pids = [p[2] for p in _pubs_out(w)]
        w.session._control(wire.PUBACK << 4, pids[0].to_bytes(2, "big") + bytes((0x87, 0)))  # not authorized
        assert w.session.publish_refused == 1
        assert w.confirm_round() == 1
        w.confirm_round()
        assert w.stats.confirm_refused == 1


def _pubs_out(w: Worker) -> list[tuple[str, bytes, int]]:
    pubs: list[tuple[str, bytes, int]] = []
    wire.split(b"".join(w.session._out), pubs, [])
    return pubs


def test_confirmations_can_be_turned_off(tmp_path: Path) -> None:
    with InfluxStub() as stub:
        w = Worker(_settings(tmp_path, stub.url, ingest_confirm=False))
        _connected(w)
        w._on_publishes(_pubs(A, [1, 2]), 1)
        w.flush()
        assert w.confirm_round() == 0 and _sent(w) == {} and w.stats.confirmed_readings == 0


def test_the_fast_path_takes_only_a_run_without_gaps() -> None:
    for seqs, want in (([1, 1, 3], [(1, 1), (3, 3)]), ([3, 2, 1], [(1, 3)]), ([4, 5, 6], [(4, 6)]), ([7, 9, 8], [(7, 9)]), ([2, 2], [(2, 2)])):
        t = Tracker()
        t.add(A, seqs)
        assert t.take(1) == [(A, want)], seqs


# --- a device's status is answered with the time ----------------------------------------------------

STATUS = "nakhon/v1/{}/{}/status"


def test_an_online_status_is_answered_with_the_time_and_no_ranges(tmp_path: Path) -> None:
    """A device whose NTP is blocked has only undated readings and sends no telemetry: its status brings it `t`."""
    with InfluxStub() as stub:
        w = Worker(_settings(tmp_path, stub.url))
        _connected(w)
        w._on_publishes([(STATUS.format(*A), encode_status("online", uptime_s=5), 1), (STATUS.format(*B), encode_status("offline"), 2)], 1)
        assert w.confirm_round() == 0  # not durable yet: nothing said
        w.flush()
        assert w.confirm_round() == 1
        assert _sent(w) == {"nakhon/v1/phuket/pk-air-001/stored": []}  # the offline will is not answered; `t` checked in _sent
        assert w.stats.confirmed_readings == 0 and w.confirm_round() == 0


def test_a_status_beside_readings_gets_one_message_with_the_ranges(tmp_path: Path) -> None:
    with InfluxStub() as stub:
        w = Worker(_settings(tmp_path, stub.url))
        _connected(w)
        w._on_publishes([(STATUS.format(*A), encode_status("online"), 9), *_pubs(A, [1, 2, 3])], 1)
        w._on_publishes(_pubs(A, [4], first_pid=20), 1)
        w.flush()
        assert w.confirm_round() == 1
        assert _sent(w) == {"nakhon/v1/phuket/pk-air-001/stored": [(1, 4)]}


def test_tracker_answers_a_device_with_no_seqs_once_per_round() -> None:
    t = Tracker(max_devices=2)
    t.add(A, [])
    t.add(A, [])
    assert t.take(10) == [(A, [])]
    t.add(A, [])
    t.add(A, [3])
    assert t.take(10) == [(A, [(3, 3)])]
    for i in range(3):  # bounded like any waiting device
        t.add(("phuket", f"pk-air-{i:03d}"), [])
    assert len(t) == 2 and t.devices_forgotten == 1
