# Runs INSIDE the MicroPython unix port for `nakhon firmware bench`, from the mpy-cross
# build (what a board imports): boots the real firmware as main.py does, against a real
# broker through the fakes, then measures the heap of each step with fwmeter.py (its
# peak, garbage included, above everything resident: every module the node keeps, its
# objects and buffers). Prints one JSON line of figures.
#
# The bench's own code and bookkeeping are made before the fakes are measured, so
# neither counts as the firmware's.
import gc
import json
import sys

import fwmeter

CORE = ("hal", "log", "catalogue", "drivers", "clock", "store", "ring", "mqtt", "app")
REPLAY = int(sys.argv[1]) if len(sys.argv) > 1 else 500
TLS = len(sys.argv) > 2 and sys.argv[2] == "tls"  # only boot and a TLS connect (config.json says tls)
CONFIG_DOC = b'{"v":1,"seq":7,"interval_s":60,"sensors":{"pm":true},"thresholds":{"pm25":75.0}}'
modules = [[name, 0] for name in CORE]  # in load order
peaks, bases, measure = fwmeter.meter(("boot", "cycle", "replay", "status", "config", "reconnect"))
node = None


def publish_wait():
    node.service_link()
    while node.inflight is not None:
        node.client.poll(100)
        node.service_link()


def due():
    # until the next scheduled reading, so the sensors hold what a whole interval brings
    # (a full UART FIFO of PM frames), as in the field
    while hal.ticks_diff(node.next_read, hal.ticks_ms()) > 0:
        node.idle()


def cycle():
    # one read-publish-confirm cycle: read every sensor, the reading to flash, publish,
    # wait for the PUBACK and for the platform's `stored` confirmation that frees it
    node.take_reading()
    publish_wait()
    while node.ring.pending:
        node.client.poll(100)
        node.service_link()


def status():
    # a status publish (due on every change of faults or config, and every status_interval_s)
    node.status_due = True
    publish_wait()


def config_doc():
    # the retained config document, as it arrives on every (re)connect
    node._on_message(node.t_config, CONFIG_DOC)


def reconnect():
    # the link drops and comes back: socket, CONNECT, SUBSCRIBE, the retained config, status
    node.client.close()
    node.online = False
    node.retry_at = hal.ticks_ms()
    fwmeter.settle(node)


def replay_step():
    node.service_link()
    node.client.poll(10)


gc.collect()
_start = gc.mem_alloc()
import fakehw  # noqa: E402, F401

gc.collect()
fakes = gc.mem_alloc() - _start  # the stand-ins' own code and data: not on a board
offset = fwmeter.offset = _start + fakes

# As main.py: the loader that picks the firmware version runs first and is dropped.
try:
    import otaboot

    otaboot.select()
    del otaboot
    sys.modules.pop("otaboot", None)
except ImportError:  # a firmware from before over-the-air updates
    pass

# Where the heap goes: the modules a running node keeps, in the order they load.
prev = gc.mem_alloc()
for row in modules:
    __import__(row[0])
    gc.collect()
    now = gc.mem_alloc()
    row[1] = now - prev
    prev = now

import app  # noqa: E402
import hal  # noqa: E402
import ring  # noqa: E402

app.gc = fwmeter.probe  # the resident modules that collect (between cycles, after a confirmation) ...
ring.gc = fwmeter.probe
sys.modules["gc"] = fwmeter.probe  # ... and any loaded on demand (start.py, online.py before a TLS handshake, stored.py)


def boot():
    # as main.py: config.json checked, drivers made, state restored, boot-only code dropped
    global node
    node = app.boot()


measure("boot", boot)
if node is None:
    raise SystemExit("bench: the device did not boot")
fwmeter.settle(node)
gc.collect()
rest = gc.mem_alloc() - offset

if TLS:  # the handshake: certificate chain, session keys, records
    measure("reconnect", reconnect)
    print(json.dumps({"fakes_bytes": fakes, "rest_bytes": rest, "peaks": peaks, "bases": bases,
                      "heap_total": gc.mem_alloc() + gc.mem_free()}))
    raise SystemExit(0)

due()
measure("cycle", cycle)
measure("status", status)
measure("config", config_doc)
fwmeter.settle(node)  # the config change made a status due: send it outside the other figures
measure("reconnect", reconnect)

# Fill the ring with REPLAY readings, as an outage would, then replay them.
node.online = False
t = node.clock.now_ms()
for i in range(REPLAY):
    node._stage(t + i * 1000, node.seq, '{"pm1": 21, "pm25": 30, "pm10": 42, "temp_c": 31.12, "rh": 60.25}')
    node.seq += 1
    node._flush()
node.online = True
published0 = node.published
steps = 0
t0 = hal.ticks_ms()
while node.ring.pending or node.inflight is not None:
    measure("replay", replay_step)
    steps += 1
elapsed = hal.ticks_diff(hal.ticks_ms(), t0)
loaded = {}
for name, mod in sys.modules.items():
    f = getattr(mod, "__file__", "")
    if f and name not in ("__main__", "fakehw", "fwbench"):
        loaded[name] = f.rsplit("/", 1)[-1]
print(json.dumps({
    "fakes_bytes": fakes,
    "modules": modules,
    "loaded": loaded,
    "rest_bytes": rest,
    "bases": bases,
    "peaks": peaks,
    "replay_readings": REPLAY,
    "replay_steps": steps,
    "replay_device_ms": elapsed,
    "dropped": node.ring.dropped,
    "published": node.published - published0,
    "replay_confirmed": REPLAY - node.ring.pending,  # (a key longer than 10 characters is no qstr)
    "heap_total": gc.mem_alloc() + gc.mem_free(),
    "batch": node.batch,
}))
