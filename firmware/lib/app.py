# The node: read sensors on a schedule, publish or buffer, keep the link and the clock.
#
# One loop, no threads. Every reading gets the next sequence number and enters a small
# RAM staging list; while online it is published at once (QoS 1) and forgotten on
# PUBACK. Offline, staged readings go to the flash ring in chunks; on reconnect the
# ring is replayed oldest first as batches before anything newer, so the platform sees
# readings in order with their original ts and seq. Readings taken before the time is
# known wait in RAM with their tick count and are back-dated once NTP answers.
import gc
import json
import os
import random

from micropython import const

import hal
import log
from catalogue import METRICS, in_range
from clock import Clock
from drivers import SensorError, make
from mqtt import Client
from ring import Ring

try:
    from typing import Any  # for the type checker; MicroPython skips annotations
except ImportError:
    pass

FW = "0.3.0"
OFFLINE = b'{"v":1,"state":"offline"}'
_PRETIME_MAX = const(120)  # readings held in RAM while the time is unknown
_HANG_SKIP = const(30)  # readings a sensor that hung (watchdog reset) sits out
_SEQ_BLOCK = const(1000)  # seq values reserved per flash write
BATCH_BYTES = const(8192)  # replay buffer: ~50 readings of a full air+weather node
_IDLE_MAX_MS = const(1000)
_WIFI_WAIT_MS = const(15000)
_MIN_FREE = const(4096)  # below this the loop is not healthy: let the watchdog reset
# What the node keeps in flash lives under one folder whose name is no module's: on the
# board the current folder comes first in sys.path, so a folder "ring" would shadow ring.py.
STATE = "state"


