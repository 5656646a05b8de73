"""What the input and security scenarios share: a freshly started stack, an MQTT device, probes.

`Stack` starts a broker (open, or secured with the dynamic-security plugin
and a TLS listener), InfluxDB and a real `nakhon ingest` process under one
folder. `MqttDevice` behaves like a device: MQTT 5, PUBACK reason codes kept.
The probes read what came out: the ingest's stats log line, its memory, the
dead-letter store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import paho.mqtt.client as mqtt

from api.broker import DynSec, new_password
from contract.influx import Influx
from contract.settings import Settings
from harness.procstat import memory_kb
from harness.progress import say as say_line
from harness.verify.stream import free_settings, open_platform
from ingest.deadletter import read_all
from nakhon import accounts
from nakhon.local import LocalPlatform
from nakhon.procs import Service
from nakhon.servers import free_port

# InfluxQL, SQL and path injection attempts, sent through every API parameter (scenario 12, tests/api/test_auth.py)
INJECTIONS = [
    "chiang_mai' OR '1'='1",
    'x" OR "city" =~ /.*/ --',
    "1h) fill(0); DROP MEASUREMENT air; SELECT (",
    'pm25") FROM "raw"."air" WHERE city = \'phuket\' --',
    "phuket\nDROP DATABASE nakhon",
    "$city",
    "/.*/",
    "'; DELETE FROM devices; --",
    "../../../etc/passwd",
    "2024-01-01T00:00:00Z' OR time > 0 --",
]

# Two cities' data for the API's access checks (scenario 12, tests/api/test_auth.py):
# OTHER lives in Phuket, so no answer about Chiang Mai may carry it.
CITY, DEVICE, OTHER = "chiang_mai", "cm-air-001", "pk-secret-01"


def seed_two_cities(db: Influx) -> None:
    """Two hours of minute readings for DEVICE and OTHER, and their latest values."""
    now = int(time.time() * 1000)
    lines = []
    for i in range(120):
        t = now - i * 60_000
        lines.append(f"air,city={CITY},device={DEVICE} pm25={20 + i % 7}.0,pm10=40.0,seq={i}i {t}")
        lines.append(f"air,city=phuket,device={OTHER} pm25=99.0,pm10=99.0,seq={i}i {t}")
    db.write(lines)
    db.write([f"air,city={CITY},device={DEVICE} pm25=21.0,ts={now}i 0", f"air,city=phuket,device={OTHER} pm25=99.0,ts={now}i 0"], rp="latest")


T = TypeVar("T")


def say(msg: str) -> None:
    say_line(msg, indent=2)


def wait_for(fn: Callable[[], T], timeout: float, interval: float = 0.2) -> T:
    """Poll `fn` until truthy or `timeout`; returns the last value either way (the caller judges)."""
    deadline = time.monotonic() + timeout
    last = fn()
    while not last and time.monotonic() < deadline:
        time.sleep(interval)
        last = fn()
    return last


class Stack:
    """Broker + InfluxDB + ingest, fresh, under `root`: the platform `nakhon up` runs (nakhon/local.py).

    `secure` is that platform exactly (generated broker config with dynamic security and a TLS
    listener, InfluxDB with authentication, the ingest, the alert evaluator and the API as real
    processes); without it, its open variant with the ingest only (and none with `ingest=False`),
    for the input scenarios, whose publishers stand in for many devices at once."""

    def __init__(self, root: Path, *, secure: bool = False, ingest: bool = True, **overrides: Any) -> None:
        self.root = Path(root).resolve()
        self.secure = secure
        self.tls_port: int | None = None
        self.ca: Path | None = None
        overrides = {"ingest_batch_ms": 50, **overrides}
        if secure:
            self.platform = LocalPlatform(self.root, free_settings(**overrides), with_fleet=False, tls_port=free_port())
            self.tls_port, self.ca = self.platform.broker.tls_port, self.platform.ca
            self.admin = (accounts.BROKER_ADMIN, self.platform.secrets["broker_admin"])
        else:
            self.platform = open_platform(self.root, own_services=("ingest",) if ingest else (), **overrides)
        self.broker, self.influxdb = self.platform.broker, self.platform.influxdb
        self.settings: Settings | None = None
        self.ingest: Service | None = None
        self.influx: Influx | None = None

    def start(self) -> Stack:
        p = self.platform
        p.start()
        if "ingest" in p.own_services:
            self.ingest = p.ingest
        if self.secure:
            self.settings = p.api_settings  # what the API runs with: the read-only InfluxDB user, the provisioning account
            self.influx = Influx(p.influxdb.url, p.settings.influx_db, accounts.INFLUX_ADMIN, p.secrets["influx_admin"])  # the operator's
        else:
            self.settings = p.settings
            self.influx = Influx(p.influxdb.url)
        return self

    def stop(self) -> None:
        if self.influx is not None:
            self.influx.close()
        self.platform.stop()

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what came out ------------------------------------------------------
    @property
    def db(self) -> Influx:
        assert self.influx is not None
        return self.influx

    @property
    def cfg(self) -> Settings:
        assert self.settings is not None
        return self.settings

    def dead_letters(self) -> list[dict[str, Any]]:
        return list(read_all(self.cfg.data_dir / "deadletter"))

    def stats(self) -> dict[str, Any]:
        """The ingest's latest `stats` log line (it logs one every second here)."""
        assert self.ingest is not None
        last: dict[str, Any] = {}
        if self.ingest.log_path.exists():
            for raw in self.ingest.log_path.read_bytes().splitlines():
                if b'"msg":"stats"' in raw:
                    last = orjson.loads(raw)
        return last

    def settled(self, received: int, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the ingest has received `received` messages and flushed them (two equal stats lines in a row)."""
        deadline = time.monotonic() + timeout
        prev: dict[str, Any] = {}
        while time.monotonic() < deadline:
            cur = self.stats()
            if cur.get("received", 0) >= received and prev and {k: v for k, v in cur.items() if k.startswith(("rec", "rej", "readings", "points"))} == \
                    {k: v for k, v in prev.items() if k.startswith(("rec", "rej", "readings", "points"))} and cur.get("ts") != prev.get("ts"):
                return cur
            if cur.get("ts") != prev.get("ts"):
                prev = cur
            time.sleep(0.3)
        return self.stats()

    def dynsec(self) -> DynSec:
        return DynSec("127.0.0.1", self.broker.port, *self.admin)

    def provision(self, city: str, device: str) -> str:
        """A device account in the secured broker (as the API does it); returns its password."""
        password = new_password()
        self.dynsec().create_device(city, device, password)
        return password


def mem_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in kB."""
    return memory_kb(pid)


class MqttDevice:
    """A device as firmware would be: MQTT 5 (or 3.1.1), PUBACK and SUBACK reason codes kept, CONNACK awaited.

    `tls_ca` turns on TLS with verification against that CA file."""

    def __init__(self, port: int, client_id: str, username: str | None = None, password: str | None = None, *,
                 protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5, tls_ca: Path | None = None, connect: bool = True) -> None:
        self.connack = threading.Event()
        self.reason = ""
        self.acks: dict[int, str] = {}
        self.subacks: dict[int, list[str]] = {}
        self.disconnected = threading.Event()
        self.disconnect_reason = ""
        self.error = ""
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.host = "127.0.0.1"
        if tls_ca is not None:
            self.client.tls_set(ca_certs=str(tls_ca))
            self.host = "localhost"  # the name in the broker's certificate
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        # short back-off, so close() after a dropped connection does not sit out 1 s (paho takes float seconds; typed int)
        self.client.reconnect_delay_set(0.1, 2)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, str(rc))
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subacks.__setitem__(mid, [str(x) for x in codes])
        self.port = port
        if connect:
            self.start()

    def start(self) -> None:
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except Exception as exc:  # TLS handshake failures surface here: the connection never happened
            self.error = f"{type(exc).__name__}: {exc}"[:200]
            self.connack.set()
            return
        self.client.loop_start()

    def _on_connect(self, c: mqtt.Client, u: object, f: object, rc: mqtt.ReasonCode, p: object) -> None:
        self.reason = str(rc)
        self.connack.set()

    def _on_disconnect(self, c: mqtt.Client, u: object, f: object, rc: mqtt.ReasonCode, p: object) -> None:
        self.disconnect_reason = str(rc)
        self.disconnected.set()

    def accepted(self, timeout: float = 10.0) -> bool:
        """True only on a CONNACK with Success; no CONNACK (refused handshake, closed socket) is False."""
        self.connack.wait(timeout)
        return not self.error and self.reason == "Success"

    def publish(self, topic: str, payload: bytes, timeout: float = 10.0) -> str:
        """The PUBACK's reason ("Success", "No matching subscribers", "Not authorized", ...) or "no puback"."""
        info = self.client.publish(topic, payload, qos=1)
        wait_for(lambda: info.mid in self.acks or self.disconnected.is_set(), timeout, 0.02)
        return self.acks.get(info.mid, "no puback")

    def subscribe(self, topic: str, timeout: float = 10.0) -> list[str]:
        _, mid = self.client.subscribe(topic, 1)
        if mid is None:
            return ["no suback"]
        wait_for(lambda: mid in self.subacks, timeout, 0.02)
        return self.subacks.get(mid, ["no suback"])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Publisher:
    """One anonymous client publishing many messages at QoS 1, counting PUBACKs."""

    def __init__(self, port: int, client_id: str = "verify-pub") -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(500)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.infos: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes) -> None:
        self.infos.append(self.client.publish(topic, payload, qos=1))

    def settle(self, timeout: float = 120.0) -> int:
        """Wait for every PUBACK; returns how many the broker acknowledged."""
        deadline = time.monotonic() + timeout
        for info in self.infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        return sum(i.is_published() for i in self.infos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
