# ruff: noqa: SIM105, UP031  (MicroPython: no contextlib, no f-string habit on the device side)
# Runs INSIDE the MicroPython unix port (heap capped like an ESP32): the flash ring with
# the platform's confirmations (firmware/lib/ring.py), against the fakes' flash. Prints
# one JSON line per check, which test_units.py asserts on. Run with a scratch folder as cwd.
import json

import fakehw

fakehw.configure({"scale": 50})

import app  # noqa: E402, F401  (loaded first, as main.py does)
import ring as rings  # noqa: E402
from start import open_ring  # noqa: E402
from mpcheck import out  # noqa: E402

SCRATCH = bytearray(48)
lines = [b'{"ts":%d,"seq":%d,"m":{"pm25":1}}\n' % (1764000000 + i, i) for i in range(40)]


def batch(ring, max_n, max_bytes=8192, buf=SCRATCH):
    n, nb, seg, off = ring.peek(buf, max_n, max_bytes)
    data = bytearray()
    ring.stream(seg, off, nb, buf, lambda b, o, e: data.extend(b[o:e]))
    return n, nb, seg, off, bytes(data)

# Confirmations (the `stored` topic): the head moves over confirmed readings only, oldest
# first; a confirmation for readings further on is remembered and used once the head
# gets there; a rewind sends again only what is not confirmed.


def confirm(ring, ranges):
    for i in range(0, len(ranges), 2):
        rings._merge(ring.done, ranges[i], ranges[i + 1])
    return ring.confirm(SCRATCH)


def sent_seqs(ring):
    n, nb, seg, off, data = batch(ring, 50)
    ring.commit(n, nb, seg, off)
    return [json.loads(x)["seq"] for x in data.decode().split("\n")[:-1]]


c = open_ring("c", 8, 200)
c.append(lines[:10])
steps = [sent_seqs(c)]  # everything goes out once
steps.append([confirm(c, [3, 5]), c.pending, list(c.done)])  # beyond the head: nothing freed
steps.append([confirm(c, [0, 2]), c.pending, list(c.done)])  # the head's gap filled: 0..5 go
c.cseg, c.coff, c.unsent = c.hseg, c.hoff, c.pending  # a rewind
steps.append([confirm(c, [8, 8]), c.pending])
steps.append(sent_seqs(c))  # the replay: 6, 7 (8 is confirmed) ...
steps.append(sent_seqs(c))  # ... then 9
steps.append([confirm(c, [6, 7, 9, 9]), c.pending, list(c.done), c.unsent])
again = open_ring("c", 8, 200)
steps.append([again.pending, again.dropped])
out("ring_confirm", steps=steps)

# The ring full while nothing is confirmed at its head: the oldest segment goes, and only
# its readings not confirmed count as dropped.
full = open_ring("f", 2, 200)
full.append(lines[:6])  # one segment of six
confirm(full, [2, 3])
for i in range(6, 18, 2):
    full.append(lines[i : i + 2])
out("ring_full_confirmed", dropped=full.dropped, pending=full.pending, first=full.first, done=list(full.done))
