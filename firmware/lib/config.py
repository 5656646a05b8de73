# The device's config.json, checked once at boot: every mistake gets its own log line
# saying what to fix, and a device with any mistake does not start (a technician on the
# serial console sees why, instead of a node that half works on a pole).
import json
import re

import log

try:
    from typing import Any  # for the type checker; MicroPython skips annotations
except ImportError:
    pass

SENSOR_TYPES = ("pms5003", "sds011", "sht3x", "bme280", "ultrasonic", "rain", "sound")
KINDS = ("air", "weather", "water", "noise", "traffic")
_DEVICE_RE = re.compile("^[a-z0-9][a-z0-9-]+$")
_CITY_RE = re.compile("^[a-z][a-z0-9_]+$")
_NAME_RE = re.compile("^[a-z0-9_]+$")

# What each sensor type needs in its entry (beyond name and type).
_NEEDS = {
    "pms5003": ("uart", "rx", "tx"),
    "sds011": ("uart", "rx", "tx"),
    "sht3x": ("i2c", "scl", "sda"),
    "bme280": ("i2c", "scl", "sda"),
    "ultrasonic": ("trig", "echo", "mount_cm"),
    "rain": ("pin",),
    "sound": ("adc",),
}

# Optional numbers of a sensor entry: (key, lo, hi). warm_s: a PM sensor's warm-up after
# waking (PMS5003 30, SDS011 15); blind_cm: an ultrasonic ranger's blind zone (JSN-SR04T
# 20-25 cm); air_c: the air temperature it assumes until the node has measured one;
# dba_per_v: a sound level module's dB(A) per volt; sample_s: how often sound is sampled.
_OPTIONAL = (("warm_s", 0, 120), ("blind_cm", 2, 100), ("air_c", -10, 60), ("dba_per_v", 1, 1000), ("sample_s", 1, 60))

DEFAULTS = {
    "mqtt": {"port": 1883, "tls": False, "tls_verify": True, "ca_file": None, "ca": None, "username": None, "password": None, "keepalive_s": 60},
    "ntp_host": "pool.ntp.org",
    "interval_s": 60,
    "status_interval_s": 600,
    "battery": None,
    "ring": {"segments": 0, "segment_bytes": 4096, "chunk": 1},  # segments 0: sized from the free flash at boot
    "batch": 50,
    "watchdog_ms": 60000,
    "deep_sleep": False,
    "backoff": {"base_ms": 1000, "cap_ms": 300000},
}


def _int(cfg: dict, key: str, lo: int, hi: int, errors: list, where: str = "") -> None:
    v: Any = cfg.get(key)
    if type(v) is not int or not lo <= v <= hi:
        errors.append("%s%s must be an integer %d..%d (got %r)" % (where, key, lo, hi, v))


def _merge(cfg: dict) -> None:
    for key, value in DEFAULTS.items():
        if key not in cfg:
            cfg[key] = value
        elif type(value) is dict and type(cfg[key]) is dict:
            for k, v in value.items():
                if k not in cfg[key]:
                    cfg[key][k] = v


