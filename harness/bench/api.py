"""`nakhon api-bench`: API latency next to InfluxDB's, in the same run.

Loads a city of N devices with D days of minute data (air: pm25, pm10) into a
fresh InfluxDB, lets the ingest's own roll-up code build `latest`, `hourly`
and the AQI, registers the devices, starts the API under uvicorn (as
`nakhon api` does), then times with keep-alive HTTP clients:
- latest per city through the API, the same InfluxQL sent straight to
  InfluxDB, and InfluxDB's own newest-point-per-device query over raw (what
  the API would have to run without the `latest` values);
- a 7-day hourly history of one device through the API, and the same
  InfluxQL sent straight to InfluxDB.
Fair by construction: the direct requests are the ones the API's client
sends (same target, same headers, so the same gzip'd answer), sent by the
same kind of client as the API calls; contenders are timed in turns, so a load
spike from elsewhere on a shared machine falls on both. Then requests/s with
N concurrent clients, for the API and straight to InfluxDB alike.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from api import history, queries
from api.ainflux import HEADERS as ainflux_headers
from api.ainflux import AsyncInflux
from api.registry import Device, Registry
from contract import storage
from contract.influx import Influx
from contract.rollups import RP_LATEST, schema_statements
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
    t1 = time.monotonic()
    roll.touched(_lines(devices, start_min, range(total - 1, total)))
    for day in range(0, total, 1440):  # a day per pass: each statement stays well inside InfluxDB's query timeout
        roll.touched([_lines(devices[:1], start_min, range(m, m + 1))[0] for m in range(day, min(day + 1440, total), 60)])
        roll.run_once(force=True)
    sys.stderr.write(f"  roll-ups and AQI built in {time.monotonic() - t1:.0f}s\n")


Timed = Callable[[], httpx.Response]


def _interleaved(contenders: dict[str, tuple[Timed, int]], n: int) -> dict[str, list[float]]:
    """ms per request of each contender, taken in turns (contender k every `k`-th round), so a load spike
    from elsewhere on the machine falls on all of them alike rather than on whichever ran then."""
    for fn, _ in contenders.values():
        for _ in range(3):
            fn().raise_for_status()
    out: dict[str, list[float]] = {name: [] for name in contenders}
    for i in range(n):
        for name, (fn, every) in contenders.items():
            if i % every:
                continue
            t = time.perf_counter()
            r = fn()
            out[name].append((time.perf_counter() - t) * 1000)
            r.raise_for_status()
        if (i + 1) % 100 == 0:
            sys.stderr.write(f"  {i + 1}/{n} rounds\n")
    return out


def _p(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


FAILED: dict[str, int] = {}  # load requests not answered 200, per target (the API sheds load with 503 rather than pile up)


async def _concurrent(urls: dict[str, str], concurrency: int, seconds: float, slices: int = 4) -> dict[str, list[float]]:
    """Closed-loop load: `concurrency` clients, each on its own keep-alive connection, sending the next request
    as soon as the last is answered. The targets take turns in `slices` slices each, as in `_interleaved`.
    Only answers 200 count (their latencies); the others are counted in FAILED."""
    import aiohttp  # the load client only: lighter on the shared CPU than httpx's async client

    out: dict[str, list[float]] = {name: [] for name in urls}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), headers=ainflux_headers) as session:

        async def client(name: str, url: str, until: float, lat: list[float]) -> None:
            while (t := time.perf_counter()) < until:
                async with session.get(url) as r:
                    await r.read()
                    ok = r.status == 200
                if ok:
                    lat.append((time.perf_counter() - t) * 1000)
                else:
                    FAILED[name] = FAILED.get(name, 0) + 1

        for url in urls.values():  # warm every connection
            await asyncio.gather(*(client("warm-up", url, time.perf_counter() + 0.3, []) for _ in range(concurrency)))
        for _ in range(slices):
            for name, url in urls.items():
                until = time.perf_counter() + seconds / slices
                await asyncio.gather(*(client(name, url, until, out[name]) for _ in range(concurrency)))
    return out


def freshness(influx: Influx, web: httpx.Client, device: str, rounds: int = 30) -> list[float]:
    """ms from a new value written to the `latest` values (as the ingest writes them) to its first appearance in
    the API's latest per city, polled every 20 ms: the age the current-values cache adds."""
    out = []
    for i in range(rounds):
        marker = 900.0 + i + (time.time() % 1)
        now_ms = int(time.time() * 1000)
        t = time.perf_counter()
        influx.write([f"air,city={CITY},device={device} pm25={marker:.3f},ts={now_ms}i 0"], rp=RP_LATEST)
        while True:
            doc = web.get(f"/v1/cities/{CITY}/latest").json()
            if any(d["device"] == device and d["values"].get("pm25") == round(marker, 3) for d in doc["devices"]):
                break
            if time.perf_counter() - t > 60:
                raise SystemExit("api-bench: a new latest value did not appear within 60 s")
            time.sleep(0.02)
        out.append((time.perf_counter() - t) * 1000)
        time.sleep(0.3 + (i % 7) * 0.25)  # land anywhere in the refresh period
    return out


