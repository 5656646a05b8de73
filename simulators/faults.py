"""Faults on demand: what can go wrong in the field, injected on purpose.

A fault starts `at_s` seconds (simulated time) after the run starts, lasts
`for_s` and hits `devices` devices (0 = all) chosen from the seed, or the
devices named in `device_ids`. Every injected fault is counted by the fleet
so a test can compare with what the platform recorded:

- offline    the device drops its connection (the broker fires its Last
             Will), buffers its readings, reconnects after `for_s` and
             replays the buffer as batches;
- stuck      `metric` keeps the value it had when the fault began;
- spike      with `probability`, `metric` is multiplied by `factor` (kept in
             the catalogue range, so the platform accepts it: a plausible lie);
- drift      `metric` drifts by `per_hour` units per hour of fault;
- skew       the device's clock is `seconds` off (beyond the ingest's window
             the readings are rejected with ts_out_of_window: counted apart);
- duplicate  with `probability`, a message is sent twice (stored once);
- malformed  `count` messages of each `reasons` kind the contract rejects;
- storm      every chosen device loses its connection at once and comes back
             with the firmware's exponential backoff and full jitter;
- hang       firmware in the loop only: an I2C sensor stops answering and the
             board's watchdog resets it (fleet devices have no watchdog).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import orjson

from contract import topics
from contract.catalogue import METRICS
from contract.payload import Reason

KINDS = ("offline", "stuck", "spike", "drift", "skew", "duplicate", "malformed", "storm", "hang")
# Reasons a device can provoke. `not_finite` cannot be sent (JSON has no NaN or
# Infinity, and 1e999 is refused by the parser as bad_json), `bad_topic` cannot
# reach the ingest's subscription, `storage_rejected` is InfluxDB's word.
MALFORMED: tuple[str, ...] = (
    Reason.BAD_JSON, Reason.BAD_SCHEMA, Reason.BAD_VERSION, Reason.EMPTY, Reason.UNKNOWN_METRIC,
    Reason.BAD_VALUE, Reason.OUT_OF_RANGE, Reason.BAD_SEQ, Reason.BAD_TS, Reason.TS_OUT_OF_WINDOW,
    Reason.OVERSIZE, Reason.BAD_ID, Reason.BAD_STATUS,
)
# Malformed kinds that need a topic outside the device's own: a broker with
# per-device ACLs drops them, so they are only sent to an open broker.
NEEDS_OPEN_BROKER = (Reason.BAD_ID,)
HEALTH = ("battery_v", "rssi_dbm")


class FaultError(ValueError):
    """A fault description that cannot work; the message says what to fix."""


@dataclass(frozen=True)
class Fault:
    kind: str
    at_s: float = 0.0
    for_s: float = 60.0
    devices: int = 1
    device_ids: tuple[str, ...] = ()
    metric: str | None = None
    probability: float = 1.0
    factor: float = 4.0
    per_hour: float = 5.0
    seconds: float = 120.0
    reasons: tuple[str, ...] = MALFORMED
    count: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FaultError(f"unknown fault {self.kind!r}; choose from {', '.join(KINDS)}")
        if self.metric is not None and self.metric not in METRICS:
            raise FaultError(f"fault {self.kind}: unknown metric {self.metric!r}")
        bad = [r for r in self.reasons if r not in MALFORMED]
        if bad:
            raise FaultError(f"fault malformed: cannot send {bad}; choose from {', '.join(MALFORMED)}")
        if self.for_s < 0 or self.at_s < 0 or self.devices < 0 or self.count < 0 or not 0 <= self.probability <= 1:
            raise FaultError(f"fault {self.kind}: at_s, for_s, devices and count must be >= 0, probability in 0..1")

    def active(self, t_rel: float) -> bool:
        return self.at_s <= t_rel < self.at_s + self.for_s

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Fault:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - names)
        if unknown:
            raise FaultError(f"fault {doc.get('kind')!r}: unknown keys {unknown}; known: {sorted(names)}")
        doc = dict(doc)
        for key in ("device_ids", "reasons"):
            if key in doc:
                value = doc[key]
                doc[key] = tuple(value) if isinstance(value, list | tuple) else (value,)
        try:
            return cls(**doc)
        except TypeError as exc:
            raise FaultError(f"fault: {exc}") from None

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """`kind[:key=value,...]`, e.g. `offline:devices=3,at_s=30,for_s=60` or `malformed:reasons=bad_json+empty`."""
        kind, _, rest = spec.partition(":")
        doc: dict[str, Any] = {"kind": kind.strip()}
        types = {f.name: f.type for f in fields(cls)}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            if not eq or key not in types:
                raise FaultError(f"fault {spec!r}: expected key=value with key in {sorted(types)}")
            if key in ("device_ids", "reasons"):
                doc[key] = tuple(v for v in value.split("+") if v)
            elif key == "metric":
                doc[key] = value
            elif key in ("devices", "count"):
                doc[key] = int(value)
            else:
                doc[key] = float(value)
        return cls.from_dict(doc)


@dataclass
class Plan:
    """Faults resolved to device ids, so every process of a sharded fleet agrees."""

    faults: list[Fault] = field(default_factory=list)
    targets: list[frozenset[str]] = field(default_factory=list)

    @classmethod
    def resolve(cls, faults: list[Fault], device_ids: list[str], seed: int) -> Plan:
        plan = cls()
        for i, f in enumerate(faults):
            if f.device_ids:
                missing = set(f.device_ids) - set(device_ids)
                if missing:
                    raise FaultError(f"fault {f.kind}: no such devices {sorted(missing)[:5]}")
                chosen = frozenset(f.device_ids)
            elif f.devices == 0 or f.devices >= len(device_ids):
                chosen = frozenset(device_ids)
            else:
                rng = np.random.default_rng([seed, 4242, i])
                chosen = frozenset(device_ids[j] for j in rng.choice(len(device_ids), f.devices, replace=False))
            plan.faults.append(f)
            plan.targets.append(chosen)
        return plan

    def for_device(self, device_id: str) -> list[Fault]:
        return [f for f, t in zip(self.faults, self.targets, strict=True) if device_id in t]


def target_metric(fault: Fault, metrics: tuple[str, ...]) -> str | None:
    """The metric a value fault acts on: the one named if the device has it, else its first sensor metric."""
    if fault.metric is not None:
        return fault.metric if fault.metric in metrics else None
    return next((m for m in metrics if m not in HEALTH), None)


def clamp(metric: str, value: float) -> float:
    m = METRICS[metric]
    return min(max(value, m.lo), m.hi)


def malformed(reason: str, city: str, device_id: str, now: float, max_bytes: int) -> tuple[str, bytes, bool]:
    """(topic, payload, retain) of one message the ingest must reject with `reason`."""
    tele = topics.topic(city, device_id, "telemetry")
    good = {"pm25": 12.0}
    doc: Any
    if reason == Reason.BAD_JSON:
        return tele, b'{"v": 1, "ts": ' + str(int(now)).encode() + b', "seq": 1, "m": {"pm25": 12', False
    if reason == Reason.BAD_SCHEMA:
        doc = {"v": 1, "ts": now, "seq": 0}  # no "m"
    elif reason == Reason.BAD_VERSION:
        doc = {"v": 2, "ts": now, "seq": 0, "m": good}
    elif reason == Reason.EMPTY:
        doc = {"v": 1, "ts": now, "seq": 0, "m": {}}
    elif reason == Reason.UNKNOWN_METRIC:
        doc = {"v": 1, "ts": now, "seq": 0, "m": {"flux_capacitor": 1.21}}
    elif reason == Reason.BAD_VALUE:
        doc = {"v": 1, "ts": now, "seq": 0, "m": {"pm25": "high"}}
    elif reason == Reason.OUT_OF_RANGE:
        doc = {"v": 1, "ts": now, "seq": 0, "m": {"rh": 150.0}}
    elif reason == Reason.BAD_SEQ:
        doc = {"v": 1, "ts": now, "seq": -1, "m": good}
    elif reason == Reason.BAD_TS:
        doc = {"v": 1, "ts": "yesterday", "seq": 0, "m": good}
    elif reason == Reason.TS_OUT_OF_WINDOW:
        doc = {"v": 1, "ts": now - 400 * 86400, "seq": 0, "m": good}
    elif reason == Reason.OVERSIZE:
        doc = {"v": 1, "ts": now, "seq": 0, "m": good, "pad": "x" * (max_bytes + 64)}
    elif reason == Reason.BAD_ID:
        return f"{topics.PREFIX}/{city}/Not_A_Device/telemetry", orjson.dumps({"v": 1, "ts": now, "seq": 0, "m": good}), False
    elif reason == Reason.BAD_STATUS:
        # not retained: a retained bad status would be redelivered to every new subscriber
        return topics.topic(city, device_id, "status"), b'{"v": 1, "state": "sleeping"}', False
    else:
        raise FaultError(f"cannot make a malformed message for {reason!r}")
    return tele, orjson.dumps(doc), False

