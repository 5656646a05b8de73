"""Bad input: counted, kept with its reason, never written as data, never stops the ingest."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

import orjson

from contract.influx import Influx
from contract.payload import Reason, encode_batch
from contract.settings import Settings
from contract.status import encode_status
from ingest.deadletter import read_all
from nakhon.procs import Service
from tests.conftest import start_ingest
from tests.helpers import wait_count, wait_len, wait_until
from tests.spine.publisher import Publisher
from tests.spine.test_delivery import assert_exactly_once


def bad_payloads(n: int, seed: int = 7) -> list[tuple[bytes, str]]:
    now = time.time()
    kinds: list[tuple[bytes, str]] = [
        (b"{not json", Reason.BAD_JSON),
        (b"\x00\x01\xff\xfe", Reason.BAD_JSON),
        (b"", Reason.BAD_JSON),
        (b'{"v":1,"ts":NaN,"seq":1,"m":{"pm25":1}}', Reason.BAD_JSON),
        (b"[]", Reason.BAD_SCHEMA),
        (orjson.dumps({"v": 9, "ts": now, "seq": 1, "m": {"pm25": 1}}), Reason.BAD_VERSION),
        (orjson.dumps({"v": 1, "ts": now, "seq": 1, "m": {"radiation": 1}}), Reason.UNKNOWN_METRIC),
        (orjson.dumps({"v": 1, "ts": now, "seq": 1, "m": {"pm25": 5000}}), Reason.OUT_OF_RANGE),
        (orjson.dumps({"v": 1, "ts": now, "seq": 1, "m": {"pm25": "high"}}), Reason.BAD_VALUE),
        (orjson.dumps({"v": 1, "ts": 86400, "seq": 1, "m": {"pm25": 1}}), Reason.TS_OUT_OF_WINDOW),
        (orjson.dumps({"v": 1, "ts": 4102444800, "seq": 1, "m": {"pm25": 1}}), Reason.TS_OUT_OF_WINDOW),
        (orjson.dumps({"v": 1, "ts": now + 86400, "seq": 1, "m": {"pm25": 1}}), Reason.TS_OUT_OF_WINDOW),
        (orjson.dumps({"v": 1, "ts": now, "seq": -4, "m": {"pm25": 1}}), Reason.BAD_SEQ),
        (orjson.dumps({"v": 1, "ts": now, "seq": 1, "m": {}}), Reason.EMPTY),
        # over the contract's 256 KiB but under the broker's packet limit (above it the broker disconnects)
        (b'{"v":1,"ts":1,"seq":1,"m":{"pm25":1},"pad":"' + b"x" * 262_400 + b'"}', Reason.OVERSIZE),
    ]
    rnd = random.Random(seed)
    return [kinds[i % len(kinds)] if i < len(kinds) else rnd.choice(kinds) for i in range(n)]


def test_1000_bad_messages_in_a_good_stream(settings: Settings, influx: Influx, ingest: Service) -> None:
    pub = Publisher(settings.mqtt_port, per_city=5)
    bad = bad_payloads(1000)
    try:
        t = threading.Thread(target=pub.publish, args=(200,), kwargs={"rate": 3000})
        t.start()
        for i, (payload, _) in enumerate(bad):
            pub.raw(i % len(pub.devices), payload)
        # ids that would forge tags never reach a write: the broker takes them, the ingest refuses them
        pub.raw(0, orjson.dumps({"v": 1, "ts": time.time(), "seq": 1, "m": {"pm25": 1}}), topic_name="nakhon/v1/phuket/x,city=khon_kaen/telemetry")
        pub.raw(0, orjson.dumps({"v": 1, "ts": time.time(), "seq": 1, "m": {"pm25": 1}}), topic_name="nakhon/v1/atlantis/dev-001/telemetry")
        t.join()
        assert pub.settle() == 3000 + 1000 + 2
    finally:
        pub.close()
    assert wait_count(influx, "air", "pm25", 3000) == 3000
    assert_exactly_once(influx, pub)
    dead = wait_len(lambda: list(read_all(settings.data_dir / "deadletter")), 1002, what="dead letters")
    assert len(dead) == 1002
    got = Counter(d["reason"] for d in dead)
    want = Counter(reason for _, reason in bad) + Counter({Reason.BAD_ID: 2})  # forged device id, unknown city
    assert got == want
    assert all(d["rejections"][0]["detail"] for d in dead)
    assert all("payload" in d or "payload_b64" in d for d in dead)
    assert ingest.running
    tags = {v for s in influx.series('SHOW TAG VALUES FROM "air" WITH KEY = "device"') for _, v in s["values"]}
    assert tags == {dev for _, dev in pub.devices}


def test_bad_reading_in_a_batch_keeps_the_good_ones(settings: Settings, influx: Influx, ingest: Service) -> None:
    pub = Publisher(settings.mqtt_port, per_city=1)
    now = time.time()
    batch = [(now - 60 * i, i, {"pm25": 10.0 + i}) for i in range(1, 11)]
    batch[4] = (now - 300, 5, {"pm25": float(-3)})
    try:
        pub.raw(0, encode_batch(batch))
        pub.settle()
    finally:
        pub.close()
    assert wait_count(influx, "air", "pm25", 9) == 9
    dead = wait_until(lambda: list(read_all(settings.data_dir / "deadletter")), 10, what="a dead letter")
    assert [(r["reason"], r["index"]) for r in dead[0]["rejections"]] == [(Reason.OUT_OF_RANGE, 4)]


def test_partial_write_sets_aside_only_the_refused_lines(settings: Settings, workdir: Path, influx: Influx) -> None:
    # A string-typed pm1 in this shard makes InfluxDB refuse float pm1 points (HTTP 400, partial write).
    now = time.time()
    influx.write([f'air,city=phuket,device=legacy pm1="text" {int((now - 120) * 1000)}'])
    svc = start_ingest(settings, workdir)
    pub = Publisher(settings.mqtt_port, per_city=1)
    try:
        for i in range(20):
            m = {"pm25": 10.0 + i, "pm1": 3.0} if i % 5 == 0 else {"pm25": 10.0 + i}
            pub.raw(0, orjson.dumps({"v": 1, "ts": now - 60 + i, "seq": i, "m": m}))
        pub.settle()
        assert wait_count(influx, "air", "pm25", 16, 30) == 16  # 4 lines carried the conflicting pm1 and were refused whole
        dead = wait_until(lambda: list(read_all(settings.data_dir / "deadletter")), 10, what="dead letters")
        assert len(dead) == 4 and {d["reason"] for d in dead} == {Reason.STORAGE_REJECTED}
        assert all("pm1=3.0" in d["payload"] for d in dead)
        assert "field type conflict" in dead[0]["rejections"][0]["detail"]
    finally:
        pub.close()
        svc.stop()


def test_status_documents_are_stored(settings: Settings, influx: Influx, ingest: Service) -> None:
    pub = Publisher(settings.mqtt_port, per_city=1)
    try:
        pub.raw(0, encode_status("online", fw="1.2.0", reset="watchdog", battery_v=3.9, buffered=12, faults=["pm:timeout"]), channel="status")
        pub.raw(1, encode_status("offline"), channel="status")
        pub.raw(2, b'{"v":1,"state":"sleepy"}', channel="status")
        pub.settle()
    finally:
        pub.close()
    wanted = {pub.devices[0][1]: "online", pub.devices[1][1]: "offline"}

    def both_stored() -> dict[str, dict[str, object]] | None:
        # wait for the two documents themselves: a count of rows could be met by something else
        rows = influx.rows('SELECT * FROM "raw"."device_status" GROUP BY device')
        by_dev = {r["device"]: r for r in rows if wanted.get(r["device"]) == r["state"]}
        return by_dev if len(by_dev) == 2 else None

    by_dev = wait_until(both_stored, 30, what="the online and offline status points")
    first = by_dev[pub.devices[0][1]]
    assert (first["state"], first["fw"], first["reset"], first["buffered"], first["faults"]) == ("online", "1.2.0", "watchdog", 12.0, "pm:timeout")
    assert by_dev[pub.devices[1][1]]["state"] == "offline"
    dead = wait_until(lambda: list(read_all(settings.data_dir / "deadletter")), 10, what="a dead letter")
    assert dead[0]["reason"] == Reason.BAD_STATUS
