"""`nakhon bench --only alerts`: can the alert evaluator keep up with the fleet, and what does it cost the ingest?

- core: the pure evaluator over 100,000 readings from 10,000 stations in the pilots'
  mix (air, water, weather, traffic), CPU per 100,000 readings and the rate one core
  sustains, against the 1,000 readings/s of 10,000 devices at one reading every 10 s;
- service: `nakhon alerts run` draining queued telemetry through the real broker,
  its state committed before every acknowledgement;
- ingest: its durable rate with the evaluator subscribed beside it, and without.
"""

from __future__ import annotations

import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt

from alerts.core import Evaluator
from alerts.rules import RuleBook
from contract import topics
from contract.payload import Reading, encode_reading
from contract.settings import load_settings
from harness.bench.ingest import Figure, _cpu_seconds, _peak_rss_mb, _say, bench_ingest, publish_bulk
from nakhon.procs import Service
from nakhon.servers import InfluxDB, Mosquitto

FLEET_RATE = 10_000 / 10  # readings/s of 10,000 devices at one reading every 10 s


def _fleet_readings(devices: int, n: int, t0: float) -> list[tuple[str, str, Reading]]:
    out = []
    cities = ("phuket", "khon_kaen", "chiang_mai")
    for i in range(n):
        d = i % devices
        rnd = i // devices
        ts = int((t0 + rnd * 10 + d * 10 / devices) * 1000)
        kind = d % 4
        if kind in (0, 1):  # half air stations
            m: dict[str, float | str] = {"pm25": 20.0 + (d * 7 + rnd) % 60, "pm10": 40.0 + (d * 3 + rnd) % 80, "temp_c": 30.0, "rh": 60.0}
        elif kind == 2:
            m = {"water_level_cm": 100.0 + (d * 13 + rnd * 5) % 200}
        else:
            m = {"rain_mm": float((d + rnd) % 5), "temp_c": 29.0, "rh": 70.0}
        out.append((cities[d % 3], f"st-{d:05d}", Reading(ts, rnd, m)))
    return out


def bench_core(devices: int = 10_000, n: int = 100_000) -> tuple[list[Figure], dict[str, float]]:
    t0 = time.time() - 3600
    readings = _fleet_readings(devices, n, t0)
    now = [t0]
    ev = Evaluator(RuleBook(), lambda: now[0])
    events = 0
    cpu0 = time.process_time()
    for k, (city, device, r) in enumerate(readings):
        now[0] = r.ts_ms / 1000 + 0.5
        events += len(ev.readings(city, device, [r]))
        if k % FLEET_RATE == 0:  # the service ticks once a second: once per second of fleet time
            events += len(ev.tick())
    cpu = time.process_time() - cpu0
    state = sum(len(orjson.dumps(st.to_doc())) for st in ev.stations.values())
    rate = n / cpu
    figs = [
        Figure("alerts core CPU per 100,000 readings", cpu / n * 100_000, "cpu-s", f"{devices:,} stations, {events:,} events, one core"),
        Figure("alerts core rate on one core", rate, "readings/s", f"{rate / FLEET_RATE:.1f}x the {FLEET_RATE:,.0f}/s of 10,000 devices every 10 s"),
        Figure("alerts state per station", state / len(ev.stations), "bytes", "JSON as persisted, 24 h of hourly PM sums included"),
    ]
    return figs, {"alerts_core_rate": rate}


UNBOUNDED = 1_000_000  # the inbox as it was: Mosquitto 2.0 sends a resumed session's whole queue at once


