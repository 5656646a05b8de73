# The end of a probation (ota.py): a new firmware version, or new link settings, that
# got a reading acknowledged by the broker stays (confirm); one that did not within its
# minutes is left for what ran before (give_up, then a reset). Loaded when needed, dropped.
import os

import hal
import log
import otaboot
from app import FW

try:
    from typing import Any  # for the type checker; MicroPython skips annotations
except ImportError:
    pass


def confirm(node: Any) -> None:
    """The version (or link settings) on probation published: it stays."""
    node.trial_ms = 0
    t = otaboot.load(otaboot.LINK_TRY)
    if t:
        ok = otaboot.load(otaboot.LINK_OK) or {"link": {}}
        lk = ok["link"]
        if "wifi" in t["link"]:
            lk["wifi"] = t["link"]["wifi"]
        if "mqtt" in t["link"]:
            m = lk.get("mqtt") or {}
            m.update(t["link"]["mqtt"])
            lk["mqtt"] = m
        otaboot.save(otaboot.LINK_OK, ok)  # the settings that work now, before the trial file goes
        _remove(otaboot.LINK_TRY)
        otaboot.save(otaboot.RESULT, {"id": t["id"], "fw": FW, "state": "updated"})
        node.ota_id = t["id"]
        node.status_due = True
        log.info("ota: link offer %d confirmed" % t["id"])
    p = otaboot.load(otaboot.BOOT)
    if not p or not p.get("trial"):
        return
    p["trial"] = 0
    p.pop("boots", None)
    otaboot.save(otaboot.BOOT, p)
    otaboot.save(otaboot.RESULT, {"id": p.get("id", 0), "fw": p["fw"], "state": "updated"})
    node.ota_id = p.get("id", 0)
    node.status_due = True
    log.info("ota: %s confirmed" % p["fw"])


def slept(node: Any, rest_ms: int) -> None:
    """Deep sleep next, on probation: the time of this wake and of the sleep to come, and
    the wake, added to ota/boot and ota/link.try (a wake from deep sleep is no boot:
    otaboot.select and otaboot.setup end the probation by these at a wake)."""
    for path in (otaboot.BOOT, otaboot.LINK_TRY):
        p = otaboot.load(path)
        if p and (p.get("trial") or path == otaboot.LINK_TRY):
            p["ms"] = p.get("ms", 0) + node.uptime_ms + rest_ms
            p["wakes"] = p.get("wakes", 0) + 1
            otaboot.save(path, p)


def _remove(path: str) -> None:
    for p in (path, path + ".new"):
        try:
            os.remove(p)
        except OSError:
            pass


def give_up(node: Any) -> None:
    """Probation over without a publish: back to the previous version or link settings (after a reset)."""
    node.trial_ms = 0
    t = otaboot.load(otaboot.LINK_TRY)
    if t:
        otaboot.save(otaboot.RESULT, {"id": t["id"], "fw": FW, "state": "rolled_back",
                                      "reason": "link: no publish in %d min" % t.get("minutes", 10)})
        _remove(otaboot.LINK_TRY)
        log.warn("ota: link offer %d: no publish through it, back to the old settings" % t["id"])
        node._flush(True)
        node._mark("")
        hal.reset()
    p = otaboot.load(otaboot.BOOT)
    if p and p.get("trial"):
        otaboot.back(p, "no publish in %d min" % p.get("minutes", 10))
        node._flush(True)
        node._mark("")
        hal.reset()
