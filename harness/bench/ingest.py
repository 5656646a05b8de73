"""The measurements of `nakhon bench` for the broker, InfluxDB and the ingest.

Each starts its own servers on this machine:
  1. broker limit: Mosquitto draining a queue of N QoS 1 messages to one
     minimal subscriber (mosquitto_sub, C), contract-shaped payloads;
  2. database limit: InfluxDB taking line protocol in 5,000-point batches;
  3. ingest: N messages queued for its persistent session, then the time for
     the ingest (delivery guarantee on) to make them all durable, verified by
     a count in InfluxDB;
  4. latency: publish-to-queryable p50/p99 at half the ingest's rate.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt

from contract import topics
from contract.influx import Influx
from contract.payload import encode_reading
from contract.settings import load_settings
from harness.procstat import cpu_seconds, group_pids, memory_kb
from harness.progress import say as say_line
from nakhon.procs import Service
from nakhon.servers import InfluxDB, Mosquitto

CITIES = ("phuket", "khon_kaen", "chiang_mai")


def _say(msg: str) -> None:
    say_line(msg, who="bench")


DEVICE_SERIES = 3000  # (city, device) pairs of `_payload`


def _payload(i: int, t0: float) -> tuple[str, bytes]:
    city = CITIES[i % 3]
    dev = f"bench-{i % 1000:04d}"
    ts = round(t0 + i * 0.001, 3)
    m = {"pm25": 10 + i % 90 + 0.5, "pm10": 20.0 + i % 50, "temp_c": 30.1, "rh": 61.5}
    return topics.topic(city, dev, "telemetry"), encode_reading(ts, i // DEVICE_SERIES, m)  # each (city, device) counts its seq up, as devices do


def _publisher(port: int, start: int, stop: int, t0: float, rate: float | None, sent_at: object | None, step: int = 1) -> None:
    """One publishing process: messages range(start, stop, step) at QoS 1, optionally paced."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{start}")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = []
    begin = time.monotonic()
    for k, i in enumerate(range(start, stop, step)):
        name, body = _payload(i, t0)
        infos.append(c.publish(name, body, qos=1))
        if rate and (ahead := k / rate - (time.monotonic() - begin)) > 0:
            time.sleep(ahead)
        if len(infos) >= 5000:
            for info in infos:
                info.wait_for_publish(60)
            infos.clear()
    for info in infos:
        info.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()


def publish_bulk(port: int, n: int, t0: float, procs: int = 2, rate: float | None = None) -> float:
    """Publish n messages from `procs` processes; returns seconds taken.

    Process k sends messages k, k + procs, k + 2 procs...: with `procs` dividing the 3,000 device series of
    `_payload`, each device's readings come from one connection in seq order, as a device sends them (split
    into halves of the stream, each device's seqs would arrive from two places interleaved, which no device does)."""
    if DEVICE_SERIES % procs:
        raise ValueError(f"procs must divide {DEVICE_SERIES}")
    ctx = mp.get_context("fork")
    ps = [ctx.Process(target=_publisher, args=(port, k, n, t0, rate / procs if rate else None, None, procs)) for k in range(procs)]
    t = time.perf_counter()
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    return time.perf_counter() - t


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    note: str = ""


