"""The local platform: broker, database, ingest, alert evaluator, API and a simulated fleet.

`nakhon up` runs it in the foreground until Ctrl-C; tests and benchmarks use
the same pieces.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

from alerts import health as alerts_health
from api.registry import Device, Registry
from contract.influx import Influx
from contract.logs import kv
from contract.settings import Settings
from nakhon import leftovers, status
from nakhon.procs import Service
from nakhon.servers import InfluxDB, Mosquitto, pick_port
from nakhon.supervisor import Policy, Supervisor, UnitState
from simulators.devices import KIND_METRICS, make_fleet

log = logging.getLogger("nakhon.up")


class LocalPlatform:
    def __init__(self, root: Path, settings: Settings, *, fleet_per_city: int = 20, interval_s: float = 10.0, with_fleet: bool = True,
                 seed: int = 1, prefix: str = "sim") -> None:
        self.root = Path(root).resolve()
        self.broker = Mosquitto(self.root / "mosquitto", pick_port(settings.mqtt_port))
        self.influxdb = InfluxDB(self.root / "influxdb", pick_port(settings.influx_url_port()), pick_port(18088))
        # after a crash InfluxDB replays its write-ahead log before it answers: minutes with a big one
        self.influxdb.ready_timeout_s = 300.0
        api_port = pick_port(settings.api_port)
        self.settings = settings.model_copy(
            update={"mqtt_port": self.broker.port, "influx_url": self.influxdb.url, "api_port": api_port, "data_dir": self.root / "data"}
        )
        logs = self.root / "logs"
        self.ingest = Service("ingest", ["ingest"], self.settings, logs)
        self.api = Service("api", ["api"], self.settings, logs)
        self.alerts = Service("alerts", ["alerts", "run"], self.settings, logs)
        self.fleet_spec = (fleet_per_city, interval_s, seed, prefix)
        self.fleet = (
            Service("simulate", ["simulate", "--per-city", str(fleet_per_city), "--interval", str(interval_s), "--realtime",
                                 "--seed", str(seed), "--prefix", prefix], self.settings, logs)
            if with_fleet
            else None
        )
        self.supervisor: Supervisor | None = None
        self.status_path = self.root / "status.json"
        self._lines: dict[str, str] = {}

    def start(self) -> None:
        left = leftovers.find(self.status_path, self.root)  # AlreadyRunning when another nakhon up runs here
        if left:
            log.warning("stopping what a previous nakhon up left running", extra=kv(services=[f"{n} (pid {p})" for n, p in left]))
            leftovers.stop(left)
        self.broker.start()
        log.info("broker started", extra=kv(port=self.broker.port, config=str(self.broker.config_path)))
        self.influxdb.start()
        with Influx(self.influxdb.url) as db:
            db.ensure_schema(self.settings.raw_retention, self.settings.hourly_retention)
        log.info("influxdb started", extra=kv(url=self.influxdb.url, config=str(self.influxdb.config_path)))
        self.ingest.start()
        if not self.ingest.wait_log('"msg":"connected"', 30):
            raise RuntimeError(f"ingest did not connect; see {self.ingest.log_path}")
        self.alerts.start()
        if not self.alerts.wait_log('"msg":"connected"', 30):
            raise RuntimeError(f"the alert evaluator did not connect; see {self.alerts.log_path}")
        if self.fleet:
            n = register_fleet(self.settings, *self.fleet_spec)
            log.info("simulated fleet registered", extra=kv(devices=n, registry=str(self.settings.registry_path)))
        self.api.start()
        if self.fleet:
            self.fleet.start()

    @property
    def services(self) -> list[Any]:
        """Everything `nakhon up` runs, in start order."""
        return [self.broker, self.influxdb, self.ingest, self.alerts, self.api, *([self.fleet] if self.fleet else [])]

    def supervise(self, policy: Policy | None = None) -> Supervisor:
        """Restart whatever dies from now on (see nakhon.supervisor)."""
        self.supervisor = Supervisor(self.services, policy, on_change=self._changed)
        self.supervisor.start()
        return self.supervisor

    def stop(self) -> None:
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


def register_fleet(settings: Settings, per_city: int, interval_s: float, seed: int, prefix: str) -> int:
    """Put the simulated devices in the API's registry with their coordinates, as provisioning would put real ones,
    so the city maps, the GeoJSON and the open-data metadata know them. Their broker access is not touched."""
    cities = [settings.cities[c] for c in sorted(settings.cities)]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    devices = [
        Device(id=d.device_id, city=d.city, kind=d.kind, sensors=list(KIND_METRICS[d.kind]), lat=d.lat, lon=d.lon,
               installed=date.fromisoformat(today), fw="simulator", interval_s=max(1, round(interval_s)))
        for d in make_fleet(cities, per_city, seed=seed, prefix=prefix)
    ]
    Registry(settings.registry_path).import_devices(devices)
    return len(devices)
