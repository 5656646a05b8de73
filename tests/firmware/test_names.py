"""Every name the firmware uses is interned at boot, while the heap is in one piece.

MicroPython keeps the names (qstrs) of each module it loads, in pools that double in
size and are never freed. A module loaded first while the node runs made the VM allocate
the next pool then, 640 names in one block, in a heap the ring and the client had cut
up: on a node with 80 KB free every reconnect ended in "MemoryError: memory allocation
failed, allocating 640 bytes" and it never published again."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nakhon.servers import free_port
from tests.firmware.device import device_config
from tests.firmware.test_ota_contract import OFFERS
from tests.firmware.test_units import run_mp

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
LIB = HERE.parent.parent / "firmware" / "lib"
POOL = re.compile(r"qstr pool: n_pool=(\d+), n_qstr=(\d+)")


def test_no_module_loaded_after_boot_adds_a_name(tmp_path: Path) -> None:
    # All but start and config, which build the node at boot and are dropped then.
    modules = sorted(p.stem for p in LIB.glob("*.py") if p.stem not in ("start", "config"))
    assert {"online", "report", "ota", "probation"} <= set(modules)
    (tmp_path / "config.json").write_text(json.dumps(device_config("cm-names-01", free_port())))
    (tmp_path / "offers.json").write_text(json.dumps(OFFERS))
    proc = run_mp(HERE / "mp_names.py", tmp_path, *modules)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    booted = proc.stdout.split("BOOTED", 1)[1].split("RAN", 1)
    at_boot, after = (tuple(int(x) for x in POOL.search(part).groups()) for part in booted)  # type: ignore[union-attr]
    assert after == at_boot, f"names added after boot (pools, names): {at_boot} -> {after}"