def _row(name: str, v: list[float]) -> str:
    return f"  {name:<58} p50 {_p(v, 0.5):8.1f}  p99 {_p(v, 0.99):8.1f}  (n={len(v)}, mean {statistics.mean(v):.1f})"


def _ratio(label: str, num: list[float], den: list[float], target: str = "", ok: Callable[[float], bool] | None = None) -> str:
    r50, r99 = _p(num, 0.5) / _p(den, 0.5), _p(num, 0.99) / _p(den, 0.99)
    verdict = "" if ok is None else f"   target {target} at p50 and p99: {'met' if ok(r50) and ok(r99) else 'MISSED'}"
    return f"  {label:<52} p50 {r50:6.2f}  p99 {r99:6.2f}{verdict}"


def collect(args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, Any], dict[str, Any]]:
    """Load, check and time: (latencies in turns, latencies under load, history check, latest check);
    the freshness of the current values goes in under "freshness" with the latencies in turns."""
    root = Path(args.root)
    devices = [f"bench-{i:04d}" for i in range(args.devices)]
    db = InfluxDB(root / "influxdb")
    fresh = not (args.keep and (root / "influxdb" / "data").exists())
    db.start()
    settings = load_settings(influx_url=db.url, data_dir=root / "data", api_port=free_port(), api_public_read=True,
                             api_rate_per_key=10**6, api_rate_per_address=10**6, log_level="WARNING", api_workers=args.workers)
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

        # The direct requests are the very ones the API sends (target built by its client, its headers),
        # from the same kind of client as the API's callers here (httpx, keep-alive).
        ainflux = AsyncInflux(db.url, storage.DATABASE, None, None, 60)
        direct_headers = ainflux_headers

        def influxql(q: str, params: dict[str, str], epoch: str | None = "ms") -> httpx.Response:
            return idb.get(ainflux.target(q, params, epoch), headers=direct_headers)

        n = args.requests
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        start = end - timedelta(days=7)
        dev = devices[len(devices) // 2]
        plan = history.aggregate_query("device", dev, "air", ["pm25", "pm10"], start, end, 3600, "mean", "auto")
        hq = plan.query  # what the API sends for this request (RFC 3339 times, passed through)
        hist_epoch = "ms" if plan.fold else None
        hist_params = {"measurement": "air", "metrics": "pm25,pm10", "every": "1h", "agg": "mean",
                       "start": start.isoformat(), "end": end.isoformat()}
        hist_path = f"/v1/devices/{dev}/readings?{urlencode(hist_params)}"
        latest_path = f"/v1/cities/{CITY}/latest"
        aqi_path = f"/v1/cities/{CITY}/aqi"
        aqi = queries.aqi_latest_by_device(CITY, datetime.now(UTC) - timedelta(days=2))  # what the API's snapshot sends
        aqi_q, aqi_params = aqi.statement, aqi.params
        raw_last = f'SELECT last("pm25"), last("pm10") FROM "{storage.RP_RAW}"."air" WHERE "city" = $city GROUP BY "device"'
        # the same answer computed straight from the raw points: what a client without the roll-ups sends
        rq = history.aggregate_query("device", dev, "air", ["pm25", "pm10"], start, end, 3600, "mean", "raw").query

        # The API answers what InfluxDB answers.
        check = web.get(hist_path).json()
        direct = influxql(hq.statement, hq.params, hist_epoch).json()["results"][0]["series"][0]["values"]
        if [[p["time"], p["values"]["pm25"], p["values"]["pm10"]] for p in check["points"]] != direct:
            raise SystemExit("api-bench: the API's history differs from InfluxDB's answer")
        latest_check = web.get(latest_path).json()
        if len(latest_check["devices"]) != args.devices:
            raise SystemExit(f"api-bench: latest lists {len(latest_check['devices'])} devices, not {args.devices}")

        sys.stderr.write(f"timing: {n} rounds, API and direct in turns\n")
        results = _interleaved({
            "latest per city: API": (lambda: web.get(latest_path), 1),
            "latest per city: same InfluxQL direct": (lambda: influxql(queries.latest_city(CITY).statement, {"city": CITY}), 1),
            "latest per city: InfluxDB newest point per device (raw)": (lambda: influxql(raw_last, {"city": CITY}), 5),  # slow: every 5th round
        }, n)
        results |= _interleaved({
            "7-day hourly history: API": (lambda: web.get(hist_path), 1),
            "7-day hourly history: same InfluxQL direct": (lambda: influxql(hq.statement, hq.params, hist_epoch), 1),
            "7-day hourly history: InfluxQL mean per hour over raw": (lambda: influxql(rq.statement, rq.params, None), 5),  # slow: every 5th round
        }, n)
        conc, secs = args.concurrency, args.seconds
        sys.stderr.write(f"load: {conc} concurrent clients, {secs:g} s per target\n")
        loaded = asyncio.run(_concurrent({
            "7-day hourly history: API": base + hist_path,
            "7-day hourly history: same InfluxQL direct": db.url + ainflux.target(hq.statement, hq.params, hist_epoch),
            "latest per city: API": base + latest_path,
            "latest per city: same InfluxQL direct": db.url + ainflux.target(queries.latest_city(CITY).statement, {"city": CITY}),
            "city AQI: API": base + aqi_path,
            "city AQI: same InfluxQL direct": db.url + ainflux.target(aqi_q, aqi_params),
        }, conc, secs))
        sys.stderr.write("freshness: new latest values written, time until the API shows them\n")
        results["freshness: written to latest -> in the API"] = freshness(influx, web, devices[0])
        web.close()
        idb.close()
    finally:
        api.stop()
        influx.close()
        db.stop()
    return results, loaded, check, latest_check


def measure(
    root: Path, devices: int = 1000, days: int = 7, requests: int = 300, concurrency: int = 64, seconds: float = 6.0,
    workers: int = 0,
) -> tuple[list[Any], dict[str, float]]:
    """For `nakhon bench`: the API section as figures, and the p50/p99 (ms) and rates (req/s) the targets use."""
    from harness.bench.ingest import Figure

    args = argparse.Namespace(root=str(root), devices=devices, days=days, requests=requests, concurrency=concurrency, seconds=seconds,
                              keep=False, workers=workers)
    results, loaded, check, _ = collect(args)
    names = list(results)
    lat_api, lat_direct, lat_raw = (results[k] for k in names[:3])
    h_api, h_direct = results["7-day hourly history: API"], results["7-day hourly history: same InfluxQL direct"]
    h_raw = results["7-day hourly history: InfluxQL mean per hour over raw"]
    figs = [
        Figure(f"{name}", _p(v, 0.5), "ms p50", f"p99 {_p(v, 0.99):.1f} ms, n={len(v)}")
        for name, v in results.items()
    ]
    figs += [Figure(f"{name} at {concurrency} clients", len(v) / seconds, "req/s",
                    f"p50 {_p(v, 0.5):.1f} ms, p99 {_p(v, 0.99):.1f} ms, not 200: {FAILED.get(name, 0)}")
             for name, v in loaded.items()]
    figs.append(Figure("history check", len(check["points"]), "hourly points", f"from {check['source']}, equal to InfluxDB's answer"))
    values = {
        "latest_p50_ms": _p(lat_api, 0.5), "latest_p99_ms": _p(lat_api, 0.99),
        "latest_direct_p50_ms": _p(lat_raw, 0.5), "latest_direct_p99_ms": _p(lat_raw, 0.99),
        "latest_same_p50_ms": _p(lat_direct, 0.5),
        "history_p50_ms": _p(h_api, 0.5), "history_p99_ms": _p(h_api, 0.99),
        "history_direct_p50_ms": _p(h_direct, 0.5), "history_direct_p99_ms": _p(h_direct, 0.99),
        "history_raw_p50_ms": _p(h_raw, 0.5), "history_raw_p99_ms": _p(h_raw, 0.99),
        "freshness_p50_ms": _p(results["freshness: written to latest -> in the API"], 0.5),
        "freshness_p99_ms": _p(results["freshness: written to latest -> in the API"], 0.99),
        "api_clients": float(concurrency),
    }
    for key, name in (("latest", "latest per city"), ("aqi", "city AQI"), ("history", "7-day hourly history")):
        api, direct = loaded[f"{name}: API"], loaded[f"{name}: same InfluxQL direct"]
        values |= {f"{key}_rps": len(api) / seconds, f"{key}_load_p99_ms": _p(api, 0.99),
                   f"{key}_direct_rps": len(direct) / seconds, f"{key}_failed": float(FAILED.get(f"{name}: API", 0))}
    return figs, values


def run(args: argparse.Namespace) -> int:
    results, loaded, check, latest_check = collect(args)
    n, conc, secs = args.requests, args.concurrency, args.seconds
    out = [f"api-bench: {args.devices} devices x {args.days} days of minute data ({args.devices * args.days * 1440:,} points), "
           f"{n} rounds, each contender timed in turn (ms)",
           f"  checks: latest lists {len(latest_check['devices'])} devices; history has {len(check['points'])} hourly points "
           f"from {check['source']}, equal to InfluxDB's answer"]
    out += [_row(name, v) for name, v in results.items()]
    lat_api, lat_direct, lat_raw = (results[k] for k in list(results)[:3])
    h_api, h_direct = results["7-day hourly history: API"], results["7-day hourly history: same InfluxQL direct"]
    out += [
        "  ratios (same run):",
        _ratio("latest: InfluxDB newest-per-device over raw / API", lat_raw, lat_api, ">= 5 (API faster)", lambda r: r >= 5),
        _ratio("latest: API / same InfluxQL direct", lat_api, lat_direct),
        _ratio("history: API / same InfluxQL direct", h_api, h_direct, "<= 1.30", lambda r: r <= 1.3),
        _ratio("history: API / InfluxQL mean per hour over raw", h_api, results["7-day hourly history: InfluxQL mean per hour over raw"],
               "<= 1.30", lambda r: r <= 1.3),
        f"  under load: {conc} concurrent clients (aiohttp, keep-alive), {secs:g} s each, in turns",
    ]
    for name, v in loaded.items():
        out.append(f"  {name:<58} {len(v) / secs:8.0f} req/s  p50 {_p(v, 0.5):7.1f}  p99 {_p(v, 0.99):7.1f}  not 200: {FAILED.get(name, 0)}")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def add_parser(sub: Any) -> None:
    ab = sub.add_parser("api-bench", help="API latency (latest per city, 7-day hourly history) next to the same InfluxQL sent to InfluxDB")
    ab.add_argument("--devices", type=int, default=1000, help="devices in the city (default 1000)")
    ab.add_argument("--days", type=int, default=7, help="days of minute data per device (default 7)")
    ab.add_argument("--requests", type=int, default=300, help="timed rounds, each contender once per round (default 300: a p99 needs a few hundred)")
    ab.add_argument("--concurrency", type=int, default=64, help="concurrent clients for the requests/s part (default 64)")
    ab.add_argument("--workers", type=int, default=0, help="API processes (default 0: one per core, at most 4)")
    ab.add_argument("--seconds", type=float, default=6.0, help="seconds of load per target in the requests/s part (default 6)")
    ab.add_argument("--root", default="var/api-bench", help="folder for the benchmark's servers (default var/api-bench)")
    ab.add_argument("--keep", action="store_true", help="reuse data loaded by an earlier run in --root")
    ab.set_defaults(func=run)
