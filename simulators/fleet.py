"""A minimal fleet: each simulated device its own MQTT connection.

Devices connect with their own client id (and credentials where the broker
asks), publish a retained `online` status with an `offline` Last Will, and
send telemetry per the contract at QoS 1. Every reading sent is kept so a
test can compare what was stored with what was sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import paho.mqtt.client as mqtt

from contract import topics
from contract.payload import encode_reading
from simulators.devices import SimDevice
from simulators.signals import reading

log = logging.getLogger("nakhon.simulate")

Sent = tuple[float, int, dict[str, float]]


@dataclass
class FleetResult:
    sent: int = 0
    acked: int = 0
    seconds: float = 0.0
    readings: dict[str, list[Sent]] = field(default_factory=dict)


class _Device:
    def __init__(self, dev: SimDevice, host: str, port: int, password: str | None) -> None:
        self.dev = dev
        self.seq = 0
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=dev.device_id, protocol=mqtt.MQTTv311, clean_session=True)
        if password is not None:
            c.username_pw_set(dev.device_id, password)
        status = topics.topic(dev.city, dev.device_id, "status")
        c.will_set(status, orjson.dumps({"v": 1, "state": "offline"}), qos=1, retain=True)
        c.max_inflight_messages_set(100)
        self.connected = threading.Event()
        c.on_connect = self._on_connect
        self.client = c
        self.host, self.port = host, port
        self.telemetry = topics.topic(dev.city, dev.device_id, "telemetry")
        self.status = status

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, rc: mqtt.ReasonCode, props: object) -> None:
        if rc.is_failure:
            log.error("device refused by broker", extra={"fields": {"device": self.dev.device_id, "reason": str(rc)}})
            return
        doc = {"v": 1, "state": "online", "fw": "sim-0.1.0", "kind": self.dev.kind, "lat": self.dev.lat, "lon": self.dev.lon}
        client.publish(self.status, orjson.dumps(doc), qos=1, retain=True)
        self.connected.set()

    def connect(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=60)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Fleet:
    def __init__(self, devices: list[SimDevice], host: str, port: int, seed: int = 1, passwords: dict[str, str] | None = None) -> None:
        self.devices = devices
        self.seed = seed
        self._devs = [_Device(d, host, port, (passwords or {}).get(d.device_id)) for d in devices]

    def connect(self, timeout: float = 30.0) -> None:
        for d in self._devs:
            d.connect()
        deadline = time.monotonic() + timeout
        for d in self._devs:
            if not d.connected.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"device {d.dev.device_id} did not connect in {timeout:.0f}s")

    def close(self) -> None:
        for d in self._devs:
            d.close()

    def send(
        self,
        per_device: int,
        start_ts: float,
        step_s: float,
        rate: float | None = None,
        realtime: bool = False,
        progress: Callable[[int, int], None] | None = None,
        stop: threading.Event | None = None,
        keep: bool = True,
    ) -> FleetResult:
        """Each device sends `per_device` readings `step_s` apart from `start_ts`.

        `rate` caps readings/s over the fleet; `realtime` waits for each
        reading's own time. Returns what was sent and acknowledged by the broker.
        """
        result = FleetResult(readings={d.dev.device_id: [] for d in self._devs} if keep else {})
        infos: list[mqtt.MQTTMessageInfo] = []
        t0 = time.monotonic()
        total = per_device * len(self._devs)
        for k in range(per_device):
            ts = round(start_ts + k * step_s, 3)
            if realtime and (delay := ts - time.time()) > 0:
                if stop is None:
                    time.sleep(delay)
                elif stop.wait(delay):
                    break
            if stop is not None and stop.is_set():
                break
            for d in self._devs:
                m = reading(d.dev.device_id, d.dev.metrics, ts, self.seed)
                d.seq += 1
                infos.append(d.client.publish(d.telemetry, encode_reading(ts, d.seq, m), qos=topics.QOS))
                if keep:
                    result.readings[d.dev.device_id].append((ts, d.seq, m))
                result.sent += 1
                if rate and (ahead := result.sent / rate - (time.monotonic() - t0)) > 0:
                    time.sleep(ahead)
            if len(infos) > 20_000:
                result.acked += _settle(infos)
            if progress:
                progress(result.sent, total)
        result.acked += _settle(infos)
        result.seconds = time.monotonic() - t0
        return result

    def publish_raw(self, device_id: str, payload: bytes, channel: str = "telemetry") -> mqtt.MQTTMessageInfo:
        d = next(d for d in self._devs if d.dev.device_id == device_id)
        return d.client.publish(topics.topic(d.dev.city, device_id, channel), payload, qos=topics.QOS)


def _settle(infos: list[mqtt.MQTTMessageInfo]) -> int:
    """Wait for the broker's PUBACKs; returns how many came, and empties the list."""
    acked = 0
    for info in infos:
        try:
            info.wait_for_publish(60)
        except RuntimeError:  # not queued: the client lost its connection
            continue
        acked += info.is_published()
    infos.clear()
    return acked
