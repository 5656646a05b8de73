"""`nakhon simulate bench`: the largest simulated fleet this machine sustains.

Starts its own Mosquitto (the project's broker config), raises the
open-files limit, then holds fleets of growing size in real time - every
device its own MQTT connection, one reading every `--interval` s - and
measures: devices connected and how long that took, readings per second
acknowledged by the broker against those offered, and the CPU and memory
of the simulator processes and of the broker. A size is sustained when
every device stays connected and the broker acknowledges at least 95% of
the offered rate with nothing left unacknowledged. The largest sustained
fleet then reads every 5, 2 and 1 s until the broker's acknowledgements
fall behind: the throughput ceiling.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

from contract.cities import BUILTIN_CITIES
from harness.procstat import cpu_seconds, memory_kb
from nakhon.servers import Mosquitto
from simulators.devices import make_fleet
from simulators.fleet import run_fleet
from simulators.runconfig import RunConfig


def _raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _cpu_s(pid: int) -> float:
    return cpu_seconds(pid)


def _rss_mb(pid: int) -> float:
    return memory_kb(pid).get("VmRSS", 0) / 1024


def _hold(broker: Mosquitto, n: int, interval_s: float, hold_s: float, procs: int, connect_rate: float) -> dict[str, Any]:
    per_city = math.ceil(n / len(BUILTIN_CITIES))
    devices = make_fleet(list(BUILTIN_CITIES), per_city, seed=1, prefix="bench")[:n]
    cfg = RunConfig(port=broker.port, mode="realtime", interval_s=interval_s, duration_s=None, connect_rate=connect_rate,
                    keepalive=120, connect_timeout_s=20, backoff_base_s=1, backoff_cap_s=10)
    marks: dict[str, Any] = {"t0": time.monotonic(), "max_connected": 0}
    stop = threading.Event()
    pid = broker.pid or 0

    def tick(snap: dict[str, Any]) -> None:
        if stop.is_set():
            return  # the fleet is closing: its last snapshots are not part of the hold
        now = time.monotonic()
        marks["max_connected"] = max(marks["max_connected"], snap["connected"])
        if "connected_at" not in marks and snap["connected"] >= n:
            marks["connected_at"] = now
            marks["acked0"], marks["cpu0"], marks["broker_cpu0"] = snap["readings_acked"], snap["cpu_s"], _cpu_s(pid)
        if "connected_at" in marks:
            marks["last"] = (now, snap)
            if now - marks["connected_at"] >= hold_s:
                marks["broker_cpu1"], marks["broker_rss"] = _cpu_s(pid), _rss_mb(pid)
                stop.set()
        elif now - marks["t0"] > hold_s + 60:  # never all connected: give up
            marks["last"] = (now, snap)
            marks["broker_cpu1"], marks["broker_rss"] = _cpu_s(pid), _rss_mb(pid)
            stop.set()

    final = run_fleet(devices, cfg, procs=procs, tick=tick, stop=stop, tick_s=0.5, shutdown_s=60)
    out: dict[str, Any] = {"devices": n, "interval_s": interval_s, "offered_per_s": n / interval_s, "max_connected": marks["max_connected"],
                           "connect_s": marks.get("connected_at", float("nan")) - marks["t0"], "final": final}
    if "connected_at" in marks and "last" in marks:
        t1, snap = marks["last"]
        span = max(t1 - marks["connected_at"], 1e-9)
        out["acked_per_s"] = (snap["readings_acked"] - marks["acked0"]) / span
        out["sim_cpu_pct"] = 100 * (snap["cpu_s"] - marks["cpu0"]) / span
        out["sim_rss_mb"] = snap["rss_mb"]
        out["broker_cpu_pct"] = 100 * (marks.get("broker_cpu1", marks["broker_cpu0"]) - marks["broker_cpu0"]) / span
        out["broker_rss_mb"] = marks.get("broker_rss", 0.0)
    else:
        out.update(acked_per_s=0.0, sim_cpu_pct=float("nan"), sim_rss_mb=final.get("rss_mb", 0.0), broker_cpu_pct=float("nan"), broker_rss_mb=0.0)
    out["unacked"] = final["readings_sent"] - final["readings_acked"]
    out["sustained"] = (out["max_connected"] >= n and out["acked_per_s"] >= 0.95 * out["offered_per_s"] and out["unacked"] == 0)
    return out


def _row(r: dict[str, Any]) -> str:
    return (f"| {r['devices']:>6,} | {r['interval_s']:>5g} | {r['max_connected']:>9,} | {r['connect_s']:>7.1f} | {r['offered_per_s']:>8,.0f}"
            f" | {r['acked_per_s']:>8,.0f} | {r['sim_cpu_pct']:>5.0f}% | {r['sim_rss_mb']:>6.0f} | {r['broker_cpu_pct']:>5.0f}%"
            f" | {r['broker_rss_mb']:>6.0f} | {'yes' if r['sustained'] else 'NO':>9} |")


HEADER = ("| devices | every s | connected | connect s | offered/s | acked/s | sim CPU | sim MB | broker CPU | broker MB | sustained |\n"
          "|--------:|--------:|----------:|----------:|----------:|--------:|--------:|-------:|-----------:|----------:|----------:|")


def _files_for(devices: int) -> tuple[int, str | None]:
    """Raise the open-files limit for a fleet; (limit, what to do if it is still too low)."""
    nofile = _raise_nofile(devices + 4096)
    problem = f"open-files limit is {nofile}; raise it (ulimit -n {devices + 4096}) for {devices} devices" if nofile < devices + 512 else None
    return nofile, problem


def _fleet_broker(root: Path) -> Mosquitto:
    """The project's broker, with room for a whole fleet of connections and long keepalives."""
    return Mosquitto(Path(root) / "mosquitto", extra="max_connections -1\nmax_keepalive 65535")


