"""The firmware judges an update offer by the same rules as contract/ota.py (checked on
the MicroPython VM, as the firmware runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contract.ota import OtaError, check_offer
from tests.firmware.test_units import run_mp

pytestmark = pytest.mark.integration  # the MicroPython VM

SHA = "0123456789abcdef" * 4
GOOD: dict[str, Any] = {"v": 1, "id": 7, "fw": "0.4.0", "chunk": 1024, "boots": 3, "minutes": 10,
                        "files": [["app.mpy", SHA, 100], ["drivers/pm.mpy", SHA, 0]]}


def _with(**kw: Any) -> dict[str, Any]:
    return {**GOOD, **kw}


OFFERS: list[Any] = [
    GOOD,
    {"v": 1, "id": 0, "fw": "A1+b", "files": [["app.mpy", SHA, 1]]},
    _with(chunk=256),
    _with(chunk=3072, boots=20, minutes=1440),
    {"v": 1, "id": 8, "minutes": 5, "link": {"wifi": {"ssid": "city-iot-2", "password": "p" * 64}}},
    {"v": 1, "id": 8, "link": {"mqtt": {"host": "mqtt.example-city.th", "port": 8883, "ca": "-----BEGIN CERTIFICATE-----\nAA==\n"}}},
    {"v": 1, "id": 8, "link": {"wifi": {"ssid": "x"}, "mqtt": {"port": 1}}},
    _with(v=2),
    _with(id=-1),
    _with(id=1 << 31),
    _with(id="7"),
    _with(fw=""),
    _with(fw=".hidden"),
    _with(fw="x" * 33),
    _with(fw="1 2"),
    _with(chunk=255),
    _with(chunk=3073),
    _with(boots=0),
    _with(minutes=1441),
    _with(files=[]),
    _with(files=[["ota.mpy", SHA, 1]]),  # no app.mpy
    _with(files=[["app.mpy", SHA.upper(), 1]]),
    _with(files=[["app.mpy", SHA[:-1], 1]]),
    _with(files=[["app.mpy", SHA, -1]]),
    _with(files=[["app.py", SHA, 1]]),
    _with(files=[["app.mpy", SHA, 1], ["../boot.mpy", SHA, 1]]),
    _with(files=[["app.mpy", SHA, 1], ["/main.mpy", SHA, 1]]),
    _with(files=[["app.mpy", SHA, 1], ["drivers//x.mpy", SHA, 1]]),
    _with(files=[["app.mpy", SHA]]),
    _with(extra=1),
    {"v": 1, "id": 8, "link": {}},
    {"v": 1, "id": 8, "link": {"wifi": {"ssid": ""}}},
    {"v": 1, "id": 8, "link": {"wifi": {"ssid": "x" * 33}}},
    {"v": 1, "id": 8, "link": {"wifi": {"ssid": "x", "password": "p" * 65}}},
    {"v": 1, "id": 8, "link": {"wifi": {"ssid": "x", "bssid": "y"}}},
    {"v": 1, "id": 8, "link": {"mqtt": {}}},
    {"v": 1, "id": 8, "link": {"mqtt": {"host": "bad host"}}},
    {"v": 1, "id": 8, "link": {"mqtt": {"port": 65536}}},
    {"v": 1, "id": 8, "link": {"mqtt": {"ca": "not pem"}}},
    {"v": 1, "id": 8, "link": {"mqtt": {"user": "x"}}},
    {"v": 1, "id": 8, "link": {"ntp": "x"}},
    {"v": 1, "id": 8, "minutes": 0, "link": {"wifi": {"ssid": "x"}}},
    {"v": 1, "id": 8, "fw": "1.0", "link": {"wifi": {"ssid": "x"}}},
    [1, 2],
    "offer",
]


def test_device_and_contract_agree_on_offers(tmp_path: Path) -> None:
    (tmp_path / "docs.json").write_text(json.dumps(OFFERS))
    script = tmp_path / "judge.py"
    script.write_text("import json, app, otacheck\nprint(json.dumps([otacheck.offer_ok(d) for d in json.load(open('docs.json'))]))\n")
    proc = run_mp(script, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    device = json.loads(proc.stdout.splitlines()[-1])
    platform = []
    for doc in OFFERS:
        try:
            check_offer(doc)
            platform.append(True)
        except OtaError:
            platform.append(False)
    assert device == platform
    assert platform[:7] == [True] * 7 and not any(platform[7:])
