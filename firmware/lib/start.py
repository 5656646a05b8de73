# Building the node at boot: config.json checked, sensor drivers made, state restored
# from flash (seq, ring, the last applied platform config). Needed once per boot only:
# app.boot() drops this module (and config) once the node is built, so its code and the
# parsed config.json do not sit in RAM while the node runs.
import gc
import os

import hal
import log
from app import BUF_BYTES, FW, Node
from store import STATE, load, save
from clock import Clock
from drivers import SensorError
from mqtt import Client
from ring import Ring

try:
    from typing import Any  # for the type checker; MicroPython skips annotations
except ImportError:
    pass

_HANG_SKIP = 30  # readings a sensor that hung (watchdog reset) sits out
_SAFE_AFTER = 3  # crashes in a row before the node boots in safe mode


def node(buf: Any = None, cfg: Any = None):
    """The node for this board's config.json (checked already when given as cfg), or
    None (after logging every mistake)."""
    if buf is None or len(buf) < BUF_BYTES:
        buf = bytearray(BUF_BYTES)
    if cfg is None:
        cfg = checked()
    if cfg is None:
        return None
    lk = Node.link  # link settings received over the air, over config.json's (otaboot.setup)
    if lk:
        if "wifi" in lk:
            cfg["wifi"] = lk["wifi"]
        for k, v in (lk.get("mqtt") or {}).items():
            cfg["mqtt"][k] = v
            if k == "ca":
                cfg["mqtt"]["ca_file"] = None
        Node.link = None
    n = Node()
    n.buf = buf
    base = "nakhon/v1/%s/%s/" % (cfg["city"], cfg["device_id"])
    n.t_tel = base + "telemetry"
    n.t_status = base + "status"
    n.t_config = base + "config"
    n.reset = reset_cause()
    n.boot = hal.ticks_ms()
    n.ticks = n.boot
    n.uptime_ms = 0
    n.last_ack = n.boot
    n.link_resets = 0
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
    n.confirm_ms = max(60000, mq["keepalive_s"] * 1000)  # sent, no confirmation this long: send again
    n.confirm_t = n.boot
    hung = _restore(n)
    gc.collect()
    floor = load(STATE + "/floor")
    try:
        n.clock = Clock(cfg["ntp_host"], int(floor) if floor else 0)
    except ValueError:
        n.clock = Clock(cfg["ntp_host"])
    _epoch(n)
    if n.why != "-":
        n.faults["reset"] = n.why  # the node reset itself, and says why: crash, nolink
    n.why = "-"
    if n.safe:
        n.faults["boot"] = "safe_mode"
        log.warn("safe mode after %d crashes in a row: platform config and pretime dating off" % n.boots)
    n.sensors = []
    for spec in cfg["sensors"]:
        try:
            n.sensors.append((spec["name"], make(spec)))
        except Exception as e:
            log.error("sensor %s: %s" % (spec["name"], e))
            n.faults[spec["name"]] = "absent"
    n.sensors.sort(key=lambda s: hasattr(s[1], "air"))  # those that need the air's temperature read after it
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

        text = load(STATE + "/applied.json")
        if text and not n.safe:
            retained.apply(n, json.loads(text), False)  # the platform's last config, before the broker answers
    except ValueError:
        pass
    n.client = Client(cfg["device_id"], mq["keepalive_s"], mq["username"], n.password or mq["password"])
    n.client.on_message = n._on_message
    n.client.on_ack = n._on_ack
    n.cadata = None
    if mq["tls"] and (mq["ca"] or mq["ca_file"]):  # the CA provisioning put into config.json, or a file on the board
        try:
            if mq["ca"]:
                n.cadata = _ca(mq["ca"].encode())
            else:
                with open(mq["ca_file"], "rb") as f:
                    n.cadata = _ca(f.read())
        except (OSError, ValueError) as e:
            log.error("tls: CA unreadable: %r" % (e,))
            n.faults["tls"] = "ca"
    n.online = False
    n.inflight = None
    n.attempt = 0
    n.retry_at = hal.ticks_ms()
    n.wifi_since = None
    n.part = {}
    n.published = 0
    n.wdt = hal.WDT(cfg["watchdog_ms"])
    n._mark("")
    log.info("boot fw=%s reset=%s seq=%d pending=%d dropped=%d pretime=%d epoch=%d" % (
        FW, n.reset, n.seq, n.ring.pending, n.ring.dropped, n.pretime, n.epoch))
    del cfg
    gc.collect()
    return n


def reset_cause() -> str:
    """machine.reset_cause() by its status name. The ESP32 port reports a brownout as
    PWRON_RESET: _restore tells them apart by the RTC memory, which a brownout keeps and
    a power cut loses."""
    c = hal.machine_reset_cause()
    if c == hal.PWRON_RESET:
        return "power_on"
    if c == hal.HARD_RESET:
        return "hard"
    if c == hal.WDT_RESET:
        return "watchdog"
    if c == hal.DEEPSLEEP_RESET:
        return "deepsleep"
    if c == hal.SOFT_RESET:
        return "soft"
    return "unknown"


def _restore(n: Node):
    """Sets n.seq (next seq, from RTC memory and flash), the crash count, safe mode and the
    reason for the last reset; returns the sensor that was being read when it came.
    RTC memory ("nk1 <seq> <sensor> <crashes> <why>") survives every reset but a power
    cut; the ESP32 reports a brownout as a power-on, told apart here by RTC memory that
    is still there."""
    ceiling = 0
    try:
        ceiling = int(load(STATE + "/seq") or 0)
    except ValueError:
        pass
    seq, hung = ceiling, None
    n.boots, n.why = 0, "-"
    try:
        parts = hal.rtc_memory().decode().split(" ")
        if parts[0] != "nk1" or len(parts) != 5:
            raise ValueError
        if n.reset == "power_on":
            n.reset = "brownout"
        s = int(parts[1])
        seq = s if s >= 0 else ceiling
        hung = parts[2] if parts[2] != "-" else None
        n.boots = int(parts[3])
        n.why = parts[4]
    except (ValueError, IndexError, UnicodeError):
        pass
    n.safe = n.boots >= _SAFE_AFTER
    n.ceiling = ceiling
    n.seq = seq
    n._reserve(seq)
    return hung


