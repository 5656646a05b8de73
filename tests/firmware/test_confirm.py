"""Store-and-forward end to end on the device (issue 18): the firmware on the MicroPython
VM against a real Mosquitto, the test standing in for the platform (tests/firmware/watch.py
reads the device's telemetry and confirms it on its `stored` topic, as the ingest does).
A reading stays in the device's flash ring after the broker's PUBACK until the platform
confirms it; what the broker loses is sent again; when confirmations stop for longer than
the ring lasts the oldest readings are dropped, counted and reported, nothing else; and a
device whose NTP is blocked takes the time from the platform's confirmations."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from nakhon.servers import Mosquitto, free_port
from tests.firmware.device import Device, device_config, world
from tests.firmware.test_units import run_mp
from tests.firmware.watch import Watch
from tests.helpers import wait_until

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.integration  # the firmware on the MicroPython VM against one broker

CITY = "chiang_mai"
WEATHER = [{"name": "th", "type": "sht3x", "i2c": 0, "scl": 22, "sda": 21, "addr": 0x44}]
TAKEN_RE = re.compile(r"I (\d+) reading seq=(\d+) ts=")


def weather(dev_id: str, port: int, **over: Any) -> dict[str, Any]:
    return device_config(dev_id, port, sensors=WEATHER, kind="weather", **over)


def taken(dev: Device) -> set[int]:
    return {int(s) for _, s in TAKEN_RE.findall(dev.log())}


def ring_seqs(folder: Path) -> set[int]:
    """The seqs the device's flash ring still holds (from its head on), read as a board's
    flash would be after the fact."""
    ring = folder / "state" / "ring"
    head = None
    for name in ("head", "head.new"):
        try:
            head = (ring / name).read_text().split()
            break
        except OSError:
            continue
    hseg, hoff = (int(head[0]), int(head[1])) if head else (0, 0)
    out: set[int] = set()
    for seg in sorted(ring.glob("s" + "[0-9]" * 8)):
        n = int(seg.name[1:])
        if n < hseg:
            continue
        try:
            data = seg.read_bytes()
        except OSError:  # freed meanwhile
            continue
        for line in data[hoff if n == hseg else 0 :].split(b"\n"):
            m = re.match(rb'\{"ts":[0-9.]+,"seq":(\d+),', line)
            if m and line.endswith(b"}"):
                out.add(int(m.group(1)))
    return out


def no_crash(dev: Device) -> None:
    log = dev.log()
    assert "Traceback" not in log and "MemoryError" not in log, log[-3000:]


def test_readings_stay_in_flash_after_the_puback_until_the_platform_confirms(workdir: Path, broker: Mosquitto) -> None:
    dev_id = "cm-fw-keep-01"
    watch = Watch(broker.port, CITY, dev_id, confirm=False)  # the platform has not confirmed anything yet
    dev = Device(workdir / "dev", weather(dev_id, broker.port), world(scale=30))
    try:
        dev.start()
        wait_until(lambda: len({r["seq"] for r in watch.readings()}) >= 6, 60, what="readings the broker acknowledged")
        published = {r["seq"] for r in watch.readings()}
        held = ring_seqs(dev.folder)
        wait_until(lambda: (watch.last_status() or {}).get("buffered", 0) >= len(published), 30, what="a status counting them")
        watch.confirm = True
        wait_until(lambda: not (ring_seqs(dev.folder) & published), 60, what="the confirmed readings freed")
        wait_until(lambda: (watch.last_status() or {}).get("buffered", 99) <= 1, 60, what="a status with nothing waiting")
    finally:
        dev.stop()
        watch.close()
    no_crash(dev)
    assert published <= held, f"PUBACKed but gone from flash before any confirmation: {sorted(published - held)}"
    assert "stored: no confirmation for" in dev.log()  # sent again, as none came
    assert set(watch.confirmed) >= published


def test_readings_the_broker_loses_are_sent_again_and_all_end_up_confirmed(workdir: Path, broker: Mosquitto) -> None:
    dev_id = "cm-fw-lose-01"
    watch = Watch(broker.port, CITY, dev_id)
    lost_once: set[int] = set()

    def lose(seq: int) -> bool:  # the broker acknowledged these, then lost them (a crash before its autosave)
        if seq % 5 == 2 and seq not in lost_once:
            lost_once.add(seq)
            return True
        return False

    watch.lose = lose
    dev = Device(workdir / "dev", weather(dev_id, broker.port), world(scale=60))
    try:
        dev.start()
        wait_until(lambda: len(taken(dev)) >= 30, 60, what="30 readings taken")
        watch.lose = lambda seq: False
        want = taken(dev)
        wait_until(lambda: set(watch.confirmed) >= want, 90, what="every reading confirmed")
        wait_until(lambda: not (ring_seqs(dev.folder) & want), 60, what="and freed from flash")
    finally:
        dev.stop()
        watch.close()
    no_crash(dev)
    assert len(lost_once) >= 5
    assert lost_once <= {r["seq"] for r in watch.readings()}  # each lost one came again
    assert "stored: no confirmation for" in dev.log()
    status = [s for s in watch.status if s["state"] == "online"][-1]
    assert status["dropped"] == 0


def test_confirmations_stopped_longer_than_the_ring_lasts_drop_the_oldest_counted(workdir: Path, broker: Mosquitto) -> None:
    dev_id = "cm-fw-stall-01"
    watch = Watch(broker.port, CITY, dev_id, confirm=False)  # the platform stops confirming (ingest away for long)
    cfg = weather(dev_id, broker.port, ring={"segments": 3, "segment_bytes": 512, "chunk": 1})
    dev = Device(workdir / "dev", cfg, world(scale=60))
    try:
        dev.start()
        wait_until(lambda: len(taken(dev)) >= 60, 60, what="60 readings: more than the ring holds")
        watch.confirm = True
        n = max(taken(dev))
        before = {s for s in taken(dev) if s <= n}

        def settled() -> bool:  # what is gone is what status counts as dropped (and it stopped growing)
            st = watch.last_status() or {}
            return st.get("dropped", 0) > 0 and len(before - set(watch.confirmed)) == st["dropped"]

        wait_until(settled, 120, what="every reading confirmed but those status counts as dropped")
        status: dict[str, Any] = watch.last_status()  # type: ignore[assignment]
        missing = sorted(before - set(watch.confirmed))
        newer = {s for s in taken(dev) if s > missing[-1]}
        wait_until(lambda: set(watch.confirmed) >= newer, 60, what="every newer reading confirmed")
    finally:
        dev.stop()
        watch.close()
    no_crash(dev)
    assert status["dropped"] == len(missing) >= 10  # exactly what is gone, counted in status
    assert missing == list(range(missing[0], missing[-1] + 1)) and missing[0] == 0  # one block, the oldest


def test_without_ntp_the_platform_tells_the_time_and_every_reading_is_dated(workdir: Path, broker: Mosquitto) -> None:
    """Issue 14's "no time" scenario with the second source: NTP blocked for a simulated day,
    the first hours without any network (readings wait in flash with the RTC's own count,
    the RTC at 2000), then MQTT up: the platform's `t` sets the clock, what waited is dated
    and published, and every timestamp is within the RTC's drift of the true time."""
    dev_id = "cm-fw-notime-01"
    ppm = 2000  # the RTC runs 0.2 % fast
    scale = 1200
    cfg = weather(dev_id, broker.port, interval_s=300, status_interval_s=3600,
                  mqtt={"host": "127.0.0.1", "port": broker.port, "keepalive_s": 3600})
    w = world(scale=scale, behind_s=30 * 3600, rtc_ppm=ppm)

    def world_s() -> float:  # the fake world's true time, which the platform tells
        return (w["epoch0_ms"] + (time.time_ns() - w["real0_ns"]) * scale / 1e6) / 1000

    watch = Watch(broker.port, CITY, dev_id, tell_time=world_s)
    dev = Device(workdir / "dev", cfg, w)
    dev.control({"ntp_down": True, "wifi_down": True})
    try:
        dev.start()
        dev.wait_log(r"reading seq=\d+ ts=unknown", 60, count=24)  # two hours without any network
        dev.control({"ntp_down": True})  # MQTT back, NTP blocked all day
        dev.wait_log(r"platform: time set", 30)
        dev.wait_log(r"pretime: \d+ readings dated", 30)
        dev.wait_log(r"reading seq=\d+ ts=\d", 120, count=24 + 264)  # the rest of the day, 5-minute readings
        seqs = taken(dev)
        wait_until(lambda: {r["seq"] for r in watch.readings()} >= seqs, 60, what="every reading published")
        readings = {r["seq"]: r["ts"] for r in watch.readings()}
    finally:
        dev.stop()
        watch.close()
    no_crash(dev)
    log = dev.log()
    assert dev.exit_codes == [] and "ntp: time set" not in log
    offset = int(re.findall(r"FAKE clock world-ticks=(-?\d+)", log)[0])  # true time = console ticks + offset
    set_at = int(re.search(r"I (\d+) platform: time set", log).group(1))  # type: ignore[union-attr]
    unknown = {int(s) for s in re.findall(r"reading seq=(\d+) ts=unknown", log)}
    assert len(unknown) >= 24
    when: dict[int, int] = {}  # seq -> console ticks when taken (a reading dated later is logged again then)
    for t, s in TAKEN_RE.findall(log):
        when.setdefault(int(s), int(t))
    for seq in seqs:
        true_ms = when[seq] + offset
        bound = abs(when[seq] - set_at) * ppm / 1e6 + 60_000  # the RTC's drift since the time was set, and a minute of latency at 1200x
        assert abs(readings[seq] * 1000 - true_ms) <= bound, (seq, readings[seq], true_ms / 1000, bound)
    assert max(when.values()) - min(when.values()) >= 86_000_000  # a whole day


def test_the_platforms_time_is_taken_only_once_ntp_does_not_answer(tmp_path: Path) -> None:
    """The platform's `t` is the second source: after one failed NTP attempt (common at
    boot) the node waits for NTP, the finer source; after four (ntp:no_answer) it takes it."""
    (tmp_path / "config.json").write_text(json.dumps(device_config("cm-platime-01", free_port())))
    proc = run_mp(HERE / "mp_platime.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    c = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert c["before"] is False and c["after_one"] is False and c["after_four"] is True
    assert abs(c["rtc_ms"] - c["t"]) < 60_000  # (the fake's RTC runs on at 1000x meanwhile)
