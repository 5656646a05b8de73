# Over-the-air updates: the platform's offer, the files, the checks, the switch.
#
# The offer is retained on the device's own `ota` topic (contract/ota.py):
#   {"v": 1, "id": 7, "fw": "0.4.0", "chunk": 1024, "boots": 3, "minutes": 10,
#    "files": [["app.mpy", "<sha256 hex>", 14321], ...]}
# Each file is read from retained messages nakhon/fw/<sha256>/<n> (chunk n of the file
# whose SHA-256 that is), one chunk subscribed at a time over the device's verified TLS
# session: no second connection, no extra RAM for a burst. A file is hashed as it is
# written into the slot that is not running (otaboot.py); a digest or size that differs
# from the offer's refuses the whole version before anything of it runs. When every file
# is there, each is read back from flash and hashed again; only then does ota/boot switch
# (one atomic rename) and the node reset into the new version on probation. The first
# reading the broker acknowledges confirms it (confirm); `minutes` without one, or
# `boots` boots without one, roll it back (otaboot.back): probation.py.
#
# Loaded on demand when an offer or a chunk arrives, dropped when the download ends; the
# offer's checks (otacheck.py) and the probation's end (probation.py) are modules of their
# own, so that what the running node loads at one time stays small.
import json
import os
import sys

import hal
import log
import otaboot
from app import FW

try:
    from typing import Any  # for the type checker; MicroPython skips annotations
except ImportError:
    pass

FW_TOPIC = "nakhon/fw/"
_dl: Any = None  # [offer, slot, file index, bytes so far, hasher, file, chunk topic]


def _result(doc: dict, state: str, reason: str = "") -> None:
    r = {"id": doc["id"], "fw": doc["fw"], "state": state}
    if reason:
        r["reason"] = reason[:64]
    otaboot.save(otaboot.RESULT, r)


def _rmtree(path: str) -> None:
    try:
        names = os.listdir(path)
    except OSError:
        return
    for n in names:
        p = path + "/" + n
        try:
            os.remove(p)
        except OSError:
            _rmtree(p)
    os.rmdir(path)


def message(node: Any, topic: str, payload: bytes) -> None:
    """An offer or a chunk (app.Node._on_message)."""
    try:
        if topic.startswith(FW_TOPIC):
            _chunk(node, topic, payload)
        else:
            _offer(node, payload)
    except OSError as e:  # flash full or failing: this version waits for the next offer
        if _dl is None or e.errno is None:
            raise
        node.flash_error(e)
        _refuse(node, "flash error %d" % e.errno)


def _offer(node: Any, payload: bytes) -> None:
    global _dl
    try:
        doc = json.loads(payload)
    except ValueError:
        doc = None
    import otacheck

    ok = otacheck.offer_ok(doc)
    del otacheck
    sys.modules.pop("otacheck", None)
    if not ok:
        log.warn("ota: offer rejected")
        node.fault("ota", "invalid")
        return
    node.fault("ota", None)
    done = otaboot.load(otaboot.RESULT) or {}
    if "link" in doc:
        _link(node, doc, done)
        return
    if doc["fw"] == FW:
        node.ota_id = doc["id"]
        return  # running it
    if done.get("id") == doc["id"] and done.get("state") in ("refused", "rolled_back"):
        node.ota_id = doc["id"]
        return  # tried once: a new release (a new id) tries again
    if node.trial_ms:
        log.warn("ota: %s offered while %s is on probation: later" % (doc["fw"], FW))
        return
    cur = otaboot.load(otaboot.BOOT)
    slot = "b" if cur and cur.get("slot") == "a" else "a"
    _stop(node)
    try:
        os.mkdir("ota")
    except OSError:
        pass
    _rmtree("ota/" + slot)
    os.mkdir("ota/" + slot)
    _dl = [doc, slot, -1, 0, None, None, None]
    _result(doc, "staging")
    node.status_due = True
    log.info("ota: staging %s (%d files) in slot %s" % (doc["fw"], len(doc["files"]), slot))
    _next(node)


def _link(node: Any, doc: dict, done: dict) -> None:
    # New link settings: kept beside the ones that work (ota/link.ok) as ota/link.try,
    # which the next boot lays over config.json (otaboot.link); kept once a reading has
    # been acknowledged through them (confirm), dropped after `minutes` without (give_up).
    if done.get("id") == doc["id"]:
        node.ota_id = doc["id"]
        return  # handled: tried, kept or given up
    if node.trial_ms:
        log.warn("ota: link offer %d while on probation: later" % doc["id"])
        return
    try:
        os.mkdir("ota")
    except OSError:
        pass
    otaboot.save(otaboot.LINK_TRY, {"id": doc["id"], "minutes": doc.get("minutes", 10), "link": doc["link"]})
    otaboot.save(otaboot.RESULT, {"id": doc["id"], "fw": FW, "state": "trial"})
    log.info("ota: link offer %d: reset to try it" % doc["id"])
    node._flush(True)
    node._mark("")
    hal.reset()


