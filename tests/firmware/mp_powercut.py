# Runs INSIDE the MicroPython unix port: the flash ring and the small state files (seq
# ceiling, applied config) written through a scenario, with the power cut at every one
# of its write steps in turn (fakehw.cut_at), each followed by a boot that opens what
# flash holds. Prints one JSON line (test_powercut.py asserts on it). cwd: a scratch folder.
import json
import os

import fakehw

fakehw.configure({"scale": 1000})

import app  # noqa: E402  (loaded first, as main.py does)
import hal  # noqa: E402
import ota  # noqa: E402  (its tree removal, for the scratch flash)
import retained  # noqa: E402
import ring as rings  # noqa: E402
from start import open_ring  # noqa: E402

LINES = [b'{"ts":%d.000,"seq":%d,"m":{"pm25":%d}}\n' % (1764000000 + i, i, i) for i in range(12)]
BUF = bytearray(48)


rmtree = ota._rmtree


def drain(ring):
    got = []
    while ring.pending > 0:
        n, nb, seg, off = ring.peek(BUF, 50, 8192)
        if not n:
            break
        data = bytearray()
        ring.stream(seg, off, nb, BUF, lambda b, o, e: data.extend(b[o:e]))
        for line in bytes(data).decode().split("\n")[:-1]:
            got.append(json.loads(line)["seq"])
        ring.commit(n, nb, seg, off, True)
    return got


def node():
    # The node's fields that the seq ceiling and a config document touch.
    n = app.Node()
    n.faults, n.disabled, n.thresholds = {}, [], {}
    n.ceiling, n.config_seq, n.interval_s, n.interval_ms = 1000, 1, 60, 60000
    n.next_read, n.status_due = hal.ticks_ms(), False
    n.password, n.client = None, None
    return n


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def scenario(log):
    nd = node()
    ring = open_ring("state/ring", 8, 120)  # three readings a segment: the appends cross segments
    for i in range(5):  # one reading at a time (ring.chunk 1)
        ring.append([LINES[i]])
        log["written"].append(i)
    n, nb, seg, off = ring.peek(BUF, 50, 8192)  # a batch published; its PUBACK comes:
    ring.commit(n, nb, seg, off)  # the broker has them: still kept until the platform confirms
    log["acked"] += [1, 2]  # the platform confirms 1 and 2 first (0 not yet: nothing freed) ...
    rings._merge(ring.done, 1, 2)
    ring.confirm(BUF)
    log["acked"] += [0]  # ... then 0: the head moves over 0, 1, 2 at once
    rings._merge(ring.done, 0, 0)
    ring.confirm(BUF)
    nd._reserve(1000)  # the seq ceiling rises by a block
    log["seq"] = "2000"
    ring.append(LINES[5:9])  # a chunk of four
    log["written"] += [5, 6, 7, 8]
    retained.apply(nd, '{"v":1,"seq":2,"interval_s":30}', True)  # a config document, persisted
    log["applied"] = 2


def fresh():
    rmtree("state")
    os.mkdir("state")
    os.mkdir("state/ring")
    n = node()
    n.ceiling, n.config_seq = 0, -1
    n._reserve(0)  # ceiling 1000
    retained.apply(n, '{"v":1,"seq":1,"interval_s":60}', True)


fresh()
fakehw.cut_at(1 << 30)  # count the steps of a run without a cut
scenario({"written": [], "acked": []})
total = fakehw.write_steps()

bad = []
runs = 0
for step in range(1, total + 1):
    fakehw.cut_at(0)
    fresh()
    log = {"written": [], "acked": [], "seq": "1000", "applied": 1}
    fakehw.cut_at(step)
    cut = False
    try:
        scenario(log)
    except fakehw.PowerCut:
        cut = True
    fakehw.cut_at(0)
    runs += 1
    try:  # the next boot
        ring = open_ring("state/ring", 8, 120)
        got = drain(ring)
        seq = read("state/seq") or read("state/seq.new")
        applied = json.loads(read("state/applied.json") or read("state/applied.json.new"))["seq"]
    except Exception as e:  # noqa: BLE001
        bad.append({"step": step, "boot": repr(e)})
        continue
    lost = [s for s in log["written"] if s not in log["acked"] and s not in got]
    if not cut or lost or ring.dropped or seq not in ("1000", "2000") or applied not in (1, 2) \
            or (log["seq"] == "2000" and seq != "2000") or (log["applied"] == 2 and applied != 2) \
            or len(got) != len(set(got)) or [s for s in got if not 0 <= s < 12]:
        bad.append({"step": step, "cut": cut, "lost": lost, "dropped": ring.dropped, "seq": seq, "applied": applied, "got": got})
# A ring sized from the free flash (segments 0), counting what it already holds as free.
rmtree("state")
os.mkdir("state")
auto = open_ring("state/auto", 0, 4096)
for _ in range(12):  # a segment and a bit
    auto.append(LINES[:10])
again = open_ring("state/auto", 0, 4096)
print(json.dumps({"steps": total, "runs": runs, "bad": bad, "auto": [auto.segments, again.segments, fakehw.fs_free()]}))