def _der(path: str) -> bytes:
    """A CA certificate file as DER (MicroPython's TLS wants DER for cadata)."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(b"-----"):
        return data
    import binascii

    body = b"".join(line for line in data.split(b"\n") if line and not line.startswith(b"-----"))
    return binascii.a2b_base64(body)


_CONFIG_KEYS = ("v", "seq", "interval_s", "sensors", "thresholds")


def config_ok(doc: Any) -> bool:
    """The rules of contract/device_config.py, checked on the device."""
    if type(doc) is not dict or doc.get("v") != 1 or type(doc.get("seq")) is not int or not 0 <= doc["seq"] < 1 << 31:
        return False
    for k in doc:
        if k not in _CONFIG_KEYS:
            return False
    iv = doc.get("interval_s", 60)
    sensors = doc.get("sensors", {})
    thresholds = doc.get("thresholds", {})
    if type(iv) is not int or not 1 <= iv <= 86400 or type(sensors) is not dict or type(thresholds) is not dict:
        return False
    for k, v in sensors.items():
        if type(v) is not bool or type(k) is not str or not 1 <= len(k) <= 16:
            return False
        for c in k:
            if not ("a" <= c <= "z" or "0" <= c <= "9" or c == "_"):
                return False
    for k, v in thresholds.items():
        if k not in METRICS or k == "fw" or type(v) not in (int, float):
            return False
    return True


class Node:
    def __init__(self, cfg: dict, buf: bytearray) -> None:
        self.cfg = cfg
        base = "nakhon/v1/%s/%s/" % (cfg["city"], cfg["device_id"])
        self.t_tel = base + "telemetry"
        self.t_status = base + "status"
        self.t_config = base + "config"
        self.reset = hal.reset_cause()
        self.boot = hal.ticks_ms()
        self.interval_ms = cfg["interval_s"] * 1000
        self.config_seq = -1
        self.disabled: list = []
        self.thresholds: dict = {}
        self.faults: dict = {}
        self.skip: dict = {}
        self.rejected: dict = {}
        rc = cfg["ring"]
        try:
            os.mkdir(STATE)
        except OSError:
            pass
        self.ring = Ring(STATE + "/ring", rc["segments"], rc["segment_bytes"])
        self.chunk = rc["chunk"]
        self.staging: list = []
        self.pretime: list = []
        self.clock = Clock(cfg["ntp_host"])
        self.seq, hung = self._restore()
        self.sensors: list = []
        for spec in cfg["sensors"]:
            try:
                self.sensors.append((spec["name"], make(spec)))
            except Exception as e:
                log.error("sensor %s: %s" % (spec["name"], e))
                self.faults[spec["name"]] = "absent"
        if hung and self.reset == "watchdog":
            # The watchdog fired while this sensor was being read: it hangs the bus.
            self.faults[hung] = "hang"
            self.skip[hung] = _HANG_SKIP
            log.warn("watchdog: sensor %s hung, skipped for %d readings" % (hung, _HANG_SKIP))
        self.next_read = hal.ticks_ms()
        self._load_applied()
        mq = cfg["mqtt"]
        self.client = Client(cfg["device_id"], mq["keepalive_s"], mq["username"], mq["password"])
        self.client.on_message = self._on_message
        self.client.on_ack = self._on_ack
        self.cadata = None
        if mq["tls"] and mq["ca_file"]:
            self.cadata = _der(mq["ca_file"])
        self.online = False
        self.inflight: Any = None  # (pid, kind, n, nbytes, seg, off, sent_at)
        self.attempt = 0
        self.retry_at = hal.ticks_ms()
        self.wifi_since: Any = None
        self.status_due = True
        self.status_at = hal.ticks_ms()
        self.buf = buf
        self.mv = memoryview(self.buf)
        self.part: dict = {}
        self.published = 0
        self.wdt = hal.WDT(cfg["watchdog_ms"])

    # --- state that survives resets --------------------------------------------------
    def _restore(self):
        """(next seq, sensor being read when the last reset came) from RTC memory and flash."""
        ceiling = 0
        try:
            with open(STATE + "/seq") as f:
                ceiling = int(f.read())
        except (OSError, ValueError):
            pass
        seq, hung = ceiling, None
        if self.reset != "power_on":
            try:
                parts = hal.rtc_memory().decode().split(" ")
                seq = max(int(parts[0]), 0)
                hung = parts[1] or None
            except (ValueError, IndexError, UnicodeError):
                pass
        self.ceiling = ceiling
        self._reserve(seq)
        return seq, hung

    def _reserve(self, seq: int) -> None:
        # Flash holds a ceiling above every seq used, written once per _SEQ_BLOCK readings;
        # after a power cut counting resumes from it (a gap, never a repeat).
        if seq >= self.ceiling:
            self.ceiling = seq + _SEQ_BLOCK
            with open(STATE + "/seq", "w") as f:
                f.write(str(self.ceiling))

    def _mark(self, sensor: str) -> None:
        hal.rtc_memory(("%d %s" % (self.seq, sensor)).encode())

    # --- readings ------------------------------------------------------------------------
    def take_reading(self) -> None:
        # A reading is dated when the cycle starts, not when the slowest sensor answers.
        taken = hal.ticks_ms()
        now = self.clock.now_ms()
        m: dict = {}
        part = self.part
        for name, drv in self.sensors:
            if name in self.disabled:
                continue
            if self.skip.get(name):
                self.skip[name] -= 1
                continue
            self._mark(name)
            part.clear()
            try:
                drv.read(part)
                problem = None
            except SensorError as e:
                problem = e.problem
            except Exception as e:
                log.error("sensor %s: %r" % (name, e))
                problem = "error"
            for k, v in part.items():
                if in_range(k, v):
                    m[k] = v
                else:
                    problem = "range"
            if problem:
                if self.faults.get(name) != problem:
                    self.status_due = True
                    log.warn("sensor %s: %s" % (name, problem))
                self.faults[name] = problem
            elif self.faults.pop(name, None):
                self.status_due = True
        if not m:
            self._mark("")
            return  # nothing valid: no reading, no seq used
        seq = self.seq
        self.seq += 1
        self._mark("")
        self._reserve(self.seq)
        body = json.dumps(m)
        if now is None:
            if len(self.pretime) >= _PRETIME_MAX:
                self.pretime.pop(0)
                self.ring.dropped += 1
            self.pretime.append((taken, seq, body))
            log.info("reading seq=%d ts=unknown" % seq)
        else:
            self._stage(now, seq, body)
        self._check_thresholds(m)
        for name, drv in self.sensors:
            bad = getattr(drv, "bad", 0)
            if bad != self.rejected.get(name, 0):
                self.rejected[name] = bad
                log.warn("sensor %s: rejected=%d" % (name, bad))  # corrupt frames / CRC errors so far
        gc.collect()  # between cycles, while little is alive: keeps the heap in one piece

    def _stage(self, t_ms: int, seq: int, body: str) -> None:
        self.staging.append(('{"ts":%d.%03d,"seq":%d,"m":%s}\n' % (t_ms // 1000, t_ms % 1000, seq, body)).encode())
        log.info("reading seq=%d ts=%d.%03d" % (seq, t_ms // 1000, t_ms % 1000))

    def _backdate(self) -> None:
        # The clock is known now: date what was read before, from its tick age.
        now, ticks = self.clock.now_ms(), hal.ticks_ms()
        for taken, seq, body in self.pretime:
            self._stage(now - hal.ticks_diff(ticks, taken), seq, body)
        self.pretime = []

    def _check_thresholds(self, m: dict) -> None:
        # Above a platform threshold the node reads four times as often until it falls back.
        hot = False
        for k, limit in self.thresholds.items():
            if k in m and m[k] >= limit:
                hot = True
        base = self.cfg["interval_s"] * 1000
        self.interval_ms = max(1000, base // 4) if hot else base

    def _flush(self, force: bool = False) -> None:
        """Move staged readings to flash when they cannot be published now."""
        n = len(self.staging)
        if self.inflight is not None and self.inflight[1] == "s":
            return
        if n and (force or (not self.online and n >= self.chunk) or n > 16):
            self.ring.append(self.staging)
            self.staging = []
            log.info("ring: stored %d, pending=%d dropped=%d" % (n, self.ring.pending, self.ring.dropped))

    # --- config from the platform -------------------------------------------------------
    def _load_applied(self) -> None:
        try:
            with open(STATE + "/applied.json") as f:
                self._apply(json.load(f), False)
        except (OSError, ValueError):
            pass

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic != self.t_config or not payload:
            return
        try:
            doc = json.loads(payload)
        except ValueError:
            doc = None
        self._apply(doc, True)

    def _apply(self, doc: Any, persist: bool) -> None:
        """Apply a retained config document (contract/device_config.py), or report it bad."""
        ok = config_ok(doc)
        if not ok:
            log.warn("config: rejected %r" % (doc,))
            self.faults["config"] = "invalid"
            self.status_due = True
            return
        if self.faults.pop("config", None):
            self.status_due = True
        if doc["seq"] == self.config_seq:
            return
        self.config_seq = doc["seq"]
        iv = doc.get("interval_s", self.cfg["interval_s"])
        self.cfg["interval_s"] = iv
        self.interval_ms = iv * 1000
        for k, v in doc.get("sensors", {}).items():
            if v and k in self.disabled:
                self.disabled.remove(k)
            elif not v and k not in self.disabled:
                self.disabled.append(k)
                self.faults.pop(k, None)  # switched off: its faults are no longer news
        self.thresholds = doc.get("thresholds", {})
        nxt = hal.ticks_add(hal.ticks_ms(), self.interval_ms)
        if hal.ticks_diff(self.next_read, nxt) > 0:
            self.next_read = nxt
        self.status_due = True
        log.info("config: applied seq=%d interval_s=%d disabled=%s" % (self.config_seq, iv, self.disabled))
        if persist:
            with open(STATE + "/applied.json", "w") as f:
                json.dump(doc, f)

    # --- the link -------------------------------------------------------------------------
    def _backoff(self, why) -> None:
        # Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^attempt)].
        b = self.cfg["backoff"]
        top = min(b["cap_ms"], b["base_ms"] << min(self.attempt, 20))
        delay = random.randint(0, top)
        self.attempt += 1
        self.retry_at = hal.ticks_add(hal.ticks_ms(), delay)
        log.warn("net: %s; retry %d in %d ms" % (why, self.attempt, delay))

    def _go_offline(self, why) -> None:
        self.client.close()
        self.online = False
        self.inflight = None
        self._backoff(why)

    def _connect(self) -> None:
        if hal.ticks_diff(hal.ticks_ms(), self.retry_at) < 0:
            return
        if not hal.wifi_connected():
            if self.wifi_since is None:
                w = self.cfg["wifi"]
                hal.wifi_connect(w["ssid"], w.get("password", ""))
                self.wifi_since = hal.ticks_ms()
            elif hal.ticks_diff(hal.ticks_ms(), self.wifi_since) > _WIFI_WAIT_MS:
                self.wifi_since = None
                self._backoff("wifi not connected")
            return
        self.wifi_since = None
        mq = self.cfg["mqtt"]
        gc.collect()  # a TLS handshake needs a few KB in one piece
        try:
            sock = hal.connect(mq["host"], mq["port"], mq["tls"], mq["tls_verify"], self.cadata, 10000)
            self.client.connect(sock, self.t_status, OFFLINE)
            self.client.subscribe(self.t_config)
        except Exception as e:
            self.client.close()
            self._backoff("mqtt %r" % (e,))
            return
        self.online = True
        self.attempt = 0
        self.status_due = True
        log.info("net: online, pending=%d" % (self.ring.pending + len(self.staging)))

    def _on_ack(self, pid: int) -> None:
        f = self.inflight
        if f is None or f[0] != pid:
            return
        self.inflight = None
        if f[1] == "r":
            self.ring.commit(f[2], f[3], f[4], f[5])
        else:
            del self.staging[: f[2]]
        self.published += f[2]

    def _pump(self) -> None:
        """Publish the oldest unsent readings: the ring first, then what is staged."""
        f = self.inflight
        if f is not None:
            if hal.ticks_diff(hal.ticks_ms(), f[6]) > self.client.keepalive_ms:
                raise OSError("no PUBACK")
            return
        if self.ring.pending > 0:
            n, nb, seg, off = self.ring.peek(self.buf, self.cfg["batch"])
            if n:
                buf = self.buf
                for i in range(nb - 1):
                    if buf[i] == 10:
                        buf[i] = 44  # newline -> comma: the lines become a JSON array
                pid = self.client.publish(self.t_tel, (b'{"v":1,"batch":[', self.mv[: nb - 1], b"]}"))
                self.inflight = (pid, "r", n, nb, seg, off, hal.ticks_ms())
                return
        if self.staging:
            n = len(self.staging)
            if n == 1:
                rec = self.staging[0]
                pieces: tuple = (b'{"v":1,', memoryview(rec)[1 : len(rec) - 1])
            else:
                pieces = (b'{"v":1,"batch":[', b",".join([r[:-1] for r in self.staging]), b"]}")
            pid = self.client.publish(self.t_tel, pieces)
            self.inflight = (pid, "s", n, 0, 0, 0, hal.ticks_ms())

    def status_doc(self) -> bytes:
        cfg = self.cfg
        gc.collect()
        d = {
            "v": 1, "state": "online", "fw": FW, "reset": self.reset,
            "rssi_dbm": max(-120, min(0, hal.rssi())), "free_mem": gc.mem_free(),
            "uptime_s": hal.ticks_diff(hal.ticks_ms(), self.boot) // 1000,
            "buffered": self.ring.pending + len(self.staging) + len(self.pretime),
            "dropped": self.ring.dropped,
            "faults": sorted(["%s:%s" % kv for kv in self.faults.items()])[:16],
            "interval_s": cfg["interval_s"], "kind": cfg["kind"], "lat": cfg["lat"], "lon": cfg["lon"],
        }
        if self.config_seq >= 0:
            d["config_seq"] = self.config_seq
        bat = cfg["battery"]
        if bat:
            d["battery_v"] = round(hal.adc(bat["adc"]).read_uv() * bat.get("divider", 2.0) / 1000000, 2)
        return json.dumps(d).encode()

    def _status(self) -> None:
        doc = self.status_doc()
        self.client.publish(self.t_status, (doc,), retain=True)
        self.status_due = False
        self.status_at = hal.ticks_ms()
        log.info("status: " + doc.decode())

    def service_link(self) -> None:
        if not self.online:
            self._connect()
            return
        try:
            if not hal.wifi_connected():
                raise OSError("wifi lost")
            self.client.poll(0)
            if self.status_due or hal.ticks_diff(hal.ticks_ms(), self.status_at) > self.cfg["status_interval_s"] * 1000:
                self._status()
            self._pump()
        except Exception as e:
            self._go_offline("link lost: %r" % (e,))

    def service_clock(self) -> None:
        if not self.clock.synced and hal.wifi_connected() and self.clock.due() and self.clock.sync():
            self._backdate()

    def healthy(self) -> bool:
        # Fed only while readings run on time and memory is not exhausted.
        late = hal.ticks_diff(hal.ticks_ms(), self.next_read)
        return late < self.cfg["watchdog_ms"] // 2 and gc.mem_free() > _MIN_FREE

    # --- main loops -----------------------------------------------------------------------
    def step(self) -> None:
        if hal.ticks_diff(hal.ticks_ms(), self.next_read) >= 0:
            self.take_reading()
            self.next_read = hal.ticks_add(self.next_read, self.interval_ms)
            if hal.ticks_diff(hal.ticks_ms(), self.next_read) >= 0:  # fell behind: do not burst
                self.next_read = hal.ticks_add(hal.ticks_ms(), self.interval_ms)
        self.service_clock()
        self.service_link()
        self._flush()
        if self.healthy():
            self.wdt.feed()

    def idle(self) -> None:
        wait = hal.ticks_diff(self.next_read, hal.ticks_ms())
        if self.online and (self.inflight is None and (self.ring.pending or self.staging)):
            wait = 0
        wait = max(0, min(wait, _IDLE_MAX_MS))
        if self.online:
            try:
                self.client.poll(wait)
            except Exception as e:
                self._go_offline("link lost: %r" % (e,))
        else:
            hal.sleep_ms(wait)

    def run(self) -> None:
        log.info("boot fw=%s reset=%s seq=%d pending=%d dropped=%d" % (FW, self.reset, self.seq, self.ring.pending, self.ring.dropped))
        if self.cfg["deep_sleep"]:
            self.run_once()
        while True:
            self.step()
            self.idle()

    def run_once(self) -> None:
        """Deep-sleep mode: read, publish or buffer, sleep. Ring and seq survive the sleep."""
        start = hal.ticks_ms()
        self.take_reading()
        budget = min(30000, self.interval_ms // 2)
        while hal.ticks_diff(hal.ticks_ms(), start) < budget or self.pretime:
            self.service_clock()
            self.service_link()
            if self.online and not self.status_due and self.inflight is None and not self.ring.pending and not self.staging:
                break
            self.wdt.feed()
            self.idle()
        self._flush(True)
        if self.online:
            self.client.disconnect()
        self._mark("")
        rest = max(1000, self.interval_ms - hal.ticks_diff(hal.ticks_ms(), start))
        log.info("sleep %d ms, pending=%d" % (rest, self.ring.pending))
        hal.deepsleep(rest)


def main(buf: Any = None) -> None:
    if buf is None or len(buf) < BATCH_BYTES:
        gc.collect()
        buf = bytearray(BATCH_BYTES)
    import config

    cfg = config.load()
    if cfg is None:
        log.error("not starting: fix config.json")
        return
    del config
    import sys

    sys.modules.pop("config", None)  # only needed at boot: give its memory back
    gc.collect()
    Node(cfg, buf).run()
