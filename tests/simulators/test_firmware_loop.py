"""Firmware in the loop: the real firmware on the MicroPython unix port, its HAL fed by the city signals,
against the real broker, ingest and InfluxDB."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from contract.cities import BUILTIN_CITIES
from contract.influx import Influx
from contract.settings import Settings
from nakhon.firmware_tools import FIRMWARE, MICROPYTHON, fakes_mpy, firmware_mpy
from nakhon.procs import Service
from simulators.devices import make_fleet
from simulators.faults import Fault
from simulators.fil import FirmwareFleet, FirmwarePaths
from simulators.signals import Signals
from tests.helpers import wait_until

SCALE = 30.0  # device seconds per real second
INTERVAL_S = 60  # device seconds between readings: one every 2 s of real time


def _stored(influx: Influx, measurement: str, field: str, device: str) -> list[tuple[float, int, float]]:
    rows = influx.rows(f'SELECT "{field}", "seq" FROM "raw"."{measurement}" WHERE "device" = $d', {"d": device})
    return [(r["time"] / 1000, int(r["seq"]), float(r[field])) for r in rows if r[field] is not None]


def _seqs(influx: Influx, measurement: str, device: str) -> set[int]:
    return {int(r["seq"]) for r in influx.rows(f'SELECT "seq" FROM "raw"."{measurement}" WHERE "device" = $d', {"d": device})}


def test_firmware_devices_carry_the_city_signals_and_survive_wifi_loss(settings: Settings, ingest: Service, influx: Influx, workdir: Path) -> None:
    fleet = make_fleet(list(BUILTIN_CITIES), 20, seed=2, prefix="fw")
    air = next(d for d in fleet if d.city == "chiang_mai" and d.kind == "air")
    water = next(d for d in fleet if d.city == "phuket" and d.kind == "water")
    weather = next(d for d in fleet if d.city == "khon_kaen" and d.kind == "weather")
    paths = FirmwarePaths(FIRMWARE, fakes_mpy(), MICROPYTHON, firmware_mpy())
    faults = [
        Fault("offline", at_s=400, for_s=300, device_ids=(air.device_id,)),  # Wi-Fi gone for 5 device-minutes
        Fault("hang", at_s=300, for_s=150, device_ids=(weather.device_id,)),  # the BME280 stops answering: the watchdog bites
    ]
    fw = FirmwareFleet([air, water, weather], workdir / "fil", paths, "127.0.0.1", settings.mqtt_port, seed=2, interval_s=INTERVAL_S,
                       scale=SCALE, behind_s=3 * 3600, faults=faults, feed_s=0.5)
    fw.start()
    measurements = ("air", "water", "weather")
    taken: dict[str, list[int]] = {}  # what each board had taken when everything it took was stored

    def all_taken_stored() -> bool:
        snapshot = {d.dev.device_id: d.readings() for d in fw.devices}
        for d, meas in zip(fw.devices, measurements, strict=True):
            if not _seqs(influx, meas, d.dev.device_id) >= set(snapshot[d.dev.device_id]):
                return False
        taken.update(snapshot)
        return True

    try:
        wait_until(lambda: len(fw.devices[0].readings()) >= 18, 90, interval=0.5, what="18 readings from the firmware")
        # the last readings out of the ring: stop once a snapshot of every board's readings is all stored
        wait_until(all_taken_stored, 60, interval=0.5, what="every reading the boards took, stored")
    finally:
        fw.stop()
    summary = fw.summary()
    assert summary["crashes"] == 0 and summary["faults"] == {"offline": 1, "hang": 1}
    fa, fwat, fwea = fw.devices
    assert summary["resets"] >= 1 and "watchdog" in fwea.log_text()  # the hung sensor reset the board, which came back
    assert "wifi" in fa.log_text().lower() or "net:" in fa.log_text()

    signals = Signals(2)
    for dev, meas, field, tol in ((fa, "air", "pm25", lambda v: 6 + 0.25 * v), (fwat, "water", "water_level_cm", lambda v: 6.0)):
        # every reading the firmware took is stored once, through the Wi-Fi outage (ring buffer, replay)
        rows = _stored(influx, meas, field, dev.dev.device_id)
        seqs = sorted(s for _, s, _ in rows)
        assert seqs == sorted(set(seqs)) and set(taken[dev.dev.device_id]) <= set(seqs)
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), "a gap in the stored readings"
        # ... and the values are the city's: what the signal model says at the reading's own time
        ts = np.array([t for t, _, _ in rows])
        model = signals.sample(dev.dev, ts, INTERVAL_S)[field]
        got = np.array([v for _, _, v in rows])
        off = np.abs(got - model)
        assert (off <= np.array([tol(v) for v in model])).mean() >= 0.9, list(zip(got.tolist(), model.tolist(), strict=True))
    # the board that was reset by its watchdog stored every reading it took (the hung sensor sat some out),
    # and its temperature is the city's
    assert _seqs(influx, "weather", weather.device_id) >= set(taken[weather.device_id])
    rows = _stored(influx, "weather", "temp_c", weather.device_id)
    model = signals.sample(weather, np.array([t for t, _, _ in rows]), INTERVAL_S)["temp_c"]
    assert len(rows) >= 5 and np.mean(np.abs(np.array([v for _, _, v in rows]) - model) <= 1.5) >= 0.9
