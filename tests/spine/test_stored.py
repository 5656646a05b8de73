"""Store-and-forward end to end (issue 18): a device hears on its `stored` topic exactly what the platform made durable.

Real Mosquitto, real InfluxDB, the real `nakhon ingest` process; the device is a
paho client subscribed to its own `stored` topic, as the firmware is.
"""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt

from contract.influx import Influx
from contract.settings import Settings
from contract.stored import parse_stored
from nakhon.procs import Service
from nakhon.servers import InfluxDB
from tests.helpers import count, wait_until

CITY, DEVICE = "phuket", "pk-air-181"
BASE = f"nakhon/v1/{CITY}/{DEVICE}"


class Device:
    """A device that publishes readings and keeps every `stored` confirmation it hears."""

    def __init__(self, port: int, device: str = DEVICE, city: str = CITY) -> None:
        self.base = f"nakhon/v1/{city}/{device}"
        self.confirmed: set[int] = set()
        self.messages = 0
        self.times: list[float] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(self.base + "/stored", qos=1)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        assert msg.topic == self.base + "/stored" and not msg.retain
        doc = parse_stored(msg.payload)
        with self._lock:
            self.messages += 1
            for lo, hi in doc.ranges:
                self.confirmed.update(range(lo, hi + 1))
            if doc.t is not None:
                self.times.append(doc.t)

    def send(self, seqs: list[int], batch: bool = False, pm25: float = 20.0) -> None:
        t0 = time.time() - 3600  # a reading's time follows its seq: each one its own point
        if batch:
            docs = [{"v": 1, "batch": [{"ts": t0 + s, "seq": s, "m": {"pm25": pm25}} for s in seqs]}]
        else:
            docs = [{"v": 1, "ts": t0 + s, "seq": s, "m": {"pm25": pm25}} for s in seqs]
        for d in docs:
            self.client.publish(self.base + "/telemetry", json.dumps(d), qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_device_hears_exactly_what_was_stored(settings: Settings, influx: Influx, ingest: Service) -> None:
    dev = Device(settings.mqtt_port)
    other = Device(settings.mqtt_port, "pk-air-182")
    try:
        dev.send(list(range(1, 51)))  # one reading a message
        dev.send(list(range(60, 160)), batch=True)  # a replayed batch, after a gap (51..59 never sent)
        other.send([7, 8, 9])
        wait_until(lambda: dev.confirmed >= set(range(1, 51)) | set(range(60, 160)), 60, what="the device's confirmations")
        assert count(influx, "air", "pm25") == 153
        assert dev.confirmed == set(range(1, 51)) | set(range(60, 160))  # the gap is not confirmed: it was never stored
        wait_until(lambda: other.confirmed == {7, 8, 9}, 30, what="the other device's own confirmations")
        assert dev.messages < 150 / 2  # batched: far fewer confirmations than readings
        assert all(abs(t - time.time()) < 120 for t in dev.times)  # the platform's clock rides along
    finally:
        dev.close()
        other.close()


def test_with_influxdb_down_confirmations_come_from_the_spool(settings: Settings, influxdb: InfluxDB, influx: Influx,
                                                               ingest: Service) -> None:
    dev = Device(settings.mqtt_port)
    try:
        dev.send([1, 2])
        wait_until(lambda: dev.confirmed == {1, 2}, 60, what="confirmations while InfluxDB is up")
        influxdb.stop()
        dev.send(list(range(3, 103)), batch=True)
        wait_until(lambda: dev.confirmed == set(range(1, 103)), 60, what="confirmations from the spool while InfluxDB is down")
        assert ingest.wait_log('"msg":"influxdb unavailable, spooling"', 5)
        influxdb.start()
        wait_until(lambda: count(influx, "air", "pm25") == 102, 120, what="the spool replayed into InfluxDB")
    finally:
        dev.close()