def _drain(root: Path, n: int, inbox_max: int) -> tuple[float, float, float, int]:
    """`nakhon alerts run` draining n readings queued for its session: (seconds, CPU seconds, peak MB, most messages held)."""
    shutil.rmtree(root, ignore_errors=True)
    with Mosquitto(root / "broker") as broker, InfluxDB(root / "influxdb") as server:
        settings = load_settings(mqtt_port=broker.port, influx_url=server.url, data_dir=root / "data", log_level="WARNING",
                                 alerts_inbox_max=inbox_max)
        svc = Service("alerts", ["alerts", "run"], settings, root / "logs", log_level="INFO")
        svc.start()  # first start: the persistent session and its subscription
        if not svc.wait_log('"msg":"connected"', 30):
            raise RuntimeError("the evaluator did not connect")
        svc.stop()
        _say(f"alerts: queueing {n} messages for the evaluator's session (inbox bound {inbox_max:,})")
        publish_bulk(broker.port, n, time.time() - 60, procs=1)  # one connection: each device's readings in order, as a device sends them
        health = settings.data_dir / "alerts" / "health.json"
        health.unlink(missing_ok=True)
        begin = time.perf_counter()
        svc.start()
        doc: dict[str, int] = {}
        while int(doc.get("messages", 0)) < n:
            if time.perf_counter() - begin > 900:
                raise RuntimeError(f"the evaluator judged {doc.get('messages', 0)} of {n} in 900 s")
            time.sleep(0.1)
            try:
                doc = orjson.loads(health.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue
        secs = time.perf_counter() - begin
        cpu = _cpu_seconds(svc)
        mb = _peak_rss_mb(svc)
        svc.stop()
    return secs, cpu, mb, int(doc.get("held_max", 0))


def bench_service(root: Path, n: int) -> tuple[list[Figure], dict[str, float]]:
    """The drain twice in the same run: with the inbox unbounded, as before, and bounded (the default)."""
    bound = load_settings().alerts_inbox_max
    b_secs, b_cpu, b_mb, b_held = _drain(root / "service-unbounded", n, UNBOUNDED)
    secs, cpu, mb, held = _drain(root / "service", n, bound)
    rate, b_rate = n / secs, n / b_secs
    return [
        Figure("alerts service drain rate (broker -> state committed -> ack)", rate, "readings/s",
               f"{n:,} queued readings in {secs:.1f} s from process start (a storm of alerts in their first readings); "
               f"health file every 2 s, so a lower bound; {b_rate:,.0f} with the inbox unbounded"),
        Figure("alerts service CPU per 100,000 readings", cpu / n * 100_000, "cpu-s",
               f"user+sys, MQTT, parsing, SQLite included; {b_cpu / n * 100_000:.1f} with the inbox unbounded"),
        Figure("alerts service peak memory, inbox unbounded (before)", b_mb, "MB", f"VmHWM; held up to {b_held:,} messages un-judged"),
        Figure("alerts service peak memory, inbox bounded (now)", mb, "MB",
               f"VmHWM; held up to {held:,} messages (NAKHON_ALERTS_INBOX_MAX); {mb / b_mb:.2f} of before"),
    ], {"alerts_service_rate": rate, "alerts_service_rate_unbounded": b_rate, "alerts_service_mb": mb, "alerts_service_mb_unbounded": b_mb,
        "alerts_service_held": float(held), "alerts_service_held_unbounded": float(b_held), "alerts_service_inbox_max": float(bound)}


class _Receiver:
    """A webhook receiver on 127.0.0.1 noting when each event arrived (wall clock)."""

    def __init__(self) -> None:
        self.got: dict[int, float] = {}  # the reading's ts_ms -> receipt time
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                now = time.time()
                ev = orjson.loads(body).get("event") or {}
                if ev.get("event") in ("opened", "closed") and ev["rule"] == "water_warning" and ev["device"] == "pk-water-900":
                    outer.got.setdefault(int(ev["at_ms"]), now)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _quiet_fleet(port: int, rate: float, stop: threading.Event, devices: int = 10_000) -> None:
    """The fleet's readings at `rate`, every station well inside its limits (the crossings to time are the probe's)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench_fleet")
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    names = [topics.topic(("phuket", "khon_kaen", "chiang_mai")[d % 3], f"fleet-{d:05d}", "telemetry") for d in range(devices)]
    begin = time.monotonic()
    k = 0
    while not stop.is_set():
        d = k % devices
        m = {"pm25": 12.0, "pm10": 20.0} if d % 2 else {"water_level_cm": 60.0}
        c.publish(names[d], encode_reading(time.time(), k, m), qos=1)
        k += 1
        if (ahead := k / rate - (time.monotonic() - begin)) > 0:
            time.sleep(ahead)
    c.loop_stop()
    c.disconnect()


def bench_latency(root: Path, rate: float = FLEET_RATE, seconds: float = 30.0) -> tuple[list[Figure], dict[str, float]]:
    """Publish of a reading that crosses a water line -> the webhook's receipt, while the fleet's rate flows beside it."""
    root = root / "latency"
    shutil.rmtree(root, ignore_errors=True)
    rx = _Receiver()
    with Mosquitto(root / "broker") as broker, InfluxDB(root / "influxdb") as server:
        settings = load_settings(mqtt_port=broker.port, influx_url=server.url, data_dir=root / "data", log_level="WARNING",
                                 alerts_webhook_urls=rx.url, alerts_webhook_secret="bench")
        svc = Service("alerts", ["alerts", "run"], settings, root / "logs", log_level="INFO")
        svc.start()
        if not svc.wait_log('"msg":"connected"', 30):
            raise RuntimeError("the evaluator did not connect")
        stop = threading.Event()
        load = threading.Thread(target=_quiet_fleet, args=(broker.port, rate, stop))
        load.start()
        probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-probe")
        probe.connect("127.0.0.1", broker.port)
        probe.loop_start()
        sent: dict[int, float] = {}
        k = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            k += 1
            ts = round(time.time(), 3)  # the contract keeps milliseconds
            level = 200.0 if k % 2 else 100.0  # each 200 opens the warning, each 100 closes it
            probe.publish(topics.topic("phuket", "pk-water-900", "telemetry"), encode_reading(ts, k, {"water_level_cm": level}), qos=1)
            sent[round(ts * 1000)] = ts
            time.sleep(0.5)
        stop.set()
        load.join()
        deadline = time.monotonic() + 60
        while len(rx.got) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.2)
        probe.loop_stop()
        probe.disconnect()
        svc.stop()
    rx.close()
    lat = sorted((rx.got[t] - s) * 1000 for t, s in sent.items() if t in rx.got)
    if not lat:
        raise RuntimeError("no probe event reached the webhook")
    p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return [
        Figure("alerts publish -> webhook latency p50", p50, "ms", f"{len(lat)} of {len(sent)} line crossings, {rate:,.0f} readings/s beside them"),
        Figure("alerts publish -> webhook latency p99", p99, "ms", "target < 10,000 ms"),
    ], {"alerts_latency_p99_ms": p99, "alerts_latency_missing": float(len(sent) - len(lat))}


def bench_ingest_side_by_side(root: Path, n: int) -> tuple[list[Figure], dict[str, float]]:
    _say(f"alerts: ingest alone, {n} queued readings")
    off = bench_ingest(root / "off", n, 1)
    _say(f"alerts: ingest with the evaluator subscribed beside it, {n} queued readings")
    on = bench_ingest(root / "on", n, 1, with_alerts=True)
    return [
        Figure("ingest durable rate, alerts off", off[3], "readings/s", "1 worker"),
        Figure("ingest durable rate, alerts on", on[3], "readings/s", f"1 worker; {on[3] / off[3]:.2f} of the rate without"),
    ], {"ingest_alerts_off": off[3], "ingest_alerts_on": on[3]}


def measure(root: Path, n: int) -> tuple[list[Figure], dict[str, float]]:
    _say("alerts: the pure core, 100,000 readings from 10,000 stations")
    figs, values = bench_core()
    _say(f"alerts: the service through the broker, {n} queued readings")
    f2, v2 = bench_service(root, n)
    _say("alerts: publish-to-webhook latency of water-line crossings at the fleet's rate")
    f4, v4 = bench_latency(root)
    f3, v3 = bench_ingest_side_by_side(root, n)
    return figs + f2 + f4 + f3, {**values, **v2, **v4, **v3}
