# Coming online, loaded on demand and dropped again (app._done): opening the MQTT session
# (CONNECT with the Last Will, SUBSCRIBE to the device's config) and setting the clock
# from NTP. Each runs once per (re)connect or sync, not every cycle, so this code need not
# sit in RAM in between: the running node keeps only what every cycle uses.
import gc
import select

from micropython import const

import hal
import log
from clock import MIN_EPOCH_MS

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
    except Exception as e:
        c.close()
        node._backoff("mqtt %r" % (e,))
        return
    node.online = True
    node.attempt = 0
    node.status_due = True
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


def subscribe(c: Any, topic: str) -> int:
    """SUBSCRIBE at QoS 1 (the SUBACK is checked by Client.poll)."""
    pid = c._next_pid()
    c._send_header(_SUBSCRIBE, 2 + 2 + len(topic) + 1)
    c._hdr[0] = pid >> 8
    c._hdr[1] = pid & 0xFF
    c.write(c._hdr, 0, 2)
    c._str(topic)
    c.write(b"\x01")
    return pid


# --- time ----------------------------------------------------------------------------------------
def sync(clock: Any) -> bool:
    """One NTP attempt for clock (clock.Clock); on failure the next waits twice as long (2 s .. 5 min)."""
    clock.tries += 1
    try:
        t = hal.ntp_time_ms(clock.host)
        if t < MIN_EPOCH_MS:
            raise ValueError("implausible time %d" % t)
    except Exception as e:
        delay = min(_RETRY_MAX_MS, _RETRY_MIN_MS << min(clock.tries, 8))
        clock._next = hal.ticks_add(hal.ticks_ms(), delay)
        log.warn("ntp: attempt %d failed (%s), retry in %d ms" % (clock.tries, e, delay))
        return False
    hal.set_rtc_ms(t)
    clock.synced = True
    clock.tries = 0
    clock._next = hal.ticks_add(hal.ticks_ms(), _RESYNC_MS)
    log.info("ntp: time set %d" % t)
    return True
