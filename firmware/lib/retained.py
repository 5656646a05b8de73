# The platform's config document for this device (contract/device_config.py), retained
# on the broker and so delivered on every (re)connect, and kept in flash to be applied at
# boot before the broker answers. Loaded on demand and dropped again (app._done): it runs
# once per connect or change, not every cycle.
import json

import hal
import log
from store import STATE, save
from catalogue import NAMES

try:
    from typing import Any  # for the type checker; MicroPython skips annotations
except ImportError:
    pass

_KEYS = ("v", "seq", "interval_s", "sensors", "thresholds", "password")


def config_ok(doc: Any) -> bool:
    """The rules of contract/device_config.py, checked on the device."""
    if type(doc) is not dict or doc.get("v") != 1 or type(doc.get("seq")) is not int or not 0 <= doc["seq"] < 1 << 31:
        return False
    for k in doc:
        if k not in _KEYS:
            return False
    iv = doc.get("interval_s", 60)
    sensors = doc.get("sensors", {})
    thresholds = doc.get("thresholds", {})
    if type(iv) is not int or not 1 <= iv <= 86400 or type(sensors) is not dict or type(thresholds) is not dict:
        return False
    for k, v in sensors.items():
        if type(v) is not bool or type(k) is not str or not 1 <= len(k) <= 16:
            return False
        for c in k:
            if not ("a" <= c <= "z" or "0" <= c <= "9" or c == "_"):
                return False
    for k, v in thresholds.items():
        if k not in NAMES or k == "fw" or type(v) not in (int, float):
            return False
    pw = doc.get("password")
    if pw is not None:
        if type(pw) is not str or not 16 <= len(pw) <= 128:
            return False
        for c in pw:
            if not ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c == "_" or c == "-"):
                return False
    return True


def apply(node: Any, payload: Any, persist: bool) -> None:
    """Apply a config document (contract/device_config.py; JSON text or parsed), or report
    it bad. Persisted, it is applied again at the next boot before the broker is reached."""
    doc = payload
    if type(payload) is not dict:
        try:
            doc = json.loads(payload)
        except ValueError:
            doc = None
    if not config_ok(doc):
        log.warn("config: rejected %r" % (doc,))
        node.faults["config"] = "invalid"
        node.status_due = True
        return
    if node.faults.pop("config", None):
        node.status_due = True
    if doc["seq"] == node.config_seq:
        return
    node.config_seq = doc["seq"]
    iv = doc.get("interval_s", node.interval_s)
    node.interval_s = iv
    node.interval_ms = iv * 1000
    for k, v in doc.get("sensors", {}).items():
        if v and k in node.disabled:
            node.disabled.remove(k)
        elif not v and k not in node.disabled:
            node.disabled.append(k)
            node.faults.pop(k, None)  # switched off: its faults are no longer news
    node.thresholds = doc.get("thresholds", {})
    fresh = "password" in doc
    if fresh:  # rotated credentials: used from the next connection on
        node.password = doc["password"]
        if node.client is not None:
            node.client.password = doc["password"]
    elif node.password:
        doc["password"] = node.password  # kept in flash with the next documents, so a reboot logs in with it
    nxt = hal.ticks_add(hal.ticks_ms(), node.interval_ms)
    if hal.ticks_diff(node.next_read, nxt) > 0:
        node.next_read = nxt
    node.status_due = True
    log.info("config: applied seq=%d interval_s=%d disabled=%s%s" % (node.config_seq, iv, node.disabled,
                                                                    " new credentials" if fresh else ""))
    if persist:
        # The state this leaves, not the document: a document that omits a key keeps what
        # an earlier one set, and the next boot must come back to exactly this.
        merged = {"v": 1, "seq": node.config_seq, "interval_s": node.interval_s,
                  "sensors": {k: False for k in node.disabled}, "thresholds": node.thresholds}
        if node.password:
            merged["password"] = node.password  # rotated credentials: a reboot logs in with them
        try:
            save(STATE + "/applied.json", json.dumps(merged))
        except OSError as e:
            node.flash_error(e)
