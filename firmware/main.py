# Entry point. The ring's scratch buffer is taken first, while the heap is still in one
# piece (importing the firmware fragments it). An unexpected error resets the board after
# a delay that grows with each crash in a row (5 s .. 40 s, counted in RTC memory; from
# the third the node boots in safe mode): the ring and seq survive in flash; the hardware
# watchdog covers anything that hangs.
import gc
import sys

gc.collect()
buf = bytearray(512)  # app.BUF_BYTES

if "lib" not in sys.path:
    sys.path.append("lib")

import app  # noqa: E402

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
