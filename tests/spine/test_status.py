"""Status documents: each change of a device's state is kept, a retained one is stored once."""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt

from contract import storage, topics
from contract.influx import Influx
from contract.payload import encode_reading
from contract.settings import Settings
from contract.status import encode_status
from tests.conftest import start_ingest
from tests.helpers import count, wait_until


def _publish(port: int, device: str, channel: str, payload: bytes, retain: bool = False) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        c.publish(topics.topic("phuket", device, channel), payload, qos=1, retain=retain).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def test_a_retained_status_is_stored_once_across_reconnects(settings: Settings, influx: Influx, workdir: Path) -> None:
    settings = settings.model_copy(update={"ingest_writers": 1})  # batches commit in the order they arrived
    _publish(settings.mqtt_port, "pk-ret-001", "status", encode_status("online", fw="1.0.0"), retain=True)
    for run in range(3):  # the first subscribe gets the retained document; the resumed session's re-subscribes must not
        svc = start_ingest(settings, workdir, name=f"ingest-{run}")
        try:
            # a reading published after the ingest subscribed is stored after anything the broker
            # sent at the subscribe: once it is there, a retained status would be there too
            _publish(settings.mqtt_port, "pk-ret-001", "telemetry", encode_reading(time.time(), run + 1, {"pm25": 10.0 + run}))
            wait_until(lambda run=run: count(influx, "air", "pm25") == run + 1, 30, what=f"reading {run + 1}")
        finally:
            assert svc.stop() == 0
    assert count(influx, storage.STATUS_MEASUREMENT, "state") == 1
