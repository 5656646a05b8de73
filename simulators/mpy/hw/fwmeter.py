# Runs INSIDE the MicroPython unix port: the heap meter of the firmware benches
# (fwbench.py, fwota.py). Each measured step starts after a full collection (so its base
# is everything resident) and runs with automatic collection off; the firmware's own
# gc.collect() calls go through the probe, which notes the heap in use just before each
# collection, so a step's peak is its true high-water mark, garbage included.
import gc


class Probe:
    # Stands in for the gc module inside the firmware's modules while measuring.
    hi = 0

    def collect(self) -> None:
        a = gc.mem_alloc()
        if a > Probe.hi:
            Probe.hi = a
        gc.collect()

    def mem_free(self) -> int:
        return gc.mem_free()

    def mem_alloc(self) -> int:
        return gc.mem_alloc()


probe = Probe()
offset = 0  # what is not the firmware's (the bench's own code, the fakes): set by the bench


def meter(names):
    """peaks and bases by step name, and measure(name, fn) that fills them."""
    peaks = {n: 0 for n in names}
    bases = {n: 0 for n in names}

    def measure(name, fn):
        gc.collect()
        base = gc.mem_alloc()
        Probe.hi = base
        gc.disable()
        try:
            fn()
            peak = max(Probe.hi, gc.mem_alloc())
        finally:
            gc.enable()
        bases[name] = max(bases[name], base - offset)
        peaks[name] = max(peaks[name], peak - offset)

    return peaks, bases, measure


def settle(node):
    """Run the node until it is online with nothing in flight, staged or due."""
    while not (node.online and node.inflight is None and not node.staging and not node.status_due):
        node.step()
        node.idle()
