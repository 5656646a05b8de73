"""`nakhon simulate`: a scenario (preset, file or flags) against the broker."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import resource
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from contract.cities import City
from contract.logs import kv
from contract.settings import Settings
from contract.sigrelay import route
from simulators.devices import SimDevice, make_fleet
from simulators.faults import Fault, FaultError
from simulators.fil import KINDS as FIL_KINDS
from simulators.fil import FirmwareFleet, FirmwarePaths
from simulators.fleet import run_fleet
from simulators.progress import Progress, summary
from simulators.provision import ProvisionConfigError, ProvisionError, provision_fleet
from simulators.runconfig import RunConfig
from simulators.scenario import Scenario, ScenarioError, duration, load, load_credentials, presets

log = logging.getLogger("nakhon.simulate")


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    sc = load(args.scenario) if args.scenario else Scenario()
    over: dict[str, Any] = {}
    for arg, key in (("per_city", "per_city"), ("interval", "interval_s"), ("count", "count"), ("batch", "batch"),
                     ("seed", "seed"), ("credentials", "credentials"), ("procs", "procs"), ("connect_rate", "connect_rate"),
                     ("prefix", "prefix"), ("firmware", "firmware")):
        if getattr(args, arg) is not None:
            over[key] = getattr(args, arg)
    if args.cities:
        over["cities"] = args.cities
    if not args.confirm:
        over["confirm"] = False
    if args.confirm_timeout is not None:
        over["confirm_timeout_s"] = args.confirm_timeout
    if args.realtime:
        over["mode"] = "realtime"
    if args.speed is not None:
        over.update(mode="accelerated", speed=args.speed)
    if args.backfill_days is not None:
        over.update(mode="backfill", backfill_days=args.backfill_days)
    if args.since is not None:
        over["since"] = duration(args.since)
    if args.duration is not None:
        over["duration"] = duration(args.duration)
    sc = dataclasses.replace(sc, **over)
    sc.faults = sc.faults + [Fault.parse(spec) for spec in args.fault]
    sc.check("flags")
    return sc


def run_config(sc: Scenario, settings: Settings, **extra: Any) -> RunConfig:
    return RunConfig(
        host=settings.mqtt_host, port=settings.mqtt_port, mode=sc.mode, interval_s=sc.interval_s, speed=sc.speed,
        since_s=sc.since, duration_s=sc.duration, count=sc.count, backfill_days=sc.backfill_days, batch=sc.batch,
        connect_rate=sc.connect_rate, passwords=load_credentials(sc.credentials) if sc.credentials else {}, seed=sc.seed,
        tls_ca=(str(settings.mqtt_ca_file) if settings.mqtt_ca_file else "") if settings.mqtt_tls else None,
        max_payload_bytes=settings.max_payload_bytes, ts_max_age_s=settings.ts_max_age_s, ts_max_future_s=settings.ts_max_future_s,
        confirm=sc.confirm, confirm_timeout_s=sc.confirm_timeout_s, **extra,
    )


def firmware_fleet(sc: Scenario, cities: list[City], cfg: RunConfig, paths: FirmwarePaths, root: Path) -> FirmwareFleet:
    """K firmware devices of the kinds the firmware has drivers for, taking the cities and kinds in turn."""
    pool = make_fleet(cities, max(20, 2 * sc.firmware), seed=sc.seed, prefix="fw")
    spare = {(c.slug, k): [d for d in pool if d.city == c.slug and d.kind == k] for c in cities for k in FIL_KINDS}
    picked: list[SimDevice] = []
    for j in itertools.count():
        if len(picked) >= sc.firmware or not any(spare.values()):
            break
        left = spare[(cities[j % len(cities)].slug, FIL_KINDS[j % len(FIL_KINDS)])]
        if left:
            picked.append(left.pop(0))
    scale, behind = (sc.speed, sc.since) if sc.mode == "accelerated" else (1.0, 0.0)
    return FirmwareFleet(picked, root, paths, cfg.host, cfg.port, seed=sc.seed, interval_s=max(1, int(sc.interval_s)), scale=scale,
                         behind_s=behind, passwords=cfg.passwords, faults=sc.faults)


def _provision(api_url: str, sc: Scenario, cities: list[City], settings: Settings) -> None:
    key = os.environ.get("NAKHON_API_KEY")
    if not key:
        raise ProvisionConfigError("--provision needs an admin API key in NAKHON_API_KEY (`nakhon apikey create --scope admin`)")
    if not sc.credentials:
        raise ProvisionConfigError("--provision needs --credentials FILE to keep the devices' passwords in")
    ca = str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None  # the API's certificate is signed by the same CA
    provision_fleet(make_fleet(cities, sc.per_city, seed=sc.seed, prefix=sc.prefix), api_url, key, Path(sc.credentials), ca,
                    interval_s=round(sc.interval_s))


def _raise_open_files(need: int) -> None:
    """Every device is a socket: lift the soft open-files limit towards the hard one, or say what to do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < need:
        log.warning("open-files limit too low for this fleet", extra=kv(need=need, limit=target, fix=f"ulimit -Hn {need}"))


