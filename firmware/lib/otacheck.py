# The rules of an over-the-air offer (contract/ota.py, check_offer), checked on the
# device before anything of it is acted on. Loaded by ota.py for one offer, then dropped.
try:
    from typing import Any  # for the type checker; MicroPython skips annotations
except ImportError:
    pass

_KEYS = ("v", "id", "fw", "chunk", "boots", "minutes", "files", "link")


def _chars(s: str, extra: bytes) -> bool:
    # Byte by byte: MicroPython makes each character of a str it iterates a name it keeps
    # for good (app.ON_DEMAND says why no name may be made once the node runs).
    for c in s.encode():
        if not (97 <= c <= 122 or 48 <= c <= 57 or c in extra):
            return False
    return True


def _link_ok(lk: Any) -> bool:
    if type(lk) is not dict or not lk:
        return False
    for k in lk:
        if k not in ("wifi", "mqtt"):
            return False
    w = lk.get("wifi")
    if w is not None:
        if type(w) is not dict or type(w.get("ssid")) is not str or not 1 <= len(w["ssid"]) <= 32:
            return False
        pw = w.get("password", "")
        if type(pw) is not str or len(pw) > 64:
            return False
        for k in w:
            if k not in ("ssid", "password"):
                return False
    m = lk.get("mqtt")
    if m is not None:
        if type(m) is not dict or not m:
            return False
        for k in m:
            if k not in ("host", "port", "ca"):
                return False
        h = m.get("host", "x")
        if type(h) is not str or not 1 <= len(h) <= 64 or not _chars(h, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ.-"):
            return False
        p = m.get("port", 1)
        if type(p) is not int or not 1 <= p <= 65535:
            return False
        ca = m.get("ca", "-----BEGIN")
        if type(ca) is not str or not ca.startswith("-----BEGIN") or len(ca) > 3000:
            return False
    return True


def offer_ok(doc: Any) -> bool:
    """The rules of contract/ota.py (check_offer), checked on the device."""
    if type(doc) is not dict or doc.get("v") != 1 or type(doc.get("id")) is not int or not 0 <= doc["id"] < 1 << 31:
        return False
    for k in doc:
        if k not in _KEYS:
            return False
    if "link" in doc:
        for k in doc:
            if k not in ("v", "id", "minutes", "link"):
                return False
        m = doc.get("minutes", 10)
        return type(m) is int and 1 <= m <= 1440 and _link_ok(doc["link"])
    fw = doc.get("fw")
    if type(fw) is not str or not 1 <= len(fw) <= 32 or not _chars(fw, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ._+-") or fw.encode()[0] in b"._+-":
        return False
    c = doc.get("chunk", 1024)
    if type(c) is not int or not 256 <= c <= 3072:
        return False
    for k, hi in (("boots", 20), ("minutes", 1440)):
        v = doc.get(k, 1)
        if type(v) is not int or not 1 <= v <= hi:
            return False
    files = doc.get("files")
    if type(files) is not list or not files:
        return False
    app = False
    for f in files:
        if type(f) is not list or len(f) != 3 or type(f[0]) is not str or type(f[1]) is not str or type(f[2]) is not int:
            return False
        p = f[0]
        if not p.endswith(".mpy") or not _chars(p[:-4], b"_/") or len(f[1]) != 64 or not _chars(f[1], b"") or f[2] < 0:
            return False
        for part in p[:-4].split("/"):
            if not part:
                return False
        for ch in f[1].encode():
            if ch > 102:  # above "f": not lowercase hex
                return False
        app = app or p == "app.mpy"
    return app


