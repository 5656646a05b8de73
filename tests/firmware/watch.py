"""A platform-side MQTT observer for firmware tests: records what a device publishes."""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


class Watch:
    """Subscribes to one device's topics and keeps every message, in arrival order."""

    def __init__(self, port: int, city: str, device: str, username: str | None = None, password: str | None = None) -> None:
        self.base = f"nakhon/v1/{city}/{device}"
        self.telemetry: list[tuple[float, bytes]] = []  # (receive time, payload)
        self.status: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{device}-{time.time_ns() % 10**6}",
                                  clean_session=False)  # a persistent session: nothing missed across broker restarts
        self.client.on_connect = lambda c, *_: c.subscribe([(self.base + "/telemetry", 1), (self.base + "/status", 1)])
        self.client.on_message = self._on_message
        if username:
            self.client.username_pw_set(username, password)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if msg.topic.endswith("/telemetry"):
                self.telemetry.append((time.time(), bytes(msg.payload)))
            elif msg.topic.endswith("/status") and msg.payload:
                self.status.append(orjson.loads(msg.payload))

    def publish_config(self, doc: dict[str, Any] | bytes) -> None:
        payload = doc if isinstance(doc, bytes) else orjson.dumps(doc)
        self.client.publish(self.base + "/config", payload, qos=1, retain=True).wait_for_publish(10)

    def last_status(self) -> dict[str, Any] | None:
        with self._lock:
            return self.status[-1] if self.status else None

    def readings(self) -> list[dict[str, Any]]:
        """Every reading published, batches unpacked."""
        out: list[dict[str, Any]] = []
        with self._lock:
            payloads = [p for _, p in self.telemetry]
        for p in payloads:
            doc = orjson.loads(p)
            out.extend(doc["batch"] if "batch" in doc else [{k: doc[k] for k in ("ts", "seq", "m")}])
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
