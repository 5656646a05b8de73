# Runs INSIDE the MicroPython unix port: a node without the time (no NTP answer yet) is
# told the platform's time in a `stored` message, first after one failed NTP attempt,
# then after four. Prints one JSON line (test_confirm.py asserts on it). cwd holds config.json.
import fakehw

fakehw.configure({"scale": 1000, "wifi": {"ssid": "elsewhere"}})

import app  # noqa: E402
import hal  # noqa: E402
import ring  # noqa: E402
from mpcheck import out  # noqa: E402

T = 1796000000500  # ms; the message says seconds
node = app.boot()
before = node.clock.synced
node.clock.tries = 1  # one NTP attempt failed: a first try that fails is common
ring.apply(node, b'{"v":1,"seq":[],"t":%d.5}' % (T // 1000))
after_one = node.clock.synced
node.clock.tries = 4  # NTP does not answer (the status says ntp:no_answer)
ring.apply(node, b'{"v":1,"seq":[],"t":%d.5}' % (T // 1000))
out("platform_time", before=before, after_one=after_one, after_four=node.clock.synced, rtc_ms=hal.rtc_time_ms(), t=T)