def check(cfg) -> list:
    """The list of mistakes in a config (empty when it is usable); fills in defaults."""
    if type(cfg) is not dict:
        return ["config.json must hold a JSON object"]
    errors: list = []
    _merge(cfg)
    dev = cfg.get("device_id")
    if type(dev) is not str or not 3 <= len(dev) <= 32 or not _DEVICE_RE.match(dev):
        errors.append("device_id must be 3-32 chars of a-z, 0-9 and '-' (got %r)" % (dev,))
    city = cfg.get("city")
    if type(city) is not str or not _CITY_RE.match(city) or len(city) > 32:
        errors.append("city must be a city slug such as chiang_mai (got %r)" % (city,))
    if cfg.get("kind") not in KINDS:
        errors.append("kind must be one of %s" % (KINDS,))
    for key, lim in (("lat", 90), ("lon", 180)):
        v: Any = cfg.get(key)
        if type(v) not in (int, float) or not -lim <= v <= lim:
            errors.append("%s must be a number -%d..%d" % (key, lim, lim))
    wifi = cfg.get("wifi")
    if type(wifi) is not dict or type(wifi.get("ssid")) is not str or not wifi["ssid"]:
        errors.append("wifi.ssid is missing")
    elif type(wifi.get("password", "")) is not str:
        errors.append("wifi.password must be a string")
    mq = cfg["mqtt"]
    if type(mq) is not dict or type(mq.get("host")) is not str or not mq.get("host"):
        errors.append("mqtt.host is missing")
    else:
        _int(mq, "port", 1, 65535, errors, "mqtt.")
        _int(mq, "keepalive_s", 10, 3600, errors, "mqtt.")
        for k in ("username", "password", "ca_file", "ca"):
            if mq.get(k) is not None and type(mq[k]) is not str:
                errors.append("mqtt.%s must be a string or null" % k)
        if mq.get("password") and not mq.get("username"):
            errors.append("mqtt.password is set but mqtt.username is not")
        if mq.get("tls") is True and mq.get("tls_verify") is not False and not (mq.get("ca_file") or mq.get("ca")):
            # The ESP32 has no system CA store: verification without a CA can never connect.
            errors.append("mqtt.tls_verify needs mqtt.ca (PEM text) or mqtt.ca_file (the broker's CA, PEM or DER, on the board)")
    _int(cfg, "interval_s", 1, 86400, errors)
    _int(cfg, "status_interval_s", 10, 86400, errors)
    _int(cfg, "batch", 1, 1000, errors)
    _int(cfg, "watchdog_ms", 5000, 600000, errors)
    ring = cfg["ring"]
    _int(ring, "segments", 0, 1000, errors, "ring.")
    if ring.get("segments") == 1:
        errors.append("ring.segments must be 0 (sized from free flash) or 2..1000")
    _int(ring, "segment_bytes", 512, 1 << 20, errors, "ring.")
    _int(ring, "chunk", 1, 100, errors, "ring.")
    sensors = cfg.get("sensors")
    if type(sensors) is not list or not sensors:
        errors.append("sensors must be a non-empty list")
        sensors = []
    names: list = []
    for i, s in enumerate(sensors):
        if type(s) is not dict:
            errors.append("sensors[%d] must be an object" % i)
            continue
        name = s.get("name")
        if type(name) is not str or not _NAME_RE.match(name) or len(name) > 16:
            errors.append("sensors[%d].name must be 1-16 chars of a-z, 0-9, _" % i)
        elif name in names:
            errors.append("sensors[%d].name %r is used twice" % (i, name))
        names.append(name)
        typ = s.get("type")
        if typ not in _NEEDS:
            errors.append("sensors[%d].type must be one of %s" % (i, SENSOR_TYPES))
            continue
        for k in _NEEDS[typ]:
            if type(s.get(k)) not in (int, float):
                errors.append("sensors[%d] (%s) needs a number %r" % (i, typ, k))
        for k, lo, hi in _OPTIONAL:
            v = s.get(k)
            if v is not None and (type(v) not in (int, float) or not lo <= v <= hi):
                errors.append("sensors[%d].%s must be a number %d..%d" % (i, k, lo, hi))
    bat = cfg["battery"]
    if bat is not None and (type(bat) is not dict or type(bat.get("adc")) is not int):
        errors.append("battery must be null or {\"adc\": pin, \"divider\": ratio}")
    if type(cfg["deep_sleep"]) is not bool:
        errors.append("deep_sleep must be true or false")
    return errors


def load(path: str = "config.json"):
    """The checked config, or None after logging every mistake."""
    try:
        with open(path) as f:
            cfg = json.load(f)
    except OSError:
        log.error("config: %s not found: copy the device's config.json to the board" % path)
        return None
    except ValueError:
        log.error("config: %s is not valid JSON" % path)
        return None
    errors = check(cfg)
    for e in errors:
        log.error("config: " + e)
    return None if errors else cfg
