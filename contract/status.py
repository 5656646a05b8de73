"""The retained `status` document a device publishes (contract v1).

    online (retained, on every connect):
      {"v": 1, "state": "online", "fw": "1.2.0", "reset": "power_on",
       "battery_v": 3.9, "rssi_dbm": -70, "free_mem": 61000, "uptime_s": 12,
       "buffered": 0, "dropped": 0, "faults": ["pm:timeout"],
       "interval_s": 60, "config_seq": 3, "kind": "air", "lat": 18.79, "lon": 98.98,
       "ota": {"id": 7, "fw": "1.2.0", "state": "updated"}}
    offline (the Last Will, retained):
      {"v": 1, "state": "offline"}

Every field but `v` and `state` is optional. `config_seq` acknowledges the
`seq` of the last retained config the device applied. `ota` is the device's last
over-the-air update (contract/ota.py), stored as ota_id, ota_fw, ota_state, ota_reason.
`laser_s` is the laser on-time of the node's PM sensor(s) in seconds, counted from
wake to sleep and kept in the device's flash (a laser lasts about 8,000 hours run
continuously; the sensors sleep between readings). The ingest stores
status as points of the `device_status` measurement at receive time.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final, Literal, get_args

import orjson

from contract.catalogue import FW_PATTERN
from contract.ota import OtaError, check_report

STATES: Final = ("online", "offline")
RESET_CAUSES: Final = ("power_on", "hard", "watchdog", "deepsleep", "soft", "brownout", "unknown")
# what a device is for; the one list (the API, the CLI and the registry take it from here)
DeviceKind = Literal["air", "weather", "water", "noise", "traffic"]
DEVICE_KINDS: Final[tuple[str, ...]] = get_args(DeviceKind)
MAX_BYTES: Final = 4096

_FAULT_RE: Final = re.compile(r"^[a-z0-9_]{1,16}:[a-z0-9_]{1,24}$")
_FW_RE: Final = re.compile(FW_PATTERN)
_NUMBERS: Final = {
    "battery_v": (0, 15),
    "rssi_dbm": (-120, 0),
    "free_mem": (0, 1 << 24),
    "uptime_s": (0, 1 << 32),
    "buffered": (0, 1 << 24),
    "dropped": (0, 1 << 32),
    "interval_s": (1, 86400),
    "config_seq": (0, 1 << 31),
    "lat": (-90, 90),
    "lon": (-180, 180),
    "laser_s": (0, 1 << 32),
}


class StatusError(ValueError):
    pass


def parse_status(raw: bytes) -> dict[str, Any]:
    """A validated status document; raises StatusError saying what is wrong."""
    if len(raw) > MAX_BYTES:
        raise StatusError(f"status of {len(raw)} bytes > {MAX_BYTES}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StatusError(f"bad json: {exc}") from None
    if type(doc) is not dict or doc.get("v") != 1 or doc.get("state") not in STATES:
        raise StatusError('status must be an object with "v": 1 and "state": "online"|"offline"')
    out: dict[str, Any] = {"state": doc["state"]}
    for key, value in doc.items():
        if key in ("v", "state"):
            continue
        if key in _NUMBERS:
            lo, hi = _NUMBERS[key]
            if type(value) not in (int, float) or not math.isfinite(value) or not lo <= value <= hi:
                raise StatusError(f"{key} must be a number in {lo}..{hi}")
            out[key] = float(value)
        elif key == "fw":
            if type(value) is not str or not _FW_RE.fullmatch(value):
                raise StatusError(f"fw must match {FW_PATTERN}")
            out[key] = value
        elif key == "reset":
            if value not in RESET_CAUSES:
                raise StatusError(f"reset must be one of {RESET_CAUSES}")
            out[key] = value
        elif key == "kind":
            if value not in DEVICE_KINDS:
                raise StatusError(f"kind must be one of {DEVICE_KINDS}")
            out[key] = value
        elif key == "faults":
            if type(value) is not list or len(value) > 16 or not all(type(f) is str and _FAULT_RE.fullmatch(f) for f in value):
                raise StatusError("faults must be a list of up to 16 'sensor:problem' strings")
            out[key] = ",".join(value)
            out["fault_count"] = float(len(value))
        elif key == "ota":
            try:
                out.update(check_report(value))
            except OtaError as exc:
                raise StatusError(str(exc)) from None
        else:
            raise StatusError(f"unknown status field {key[:32]!r}")
    return out


def encode_status(state: str, **fields: Any) -> bytes:
    return orjson.dumps({"v": 1, "state": state, **fields})
