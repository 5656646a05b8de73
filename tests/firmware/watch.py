"""A platform-side MQTT observer for firmware tests: records what a device publishes and,
standing in for the ingest, confirms what it received on the device's `stored` topic."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from contract.stored import MAX_RANGES, encode_stored, to_ranges


class Watch:
    """Subscribes to one device's topics and keeps every message, in arrival order.

    As the platform would, it confirms each telemetry message on the device's `stored`
    topic (contract.stored.encode_stored) unless `confirm` is off; `lose(seq)` names
    readings it drops as a broker losing its queue would: never confirmed, not recorded.
    `tell_time` (a clock: the fake world's, seconds) adds the platform's time `t` to every
    confirmation and answers each status with one (no seqs), as a second time source for
    a device without NTP."""

    def __init__(self, port: int, city: str, device: str, username: str | None = None, password: str | None = None,
                 confirm: bool = True, tell_time: Callable[[], float] | None = None) -> None:
        self.base = f"nakhon/v1/{city}/{device}"
        self.telemetry: list[tuple[float, bytes]] = []  # (receive time, payload)
        self.status: list[dict[str, Any]] = []
        self.confirm = confirm
        self.tell_time = tell_time
        self.lose: Callable[[int], bool] = lambda seq: False
        self.lost: list[int] = []
        self.confirmed: list[int] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{device}-{time.time_ns() % 10**6}",
                                  clean_session=False)  # a persistent session: nothing missed across broker restarts
        self._ready = threading.Event()  # connected and subscribed
        self.client.on_connect = lambda c, *_: c.subscribe([(self.base + "/telemetry", 1), (self.base + "/status", 1)])
        self.client.on_subscribe = lambda *_: self._ready.set()
        self.client.on_disconnect = lambda *_: self._ready.clear()
        self.client.reconnect_delay_set(0.2, 2)  # back soon after a broker restart: the device waits for its confirmations
        self.client.on_message = self._on_message
        if username:
            self.client.username_pw_set(username, password)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if msg.topic.endswith("/telemetry"):
                doc = orjson.loads(msg.payload)
                seqs = [r["seq"] for r in doc["batch"]] if "batch" in doc else [doc["seq"]]
                lost = [s for s in seqs if self.lose(s)]
                if lost:
                    self.lost.extend(lost)
                    if "batch" not in doc or len(lost) == len(seqs):
                        return
                    doc["batch"] = [r for r in doc["batch"] if r["seq"] not in lost]
                    payload = orjson.dumps(doc)
                else:
                    payload = bytes(msg.payload)
                self.telemetry.append((time.time(), payload))
                if self.confirm:
                    kept = [s for s in seqs if s not in lost]
                    self.confirmed.extend(kept)
                    ranges = to_ranges(kept)
                    for i in range(0, len(ranges), MAX_RANGES):
                        self._tell(ranges[i : i + MAX_RANGES])
            elif msg.topic.endswith("/status") and msg.payload:
                doc = orjson.loads(msg.payload)
                self.status.append(doc)
                if self.tell_time is not None and doc.get("state") == "online":
                    self._tell([])

    def _tell(self, ranges: list[tuple[int, int]]) -> None:
        t = self.tell_time() if self.tell_time is not None else None
        self.client.publish(self.base + "/stored", encode_stored(ranges, t), qos=1)

    def publish_config(self, doc: dict[str, Any] | bytes) -> None:
        payload = doc if isinstance(doc, bytes) else orjson.dumps(doc)
        self.client.publish(self.base + "/config", payload, qos=1, retain=True).wait_for_publish(10)

    def ready(self) -> bool:
        """Connected and subscribed (again, after a broker restart)."""
        return self._ready.is_set()

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
