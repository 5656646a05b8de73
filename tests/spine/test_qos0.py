"""QoS 0 messages (a last will is often QoS 0) are stored too; there is nothing to acknowledge."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt

from contract import storage, topics
from contract.influx import Influx
from contract.payload import encode_reading
from contract.settings import Settings
from contract.status import encode_status
from nakhon.procs import Service
from tests.helpers import count, wait_until


def test_qos0_telemetry_and_status_are_stored(settings: Settings, influx: Influx, ingest: Service) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cm-q0-001")
    c.connect("127.0.0.1", settings.mqtt_port)
    c.loop_start()
    try:
        c.publish(topics.topic("chiang_mai", "cm-q0-001", "telemetry"), encode_reading(time.time(), 1, {"pm25": 12.5}), qos=0).wait_for_publish(5)
        c.publish(topics.topic("chiang_mai", "cm-q0-001", "status"), encode_status("offline"), qos=0).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()
    wait_until(lambda: count(influx, "air", "pm25") == 1, 20, what="the QoS 0 reading")
    wait_until(lambda: count(influx, storage.STATUS_MEASUREMENT, "state") == 1, 20, what="the QoS 0 status")
