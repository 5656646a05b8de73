# The node: read sensors on a schedule, publish or buffer, keep the link and the clock.
#
# One loop, no threads. Every reading gets the next sequence number and goes to the flash
# ring at once (`ring.chunk` readings at a time; a small RAM staging list holds them
# while flash refuses writes) and is published from there (QoS 1), oldest first, as
# batches. The broker's PUBACK is not the end: a reading stays in flash until the
# platform says, on the device's `stored` topic, that it is durable (contract/stored.py);
# after a reconnect, or when no confirmation comes within confirm_ms, whatever is not
# confirmed is sent again, and the platform's idempotent writes absorb the repeats. When
# confirmations stop for longer than the ring lasts, its oldest readings are dropped and
# counted (status `dropped`). A broker that refuses the `stored` subscription (a platform
# without confirmations) is reported (`stored:refused`) and the PUBACK frees readings, as
# before. Readings taken before the time is known go to flash (state/pretime) with the
# RTC's own count and its power-up epoch, and are dated and moved to the ring once the
# time is known: from NTP, or, while NTP is blocked, from the `t` the platform puts in
# its `stored` messages (online.backdate).
#
# Nothing here resets the board in a loop: a Wi-Fi driver error, a flash that refuses
# writes, a status field that cannot be read degrade that one function, are reported
# in status `faults` ("wifi:driver", "flash:full", "battery:error", ...), and the node
# goes on. Only a link that carries nothing for long (Wi-Fi associated, readings
# waiting, no PUBACK) is escalated: the Wi-Fi is re-associated every LINK_RESET_MS, the
# board reset after LINK_REBOOT_MS (4x that if the last reset was for the same reason),
# and the reason is kept in RTC memory for the status after the reboot.
import gc
import json
import random
import sys

from micropython import const

import hal
import log
import ring
from catalogue import in_range
from drivers import SensorError
from store import STATE, save

try:
    from typing import Any  # for the type checker; MicroPython skips annotations
except ImportError:
    pass

FW = "0.3.0"
_STAGE_MAX = const(64)  # readings held in RAM while flash refuses writes (oldest dropped)
LINK_RESET_MS = const(600000)  # readings waiting, no PUBACK this long: re-associate the Wi-Fi
LINK_REBOOT_MS = const(1800000)  # ... and this long: reset the board
_SEQ_BLOCK = const(1000)  # seq values reserved per flash write
BATCH_BYTES = const(8192)  # largest replay batch: ~50 readings of a full air+weather node
BUF_BYTES = const(512)  # scratch for the ring: a replay batch streams from flash through it
_IDLE_MAX_MS = const(1000)
_WIFI_WAIT_MS = const(15000)
_MIN_FREE = const(4096)  # below this the loop is not healthy: let the watchdog reset


