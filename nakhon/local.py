"""The local platform: broker, database, ingest, alert evaluator, API and a simulated fleet, secured.

`nakhon up` runs it in the foreground until Ctrl-C; tests and `nakhon verify`
attack what this code starts. On the first run under its folder it makes:

- a throw-away CA and a broker certificate for `localhost`
  (`certs/ca.pem` is what devices trust);
- the platform's secrets (`secrets.json`, mode 600): broker accounts for the
  API (provisioning), the ingest and a read-only observer; InfluxDB's admin
  and one user per service;
- the broker's dynamic-security file (default deny, the platform accounts),
  which the broker then keeps up to date as devices are provisioned;
- the first admin API key (in `secrets.json` too: a local, throw-away setup), with
  which the simulated fleet registers its devices through the API, as a technician
  would (`nakhon simulate --provision`).

The broker has no anonymous access: devices (and the simulated fleet, each
device with its own provisioned credentials) use the TLS listener; platform
services use a plain listener bound to 127.0.0.1. InfluxDB runs with
authentication on and every service logs in with its own least-privileged
user; the admin is used only here, at start-up, to create them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from alerts import health as alerts_health
from api.broker import DynSec, ensure_alerts_account, ensure_roles, write_bootstrap
from api.registry import Device, Registry
from contract.logs import kv
from contract.settings import Settings
from nakhon import accounts, leftovers, status
from nakhon.procs import Service
from nakhon.servers import InfluxDB, Mosquitto, make_certs, pick_port
from nakhon.supervisor import Policy, Supervisor, UnitState
from simulators.devices import KIND_METRICS, make_fleet

log = logging.getLogger("nakhon.up")

TLS_PORT = 18883  # the device listener (8883 in compose), moved up when taken
CERT_DAYS = 825


class LocalPlatform:
    def __init__(self, root: Path, settings: Settings, *, fleet_per_city: int = 20, interval_s: float = 10.0, with_fleet: bool = True,
                 seed: int = 1, prefix: str = "sim", secure: bool = True, tls_port: int | None = None,
                 own_services: tuple[str, ...] = ("ingest", "alerts", "api")) -> None:
        self.root = Path(root).resolve()
        self.secure = secure
        # which of the platform's own services start (the harness may want the servers and an ingest only)
        self.own_services = own_services
        if with_fleet and "api" not in own_services:
            raise ValueError("the simulated fleet registers through the API: run the API with it")
        self.fleet_per_city = fleet_per_city
        self.interval_s = interval_s
        self.certs = self.root / "certs"
        self.secrets_path = self.root / "secrets.json"
        self.dynsec_file = self.root / "mosquitto" / "dynamic-security.json"
        self.credentials_path = self.root / "fleet" / "credentials.json"
        self.ca: Path | None = None
        self.admin_key: str | None = None
        tls_port = pick_port(tls_port or TLS_PORT) if secure else None
        if secure:
            self.ca, cert, key = self._certs()
            self.secrets = accounts.load_or_create(self.secrets_path)
            if not self.dynsec_file.exists():  # afterwards the broker owns it (provisioned devices live there)
                write_bootstrap(self.dynsec_file, (accounts.BROKER_ADMIN, self.secrets["broker_admin"]),
                                (accounts.BROKER_INGEST, self.secrets["broker_ingest"]),
                                (accounts.BROKER_OBSERVER, self.secrets["broker_observer"]),
                                (accounts.BROKER_ALERTS, self.secrets["broker_alerts"]))
            self.broker = Mosquitto(self.root / "mosquitto", pick_port(settings.mqtt_port), allow_anonymous=False, tls_port=tls_port,
                                    tls_files=(self.ca, cert, key), dynsec_file=self.dynsec_file)
        else:  # a bare rig for fault scenarios that publish without accounts (nakhon verify's stream checks)
            self.secrets = {}
            self.broker = Mosquitto(self.root / "mosquitto", pick_port(settings.mqtt_port))
        self.influxdb = InfluxDB(self.root / "influxdb", pick_port(settings.influx_url_port()), auth=secure)  # backup port: any free one (run.json names it)
        # after a crash InfluxDB replays its write-ahead log before it answers: minutes with a big one
        self.influxdb.ready_timeout_s = 300.0
        api_port = pick_port(settings.api_port)
        self.settings = settings.model_copy(
            update={"mqtt_port": self.broker.port, "influx_url": self.influxdb.url, "api_port": api_port, "data_dir": self.root / "data"}
        )
        s = self.secrets
        if secure:
            assert self.ca is not None and tls_port is not None
            self.device_endpoint = ("localhost", tls_port)
            ingest_settings = self.settings.model_copy(update={
                "mqtt_username": accounts.BROKER_INGEST, "mqtt_password": s["broker_ingest"],
                "influx_username": accounts.INFLUX_INGEST, "influx_password": s["influx_ingest"]})
            alerts_settings = self.settings.model_copy(update={
                "mqtt_username": accounts.BROKER_ALERTS, "mqtt_password": s["broker_alerts"],
                "influx_username": accounts.INFLUX_ALERTS, "influx_password": s["influx_alerts"]})
            api_settings = self.settings.model_copy(update={
                "broker_admin_username": accounts.BROKER_ADMIN, "broker_admin_password": s["broker_admin"],
                "influx_username": accounts.INFLUX_API, "influx_password": s["influx_api"],
                "device_mqtt_host": "localhost", "device_mqtt_port": tls_port, "device_mqtt_tls": True, "device_ca_file": self.ca})
            # the fleet dials what a device dials: the TLS listener, by the name in the certificate
            fleet_settings = self.settings.model_copy(update={"mqtt_host": "localhost", "mqtt_port": tls_port, "mqtt_tls": True,
                                                              "mqtt_ca_file": self.ca})
            fleet_args = ["--credentials", str(self.credentials_path), "--provision", f"http://127.0.0.1:{api_port}"]
        else:
            self.device_endpoint = ("127.0.0.1", self.broker.port)
            ingest_settings = api_settings = fleet_settings = alerts_settings = self.settings
            fleet_args = []
        self.api_settings = api_settings
        logs = self.root / "logs"
        self.ingest = Service("ingest", ["ingest"], ingest_settings, logs)
        self.api = Service("api", ["api"], api_settings, logs)
        self.alerts = Service("alerts", ["alerts", "run"], alerts_settings, logs)
        self.fleet_spec = (fleet_per_city, interval_s, seed, prefix)
        self.fleet = (
            Service("simulate", ["simulate", "--per-city", str(fleet_per_city), "--interval", str(interval_s), "--realtime",
                                 "--seed", str(seed), "--prefix", prefix, *fleet_args], fleet_settings, logs)
            if with_fleet
            else None
        )
        self.supervisor: Supervisor | None = None
        self.status_path = self.root / "status.json"
        self._lines: dict[str, str] = {}

    # --- first run ---------------------------------------------------------------
    def _certs(self) -> tuple[Path, Path, Path]:
        ca, cert, key = self.certs / "ca.pem", self.certs / "server.pem", self.certs / "server.key"
        if not (ca.exists() and cert.exists() and key.exists()):
            make_certs(self.certs, "localhost", days=CERT_DAYS)  # devices dial the name; an address is not in it
            log.info("made a local CA and broker certificate", extra=kv(ca=str(ca)))
        return ca, cert, key

    def _first_admin_key(self, registry: Registry) -> str:
        token = self.secrets.get("admin_api_key")
        if token and registry.authenticate(token) is not None:
            return token
        _key, token = registry.create_key("nakhon up (local admin)", "admin")
        self.secrets["admin_api_key"] = token
        fd = os.open(self.secrets_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.secrets, fh, indent=2)
        return token

    def _api_answers(self, timeout: float) -> bool:
        """The API answers /healthz. Not its log line: with several worker processes the parent says
        "running" before the workers take connections."""
        s = self.settings
        scheme = "https" if s.api_tls_cert_file else "http"
        host = "127.0.0.1" if s.api_host in ("0.0.0.0", "::", "") else s.api_host
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.api.running:
            try:
                if httpx.get(f"{scheme}://{host}:{s.api_port}/healthz", timeout=2.0, verify=False).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        return False

    # --- running -----------------------------------------------------------------
    def start(self) -> None:
        left = leftovers.find(self.status_path, self.root)  # AlreadyRunning when another nakhon up runs here
        if left:
            log.warning("stopping what a previous nakhon up left running", extra=kv(services=[f"{n} (pid {p})" for n, p in left]))
            leftovers.stop(left)
        self.broker.start()
        log.info("broker started", extra=kv(port=self.broker.port, tls_port=self.broker.tls_port, config=str(self.broker.config_path)))
        if self.secure:  # a folder set up by an older version: roles brought up to date, the alert evaluator's account made
            dynsec = DynSec("127.0.0.1", self.broker.port, accounts.BROKER_ADMIN, self.secrets["broker_admin"])
            up = ensure_roles(dynsec)
            if up.roles_created or up.acls_added:
                log.info("broker roles brought up to date", extra=kv(roles_created=up.roles_created, acls_added=up.acls_added,
                                                                     roles_changed=len(up.roles_changed), device_roles=up.device_roles,
                                                                     clients_reconnected=up.clients_reconnected))
            if up.skipped:
                log.warning("device roles left as they are (no topic names their city)", extra=kv(roles=up.skipped[:20], count=len(up.skipped)))
            ensure_alerts_account(dynsec, accounts.BROKER_ALERTS, self.secrets["broker_alerts"])
        self.influxdb.start()
        s = self.settings
        if self.secure:
            accounts.init_influx(self.influxdb.url, s.influx_db, self.secrets["influx_admin"],
                                 {u: self.secrets[f"influx_{u.removeprefix('nakhon_')}"] for u in accounts.INFLUX_USERS},
                                 s.raw_retention, s.hourly_retention)
            self.admin_key = self._first_admin_key(Registry(s.registry_path))
        else:
            from contract import rollups
            from contract.influx import Influx

            with Influx(self.influxdb.url) as db:
                db.ensure_schema(s.raw_retention, s.hourly_retention)
                db.execute(rollups.schema_statements(s.influx_db))
        log.info("influxdb started", extra=kv(url=self.influxdb.url, auth=self.secure, config=str(self.influxdb.config_path)))
        # where `nakhon backup` finds this running platform's database
        (self.root / "run.json").write_text(json.dumps({"pid": os.getpid(), "influx_rpc": self.influxdb.rpc_port, "database": s.influx_db}))
        if "ingest" in self.own_services:
            self.ingest.start()
            if not self.ingest.wait_log('"msg":"connected"', 30):
                raise RuntimeError(f"ingest did not connect; see {self.ingest.log_path}")
        if "alerts" in self.own_services:
            self.alerts.start()
            if not self.alerts.wait_log('"msg":"connected"', 30):
                raise RuntimeError(f"the alert evaluator did not connect; see {self.alerts.log_path}")
        if self.fleet and not self.secure:  # the open rig: registered directly (secured, they are provisioned below)
            n = register_fleet(self.settings, *self.fleet_spec)
            log.info("simulated fleet registered", extra=kv(devices=n, registry=str(self.settings.registry_path)))
        if "api" not in self.own_services:
            return
        self.api.start()
        api_up = self._api_answers(60)
        if not api_up:  # the supervisor takes it from here (restarts, or gives up loudly); the rest runs on
            log.error("the API did not start", extra=kv(log=str(self.api.log_path)))
        if self.fleet:
            if self.admin_key:  # the fleet registers its devices through the API, as a technician does
                self.fleet.env["NAKHON_API_KEY"] = self.admin_key
            self.fleet.start()
            # provisioned (registered with coordinates, credentials kept) before it reports ready: wait for that
            if api_up and not self.fleet.wait_log('"msg":"fleet starting"', 300):
                log.error("the simulated fleet did not start", extra=kv(log=str(self.fleet.log_path)))

    @property
    def services(self) -> list[Any]:
        """Everything `nakhon up` runs, in start order."""
        own = [svc for svc in (self.ingest, self.alerts, self.api) if svc.name in self.own_services]
        return [self.broker, self.influxdb, *own, *([self.fleet] if self.fleet else [])]

    def supervise(self, policy: Policy | None = None) -> Supervisor:
        """Restart whatever dies from now on (see nakhon.supervisor)."""
        self.supervisor = Supervisor(self.services, policy, on_change=self._changed)
        self.supervisor.start()
        return self.supervisor

    def stop(self) -> None:
        (self.root / "run.json").unlink(missing_ok=True)
        if self.supervisor is not None:  # first, or it would restart what we stop
            self.supervisor.stop()
        for svc in (self.fleet, self.api, self.alerts, self.ingest):
            if svc is not None:
                svc.stop()
        self.influxdb.stop()
        self.broker.stop()
        if self.supervisor is not None:
            self.supervisor.all_stopped()
            self.report(log_changes=False)

    # --- status ---------------------------------------------------------------
    def _changed(self, unit: UnitState) -> None:
        log.debug("service state", extra=kv(service=unit.name, state=unit.state, pid=unit.pid, restarts=unit.restarts, last_exit=unit.last_exit))

    def _health(self, name: str) -> tuple[str, str]:
        s = self.settings
        if name == self.broker.name:
            return status.broker_health("127.0.0.1", self.broker.port)
        if name == self.influxdb.name:
            return status.influxdb_health(self.influxdb.url)
        if name == self.ingest.name:
            return status.ingest_health(s.data_dir / "health", self._pids(self.ingest))
        if name == self.api.name:
            return status.api_health(s.api_host, s.api_port)
        if name == self.alerts.name:
            return alerts_health.judge(s.data_dir / "alerts" / "health.json", self.alerts.proc.pid if self.alerts.proc else None)
        return "", ""

    @staticmethod
    def _pids(svc: Service) -> set[int] | None:
        """The ingest's process and its worker processes (children of the same group)."""
        proc = svc.proc
        if proc is None:
            return set()
        pids = {proc.pid}
        try:
            entries = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]
        except OSError:
            return None  # no /proc: take every fresh health file
        for pid in entries:
            try:
                if os.getpgid(pid) == proc.pid:
                    pids.add(pid)
            except OSError:  # gone meanwhile
                continue
        return pids

    def report(self, log_changes: bool = True) -> list[str]:
        """Probe every service; log the lines that changed; keep them in status.json. Returns the lines."""
        assert self.supervisor is not None
        entries = self.supervisor.snapshot()
        for e in entries:
            e["health"], e["health_detail"] = self._health(e["name"]) if e["state"] == "running" else ("", "")
        lines = []
        for e in entries:
            text = status.line(e)
            lines.append(text)
            key = f"{e['state']}|{e['health']}|{e['restarts']}"
            if log_changes and self._lines.get(e["name"]) != key:
                level = logging.INFO if e["health"] in ("ok", "") and e["state"] == "running" else logging.WARNING
                log.log(level, "service status", extra=kv(service=e["name"], state=e["state"], health=e["health"], detail=e["health_detail"], line=text))
            self._lines[e["name"]] = key
        try:
            status.write_file(self.status_path, entries)
        except OSError as exc:
            log.warning("cannot write the status file", extra=kv(path=str(self.status_path), error=str(exc)))
        return lines

    def watch(self, stop: threading.Event, show: threading.Event | None = None, retry: threading.Event | None = None, every_s: float = 2.0) -> None:
        """Until `stop`: probe and log changes every `every_s`; print every line when `show` is set; retry given-up services on `retry`."""
        if self.supervisor is None:
            self.supervise()
        due = 0.0
        while not stop.is_set():
            wanted = show is not None and show.is_set()
            if wanted or time.monotonic() >= due:
                lines = self.report()
                due = time.monotonic() + every_s
            if wanted and show is not None:
                show.clear()
                sys.stderr.write("".join(f"  {t}\n" for t in lines))
                sys.stderr.flush()
            if retry is not None and retry.is_set():
                retry.clear()
                assert self.supervisor is not None
                names = self.supervisor.retry_failed()
                log.warning("retrying failed services", extra=kv(services=names))
                due = 0.0
            stop.wait(0.2)

    def where(self) -> str:
        """What to print for the user: where everything is and how to use it."""
        s = self.settings
        base = f"http://{s.api_host}:{s.api_port}"
        lines = [
            "",
            "Nakhon is running locally. Ctrl-C stops everything.",
            f"  API docs     {base}/docs  (and /redoc)",
            f"  Air quality  {base}/air  (public page per city)",
            f"  Latest       {base}/v1/cities/chiang_mai/latest",
            f"  InfluxDB     {s.influx_url}  (database {s.influx_db}, authentication on)",
            f"  Dead letters nakhon deadletter --dir {s.data_dir / 'deadletter'}",
            f"  Logs         {self.root / 'logs'}",
        ]
        if self.secure:
            host, port = self.device_endpoint
            lines += [
                f"  Devices      mqtts://{host}:{port}  (TLS; each device its own account; CA {self.ca})",
                f"  Services     mqtt://127.0.0.1:{s.mqtt_port}  (loopback only, platform accounts; no anonymous access anywhere)",
                f"  Secrets      {self.secrets_path}  (mode 600: broker and InfluxDB accounts, the first admin key)",
                "",
                "  Admin key (local, throw-away; make more with `nakhon apikey create`):",
                f"    export NAKHON_API_KEY={self.admin_key} NAKHON_API_PORT={s.api_port}",
                "  Provision a device (writes its config.json, CA and TLS port inside):",
                "    nakhon device provision --id cm-air-901 --city chiang_mai --kind air --sensors pm25,pm10,temp_c,rh --lat 18.79 --lon 98.98",
                "  Watch the stream as the read-only observer:",
                f"    mosquitto_sub -h {host} -p {port} --cafile {self.ca} -u {accounts.BROKER_OBSERVER} "
                f"-P {self.secrets['broker_observer']} -t 'nakhon/v1/#' -v",
            ]
        else:
            lines.append(f"  Broker       mqtt://127.0.0.1:{s.mqtt_port}  (open test rig)")
        return "\n".join(lines) + "\n\n"


def register_fleet(settings: Settings, per_city: int, interval_s: float, seed: int, prefix: str) -> int:
    """Put the simulated devices in the API's registry with their coordinates (the open rig, whose broker has no
    accounts), so the city maps, the GeoJSON and the open-data metadata know them."""
    cities = [settings.cities[c] for c in sorted(settings.cities)]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    devices = [
        Device(id=d.device_id, city=d.city, kind=d.kind, sensors=list(KIND_METRICS[d.kind]), lat=d.lat, lon=d.lon,
               installed=date.fromisoformat(today), fw="simulator", interval_s=max(1, round(interval_s)))
        for d in make_fleet(cities, per_city, seed=seed, prefix=prefix)
    ]
    Registry(settings.registry_path).import_devices(devices)
    return len(devices)
