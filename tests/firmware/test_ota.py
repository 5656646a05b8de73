"""Over-the-air updates end to end: the firmware on the MicroPython VM, a real Mosquitto,
the release published as the platform publishes it (api/releases.py): retained chunks
of each file and a retained offer on the device's `ota` topic.

An update is applied and reported; a tampered file is refused before any of it runs; a
version that crashes at boot, or cannot even be imported, is rolled back by the device
and it says why."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from api import releases
from contract import ota, topics
from nakhon.firmware_tools import FIRMWARE, build
from nakhon.servers import Mosquitto
from tests.firmware.device import Device, device_config, world
from tests.firmware.watch import Watch
from tests.helpers import wait_until

pytestmark = pytest.mark.integration  # the firmware on the MicroPython VM against one broker

CITY = "chiang_mai"
OLD = "0.3.0"


def built(tmp: Path, fw: str, patch: dict[str, tuple[str, str]] | None = None) -> dict[str, bytes]:
    """The firmware as a release: this tree with its version set to `fw` (and source
    patches: file -> (old text, new text)), compiled; lib-relative path -> bytes."""
    src = tmp / f"src-{fw}"
    shutil.copytree(FIRMWARE, src)
    app = src / "lib" / "app.py"
    text = app.read_text()
    assert f'FW = "{OLD}"' in text
    app.write_text(text.replace(f'FW = "{OLD}"', f'FW = "{fw}"'))
    for name, (old, new) in (patch or {}).items():
        f = src / "lib" / name
        body = f.read_text()
        assert old in body, name
        f.write_text(body.replace(old, new, 1))
    out = tmp / f"build-{fw}"
    build(out, src)
    lib = out / "lib"
    return {str(p.relative_to(lib)): p.read_bytes() for p in sorted(lib.rglob("*.mpy"))}


def publish(port: int, msgs: list[tuple[str, bytes]]) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="release-test")
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for t, payload in msgs:
            c.publish(t, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        c.loop_stop()
        c.disconnect()


@pytest.fixture
def node(workdir: Path, broker: Mosquitto) -> Iterator[tuple[Device, Watch]]:
    dev_id = "cm-ota-01"
    watch = Watch(broker.port, CITY, dev_id)
    dev = Device(workdir / "dev", device_config(dev_id, broker.port, status_interval_s=30), world(scale=30))
    dev.start()
    try:
        dev.wait_log(r"net: online", 60)
        yield dev, watch
    finally:
        dev.stop()
        watch.close()


def ota_status(watch: Watch) -> dict[str, Any]:
    last = watch.last_status()
    return last if last and last.get("state") == "online" else {}


def no_traceback_but(dev: Device, *allowed: str) -> None:
    log = dev.log()
    assert "MemoryError" not in log, log[-3000:]
    for block in log.split("Traceback")[1:]:
        assert any(a in block[:2000] for a in allowed), block[:2000]


def test_update_is_applied_and_reported(node: tuple[Device, Watch], workdir: Path, broker: Mosquitto) -> None:
    dev, watch = node
    files = built(workdir, "0.9.0")
    publish(broker.port, releases.messages(files, 1, "0.9.0", [(CITY, dev.config["device_id"])]))
    wait_until(lambda: ota_status(watch).get("fw") == "0.9.0" and ota_status(watch).get("ota", {}).get("state") == "updated",
               120, what="status fw 0.9.0, ota updated")
    assert ota_status(watch)["ota"] == {"id": 1, "fw": "0.9.0", "state": "updated"}
    boot = json.loads((dev.folder / "ota" / "boot").read_text())
    assert boot["fw"] == "0.9.0" and not boot["trial"] and boot["slot"] == "a"
    for name, data in files.items():  # the running slot holds the release, byte for byte
        assert (dev.folder / "ota" / "a" / name).read_bytes() == data
    assert dev.exit_codes == [75]  # one reset, into the new version
    seen = {r["seq"] for r in watch.readings()}
    wait_until(lambda: len({r["seq"] for r in watch.readings()}) > len(seen), 60, what="readings go on after the update")
    no_traceback_but(dev)


def test_tampered_file_is_refused_before_use(node: tuple[Device, Watch], workdir: Path, broker: Mosquitto) -> None:
    dev, watch = node
    files = built(workdir, "0.9.1")
    msgs = releases.messages(files, 2, "0.9.1", [(CITY, dev.config["device_id"])])
    sha = dict((p, s) for p, s, _ in releases.manifest(files))["ota.mpy"]
    target = topics.firmware_chunk_topic(sha, 1)
    i = next(i for i, (t, _) in enumerate(msgs) if t == target)
    body = bytearray(msgs[i][1])
    body[10] ^= 0x01  # one bit flipped on the way
    msgs[i] = (target, bytes(body))
    publish(broker.port, msgs)
    wait_until(lambda: ota_status(watch).get("ota", {}).get("state") == "refused", 120, what="ota refused in status")
    st = ota_status(watch)
    assert st["fw"] == OLD and st["ota"] == {"id": 2, "fw": "0.9.1", "state": "refused", "reason": "sha256 ota.mpy"}
    assert not (dev.folder / "ota" / "boot").exists()  # nothing switched
    assert not (dev.folder / "ota" / "a").exists()  # and what was staged is gone
    assert dev.exit_codes == []  # never reset
    no_traceback_but(dev)


def test_version_that_crashes_at_boot_is_rolled_back(node: tuple[Device, Watch], workdir: Path, broker: Mosquitto) -> None:
    dev, watch = node
    files = built(workdir, "0.9.2", {"start.py": ("_HANG_SKIP = 30", 'raise RuntimeError("bad build")\n_HANG_SKIP = 30')})
    publish(broker.port, releases.messages(files, 3, "0.9.2", [(CITY, dev.config["device_id"])]))
    wait_until(lambda: ota_status(watch).get("ota", {}).get("state") == "rolled_back", 180, what="ota rolled back in status")
    st = ota_status(watch)
    assert st["fw"] == OLD
    assert st["ota"] == {"id": 3, "fw": "0.9.2", "state": "rolled_back", "reason": "no publish in 3 boots"}
    assert dev.log().count("bad build") >= 3
    # the old version starts its own count of crashes: no safe mode for the new one's
    assert "safe mode" not in dev.log().split("rolled back from 0.9.2")[-1]
    assert not (dev.folder / "ota" / "boot").exists()  # back on the factory version
    # the retained offer comes again at every connect: a release rolled back is not tried twice
    wait_until(lambda: dev.log().count("net: online") >= 2, 60, what="online again")
    assert "ota: staging 0.9.2" not in dev.log().split("rolled back from 0.9.2")[-1]
    no_traceback_but(dev, "bad build")


def test_version_that_cannot_be_imported_is_left_at_once(node: tuple[Device, Watch], workdir: Path, broker: Mosquitto) -> None:
    dev, watch = node
    files = built(workdir, "0.9.3", {"app.py": ("import gc\n", 'raise ImportError("no such thing")\nimport gc\n')})
    publish(broker.port, releases.messages(files, 4, "0.9.3", [(CITY, dev.config["device_id"])]))
    wait_until(lambda: ota_status(watch).get("ota", {}).get("state") == "rolled_back", 120, what="ota rolled back in status")
    st = ota_status(watch)
    assert st["fw"] == OLD and st["ota"]["reason"].startswith("import: ImportError")
    assert dev.exit_codes == [75]  # the reset into it; left within that same boot


def test_link_change_that_does_not_work_falls_back(node: tuple[Device, Watch], broker: Mosquitto) -> None:
    """New Wi-Fi settings the site does not have (a wrong password): the node tries them
    after a reset, cannot publish through them, and after the offer's minutes goes back
    to the settings that worked, and says so."""
    dev, watch = node
    offer = ota.encode_link_offer(11, {"wifi": {"ssid": "field", "password": "not-the-one"}}, minutes=2)
    publish(broker.port, [(topics.topic(CITY, dev.config["device_id"], "ota"), offer)])
    wait_until(lambda: ota_status(watch).get("ota", {}).get("state") == "rolled_back", 120, what="link offer rolled back")
    st = ota_status(watch)
    assert st["ota"] == {"id": 11, "fw": OLD, "state": "rolled_back", "reason": "link: no publish in 2 min"}
    assert dev.exit_codes == [75, 75]  # a reset to try the new settings, one back to the old
    assert "link: trying offer 11" in dev.log()
    assert not (dev.folder / "ota" / "link.try").exists() and not (dev.folder / "ota" / "link.ok").exists()
    seen = len(watch.readings())
    wait_until(lambda: len(watch.readings()) > seen, 60, what="readings through the old settings")
    no_traceback_but(dev)


def test_link_change_that_works_is_kept(node: tuple[Device, Watch], broker: Mosquitto) -> None:
    """The broker reached by another name: tried, a reading acknowledged through it, kept
    (ota/link.ok), and used at every boot after."""
    dev, watch = node
    offer = ota.encode_link_offer(12, {"mqtt": {"host": "localhost"}}, minutes=5)
    publish(broker.port, [(topics.topic(CITY, dev.config["device_id"], "ota"), offer)])
    wait_until(lambda: ota_status(watch).get("ota", {}).get("state") == "updated", 120, what="link offer kept")
    assert ota_status(watch)["ota"] == {"id": 12, "fw": OLD, "state": "updated"}
    assert json.loads((dev.folder / "ota" / "link.ok").read_text())["link"] == {"mqtt": {"host": "localhost"}}
    assert not (dev.folder / "ota" / "link.try").exists()
    assert dev.exit_codes == [75]
    dev.control({"power": "cut"})  # a power cut: the next boot comes up with the settings that worked
    wait_until(lambda: dev.log().count("net: online") >= 3, 60, what="online after the power cut")
    assert "link: trying" not in dev.log().split("link offer 12 confirmed")[-1]
    no_traceback_but(dev)


def _on_trial(dev: Device, files: dict[str, bytes], fw: str, minutes: int) -> None:
    """Flash as a reset into a new version leaves it: the release in slot a, ota/boot on probation."""
    for name, data in files.items():
        p = dev.folder / "ota" / "a" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (dev.folder / "ota" / "boot").write_text(json.dumps(
        {"slot": "a", "fw": fw, "id": 9, "trial": 1, "boots": 0, "max_boots": 3, "minutes": minutes, "prev": None}))
    (dev.folder / "ota" / "result").write_text(json.dumps({"id": 9, "fw": fw, "state": "trial"}))


def test_deep_sleep_wakes_are_not_boots_of_the_probation(workdir: Path) -> None:
    """A deep-sleep node wakes (a reset) for every reading. A new version on probation
    that cannot publish (no Wi-Fi here) has its minutes, counted across the sleeps, and
    at least its boots in wakes, before it is rolled back; each wake counted as a boot
    rolled it back after three readings (a minute at a 20 s interval, not the two the
    offer gave)."""
    cfg = device_config("cm-ota-sleep", 1883, deep_sleep=True, interval_s=20,
                        sensors=[{"name": "th", "type": "sht3x", "i2c": 0, "scl": 22, "sda": 21, "addr": 0x44}])
    dev = Device(workdir / "dev", cfg, world(scale=30, wifi={"ssid": "elsewhere", "password": "x", "assoc_ms": 2000}))
    _on_trial(dev, built(workdir, "0.9.5"), "0.9.5", minutes=2)
    result = dev.folder / "ota" / "result"
    dev.start()
    try:
        wait_until(lambda: json.loads(result.read_text()).get("state") == "rolled_back", 120, what="rolled back")
        dev.wait_log(r"boot fw=0\.3\.0", 30)
    finally:
        dev.stop()
    r = json.loads(result.read_text())
    assert r == {"id": 9, "fw": "0.9.5", "state": "rolled_back", "reason": "no publish in 2 min"}
    log = dev.log()
    on_trial = log.split("rolled back from 0.9.5")[0]
    assert on_trial.count("boot fw=0.9.5 reset=deepsleep") >= 5  # two minutes of 20 s wakes
    assert on_trial.count("boot fw=0.9.5") == on_trial.count("boot fw=0.9.5 reset=deepsleep") + 1  # one boot, the power-on
    assert not (dev.folder / "ota" / "boot").exists()  # back on the factory version
    assert set(dev.exit_codes) == {75}
    no_traceback_but(dev)


def test_a_reset_in_the_middle_of_a_download_comes_back_on_the_old_version_and_starts_again(
        node: tuple[Device, Watch], workdir: Path, broker: Mosquitto) -> None:
    """The power cut while a file is half in the slot (one of its chunks not yet on the
    broker, so the cut lands there): the node comes back on the version it ran, never
    on the half-staged slot, takes the retained offer again, stages from the start, and
    switches once the release is whole."""
    dev, watch = node
    files = built(workdir, "0.9.6")
    msgs = releases.messages(files, 5, "0.9.6", [(CITY, dev.config["device_id"])])
    man = releases.manifest(files)
    name, sha, _ = max(man[1:], key=lambda f: f[2])  # a file of several chunks, not the first
    held = topics.firmware_chunk_topic(sha, 1)
    publish(broker.port, [m for m in msgs if m[0] != held])
    part = dev.folder / "ota" / "a" / name
    wait_until(part.exists, 120, what=f"{name} being staged")
    dev.control({"power": "cut"})
    dev.wait_log(r"FAKE power cut", 30)
    dev.wait_log(r"ota: staging 0\.9\.6", 120, count=2)  # the offer again after the reset: staged from the start
    assert not (dev.folder / "ota" / "boot").exists()  # the half-staged slot was never chosen
    after = dev.log().split("FAKE power cut")[-1]
    assert "boot fw=0.3.0" in after and "boot fw=0.9.6" not in after
    publish(broker.port, [m for m in msgs if m[0] == held])
    wait_until(lambda: ota_status(watch).get("fw") == "0.9.6" and ota_status(watch).get("ota", {}).get("state") == "updated",
               120, what="status fw 0.9.6, ota updated")
    for n, data in files.items():  # the slot holds the release, byte for byte
        assert (dev.folder / "ota" / "a" / n).read_bytes() == data
    assert dev.exit_codes == [75, 75]  # the cut, and the reset into the new version
    no_traceback_but(dev)


def test_link_settings_on_probation_in_deep_sleep_run_out(workdir: Path, broker: Mosquitto) -> None:
    """New Wi-Fi settings that do not work, tried by a deep-sleep node: their minutes are
    counted across the sleeps (a wake never lasts them: counted in uptime, they never ran
    out and the node stayed off the air for good), then the old settings come back."""
    cfg = device_config("cm-ota-sleep2", broker.port, deep_sleep=True, interval_s=20,
                        sensors=[{"name": "th", "type": "sht3x", "i2c": 0, "scl": 22, "sda": 21, "addr": 0x44}])
    dev = Device(workdir / "dev", cfg, world(scale=30))
    (dev.folder / "ota").mkdir()
    (dev.folder / "ota" / "link.try").write_text(json.dumps(
        {"id": 13, "minutes": 2, "link": {"wifi": {"ssid": "field", "password": "not-the-one"}}}))
    result = dev.folder / "ota" / "result"
    result.write_text(json.dumps({"id": 13, "fw": OLD, "state": "trial"}))
    dev.start()
    try:
        wait_until(lambda: json.loads(result.read_text()).get("state") == "rolled_back", 120, what="link rolled back")
        dev.wait_log(r"net: online", 60)  # through the settings that work
    finally:
        dev.stop()
    assert json.loads(result.read_text()) == {"id": 13, "fw": OLD, "state": "rolled_back", "reason": "link: no publish in 2 min"}
    assert not (dev.folder / "ota" / "link.try").exists()
    on_trial = dev.log().split("back to the old settings")[0]
    assert on_trial.count("link: trying offer 13") >= 6  # two minutes of 20 s wakes
    assert set(dev.exit_codes) == {75}
    no_traceback_but(dev)
