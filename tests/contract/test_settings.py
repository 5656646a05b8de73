"""Settings: wrong values fail at start-up with a message that says what to fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from contract.cities import BUILTIN_CITIES
from contract.settings import ConfigError, load_settings


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"mqtt_port": "70000"}, "NAKHON_MQTT_PORT"),
        ({"influx_url": "localhost:8086"}, "NAKHON_INFLUX_URL: must be an http"),
        ({"raw_retention": "forever"}, "NAKHON_RAW_RETENTION"),
        ({"ingest_batch_size": "0"}, "NAKHON_INGEST_BATCH_SIZE"),
        ({"log_level": "LOUD"}, "NAKHON_LOG_LEVEL"),
        ({"mqtt_username": "ingest"}, "set both NAKHON_MQTT_USERNAME and NAKHON_MQTT_PASSWORD"),
        ({"influx_db": "bad name"}, "NAKHON_INFLUX_DB"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(**env)


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAKHON_MQTT_PORT", "1999")
    monkeypatch.setenv("NAKHON_INGEST_WORKERS", "3")
    s = load_settings()
    assert (s.mqtt_port, s.ingest_workers) == (1999, 3)


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match="NAKHON_MQTT_PROT"):
        load_settings(mqtt_prot=1)


@pytest.mark.integration  # the CLI as a process
def test_cli_exits_2_with_the_message() -> None:
    env = {"NAKHON_MQTT_PORT": "abc", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "nakhon", "ingest"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "NAKHON_MQTT_PORT" in proc.stderr and "valid integer" in proc.stderr


def test_cities_by_configuration(tmp_path: Path) -> None:
    extra = tmp_path / "cities.json"
    extra.write_text(json.dumps([{"slug": "hat_yai", "name_en": "Hat Yai", "name_th": "หาดใหญ่", "lat": 7.0084, "lon": 100.4747}]))
    s = load_settings(cities_file=extra)
    assert set(s.cities) == {"phuket", "khon_kaen", "chiang_mai", "hat_yai"}
    extra.write_text(json.dumps([{"slug": "Hat Yai", "name_en": "x", "name_th": "x", "lat": 0, "lon": 0}]))
    with pytest.raises(ConfigError, match=r"NAKHON_CITIES_FILE.*slug"):
        load_settings(cities_file=extra)


def test_builtin_cities() -> None:
    by_slug = {c.slug: c for c in BUILTIN_CITIES}
    assert set(by_slug) == {"phuket", "khon_kaen", "chiang_mai"}
    assert by_slug["chiang_mai"].name_th == "เชียงใหม่"
    assert all(c.tz == "Asia/Bangkok" and 5 < c.lat < 21 and 97 < c.lon < 106 for c in BUILTIN_CITIES)
