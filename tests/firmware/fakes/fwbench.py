# Runs INSIDE the MicroPython unix port for `nakhon firmware bench`: boots the real
# firmware against a real broker (through the fakes), then measures heap use with
# gc.mem_alloc(): garbage collection is switched off for each measured step, so the
# bytes allocated in the step bound the peak above what was live before it.
# Prints one JSON line of figures.
import gc
import json
import sys

gc.collect()
_start = gc.mem_alloc()
import fakehw  # noqa: E402, F401

gc.collect()
fakes = gc.mem_alloc() - _start  # the stand-ins' own code: not on a real board

import app  # noqa: E402
import config  # noqa: E402
import hal  # noqa: E402

REPLAY = int(sys.argv[1]) if len(sys.argv) > 1 else 500


def measured(fn):
    gc.collect()
    base = gc.mem_alloc()
    gc.disable()
    try:
        fn()
        used = gc.mem_alloc() - base
    finally:
        gc.enable()
    return base, used


gc.collect()
buf = bytearray(app.BATCH_BYTES)
cfg = config.load()
del config
sys.modules.pop("config", None)  # as app.main does: the boot check's code goes after boot
node = app.Node(cfg, buf)
while not (node.online and node.inflight is None and not node.staging and not node.status_due):
    node.step()
    node.idle()
gc.collect()
rest = gc.mem_alloc() - fakes


def cycle():
    # one read-publish cycle: read every sensor, publish, wait for the PUBACK
    node.take_reading()
    node.service_link()
    while node.inflight is not None:
        node.client.poll(100)
        node.service_link()


base_c, used_c = measured(cycle)

# Fill the ring with REPLAY readings, as an outage would, then replay them.
node.online = False
t = node.clock.now_ms()
for i in range(REPLAY):
    node._stage(t + i * 1000, node.seq, '{"pm1": 21, "pm25": 30, "pm10": 42, "temp_c": 31.12, "rh": 60.25}')
    node.seq += 1
    node._flush()
node.online = True
steps = 0
peak_r = 0
t0 = hal.ticks_ms()
while node.ring.pending or node.inflight is not None:

    def step():
        node.service_link()
        node.client.poll(10)

    b, u = measured(step)
    peak_r = max(peak_r, b - fakes + u)
    steps += 1
elapsed = hal.ticks_diff(hal.ticks_ms(), t0)
print(json.dumps({
    "fakes_bytes": fakes,
    "rest_bytes": rest,
    "cycle_peak_bytes": base_c - fakes + used_c,
    "cycle_alloc_bytes": used_c,
    "replay_readings": REPLAY,
    "replay_peak_bytes": peak_r,
    "replay_steps": steps,
    "replay_device_ms": elapsed,
    "dropped": node.ring.dropped,
    "published": node.published,
    "heap_total": gc.mem_alloc() + gc.mem_free(),
    "batch": cfg["batch"],
}))
