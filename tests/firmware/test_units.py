"""Drivers and the flash ring on the real MicroPython VM (heap capped), against the fakes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from contract.catalogue import METRICS
from nakhon.firmware_tools import typecheck
from tests.firmware.device import HEAPSIZE, MICROPYTHON, compiled_fakes, compiled_lib

pytestmark = pytest.mark.integration  # the MicroPython VM

HERE = Path(__file__).resolve().parent


def run_mp(script: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MICROPYPATH=f"{compiled_lib()}:{compiled_fakes()}:.frozen")
    return subprocess.run([MICROPYTHON, "-X", f"heapsize={HEAPSIZE}", str(script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def checks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    proc = run_mp(HERE / "mp_units.py", tmp_path_factory.mktemp("units"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            out[doc["check"]] = doc
    return out


@pytest.fixture(scope="module")
def pm_checks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    proc = run_mp(HERE / "mp_pm.py", tmp_path_factory.mktemp("pm"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {d["check"]: d for d in (json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{"))}


@pytest.mark.parametrize("kind", ["pms5003", "sds011"])
def test_pm_readings_are_fresh_trimmed_means_and_never_corrupt(pm_checks: dict[str, dict[str, Any]], kind: str) -> None:
    c = pm_checks[kind]
    base = 40 if kind == "pms5003" else 55  # the fake sends pm2.5 = base + k % 5 in frame k, a corrupt one 999
    if kind == "pms5003":
        assert c["overflow"] == 0  # passive mode: a frame only when asked, nothing piles up in the UART's 1 KB
    start = c["before"]
    for m, err, frames in c["reads"]:
        assert err is None
        # the mean of five frames without the lowest and highest, never a corrupt one (999)
        assert base <= m["pm25"] <= base + 4, m
        if kind == "sds011":
            assert frames - start >= 5  # five frames that arrived after the reading began (the old ones dropped)
        start = frames


@pytest.mark.parametrize("kind", ["pms5003", "sds011"])
def test_pm_sensor_sleeps_and_warms_up(pm_checks: dict[str, dict[str, Any]], kind: str) -> None:
    c = pm_checks[kind]
    warm = 30000 if kind == "pms5003" else 15000
    base = 40 if kind == "pms5003" else 55
    assert warm - 2000 < c["warm"][0] <= warm and warm - 1000 < c["warm"][1] <= warm  # woken at start, and again after sleeping
    assert c["asleep"]  # the sensor took the sleep command (its datasheet's), not only the driver
    assert c["meter"][0] == c["meter"][1]  # no laser on-time while it sleeps
    assert c["early"][1] is None and c["early"][0]["pm25"] < base  # the unstable figures a warm-up avoids
    assert c["late"][1] is None and base <= c["late"][0]["pm25"] <= base + 4
    # sleeps only when the interval leaves it 15 s or more asleep after warm-up and five frames
    assert c["rests"] == [[30000, False], [45000, kind == "sds011"], [60000, True], [300000, True]]
    fw, meter = c["laser"]
    assert abs(fw - meter) <= 1500 and meter > warm  # the node's count of laser on-time is the part's
    assert 0 < c["kept"] <= fw  # kept in flash for the next boot


def test_pm_corrupt_frames_are_seen(pm_checks: dict[str, dict[str, Any]]) -> None:
    assert pm_checks["pms5003"]["bad"] > 0 and pm_checks["sds011"]["bad"] > 0  # the corrupt frames above were met, and rejected


def test_sht3x_crc(checks: dict[str, dict[str, Any]]) -> None:
    r = checks["sht3x"]["results"]
    assert r[0] == [{"temp_c": 28.6, "rh": 71.25}, None]
    assert r[1][0]["temp_c"] == 28.7
    assert r[2] == [{}, "crc"]  # the corrupted humidity CRC: no values at all
    assert checks["sht3x"]["bad"] == 1
    assert checks["sht3x_absent"]["err"] == "absent"  # no ACK at that address


def test_bme280_compensation(checks: dict[str, dict[str, Any]]) -> None:
    m = checks["bme280"]["m"]
    assert checks["bme280"]["err"] is None
    assert abs(m["temp_c"] - 33.4) <= 0.02
    assert abs(m["pressure_hpa"] - 1003.7) <= 0.1
    assert abs(m["rh"] - 82.5) <= 0.1


def test_ultrasonic_and_rain(checks: dict[str, dict[str, Any]]) -> None:
    assert checks["ultrasonic"]["m"] == {"water_level_cm": 280.0, "water_capped": 0}  # mounted at 400 cm, water 120 cm below
    assert checks["rain"]["m"] == {"rain_mm": 0.6}  # three tips of 0.2 mm, counted by the hardware counter
    assert checks["rain"]["counter"] and checks["rain"]["bounces"] == 0  # (the pin-interrupt path: test_esp32_time)


@pytest.fixture(scope="module")
def water_checks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = ""
    for part in ("driver", "node"):
        proc = run_mp(HERE / "mp_water.py", tmp_path_factory.mktemp("water"), part)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out += proc.stdout
    return {d["check"]: d for d in (json.loads(ln) for ln in out.splitlines() if ln.startswith("{"))}


def test_water_level_within_1cm_at_3m_across_20_to_45_degc(water_checks: dict[str, dict[str, Any]]) -> None:
    rows = water_checks["water_temp"]["rows"]
    assert len(rows) == 18
    for t, rh, level, capped, err in rows:
        assert err is None and capped == 0
        # mounted 400 cm above the datum, water 300 cm below it: 100 cm, whatever the air
        # (a fixed 343 m/s would read 3-15 cm high here: 1 cm is a tenth of that)
        assert abs(level - 100.0) <= 1.0, (t, rh, level)


def test_flood_peak_in_the_blind_zone_is_a_level_not_a_fault(water_checks: dict[str, dict[str, Any]]) -> None:
    c = water_checks["water_peak"]
    assert c["peak"] == [{"water_level_cm": 380.0, "water_capped": 1}, None]  # at or above mount - blind zone
    assert c["absent"] == [{}, "timeout"]  # no echo at all is still a fault


def test_the_node_hands_the_ranger_the_air_it_measured(water_checks: dict[str, dict[str, Any]]) -> None:
    c = water_checks["water_node"]
    assert c["order"] == ["th", "level"]  # the temperature first, whatever the config's order
    assert abs(c["m"]["water_level_cm"] - 100.0) <= 1.0 and c["m"]["water_capped"] == 0
    assert c["m"]["temp_c"] == pytest.approx(40.0, abs=0.2)


def test_laeq_is_the_energy_mean_across_the_interval(tmp_path: Path) -> None:
    proc = run_mp(HERE / "mp_noise.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    c = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert 25 <= c["samples"] <= 35  # every 2 s across the minute
    # half the time 60, half 80 dB(A): 10 log10((10^6 + 10^8) / 2) = 77.0, not 70
    assert c["leq"][1] is None and abs(c["leq"][0]["laeq_db"] - 77.0) <= 0.5
    assert c["mic"][1] is None and abs(c["mic"][0]["laeq_db"] - 72.0) <= 0.3
    assert c["dead"] == [{}, "absent"]  # a module reading 0 V is not silence


def test_ring_drops_oldest_and_survives_reboot(checks: dict[str, dict[str, Any]]) -> None:
    c = checks["ring"]
    # 40 readings into 3 segments of ~5: the oldest whole segments went, counted.
    assert c["dropped"] + c["n"] + c["pending"] == 40
    assert c["first"].startswith(f'{{"ts":{1764000000 + c["dropped"]},"seq":{c["dropped"]},')
    assert c["after_reboot"] == [c["pending"], c["dropped"]]
    assert len([f for f in c["files"] if f.startswith("s")]) <= 3
    assert c["lines"] == c["n"] == 5 and c["nbytes"] == 5 * len(c["first"]) + 5  # whole lines, streamed through a small buffer
    r = checks["ring_repair"]
    pending, dropped = r["before"]
    assert r["readable"] == pending + 1 - (r["dropped"] - dropped)  # the torn line is gone, nothing else
    assert r["pending"] == 0
    assert checks["ring_damaged"] == {"check": "ring_damaged", "seqs": [0, 2], "dropped": 1}


def test_ring_batches_are_bounded_and_stream_as_a_json_array(checks: dict[str, dict[str, Any]]) -> None:
    s = checks["ring_sized"]
    assert 2 * s["line"] <= 100 < 3 * s["line"]
    # Two lines fill a 100-byte batch; the 225-byte line can never be sent, so it is dropped
    # (and counted) rather than blocking the ring; the line after it still goes.
    assert s["seqs"] == [3, 4, 6] and s["sizes"] == [2, 1] and s["dropped"] == 1
    assert checks["ring_array"]["seqs"] == [7, 8, 9] and checks["ring_array"]["n"] == 3


def test_catalogue_copy_matches_contract(tmp_path: Path) -> None:
    script = tmp_path / "dump.py"
    script.write_text("import json, catalogue as c\n"
                      "print(json.dumps({n: c.RANGES[2 * i : 2 * i + 2] for i, n in enumerate(c.NAMES)}))\n"
                      "print(json.dumps([c.in_range('pm25', 35.5), c.in_range('pm25', 1000.5), c.in_range('temp_c', -10),"
                      " c.in_range('radiation', 1)]))\n")
    proc = run_mp(script, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    mirror = json.loads(lines[0])
    assert len(mirror) == len(json.loads(lines[0]).keys()) == len(METRICS)  # no name twice
    assert mirror == {name: [m.lo, m.hi] for name, m in METRICS.items()}
    assert json.loads(lines[1]) == [True, False, True, False]


def test_firmware_type_checks_against_esp32_stubs() -> None:
    proc = typecheck()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout


CONFIG_DOCS: list[Any] = [
    {"v": 1, "seq": 0},
    {"v": 1, "seq": 7, "interval_s": 300, "sensors": {"pm": True, "th": False}, "thresholds": {"pm25": 75.0}},
    {"v": 1, "seq": 1, "interval_s": 86400},
    {"v": 1, "seq": 1, "interval_s": 0},
    {"v": 1, "seq": 1, "interval_s": 1.5},
    {"v": 2, "seq": 1},
    {"v": 1, "seq": -1},
    {"v": 1, "seq": "1"},
    {"v": 1},
    {"v": 1, "seq": 1, "colour": "red"},
    {"v": 1, "seq": 1, "sensors": {"PM": True}},
    {"v": 1, "seq": 1, "sensors": {"pm": 1}},
    {"v": 1, "seq": 1, "thresholds": {"pm25": "high"}},
    {"v": 1, "seq": 1, "thresholds": {"radiation": 3}},
    {"v": 1, "seq": 1, "thresholds": {"fw": 3}},
    [1, 2],
    "config",
]


def test_device_and_contract_agree_on_config_documents(tmp_path: Path) -> None:
    from contract.device_config import DeviceConfigError, check_device_config

    (tmp_path / "docs.json").write_text(json.dumps(CONFIG_DOCS))
    script = tmp_path / "judge.py"
    script.write_text("import json, retained\nprint(json.dumps([retained.config_ok(d) for d in json.load(open('docs.json'))]))\n")
    proc = run_mp(script, tmp_path)
    assert proc.returncode == 0, proc.stderr
    device = json.loads(proc.stdout.splitlines()[-1])
    platform = []
    for doc in CONFIG_DOCS:
        try:
            check_device_config(doc)
            platform.append(True)
        except DeviceConfigError:
            platform.append(False)
    assert device == platform
    assert platform[:3] == [True, True, True] and not any(platform[3:])


ROTATION_DOCS: list[Any] = [
    {"v": 1, "seq": 2, "password": "A" * 16},
    {"v": 1, "seq": 2, "interval_s": 60, "password": "a-b_c" * 5},
    {"v": 1, "seq": 2, "password": "short"},
    {"v": 1, "seq": 2, "password": "x" * 129},
    {"v": 1, "seq": 2, "password": "with space in it!!"},
    {"v": 1, "seq": 2, "password": 123456789012345678},
]

ROTATION_SCRIPT = """
import json, os, retained
from app import STATE
try:
    os.mkdir(STATE)
