"""The local platform: broker, database, ingest, API and a simulated fleet.

`nakhon up` runs it in the foreground until Ctrl-C; tests and benchmarks use
the same pieces.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import date
from pathlib import Path

from api.registry import Device, Registry
from contract.influx import Influx
from contract.logs import kv
from contract.settings import Settings
from nakhon.procs import Service
from nakhon.servers import InfluxDB, Mosquitto, pick_port
from simulators.devices import KIND_METRICS, make_fleet

log = logging.getLogger("nakhon.up")


class LocalPlatform:
    def __init__(self, root: Path, settings: Settings, *, fleet_per_city: int = 20, interval_s: float = 10.0, with_fleet: bool = True,
                 seed: int = 1, prefix: str = "sim") -> None:
        self.root = Path(root).resolve()
        self.broker = Mosquitto(self.root / "mosquitto", pick_port(settings.mqtt_port))
        self.influxdb = InfluxDB(self.root / "influxdb", pick_port(settings.influx_url_port()), pick_port(18088))
        api_port = pick_port(settings.api_port)
        self.settings = settings.model_copy(
            update={"mqtt_port": self.broker.port, "influx_url": self.influxdb.url, "api_port": api_port, "data_dir": self.root / "data"}
        )
        logs = self.root / "logs"
        self.ingest = Service("ingest", ["ingest"], self.settings, logs)
        self.api = Service("api", ["api"], self.settings, logs)
        self.fleet_spec = (fleet_per_city, interval_s, seed, prefix)
        self.fleet = (
            Service("simulate", ["simulate", "--per-city", str(fleet_per_city), "--interval", str(interval_s), "--realtime",
                                 "--seed", str(seed), "--prefix", prefix], self.settings, logs)
            if with_fleet
            else None
        )

    def start(self) -> None:
        self.broker.start()
        log.info("broker started", extra=kv(port=self.broker.port, config=str(self.broker.config_path)))
        self.influxdb.start()
        with Influx(self.influxdb.url) as db:
            db.ensure_schema(self.settings.raw_retention, self.settings.hourly_retention)
        log.info("influxdb started", extra=kv(url=self.influxdb.url, config=str(self.influxdb.config_path)))
        self.ingest.start()
        if not self.ingest.wait_log('"msg":"connected"', 30):
            raise RuntimeError(f"ingest did not connect; see {self.ingest.log_path}")
        if self.fleet:
            n = register_fleet(self.settings, *self.fleet_spec)
            log.info("simulated fleet registered", extra=kv(devices=n, registry=str(self.settings.registry_path)))
        self.api.start()
        if self.fleet:
            self.fleet.start()

    def stop(self) -> None:
        for svc in (self.fleet, self.api, self.ingest):
            if svc is not None:
                svc.stop()
        self.influxdb.stop()
        self.broker.stop()

    def watch(self, stop: threading.Event) -> None:
        """Until `stop`: restart nothing, but say loudly when a part dies."""
        while not stop.wait(2.0):
            for svc in (self.ingest, self.api, self.fleet):
                if svc is not None and svc.proc is not None and not svc.running:
                    log.error("service exited", extra=kv(service=svc.name, log=str(svc.log_path)))
                    svc.proc = None
            time.sleep(0)


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
