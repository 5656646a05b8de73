# Coming online, loaded on demand and dropped again (app._done): opening the MQTT session
# (CONNECT with the Last Will, SUBSCRIBE to the device's config and `stored` topics) and
# setting the clock (from NTP, or from the platform's time while NTP is blocked). Each runs once per (re)connect or sync, not every cycle, so this code need not
# sit in RAM in between: the running node keeps only what every cycle uses.
import gc
import select

from micropython import const

import hal
import log
from store import STATE, load, save
from clock import EPOCH2000_MS

try:
    from typing import Any  # for the type checker; MicroPython skips annotations
except ImportError:
    pass

OFFLINE = b'{"v":1,"state":"offline"}'
_CONNECT = const(0x10)
_CONNACK = const(0x20)
_SUBSCRIBE = const(0x82)
_RESYNC_MS = const(6 * 3600 * 1000)
_RETRY_MIN_MS = const(2000)
_RETRY_MAX_MS = const(300000)


# --- the link ---------------------------------------------------------------------------
def connect(node: Any) -> None:
    """Open the socket and the MQTT session, subscribe to the config; on failure back off."""
    host, port, tls, verify = node.broker
    c = node.client
    gc.collect()  # a TLS handshake needs a few KB in one piece
    try:
        sock = hal.connect(host, port, tls, verify, node.cadata, 10000)
        session(c, sock, node.t_status, OFFLINE)
        subscribe(c, node.t_config)
        # one SUBSCRIBE for both: the broker may refuse either without ending the link (a platform that
        # does not confirm; a device provisioned before over-the-air updates, whose role lacks `ota`)
        c.refused = subscribe(c, node.t_config[:-6] + "stored", node.t_config[:-6] + "ota")
    except Exception as e:
        c.close()
        node._backoff("mqtt %r" % (e,))
        return
    node.online = True
    node.attempt = 0
    node.status_due = True
    # A new session: whatever was sent and not confirmed may be lost with the old one.
    r = node.ring
    r.cseg, r.coff, r.unsent = r.hseg, r.hoff, r.pending
    node.confirm_t = hal.ticks_ms()
    log.info("net: online, pending=%d" % (node.ring.pending + len(node.staging)))


def session(c: Any, sock, will_topic: str, will_msg: bytes, clean: bool = True, timeout_ms: int = 10000) -> None:
    """Send CONNECT with a retained QoS 1 Last Will and wait for CONNACK (c: mqtt.Client)."""
    c.sock = sock
    flags = 0x02 if clean else 0
    length = 10 + 2 + len(c.client_id)
    flags |= 0x04 | 0x08 | 0x20  # will, will QoS 1, will retain
    length += 2 + len(will_topic) + 2 + len(will_msg)
    if c.username:
        flags |= 0x80
        length += 2 + len(c.username)
        if c.password:
            flags |= 0x40
            length += 2 + len(c.password)
    c._send_header(_CONNECT, length)
    c.write(b"\x00\x04MQTT\x04")
    h = c._hdr
    h[0] = flags
    h[1] = c.keepalive_ms // 1000 >> 8
    h[2] = c.keepalive_ms // 1000 & 0xFF
    c.write(h, 0, 3)
    c._str(c.client_id)
    c._str(will_topic)
    c._str(will_msg)
    if c.username:
        c._str(c.username)
        if c.password:
            c._str(c.password)
    c.poller = select.poll()
    c.poller.register(sock, select.POLLIN)
    if not c.poller.poll(timeout_ms):
        raise OSError("mqtt: no CONNACK")
    resp = c._read(4)
    if resp[0] != _CONNACK or resp[1] != 2:
        raise OSError("mqtt: bad CONNACK")
    if resp[3] != 0:
        raise OSError("mqtt: refused, code %d" % resp[3])
    c._last_rx = hal.ticks_ms()
    c._ping_out = False


def subscribe(c: Any, topic: str, topic2: str = "") -> int:
    """SUBSCRIBE to one topic, or two, at QoS 1 (the SUBACK is checked by Client.poll)."""
    pid = c._next_pid()
    c._send_header(_SUBSCRIBE, 2 + 2 + len(topic) + 1 + (2 + len(topic2) + 1 if topic2 else 0))
    c._hdr[0] = pid >> 8
    c._hdr[1] = pid & 0xFF
    c.write(c._hdr, 0, 2)
    c._str(topic)
    c.write(b"\x01")
    if topic2:
        c._str(topic2)
        c.write(b"\x01")
    return pid


