"""Scenarios 5 and 6: devices that go away and come back.

5. Real firmware devices (firmware/ on the MicroPython unix port, accelerated fake
   clock) lose Wi-Fi for an hour of their time, then get it back: every reading
   they took must be in InfluxDB once, at the timestamp the device gave it.
6. A reconnect storm: every device of a simulated fleet drops at once and comes
   back with the firmware's backoff and jitter; the broker must drop nothing and
   InfluxDB must hold every reading the broker accepted.

Each starts a fresh platform (Mosquitto, InfluxDB, ingest, API) under `root`.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from contract.cities import BUILTIN_CITIES
from contract.influx import Influx
from contract.settings import load_settings
from contract.storage import DATA_MEASUREMENTS, INGEST_MEASUREMENT
from harness.bench.sim import _raise_nofile
from harness.progress import say as say_line
from harness.verify.report import Row, Size
from harness.verify.scenarios import register
from nakhon.firmware_tools import FIRMWARE, MICROPYTHON, fakes_mpy, firmware_mpy
from nakhon.local import LocalPlatform
from simulators.devices import make_fleet
from simulators.faults import Fault
from simulators.fil import FirmwareFleet, FirmwarePaths, console_dropped
from simulators.fleet import run_fleet
from simulators.run import firmware_fleet, run_config
from simulators.scenario import Scenario

DROPPED = "$SYS/broker/publish/messages/dropped"
CLIENTS = "$SYS/broker/clients/connected"
UPTIME = "$SYS/broker/uptime"
UNDATED_RE = re.compile(r"reading seq=(\d+) ts=unknown")


def _say(msg: str) -> None:
    say_line(msg, indent=2)


@contextlib.contextmanager
def _platform(root: Path) -> Iterator[LocalPlatform]:
    """A fresh broker, InfluxDB, ingest and API under `root`, stopped on the way out."""
    platform = LocalPlatform(root, load_settings(ingest_stats_interval_s=1.0), with_fleet=False, secure=False)
    try:
        platform.start()
        yield platform
    finally:
        platform.stop()


def _stored_points(db: Influx, device: str) -> dict[int, list[tuple[str, int]]]:
    """seq -> (measurement, time ms) of every data point a device has in raw."""
    names = "|".join(DATA_MEASUREMENTS)
    out: dict[int, list[tuple[str, int]]] = {}
    for s in db.series(f'SELECT "seq" FROM "raw"./^({names})$/ WHERE "device" = $d', {"d": device}):
        for t, seq in s.get("values", []):
            out.setdefault(int(seq), []).append((s["name"], int(t)))
    return out


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# --- 5 -----------------------------------------------------------------------------------------
@register(5, "Firmware devices offline for an hour, then back: every reading stored with its original timestamp")
def devices_offline(root: Path, size: Size) -> Row:
    full = size == "full"
    n_devices = 5 if full else 2
    scale = 60  # device seconds per real second (the fakes' clock)
    interval_s = 30  # one reading every half real second per device
    before_s, offline_s, after_s = (600, 3600, 600) if full else (240, 600, 180)  # device seconds
    row = Row(5, "firmware offline for an hour, then back" if full else "firmware offline 10 min, then back")
    # The world's clock starts in the past so the accelerated devices never stamp the platform's future.
    behind_s = 4 * 3600 if full else 2 * 3600

    with _platform(root) as platform:
        settings = platform.settings
        db = Influx(settings.influx_url)
        # The same path as `nakhon simulate --firmware N --speed 60 --fault offline:...`.
        sc = Scenario(seed=5, mode="accelerated", speed=scale, since=behind_s, interval_s=interval_s, firmware=n_devices,
                      faults=[Fault("offline", at_s=before_s, for_s=offline_s, devices=0)])
        paths = FirmwarePaths(FIRMWARE, fakes_mpy(), MICROPYTHON, firmware_mpy())
        fw: FirmwareFleet = firmware_fleet(sc, list(BUILTIN_CITIES), run_config(sc, settings), paths, root / "firmware")
        _say(f"{n_devices} firmware devices at {scale}x: {before_s // 60} min online, {offline_s // 60} min without Wi-Fi, "
             f"{after_s // 60} min back (about {(before_s + offline_s + after_s) / scale:.0f} s real)")
        fw.start()
        try:
            t0 = fw._t0  # the fleet's fault timer (device seconds since then, times the scale)

            def world_at(mono: float) -> float:  # the devices' clock at a monotonic instant
                return fw.devices[0].world_time() + (mono - time.monotonic()) * scale

            down_real, back_real = t0 + before_s / scale, t0 + (before_s + offline_s) / scale
            down_world, back_world = world_at(down_real), world_at(back_real)
            while time.monotonic() < back_real:
                time.sleep(min(5.0, max(0.0, back_real - time.monotonic())))
                so_far = sum(len(d.readings()) for d in fw.devices)
                _say(f"device time +{(time.monotonic() - t0) * scale / 60:.0f} min: {so_far} readings taken"
                     + (" (Wi-Fi down)" if down_real <= time.monotonic() < back_real else ""))
            # the fleet's loop lifts the fault at its next feed tick: the moment it rewrites control.json
            control = fw.devices[0].folder / "control.json"
            while "wifi_down" in control.read_text() and time.monotonic() < back_real + 10:
                time.sleep(0.02)
            back_wall = control.stat().st_mtime
            backlog = {d.dev.device_id: set(d.readings()) for d in fw.devices}
            _say(f"Wi-Fi back; waiting for the {sum(map(len, backlog.values()))} readings taken so far to reach InfluxDB")

            def backlog_left() -> int:
                return sum(len(seqs - set(_stored_points(db, dev))) for dev, seqs in backlog.items())

            drain_s: float | None = None
            while time.time() - back_wall < 120:
                if backlog_left() == 0:
                    drain_s = time.time() - back_wall
                    break
                time.sleep(0.05)
            _say(f"backlog drained in {drain_s:.1f} s" if drain_s is not None else f"backlog not drained after 120 s: {backlog_left()} missing")
            # a while back online, then the cut: what the devices have taken by now must all arrive
            time.sleep(max(0.0, t0 + (before_s + offline_s + after_s) / scale - time.monotonic()))
            taken = {d.dev.device_id: d.readings() for d in fw.devices}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(set(t) - set(_stored_points(db, dev)) for dev, t in taken.items()):
                time.sleep(0.5)
        finally:
            fw.stop()
        summary = fw.summary()
        logs = {d.dev.device_id: d.log_text() for d in fw.devices}

        generated = stored = lost = mismatched = dup = offline_taken = ring_dropped = gaps = 0
        for dev, readings in taken.items():
            points = _stored_points(db, dev)
            seqs = sorted(readings)
            # the device's own numbering has no hole: nothing was taken and then forgotten before dating
            gaps += (seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else 0
            undated = {int(s) for s in UNDATED_RE.findall(logs[dev])} - set(readings)
            lost += len({s for s in undated if s <= (seqs[-1] if seqs else -1)})
            ring_dropped += console_dropped(logs[dev])
            for seq, ts in readings.items():
                generated += 1
                offline_taken += down_world <= ts < back_world
                got = points.get(seq, [])
                if not got:
                    lost += 1
                    continue
                stored += 1
                if any(t != round(ts * 1000) for _, t in got):
                    mismatched += 1
                meas = [m for m, _ in got]
                if len(meas) != len(set(meas)):
                    dup += 1
        db.close()

    row.sent, row.stored, row.lost, row.duplicated, row.recovery_s = generated, stored, lost, dup, drain_s
    row.accepted_bad = mismatched
    row.figures = {
        "devices": n_devices,
        "offline": f"{offline_s // 60} device-min at {scale}x",
        "taken offline": offline_taken,
        "ts mismatches": mismatched,
        "ring dropped": ring_dropped,
        "resets": summary["resets"],
        "crashes": summary["crashes"],
    }
    row.ok = (generated > 0 and lost == 0 and mismatched == 0 and dup == 0 and gaps == 0 and ring_dropped == 0
              and summary["crashes"] == 0 and drain_s is not None and offline_taken >= n_devices * (offline_s // interval_s) * 0.9)
    row.note = (f"{n_devices} devices running firmware/ on the MicroPython unix port (ESP32 heap), fake clock at {scale}x, one reading "
                f"every {interval_s} s; Wi-Fi down for {offline_s // 60} device-minutes via the hardware fakes. Readings and timestamps "
                f"from the devices' consoles, checked against every data measurement in InfluxDB (a mismatch counts as bad accepted). "
                f"Recovery = real seconds from Wi-Fi back to the whole backlog stored (the firmware's own waits run {scale}x faster).")
    return row


# --- 6 -----------------------------------------------------------------------------------------
class _BrokerWatch:
    """A plain MQTT client that notes every device status and the broker's $SYS counters, with arrival times."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.status: list[tuple[float, str, bytes]] = []  # (monotonic, device, payload)
        self.sys: dict[str, list[tuple[float, str]]] = {}  # $SYS topic -> (monotonic, payload)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="verify-watch", protocol=mqtt.MQTTv311)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe([("nakhon/v1/+/+/status", 0), (DROPPED, 0), (CLIENTS, 0), (UPTIME, 0)])
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        with self.lock:
            if msg.topic.startswith("$SYS/"):
                self.sys.setdefault(msg.topic, []).append((now, msg.payload.decode(errors="replace")))
            else:
                self.status.append((now, msg.topic.split("/")[3], bytes(msg.payload)))

    def sys_at(self, topic: str, when: float) -> int | None:
        """The broker's last published value of a $SYS counter at a monotonic time (None: never published)."""
        with self.lock:
            values = [v for t, v in self.sys.get(topic, []) if t <= when]
        return int(values[-1]) if values else None

    def wait_sys_tick(self, after: float, timeout: float = 12.0) -> None:
        """Until the broker's next $SYS round (every 5 s) after `after`: counters published by then are current."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if any(t > after for t, _ in self.sys.get(UPTIME, [])):
                    return
            time.sleep(0.1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _ingest_stats(db: Influx) -> dict[str, int]:
    """The ingest's latest self-metrics, summed over workers."""
    out: dict[str, int] = {}
    for r in db.rows(f'SELECT * FROM "raw"."{INGEST_MEASUREMENT}" GROUP BY "worker" ORDER BY time DESC LIMIT 1'):
        for k in ("received", "readings_accepted", "readings_rejected", "broker_dropped", "influx_errors", "points_spooled"):
            out[k] = out.get(k, 0) + int(r.get(k) or 0)
    return out


