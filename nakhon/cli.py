"""`nakhon`: one command line, a subcommand per job."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from contract.logs import setup_logging
from contract.settings import ConfigError, Settings, load_settings
from contract.sigrelay import route
from contract.status import DEVICE_KINDS

log = logging.getLogger("nakhon")


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        sys.stderr.write(f"nakhon: {exc}\n")
        raise SystemExit(2) from None


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
        return value

    return parse


# --- up ---------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    from api.broker import BrokerError
    from nakhon.accounts import AccountError
    from nakhon.leftovers import AlreadyRunning
    from nakhon.local import LocalPlatform
    from nakhon.servers import ServerError
    from nakhon.supervisor import Policy

    settings = _settings()
    setup_logging(settings.log_level)
    policy = Policy(backoff_base_s=args.backoff_min, backoff_cap_s=args.backoff_max, give_up_after=args.restart_limit, stable_s=args.stable)
    platform = LocalPlatform(Path(args.root), settings, fleet_per_city=args.per_city, interval_s=args.interval, with_fleet=not args.no_fleet)
    stop, show, retry = threading.Event(), threading.Event(), threading.Event()
    route({signal.SIGINT: stop.set, signal.SIGTERM: stop.set, signal.SIGUSR1: show.set, signal.SIGHUP: retry.set})
    try:
        try:
            platform.start()
        except AlreadyRunning as exc:
            sys.stderr.write(f"nakhon up: {exc}\n")
            return 2
        except (AccountError, BrokerError, ServerError, RuntimeError) as exc:  # a part that cannot start: say which and why
            sys.stderr.write(f"nakhon up: {exc}\n")
            return 1
        platform.supervise(policy)
        sys.stderr.write(platform.where()
                         + f"  Status       nakhon status --root {args.root}   (or kill -USR1 {os.getpid()}; kill -HUP retries a service given up on)\n\n")
        platform.watch(stop, show, retry)
    finally:
        log.info("stopping")
        platform.stop()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from nakhon.status import read_file

    path = Path(args.root) / "status.json"
    if not path.exists():
        sys.stderr.write(f"nakhon status: no {path}: is `nakhon up --root {args.root}` running?\n")
        return 3
    lines, alive = read_file(path)
    if not alive:
        sys.stdout.write(f"nakhon up is not running; its last status ({path}):\n")
    for text in lines:
        sys.stdout.write(text + "\n")
    if not alive:
        return 3
    return 0 if all(" running " in t and (" health " not in t or " health ok" in t) for t in lines) else 1


# --- ingest / api -----------------------------------------------------------
def cmd_ingest(args: argparse.Namespace) -> int:
    from ingest.service import run, run_worker

    settings = _settings(ingest_workers=args.workers)
    if args.health:
        from nakhon.status import ingest_health

        state, detail = ingest_health(settings.data_dir / "health")
        sys.stdout.write(f"ingest {state}: {detail}\n")
        return 1 if state == "down" else 0
    if args.worker is not None:  # one worker of NAKHON_INGEST_WORKERS, its process managed from outside (systemd)
        if not 0 <= args.worker < settings.ingest_workers:
            sys.stderr.write(
                f"nakhon ingest: --worker {args.worker} is outside 0..{settings.ingest_workers - 1}: "
                "set NAKHON_INGEST_WORKERS to the number of workers\n"
            )
            return 2
        run_worker(settings, args.worker)
        return 0
    run(settings)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    from api.serve import serve

    settings = _settings(api_host=args.host, api_port=args.port, api_workers=args.workers)
    setup_logging(settings.log_level)
    if args.workers is not None:  # the worker processes read the environment
        os.environ["NAKHON_API_WORKERS"] = str(args.workers)
    if args.host is not None:
        os.environ["NAKHON_API_HOST"] = args.host
    if args.port is not None:
        os.environ["NAKHON_API_PORT"] = str(args.port)
    serve(settings)
    return 0


# --- alerts -------------------------------------------------------------------
def cmd_alerts(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from alerts.rules import RulesError, load_rules

    settings = _settings(alerts_rules_file=getattr(args, "rules", None))
    if args.action == "health":
        from alerts.health import judge

        state, detail = judge(settings.data_dir / "alerts" / "health.json")
        sys.stdout.write(f"alerts {state}: {detail}\n")
        return 1 if state == "down" else 0
    try:
        book = load_rules(settings.alerts_rules_file)
    except RulesError as exc:
        sys.stderr.write(f"nakhon alerts: NAKHON_ALERTS_RULES_FILE: {exc}\n")
        return 2
    if args.action == "check":
        import json

        if args.city is not None and args.city not in settings.cities:
            sys.stderr.write(f"nakhon alerts check: unknown city {args.city!r}; known: {', '.join(sorted(settings.cities))}\n")
            return 2
        out: dict[str, object] = {"version": book.version}
        for city in [args.city] if args.city else sorted(settings.cities):
            out[city if args.station is None else f"{city}/{args.station}"] = asdict(book.for_station(city, args.station))
        sys.stdout.write(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
        return 0
    from alerts.service import run

    setup_logging(settings.log_level)
    run(settings, book)
    return 0


# --- systemd -----------------------------------------------------------------
def cmd_systemd(args: argparse.Namespace) -> int:
    from nakhon import systemd

    settings = _settings(api_host=args.api_host, api_port=args.api_port)
    layout = systemd.Layout(
        nakhon_bin=Path(args.nakhon_bin).absolute() if args.nakhon_bin else systemd.nakhon_bin(),
        workers=args.workers,
        user=args.user,
        mqtt_port=args.mqtt_port,
        influx_port=args.influx_port,
        systemd_version=systemd.systemd_version(),
    )
    root = Path(args.root) if args.action == "write" else Path("/")
    if args.action == "install" and args.dry_run:
        for path, (_, mode) in systemd.files(settings, layout).items():
            sys.stdout.write(f"write {path} (mode {mode:o})\n")
        for cmd in systemd.install_commands(layout):
            sys.stdout.write(" ".join(cmd) + "\n")
        return 0
    if args.action == "install" and os.geteuid() != 0:
        sys.stderr.write("nakhon systemd install: run as root (sudo), or `nakhon systemd write --root DIR` to see the files\n")
        return 2
    for path in systemd.write(root, settings, layout):
        sys.stdout.write(f"wrote {path}\n")
    if args.action == "install":
        import subprocess

        for cmd in systemd.install_commands(layout):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0 and not (cmd[0] == "useradd" and done.returncode == 9):  # 9: the user exists already
                sys.stderr.write(f"nakhon systemd install: {' '.join(cmd)} failed: {done.stderr.strip()}\n")
                return 1
        sys.stdout.write(systemd.NEXT_STEPS.format(workers=layout.workers, api=f"{settings.api_host}:{settings.api_port}"))
    return 0


# --- simulate ---------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    if args.what == "bench":
        from harness.bench.sim import run_simbench

        return run_simbench(args)
    from simulators.run import main as simulate

    settings = _settings()
    setup_logging(settings.log_level)
    paths = None
    if args.firmware or args.scenario:  # firmware in the loop: the CLI knows where firmware/ and its fakes live
        from nakhon.firmware_tools import FIRMWARE, MICROPYTHON, fakes_mpy, firmware_mpy
        from simulators.fil import FirmwarePaths

        paths = FirmwarePaths(FIRMWARE, fakes_mpy(), MICROPYTHON, firmware_mpy())
    return simulate(args, settings, firmware=paths)


# --- deadletter ---------------------------------------------------------------
def cmd_deadletter(args: argparse.Namespace) -> int:
    import orjson

    from ingest.deadletter import read_all

    folder = Path(args.dir) if args.dir else _settings().data_dir / "deadletter"
    counts: Counter[str] = Counter()
    shown = 0
    for rec in read_all(folder):
        if args.reason and rec.get("reason") != args.reason:
            continue
        counts[str(rec.get("reason"))] += 1
        if not args.summary and (args.limit is None or shown < args.limit):
            sys.stdout.write(orjson.dumps(rec).decode() + "\n")
            shown += 1
    if args.summary:
        for reason, n in counts.most_common():
            sys.stdout.write(f"{n:>10}  {reason}\n")
        sys.stdout.write(f"{sum(counts.values()):>10}  total\n")
    return 0


# --- dashboards ----------------------------------------------------------------
def cmd_dashboards(args: argparse.Namespace) -> int:
    from dashboards import build

    if args.action == "build":
        for path in build.write():
            sys.stdout.write(f"wrote {path.relative_to(build.ROOT.parent)}\n")
        return 0
    if args.action == "check":
        from dashboards import schema_check

        problems = build.check()
        for line in problems:
            sys.stdout.write(f"stale: {line}\n")
        errors = [] if args.no_schema else schema_check.check(build.dashboards())
        for line in errors:
            sys.stdout.write(f"schema: {line}\n")
        ok = not problems and not errors
        sys.stdout.write("dashboards: ok\n" if ok else "dashboards: run `nakhon dashboards build` or fix the builders\n")
        return 0 if ok else 1
    from dashboards import push

    settings = _settings()
    token, user, password = os.environ.get("GRAFANA_TOKEN"), os.environ.get("GRAFANA_USER"), os.environ.get("GRAFANA_PASSWORD")
    try:
        api = push.connect(args.url, token, user, password)
    except ValueError as exc:
        sys.stderr.write(f"nakhon dashboards push: {exc}\n")
        return 2
    ds = push.datasource_for(args.influx_url or settings.influx_url, settings.influx_db, settings.influx_username)
    try:
        done = push.push(api, build.dashboards(settings.cities.values()), ds, settings.influx_password)
    except Exception as exc:  # grafana-client raises its own and niquests' errors; say which Grafana failed
        sys.stderr.write(f"nakhon dashboards push: Grafana at {args.url} failed: {type(exc).__name__}: {exc}\n")
        return 1
    for line in done:
        sys.stdout.write(line + "\n")
    return 0


# --- firmware -----------------------------------------------------------------
def cmd_firmware(args: argparse.Namespace) -> int:
    from nakhon.firmware_tools import run_cli

    return run_cli(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nakhon", description="Nakhon smart-city sensor platform. Settings come from NAKHON_* environment variables.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run the whole platform locally, secured (TLS broker with per-device accounts, InfluxDB with authentication, "
                                           "ingest, alert evaluator, API, a simulated fleet provisioned like real devices)")
    up.add_argument("--root", default="var/local", help="folder for the local servers' config, data and logs (default var/local)")
    up.add_argument("--per-city", type=int, default=20, help="simulated devices per city (default 20)")
    up.add_argument("--interval", type=float, default=10.0, help="seconds between a device's readings (default 10)")
    up.add_argument("--no-fleet", action="store_true", help="do not start the simulated fleet")
    up.add_argument("--restart-limit", type=_positive(int), default=10, help="deaths in a row after which a service is given up on (default 10)")
    up.add_argument("--backoff-min", type=_positive(float), default=1.0, help="seconds before the first restart; doubles with each quick death (default 1)")
    up.add_argument("--backoff-max", type=_positive(float), default=30.0, help="longest wait between restarts in seconds (default 30)")
    up.add_argument("--stable", type=_positive(float), default=30.0, help="seconds a service must stay up to reset its backoff (default 30)")
    up.set_defaults(func=cmd_up)

    st = sub.add_parser("status", help="one line per service of a running `nakhon up`: state, restarts, health (exit 0 when all are well)")
    st.add_argument("--root", default="var/local", help="the --root of that `nakhon up` (default var/local)")
    st.set_defaults(func=cmd_status)

    ing = sub.add_parser("ingest", help="run the ingest service (MQTT -> InfluxDB)")
    ing.add_argument("--workers", type=int, default=None, help="worker processes on the shared subscription (default NAKHON_INGEST_WORKERS)")
    ing.add_argument("--worker", type=int, default=None, metavar="INDEX",
                     help="run only worker INDEX of NAKHON_INGEST_WORKERS in this process (one systemd unit per worker)")
    ing.add_argument("--health", action="store_true",
                     help="print whether readings flow through the running workers (their NAKHON_DATA_DIR/health files): exit 1 when they do not")
    ing.set_defaults(func=cmd_ingest)

    api = sub.add_parser("api", help="run the HTTP API")
    api.add_argument("--host", default=None, help="bind address (default NAKHON_API_HOST)")
    api.add_argument("--port", type=int, default=None, help="port (default NAKHON_API_PORT)")
    api.add_argument("--workers", type=int, default=None,
                     help="processes behind the one port (default NAKHON_API_WORKERS; 0 = one per core, at most 4)")
    api.set_defaults(func=cmd_api)

    al = sub.add_parser("alerts", help="the alert evaluator: rules over arriving telemetry, events to MQTT, InfluxDB and webhooks")
    al_sub = al.add_subparsers(dest="action", required=True, metavar="ACTION")
    alr = al_sub.add_parser("run", help="run the evaluator (subscribes to telemetry as nakhon_alerts; Ctrl-C stops it)")
    alc = al_sub.add_parser("check", help="validate the rules file and print the effective rules of each city (or one station)")
    alc.add_argument("--city", default=None, help="only this city")
    alc.add_argument("--station", default=None, help="the rules of this station (its overrides applied)")
    al_sub.add_parser("health", help="whether the running evaluator (its NAKHON_DATA_DIR/alerts/health.json) works: exit 1 when down")
    for p_ in (alr, alc):
        p_.add_argument("--rules", default=None, help="rules file, YAML or JSON (default NAKHON_ALERTS_RULES_FILE, else the built-in rules)")
    al.set_defaults(func=cmd_alerts)

    sd = sub.add_parser("systemd", help="systemd units for a Debian server without Docker (ingest workers, API; Debian's mosquitto and influxdb)")
    sd_sub = sd.add_subparsers(dest="action", required=True, metavar="ACTION")
    sdw = sd_sub.add_parser("write", help="write the units and configuration under a folder laid out like / (to read or package them)")
    sdw.add_argument("--root", required=True, help="folder standing for / (e.g. build/systemd)")
    sdi = sd_sub.add_parser("install", help="install them on this server (root): files, the nakhon user, systemctl daemon-reload")
    sdi.add_argument("--dry-run", action="store_true", help="print what would be written and run")
    for p_ in (sdw, sdi):
        p_.add_argument("--workers", type=_positive(int), default=1, help="ingest workers, one unit each (default 1)")
        p_.add_argument("--user", default="nakhon", help="the dedicated system user the units run as (default nakhon)")
        p_.add_argument("--mqtt-port", type=int, default=1883, help="port of Debian's mosquitto on 127.0.0.1 (default 1883)")
        p_.add_argument("--influx-port", type=int, default=8086, help="port of Debian's influxdb on 127.0.0.1 (default 8086)")
        p_.add_argument("--api-host", default=None, help="address the API binds (default NAKHON_API_HOST)")
        p_.add_argument("--api-port", type=int, default=None, help="port of the API (default NAKHON_API_PORT)")
        p_.add_argument("--nakhon-bin", default=None, help="the nakhon command the units run (default: the one of this installation)")
    sd.set_defaults(func=cmd_systemd)

    sim = sub.add_parser("simulate", help="run a simulated fleet against the broker (or `simulate bench`)")
    from simulators.arguments import add_arguments as simulate_arguments

    simulate_arguments(sim)
    sim.set_defaults(func=cmd_simulate)

    dl = sub.add_parser("deadletter", help="read the dead-letter store (rejected messages with their reasons)")
    dl.add_argument("--dir", default=None, help="dead-letter folder (default NAKHON_DATA_DIR/deadletter)")
    dl.add_argument("--reason", default=None, help="only this reason, e.g. bad_json")
    dl.add_argument("--limit", type=int, default=None, help="print at most this many records")
    dl.add_argument("--summary", action="store_true", help="count by reason instead of printing records")
    dl.set_defaults(func=cmd_deadletter)

    from nakhon.apicli import add_parsers as api_parsers  # device, apikey, broker-init

    api_parsers(sub)

    from nakhon.opscli import add_parsers as ops_parsers  # broker-config, certs, db-init, backup, restore

    ops_parsers(sub)

    # the measuring harness: api-bench, verify, bench
    from harness.bench.api import add_parser as api_bench_parser

    api_bench_parser(sub)

    from harness.verify.cli import add_parser as verify_parser

    verify_parser(sub)

    from harness.bench.run import add_parser as bench_parser

    bench_parser(sub)

    dash = sub.add_parser("dashboards", help="Grafana dashboards: build the JSON, check it, push it to a Grafana")
    dash_sub = dash.add_subparsers(dest="action", required=True, metavar="ACTION")
    dash_sub.add_parser("build", help="regenerate dashboards/json and the provisioning files from the builders")
    dcheck = dash_sub.add_parser("check", help="fail if the committed files differ from the builders or break Grafana's schema")
    dcheck.add_argument("--no-schema", action="store_true", help="skip the TypeScript check against @grafana/schema (needs node/npm)")
    dpush = dash_sub.add_parser(
        "push", help="upload the datasource and dashboards to a running Grafana (GRAFANA_TOKEN, or GRAFANA_USER + GRAFANA_PASSWORD)"
    )
    dpush.add_argument("--url", default=os.environ.get("GRAFANA_URL", "http://127.0.0.1:3000"),
                       help="Grafana's base URL (default GRAFANA_URL or http://127.0.0.1:3000)")
    dpush.add_argument("--influx-url", default=None, help="InfluxDB URL as Grafana reaches it (default NAKHON_INFLUX_URL)")
    dash.set_defaults(func=cmd_dashboards)

    fw = sub.add_parser("firmware", help="ESP32 firmware: build, flash, device config.json, type check, heap benchmark")
    fw_sub = fw.add_subparsers(dest="action", required=True, metavar="ACTION")
    fwb = fw_sub.add_parser("build", help="compile firmware/ with mpy-cross into a folder to copy to a board; print sizes")
    fwb.add_argument("--out", default="build/firmware", help="output folder (default build/firmware)")
    fwf = fw_sub.add_parser("flash", help="write MicroPython (esptool), the build and config.json (mpremote) to a board")
    fwf.add_argument("--port", required=True, help="serial port of the board, e.g. /dev/ttyUSB0")
    fwf.add_argument("--image", default=None, help="MicroPython ESP32 firmware .bin to write first (omit to update files only)")
    fwf.add_argument("--config", default=None, help="the device's config.json to copy (see `nakhon firmware config`)")
    fwf.add_argument("--build", default="build/firmware", help="folder made by `nakhon firmware build` (default build/firmware)")
    fwf.add_argument("--baud", type=int, default=460800, help="esptool baud rate (default 460800)")
    fwf.add_argument("--file", action="append", default=[], help="another file for the board's root, e.g. the CA named in mqtt.ca_file (repeat)")
    fwf.add_argument("--dry-run", action="store_true", help="print the exact commands instead of running them")
    fwc = fw_sub.add_parser("config", help="write a device's config.json, checked by the firmware's own boot check")
    fwc.add_argument("--device-id", required=True, help="device id, e.g. cm-air-001")
    fwc.add_argument("--city", required=True, help="city slug from the registry, e.g. chiang_mai")
    fwc.add_argument("--kind", required=True, choices=DEVICE_KINDS, help="device kind (picks the sensor preset)")
    fwc.add_argument("--lat", type=float, required=True, help="site latitude")
    fwc.add_argument("--lon", type=float, required=True, help="site longitude")
    fwc.add_argument("--wifi-ssid", required=True, help="Wi-Fi network name")
    fwc.add_argument("--wifi-password", default="", help="Wi-Fi password")
    fwc.add_argument("--mqtt-host", required=True, help="broker host name as the device reaches it")
    fwc.add_argument("--mqtt-port", type=int, default=None, help="broker port (default 8883 with --tls, else 1883)")
    fwc.add_argument("--tls", action="store_true", help="connect with TLS")
    fwc.add_argument("--insecure", action="store_true", help="with --tls: do not verify the broker's certificate")
    fwc.add_argument("--ca-file", default=None, help="with --tls: CA certificate file name on the board, e.g. ca.pem")
    fwc.add_argument("--username", default=None, help="MQTT username (default: the device id when --password is given)")
    fwc.add_argument("--password", default=None, help="MQTT password (from provisioning)")
    fwc.add_argument("--interval", type=int, default=60, help="seconds between readings (default 60)")
    fwc.add_argument("--sensor", action="append", default=None,
                     help="a sensor entry NAME=TYPE,key=value,... e.g. pm=pms5003,uart=2,rx=16,tx=17 (repeat; default: the kind's preset)")
    fwc.add_argument("--deep-sleep", action="store_true", help="battery node: read, publish or buffer, deep-sleep")
    fwc.add_argument("--out", default="config.json", help="file to write, - for stdout (default config.json)")
    fw_sub.add_parser("typecheck", help="mypy over firmware/ against the MicroPython ESP32 stubs")
    fwn = fw_sub.add_parser("bench", help="peak heap of a read-publish cycle and of a replay on the unix port, the built size, "
                                            "and the PM sensors' laser hours per day")
    fwn.add_argument("--readings", type=int, default=500, help="readings to replay (default 500)")
    fwn.add_argument("--root", default="var/fwbench", help="folder for the benchmark's broker and device (default var/fwbench)")
    fwn.add_argument("--laser-hours", type=float, default=2.0,
                     help="device-hours each laser on-time run covers (PM sensor sleep at 60 s and 300 s vs running on; default 2)")
    fwr = fw_sub.add_parser("release", help="publish a firmware version over the air to a cohort (API, admin key)")
    fwr.add_argument("--version", required=True, help="the version string (FW in firmware/lib/app.py; the devices report it as fw)")
    fwr.add_argument("--build", default=None, help="a folder made by `nakhon firmware build` (default: build firmware/ now)")
    fwr.add_argument("--device", action="append", default=[], help="a device id of the cohort (repeat)")
    fwr.add_argument("--city", default=None, help="every active device of this city (with --share: a share of them)")
    fwr.add_argument("--all", action="store_true", help="every active device (with --share: a share of them)")
    fwr.add_argument("--share", type=float, default=100.0, help="percent of the city's (or all) devices, drawn reproducibly (default 100)")
    fwr.add_argument("--boots", type=int, default=3, help="boots without a publish before a device rolls back (default 3)")
    fwr.add_argument("--minutes", type=int, default=10, help="minutes without a publish before a device rolls back (default 10)")
    fwr.add_argument("--chunk", type=int, default=1024, help="bytes per chunk message on the broker (256..3072, default 1024)")
    fwr.add_argument("--api", default=None, help="API base URL (default from NAKHON_API_HOST/NAKHON_API_PORT)")
    fwr.add_argument("--key", default=None, help="admin API key (default NAKHON_API_KEY)")
    fwl = fw_sub.add_parser("link", help="offer new link settings (Wi-Fi, broker, CA) to a cohort; kept where they work, else dropped")
    fwl.add_argument("--device", action="append", default=[], help="a device id of the cohort (repeat)")
    fwl.add_argument("--city", default=None, help="every active device of this city (with --share: a share of them)")
    fwl.add_argument("--all", action="store_true", help="every active device (with --share: a share of them)")
    fwl.add_argument("--share", type=float, default=100.0, help="percent of the city's (or all) devices (default 100)")
    fwl.add_argument("--wifi-ssid", default=None, help="the Wi-Fi network to use")
    fwl.add_argument("--wifi-password", default="", help="its password")
    fwl.add_argument("--mqtt-host", default=None, help="the broker's host name as the devices reach it")
    fwl.add_argument("--mqtt-port", type=int, default=None, help="the broker's TLS port")
    fwl.add_argument("--ca-file", default=None, help="a PEM file: the CA bundle the devices verify the broker with")
    fwl.add_argument("--minutes", type=int, default=10, help="minutes a device gives the new settings to carry a reading (default 10)")
    fwl.add_argument("--api", default=None, help="API base URL (default from NAKHON_API_HOST/NAKHON_API_PORT)")
    fwl.add_argument("--key", default=None, help="admin API key (default NAKHON_API_KEY)")
    fwo = fw_sub.add_parser("rollout", help="where a release stands: who runs it, who is staging or on probation, who refused or rolled back, why")
    fwo.add_argument("id", nargs="?", type=int, default=None, help="the release id (default: list the releases)")
    fwo.add_argument("--json", action="store_true", help="print the API's JSON")
    fwo.add_argument("--api", default=None, help="API base URL (default from NAKHON_API_HOST/NAKHON_API_PORT)")
    fwo.add_argument("--key", default=None, help="admin API key (default NAKHON_API_KEY)")
    fw.set_defaults(func=cmd_firmware)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc
