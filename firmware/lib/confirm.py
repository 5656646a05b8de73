# Confirmations from the platform (contract/stored.py), resident: one comes for every
# reading or batch the node sends. The payload in the form the platform writes it
# (contract.stored.encode_stored: compact, keys in that order) is read here without any
# allocation to speak of; any other form goes to the full parser (stored.py, loaded on
# demand), so both accept exactly what the contract accepts (tested).
#
#     {"v":1,"seq":[[40,52],[55,55]],"t":1764000000.25}
#
# What a confirmation covers is freed: staged readings at once, the flash ring from its
# head on (FIFO) while the head's readings are covered; ranges further on are kept in
# ring.done (a few) until the head gets there.
import gc
import sys

from micropython import const

import hal
import log

try:
    from typing import Any  # for the type checker; MicroPython skips annotations
except ImportError:
    pass

_KEEP = const(8)  # confirmed ranges kept for readings beyond the ring's head
_DONE_BAD = const(6)  # ring._walk kinds: confirmed | damaged
_ALL = const(0x3FFFFFFF)
_HEAD = b'{"v":1,"seq":['


def _uint(p, i: int):
    # Plain digits at p[i] (no sign, no leading zero): (value, end), or (-1, i).
    j = i
    v = 0
    while j < len(p) and 48 <= p[j] <= 57:
        v = v * 10 + p[j] - 48
        j += 1
    if j == i or (p[i] == 48 and j > i + 1):
        return -1, i
    return v, j


def quick(p, out):
    """(n, t_ms) of a payload in the platform's own form (see parse), or None if it is in
    any other: the full parser decides those."""
    if not p.startswith(_HEAD):
        return None
    i = 14
    n = 0
    last = -1
    if i < len(p) and p[i] == 93:
        i += 1
    else:
        while True:
            if i >= len(p) or p[i] != 91 or n >= 32:
                return None
            lo, i = _uint(p, i + 1)
            if lo < 0 or i >= len(p) or p[i] != 44:
                return None
            hi, i = _uint(p, i + 1)
            if hi < lo or lo <= last or hi > 9007199254740991 or i >= len(p) or p[i] != 93:
                return None
            out[2 * n] = lo
            out[2 * n + 1] = hi
            n += 1
            last = hi
            i += 1
            if i < len(p) and p[i] == 93:
                i += 1
                break
            if i >= len(p) or p[i] != 44:
                return None
            i += 1
    t = -1
    if p[i : i + 5] == b',"t":':
        t, i = _uint(p, i + 5)
        if t < 0:
            return None
        t *= 1000
        if i < len(p) and p[i] == 46:  # a fraction: its first three digits, as ms
            k = i + 1
            scale = 100
            while k < len(p) and 48 <= p[k] <= 57:
                t += (p[k] - 48) * scale
                scale //= 10
                k += 1
            if k == i + 1:
                return None
            i = k
        if t >= 8589934592000:
            return None
    if i != len(p) - 1 or p[i] != 125:
        return None
    return n, t


def parse(p, out):
    """(n, t_ms) of a `stored` payload: its n ranges written to out (lo0, hi0, lo1, hi1, ...;
    out holds 64) and the platform's time in ms (-1 if not given); n is -1 for a payload
    the contract refuses."""
    r = quick(p, out)
    if r is not None:
        return r
    import stored

    try:
        return stored.parse(p, out)
    finally:
        sys.modules.pop("stored", None)


def handle(node: Any, payload: bytes) -> None:
    """A `stored` message: free what it confirms (RAM staging, then the flash ring, oldest
    first), and take its time if the clock is unknown."""
    n, t = parse(payload, node.rng)
    if n < 0:
        log.warn("stored: refused %r" % (payload[:80],))
        node.fault("stored", "invalid")
        return
    if node.faults.get("stored") == "invalid":
        node.fault("stored", None)
    if t >= 0 and not node.clock.synced:
        import online  # NTP has not answered: the platform's clock sets the time

        try:
            online.set_time(node, t)
        finally:
            sys.modules.pop("online", None)  # needed again at the next connect or sync
    if not n:
        return
    r = node.rng
    freed = 0
    st = node.staging
    if st:  # readings only in RAM: each line's seq is the number after "seq":
        keep = []
        for i in range(len(st)):
            line = st[i]
            k = line.find(b'"seq":') + 6
            if _within(r, n, int(line[k : line.find(b",", k)])):
                freed += 1
                if i < node.st_sent:
                    node.st_sent -= 1
            else:
                keep.append(line)
        if freed:
            node.staging = keep
    try:
        freed += confirm(node.ring, r, n, node.buf)
    except OSError as e:  # the head moved in RAM; flash gets it at the next confirmation
        node.flash_error(e)
    node.confirm_ms = node.confirm_base  # the platform answers: what it did not confirm is sent again at the base pace
    if freed:
        node.confirm_t = hal.ticks_ms()
        log.info("stored: %d confirmed, pending=%d" % (freed, node.ring.pending + len(node.staging)))
        gc.collect()  # what the scan of flash left: a replay brings one confirmation per batch


def _within(r, n: int, seq: int) -> bool:
    for i in range(n):
        if r[2 * i] <= seq <= r[2 * i + 1]:
            return True
    return False


def confirm(ring: Any, r, n: int, buf) -> int:
    """The platform stored the seqs of n ranges (r: lo0, hi0, lo1, hi1, ...): remember
    them in ring.done and free what they let go; returns how many readings were freed."""
    for i in range(n):
        _remember(ring.done, r[2 * i], r[2 * i + 1])
    return free(ring, buf)


def _remember(d: list, lo: int, hi: int) -> None:
    # Merge [lo, hi] into the sorted, disjoint ranges kept; beyond _KEEP ranges the
    # highest go (their readings are sent again and confirmed again: harmless).
    i = 0
    while i < len(d) and d[i + 1] < lo - 1:
        i += 2
    j = i
    while j < len(d) and d[j] <= hi + 1:
        lo = min(lo, d[j])
        hi = max(hi, d[j + 1])
        j += 2
    del d[i:j]
    d.insert(i, hi)
    d.insert(i, lo)
    if len(d) > 2 * _KEEP:
        del d[2 * _KEEP :]


def free(ring: Any, buf) -> int:
    """Forget the readings at the head of the ring that the platform confirmed (and
    damaged lines, counted as dropped), oldest first, up to the first one it has not:
    the ring is FIFO. Returns how many were freed."""
    freed = 0
    while ring.pending > 0:
        while ring.hseg < ring.last and ring.hoff >= ring._size(ring.hseg):
            ring._next_segment()
        n, nb, _, bad = ring._walk(buf, ring.hseg, ring.hoff, _DONE_BAD, _ALL, _ALL)
        if not n:
            break
        ring.hoff += nb
        ring.pending -= n
        ring.dropped += bad
        freed += n
    if freed and ring.hseg < ring.last and ring.hoff >= ring._size(ring.hseg):
        ring._next_segment()
    if ring.cseg < ring.hseg or (ring.cseg == ring.hseg and ring.coff < ring.hoff):
        ring.cseg, ring.coff, ring.unsent = ring.hseg, ring.hoff, ring.pending
    d = ring.done
    if ring.pending <= 0:
        d.clear()
    elif ring.stop >= 0:  # the head waits for ring.stop: ranges below it are of no more use
        while d and d[1] < ring.stop:
            del d[0:2]
    if freed:
        ring._save()
    return freed