except OSError:
    pass
class N: pass
def node():
    n = N()
    n.faults = {}; n.status_due = False; n.config_seq = -1; n.interval_s = 60; n.interval_ms = 60000
    n.disabled = []; n.thresholds = {}; n.next_read = 0; n.client = None; n.password = None
    return n
judged = [retained.config_ok(d) for d in json.load(open('docs.json'))]
n = node()
retained.apply(n, '{"v":1,"seq":1,"password":"%s"}' % ("p" * 20), True)
retained.apply(n, '{"v":1,"seq":2,"interval_s":30}', True)  # a later change without the secret
m = node()  # a reboot: the boot code applies what is in flash before the broker answers
with open(STATE + "/applied.json") as f:
    retained.apply(m, json.load(f), False)
print(json.dumps({"judged": judged, "running": n.password, "rebooted": m.password, "interval": m.interval_s}))
"""


def test_rotated_password_is_judged_as_the_contract_does_and_survives_a_reboot(tmp_path: Path) -> None:
    from contract.device_config import DeviceConfigError, check_device_config

    (tmp_path / "docs.json").write_text(json.dumps(ROTATION_DOCS))
    script = tmp_path / "rotate.py"
    script.write_text(ROTATION_SCRIPT)
    proc = run_mp(script, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    platform = []
    for doc in ROTATION_DOCS:
        try:
            check_device_config(doc)
            platform.append(True)
        except DeviceConfigError:
            platform.append(False)
    assert got["judged"] == platform == [True, True, False, False, False, False]
    assert got["running"] == got["rebooted"] == "p" * 20 and got["interval"] == 30


STORED_PAYLOADS: list[bytes] = [
    b'{"v":1,"seq":[[40,52],[55,55]],"t":1764000000.25}',
    b'{"v":1,"seq":[]}',
    b'{"v":1,"seq":[[0,0]]}',
    b'{"v":1,"seq":[[9007199254740990,9007199254740991]],"t":0}',
    b' {\n "t" : 1764000000 , "seq" : [ [ 1 , 2 ] , [4,9] ] , "v" : 1 }\r\n',
    b'{"v":1,"seq":[[1,2]],"t":1.764e9}',
    b'{"v":1,"seq":[[1,2]],"t":17640000001E-1}',
    b'{"v":1,"seq":[[1,2]],"t":1764000000.123456789}',
    b'{"v":1,"seq":[[1,2]],"t":null}',
    b'{"v":1,"seq":[[-0,3]],"t":-0.0}',
    b'{"v":1,"seq":[[1,2]],"other":{"t":"x","seq":[1,{"a":[true,false,null]}]},"note":"a \\"quoted\\" \\u00e9 \\\\ /"}',
    b'{"v":1,"seq":"late","seq":[[3,4]]}',
    b'{"v":1,"seq":[[3,4]],"seq":"late"}',
    b'{"v":1,"seq":[[1,2]],"t":1764000000.25,"t":5}',
    b'{"v":1,"seq":[' + b",".join(b"[%d,%d]" % (2 * i, 2 * i) for i in range(32)) + b"]}",
    b'{"v":1,"seq":[' + b",".join(b"[%d,%d]" % (2 * i, 2 * i) for i in range(33)) + b"]}",
    b'{"v":2,"seq":[[1,2]]}',
    b'{"v":1.0,"seq":[[1,2]]}',
    b'{"v":true,"seq":[[1,2]]}',
    b'{"v":"1","seq":[[1,2]]}',
    b'{"seq":[[1,2]]}',
    b'{"v":1}',
    b'{"v":1,"seq":[[2,1]]}',
    b'{"v":1,"seq":[[1,5],[5,6]]}',
    b'{"v":1,"seq":[[5,6],[1,2]]}',
    b'{"v":1,"seq":[[1,2,3]]}',
    b'{"v":1,"seq":[[1]]}',
    b'{"v":1,"seq":[1,2]}',
    b'{"v":1,"seq":[[1.0,2]]}',
    b'{"v":1,"seq":[[1,2e0]]}',
    b'{"v":1,"seq":[[-1,2]]}',
    b'{"v":1,"seq":[[1,9007199254740992]]}',
    b'{"v":1,"seq":[[true,2]]}',
    b'{"v":1,"seq":{"0":[1,2]}}',
    b'{"v":1,"seq":[[1,2]],"t":-1}',
    b'{"v":1,"seq":[[1,2]],"t":8589934592}',
    b'{"v":1,"seq":[[1,2]],"t":"1764000000"}',
    b'{"v":1,"seq":[[1,2]],"t":true}',
    b'{"v":1,"seq":[[01,2]]}',
    b'{"v":1,"seq":[[1,2],]}',
    b'{"v":1,"seq":[[1,2]],}',
    b'{"v":1,"seq":[[1,2]]} x',
    b'{"v":1,"seq":[[1,2]]',
    b'{"v":1,"seq":[[1,2]],"note":"tab\tinside"}',
    b'{"v":1,"seq":[[1,2]],"note":"bad \\x escape"}',
    b'{"v":1,"seq":[[1,2]],"t":1.}',
    b'{"v":1,"seq":[[1,2]],"t":.5}',
    b'{"v":1,"seq":[[1,2]],"t":NaN}',
    b"[1,2]",
    b"",
    b"null",
]

STORED_SCRIPT = """
import binascii, json, ring
res = []
for line in open('payloads.txt', 'rb').read().split(b'\\n'):
    p = binascii.a2b_base64(line)
    got = ring.check(p, None)  # the platform's own form, read in place
    quick = got is not None
    d = []
    if quick:
        ring.check(p, d)  # merged into the ranges kept
    else:
        import stored  # any other form: the full parser
        out = [0] * 64
        got = stored.parse(p, out)
        for i in range(max(got[0], 0)):
            ring._merge(d, out[2 * i], out[2 * i + 1])
    res.append([got[0], [[d[i], d[i + 1]] for i in range(0, len(d), 2)], got[1], quick])