def run_simbench(args: argparse.Namespace) -> int:
    target = args.devices
    procs = args.procs or 2
    interval = args.interval or 10.0
    nofile, problem = _files_for(target)
    if problem:
        sys.stderr.write(f"nakhon simulate bench: {problem}\n")
        return 2
    sizes = sorted({s for s in (1000, 2500, 5000, target) if s <= target})
    broker = _fleet_broker(Path(args.root))
    broker.start()
    sys.stdout.write(f"Fleet benchmark: {os.cpu_count()} CPUs, {procs} simulator processes, own Mosquitto on port {broker.port}, "
                     f"open files {nofile}, each size held {args.hold:g} s after all connected\n\n{HEADER}\n")
    sys.stdout.flush()
    results = []
    try:
        for n in sizes:
            r = _hold(broker, n, interval, args.hold, procs, args.connect_rate or 1000.0)
            results.append(r)
            sys.stdout.write(_row(r) + "\n")
            sys.stdout.flush()
            if not r["sustained"]:
                break
        best = max((r for r in results if r["sustained"]), key=lambda r: r["devices"], default=None)
        if best is None:
            sys.stdout.write("\nNo fleet size was sustained.\n")
            return 1
        # the throughput ceiling: the largest sustained fleet, reading more and more often
        ceiling = best
        for every in (5.0, 2.0, 1.0):
            r = _hold(broker, best["devices"], every, args.hold, procs, args.connect_rate or 1000.0)
            sys.stdout.write(_row(r) + "\n")
            sys.stdout.flush()
            if not r["sustained"]:
                break
            ceiling = r
        sys.stdout.write(f"\nLargest sustained fleet: {best['devices']:,} connected devices, {best['acked_per_s']:,.0f} readings/s acknowledged "
                         f"at one reading per {best['interval_s']:g} s each; highest sustained rate {ceiling['acked_per_s']:,.0f} readings/s "
                         f"acknowledged ({ceiling['devices']:,} devices, one reading per {ceiling['interval_s']:g} s).\n")
    finally:
        broker.stop()
    return 0


def hold_fleet(root: Path, devices: int, interval_s: float = 10.0, hold_s: float = 20.0, procs: int = 2) -> tuple[list[Any], dict[str, float]]:
    """For `nakhon bench`: hold one fleet of `devices` connected and report it as figures."""
    from harness.bench.ingest import Figure

    _, problem = _files_for(devices)
    if problem:
        raise RuntimeError(problem)
    with _fleet_broker(root) as broker:
        r = _hold(broker, devices, interval_s, hold_s, procs, 1000.0)
    figs = [
        Figure("simulated devices held connected", r["max_connected"], "devices",
               f"{devices:,} offered, connected in {r['connect_s']:.1f}s, held {hold_s:g}s; sustained: {'yes' if r['sustained'] else 'NO'}"),
        Figure("simulated fleet readings acknowledged by the broker", r["acked_per_s"], "readings/s",
               f"offered {r['offered_per_s']:,.0f}/s (one reading per {interval_s:g}s each); {r['unacked']} unacknowledged at the end"),
        Figure("simulator CPU / broker CPU while holding", r["sim_cpu_pct"], "% of a core",
               f"simulator {r['sim_rss_mb']:.0f} MB; broker {r['broker_cpu_pct']:.0f}% of a core, {r['broker_rss_mb']:.0f} MB"),
    ]
    return figs, {"sim_connected": float(r["max_connected"]), "sim_sustained": 1.0 if r["sustained"] else 0.0}