def main(args: argparse.Namespace, settings: Settings, firmware: FirmwarePaths | None = None) -> int:
    if args.list_presets:
        for name in presets():
            sys.stdout.write(f"{name}\n")
        return 0
    try:
        sc = scenario_from_args(args)
        cities = [settings.cities[c] for c in (sc.cities or sorted(settings.cities))]
        if args.provision:
            _provision(args.provision, sc, cities, settings)
        cfg = run_config(sc, settings)
    except KeyError as exc:
        sys.stderr.write(f"nakhon simulate: unknown city {exc}; registered: {', '.join(sorted(settings.cities))}\n")
        return 2
    except (ScenarioError, FaultError, ValueError, ProvisionConfigError) as exc:
        sys.stderr.write(f"nakhon simulate: {exc}\n")
        return 2
    except ProvisionError as exc:  # the API not there yet, or refusing: a supervisor retries
        sys.stderr.write(f"nakhon simulate: {exc}\n")
        return 1
    devices = make_fleet(cities, sc.per_city, seed=sc.seed, prefix=sc.prefix)
    _raise_open_files(len(devices) // sc.procs + 1024)
    stop = threading.Event()
    route({signal.SIGINT: stop.set, signal.SIGTERM: stop.set})
    log.info("fleet starting", extra=kv(scenario=sc.name, devices=len(devices), cities=[c.slug for c in cities], mode=sc.mode,
                                        interval_s=sc.interval_s, procs=sc.procs, faults=len(sc.faults),
                                        broker=f"{cfg.host}:{cfg.port}"))
    fw = None
    if sc.firmware:
        if firmware is None:
            sys.stderr.write("nakhon simulate: firmware devices need the firmware tools (run through `nakhon simulate`)\n")
            return 2
        fw = firmware_fleet(sc, cities, cfg, firmware, settings.path("firmware-in-the-loop"))
        fw.start()
    progress = None if args.quiet else Progress()
    try:
        snap = run_fleet(devices, cfg, sc.faults, procs=sc.procs, tick=progress, stop=stop)
    finally:
        if fw is not None:
            fw.stop()
    if progress is not None:
        progress.close()
    sys.stdout.write(f"Simulation {sc.name!r} ({sc.mode}, {len(devices)} devices)\n" + summary(snap))
    if fw is not None:
        fs = fw.summary()
        sys.stdout.write(f"Firmware in the loop: {fs['devices']} devices, {fs['readings']:,} readings taken, {fs['boots']} boots "
                         f"({fs['resets']} resets, {fs['crashes']} crashes), faults {fs['faults']}\n")
    sys.stdout.flush()
    log.info("fleet done", extra=kv(**{k: v for k, v in snap.items() if not isinstance(v, dict)}))
    complete = snap["readings_acked"] == snap["readings_sent"] and not snap["unsent"] and not snap.get("lost_processes")
    complete = complete and not (cfg.confirm and snap.get("unconfirmed"))
    return 0 if complete or stop.is_set() else 1
