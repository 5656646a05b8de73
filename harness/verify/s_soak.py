"""Scenario 13: a soak at city scale while the API is being read.

Full size: 3 cities x 1,000 devices, each reading every 10 s (300 readings/s,
six times the pilots' 3 x 1,000 devices every 60 s) for 30 minutes, with a
reader walking the API's public endpoints 5 times a second. Judged by: lost
and duplicated readings, API errors, memory growth of the ingest and API
processes (after a warm-up, so start-up allocations do not count), and
reconnects seen by the ingest and the publishers.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import httpx

from contract.influx import Influx
from harness.verify.report import Row, Size
from harness.verify.scenarios import register
from harness.verify.stream import CITIES, Stream, log_records, platform, rejected, rss_mb, say, service_pid, stored_until, tally, wait_stored

T13 = "soak at city scale with the API read meanwhile"
# Growth beyond this (after warm-up) fails the soak: steady state should not grow.
MAX_GROWTH_MB = 50.0


class ApiReader:
    """Walks the public read endpoints at `rate` requests/s; keeps status codes and latencies."""

    def __init__(self, base: str, devices: list[str], rate: float) -> None:
        self.base = base
        self.devices = devices
        self.rate = rate
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-reader", daemon=True)

    def paths(self, k: int) -> list[str]:
        city, dev = CITIES[k % 3], self.devices[k % len(self.devices)]
        return [
            f"/v1/cities/{city}/latest",
            f"/v1/cities/{city}/readings?every=5m&agg=mean",
            f"/v1/devices/{dev}/readings?limit=1000",
            f"/v1/devices/{dev}/readings?measurement=weather&every=1m&agg=max",
            f"/v1/cities/{city}/aqi",
            f"/v1/devices/{dev}/aqi",
            f"/v1/cities/{city}/quality",
            f"/v1/open/cities/{city}/latest.geojson",
        ]

    def start(self) -> ApiReader:
        self._thread.start()
        return self

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as http:
            k = 0
            begin = time.monotonic()
            n = 0
            while not self._stop.is_set():
                for path in self.paths(k):
                    t = time.perf_counter()
                    try:
                        status = str(http.get(path).status_code)
                    except httpx.HTTPError as exc:
                        status = type(exc).__name__
                    self.latencies.append(time.perf_counter() - t)
                    if status != "200":
                        self.errors[status] = self.errors.get(status, 0) + 1
                    n += 1
                    if (ahead := n / self.rate - (time.monotonic() - begin)) > 0 and self._stop.wait(ahead):
                        return
                k += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def percentiles(self) -> str:
        if not self.latencies:
            return "-"
        lat = sorted(self.latencies)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return f"{statistics.median(lat) * 1000:.0f}/{p99 * 1000:.0f} ms"


def wait_ready(base: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


@register(13, T13)
def soak(root: Path, size: Size) -> Row:
    devices, every_s, seconds, api_rate = (3000, 10.0, 1800.0, 5.0) if size == "full" else (300, 3.0, 10.0, 5.0)
    rate = devices / every_s
    warm = min(60.0, seconds / 5)
    row = Row(13, T13)
    # the reader is one address: lift the per-address limit so 429s do not stand for errors
    with platform(root, api_rate_per_address=1_000_000) as p, Influx(p.influxdb.url) as db:
        base = f"http://127.0.0.1:{p.settings.api_port}"
        if not wait_ready(base):
            raise RuntimeError(f"API not ready; see {p.api.log_path}")
        stream = Stream(p.broker.port, rate, prefix="s13", devices=devices).start()
        reader = ApiReader(base, [d for _, d in stream.devices[:30]], api_rate).start()
        t0 = time.monotonic()
        time.sleep(warm)
        rss0 = {"ingest": rss_mb(service_pid(p.ingest)), "API": rss_mb(service_pid(p.api))}
        peak = dict(rss0)
        while (left := t0 + seconds - time.monotonic()) > 0:
            time.sleep(min(left, 10.0))
            for name, svc in (("ingest", p.ingest), ("API", p.api)):
                peak[name] = max(peak[name], rss_mb(service_pid(svc)))
            cut, sent = stream.mark()
            say(
                f"  {time.monotonic() - t0:.0f}/{seconds:.0f} s: sent {sent:,}, queryable {stored_until(db, stream.prefix, cut):,}; "
                f"API {len(reader.latencies):,} requests; RSS ingest {peak['ingest']:.0f} MB, API {peak['API']:.0f} MB"
            )
        rss1 = {"ingest": rss_mb(service_pid(p.ingest)), "API": rss_mb(service_pid(p.api))}
        reader.stop()
        stream.stop()
        unacked = stream.settle()
        row.recovery_s = wait_stored(db, stream, stream.mark(), 120, what="the last readings")  # the lag at the end of the soak
        stream.close()
        t = tally(db, stream)
        row.rejected = rejected(p)
        lost_connection = len(log_records(p.ingest, "connection to broker lost, reconnecting"))
        ingest_runs = len(log_records(p.ingest, "ingest worker started"))
    row.sent, row.stored, row.lost, row.duplicated, row.accepted_bad = t.sent, t.stored, t.lost, t.duplicated, t.unexpected
    growth = {k: rss1[k] - rss0[k] for k in rss0}
    row.figures = {
        "load": f"{devices:,} devices every {every_s:g} s = {rate:,.0f}/s for {seconds / 60:.1f} min",
        "API requests": len(reader.latencies),
        "API errors": sum(reader.errors.values()),
        "API p50/p99": reader.percentiles(),
        **{f"{k} RSS MB {when}": round(v[k], 1) for k in rss0 for when, v in (("first", rss0), ("last", rss1), ("peak", peak))},
        "ingest reconnects": lost_connection,
        "publisher reconnects": stream.reconnects,
        "unacked": unacked,
    }
    row.ok = (
        t.lost == 0 and t.duplicated == 0 and t.unexpected == 0 and unacked == 0 and row.recovery_s is not None
        and not reader.errors and lost_connection == 0 and stream.reconnects == 0 and ingest_runs == 1
        and all(g < MAX_GROWTH_MB for g in growth.values())
    )
    if reader.errors:
        row.note = f"API errors by status: {reader.errors}. "
    row.note += (
        f"Memory is resident set size of each process group, first after {warm:.0f} s of warm-up, last at the end (fails above "
        f"+{MAX_GROWTH_MB:.0f} MB); recovery is the lag at the end: from the last reading sent until everything is queryable."
    )
    return row
