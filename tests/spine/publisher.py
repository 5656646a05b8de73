"""A small test publisher: one MQTT connection per device, QoS 1, every reading remembered."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from contract.payload import encode_reading
from contract.topics import topic

CITIES = ("phuket", "khon_kaen", "chiang_mai")


@dataclass
class Sent:
    readings: dict[tuple[str, str], list[tuple[int, int, float, float]]] = field(default_factory=dict)  # (city, dev) -> (ts_ms, seq, pm25, temp)
    acked: int = 0

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.readings.values())


class Publisher:
    def __init__(self, port: int, per_city: int, prefix: str = "t") -> None:
        self.devices = [(c, f"{prefix}-{c[:2]}-{i:03d}") for c in CITIES for i in range(per_city)]
        self.clients: dict[tuple[str, str], mqtt.Client] = {}
        for city, dev in self.devices:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=dev)
            c.max_inflight_messages_set(200)
            c.max_queued_messages_set(0)
            c.connect("127.0.0.1", port)
            c.loop_start()
            self.clients[(city, dev)] = c
        self.sent = Sent(readings={d: [] for d in self.devices})
        self._infos: list[mqtt.MQTTMessageInfo] = []
        self._t0 = time.time() - 3600

    def publish(self, per_device: int, rate: float | None = None, start_index: int = 0) -> None:
        """`per_device` readings from every device, one second apart in device time."""
        t_start = time.monotonic()
        n = 0
        for k in range(start_index, start_index + per_device):
            for city, dev in self.devices:
                ts = round(self._t0 + k + (hash(dev) % 1000) / 1000, 3)
                pm25, temp = round(5 + (k * 7 + len(dev)) % 300 / 3, 2), round(25 + (k % 100) / 10, 1)
                info = self.clients[(city, dev)].publish(topic(city, dev, "telemetry"), encode_reading(ts, k, {"pm25": pm25, "temp_c": temp}), qos=1)
                self._infos.append(info)
                self.sent.readings[(city, dev)].append((round(ts * 1000), k, pm25, temp))
                n += 1
                if rate and (ahead := n / rate - (time.monotonic() - t_start)) > 0:
                    time.sleep(ahead)

    def raw(self, device_index: int, payload: bytes, channel: str = "telemetry", topic_name: str | None = None) -> None:
        city, dev = self.devices[device_index]
        self._infos.append(self.clients[(city, dev)].publish(topic_name or topic(city, dev, channel), payload, qos=1))

    def settle(self, timeout: float = 120) -> int:
        """Wait for every PUBACK; returns how many the broker acknowledged."""
        for info in self._infos:
            info.wait_for_publish(timeout)
        self.sent.acked = sum(i.is_published() for i in self._infos)
        return self.sent.acked

    def close(self) -> None:
        for c in self.clients.values():
            c.disconnect()
            c.loop_stop()
