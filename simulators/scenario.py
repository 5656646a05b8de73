"""Scenario files: a run described once (YAML) and repeated.

    name: demo
    seed: 1
    cities: [chiang_mai, phuket]   # default: every registered city
    per_city: 20
    mode: realtime                 # realtime | accelerated | backfill
    interval_s: 10
    speed: 60                      # accelerated: simulated seconds per second
    since: 6h                      # accelerated: start this long ago
    duration: 30m                  # simulated time to run; omit = until Ctrl-C
    count: 100                     # or: readings per device
    backfill_days: 7
    batch: 500                     # readings per batch message
    procs: 1                       # processes to spread the devices over
    firmware: 2                    # plus K devices running the real firmware (realtime/accelerated)
    connect_rate: 1000             # new connections per second at start
    credentials: creds.json        # {"device_id": "password", ...} from provisioning
    confirm: true                  # keep readings until the platform confirms them stored (false: free at PUBACK)
    confirm_timeout_s: 30          # send unconfirmed readings again after this long (doubling while none is confirmed)
    faults:
      - {kind: offline, devices: 2, at_s: 60, for_s: 90}

Presets live in simulators/scenarios/ and are named without `.yaml`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from simulators.faults import Fault, FaultError
from simulators.runconfig import MODES

PRESETS = Path(__file__).resolve().parent / "scenarios"
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d)?\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class ScenarioError(ValueError):
    """A scenario that cannot run; the message says what to fix."""


def duration(value: str | float | int | None) -> float | None:
    """Seconds from `90`, `90s`, `15m`, `6h` or `7d`."""
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ScenarioError(f"duration {value!r}: use a number of seconds or e.g. 90s, 15m, 6h, 7d")
    return float(m.group(1)) * _UNIT[m.group(2)]


@dataclass
class Scenario:
    name: str = "custom"
    seed: int = 1
    cities: list[str] | None = None
    per_city: int = 20
    mode: str = "realtime"
    interval_s: float = 60.0
    speed: float = 1.0
    since: float = 0.0
    duration: float | None = None
    count: int | None = None
    backfill_days: float = 1.0
    batch: int = 500
    procs: int = 1
    connect_rate: float = 1000.0
    credentials: str | None = None
    prefix: str = "sim"
    firmware: int = 0  # devices that are the real firmware on the MicroPython unix port
    confirm: bool = True  # keep each reading until the platform's `stored` confirmation covers it (store-and-forward)
    confirm_timeout_s: float = 30.0  # send unconfirmed readings again after this long (doubling while none is confirmed)
    faults: list[Fault] = field(default_factory=list)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = "scenario") -> Scenario:
        if not isinstance(doc, dict):
            raise ScenarioError(f"{where}: expected a mapping of settings")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ScenarioError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
        doc = dict(doc)
        try:
            doc["faults"] = [Fault.from_dict(f) for f in doc.get("faults") or []]
            for key in ("since", "duration"):
                if key in doc:
                    doc[key] = duration(doc[key])
            sc = cls(**doc)
        except (FaultError, TypeError) as exc:
            raise ScenarioError(f"{where}: {exc}") from None
        sc.check(where)
        return sc

    def check(self, where: str = "scenario") -> None:
        if self.mode not in MODES:
            raise ScenarioError(f"{where}: mode {self.mode!r} must be one of {', '.join(MODES)}")
        if self.per_city < 1 or self.procs < 1 or self.interval_s <= 0:
            raise ScenarioError(f"{where}: per_city and procs must be >= 1 and interval_s > 0")
        if self.confirm_timeout_s <= 0:
            raise ScenarioError(f"{where}: confirm_timeout_s must be > 0")
        if self.mode == "accelerated" and self.speed <= 1:
            raise ScenarioError(f"{where}: accelerated mode needs speed > 1")
        if self.firmware and self.mode == "backfill":
            raise ScenarioError(f"{where}: firmware devices read their sensors as time passes; they cannot backfill")


def load(name_or_path: str) -> Scenario:
    """A preset by name (`demo`) or a YAML file by path."""
    path = Path(name_or_path)
    if not path.exists():
        preset = PRESETS / f"{name_or_path}.yaml"
        if not preset.exists():
            raise ScenarioError(f"no scenario file {name_or_path!r} and no preset of that name; presets: {', '.join(presets())}")
        path = preset
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"scenario {path}: cannot read YAML ({exc})") from None
    return Scenario.from_dict(doc or {}, where=f"scenario {path.name}")


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def load_credentials(path: str | Path) -> dict[str, str]:
    """Device passwords from provisioning: a JSON map {"device_id": "password"}, or a folder of
    the config.json files `nakhon device provision` writes (device_id and mqtt.password)."""
    path = Path(path)
    if path.is_dir():
        out: dict[str, str] = {}
        for f in sorted(path.rglob("*.json")):
            try:
                doc = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ScenarioError(f"credentials {f}: cannot read JSON ({exc})") from None
            if isinstance(doc, dict) and isinstance(doc.get("device_id"), str) and isinstance((doc.get("mqtt") or {}).get("password"), str):
                out[doc["device_id"]] = doc["mqtt"]["password"]
        if not out:
            raise ScenarioError(f"credentials folder {path}: no config.json with device_id and mqtt.password in it")
        return out
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"credentials file {path}: cannot read JSON ({exc})") from None
    if not isinstance(doc, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
        raise ScenarioError(f"credentials file {path}: expected a JSON object {{\"device_id\": \"password\", ...}}")
    return doc
