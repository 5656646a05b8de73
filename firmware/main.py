# Entry point. The ring's scratch buffer is taken first, while the heap is still in one
# piece (importing the firmware fragments it). An unexpected error resets the board after
# a delay that grows with each crash in a row (5 s .. 40 s, counted in RTC memory; from
# the third the node boots in safe mode): the ring and seq survive in flash; the hardware
# watchdog covers anything that hangs. otaboot picks the firmware version first (lib/ or
# one received over the air) and leaves a new one that cannot even be imported.
import gc
import sys

gc.collect()
buf = bytearray(512)  # app.BUF_BYTES

if "lib" not in sys.path:
    sys.path.append("lib")

import otaboot  # noqa: E402

trial = otaboot.select()
try:
    import app  # noqa: E402
except Exception as e:  # noqa: BLE001
    trial = otaboot.fallback(e)
    if trial < 0:
        raise
    import app  # noqa: E402
otaboot.setup(app.Node, trial)
del otaboot
sys.modules.pop("otaboot", None)

try:
    app.main(buf)
except Exception as e:  # noqa: BLE001
    sys.print_exception(e)
    import hal

    n = 1
    try:
        import store

        n = store.crashed()
    except Exception:  # noqa: BLE001
        pass
    hal.sleep_ms(5000 << min(n - 1, 3))
    hal.reset()
