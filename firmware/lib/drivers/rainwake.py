# The rain gauge across deep sleep (loaded by a deep-sleep node only, dropped after use):
# the pulse counter stops while the chip sleeps, so the gauge pin is an ext0 wake source.
# A tip wakes the chip; main's first step (tipped()) appends it to flash (state/tips) and
# sends the chip back to sleep until the reading is due, without booting the node. Before
# each deep sleep, arm() moves what the counter counted since the reading to flash too.
import hal
from drivers.rain import TIPS
from store import STATE, load, save

WAKE = STATE + "/wake"  # "<RTC ms the reading is due> <gauge pin>", written before a deep sleep


def _released(pin) -> None:
    for _ in range(20):  # the bucket swings past the magnet in well under a second
        if pin.value():
            return
        hal.sleep_ms(50)


def arm(rain, sleep_ms: int) -> None:
    """The tips counted since the reading to flash, the gauge pin made a wake source."""
    n = rain._count()
    if n:
        with open(TIPS, "a") as f:
            f.write("t" * n)
    _released(rain.pin)  # a contact still closed would wake the chip at once: counted already
    save(WAKE, "%d %d" % (hal.rtc_time_ms() + sleep_ms, rain.num))
    hal.wake_on_pin(rain.num)


def tipped() -> None:
    """The gauge woke the chip from deep sleep: one tip. Kept in flash; the chip sleeps
    on until the reading is due (returns, to boot the node, when that is near)."""
    try:
        due, num = (int(x) for x in (load(WAKE) or "").split())
    except ValueError:
        return
    with open(TIPS, "a") as f:
        f.write("t")
    _released(hal.pin_in(num))
    left = due - hal.rtc_time_ms()
    if left > 1000:
        hal.wake_on_pin(num)
        hal.deepsleep(left)
