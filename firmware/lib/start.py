# Building the node at boot: config.json checked, sensor drivers made, state restored
# from flash (seq, ring, the last applied platform config). Needed once per boot only:
# app.boot() drops this module (and config) once the node is built, so its code and the
# parsed config.json do not sit in RAM while the node runs.
import gc
import os

import hal
import log
from app import BUF_BYTES, FW, STATE, Node
from clock import Clock
from drivers import SensorError
from mqtt import Client
from ring import Ring

try:
    from typing import Any  # for the type checker; MicroPython skips annotations
except ImportError:
    pass

_HANG_SKIP = 30  # readings a sensor that hung (watchdog reset) sits out


def node(buf: Any = None):
    """The node for this board's config.json, or None (after logging every mistake)."""
    if buf is None or len(buf) < BUF_BYTES:
        buf = bytearray(BUF_BYTES)
    import config

    cfg = config.load()
    if cfg is None:
        log.error("not starting: fix config.json")
        return None
    n = Node()
    n.buf = buf
    base = "nakhon/v1/%s/%s/" % (cfg["city"], cfg["device_id"])
    n.t_tel = base + "telemetry"
    n.t_status = base + "status"
    n.t_config = base + "config"
    n.reset = hal.reset_cause()
    n.boot = hal.ticks_ms()
    n.interval_s = cfg["interval_s"]
    n.interval_ms = n.interval_s * 1000
    n.status_ms = cfg["status_interval_s"] * 1000
    n.watchdog_ms = cfg["watchdog_ms"]
    n.batch = cfg["batch"]
    n.deep_sleep = cfg["deep_sleep"]
    n.place = (cfg["kind"], cfg["lat"], cfg["lon"])
    w = cfg["wifi"]
    n.wifi = (w["ssid"], w.get("password", ""))
    mq = cfg["mqtt"]
    n.broker = (mq["host"], mq["port"], mq["tls"], mq["tls_verify"])
    b = cfg["backoff"]
    n.backoff = (b["base_ms"], b["cap_ms"])
    bat = cfg["battery"]
    n.battery = (hal.adc(bat["adc"]), bat.get("divider", 2.0)) if bat else None
    n.config_seq = -1
    n.password = None  # rotated MQTT password from the platform's config (kept in applied.json)
    n.client = None
    n.disabled = []
    n.thresholds = {}
    n.faults = {}
    n.skip = {}
    n.rejected = {}
    rc = cfg["ring"]
    try:
        os.mkdir(STATE)
    except OSError:
        pass
    n.ring = open_ring(STATE + "/ring", rc["segments"], rc["segment_bytes"])
    n.chunk = rc["chunk"]
    n.staging = []
    n.pretime = []
    n.clock = Clock(cfg["ntp_host"])
    hung = _restore(n)
    n.sensors = []
    for spec in cfg["sensors"]:
        try:
            n.sensors.append((spec["name"], make(spec)))
        except Exception as e:
            log.error("sensor %s: %s" % (spec["name"], e))
            n.faults[spec["name"]] = "absent"
    if hung and n.reset == "watchdog":
        # The watchdog fired while this sensor was being read: it hangs the bus.
        n.faults[hung] = "hang"
        n.skip[hung] = _HANG_SKIP
        log.warn("watchdog: sensor %s hung, skipped for %d readings" % (hung, _HANG_SKIP))
    n.next_read = hal.ticks_ms()
    n.status_due = True
    n.status_at = hal.ticks_ms()
    try:
        import json

        import retained

        with open(STATE + "/applied.json") as f:
            doc = json.load(f)
        retained.apply(n, doc, False)  # the platform's last config, before the broker answers
    except (OSError, ValueError):
        pass
    n.client = Client(cfg["device_id"], mq["keepalive_s"], mq["username"], n.password or mq["password"])
    n.client.on_message = n._on_message
    n.client.on_ack = n._on_ack
    n.cadata = None
    if mq["tls"] and (mq["ca"] or mq["ca_file"]):  # the CA provisioning put into config.json, or a file on the board
        n.cadata = _der(mq["ca"].encode() if mq["ca"] else open(mq["ca_file"], "rb").read())
    n.online = False
    n.inflight = None
    n.attempt = 0
    n.retry_at = hal.ticks_ms()
    n.wifi_since = None
    n.part = {}
    n.published = 0
    n.wdt = hal.WDT(cfg["watchdog_ms"])
    log.info("boot fw=%s reset=%s seq=%d pending=%d dropped=%d" % (FW, n.reset, n.seq, n.ring.pending, n.ring.dropped))
    del cfg
    gc.collect()
    return n


