"""A small field of devices for the dashboard tests, published through the real broker.

Every city gets one device of each kind, 26 hours of readings (so 24-hour
averages and hourly roll-ups exist), status documents with firmware, reset
cause, buffering and faults, one device that went offline, and a few bad
messages so the ingest counts rejects by reason. Values are shaped like the
pilots (a daily cycle), deterministic, and within the catalogue's ranges.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from contract import topics
from contract.cities import City
from contract.payload import encode_batch, encode_reading
from contract.status import encode_status

STEP_S = 600.0
HOURS = 26
KINDS = ("air", "weather", "water", "noise", "traffic")


@dataclass(frozen=True)
class Device:
    city: City
    kind: str
    n: int

    @property
    def id(self) -> str:
        return f"dash-{self.city.slug.replace('_', '-')}-{self.kind}"

    @property
    def lat(self) -> float:
        return round(self.city.lat + 0.01 * math.sin(self.n), 5)

    @property
    def lon(self) -> float:
        return round(self.city.lon + 0.01 * math.cos(self.n), 5)


def values(dev: Device, ts: float) -> dict[str, float | str]:
    """One reading: a daily cycle in Bangkok time, shaped per kind."""
    day = math.sin(2 * math.pi * (((ts / 3600.0) + 7) % 24) / 24 - math.pi / 2)  # -1 at night .. 1 mid-afternoon
    wobble = math.sin(ts / 977.0 + dev.n)
    m: dict[str, float | str] = {"battery_v": round(3.9 - 0.05 * dev.n + 0.05 * day, 3), "rssi_dbm": float(-60 - 4 * dev.n)}
    if dev.kind == "air":
        m |= {"pm1": round(15 + 8 * day, 2), "pm25": round(32 + 12 * day + 3 * wobble, 2), "pm10": round(55 + 20 * day, 2),
              "temp_c": round(29 + 4 * day, 2), "rh": round(70 - 15 * day, 2)}
    elif dev.kind == "weather":
        m |= {"temp_c": round(29 + 4 * day, 2), "rh": round(70 - 15 * day, 2), "pressure_hpa": round(1008 + day, 2),
              "rain_mm": round(max(0.0, 1.5 * wobble), 2), "wind_ms": round(2.5 + day, 2)}
    elif dev.kind == "water":
        m |= {"water_level_cm": round(120 + 40 * day + 10 * wobble, 1), "rain_mm": round(max(0.0, wobble), 2)}
    elif dev.kind == "noise":
        m |= {"laeq_db": round(62 + 8 * day, 1)}
    else:
        m |= {"vehicle_count": float(round(40 + 30 * (day + 1))), "laeq_db": round(66 + 6 * day, 1)}
    return m


@dataclass
class Sent:
    devices: list[Device]
    readings: int
    status_docs: int
    bad_messages: int
    t_end: float


def publish(host: str, port: int, cities: list[City]) -> Sent:
    """Publish the whole field at QoS 1 and wait for the broker's acknowledgements."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dashboards-test-field", protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(200)
    client.connect(host, port)
    client.loop_start()
    infos: list[mqtt.MQTTMessageInfo] = []

    def send(dev: Device, channel: str, payload: bytes) -> None:
        infos.append(client.publish(topics.topic(dev.city.slug, dev.id, channel), payload, qos=topics.QOS))

    devices = [Device(c, k, n) for c in cities for n, k in enumerate(KINDS)]
    now = time.time()
    start = now - HOURS * 3600
    readings = status_docs = bad = 0
    # bad messages first, so every later stats point carries the reject counters
    send(devices[0], "telemetry", b"{not json")
    send(devices[0], "telemetry", encode_reading(now, 1, {"pm25": 5000.0}))
    bad = 2
    for dev in devices:
        # the device's status when it came online: firmware, why it restarted, what it holds
        faulty = dev.kind == "air"
        doc = encode_status(
            "online", fw="1.2.0" if dev.n % 2 else "1.3.0", reset=("power_on", "watchdog", "brownout", "soft", "hard")[dev.n],
            battery_v=3.7, rssi_dbm=-70.0, free_mem=61000, uptime_s=12, buffered=float(10 * dev.n), dropped=float(dev.n == 3),
            faults=["pm:timeout"] if faulty else [], interval_s=int(STEP_S), kind=dev.kind, lat=dev.lat, lon=dev.lon,
        )
        send(dev, "status", doc)
        status_docs += 1
        # 26 hours of readings, replayed as batches like a device coming back online;
        # the noise station lost every tenth reading (completeness below 100 %)
        batch = []
        for k in range(int(HOURS * 3600 / STEP_S) + 1):
            if dev.kind == "noise" and k % 10 == 5:
                continue
            ts = round(start + k * STEP_S, 3)
            batch.append((ts, k + 1, values(dev, ts)))
        for i in range(0, len(batch), 50):
            send(dev, "telemetry", encode_batch(batch[i : i + 50]))
        readings += len(batch)
    for dev in devices:
        if dev.kind == "traffic":  # one device per city lost its connection (its Last Will)
            send(dev, "status", encode_status("offline"))
            status_docs += 1
    for info in infos:
        info.wait_for_publish(30)
    client.disconnect()
    client.loop_stop()
    return Sent(devices, readings, status_docs, bad, time.time())
