# ruff: noqa: UP031  (MicroPython: no f-string habit on the device side)
# Runs INSIDE the MicroPython unix port: the node booted as main.py boots it, then every
# firmware module named on the command line loaded as the node loads it on demand, and
# a status document made and update offers judged. MicroPython interns a module's names when it loads it, in
# pools that double and are never freed; the names must all be in place at boot, while
# the heap is in one piece; nor may the code that runs later make one (a str iterated
# makes each of its characters a name). Update offers are judged too. Prints the VM's name-pool counts before and after (the
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
otacheck = __import__("otacheck")
with open("offers.json") as f:
    for offer in json.load(f):  # what the platform may send: good offers and bad ones
        otacheck.offer_ok(offer)
del otacheck
sys.modules.pop("otacheck", None)
print("RAN")
micropython.qstr_info()
