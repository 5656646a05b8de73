# The hardware abstraction layer: the ONLY module that imports machine or network.
#
# On an ESP32 it wraps the real peripherals. On the MicroPython unix port (tests,
# benchmarks) it takes the same names from `fakehw`, stand-ins that behave like the
# hardware (UART frames, I2C registers, a Wi-Fi that drops, a watchdog that resets).
# Drivers receive the objects made here and never touch a peripheral themselves.
import sys

ESP32 = sys.platform == "esp32"

# Reset causes, named as in the status contract (start.py maps machine.reset_cause() to them).
RESET_NAMES = ("power_on", "hard", "watchdog", "deepsleep", "soft", "brownout", "unknown")

if ESP32:
    import socket
    import time

    import machine
    import network

    # MicroPython before 1.22 counted from 2000 on the ESP32; the contract counts from 1970.
    _EPOCH = 946684800 if time.gmtime(0)[0] == 2000 else 0
    wlan = network.WLAN(network.STA_IF)
    STAT_CONNECTING = network.STAT_CONNECTING
    _rtc = machine.RTC()
    _socks: list = []

    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff
    ticks_add = time.ticks_add
    sleep_ms = time.sleep_ms

    def wait(poller, ms: int) -> None:
        # Idle until the socket has data or `ms` pass (the CPU sleeps in poll).
        if poller is None:
            time.sleep_ms(ms)
        else:
            poller.poll(ms)

    def rtc_time_ms() -> int:
        # Wall clock from the RTC, ms since 1970 (the RTC keeps running in deep sleep).
        return time.time_ns() // 1000000 + _EPOCH * 1000

    def set_rtc_ms(t_ms: int) -> None:
        tm = time.gmtime(t_ms // 1000 - _EPOCH)
        # RTC.datetime: (year, month, day, weekday 0=Monday, hours, minutes, seconds, microseconds)
        _rtc.datetime((tm[0], tm[1], tm[2], tm[6], tm[3], tm[4], tm[5], (t_ms % 1000) * 1000))

    def ntp_exchange(host: str) -> bytes:
        # One SNTP request (RFC 4330): the 48-byte answer; raises OSError on timeout.
        q = bytearray(48)
        q[0] = 0x1B
        addr = socket.getaddrinfo(host, 123)[0][-1]
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.settimeout(2)
            s.sendto(q, addr)
            return s.recv(48)
        finally:
            s.close()

    machine_reset_cause = machine.reset_cause
    PWRON_RESET = machine.PWRON_RESET
    HARD_RESET = machine.HARD_RESET
    WDT_RESET = machine.WDT_RESET
    DEEPSLEEP_RESET = machine.DEEPSLEEP_RESET
    SOFT_RESET = machine.SOFT_RESET

    def WDT(timeout_ms: int):
        return machine.WDT(timeout=timeout_ms)

    def reset() -> None:
        machine.reset()

    def deepsleep(ms: int) -> None:
        machine.deepsleep(ms)

    def rtc_memory(data=None) -> bytes:
        # Survives deep sleep and watchdog resets, not a power cut.
        if data is not None:
            _rtc.memory(data)
            return data
        return bytes(_rtc.memory())

    def unique_id() -> bytes:
        return machine.unique_id()

    def fs_free() -> int:
        # Free bytes of the board's file system (LittleFS: block size x free blocks).
        import os

        st = os.statvfs("/")
        return st[0] * st[4]

    def uart(uid: int, baud: int, rx: int, tx: int):
        return machine.UART(uid, baudrate=baud, rx=rx, tx=tx, rxbuf=1024, timeout=0)

    def i2c(bus: int, scl: int, sda: int, freq: int = 100000):
        return machine.I2C(bus, scl=machine.Pin(scl), sda=machine.Pin(sda), freq=freq, timeout=50000)

    def pin_in(num: int, pull_up: bool = True):
        if pull_up:
            return machine.Pin(num, machine.Pin.IN, machine.Pin.PULL_UP)
        return machine.Pin(num, machine.Pin.IN)

    def pin_out(num: int):
        return machine.Pin(num, machine.Pin.OUT, value=0)

    def irq_falling(pin, handler) -> None:
        pin.irq(trigger=machine.Pin.IRQ_FALLING, handler=handler)

    def counter(num: int):
        # A hardware pulse counter (PCNT unit 0) on the pin, counting falling edges with
        # its glitch filter at the longest it takes (~12.8 µs); None on a port without
        # machine.Counter (the rain driver then falls back to the pin interrupt).
        try:
            from machine import Counter
        except ImportError:
            return None
        pin = machine.Pin(num, machine.Pin.IN, machine.Pin.PULL_UP)
        return Counter(0, pin, edge=Counter.FALLING, filter_ns=12000)

    def wake_on_pin(num: int) -> None:
        # ext0 wake from deep sleep while the pin is low (the reed closed); the RTC domain
        # keeps the pull-up on during deep sleep
        import esp32

        pin = machine.Pin(num, machine.Pin.IN, machine.Pin.PULL_UP)
        esp32.wake_on_ext0(pin, esp32.WAKEUP_ALL_LOW)

    def woke_by_pin() -> bool:
        return machine.reset_cause() == machine.DEEPSLEEP_RESET and machine.wake_reason() == machine.EXT0_WAKE

    def pulse_us(trig, echo, timeout_us: int) -> int:
        # HC-SR04 / JSN-SR04T: a 10 µs trigger, then the echo pulse width.
        trig.value(0)
        time.sleep_us(5)
        trig.value(1)
        time.sleep_us(10)
        trig.value(0)
        return machine.time_pulse_us(echo, 1, timeout_us)

    def adc(num: int):
        a = machine.ADC(machine.Pin(num))
        a.atten(machine.ADC.ATTN_11DB)
        return a

    def connect(host: str, port: int, tls: bool, verify: bool, cadata, timeout_ms: int):
        # A socket that fails to connect or to shake hands is closed here: lwIP has few.
        addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
        s = socket.socket()
        try:
            s.settimeout(timeout_ms / 1000)
            try:  # a packet is written in pieces: do not hold them back (Nagle)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (AttributeError, OSError):
                pass
            s.connect(addr)
            if tls:
                import ssl

                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE  # type: ignore[attr-defined]
                for der in cadata or ():  # every CA of the bundle (one DER each)
                    ctx.load_verify_locations(cadata=der)
                s = ctx.wrap_socket(s, server_hostname=host)
        except Exception:
            s.close()
            raise
        return s

else:
    from fakehw import *  # type: ignore  # noqa: F403  (the unix-port stand-ins, same names)


def wifi_connect(ssid: str, password: str) -> None:
    """Start associating. The driver retries by itself once asked; connect() while it is
    still connecting raises "Wifi Internal Error", so a stalled attempt is cancelled
    first. A driver error is raised as OSError for the caller to count and back off."""
    wlan.active(True)
    if wlan.isconnected():
        return
    if wlan.status() == STAT_CONNECTING:
        wlan.disconnect()
    wlan.connect(ssid, password)


def wifi_connected() -> bool:
    return wlan.isconnected()


def wifi_disconnect() -> None:
    try:
        wlan.disconnect()
    except OSError:
        pass


def rssi() -> int:
    try:
        return wlan.status("rssi")
    except Exception:
        return -120