print(json.dumps(res))
"""


def test_device_and_contract_agree_on_stored_payloads(tmp_path: Path) -> None:
    """The firmware's `stored` parsing (ring.check for the form the platform writes,
    stored.py for any other; bytes in, the ranges merged into those the ring keeps, time
    in integer ms) accepts exactly what contract.stored.parse_stored does."""
    import base64

    from contract.stored import StoredError, encode_stored, parse_stored, to_ranges

    canonical = [encode_stored([]), encode_stored([(0, 0)], 0), encode_stored([(5, 9), (12, 40)], 1764000000.25),
                 encode_stored([(2 * i, 2 * i) for i in range(32)], 1764000000), encode_stored([(7, 7)], 1764000000.999)]
    payloads = canonical + STORED_PAYLOADS
    (tmp_path / "payloads.txt").write_bytes(b"\n".join(base64.b64encode(p) for p in payloads))
    (tmp_path / "judge.py").write_text(STORED_SCRIPT)
    proc = run_mp(tmp_path / "judge.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    device = json.loads(proc.stdout.splitlines()[-1])
    assert len(device) == len(payloads)
    assert all(d[3] for d in device[: len(canonical)])  # the platform's own form never needs the full parser
    accepted = 0
    for payload, (n, ranges, t_ms, _) in zip(payloads, device, strict=True):
        try:
            want = parse_stored(payload)
        except StoredError:
            assert n == -1, f"the device accepts what the contract refuses: {payload!r}"
            continue
        accepted += 1
        assert n == len(want.ranges), payload
        # as the ring keeps them: adjacent ones merged, the lowest 8
        assert [tuple(r) for r in ranges] == to_ranges(s for lo, hi in want.ranges for s in range(lo, hi + 1))[:8], payload
        if want.t is None:
            assert t_ms == -1, payload
        else:
            assert abs(t_ms - want.t * 1000) <= 1, (payload, t_ms, want.t)  # integer ms: exact on a 32-bit float port too
    assert accepted == 14 + len(canonical)  # both sides accept the same handful, refuse the rest


@pytest.fixture(scope="module")
def confirm_checks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    proc = run_mp(HERE / "mp_confirm.py", tmp_path_factory.mktemp("confirm"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {d["check"]: d for d in (json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{"))}


def test_ring_frees_only_confirmed_readings_oldest_first(confirm_checks: dict[str, dict[str, Any]]) -> None:
    s = confirm_checks["ring_confirm"]["steps"]
    assert s[0] == list(range(10))
    assert s[1] == [0, 10, [3, 5]]  # confirmed beyond the head: kept in flash, remembered
    assert s[2] == [6, 4, []]  # the head's own confirmation: 0..5 freed at once
    assert s[3] == [0, 4]
    assert s[4] == [6, 7] and s[5] == [9]  # the replay passes over what was confirmed
    assert s[6] == [4, 0, [], 0]
    assert s[7] == [0, 0]  # and a reboot finds nothing left to send, nothing dropped


def test_a_full_ring_counts_only_unconfirmed_readings_as_dropped(confirm_checks: dict[str, dict[str, Any]]) -> None:
    c = confirm_checks["ring_full_confirmed"]
    assert c["first"] >= 1  # the first segment (seqs 0..5) went
    assert c["dropped"] == 4  # 0, 1, 4 and 5: 2 and 3 were confirmed, not lost
