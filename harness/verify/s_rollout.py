"""Scenario 22: a firmware rollout to a fleet of firmware-in-the-loop devices, some forced to fail.

The platform `nakhon up` starts (secured broker, InfluxDB, ingest, API); devices
provisioned through the API as a technician does; each runs the unchanged firmware
on the MicroPython unix port (simulators/fil.py), whose folder plays the board's
flash, so the firmware writes its ota/ slot files there and resets into them.
A new version is built from firmware/ and released with `nakhon firmware release`
(files and offers retained on the broker through its ACLs). On a few boards the new
version crashes at boot (a board-specific fault: it raises while building the node),
so they never publish on it and roll back by themselves after the release's boots.
The outcome is read from the platform only (`nakhon firmware rollout`, the API):
updated, rolled back, and each device's reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from contract.cities import BUILTIN_CITIES
from contract.influx import Influx
from harness.progress import say as say_line
from harness.verify.report import Row, Size
from harness.verify.s_devices import _stored_points
from harness.verify.scenarios import register
from harness.verify.stream import free_settings
from nakhon import accounts
from nakhon.firmware_tools import FIRMWARE, MICROPYTHON, build, fakes_mpy, firmware_mpy
from nakhon.local import LocalPlatform
from nakhon.servers import free_port
from simulators.devices import SimDevice, make_fleet
from simulators.fil import KINDS, READING_RE, FirmwareDevice, FirmwareFleet, FirmwarePaths
from simulators.provision import provision_fleet

FW_RE = re.compile(r'^FW = "([^"]+)"$', re.M)
ANCHOR = "    lk = Node.link"  # firmware/lib/start.py: the config is checked, the node not yet built
FINAL = ("updated", "rolled_back", "refused")
BOOT_RE = re.compile(r"boot fw=(\S+)")
RELEASE_RE = re.compile(r"release (\d+): \S+ \((\d+) files, (\d+) bytes\)")


def _say(msg: str) -> None:
    say_line(msg, indent=2)


def current_fw() -> str:
    """The version firmware/ says it is (app.FW): what the devices run before the release."""
    m = FW_RE.search((FIRMWARE / "lib" / "app.py").read_text())
    assert m is not None, "firmware/lib/app.py has no FW line"
    return m.group(1)


def next_fw(fw: str) -> str:
    parts = fw.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return f"{parts[0]}.{int(parts[1]) + 1}.0"
    return f"{fw}-next"


def build_release(where: Path, fw: str, crash_on: list[str]) -> Path:
    """firmware/ as version `fw`, compiled as for a board; on the boards `crash_on` it raises at
    every boot once the config is read. Returns the build folder (lib/*.mpy)."""
    src = where / f"src-{fw}"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(FIRMWARE, src)
    app = src / "lib" / "app.py"
    old = current_fw()
    app.write_text(app.read_text().replace(f'FW = "{old}"', f'FW = "{fw}"', 1))
    start = src / "lib" / "start.py"
    body = start.read_text()
    assert body.count(ANCHOR) == 1, "firmware/lib/start.py changed: move the scenario's crash"
    ids = ", ".join(json.dumps(d) for d in crash_on)
    start.write_text(body.replace(ANCHOR, f'    if cfg["device_id"] in ({ids},):\n        raise RuntimeError("board rev b")\n{ANCHOR}', 1))
    out = where / f"build-{fw}"
    build(out, src)
    return out


def pick_devices(n: int, seed: int) -> list[SimDevice]:
    """n devices of the kinds the firmware has drivers for, the cities and kinds in turn."""
    cities = list(BUILTIN_CITIES)
    pool = make_fleet(cities, max(40, n), seed=seed, prefix="ro")
    spare = {(c.slug, k): [d for d in pool if d.city == c.slug and d.kind == k] for c in cities for k in KINDS}
    picked: list[SimDevice] = []
    j = 0
    while len(picked) < n and any(spare.values()):
        left = spare[(cities[j % len(cities)].slug, KINDS[(j // len(cities)) % len(KINDS)])]
        if left:
            picked.append(left.pop(0))
        j += 1
    assert len(picked) == n, f"only {len(picked)} firmware devices in the pool"
    return picked


def since_last_boot(d: FirmwareDevice) -> tuple[str | None, set[int]]:
    """The version the device's last boot ran, and the seqs of the readings it took since, from its console."""
    text = d.log_text()
    boots = BOOT_RE.findall(text)
    return (boots[-1] if boots else None), {int(s) for s, _ in READING_RE.findall(text[text.rfind("boot fw="):])}


def nakhon(*args: str, key: str) -> subprocess.CompletedProcess[str]:
    """`nakhon ARGS` as an operator types it, with the admin key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAKHON_")} | {"NAKHON_API_KEY": key}
    return subprocess.run([sys.executable, "-m", "nakhon", *args], env=env, capture_output=True, text=True, timeout=300)


@register(22, "Firmware rollout to firmware-in-the-loop devices, some forced to fail: the platform shows who updated, who rolled back, why")
def firmware_rollout(root: Path, size: Size) -> Row:
    full = size == "full"
    n, n_bad = (100, 5) if full else (10, 2)
    # the fakes' clock: device seconds per real second. The firmware's waits (crash back-off, reconnect,
    # readings) run this much faster; its CPU work does not, so a faster clock mostly means more readings.
    scale = 20
    interval_s = 120  # one reading every 6 s real per device
    boots, minutes = 2, 10
    timeout_s = 1500 if full else 150
    behind_s = 12 * 3600 if full else 3 * 3600  # the devices' clock never passes the platform's now
    row = Row(22, f"firmware rollout to {n} firmware-in-the-loop devices, {n_bad} forced to fail", unit="devices")
    old, new = current_fw(), next_fw(current_fw())
    devices = pick_devices(n, seed=22)
    rng = np.random.default_rng(22)
    bad = sorted(devices[int(i)].device_id for i in rng.choice(n, n_bad, replace=False))

    p = LocalPlatform(root / "up", free_settings(ingest_batch_ms=50), with_fleet=False, tls_port=free_port())
    fleet: FirmwareFleet | None = None
    try:
        p.start()
        key = p.admin_key or ""
        api = f"http://127.0.0.1:{p.settings.api_port}"
        t = time.monotonic()
        passwords = provision_fleet(devices, api, key, root / "credentials.json", interval_s=interval_s)
        _say(f"{n} devices provisioned through the API in {time.monotonic() - t:.1f} s")
        paths = FirmwarePaths(FIRMWARE, fakes_mpy(), MICROPYTHON, firmware_mpy())
        # devices dial the broker's loopback listener with their own accounts (the same ACLs as on TLS);
        # 100 TLS handshakes in VMs would be the machine's whole CPU. The TLS path: tests/security/test_ota_rollout.py
        fleet = FirmwareFleet(devices, root / "firmware", paths, "127.0.0.1", p.broker.port, seed=22, interval_s=interval_s,
                              scale=scale, behind_s=behind_s, passwords=passwords, feed_s=2.0)
        t = time.monotonic()
        fleet.start()
        online: set[str] = set()
        while len(online) < n and time.monotonic() - t < timeout_s:
            online |= {d.dev.device_id for d in fleet.devices if "net: online" in d.log_text()}
            time.sleep(1.0)
        boot_s = time.monotonic() - t
        _say(f"{len(online)}/{n} devices online in {boot_s:.1f} s (firmware {old}, clock {scale}x)")
        if len(online) < n:
            raise RuntimeError(f"devices never online: {sorted({d.device_id for d in devices} - online)[:10]}")

        build_dir = build_release(root, new, bad)
        t_release = time.monotonic()
        r = nakhon("firmware", "release", "--version", new, "--build", str(build_dir), "--boots", str(boots), "--minutes", str(minutes),
                   "--api", api, *[a for d in devices for a in ("--device", d.device_id)], key=key)
        if r.returncode != 0:
            raise RuntimeError(f"nakhon firmware release: {r.stderr[-500:]}")
        rid, n_files, n_bytes = (int(x) for x in RELEASE_RE.findall(r.stdout)[0])
        release_s = time.monotonic() - t_release
        _say(f"release {rid}: {new} offered to {n} devices in {release_s:.1f} s ({bad} cannot run it)")

        done_at: dict[str, float] = {}
        doc: dict[str, Any] = {}
        last_say = 0.0
        with httpx.Client(base_url=api, headers={"X-API-Key": key}, timeout=30) as http:
            while time.monotonic() - t_release < timeout_s:
                got = http.get(f"/v1/firmware/releases/{rid}")
                if got.status_code == 200:
                    doc = got.json()
                    now = time.monotonic() - t_release
                    for d in doc["devices"]:
                        if d["state"] in FINAL:
                            done_at.setdefault(d["device"], now)
                    if time.monotonic() - last_say >= 10:
                        last_say = time.monotonic()
                        _say(f"+{now:.0f} s: {doc['counts']}")
                    if len(done_at) == n:
                        break
                time.sleep(1.0)
        # back at work: every device has a reading stored that it took since its last boot, on the version it now runs
        working: dict[str, str] = {}
        db = Influx(p.influxdb.url, p.settings.influx_db, accounts.INFLUX_ADMIN, p.secrets["influx_admin"])
        t = time.monotonic()
        try:
            while len(working) < n and time.monotonic() - t < 60:
                for d in fleet.devices:
                    if d.dev.device_id not in working:
                        fw, seqs = since_last_boot(d)
                        if fw is not None and seqs & set(_stored_points(db, d.dev.device_id)):
                            working[d.dev.device_id] = fw
                time.sleep(1.0)
        finally:
            db.close()
        working_s = time.monotonic() - t
        # the operator's view, as typed
        shown = nakhon("firmware", "rollout", str(rid), "--json", "--api", api, key=key)
        if shown.returncode != 0:
            raise RuntimeError(f"nakhon firmware rollout: {shown.stderr[-500:]}")
        doc = json.loads(shown.stdout)
        text = nakhon("firmware", "rollout", str(rid), "--api", api, key=key).stdout
        (root / "rollout.txt").write_text(text)
    finally:
        if fleet is not None:
            fleet.stop()
        p.stop()

    by = {d["device"]: d for d in doc.get("devices", [])}
    counts = doc.get("counts", {})
    good = [d.device_id for d in devices if d.device_id not in bad]
    updated_ok = [d for d in good if by.get(d, {}).get("state") == "updated" and by[d].get("fw") == new]
    rolled_ok = [d for d in bad if by.get(d, {}).get("state") == "rolled_back" and by[d].get("fw") == old and by[d].get("reason")]
    reasons: dict[str, int] = {}
    for d in by.values():
        if d.get("reason"):
            reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
    wrong = n - len(updated_ok) - len(rolled_ok)
    up_t = sorted(done_at[d] for d in updated_ok if d in done_at)
    back_t = sorted(done_at[d] for d in rolled_ok if d in done_at)
    summary = fleet.summary() if fleet is not None else {}
    at_work_new = sum(1 for d in updated_ok if working.get(d) == new)
    at_work_old = sum(1 for d in rolled_ok if working.get(d) == old)
    row.sent = n
    row.stored = len(updated_ok)
    row.rejected = len(rolled_ok)
    row.lost = wrong
    row.accepted_bad = sum(1 for d in bad if by.get(d, {}).get("state") == "updated")
    row.recovery_s = max(done_at.values()) if len(done_at) == n else None
    row.figures = {
        "devices": n,
        "forced to fail": n_bad,
        "updated": counts.get("updated", 0),
        "rolled back": counts.get("rolled_back", 0),
        "other states": ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k not in ("updated", "rolled_back")) or "none",
        "reasons": ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none",
        "version": f"{old} -> {new}",
        "start to all online s": round(boot_s, 1),
        "release files/bytes": f"{n_files}/{n_bytes:,}",
        "release call s": round(release_s, 1),
        "updated p50/max s": f"{np.percentile(up_t, 50):.0f}/{up_t[-1]:.0f}" if up_t else "-",
        "rolled back p50/max s": f"{np.percentile(back_t, 50):.0f}/{back_t[-1]:.0f}" if back_t else "-",
        "boots": summary.get("boots", 0),
        "storing on new/old version": f"{at_work_new}/{at_work_old}",
        "storing within s": round(working_s, 1),
        "VM crashes": summary.get("crashes", 0),
        "load 1 min at the end": round(os.getloadavg()[0], 1),
        "rolled back devices": " ".join(rolled_ok) or "none",
    }
    row.ok = (wrong == 0 and counts == {"updated": n - n_bad, "rolled_back": n_bad} and summary.get("crashes", 1) == 0
              and at_work_new == n - n_bad and at_work_old == n_bad and reasons == {f"no publish in {boots} boots": n_bad})
    row.note = (f"{n} devices provisioned through the API, each the unchanged firmware on the MicroPython unix port (its folder the "
                f"board's flash; fake clock at {scale}x, a reading every {interval_s} s of device time), of the kinds with firmware "
                f"drivers ({', '.join(KINDS)}), on the platform `nakhon up` starts, dialling the broker's loopback listener with their "
                f"own accounts. `nakhon firmware release --boots {boots}` offers version {new}; on {n_bad} boards it raises at every "
                f"boot while building the node. Outcome from `nakhon firmware rollout` (the API, from the devices' status in InfluxDB); "
                f"times from the release until each device's final state shows there (polled every second); recovery = the last one. "
                f"Then every device must have a reading in InfluxDB taken since its last boot, on the version it reports (storing "
                f"on new/old version). The firmware's own waits (crash back-off, chunk requests) run {scale}x faster than on a board. "
                f"Each device's row (state, fw, reason), as `nakhon firmware rollout {rid}` prints it, is kept in rollout.txt in the "
                f"scenario's folder.")
    return row
