# ruff: noqa: UP031  (MicroPython: no f-string habit on the device side)
# Runs INSIDE the MicroPython unix port: the node booted as main.py boots it, then every
# firmware module named on the command line loaded as the node loads it on demand, and
# a status document made. MicroPython interns a module's names when it loads it, in
# pools that double and are never freed; the names must all be in place at boot, while
# the heap is in one piece. Prints the VM's name-pool counts before and after (the
# "qstr pool:" lines, marked) for test_names.py. cwd holds config.json.
import gc
import json
import sys

import fakehw

fakehw.configure({"scale": 1000, "wifi": {"ssid": "elsewhere"}})

import micropython  # noqa: E402

import app  # noqa: E402

node = app.boot()
print("BOOTED")
micropython.qstr_info()
for name in sys.argv[1:]:
    __import__(name)
    sys.modules.pop(name, None)
    gc.collect()
report = __import__("report")
json.loads(report.doc(node))
print("RAN")
micropython.qstr_info()
