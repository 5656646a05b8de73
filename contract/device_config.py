"""The retained `config` document the platform publishes to a device (contract v1).

    topic nakhon/v1/{city}/{device_id}/config, retained, QoS 1:
      {"v": 1, "seq": 7, "interval_s": 300,
       "sensors": {"pm": true, "th": false},
       "thresholds": {"pm25": 75.0}}

- `seq` (required) numbers the platform's versions of a device's config; the device
  applies a document once and acknowledges it with `config_seq` in its status.
- `interval_s` (optional) seconds between readings, 1..86400.
- `sensors` (optional) turns sensors on or off by the `name` they have in the
  device's config.json; sensors not named keep their state.
- `thresholds` (optional) metric -> value: while a reading is at or above one, the
  device reads four times as often (at least once a second).
- `password` (optional) the device's new MQTT password (credential rotation in the
  field): the device keeps it in flash and logs in with it from its next connection
  on; the platform switches the broker over once the device has acknowledged the
  document (`config_seq`) or the operator's deadline passes. Only the device and the
  platform may read the device's config topic (broker ACL), and over TLS.
Anything else is refused; a refused document leaves the device on its previous config
and shows the fault `config:invalid` in its status. The firmware checks the same rules
(firmware/lib/retained.py, config_ok and apply).
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

from contract.catalogue import METRICS

VERSION: Final = 1
KEYS: Final = frozenset({"v", "seq", "interval_s", "sensors", "thresholds", "password"})
PASSWORD_PATTERN: Final = r"^[A-Za-z0-9_-]{16,128}$"
SENSOR_NAME_PATTERN: Final = r"^[a-z0-9_]{1,16}$"
MAX_BYTES: Final = 4096  # the firmware skips larger messages

_NAME_RE: Final = re.compile(SENSOR_NAME_PATTERN)


class DeviceConfigError(ValueError):
    pass


def check_device_config(doc: Any) -> dict[str, Any]:
    """The document if it is one a device will apply; DeviceConfigError says what is wrong."""
    if type(doc) is not dict:
        raise DeviceConfigError("config must be a JSON object")
    extra = sorted(doc.keys() - KEYS)
    if extra:
        raise DeviceConfigError(f"unknown keys {extra}")
    if doc.get("v") != VERSION or type(doc.get("v")) is not int:
        raise DeviceConfigError(f"v must be {VERSION}")
    seq = doc.get("seq")
    if type(seq) is not int or not 0 <= seq < 1 << 31:
        raise DeviceConfigError("seq must be an integer 0..2^31-1")
    iv = doc.get("interval_s", 60)
    if type(iv) is not int or not 1 <= iv <= 86400:
        raise DeviceConfigError("interval_s must be an integer 1..86400")
    sensors = doc.get("sensors", {})
    if type(sensors) is not dict or not all(type(k) is str and _NAME_RE.fullmatch(k) and type(v) is bool for k, v in sensors.items()):
        raise DeviceConfigError("sensors must map sensor names to true/false")
    thresholds = doc.get("thresholds", {})
    if type(thresholds) is not dict:
        raise DeviceConfigError("thresholds must map metric names to numbers")
    for k, v in thresholds.items():
        if k not in METRICS or METRICS[k].kind != "float" or type(v) not in (int, float):
            raise DeviceConfigError(f"threshold {k!r} must be a catalogue metric with a number")
    pw = doc.get("password")
    if pw is not None and (type(pw) is not str or not re.fullmatch(PASSWORD_PATTERN, pw)):
        raise DeviceConfigError("password must be 16-128 characters of letters, digits, _ and -")
    return doc


def encode_device_config(seq: int, interval_s: int | None = None, sensors: dict[str, bool] | None = None,
                         thresholds: dict[str, float] | None = None, password: str | None = None) -> bytes:
    """A checked config payload, ready to publish retained."""
    doc: dict[str, Any] = {"v": VERSION, "seq": seq}
    if password is not None:
        doc["password"] = password
    if interval_s is not None:
        doc["interval_s"] = interval_s
    if sensors:
        doc["sensors"] = sensors
    if thresholds:
        doc["thresholds"] = thresholds
    raw = orjson.dumps(check_device_config(doc))
    if len(raw) > MAX_BYTES:
        raise DeviceConfigError(f"config of {len(raw)} bytes > {MAX_BYTES}")
    return raw
