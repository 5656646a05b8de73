# ruff: noqa: SIM105, UP031  (MicroPython: no contextlib, no f-string habit on the device side)
# Runs INSIDE the MicroPython unix port (heap capped like an ESP32): drives the real
# firmware drivers and ring against the hardware fakes and prints one JSON line per
# check, which test_units.py asserts on. Run with the device folder as cwd.
import gc
import json
import os

import fakehw

fakehw.configure({
    "scale": 50,  # device time 50x: a PM reading waits up to 3 device-s (60 ms real) for a fresh frame
    "i2c": {"0": {
        "68": {"type": "sht3x", "temp_c": 28.5, "rh": 71.25, "bad_crc_every": 3},
        "118": {"type": "bme280", "temp_c": 33.4, "pressure_hpa": 1003.7, "rh": 82.5},
    }},
    "ultrasonic": {"distance_cm": 120, "air_c": 28.5, "rh": 71.25},
    "rain": {"pin": 27, "tip_every_s": 10, "bounces": 4},
})

import hal  # noqa: E402
import app  # noqa: E402, F401  (loaded first, as main.py does: the boot code compiles beside it)
from mpcheck import out, read  # noqa: E402
from start import make, open_ring  # noqa: E402  (the boot code: drivers' factory, ring recovery)


# SHT3x: every third measurement has a corrupted humidity CRC.
sht = make({"type": "sht3x", "i2c": 0, "scl": 22, "sda": 21, "addr": 0x44})
results = [read(sht) for _ in range(3)]
out("sht3x", results=results, bad=sht.bad)
missing = make({"type": "sht3x", "i2c": 0, "scl": 22, "sda": 21, "addr": 0x45})
out("sht3x_absent", err=read(missing)[1])

bme = make({"type": "bme280", "i2c": 0, "scl": 22, "sda": 21, "addr": 0x76})
m, err = read(bme)
out("bme280", m=m, err=err)

us = make({"type": "ultrasonic", "trig": 5, "echo": 18, "mount_cm": 400})
us.air({"temp_c": 28.5, "rh": 71.25})  # the air the world's SHT3x is in (the node hands it over each cycle)
out("ultrasonic", m=read(us)[0])

rain = make({"type": "rain", "pin": 27, "mm_per_tip": 0.2, "debounce_ms": 50})
hal.sleep_ms(35000)  # three tips, each with four bounces
m = read(rain)[0]
out("rain", m=m, bounces=rain.bounces, counter=rain.counter is not None)


del sht, missing, bme, us, rain, results
gc.collect()  # the heap is an ESP32's: the script itself takes much of it
# The flash ring: rotation, oldest dropped first, read position and counts across "reboots".
# A small scratch buffer, so scans and streams cross its boundary mid-line.
try:
    os.mkdir("r")
except OSError:
    pass


SCRATCH = bytearray(48)


def batch(ring, max_n, max_bytes=8192, buf=SCRATCH):
    """peek() and the bytes stream() passes on: (n, nbytes, seg, off, data)."""
    n, nb, seg, off = ring.peek(buf, max_n, max_bytes)
    out = bytearray()
    ring.stream(seg, off, nb, buf, lambda b, o, e: out.extend(b[o:e]))
    return n, nb, seg, off, bytes(out)


ring = open_ring("r", 3, 200)
lines = [b'{"ts":%d,"seq":%d,"m":{"pm25":1}}\n' % (1764000000 + i, i) for i in range(40)]
for i in range(0, 40, 2):
    ring.append(lines[i : i + 2])
n, nb, seg, off, data = batch(ring, 5)
first = data.decode().split("\n")[0]
ring.commit(n, nb, seg, off, True)
again = open_ring("r", 3, 200)  # a reboot: state comes back from flash
out("ring", pending=ring.pending, dropped=ring.dropped, first=first, n=n, nbytes=nb, lines=data.count(b"\n"),
    after_reboot=[again.pending, again.dropped], files=sorted(os.listdir("r")))
gc.collect()  # the heap is an ESP32's: the script itself takes much of it
# A power cut in the middle of an append leaves half a line: the next boot cuts it off.
with open("r/s%08d" % again.last, "ab") as f:
    f.write(b'{"ts":17640')
repaired = open_ring("r", 3, 200)
before = (repaired.pending, repaired.dropped)
repaired.append([b'{"ts":1764000100,"seq":100,"m":{"pm25":1}}\n'])
total = 0
while repaired.pending:
    n, nb, seg, off, data = batch(repaired, 50)
    for line in data.decode().split("\n")[:-1]:
        json.loads(line)
        total += 1
    repaired.commit(n, nb, seg, off, True)
out("ring_repair", readable=total, pending=repaired.pending, before=before, dropped=repaired.dropped)

gc.collect()  # the heap is an ESP32's: the script itself takes much of it
# A line damaged in flash is skipped (and counted), the good ones around it still go.
damaged = open_ring("d", 4, 4096)
damaged.append([lines[0], b'{"ts":1764000001,"seq":1,"m":{"pm25":1\x00\x00\n', lines[2]])
got = []
while damaged.pending:
    n, nb, seg, off, data = batch(damaged, 50)
    got += [json.loads(x)["seq"] for x in data.decode().split("\n")[:-1]]
    damaged.commit(n, nb, seg, off, True)
out("ring_damaged", seqs=got, dropped=damaged.dropped)

gc.collect()  # the heap is an ESP32's: the script itself takes much of it
# A batch stops at max_bytes on a line boundary; a line longer than a whole batch is
# damage (skipped, counted), never a batch that can not be sent.
sized = open_ring("z", 4, 4096)
sized.append([lines[3], lines[4], b'{"ts":1764000005,"seq":5,"m":{"pm25":"' + b"x" * 200 + b'"}}\n', lines[6]])
sizes = []
got = []
while sized.pending:
    n, nb, seg, off, data = batch(sized, 50, 100)
    sizes.append(n)
    got += [json.loads(x)["seq"] for x in data.decode().split("\n")[:-1]]
    sized.commit(n, nb, seg, off, True)
out("ring_sized", seqs=got, sizes=sizes, dropped=sized.dropped, line=len(lines[3]))

# A replay batch as published: the lines, newlines turned into commas, are a JSON array.
del ring, again, repaired, damaged, sized, got, sizes, data  # the heap is an ESP32's: make room
gc.collect()
arr = open_ring("a", 4, 4096)
arr.append(lines[7:10])
n, nb, seg, off = arr.peek(bytearray(16), 50, 8192)
parts = []
arr.stream(seg, off, nb - 1, bytearray(16), lambda b, o, e: parts.append(bytes(b[o:e])), 44)
out("ring_array", seqs=[r["seq"] for r in json.loads("[" + b"".join(parts).decode() + "]")], n=n)
