"""Credential rotation in the field, without a visit.

`POST /v1/devices/{id}/rotate?grace_s=N` publishes the device's retained config again,
with the new password in it (contract/device_config.py). The broker keeps the old
password meanwhile, so the device stays connected and reads it over its own TLS
session; it keeps the new one in flash and acknowledges the document (`config_seq` in
its status, stored by the ingest). Then, or when the operator's deadline passes,
`Rotator` switches the broker to the new password and cuts the live session: the
device comes back with the new password, the old one is refused from then on. A
last config without the password replaces the retained one, so the secret does not
stay on the broker.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from api import queries
from api.broker import BrokerError, DynSec
from api.registry import Registry
from contract import topics
from contract.device_config import encode_device_config
from contract.influx import Influx, InfluxError
from contract.logs import kv

log = logging.getLogger("nakhon.api.rotation")

def acknowledged_seq(influx: Influx, device: str) -> int | None:
    """The newest config `seq` the device confirmed in a status document."""
    q = queries.config_acknowledged(device)
    rows = influx.rows(q.statement, q.params)
    return int(rows[0]["seq"]) if rows and rows[0].get("seq") is not None else None


def config_fields(doc: dict[str, Any] | None) -> dict[str, Any]:
    """The settings of a recorded config (interval, sensors, thresholds), without its version or any secret."""
    return {k: v for k, v in (doc or {}).items() if k in ("interval_s", "sensors", "thresholds")}


def publish(registry: Registry, dynsec: DynSec, device: str, city: str, fields: dict[str, Any], key_id: str | None,
            password: str | None = None) -> tuple[int, dict[str, Any]]:
    """Publish the next retained config (recorded, the secret left out of the record); returns (seq, recorded doc)."""
    seq = registry.next_config_seq(device)
    raw = encode_device_config(seq, fields.get("interval_s"), fields.get("sensors"), fields.get("thresholds"), password)
    dynsec.publish_config(topics.topic(city, device, "config"), raw)
    doc = orjson.loads(raw)
    if "password" in doc:
        doc["password"] = "(new credentials)"
    registry.record_config(device, seq, doc, key_id)
    return seq, doc


def finish(registry: Registry, dynsec: DynSec, rot: dict[str, Any], why: str) -> None:
    """Switch the broker to the new password (the live session is cut), then retract the secret."""
    device = registry.device(rot["device"])
    dynsec.set_password(rot["device"], rot["password"])
    registry.set_password(rot["device"], rot["password"])
    registry.finish_rotation(rot["device"])
    log.info("credentials rotated", extra=kv(device=rot["device"], seq=rot["seq"], why=why))
    if device is not None:
        publish(registry, dynsec, device.id, device.city, config_fields(registry.last_config(device.id)), None)


class Rotator:
    """A background thread that completes pending rotations (acknowledged, or past their deadline).

    The API may run as several processes: only the one holding `lock_file` completes rotations,
    so each is finished (and its secret retracted) once; another takes over if that one dies."""

    def __init__(self, registry: Registry, dynsec: DynSec, influx: Influx, every_s: float = 2.0, lock_file: Path | None = None) -> None:
        self.registry, self.dynsec, self.influx, self.every_s = registry, dynsec, influx, every_s
        self.lock_file = lock_file
        self._lock_fd: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rotator", daemon=True)

    def _leader(self) -> bool:
        if self.lock_file is None or self._lock_fd is not None:
            return True
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd  # held until the process ends: the kernel frees it then
        return True

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            if not self._leader():
                continue
            try:
                self.run_once()
            except Exception:
                log.exception("rotation pass failed; will retry")

    def run_once(self) -> None:
        now = datetime.now(UTC)
        for rot in self.registry.rotations():
            try:
                acked = acknowledged_seq(self.influx, rot["device"])
            except InfluxError as exc:
                log.warning("cannot read the device's acknowledgement yet", extra=kv(device=rot["device"], error=str(exc)[:200]))
                acked = None
            if acked is not None and acked >= rot["seq"]:
                why = "acknowledged"
            elif now >= rot["deadline"]:
                why = "deadline"
            else:
                continue
            try:
                finish(self.registry, self.dynsec, rot, why)
            except BrokerError as exc:
                log.warning("broker did not take the new credentials; will retry", extra=kv(device=rot["device"], error=str(exc)[:200]))