@register(6, "Reconnect storm: every device drops at once and comes back; nothing dropped or lost")
def reconnect_storm(root: Path, size: Size) -> Row:
    full = size == "full"
    n = 2000 if full else 200
    # real seconds (real-time fleet); the quick run leaves 16 s after the storm: a loaded machine slows the way back
    interval_s, storm_at_s, duration_s = (10.0, 20.0, 50.0) if full else (2.0, 4.0, 20.0)
    row = Row(6, f"reconnect storm of {n:,} devices")
    _raise_nofile(n + 4096)  # before the broker starts: it inherits the limit

    with _platform(root) as platform:
        settings = platform.settings
        db = Influx(settings.influx_url)
        watch = _BrokerWatch(platform.broker.port)
        devices = make_fleet(list(BUILTIN_CITIES), -(-n // len(BUILTIN_CITIES)), seed=6, prefix="storm")[:n]
        # counted by the broker's acknowledgements (free at PUBACK): with store-and-forward on, a reading acked and
        # stored but not yet confirmed when the run ends is still on its device and would count twice; scenario 18
        # is store-and-forward through faults
        sc = Scenario(seed=6, interval_s=interval_s, duration=duration_s, faults=[Fault("storm", at_s=storm_at_s, devices=0)], confirm=False)
        cfg = run_config(sc, settings)  # the firmware's backoff: full jitter from 1 s, cap 300 s
        _say(f"{n:,} devices, a reading every {interval_s:g} s each, all dropped at {storm_at_s:g} s, run {duration_s:g} s")
        last = [0.0]

        def progress(snap: dict[str, Any]) -> None:
            if time.monotonic() - last[0] >= 5:
                last[0] = time.monotonic()
                _say(f"connected {snap['connected']:,}/{n:,}, readings sent {snap['readings_sent']:,}, acked {snap['readings_acked']:,}, "
                     f"buffered {snap['buffered']:,}")

        started = time.monotonic()
        snap = run_fleet(devices, cfg, sc.faults, procs=1, tick=progress, tick_s=1.0, shutdown_s=60)
        fleet_end = time.monotonic()
        _say(f"fleet done: {snap['connects']:,} connects, {snap['readings_acked']:,} readings acknowledged; waiting for InfluxDB")

        # every reading the broker acknowledged is in InfluxDB (one point per reading in "device", by seq)
        def stored_count() -> int:
            rows = db.rows('SELECT count("seq") FROM "raw"."device" WHERE "device" =~ /^storm-/')
            return int(rows[0]["count"]) if rows else 0

        deadline = time.monotonic() + 60
        while stored_count() < snap["readings_acked"] and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1.5)  # a moment more to see any excess
        stored = stored_count()
        watch.wait_sys_tick(fleet_end)
        # Mosquitto publishes a $SYS counter only when it changes: a drop counter never published has stayed 0
        dropped = watch.sys_at(DROPPED, time.monotonic()) or 0
        stats = _ingest_stats(db)
        watch.close()
        db.close()

    # reconnect times, as the broker saw them: the first Last Will marks the storm, then each device's next "online"
    offline = [t for t, _, p in watch.status if b'"offline"' in p and t < fleet_end - 0.5]
    storm_t = min(offline) if offline else float("nan")
    back: dict[str, float] = {}
    for t, dev, p in watch.status:
        if t > storm_t and b'"online"' in p and dev not in back:
            back[dev] = t - storm_t
    times = sorted(back.values())
    # clients once every device was back, before the fleet's goodbye: the most the broker counted between the last
    # device's return and the end of the run (taken at the run's end instead, a $SYS round during the fleet's
    # shutdown, which a loaded machine makes seconds long, counted devices already gone)
    all_back = storm_t + times[-1] if times else fleet_end
    ticks = watch.sys.get(CLIENTS, [])  # published when it changes: a value stands until the next
    standing = [int(v) for t, v in ticks if t <= all_back][-1:]
    clients_end = max(standing + [int(v) for t, v in ticks if all_back < t <= fleet_end], default=0)

    row.unit = "readings"
    row.sent, row.stored = snap["readings_acked"] + snap["unsent"], stored  # accepted by the broker, or still on a device at the end
    row.lost = max(0, snap["readings_acked"] - stored) + snap["unsent"]
    row.duplicated = max(0, stored - snap["readings_acked"])
    row.rejected = stats.get("readings_rejected", 0)
    row.recovery_s = times[-1] if times else None
    row.figures = {
        "devices": n,
        "reconnected": len(back),
        "reconnect p50 s": round(_pct(times, 50), 2),
        "reconnect p99 s": round(_pct(times, 99), 2),
        "reconnect max s": round(times[-1], 2) if times else "never",
        "broker dropped": dropped,
        "broker clients after": clients_end,
        "ingest broker_dropped": stats.get("broker_dropped", "-"),
        "connect failures": snap["connect_failures"],
        "buffered in storm": snap["buffered_total"],
        "readings sent / acked": f"{snap['readings_sent']}/{snap['readings_acked']}",
        "storm faults / pending": f"{snap['faults'].get('storm', 0)}/{snap['storm_pending']}",
    }
    row.ok = (len(back) == n and dropped == 0 and stats.get("broker_dropped", -1) == 0 and clients_end >= n
              and row.lost == 0 and row.duplicated == 0 and row.rejected == 0 and snap["readings_sent"] == snap["readings_acked"]
              and snap["faults"].get("storm") == n and snap["storm_pending"] == 0)
    row.note = (f"{n:,} simulated devices (own MQTT connection each, Last Will, QoS 1) on the real platform, run {time.monotonic() - started:.0f} s; "
                f"the storm fault drops every connection without DISCONNECT, devices come back with full jitter over an exponentially "
                f"growing window (base 1 s). Reconnect times from the broker's side: first Last Will to each device's next retained "
                f"'online'. Broker drops from $SYS/broker/publish/messages/dropped; clients from $SYS/broker/clients/connected "
                f"(includes the ingest and the watcher); stored = points in raw.device. Recovery = the last device back.")
    return row
