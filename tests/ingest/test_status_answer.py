"""A device's `online` status is answered with a `stored` message carrying the platform's time (issue 18).

A device whose NTP is blocked has only undated readings, so it sends no
telemetry and would never get a confirmation; the answer to its status is
where it learns `t`. The real ingest and broker.
"""

from __future__ import annotations

import queue
import time

import paho.mqtt.client as mqtt
import pytest

from contract import topics
from contract.influx import Influx
from contract.settings import Settings
from contract.status import encode_status
from contract.stored import parse_stored
from nakhon.procs import Service

pytestmark = pytest.mark.e2e


def test_the_ingest_answers_a_devices_status_with_its_time(settings: Settings, ingest: Service, influx: Influx) -> None:
    city, device = "phuket", "pk-air-042"
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    subscribed = queue.Queue[int]()
    dev = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv311)
    dev.on_message = lambda c, u, msg: got.put((msg.topic, msg.payload))
    dev.on_subscribe = lambda *a: subscribed.put(1)
    dev.connect("127.0.0.1", settings.mqtt_port)
    dev.loop_start()
    try:
        dev.subscribe(topics.topic(city, device, "stored"), qos=1)
        subscribed.get(timeout=10)
        before = time.time()
        dev.publish(topics.topic(city, device, "status"), encode_status("online", uptime_s=3, buffered=4, faults=["ntp:no_answer"]),
                    qos=1, retain=True).wait_for_publish(10)
        topic, payload = got.get(timeout=30)
        assert topic == topics.topic(city, device, "stored")
        doc = parse_stored(payload)
        assert doc.ranges == []  # nothing of it is durable: it is told only the time
        assert doc.t is not None and before - 1 <= doc.t <= time.time() + 1
    finally:
        dev.disconnect()
        dev.loop_stop()
