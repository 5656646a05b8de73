"""`nakhon api-bench`: API latency next to InfluxDB's, in the same run.

Loads a city of N devices with D days of minute data (air: pm25, pm10) into a
fresh InfluxDB, lets the ingest's own roll-up code build `latest`, `hourly`
and the AQI, registers the devices, starts the API under uvicorn, then
times with keep-alive HTTP clients:
- latest per city through the API, the same InfluxQL sent straight to
  InfluxDB, and InfluxDB's own newest-point-per-device query over raw (what
  the API would have to run without the `latest` values);
- a 7-day hourly history of one device through the API, and the same
  InfluxQL sent straight to InfluxDB.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx

from api import history
from api.registry import Device, Registry
from contract import storage
from contract.influx import Influx
from contract.rollups import schema_statements
from contract.settings import load_settings
from ingest.rollups import Rollups
from nakhon.procs import Service
from nakhon.servers import InfluxDB, free_port

CITY = "chiang_mai"
LAT, LON = 18.7883, 98.9853


def _lines(devices: list[str], start_min: int, minutes: range) -> list[str]:
    out = []
    for d_i, dev in enumerate(devices):
        head = f"air,city={CITY},device={dev} "
        for m in minutes:
            t = start_min + m
            pm = 8 + (t * 7 + d_i * 13) % 60 + (d_i % 10) / 10
            out.append(f"{head}pm25={pm:.1f},pm10={pm * 1.7:.1f},seq={m}i {t * 60_000}")
    return out


def _load(influx: Influx, devices: list[str], days: int) -> None:
    now_min = int(time.time() // 60)
    start_min = now_min - days * 1440
    total = days * 1440
    chunk = max(1, 20_000 // len(devices))  # minutes per batch, ~20k lines
    todo = list(range(0, total, chunk))
    lock = threading.Lock()
    done = [0]
    t0 = time.monotonic()

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                first = todo.pop(0)
            influx.write(_lines(devices, start_min, range(first, min(first + chunk, total))))
            with lock:
                done[0] += 1
                if done[0] % 50 == 0:
                    pts = done[0] * chunk * len(devices)
                    sys.stderr.write(f"  loaded {pts:,} points ({pts / (time.monotonic() - t0):,.0f}/s)\n")

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sys.stderr.write(f"  {len(devices) * total:,} points in {time.monotonic() - t0:.0f}s; building latest, hourly roll-ups and AQI\n")
    # The ingest's own code: what it does for every committed batch. One line per hour marks the hours,
    # the last minute of every device gives the latest values.
    roll = Rollups(influx, 1.0, ready=lambda: True)
    roll.start(influx.database)
    roll._stop.set()  # no background pass: we drive it
    marks = [_lines(devices[:1], start_min, range(m, m + 1))[0] for m in range(0, total, 60)]
    roll.touched(marks + _lines(devices, start_min, range(total - 1, total)))
    t1 = time.monotonic()
    roll.run_once(force=True)
    sys.stderr.write(f"  roll-ups and AQI built in {time.monotonic() - t1:.0f}s\n")


def _time(fn: Callable[[], httpx.Response], n: int) -> list[float]:
    for _ in range(3):
        fn().raise_for_status()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = fn()
        out.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
    return out


def _p(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    devices = [f"bench-{i:04d}" for i in range(args.devices)]
    db = InfluxDB(root / "influxdb")
    fresh = not (args.keep and (root / "influxdb" / "data").exists())
    db.start()
    settings = load_settings(influx_url=db.url, data_dir=root / "data", api_port=free_port(), api_public_read=True,
                             api_rate_per_key=10**6, api_rate_per_address=10**6, log_level="WARNING")
    influx = Influx(db.url, timeout=300)
    api = Service("api", ["api"], settings, root / "logs")
    try:
        if fresh:
            influx.execute(['DROP DATABASE "nakhon"'])
            settings.registry_path.unlink(missing_ok=True)
            influx.ensure_schema()
            influx.execute(schema_statements(storage.DATABASE))
            sys.stderr.write(f"loading {args.devices} devices x {args.days} days of minute data\n")
            _load(influx, devices, args.days)
            Registry(settings.registry_path).import_devices([
                Device(id=d, city=CITY, kind="air", sensors=["pm25", "pm10"], lat=LAT + (i % 40) * 0.002, lon=LON + (i // 40) * 0.002,
                       installed=date.today() - timedelta(days=args.days), fw="1.0.0", interval_s=60)
                for i, d in enumerate(devices)])
        api.start()
        base = f"http://127.0.0.1:{settings.api_port}"
        web = httpx.Client(base_url=base, timeout=60)
        idb = httpx.Client(base_url=db.url, timeout=60)
        deadline = time.monotonic() + 30
        while True:
            try:
                if web.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"API did not start:\n{api.log_path.read_text()[-2000:]}")
            time.sleep(0.2)

        def influxql(q: str, params: dict[str, str], epoch: str | None = "ms") -> httpx.Response:
            import orjson

            args = {"q": q, "db": storage.DATABASE, "params": orjson.dumps(params).decode()}
            return idb.get("/query", params={**args, "epoch": epoch} if epoch else args)

        n = args.requests
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        start = end - timedelta(days=7)
        dev = devices[len(devices) // 2]
        plan = history.aggregate_query("device", dev, "air", ["pm25", "pm10"], start, end, 3600, "mean", "auto")
        hq = plan.query  # what the API sends for this request (RFC 3339 times, passed through)
        hist_params = {"measurement": "air", "metrics": "pm25,pm10", "every": "1h", "agg": "mean",
                       "start": start.isoformat(), "end": end.isoformat()}
        check = web.get(f"/v1/devices/{dev}/readings", params=hist_params).json()
        latest_check = web.get(f"/v1/cities/{CITY}/latest").json()
        results = {
            "latest per city: API": _time(lambda: web.get(f"/v1/cities/{CITY}/latest"), n),
            "latest per city: same InfluxQL direct": _time(lambda: influxql(history.latest_query(), {"city": CITY}), n),
            "latest per city: InfluxDB newest point per device (raw)": _time(lambda: influxql(
                f'SELECT last("pm25"), last("pm10") FROM "{storage.RP_RAW}"."air" WHERE "city" = $city GROUP BY "device"',
                {"city": CITY}), max(5, n // 5)),
            "7-day hourly history: API": _time(lambda: web.get(f"/v1/devices/{dev}/readings", params=hist_params), n),
            "7-day hourly history: same InfluxQL direct": _time(lambda: influxql(hq.statement, hq.params, None), n),
        }
        web.close()
        idb.close()
    finally:
        api.stop()
        influx.close()
        db.stop()
    out = [f"api-bench: {args.devices} devices x {args.days} days of minute data ({args.devices * args.days * 1440:,} points), "
           f"{n} timed requests each (p50/p99 ms)",
           f"  checks: latest lists {len(latest_check['devices'])} devices; history has {len(check['points'])} hourly points "
           f"from {check['source']}"]
    for name, v in results.items():
        out.append(f"  {name:<58} p50 {_p(v, 0.5):8.1f}  p99 {_p(v, 0.99):8.1f}  (n={len(v)}, mean {statistics.mean(v):.1f})")
    lat_api, lat_direct, lat_raw = (results[k] for k in list(results)[:3])
    h_api, h_direct = results["7-day hourly history: API"], results["7-day hourly history: same InfluxQL direct"]
    out += [
        f"  latest: InfluxDB newest-per-device over raw / API      p50 x{_p(lat_raw, .5) / _p(lat_api, .5):.1f} faster "
        f"(target >= 5x), p99 x{_p(lat_raw, .99) / _p(lat_api, .99):.1f}",
        f"  latest: API / same InfluxQL direct                      p50 {_p(lat_api, .5) / _p(lat_direct, .5):.2f}, "
        f"p99 {_p(lat_api, .99) / _p(lat_direct, .99):.2f}",
        f"  history: API / same InfluxQL direct                     p50 {_p(h_api, .5) / _p(h_direct, .5):.2f}, "
        f"p99 {_p(h_api, .99) / _p(h_direct, .99):.2f} (target <= 1.30)",
    ]
    sys.stdout.write("\n".join(out) + "\n")
    return 0