def bench_broker(root: Path, n: int) -> Figure:
    """Mosquitto's delivery rate from a queued session to one C subscriber at QoS 1."""
    with Mosquitto(root / "broker-limit") as broker:
        sub = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-c", "-i", "bench-sub", "-t", "nakhon/v1/+/+/telemetry"]
        subprocess.run([*sub, "-W", "1"], capture_output=True)  # create the persistent session and subscription
        publish_bulk(broker.port, n, time.time() - 3600)
        t = time.perf_counter()
        proc = subprocess.run([*sub, "-C", str(n)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
        secs = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"mosquitto_sub failed: {proc.stderr.decode()[-500:]}")
    return Figure("broker -> 1 subscriber (mosquitto_sub, QoS 1)", n / secs, "msg/s", f"{n} queued messages in {secs:.2f}s")


def bench_influx(root: Path, points: int, batch: int = 5000) -> Figure:
    """InfluxDB's own write rate: line protocol in large batches, one client."""
    with InfluxDB(root / "influx-limit") as server, Influx(server.url) as db:
        db.ensure_schema()
        t0 = int((time.time() - 86400) * 1000)
        bodies = []
        for start in range(0, points, batch):
            lines = [
                f"air,city={CITIES[i % 3]},device=bench-{i % 1000:04d} pm25={10 + i % 90 + 0.5},pm10={20.0 + i % 50},seq={i}i {t0 + i}"
                for i in range(start, min(points, start + batch))
            ]
            bodies.append("\n".join(lines).encode())
        t = time.perf_counter()
        for body in bodies:
            db.write(body)
        secs = time.perf_counter() - t
        stored = int(db.rows('SELECT count(pm25) FROM "raw"."air"')[0]["count"])
    if stored != points:
        raise RuntimeError(f"influx limit run stored {stored} of {points}")
    return Figure(f"InfluxDB direct write ({batch}-point batches)", points / secs, "points/s", f"{points} points in {secs:.2f}s")


def _count(db: Influx) -> int:
    rows = db.rows('SELECT count(pm25) FROM "raw"."air"')
    return int(rows[0]["count"]) if rows else 0


def bench_ingest(root: Path, n: int, workers: int, with_alerts: bool = False, confirm: bool = True, catch: bool = True,
                 extra: dict[str, float] | None = None) -> tuple[Figure, Figure, Figure, float]:
    """The ingest draining n queued messages durably; returns (rate, cpu, memory) figures and readings/s.

    `with_alerts`: the alert evaluator drains the same messages on its own session at the same time.
    `confirm`: the ingest's `stored` confirmations on or off; `extra` gets its final counters (confirm_messages...).
    `catch`: with several workers, worker 0's catch session (ingest/catch.py) is on, as by default."""
    root = root / f"ingest-{workers}w{'' if catch else '-nocatch'}{'' if confirm else '-noconfirm'}"
    shutil.rmtree(root, ignore_errors=True)
    with Mosquitto(root / "broker") as broker, InfluxDB(root / "influxdb") as server, Influx(server.url) as db:
        db.ensure_schema()
        # stats every 0.2 s: the run is timed from the ingest's own count of acked (durable)
        # messages, so the benchmark does not load InfluxDB with counts while it is measured
        settings = load_settings(mqtt_port=broker.port, influx_url=server.url, data_dir=root / "data", ingest_workers=workers,
                                 log_level="WARNING", ingest_stats_interval_s=0.2, ingest_confirm=confirm, ingest_share_catch=catch)
        svc = Service("ingest", ["ingest"], settings, root / "logs", log_level="INFO")
        alerts = Service("alerts", ["alerts", "run"], settings, root / "logs", log_level="INFO") if with_alerts else None
        svc.start()  # first start: creates the persistent sessions and shared subscription
        if not svc.wait_log('"msg":"connected"', 30):
            raise RuntimeError("ingest did not connect")
        # as in production the catch session has run before the backlog: it exists, and has stood down once
        if workers > 1 and catch and not svc.wait_log('"msg":"catch session stands down', 60):
            raise RuntimeError("the catch session did not stand down")
        if alerts is not None:
            alerts.start()
            if not alerts.wait_log('"msg":"connected"', 30):
                raise RuntimeError("the alert evaluator did not connect")
            alerts.stop()
        time.sleep(1.0)
        svc.stop()
        _say(f"queueing {n} messages for the ingest's session")
        publish_bulk(broker.port, n, time.time() - 3600)
        offset = svc.log_path.stat().st_size
        if alerts is not None:
            alerts.start()
        svc.start()
        begin = time.perf_counter()
        last_log = begin
        cpu_first: tuple[float, int] | None = None  # (ingest CPU, acked) when the first acks showed: start-up is not draining
        while not (rows := _acked(svc.log_path, offset)) or rows[-1][1] < n:
            if cpu_first is None and rows and rows[-1][1] > 0:
                cpu_first = (_cpu_seconds(svc), rows[-1][1])
            now = time.perf_counter()
            if now - begin > 600:
                raise RuntimeError(f"ingest acked only {rows[-1][1] if rows else 0} of {n} in 600s")
            if now - last_log > 5:
                last_log = now
                _say(f"  {rows[-1][1] if rows else 0}/{n} acked")
            time.sleep(0.2)
        end = time.perf_counter()
        # the sustained rate counts from the first stats line with anything acked: start-up is not throughput
        t0, c0 = next((t, a) for t, a in rows if a > 0)
        t_end = next(t for t, a in rows if a >= n)
        secs = t_end - t0
        cpu = _cpu_seconds(svc)
        if extra is not None and cpu_first is not None and n > cpu_first[1]:
            extra["drain_cpu_per_100k"] = (cpu - cpu_first[0]) / (n - cpu_first[1]) * 100_000
        peak_mb = _peak_rss_mb(svc)
        svc.stop()
        if extra is not None:
            extra.update(_last_stats(svc.log_path, offset))
        if alerts is not None:
            alerts.stop()
        time.sleep(0.5)
        final = _count(db)
        if final != n:
            raise RuntimeError(f"ingest stored {final} readings, sent {n}")
    rate = (n - c0) / secs
    note = (f"{n - c0} readings = {2 * (n - c0)} points acked in {secs:.2f}s after the first batch; {end - begin:.2f}s from process start;"
            f" {final} stored by a count afterwards")
    return (
        Figure(f"ingest, {workers} worker(s){'' if catch or workers == 1 else ', catch session off'}, durable (acks after write)", rate, "readings/s", note),
        Figure(f"ingest CPU per 100,000 readings ({workers} worker(s))", cpu / n * 100_000, "cpu-s", "user+sys of the ingest processes"),
        Figure(f"ingest peak memory ({workers} worker(s))", peak_mb, "MB", "sum of VmHWM over the ingest processes"),
        rate,
    )


def _last_stats(log: Path, offset: int) -> dict[str, float]:
    """The ingest's counters, summed over its workers, from the last stats line each logged since `offset`."""
    latest: dict[str, dict[str, float]] = {}
    with open(log, "rb") as fh:
        fh.seek(offset)
        for line in fh:
            if b'"msg":"stats"' in line:
                d = orjson.loads(line)
                latest[d["worker"]] = {k: v for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    out: dict[str, float] = {}
    for counters in latest.values():
        for k, v in counters.items():
            out[k] = out.get(k, 0) + v
    return out


def bench_confirm(root: Path, n: int, rounds: int = 3) -> tuple[list[Figure], dict[str, float]]:
    """The ingest's durable rate with its `stored` confirmations on and off, alternated in one run (1 worker).

    On a shared machine one run can be twice as slow as the next, so beside the rates (best of `rounds` runs
    each, in alternating order) the ingest's own CPU per reading while draining (from its first acks, start-up
    left out) is compared (median): the ingest is CPU-bound when draining, so its CPU per reading is what
    bounds its rate, and other processes change it little."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    msgs = 0.0
    for k in range(rounds):
        for on in (False, True) if k % 2 == 0 else (True, False):
            _say(f"confirm: ingest with confirmations {'on' if on else 'off'}, {n} queued readings (round {k + 1}/{rounds})")
            extra: dict[str, float] = {}
            got = bench_ingest(root / "confirm", n, 1, confirm=on, extra=extra)
            rates[on].append(got[3])
            cpu[on].append(extra.get("drain_cpu_per_100k", got[1].value))
            if on:
                msgs = extra.get("confirm_messages", 0.0)
    best_on, best_off = max(rates[True]), max(rates[False])
    cpu_on, cpu_off = statistics.median(cpu[True]), statistics.median(cpu[False])
    per_reading = msgs / n
    figs = [
        Figure("ingest durable rate, confirmations on (best)", best_on, "readings/s",
               f"median {statistics.median(rates[True]):,.0f}; runs " + ", ".join(f"{r:,.0f}" for r in rates[True])),
        Figure("ingest durable rate, confirmations off (best)", best_off, "readings/s",
               f"median {statistics.median(rates[False]):,.0f}; runs " + ", ".join(f"{r:,.0f}" for r in rates[False])),
        Figure("ingest CPU per 100,000 readings drained, confirmations on (median)", cpu_on, "cpu-s", ", ".join(f"{c:.2f}" for c in cpu[True])),
        Figure("ingest CPU per 100,000 readings drained, confirmations off (median)", cpu_off, "cpu-s", ", ".join(f"{c:.2f}" for c in cpu[False])),
        Figure("stored messages per reading (backlog drain)", per_reading, "msg/reading",
               f"{msgs:,.0f} confirmations for {n:,} readings of 3,000 device series (1,000 devices in each of 3 cities); "
               f"broker messages per reading {2 + 2 * per_reading:.2f} "
               "(telemetry in and out, stored in and out) against 2 without"),
    ]
    return figs, {"confirm_on": best_on, "confirm_off": best_off, "confirm_cpu_on": cpu_on, "confirm_cpu_off": cpu_off,
                  "confirm_per_reading": per_reading}


def _acked(log: Path, offset: int) -> list[tuple[float, int]]:
    """(time, messages acked by all workers so far) at each stats line the ingest logged since `offset`."""
    latest: dict[str, int] = {}
    out = []
    with open(log, "rb") as fh:
        fh.seek(offset)
        for line in fh:
            if b'"msg":"stats"' not in line:
                continue
            d = orjson.loads(line)
            latest[d["worker"]] = d["acked"]
            out.append((datetime.fromisoformat(d["ts"].replace("Z", "+00:00")).timestamp(), sum(latest.values())))
    return out


def _pids(svc: Service) -> list[int]:
    if svc.proc is None:
        return []
    return sorted({svc.proc.pid, *group_pids(svc.proc.pid)})


def _peak_rss_mb(svc: Service) -> float:
    """Sum of the peak resident set (VmHWM) of a service's processes."""
    return sum(memory_kb(pid).get("VmHWM", 0) for pid in _pids(svc)) / 1024


def _cpu_seconds(svc: Service) -> float:
    """user+sys CPU of a service's process tree (from /proc)."""
    return sum(cpu_seconds(pid) for pid in _pids(svc))


def bench_latency(root: Path, rate: float, seconds: float, workers: int) -> tuple[Figure, float]:
    """Publish-to-queryable latency at `rate` readings/s, from probe readings polled in InfluxDB."""
    root = root / "latency"
    shutil.rmtree(root, ignore_errors=True)
    with Mosquitto(root / "broker") as broker, InfluxDB(root / "influxdb") as server, Influx(server.url) as db:
        db.ensure_schema()
        settings = load_settings(mqtt_port=broker.port, influx_url=server.url, data_dir=root / "data", ingest_workers=workers, log_level="WARNING")
        svc = Service("ingest", ["ingest"], settings, root / "logs", log_level="INFO")
        svc.start()
        if not svc.wait_log('"msg":"connected"', 30):
            raise RuntimeError("ingest did not connect")
        time.sleep(1.0)
        n = int(rate * seconds)
        load = threading.Thread(target=publish_bulk, args=(broker.port, n, time.time() - 3600), kwargs={"procs": 2, "rate": rate * 0.98})
        load.start()
        # probe: one reading every 50 ms, stamped with its send time, polled until queryable
        probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-probe")
        probe.connect("127.0.0.1", broker.port)
        probe.loop_start()
        sent: dict[int, float] = {}
        seen: dict[int, float] = {}
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set() or len(seen) < len(sent):
                for r in db.rows("SELECT seq FROM \"raw\".\"air\" WHERE device = 'probe-0001' AND time > now() - 1h"):
                    seen.setdefault(int(r["seq"]), time.time())
                if stop.is_set() and time.time() - stopped_at[0] > 30:
                    return
                time.sleep(0.02)

        stopped_at = [0.0]
        poller = threading.Thread(target=poll)
        poller.start()
        seq = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            seq += 1
            now = time.time()
            sent[seq] = now
            probe.publish(topics.topic("phuket", "probe-0001", "telemetry"), encode_reading(round(now, 3), seq, {"pm25": 1.0}), qos=1)
            time.sleep(0.05)
        load.join()
        stopped_at[0] = time.time()
        stop.set()
        poller.join()
        probe.disconnect()
        probe.loop_stop()
        svc.stop()
    lat = sorted(seen[s] - sent[s] for s in sent if s in seen)
    if len(lat) < len(sent):
        raise RuntimeError(f"latency probe: {len(sent) - len(lat)} of {len(sent)} probes never became queryable")
    p50 = statistics.median(lat)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    fig = Figure(f"publish-to-queryable at {rate:,.0f} readings/s", p50 * 1000, "ms p50", f"p99 {p99 * 1000:.0f} ms over {len(lat)} probes")
    return fig, p99 * 1000