# --- time ----------------------------------------------------------------------------------------
def sync(node: Any, ms: int = -1) -> bool:
    """One NTP attempt (node.clock: clock.Clock); on failure the next waits twice as long
    (2 s .. 5 min), on success the next is in _RESYNC_MS. The first success after a
    power-up also fixes where the RTC's own count stands against true time (the offset
    that dates what was read before), kept in flash with the power-up it belongs to.
    ms given: the platform's time (`t` of a `stored` message) while the clock is unknown
    and NTP does not answer: the RTC is set and what was read without the time dated; NTP
    goes on being asked (the finer source; the floor stays its own)."""
    clock = node.clock
    if ms >= 0:
        if ms < clock.floor:
            log.warn("platform: implausible time %d" % ms)
            return False
        before = hal.rtc_time_ms()
        if not clock.synced:
            _offsets(node, ms - before)
        hal.set_rtc_ms(ms)
        clock.synced = True
        log.info("platform: time set %d (RTC was off by %d ms)" % (ms, ms - before))
        if node.pretime and not node.safe:
            backdate(node)
        return True
    clock.tries += 1
    try:
        before = hal.rtc_time_ms()
        t = ntp_time_ms(clock.host)
        if t < clock.floor:
            raise ValueError("implausible time %d" % t)
    except Exception as e:
        delay = min(_RETRY_MAX_MS, _RETRY_MIN_MS << min(clock.tries, 8))
        clock._next = hal.ticks_add(hal.ticks_ms(), delay)
        log.warn("ntp: attempt %d failed (%s), retry in %d ms" % (clock.tries, e, delay))
        node.fault("ntp", "no_answer" if clock.tries > 3 else None)
        return False
    if not clock.synced:
        _offsets(node, t - before)
    hal.set_rtc_ms(t)
    clock.synced = True
    log.info("ntp: time set %d (RTC was off by %d ms)" % (t, t - before))
    clock.tries = 0
    clock.floor = t
    clock._next = hal.ticks_add(hal.ticks_ms(), _RESYNC_MS)
    node.fault("ntp", None)
    try:
        save(STATE + "/floor", str(t))  # a later clock can not be earlier than this
    except OSError as e:
        node.flash_error(e)
    return True


def ntp_time_ms(host: str) -> int:
    """NTP's time in ms since 1970. The 32-bit seconds field rolls over on 2036-02-07
    (era 1): a value without its top bit is read as era 1 (RFC 4330, section 3)."""
    msg = hal.ntp_exchange(host)
    secs = msg[40] << 24 | msg[41] << 16 | msg[42] << 8 | msg[43]
    frac = msg[44] << 24 | msg[45] << 16 | msg[46] << 8 | msg[47]
    if not secs & 0x80000000:
        secs += 0x100000000
    return (secs - 2208988800) * 1000 + (frac * 1000 >> 32)


def _offsets(node: Any, offset: int) -> None:
    # "epoch offset" lines: true time = the RTC's own count + offset, per power-up.
    text = load(STATE + "/epochs") or ""
    lines = [ln for ln in text.split("\n") if ln and not ln.startswith("%d " % node.epoch)][-7:]
    lines.append("%d %d" % (node.epoch, offset))
    try:
        save(STATE + "/epochs", "\n".join(lines) + "\n")
    except OSError as e:
        node.flash_error(e)
    node.clock.offset = offset


def backdate(node: Any) -> None:
    """Date the readings kept in flash without the time and move them to the ring, oldest
    first. A power-up whose offset is unknown (NTP never answered before the next power
    cut) is placed right before the next power-up: off by how long the power was out."""
    path = STATE + "/pretime"
    offs = {}
    for ln in (load(STATE + "/epochs") or "").split("\n"):
        p = ln.split(" ")
        if len(p) == 2:
            offs[int(p[0])] = int(p[1])
    last: dict = {}
    try:
        with open(path) as f:
            for ln in f:
                p = ln.split(" ", 3)
                if len(p) == 4 and p[3].endswith("\n"):
                    e, raw = int(p[0]), int(p[1])
                    if raw > last.get(e, 0):
                        last[e] = raw
        start = None
        for e in sorted(last, reverse=True):
            if e not in offs and start is not None:
                offs[e] = start - last[e]
            if e in offs:
                start = EPOCH2000_MS + offs[e]
        ring = node.ring
        out: list = []
        n = 0
        with open(path) as f:
            for ln in f:
                p = ln.split(" ", 3)
                if len(p) != 4 or not p[3].endswith("\n") or int(p[0]) not in offs:
                    continue  # torn by a power cut, or no time can be given to it
                t = int(p[1]) + offs[int(p[0])]
                out.append(('{"ts":%d.%03d,"seq":%s,"m":%s}\n' % (t // 1000, t % 1000, p[2], p[3][:-1])).encode())
                log.info("reading seq=%s ts=%d.%03d" % (p[2], t // 1000, t % 1000))
                n += 1
                if len(out) == 8:
                    ring.append(out)
                    out = []
        if out:
            ring.append(out)
        import os

        os.remove(path)
    except OSError as e:  # flash: try again in a minute (duplicates in the ring are harmless)
        node.flash_error(e)
        node.clock._next = hal.ticks_add(hal.ticks_ms(), 60000)
        return
    except ValueError as e:  # damaged beyond reading: keep the file aside, report it
        log.error("pretime: %r" % (e,))
        import os

        os.rename(path, path + ".bad")
        node.fault("pretime", "damaged")
    node.pretime = 0
    log.info("pretime: %d readings dated, pending=%d" % (n, node.ring.pending))
