# Entry point. On the ESP32 an unexpected error resets the board (the ring and seq
# survive in flash); the hardware watchdog covers anything that hangs.
import sys

if "lib" not in sys.path:
    sys.path.append("lib")

import app  # noqa: E402

try:
    app.main()
except Exception as e:  # noqa: BLE001
    sys.print_exception(e)
    import hal

    hal.sleep_ms(5000)
    hal.reset()