def _next(node: Any) -> None:
    # The next file of the offer, or the switch when they are all there.
    import hashlib

    d = _dl
    d[2] += 1
    files = d[0]["files"]
    if d[2] == len(files):
        _switch(node)
        return
    path = "ota/%s/%s" % (d[1], files[d[2]][0])
    parts = path.split("/")
    for i in range(3, len(parts)):  # sub-folders (drivers/)
        try:
            os.mkdir("/".join(parts[:i]))
        except OSError:
            pass
    d[3] = 0
    d[4] = hashlib.sha256()
    d[5] = open(path, "wb")
    _want(node, 0)


def _want(node: Any, n: int) -> None:
    # SUBSCRIBE (QoS 1) to the chunk wanted: its retained message comes at once.
    d = _dl
    c = node.client
    if d[6]:
        _unsubscribe(c, d[6])
    d[6] = "%s%s/%d" % (FW_TOPIC, d[0]["files"][d[2]][1], n)
    _packet(c, 0x82, d[6], 1)


def _unsubscribe(c: Any, topic: str) -> None:
    _packet(c, 0xA2, topic, 0)


def _packet(c: Any, kind: int, topic: str, extra: int) -> None:
    # SUBSCRIBE or UNSUBSCRIBE of one topic (their SUBACK / UNSUBACK are read by Client.poll)
    pid = c._next_pid()
    c._send_header(kind, 2 + 2 + len(topic) + extra)
    c._hdr[0] = pid >> 8
    c._hdr[1] = pid & 0xFF
    c.write(c._hdr, 0, 2)
    c._str(topic)
    if extra:
        c.write(b"\x01")


def _chunk(node: Any, topic: str, payload: bytes) -> None:
    import binascii

    d = _dl
    if d is None or topic != d[6]:
        return  # not the chunk asked for (a late duplicate)
    name, sha, size = d[0]["files"][d[2]]
    d[5].write(payload)
    d[4].update(payload)
    d[3] += len(payload)
    chunk = d[0].get("chunk", 1024)
    if d[3] > size or (d[3] < size and len(payload) != chunk):
        _refuse(node, "size " + name)
        return
    if d[3] < size:
        _want(node, d[3] // chunk)
        return
    d[5].close()
    d[5] = None
    if binascii.hexlify(d[4].digest()).decode() != sha:
        _refuse(node, "sha256 " + name)
        return
    _next(node)


def _hash(path: str) -> str:
    import binascii
    import hashlib

    h = hashlib.sha256()
    buf = bytearray(256)
    with open(path, "rb") as f:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            h.update(buf if k == 256 else buf[:k])  # a slice (a copy) for the last piece only
    return binascii.hexlify(h.digest()).decode()


def _switch(node: Any) -> None:
    # Every file read back from flash and checked again, then ota/boot replaced: the one
    # step that changes what boots.
    doc, slot = _dl[0], _dl[1]
    _unsubscribe(node.client, _dl[6])
    for name, sha, size in doc["files"]:
        try:
            ok = _hash("ota/%s/%s" % (slot, name)) == sha
        except OSError:
            ok = False
        if not ok:
            _refuse(node, "flash " + name)
            return
    cur = otaboot.load(otaboot.BOOT)
    if cur:
        cur.pop("prev", None)
    otaboot.save(otaboot.BOOT, {"slot": slot, "fw": doc["fw"], "id": doc["id"], "trial": 1, "boots": 0,
                                "max_boots": doc.get("boots", 3), "minutes": doc.get("minutes", 10), "prev": cur})
    _result(doc, "trial")
    log.info("ota: %s staged and checked: reset into it" % doc["fw"])
    _stop(node)
    node._flush(True)  # what waits in RAM goes to flash first
    node._mark("")
    hal.reset()


def _refuse(node: Any, reason: str) -> None:
    doc, slot = _dl[0], _dl[1]
    log.error("ota: %s refused: %s" % (doc["fw"], reason))
    _stop(node)
    _rmtree("ota/" + slot)
    _result(doc, "refused", reason)
    node.ota_id = doc["id"]
    node.status_due = True


def _stop(node: Any) -> None:
    global _dl
    d = _dl
    _dl = None
    if d is None:
        return
    if d[5] is not None:
        try:
            d[5].close()
        except OSError:
            pass


def busy() -> bool:
    return _dl is not None