def _epoch(n: Node) -> None:
    """The power-up count (the RTC's own count restarts at each) and the readings waiting
    in flash for the time."""
    try:
        n.epoch = int(load(STATE + "/epoch") or 0)
    except ValueError:
        n.epoch = 0
    if n.reset == "power_on" and not n.clock.synced:
        n.epoch += 1
        try:
            save(STATE + "/epoch", str(n.epoch))
        except OSError as e:
            n.flash_error(e)
    n.pretime = 0
    try:
        with open(STATE + "/pretime") as f:
            for ln in f:
                n.pretime += 1
    except OSError:
        pass


def open_ring(folder: str, segments: int, seg_bytes: int) -> Ring:
    """The flash ring as the last boot left it: segments, read position, dropped count;
    a line torn by a power cut is cut off, and what is pending is counted. `segments`
    0: as many as three quarters of the free flash hold (what the ring already holds
    counted as free), 16..1000: days of readings, not hours."""
    r = Ring(folder, segments, seg_bytes)
    try:
        os.mkdir(folder)
    except OSError:
        pass
    nums = []
    for name in os.listdir(folder):
        if len(name) == 9 and name[0] == "s" and name[1:].isdigit():
            nums.append(int(name[1:]))
        elif name.endswith(".tmp"):
            os.remove(folder + "/" + name)  # left by a power cut in _repair; the segment it was for is whole
    nums.sort()
    if not segments:
        try:
            free = hal.fs_free()
        except (OSError, AttributeError):
            free = 0
        for n in nums:
            free += r._size(n)
        r.segments = max(16, min(1000, free * 3 // 4 // seg_bytes))
        log.info("ring: %d segments of %d B, from %d KB of flash" % (r.segments, seg_bytes, free // 1024))
    r.first = nums[0] if nums else 0
    r.last = nums[-1] if nums else 0
    r.hseg, r.hoff, r.dropped = r.first, 0, 0
    try:
        parts = (load(folder + "/head") or "").split()
        r.hseg, r.hoff, r.dropped = int(parts[0]), int(parts[1]), int(parts[2])
    except (ValueError, IndexError):
        pass
    if r.hseg < r.first or r.hseg > r.last:
        r.hseg, r.hoff = r.first, 0
    _repair(r, r.last)
    r.pending = 0
    for n in range(r.hseg, r.last + 1):
        r.pending += r._lines(n, r.hoff if n == r.hseg else 0)
    r.cseg, r.coff, r.unsent = r.hseg, r.hoff, r.pending  # after a boot all that is not confirmed goes again
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


def _ca(data: bytes) -> list:
    """Every certificate of a CA (PEM bundle or one DER certificate), each as DER
    (MicroPython's TLS takes DER, one certificate per load_verify_locations call): a
    bundle is trusted whole, so a CA rotation (old and new CA side by side) does not
    cut the device off."""
    if not data.startswith(b"-----") and b"-----BEGIN" not in data:
        return [data]
    import binascii

    certs = []
    body: Any = None
    for line in data.split(b"\n"):
        line = line.strip()
        if line.startswith(b"-----BEGIN"):
            body = []
        elif line.startswith(b"-----END"):
            if body:
                certs.append(binascii.a2b_base64(b"".join(body)))
            body = None
        elif body is not None and line:
            body.append(line)
    if not certs:
        raise ValueError("no certificate in the CA")
    return certs


def checked():
    """config.json, checked (None after logging every mistake)."""
    import sys

    import config

    cfg = config.load()
    del config
    sys.modules.pop("config", None)  # the check's code is needed no more
    gc.collect()  # boot's peak: give back what the check and the JSON parser left
    if cfg is None:
        log.error("not starting: fix config.json")
    return cfg


def make(spec: dict):
    """A driver for one `sensors` entry of config.json (modules loaded only when used)."""
    t = spec["type"]
    if t == "pms5003" or t == "sds011":
        from drivers import pm

        uart = hal.uart(spec["uart"], 9600, spec["rx"], spec["tx"])
        return pm.PM(uart, t == "pms5003", spec.get("name", "pm"), spec.get("warm_s"))
    if t == "sht3x" or t == "bme280":
        bus = hal.i2c(spec["i2c"], spec["scl"], spec["sda"])
        if t == "sht3x":
            from drivers.sht3x import SHT3x

            return SHT3x(bus, spec.get("addr", 0x44))
        from drivers.bme280 import BME280

        return BME280(bus, spec.get("addr", 0x76))
    if t == "ultrasonic":
        from drivers.ultrasonic import Ultrasonic

        return Ultrasonic(hal.pin_out(spec["trig"]), hal.pin_in(spec["echo"], False), spec["mount_cm"],
                          spec.get("blind_cm", 20), spec.get("air_c", 30.0))
    if t == "rain":
        from drivers.rain import Rain

        return Rain(spec["pin"], spec.get("mm_per_tip", 0.2794), spec.get("debounce_ms", 50), hal.counter(spec["pin"]))
    if t == "sound":
        from drivers.sound import Sound

        return Sound(hal.adc(spec["adc"]), spec.get("cal_db", 28.0), spec.get("dba_per_v"), spec.get("sample_s", 2))
    raise SensorError("unknown_type")
