# Runs INSIDE the MicroPython unix port: two over-the-air updates (the first confirmed,
# the second never publishing and rolled back after its boots), with the power cut at
# every one of their write steps in turn (fakehw.cut_at): staging each file, the switch,
# the confirmation, the probation's boot counts and the rollback. After each cut the next
# boot's choice (otaboot.select) must be a whole version: the factory lib/, or a slot
# holding every file of the version ota/boot names, byte for byte. Prints one JSON line
# (test_ota_powercut.py asserts on it). cwd: a scratch folder.
import binascii
import hashlib
import json
import os
import sys

import fakehw

fakehw.configure({"scale": 1000})

import app  # noqa: E402  (loaded first, as main.py does)
import hal  # noqa: E402
import mqtt  # noqa: E402
import ota  # noqa: E402
import probation  # noqa: E402
import otaboot  # noqa: E402


class Reset(Exception):
    pass


def _reset():
    raise Reset()


hal.reset = _reset


class Sock:
    def write(self, data, off=0, n=-1):
        return len(data) - off if n < 0 else n


class Node:
    def __init__(self):
        self.client = mqtt.Client("cm-ota-pc", 30)
        self.client.sock = Sock()
        self.faults = {}
        self.status_due = False
        self.trial_ms = 0

    def fault(self, name, problem):
        pass

    def flash_error(self, e):
        pass

    def _flush(self, force=False):
        pass

    def _mark(self, s):
        pass


def version(fw, n):
    # A version: app.mpy, a driver in a sub-folder, more files; sizes cross chunk edges.
    files = {"app.mpy": (fw * 97).encode()[:700 + n], "drivers/pm.mpy": bytes(range(256)) * 2, "ota.mpy": b"x" * 256}
    man = []
    chunks = {}
    for p in sorted(files):
        d = files[p]
        sha = binascii.hexlify(hashlib.sha256(d).digest()).decode()
        man.append([p, sha, len(d)])
        for i in range(0, len(d), 256):
            chunks["nakhon/fw/%s/%d" % (sha, i // 256)] = d[i:i + 256]
    offer = json.dumps({"v": 1, "id": n, "fw": fw, "chunk": 256, "boots": 2, "minutes": 10, "files": man})
    return files, offer, chunks


V1 = version("1.1.0", 1)
V2 = version("1.2.0", 2)
WHOLE = {"1.1.0": V1[0], "1.2.0": V2[0]}


rmtree = ota._rmtree


def update(node, v):
    ota._dl = None
    ota.message(node, "nakhon/v1/chiang_mai/cm-ota-pc/ota", v[1])
    try:
        while ota._dl is not None:
            t = ota._dl[6]
            ota.message(node, t, v[2][t])
    except Reset:
        return True
    return False


PATH = list(sys.path)


def boot():
    """The next boot's choice: (fw or "factory", probation ms); sys.path put back after."""
    try:
        otaboot._path[:] = []
        trial = otaboot.select()
        p = otaboot.load(otaboot.BOOT)
        return (p["fw"] if p else "factory"), trial
    finally:
        while sys.path:
            sys.path.pop()
        sys.path.extend(PATH)


def scenario(log):
    node = Node()
    # while an update runs, the old or the new version may come up (the check below asks
    # that whichever it is be whole); once it switched, only the new one
    log["allowed"] = ["factory", "1.1.0"]
    if not update(node, V1):
        raise RuntimeError("first update did not switch")
    log["allowed"] = ["1.1.0"]
    fw, trial = boot()  # the new version's first boot, on probation
    node.trial_ms = trial
    probation.confirm(node)  # its first reading acknowledged
    log["allowed"] = ["1.1.0", "1.2.0"]
    if not update(node, V2):
        raise RuntimeError("second update did not switch")
    log["allowed"] = ["1.2.0"]
    for _ in range(2):  # two boots on probation, no publish
        boot()
    log["allowed"] = ["1.1.0", "1.2.0"]
    boot()  # the third: rolled back
    log["allowed"] = ["1.1.0"]


def check(step, cut, log):
    # The boot after the cut: a whole version, one the scenario had reached.
    try:
        fw, _ = boot()
    except Exception as e:  # noqa: BLE001
        return {"step": step, "boot": repr(e)}
    seen[fw] = seen.get(fw, 0) + 1
    if fw not in log["allowed"]:
        return {"step": step, "fw": fw, "allowed": log["allowed"]}
    if fw != "factory":
        p = otaboot.load(otaboot.BOOT)
        for name, data in WHOLE[fw].items():
            try:
                with open("ota/%s/%s" % (p["slot"], name), "rb") as f:
                    got = f.read()
            except OSError:
                got = None
            if got != data:
                return {"step": step, "fw": fw, "file": name, "torn": True}
    if not cut:
        return {"step": step, "cut": False}
    return None


def fresh():
    rmtree("ota")
    for p in ("ota/boot", "ota/result"):
        for q in (p, p + ".new"):
            try:
                os.remove(q)
            except OSError:
                pass


fresh()
fakehw.cut_at(1 << 30)
scenario({"allowed": ["factory"]})
total = fakehw.write_steps()
end = boot()[0]
result = otaboot.load(otaboot.RESULT)

bad = []
runs = 0
seen = {}
for step in range(1, total + 1):
    fakehw.cut_at(0)
    fresh()
    log = {"allowed": ["factory"]}
    fakehw.cut_at(step)
    cut = False
    try:
        scenario(log)
    except fakehw.PowerCut:
        cut = True
    fakehw.cut_at(0)
    runs += 1
    b = check(step, cut, log)
    if b:
        bad.append(b)
print(json.dumps({"steps": total, "runs": runs, "bad": bad, "end": end, "result": result, "seen": seen}))
