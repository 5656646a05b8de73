# Runs INSIDE the MicroPython unix port: what the mp_*.py check scripts share (they find
# it beside them: MicroPython puts a script's folder first on its path).
import json

from drivers import SensorError


def out(name, **kw):
    """One JSON line per check, which the test on the CPython side reads."""
    kw["check"] = name
    print(json.dumps(kw))


def read(drv):
    """(measurements, None) from one read of a driver, or (what it had, its problem)."""
    m = {}
    try:
        drv.read(m)
        return m, None
    except SensorError as e:
        return m, e.problem
