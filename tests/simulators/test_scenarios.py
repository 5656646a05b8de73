"""Scenario files, fault specs and the `nakhon simulate` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nakhon.servers import Mosquitto
from simulators.faults import Fault, FaultError
from simulators.scenario import ScenarioError, duration, load, load_credentials, presets


@pytest.mark.parametrize("name", presets())
def test_presets_load(name: str) -> None:
    sc = load(name)
    assert sc.name == name and sc.per_city >= 1
    for f in sc.faults:
        assert isinstance(f, Fault)


def test_presets_cover_a_quick_demo_and_city_scale() -> None:
    assert {"demo", "city-scale"} <= set(presets())
    big = load("city-scale")
    assert big.per_city * 3 >= 10_000 and big.procs >= 2


def test_wrong_scenario_says_what_to_fix(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("per_cty: 3\n")
    with pytest.raises(ScenarioError, match="unknown keys \\['per_cty'\\]"):
        load(str(bad))
    bad.write_text("mode: warp\n")
    with pytest.raises(ScenarioError, match="mode 'warp' must be one of"):
        load(str(bad))
    bad.write_text("faults:\n  - {kind: meteor}\n")
    with pytest.raises(ScenarioError, match="unknown fault 'meteor'"):
        load(str(bad))
    with pytest.raises(ScenarioError, match="no scenario file"):
        load("no-such-preset")


def test_credentials_from_a_map_or_provisioned_configs(tmp_path: Path) -> None:
    (tmp_path / "creds.json").write_text('{"sim-p-air-00001": "s3cret"}')
    assert load_credentials(tmp_path / "creds.json") == {"sim-p-air-00001": "s3cret"}
    folder = tmp_path / "provisioned"
    folder.mkdir()
    (folder / "a.json").write_text('{"device_id": "cm-air-001", "mqtt": {"host": "h", "port": 1883, "password": "pw1"}}')
    (folder / "b.json").write_text('{"device_id": "cm-air-002", "mqtt": {"password": "pw2"}}')
    assert load_credentials(folder) == {"cm-air-001": "pw1", "cm-air-002": "pw2"}
    (tmp_path / "bad.json").write_text('["x"]')
    with pytest.raises(ScenarioError, match="expected a JSON object"):
        load_credentials(tmp_path / "bad.json")


def test_fault_specs_and_durations() -> None:
    f = Fault.parse("offline:devices=3,at_s=30,for_s=60")
    assert (f.kind, f.devices, f.at_s, f.for_s) == ("offline", 3, 30.0, 60.0)
    assert Fault.parse("malformed:reasons=bad_json+empty,count=2").reasons == ("bad_json", "empty")
    with pytest.raises(FaultError, match="cannot send"):
        Fault.parse("malformed:reasons=not_finite")
    with pytest.raises(FaultError, match="key=value"):
        Fault.parse("spike:often")
    assert [duration(x) for x in ("90", "90s", "15m", "6h", "7d")] == [90, 90, 900, 21600, 604800]
    with pytest.raises(ScenarioError):
        duration("soon")


def test_simulate_command_runs_and_summarises(broker: Mosquitto) -> None:
    env = dict(os.environ, NAKHON_MQTT_PORT=str(broker.port))
    proc = subprocess.run(
        [sys.executable, "-m", "nakhon", "simulate", "--per-city", "2", "--interval", "1", "--duration", "3s", "--quiet",
         "--fault", "duplicate:devices=1", "--no-confirm"],  # a bare broker: no ingest to confirm anything
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "readings sent / acked by broker              18 / 18" in proc.stdout
    assert "fault duplicate" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "nakhon", "simulate", "--cities", "atlantis"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown city" in bad.stderr
