# Runs INSIDE the MicroPython unix port for `nakhon firmware bench`: the over-the-air
# step, in a process of its own so the main bench (fwbench.py) measures exactly what it
# did before OTA existed. Boots the real firmware from the mpy-cross build against a real
# broker through the fakes, as fwbench does, then stages this very build as an update:
# the offer, then each 1 KB chunk as the broker delivers it, each a measured step (heap
# in use after a full collection plus all the step allocates, automatic gc off), the last
# one with the checks read back from flash and the switch (whose reset is caught here).
# Prints one JSON line of figures.
import gc
import json
import sys

import fwmeter

peaks, bases, measure = fwmeter.meter(("boot", "ota"))
node = None


# An over-the-air update of this very build: the offer, then each 1 KB chunk as the
# broker delivers it (each a step: the node runs on between chunks), the checks read
# back from flash and the switch (whose reset is caught here).
class _Reset(Exception):
    pass


def _reset():
    raise _Reset()


def _release():
    import binascii
    import hashlib
    import os

    lib = next(p for p in sys.path if p.endswith("lib"))
    out = []

    def walk(rel):
        for name in sorted(os.listdir(lib + "/" + rel if rel else lib)):
            r = rel + "/" + name if rel else name
            if name.endswith(".mpy"):
                h = hashlib.sha256()
                size = 0
                with open(lib + "/" + r, "rb") as f:
                    while True:
                        b = f.read(256)
                        if not b:
                            break
                        h.update(b)
                        size += len(b)
                out.append([r, binascii.hexlify(h.digest()).decode(), size])
            elif "." not in name:
                walk(r)

    walk("")
    return lib, out


ota_run = {"lib": "", "offer": b"", "chunks": 0, "files": 0, "switched": False}


def ota_offer():
    node._on_message(node.t_config[:-6] + "ota", ota_run["offer"])


def ota_chunk(path, n):
    with open(ota_run["lib"] + "/" + path, "rb") as f:
        f.seek(n * 1024)
        payload = f.read(1024)
    want = sys.modules["ota"]._dl[6]
    try:
        node._on_message(want, payload)
    except _Reset:
        ota_run["switched"] = True


def ota_bench():
    hal.reset = _reset
    ota_run["lib"], files = _release()
    ota_run["offer"] = json.dumps({"v": 1, "id": 1, "fw": "9.9.9", "chunk": 1024, "boots": 3, "minutes": 10, "files": files}).encode()
    files = [(f[0], f[2]) for f in files]  # the bench keeps no more than it needs
    ota_run["files"] = len(files)
    measure("ota", ota_offer)
    for path, size in files:
        for n in range((size + 1023) // 1024):
            measure("ota", lambda: ota_chunk(path, n))  # noqa: B023
            ota_run["chunks"] += 1


gc.collect()
_start = gc.mem_alloc()
import fakehw  # noqa: E402, F401

gc.collect()
fakes = gc.mem_alloc() - _start
offset = fwmeter.offset = _start + fakes

# As main.py: the loader that picks the firmware version runs first and is dropped.
import otaboot  # noqa: E402

otaboot.select()
del otaboot
sys.modules.pop("otaboot", None)

import app  # noqa: E402
import hal  # noqa: E402

app.gc = fwmeter.probe
sys.modules["gc"] = fwmeter.probe


def boot():
    global node
    node = app.boot()


measure("boot", boot)
if node is None:
    raise SystemExit("bench: the device did not boot")
fwmeter.settle(node)
gc.collect()
rest = gc.mem_alloc() - offset
ota_bench()
print(json.dumps({"fakes_bytes": fakes, "rest_bytes": rest, "peaks": peaks, "bases": bases, "ota_chunks": ota_run["chunks"],
                  "ota_files": ota_run["files"], "ota_switched": ota_run["switched"], "heap_total": gc.mem_alloc() + gc.mem_free()}))
