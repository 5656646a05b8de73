"""A backlog queued for the evaluator's session while it was away: drained with bounded memory, nothing lost."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest

from contract.payload import encode_reading
from contract.settings import Settings
from nakhon.procs import Service
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

QUEUED = 12_000  # three times the inbox's bound


def _publish(port: int, n: int) -> None:
    """n readings of 2,000 water stations over their flood line (each opens two alerts on its first reading: judging
    is slow at first, as in a storm), at QoS 1, each PUBACKed by the broker."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="backlog_publisher")
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.time() - 60
    infos = [c.publish(f"nakhon/v1/phuket/pk-water-{i % 2000:04d}/telemetry", encode_reading(t0 + i * 0.001, i, {"water_level_cm": 300.0}),
                       qos=1) for i in range(n)]
    for info in infos:
        info.wait_for_publish(60)
        assert info.is_published()
    c.loop_stop()
    c.disconnect()


def test_a_backlog_is_drained_holding_at_most_inbox_max_messages(settings: Settings, workdir: Path) -> None:
    assert settings.alerts_inbox_max * 3 == QUEUED
    svc = Service("alerts", ["alerts", "run"], settings, workdir / "logs")
    svc.start()  # the first start makes the persistent session and its subscription
    assert svc.wait_log('"msg":"connected"', 30), svc.log_path.read_text()[-3000:]
    svc.stop()
    _publish(settings.mqtt_port, QUEUED)
    health = settings.data_dir / "alerts" / "health.json"
    health.unlink(missing_ok=True)
    svc.start()  # Mosquitto 2.0 sends the resumed session's whole queue at once, whatever the Receive Maximum asked

    def report() -> dict[str, int]:
        try:
            doc: dict[str, int] = orjson.loads(health.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return doc if doc.get("messages", 0) >= QUEUED else {}

    try:
        doc = wait_until(report, timeout=300, what=f"{QUEUED} messages judged")
    finally:
        svc.stop()
    assert doc["messages"] == QUEUED  # every one, none twice
    assert 0 < doc["held_max"] <= settings.alerts_inbox_max  # was ~QUEUED (the whole backlog in memory) before the inbox was bounded
