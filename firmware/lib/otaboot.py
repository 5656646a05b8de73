# Which firmware version this boot runs. main.py calls select() before anything else of
# the firmware is imported, and drops this module once the node is built.
#
# Flash: lib/ holds the version `nakhon firmware flash` put there (the factory version);
# ota/a and ota/b hold versions received over the air (ota.py stages a new one, whole and
# checked, into the slot that is not running); ota/boot says which one runs. Replacing
# that one small file (written beside, then renamed) is the only step that switches
# versions: a power cut before it leaves the old version, after it the new one, both
# whole, and a torn ota/boot.new is never read while ota/boot is there.
#
# A new version boots on probation ("trial"): each of its boots is counted in ota/boot
# before it runs, and after `boots` boots without one reading acknowledged by the broker
# (ota.confirm) the version it replaced is chosen again. A wake from deep sleep (the
# timer's or a rain tip's) is no boot: a deep-sleep node wakes for every reading, and
# the time its probation has had, asleep and awake, is kept in ota/boot (and in
# ota/link.try for link settings) at each sleep (probation.slept); at a wake the trial
# ends once it has had its `minutes` and at least `boots` wakes without a publish. A version that cannot even be
# imported is left at once (fallback). Either way ota/result says why, for the status.
# Self-contained on purpose: a module imported here would come from the old version.
import json
import os
import sys

BOOT = "ota/boot"
RESULT = "ota/result"
LINK_OK = "ota/link.ok"  # link settings received over the air that have worked
LINK_TRY = "ota/link.try"  # new ones on probation
_path: list = []  # sys.path as main.py set it, before a slot went first
_slot = ""


def load(path: str):
    """A JSON file written by save(), or None."""
    for p in (path, path + ".new"):
        try:
            with open(p) as f:
                return json.loads(f.read())
        except (OSError, ValueError):
            pass
    return None


def save(path: str, doc) -> None:
    """Replace a small JSON file so that a power cut leaves the old or the new one (as store.save)."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(json.dumps(doc))
    try:
        os.rename(tmp, path)
    except OSError:
        os.remove(path)  # a file system that will not rename onto a file (FAT)
        os.rename(tmp, path)


def back(p: dict, reason: str) -> None:
    """Leave the version of ota/boot `p` for the one it replaced, and say why."""
    save(RESULT, {"id": p.get("id", 0), "fw": p["fw"], "state": "rolled_back", "reason": reason[:64]})
    prev = p.get("prev")
    if prev:
        save(BOOT, prev)
    else:
        try:
            os.remove(BOOT)  # the factory version in lib/
        except OSError:
            pass
        try:
            os.remove(BOOT + ".new")
        except OSError:
            pass
    print("W 0 ota: rolled back from %s: %s" % (p["fw"], reason))


def _slept() -> bool:
    # This boot is a wake from deep sleep, not a restart. (hal is dropped again if it was
    # not loaded: the version chosen next imports its own.)
    had = "hal" in sys.modules
    try:
        import hal

        return hal.machine_reset_cause() == hal.DEEPSLEEP_RESET
    except Exception:  # noqa: BLE001
        return False
    finally:
        if not had:
            sys.modules.pop("hal", None)


def _over(p: dict) -> bool:
    # At a wake from deep sleep: has the probation of `p` (ota/boot or ota/link.try) had
    # its minutes, asleep and awake, and its wakes, without a publish?
    return p.get("ms", 0) >= p.get("minutes", 10) * 60000 and p.get("wakes", 0) >= p.get("max_boots", 3)


def _calm() -> None:
    # The crashes in a row counted in RTC memory were the version just left: the one that
    # boots now starts its own count (no safe mode for another version's crashes).
    # hal is dropped again at once: the version chosen next imports its own.
    try:
        import hal

        p = hal.rtc_memory().decode().split(" ")
        if p[0] == "nk1" and len(p) == 5:
            p[3] = "0"
            hal.rtc_memory(" ".join(p).encode())
    except Exception:  # noqa: BLE001
        pass
    sys.modules.pop("hal", None)


def select() -> int:
    """Put the version to run first in sys.path (in place of lib/). Returns the ms the
    version has left to prove itself while it is on probation, else 0."""
    global _slot
    if not _path:
        _path.extend(sys.path)
    p = load(BOOT)
    if not p or type(p) is not dict:
        return 0
    if p.get("trial"):
        if _slept():  # a wake, not a boot: judged by the time and the wakes it has had
            if _over(p):
                back(p, "no publish in %d min" % p.get("minutes", 10))
                _calm()
                return select()
        else:
            p["boots"] = p.get("boots", 0) + 1
            if p["boots"] > p.get("max_boots", 3):
                back(p, "no publish in %d boots" % (p["boots"] - 1))
                _calm()
                return select()
            save(BOOT, p)  # counted before it runs: a crash or a hang counts too
    slot = "ota/" + p["slot"]
    try:
        os.stat(slot + "/app.mpy")
    except OSError:
        if not p.get("prev") and not p.get("trial"):
            return 0
        back(p, "slot %s missing" % p["slot"])
        return select()
    for x in [x for x in sys.path if x.endswith("lib")]:
        sys.path.remove(x)
    sys.path.insert(0, slot)
    _slot = slot
    return p.get("minutes", 10) * 60000 if p.get("trial") else 0


def fallback(e) -> int:
    """The version on probation failed to import: back to the previous one, whose modules
    the next import loads. Returns what select() returns, or -1 if there was no trial."""
    p = load(BOOT)
    if not p or not p.get("trial") or not _slot:
        return -1
    back(p, "import: %r" % (e,))
    for name in list(sys.modules):
        if getattr(sys.modules[name], "__file__", "").startswith(_slot):
            del sys.modules[name]
    while sys.path:
        sys.path.pop()
    sys.path.extend(_path)
    return select()



def setup(node_cls, trial: int) -> None:
    """After select() and the import of app: hand the node class what the boot needs from
    ota/ (main.py): the link settings received over the air (those that worked, then
    those on probation, laid over config.json by start.node), how long the probation has
    (the version's or the link settings'), and the last offer handled."""
    lk: dict = {}
    t = load(LINK_TRY)
    if t and _slept() and _over(t):  # link settings on probation in deep sleep: their time is over
        save(RESULT, {"id": t.get("id", 0), "fw": sys.modules["app"].FW, "state": "rolled_back",
                      "reason": "link: no publish in %d min" % t.get("minutes", 10)})
        for p in (LINK_TRY, LINK_TRY + ".new"):
            try:
                os.remove(p)
            except OSError:
                pass
        print("W 0 link: offer %d: no publish through it, back to the old settings" % t.get("id", 0))
    for path in (LINK_OK, LINK_TRY):
        d = load(path)
        if not d or type(d.get("link")) is not dict:
            continue
        if "wifi" in d["link"]:
            lk["wifi"] = d["link"]["wifi"]
        if "mqtt" in d["link"]:
            m = lk.get("mqtt") or {}
            m.update(d["link"]["mqtt"])
            lk["mqtt"] = m
        if path == LINK_TRY:
            trial = max(trial, d.get("minutes", 10) * 60000)
            print("I 0 link: trying offer %d" % d.get("id", 0))
    node_cls.link = lk or None
    node_cls.trial_ms = trial
    r = load(RESULT)
    if r and r.get("state") != "staging":
        node_cls.ota_id = r.get("id", -1)