class Node:
    # Its fields are set at boot by start.node(), boot-only code that is dropped once the
    # node runs. The annotations are for the type checker: MicroPython stores nothing.
    # Code needed once per (re)connect, NTP sync or config document loads on demand
    # (online.py, retained.py) and is dropped after: see _done().
    t_tel: str
    t_status: str
    t_config: str
    reset: str
    boot: Any  # ticks
    interval_s: int  # the base interval, from config.json or the platform's config
    interval_ms: int  # the current one (shorter while a threshold is crossed)
    status_ms: int
    watchdog_ms: int
    batch: int
    chunk: int
    deep_sleep: bool
    place: tuple  # (kind, lat, lon)
    wifi: tuple  # (ssid, password)
    broker: tuple  # (host, port, tls, tls_verify)
    backoff: tuple  # (base_ms, cap_ms)
    battery: Any  # (ADC, divider) or None
    config_seq: int
    disabled: list
    thresholds: dict
    faults: dict
    skip: dict
    rejected: dict
    ring: Any
    staging: list  # readings not in flash yet (chunk, or a flash that refuses writes): freed by the PUBACK
    confirm_t: Any  # ticks of the last progress: a confirmation, or a send when none waited
    confirm_ms: int  # how long to wait for one before sending again: 60 s or a keep-alive, doubling up to 32x
    pretime: int  # readings in flash waiting for the time
    epoch: int  # power-ups so far: the RTC's own count restarts at each
    uptime_ms: int
    ticks: Any  # when uptime_ms was last advanced
    last_ack: Any  # ticks of the last PUBACK (or of the last moment nothing waited)
    link_resets: int
    boots: int  # resets in a row that were crashes (RTC memory); 3 or more: safe mode
    safe: bool
    why: str  # why the last reset came, kept in RTC memory
    clock: Any
    seq: int
    ceiling: int
    sensors: list
    next_read: Any  # ticks
    client: Any
    password: Any  # rotated MQTT password (str) or None
    cadata: Any
    online: bool
    inflight: Any  # (pid, kind, n, nbytes, seg, off, sent_at)
    attempt: int
    retry_at: Any  # ticks
    wifi_since: Any
    status_due: bool
    status_at: Any  # ticks
    buf: Any
    part: dict
    published: int
    wdt: Any
    trial_ms = 0  # a new version on probation: ms it has to publish once (main.py, otaboot.select)
    ota_id = -1  # the last update offer handled (otaboot.setup, ota.py): its retained copy at each connect costs nothing
    link: Any = None  # link settings received over the air, for start.node (otaboot.setup)

    # --- state that survives resets --------------------------------------------------
    def _reserve(self, seq: int) -> None:
        # Flash holds a ceiling above every seq used, written once per _SEQ_BLOCK readings;
        # after a power cut counting resumes from it (a gap, never a repeat). A flash that
        # refuses the write is reported and tried again at the next reading; a write that
        # succeeds clears the fault.
        if seq >= self.ceiling or "flash" in self.faults:  # while flash fails, each reading tries it again
            try:
                save(STATE + "/seq", str(seq + _SEQ_BLOCK))
                self.ceiling = seq + _SEQ_BLOCK
                self.fault("flash", None)
            except OSError as e:
                self.flash_error(e)

    def _mark(self, sensor: str) -> None:
        # RTC memory survives every reset but a power cut: "nk1 <seq> <sensor being read>
        # <boots> <why>". The tag tells a brownout (kept) from a power-on (lost).
        hal.rtc_memory(("nk1 %d %s %d %s" % (self.seq, sensor or "-", self.boots, self.why)).encode())

    def fault(self, name: str, problem) -> None:
        """Report (problem) or clear (None) a fault in status."""
        if problem is None:
            if self.faults.pop(name, None):
                self.status_due = True
        elif self.faults.get(name) != problem:
            self.faults[name] = problem
            self.status_due = True
            log.warn("fault %s:%s" % (name, problem))

    def flash_error(self, e) -> None:
        self.fault("flash", "full" if e.errno == 28 else "error")

    # --- readings ------------------------------------------------------------------------
    def take_reading(self) -> None:
        # A reading is dated when the cycle starts, not when the slowest sensor answers.
        taken = hal.rtc_time_ms()
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
                if hasattr(drv, "air"):  # the air it measures through (ultrasonic: the speed of sound)
                    drv.air(m)
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
            self.fault(name, problem)
        if not m:
            self._mark("")
            return  # nothing valid: no reading, no seq used
        seq = self.seq
        self.seq += 1
        self._mark("")
        self._reserve(self.seq)
        body = json.dumps(m)
        if now is None:
            self._pretime(taken, seq, body)
        else:
            self._stage(now, seq, body)
            self._flush()
        self._check_thresholds(m)
        for name, drv in self.sensors:
            bad = getattr(drv, "bad", 0)
            if bad != self.rejected.get(name, 0):
                self.rejected[name] = bad
                log.warn("sensor %s: rejected=%d" % (name, bad))  # corrupt frames / CRC errors so far
        gc.collect()  # between cycles, while little is alive: keeps the heap in one piece

    def _stage(self, t_ms: int, seq: int, body: str) -> None:
        if len(self.staging) >= _STAGE_MAX:  # only while flash refuses writes
            self.staging.pop(0)
            self.ring.dropped += 1
        self.staging.append(('{"ts":%d.%03d,"seq":%d,"m":%s}\n' % (t_ms // 1000, t_ms % 1000, seq, body)).encode())
        log.info("reading seq=%d ts=%d.%03d" % (seq, t_ms // 1000, t_ms % 1000))

    def _pretime(self, raw_ms: int, seq: int, body: str) -> None:
        # The time is unknown: the reading goes to flash at once with the RTC's own count
        # (it runs on through resets and deep sleep, from 2000 after a power-up) and the
        # power-up it belongs to; online.backdate dates it once NTP answers.
        line = "%d %d %d %s\n" % (self.epoch, raw_ms, seq, body)
        try:
            with open(STATE + "/pretime", "a") as f:
                f.write(line)
            self.pretime += 1
            log.info("reading seq=%d ts=unknown" % seq)
        except OSError as e:  # no time and no flash: the one reading that is lost, counted
            self.flash_error(e)
            self.ring.dropped += 1

    def _check_thresholds(self, m: dict) -> None:
        # Above a platform threshold the node reads four times as often until it falls back.
        hot = False
        for k, limit in self.thresholds.items():
            if k in m and m[k] >= limit:
                hot = True
        base = self.interval_s * 1000
        self.interval_ms = max(1000, base // 4) if hot else base

    def _flush(self, force: bool = False) -> None:
        """Move staged readings to flash (ring.chunk at a time)."""
        n = len(self.staging)
        if self.inflight is not None and self.inflight[1] == "s":
            return
        if n and (force or n >= self.chunk or n > 16):
            if "flash" in self.faults and not force and n < self.chunk + 8:
                return  # flash refused the last write: try again every few readings, not every loop
            try:
                self.ring.append(self.staging)
            except OSError as e:
                self.flash_error(e)
                return
            self.fault("flash", None)
            self.staging = []
            log.info("ring: stored %d, pending=%d dropped=%d" % (n, self.ring.pending, self.ring.dropped))

    # --- config from the platform -------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic != self.t_config or not payload:
            if topic.endswith("/stored"):
                ring.apply(self, payload)
            elif payload and (topic.endswith("/ota") or topic.startswith("nakhon/fw/")):
                if topic.endswith("/ota") and ('"id":%d,' % self.ota_id).encode() in payload:
                    return  # handled already: the retained offer comes again at every connect
                try:
                    import ota  # an update offered, or a piece of one: kept loaded while it downloads

                    try:
                        ota.message(self, topic, payload)
                    finally:
                        if not ota.busy():
                            sys.modules.pop("ota", None)
                except MemoryError:  # a heap too cut up for it now: reported, tried again at the next connect
                    sys.modules.pop("ota", None)
                    self.fault("ota", "memory")
            return
        import retained

        try:
            retained.apply(self, payload, True)
        finally:
            _done()

    # --- the link -------------------------------------------------------------------------
    def _backoff(self, why) -> None:
        # Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^attempt)].
        base, cap = self.backoff
        top = min(cap, base << min(self.attempt, 20))
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
                try:
                    hal.wifi_connect(self.wifi[0], self.wifi[1])
                except OSError as e:  # the driver refused (e.g. "Wifi Internal Error")
                    self.fault("wifi", "driver")
                    self._backoff("wifi driver: %r" % (e,))
                    return
                self.wifi_since = hal.ticks_ms()
            elif hal.ticks_diff(hal.ticks_ms(), self.wifi_since) > _WIFI_WAIT_MS:
                self.wifi_since = None
                self._backoff("wifi not connected")
            return
        self.wifi_since = None
        self.fault("wifi", None)
        gc.collect()  # what the last on-demand module left goes first: its code needs RAM in one piece
        import online

        try:
            online.connect(self)
        finally:
            _done()

    def _on_ack(self, pid: int) -> None:
        f = self.inflight
        if f is None or f[0] != pid:
            return
        self.inflight = None
        self.last_ack = hal.ticks_ms()
        if self.link_resets:  # the link carries again
            self.link_resets = 0
            self.fault("link", None)
        r = self.ring
        if r.pending == r.unsent:
            self.confirm_t = self.last_ack  # nothing waited for a confirmation: the wait starts now
        legacy = self.client.refused < 0  # no confirmations: the PUBACK is the end of the chain
        if f[1] == "r":
            try:
                r.commit(f[2], f[3], f[4], f[5], legacy)
            except OSError as e:  # the head moved in RAM; flash gets it at the next PUBACK
                self.flash_error(e)
        else:  # from RAM (flash refused them): the PUBACK is as far as they can be kept
            del self.staging[: f[2]]
        self.published += f[2]
        if self.trial_ms:  # a new version's first reading reached the broker: it stays
            import probation

            probation.confirm(self)
            sys.modules.pop("probation", None)

    def _pump(self) -> None:
        """Publish the oldest unsent readings: the ring first, then what is staged."""
        f = self.inflight
        if f is not None:
            if hal.ticks_diff(hal.ticks_ms(), f[6]) > self.client.keepalive_ms:
                raise OSError("no PUBACK")
            return
        if self.ring.unsent > 0:
            n, nb, seg, off = self.ring.peek(self.buf, self.batch, BATCH_BYTES)
            if n:
                # Straight from flash: the lines, less the last newline, with each newline
                # turned into a comma, are a JSON array.
                c = self.client
                pid = c.begin(self.t_tel, 16 + nb - 1 + 2)
                c.write(b'{"v":1,"batch":[')
                self.ring.stream(seg, off, nb - 1, self.buf, c.write, 44)
                c.write(b"]}")
                self.inflight = (pid, "r", n, nb, seg, off, hal.ticks_ms())
                return
        if self.staging:
            # One reading as itself, several as a batch; written piece by piece (no join).
            st = self.staging
            n = len(st)
            c = self.client
            if n == 1:
                rec = st[0]
                pid = c.begin(self.t_tel, 7 + len(rec) - 2)
                c.write(b'{"v":1,')
                c.write(rec, 1, len(rec) - 1)
            else:
                size = 16 + 2 - 1
                for r in st:
                    size += len(r)
                pid = c.begin(self.t_tel, size)
                c.write(b'{"v":1,"batch":[')
                for i in range(n):
                    if i:
                        c.write(b",")
                    c.write(st[i], 0, len(st[i]) - 1)
                c.write(b"]}")
            self.inflight = (pid, "s", n, 0, 0, 0, hal.ticks_ms())

    def _status(self) -> None:
        import report

        try:
            report.status(self)
        finally:
            _done()

    def service_link(self) -> None:
        if not self.online:
            self._connect()
            return
        try:
            if not hal.wifi_connected():
                raise OSError("wifi lost")
            self.client.poll(0)
            refused = self.client.refused < 0
            if refused != (self.faults.get("stored") == "refused"):
                self.fault("stored", "refused" if refused else None)
            r = self.ring
            waiting = r.pending - r.unsent
            if not refused and waiting and self.inflight is None:
                # Sent, and no confirmation for confirm_ms: the broker or the platform lost
                # it. Everything not confirmed goes again, oldest first; the wait doubles
                # while none comes at all (a platform away for long), back to its base on one.
                now = hal.ticks_ms()
                quiet = hal.ticks_diff(now, self.confirm_t)
                if quiet > self.confirm_ms:
                    log.warn("stored: no confirmation for %d s: sending %d again" % (quiet // 1000, waiting))
                    r.cseg, r.coff, r.unsent = r.hseg, r.hoff, r.pending
                    self.confirm_t = now
                    self.confirm_ms = min(self.confirm_ms * 2, max(60000, self.client.keepalive_ms) << 5)
            if self.status_due or hal.ticks_diff(hal.ticks_ms(), self.status_at) > self.status_ms:
                self._status()
            self._pump()
        except Exception as e:
            self._go_offline("link lost: %r" % (e,))

    def service_clock(self) -> None:
        # NTP when due (at once until it first answers, then every few hours: the RTC
        # drifts, in deep sleep by percent); what was read without the time is dated then.
        if self.clock.due() and hal.wifi_connected():
            gc.collect()  # as for connect: the module's code needs RAM in one piece
            import online

            try:
                if online.sync(self) and self.pretime and not self.safe:
                    online.backdate(self)
            finally:
                _done()

    def tick(self) -> None:
        # Uptime and the link's escalation, counted in steps shorter than half the ticks
        # period (the ESP32's ticks_ms wraps every 2^30 ms).
        now = hal.ticks_ms()
        self.uptime_ms += hal.ticks_diff(now, self.ticks)
        self.ticks = now
        if self.boots and self.uptime_ms > 600000:  # ten healthy minutes: the crash count starts over
            self.boots = 0
            self._mark("")
            if self.safe:  # and safe mode ends: what waits for the time is dated at the next NTP answer, now
                self.safe = False
                self.fault("boot", None)
                self.clock._next = now
        if self.trial_ms and self.uptime_ms > self.trial_ms:  # a new version that never published: roll back
            import probation

            probation.give_up(self)
        if not (self.ring.unsent or self.staging) or not hal.wifi_connected():
            self.last_ack = now  # nothing to send, or no Wi-Fi (its own reconnects handle that)
            return
        quiet = hal.ticks_diff(now, self.last_ack)
        if quiet > LINK_REBOOT_MS << (2 if self.faults.get("reset") == "nolink" else 0):  # after one such reset, 4x as long
            self.why = "nolink"
            self._mark("")
            log.error("link: no PUBACK for %d s: reset" % (quiet // 1000))
            hal.reset()
        elif quiet > LINK_RESET_MS * (self.link_resets + 1) and quiet < LINK_REBOOT_MS:
            self.link_resets += 1
            self.fault("link", "stalled")
            log.warn("link: no PUBACK for %d s: re-associating the Wi-Fi" % (quiet // 1000))
            if self.online:
                self._go_offline("link stalled")
            hal.wifi_disconnect()
            self.wifi_since = None

    def healthy(self) -> bool:
        # Fed only while readings run on time and memory is not exhausted.
        late = hal.ticks_diff(hal.ticks_ms(), self.next_read)
        return late < self.watchdog_ms // 2 and gc.mem_free() > _MIN_FREE

    # --- main loops -----------------------------------------------------------------------
    def _prep(self) -> int:
        # Sensors that act between readings: sound samples across the interval (laeq_db,
        # an energy mean); laser PM sensors sleep between readings (drivers/pm.py) and are
        # woken their warm-up time before one. Returns ms until the last of them is warm:
        # a reading due before then (the first after boot) waits, and the schedule with it.
        left = 0
        ahead = hal.ticks_diff(self.next_read, hal.ticks_ms())
        for name, drv in self.sensors:
            if name in self.disabled:
                continue
            if hasattr(drv, "sample"):
                drv.sample()
            if hasattr(drv, "warm_ms") and ahead <= drv.warm_ms:
                left = max(left, drv.warming())
        if left and ahead < left:
            self.next_read = hal.ticks_add(hal.ticks_ms(), left)
        return left

    def _rest(self, interval_ms: int) -> None:
        # After a reading: PM sensors sleep when the interval leaves them long enough asleep
        # (interval 0, before a deep sleep: always; one the platform switched off: too).
        for name, drv in self.sensors:
            if hasattr(drv, "rest"):
                drv.rest(0 if name in self.disabled else interval_ms)

    def step(self) -> None:
        self.tick()
        self._prep()
        if hal.ticks_diff(hal.ticks_ms(), self.next_read) >= 0:
            self.take_reading()
            self._rest(self.interval_ms)
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
        for _, drv in self.sensors:
            if hasattr(drv, "warm_ms") and not drv.awake:  # ... until a sleeping PM sensor is to wake
                wait = min(wait, wait - drv.warm_ms)
        if self.online and (self.inflight is None and (self.ring.unsent or self.staging)):
            wait = 0
        if hal.wifi_connected() and self.clock.due():
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
        while True:
            self.step()
            self.idle()

    def run_once(self) -> None:
        """Deep-sleep mode: read, publish or buffer, sleep. Ring and seq survive the sleep."""
        start = hal.ticks_ms()
        self.next_read = start
        while self._prep():  # the PM sensors slept with the chip: they warm up while the link comes up
            self.tick()
            self.service_clock()
            self.service_link()
            self.wdt.feed()
            self.idle()
        self.take_reading()
        self._rest(0)
        read = hal.ticks_ms()
        budget = min(30000, self.interval_ms // 2)
        while hal.ticks_diff(hal.ticks_ms(), read) < budget:
            self.tick()
            self.service_clock()
            self.service_link()
            if self.online and not self.status_due and self.inflight is None and not self.ring.pending and not self.staging:
                break  # everything confirmed
            self.wdt.feed()
            self.idle()
        self._flush(True)
        if self.online:
            self.client.disconnect()
        self._mark("")
        rest = max(1000, self.interval_ms - hal.ticks_diff(hal.ticks_ms(), start))
        for _, drv in self.sensors:
            if hasattr(drv, "arm"):  # the rain gauge: its tips to flash, its pin a wake source
                try:
                    drv.arm(rest)
                except Exception as e:
                    log.error("sensor arm: %r" % (e,))
        if self.trial_ms:  # on probation: its time runs on while the chip sleeps
            import probation

            probation.slept(self, rest)
            sys.modules.pop("probation", None)
        log.info("sleep %d ms, pending=%d" % (rest, self.ring.pending))
        hal.deepsleep(rest)


def _done() -> None:
    # The on-demand modules are needed again only at the next (re)connect, NTP sync or
    # config document: drop them, and collect at once, so their code's RAM is back in one
    # piece before the replay or a status asks for a buffer.
    sys.modules.pop("online", None)
    sys.modules.pop("retained", None)
    sys.modules.pop("report", None)
    gc.collect()


def main(buf: Any = None) -> None:
    if hal.woke_by_pin():  # a rain tip woke the chip from deep sleep: count it, sleep on
        from drivers import rainwake

        rainwake.tipped()
    node = boot(buf)
    if node is None:
        return
    if node.deep_sleep:
        node.run_once()
    node.run()


# Every module the node loads on demand. MicroPython keeps the names of a module it loads
# for good, in pools that double (the next one here holds 640 names: about 4.5 KB in one
# piece on the ESP32); loaded first while the node runs, in a heap the ring, the client
# and the readings have cut up, a module could find no such block, and every reconnect
# ended in "MemoryError: allocating 640 bytes" (a count of names, not bytes).
ON_DEMAND = ("online", "report", "retained", "stored", "probation", "ota", "otacheck")


def _intern() -> None:
    # Load each once at boot, while the heap is in one piece, so its names are kept now.
    # (A collection before each: the pool that the names outgrow is allocated in the
    # largest piece the heap has.)
    for name in ON_DEMAND:
        gc.collect()
        __import__(name)
        sys.modules.pop(name, None)
    sys.modules.pop("otaboot", None)  # (ota and probation load it; main.py dropped it)
    gc.collect()


def boot(buf: Any = None):
    """The node built from config.json and flash (None after logging why it cannot start).
    The code that builds it (config check, drivers' factory, state restore) is needed at
    boot only: it is loaded here and its memory given back before the node runs."""
    _intern()
    # The config is checked first (its code dropped), then the drivers it names are
    # loaded, and only then the rest of the boot code: the boot code's memory, given
    # back, is one piece (the modules loaded on demand need it whole).
    import config

    cfg = config.load()
    del config
    sys.modules.pop("config", None)
    gc.collect()
    if cfg is None:
        log.error("not starting: fix config.json")
        return None
    drivers = {"pms5003": "pm", "sds011": "pm", "sht3x": "sht3x", "bme280": "bme280", "ultrasonic": "ultrasonic",
               "rain": "rain", "sound": "sound"}
    for spec in cfg["sensors"]:
        mod = drivers.get(spec.get("type"))
        if mod:
            try:
                __import__("drivers." + mod)
            except ImportError:
                pass  # start.make says so, for that sensor
    del drivers
    import start

    node = start.node(buf, cfg)
    del cfg
    del start
    sys.modules.pop("start", None)
    sys.modules.pop("config", None)
    _done()
    gc.collect()
    return node