def _restore(n: Node):
    """Sets n.seq (next seq, from RTC memory and flash); returns the sensor that was being
    read when the last reset came."""
    ceiling = 0
    try:
        with open(STATE + "/seq") as f:
            ceiling = int(f.read())
    except (OSError, ValueError):
        pass
    seq, hung = ceiling, None
    if n.reset != "power_on":
        try:
            parts = hal.rtc_memory().decode().split(" ")
            seq = max(int(parts[0]), 0)
            hung = parts[1] or None
        except (ValueError, IndexError, UnicodeError):
            pass
    n.ceiling = ceiling
    n.seq = seq
    n._reserve(seq)
    return hung


def open_ring(folder: str, segments: int, seg_bytes: int) -> Ring:
    """The flash ring as the last boot left it: segments, read position, dropped count;
    a line torn by a power cut is cut off, and what is pending is counted."""
    r = Ring(folder, segments, seg_bytes)
    try:
        os.mkdir(folder)
    except OSError:
        pass
    nums = sorted(int(n[1:]) for n in os.listdir(folder) if n[0] == "s")
    r.first = nums[0] if nums else 0
    r.last = nums[-1] if nums else 0
    r.hseg, r.hoff, r.dropped = r.first, 0, 0
    try:
        with open(folder + "/head") as f:
            parts = f.read().split()
        r.hseg, r.hoff, r.dropped = int(parts[0]), int(parts[1]), int(parts[2])
    except (OSError, ValueError, IndexError):
        pass
    if r.hseg < r.first or r.hseg > r.last:
        r.hseg, r.hoff = r.first, 0
    _repair(r, r.last)
    r.pending = 0
    for n in range(r.hseg, r.last + 1):
        r.pending += r._lines(n, r.hoff if n == r.hseg else 0)
    return r


def _repair(r: Ring, n: int) -> None:
    # A power cut during an append can leave a partial last line: cut it off, so the next
    # append does not glue a valid reading to garbage.
    size = r._size(n)
    if not size:
        return
    buf = bytearray(256)
    keep = 0
    path = r._path(n)
    with open(path, "rb") as f:
        pos = 0
        while True:
            k = f.readinto(buf)
            if not k:
                break
            for i in range(k):
                if buf[i] == 10:
                    keep = pos + i + 1
            pos += k
    if keep == size:
        return
    tmp = path + ".tmp"
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        left = keep
        while left > 0:
            k = src.readinto(buf)
            dst.write(buf[: min(k, left)])
            left -= k
    os.rename(tmp, path)


def _der(data: bytes) -> bytes:
    """A CA certificate, PEM (its first certificate) or DER, as DER (MicroPython's TLS wants DER for cadata)."""
    if not data.startswith(b"-----"):
        return data
    import binascii

    body = b"".join(x.strip() for x in data.split(b"-----END")[0].split(b"\n") if x.strip() and not x.startswith(b"-----"))
    return binascii.a2b_base64(body)


def make(spec: dict):
    """A driver for one `sensors` entry of config.json (modules loaded only when used)."""
    t = spec["type"]
    if t == "pms5003" or t == "sds011":
        from drivers import pm

        uart = hal.uart(spec["uart"], 9600, spec["rx"], spec["tx"])
        return pm.PMS5003(uart) if t == "pms5003" else pm.SDS011(uart)
    if t == "sht3x" or t == "bme280":
        bus = hal.i2c(spec["i2c"], spec["scl"], spec["sda"])
        if t == "sht3x":
            from drivers.sht3x import SHT3x

            return SHT3x(bus, spec.get("addr", 0x44))
        from drivers.bme280 import BME280

        return BME280(bus, spec.get("addr", 0x76))
    if t == "ultrasonic":
        from drivers.ultrasonic import Ultrasonic

        return Ultrasonic(hal.pin_out(spec["trig"]), hal.pin_in(spec["echo"], False), spec["mount_cm"])
    if t == "rain":
        from drivers.rain import Rain

        return Rain(hal.pin_in(spec["pin"]), spec.get("mm_per_tip", 0.2794), spec.get("debounce_ms", 50))
    if t == "sound":
        from drivers.sound import Sound

        return Sound(hal.adc(spec["adc"]), spec.get("cal_db", 28.0))
    raise SensorError("unknown_type")
