"""The last step of the link's escalation (issue 14): Wi-Fi says "connected", nothing gets
through and re-associating does not help (the access point's uplink is dead). The node
re-associates every LINK_RESET_MS (10 min) without a PUBACK, resets the board after
LINK_REBOOT_MS (30 min), keeps the reason in RTC memory and says it after the reboot;
while the fault lasts the next reset waits four times as long (no reset loop)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nakhon.servers import Mosquitto
from tests.firmware.device import Device, device_config, world
from tests.firmware.test_field import CITY, WEATHER, faults_seen, no_crash, seqs_of, taken_seqs
from tests.firmware.watch import Watch
from tests.helpers import wait_until

pytestmark = pytest.mark.integration  # the firmware on the MicroPython VM against one broker

BOOT_RE = re.compile(r"I (\d+) boot fw=\S+ reset=(\w+)")


def test_thirty_minutes_without_puback_reset_the_board_and_it_says_why(workdir: Path, broker: Mosquitto) -> None:
    dev_id = "cm-fw-nolink-01"
    watch = Watch(broker.port, CITY, dev_id)
    dev = Device(workdir / "dev", device_config(dev_id, broker.port, sensors=WEATHER, kind="weather"), world(scale=120))
    try:
        dev.start()
        wait_until(lambda: len(watch.readings()) >= 2, 60, what="readings online")
        dev.control({"wifi_zombie": "uplink"})
        dev.wait_log(r"link: no PUBACK for \d+ s: re-associating the Wi-Fi", 90, count=2)  # at 10 and 20 min
        dev.wait_log(r"link: no PUBACK for \d+ s: reset", 90)  # at 30 min
        dev.wait_log(r"boot fw=\S+ reset=hard", 60)
        # the fault goes on: 40 more device-minutes and no second reset (the next waits 4x as long)
        dev.wait_log(r"reading seq=\d+", 60, count=len(taken_seqs(dev)) + 240)  # 240 readings of 10 s
        resets_during = dev.log().count("FAKE reset hard")
        dev.control({})
        wait_until(lambda: "reset:nolink" in faults_seen(watch), 90, what="reset:nolink in status after the reboot")
        wait_until(lambda: set(seqs_of(watch)) >= taken_seqs(dev), 90, what="every reading published")
    finally:
        dev.stop()
        watch.close()
    no_crash(dev)
    assert resets_during == 1
    boots = [cause for _, cause in BOOT_RE.findall(dev.log())]
    assert boots == ["power_on", "hard"]
    lines = dev.log().splitlines()
    stalls = [ln for ln in lines if "re-associating the Wi-Fi" in ln]
    reset = [ln for ln in lines if re.search(r"no PUBACK for \d+ s: reset", ln)]
    assert len(stalls) >= 2 and len(reset) == 1
    quiet = int(re.search(r"no PUBACK for (\d+) s", reset[0]).group(1))
    assert 1800 <= quiet <= 1900  # thirty minutes, device time
