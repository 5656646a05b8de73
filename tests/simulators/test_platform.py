"""The fleet against the real platform: every injected fault is reflected in what it recorded."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
from collections import Counter
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest

from contract import topics
from contract.cities import BUILTIN_CITIES
from contract.influx import Influx
from contract.settings import Settings
from ingest.deadletter import read_all
from nakhon.procs import Service
from nakhon.servers import Mosquitto
from simulators.devices import SimDevice, make_fleet
from simulators.faults import MALFORMED, Fault
from simulators.fleet import Fleet
from simulators.runconfig import RunConfig
from tests.helpers import wait_count, wait_ingest_idle, wait_until

pytestmark = pytest.mark.e2e  # simulated devices against the platform


def _run(devices: list[SimDevice], cfg: RunConfig, faults: list[Fault]) -> Fleet:
    fleet = Fleet(devices, cfg, faults)
    asyncio.run(fleet.run(settle_s=30))
    return fleet


def _stored(influx: Influx, device: str) -> list[int]:
    rows = influx.rows('SELECT "seq" FROM "raw"."device" WHERE "device" = $d', params={"d": device})
    return [int(r["seq"]) for r in rows]


def _dead(settings: Settings) -> Counter[str]:
    return Counter(str(r.get("reason")) for r in read_all(settings.data_dir / "deadletter"))


def _ingest_rejected(influx: Influx) -> Counter[str]:
    rows = influx.rows('SELECT * FROM "raw"."ingest_stats" GROUP BY "worker" ORDER BY time DESC LIMIT 1')
    out: Counter[str] = Counter()
    for r in rows:
        for k, v in r.items():
            if k.startswith("rejected_") and v:
                out[k.removeprefix("rejected_")] += int(v)
    return out


def test_every_fault_is_reflected_in_the_platform(settings: Settings, ingest: Service, influx: Influx) -> None:
    devices = make_fleet(list(BUILTIN_CITIES), 3, seed=3)
    ids = [d.device_id for d in devices]
    gone, bad, dup, skewed, spiky, stuck = ids[0], ids[1], ids[2], ids[3], ids[4], ids[5]
    faults = [
        Fault("offline", at_s=2, for_s=4, device_ids=(gone,)),
        Fault("malformed", at_s=1, device_ids=(bad,), count=2),
        Fault("duplicate", at_s=0, for_s=60, device_ids=(dup,)),
        Fault("skew", at_s=3, for_s=3, seconds=900, device_ids=(skewed,)),  # beyond the ingest's 300 s of future
        Fault("spike", at_s=0, for_s=60, probability=0.5, device_ids=(spiky,)),
        Fault("stuck", at_s=0, for_s=60, device_ids=(stuck,)),
        Fault("drift", at_s=0, for_s=60, per_hour=360, device_ids=(stuck,)),
        Fault("storm", at_s=8, devices=0),
    ]
    cfg = RunConfig(port=settings.mqtt_port, interval_s=1.0, duration_s=12, keep_ledger=True, backoff_base_s=0.5, seed=3,
                    max_payload_bytes=settings.max_payload_bytes)
    fleet = _run(devices, cfg, faults)
    st = fleet.stats
    assert st.ledger is not None
    made = sum(len(v) for v in st.ledger.values())

    # faults were injected and counted
    assert st.faults["offline"] == 1 and st.replayed >= 3 and st.unsent == 0
    assert st.faults["storm"] == len(devices) and st.storm_pending == 0 and st.storm_seconds > 0
    assert st.duplicates_sent >= 10
    assert st.expected_rejected["ts_out_of_window"] == 3
    assert st.faults["spike"] > 0 and st.faults["stuck"] > 0 and st.faults["drift"] > 0
    assert st.readings_acked == st.readings_sent
    assert set(st.malformed) == set(MALFORMED) and all(n == 2 for n in st.malformed.values())

    # every valid reading stored exactly once (duplicates and replays overwrite themselves)
    assert wait_count(influx, "device", "battery_v", made, 60) == made
    # the device that went offline has no gap: every seq it made, once
    seqs = _stored(influx, gone)
    assert sorted(seqs) == [s for _, s in st.ledger[gone]] == list(range(1, len(seqs) + 1))
    # and the broker told the platform it was offline (its Last Will)
    rows = influx.rows('SELECT "state" FROM "raw"."device_status" WHERE "device" = $d', params={"d": gone})
    assert "offline" in [r["state"] for r in rows]
    # the stuck device really reported a stuck value (plus drift on the same metric)
    assert len(st.ledger[stuck]) == len(_stored(influx, stuck))

    # dead letters: exactly the malformed messages sent, reason by reason, plus the skewed readings
    expected = Counter(st.malformed) + Counter(st.expected_rejected)
    wait_until(lambda: sum(_dead(settings).values()) >= sum(expected.values()), 30, what="dead letters")
    wait_ingest_idle(influx)
    assert _dead(settings) == expected
    # and the ingest's own counters (written to InfluxDB every second) say the same, reason by reason
    wait_until(lambda: _ingest_rejected(influx) == expected, 30, what=f"ingest counters {dict(expected)}")


def test_device_obeys_retained_config(settings: Settings, ingest: Service, influx: Influx) -> None:
    devices = make_fleet(list(BUILTIN_CITIES)[:1], 2, seed=5)
    slow = devices[0]
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="operator", protocol=mqtt.MQTTv311)
    pub.connect("127.0.0.1", settings.mqtt_port)
    pub.loop_start()
    info = pub.publish(topics.topic(slow.city, slow.device_id, "config"), orjson.dumps({"v": 1, "seq": 7, "interval_s": 3}), qos=1, retain=True)
    info.wait_for_publish(10)
    pub.disconnect()
    pub.loop_stop()
    cfg = RunConfig(port=settings.mqtt_port, interval_s=1.0, duration_s=9, keep_ledger=True, seed=5)
    st = _run(devices, cfg, []).stats
    assert st.ledger is not None
    assert st.config_applied == 1
    assert len(st.ledger[slow.device_id]) <= 4 < len(st.ledger[devices[1].device_id])
    wait_until(lambda: influx.rows('SELECT last("config_seq") FROM "raw"."device_status" WHERE "device" = $d', params={"d": slow.device_id}),
               30, what="status with config_seq")
    rows = influx.rows('SELECT last("config_seq") FROM "raw"."device_status" WHERE "device" = $d', params={"d": slow.device_id})
    assert rows[0]["last"] == 7


def test_credentials_from_provisioning(workdir: Path) -> None:
    """Username = device id and its own password; a wrong password is refused and counted."""
    devices = make_fleet(list(BUILTIN_CITIES)[:1], 3, seed=9)
    passwords = {d.device_id: f"pw-{i}-secret" for i, d in enumerate(devices)}
    pwfile = workdir / "passwd"
    pwfile.touch()
    for dev_id, pw in passwords.items():
        subprocess.run(["mosquitto_passwd", "-b", str(pwfile), dev_id, pw], check=True, capture_output=True)
    passwords[devices[2].device_id] = "wrong"
    broker = Mosquitto(workdir / "secure", allow_anonymous=False, password_file=pwfile)
    broker.start()
    try:
        cfg = RunConfig(port=broker.port, interval_s=1.0, duration_s=3, passwords=passwords, backoff_base_s=0.2, backoff_cap_s=0.5)
        fleet = Fleet(devices, cfg)

        async def run() -> None:
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(5, stop.set)  # the refused device would wait for ever
            await fleet.run(stop)

        asyncio.run(run())
        st = fleet.stats
        assert st.connects == 2 and st.refused >= 2
        assert st.readings_acked == st.readings_sent >= 4
    finally:
        broker.stop()


def test_accelerated_time_replays_the_past_and_never_stamps_the_future(broker: Mosquitto) -> None:
    devices = make_fleet(list(BUILTIN_CITIES), 2, seed=4)
    cfg = RunConfig(port=broker.port, mode="accelerated", speed=720, since_s=3600, interval_s=60, duration_s=3600, keep_ledger=True, seed=4)
    t0 = time.time()
    st = _run(devices, cfg, []).stats
    assert time.time() - t0 < 20  # an hour in seconds
    assert st.ledger is not None and st.readings_acked == st.readings_sent == 60 * len(devices)
    for readings in st.ledger.values():
        ts = [t for t, _ in readings]
        assert len(ts) == 60
        assert all(round(b - a, 3) == 60 for a, b in itertools.pairwise(ts))
        assert t0 - 3600 - 1 <= ts[0] < t0 - 3600 + 60
        assert ts[-1] <= time.time()
