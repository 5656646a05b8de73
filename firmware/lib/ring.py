# A bounded ring buffer of readings in flash: every reading stays here until the platform
# confirms it stored it (the `stored` topic), not merely until the broker acknowledged it.
#
# Readings are JSON lines appended to segment files s00000000, s00000001, ... in the
# ring folder; a new segment starts when one reaches `seg_bytes`, and when there are
# more than `segments` the oldest file is deleted and its readings not confirmed are
# counted as dropped. Appends go to the newest file only and whole files are deleted,
# which suits flash wear (LittleFS spreads the blocks). Three positions: the head (what
# lies before it is confirmed and freed), the send position (what lies between the head
# and it was sent and waits for a confirmation; RAM only, so after a reboot or a rewind
# it is all sent again) and the end. The head and the dropped count live in `head`,
# rewritten once per confirmation that frees something (through a new file and a rename,
# so a power cut leaves the old head or the new one: at worst confirmed readings are sent
# again, and the platform's idempotent writes absorb them). The ring is FIFO: the head
# moves over confirmed readings only; confirmations for readings further on are kept as a
# few seq ranges (`done`) until the head reaches them.
# A write that flash refuses raises OSError after the state in RAM is consistent: the
# caller reports it and goes on.
import gc
import os
import sys

from micropython import const

import hal
import log

try:
    from typing import Any  # for the type checker; MicroPython skips annotations
except ImportError:
    pass

_SCAN = const(256)
_SEND = const(1)  # kinds of line for _scan: a reading not confirmed yet,
_DONE = const(2)  # one the platform confirmed,
_BAD = const(4)  # damage
_ALL = const(0x3FFFFFFF)
_LINE = const(8192)  # a line longer than this (app.BATCH_BYTES) is damage
_KEEP = const(8)  # confirmed ranges kept for readings beyond the head
# MicroPython interns every name of every module it loads, for good, in pools that double
# in size: names are kept few here (the node ran a few short of the next pool, 8 KB).


class Ring:
    # Opened at boot by start.open_ring(), which finds the segments, the read position and
    # the dropped count in flash, mends a torn last line and counts what is pending.
    def __init__(self, folder: str, segments: int, seg_bytes: int) -> None:
        self.folder = folder
        self.segments = segments
        self.seg_bytes = seg_bytes
        self.first = self.last = self.hseg = self.hoff = self.dropped = self.pending = 0
        # The send position (RAM only: after a reboot everything not confirmed goes again):
        # what lies between the head and it was sent and waits for the platform's `stored`.
        self.cseg = self.coff = self.unsent = 0
        self.done: list = []  # confirmed seq ranges not at the head yet: lo, hi, lo, hi, ...
        self.stop = -1

    def _path(self, n: int) -> str:
        return "%s/s%08d" % (self.folder, n)

    def _size(self, n: int) -> int:
        try:
            return os.stat(self._path(n))[6]
        except OSError:
            return 0

    def _lines(self, n: int, off: int) -> int:
        # Count the readings in segment n after byte `off`.
        buf = bytearray(_SCAN)
        count = 0
        try:
            with open(self._path(n), "rb") as f:
                f.seek(off)
                while True:
                    k = f.readinto(buf)
                    if not k:
                        break
                    count += bytes(buf[:k]).count(b"\n")
        except OSError:
            pass
        return count

    def _save(self) -> None:
        from store import save

        save(self.folder + "/head", "%d %d %d\n" % (self.hseg, self.hoff, self.dropped))

    def _remove(self, n: int) -> None:
        try:
            os.remove(self._path(n))
        except OSError:
            pass

    def append(self, lines: list) -> None:
        """Append readings (bytes ending in newline) in one write burst."""
        dropped = 0
        while self.last - self.first + 1 > self.segments:  # full: make room for the new segment
            dropped += self._drop_oldest()
        if dropped:
            self._save()
        with open(self._path(self.last), "ab") as f:
            for line in lines:
                f.write(line)
        self.pending += len(lines)
        self.unsent += len(lines)
        if self._size(self.last) >= self.seg_bytes:
            self.last += 1  # the next append starts a new segment

    def _drop_oldest(self) -> int:
        # The oldest segment goes; its readings not confirmed count as dropped.
        f = self.first
        buf = bytearray(_SCAN)
        n = ncov = 0
        if self.hseg == f:
            n, _, ncov, _ = self._scan(buf, f, self.hoff, _ALL, _ALL, _ALL)
        if self.cseg == f:
            self.unsent -= self._scan(buf, f, self.coff, _ALL, _ALL, _ALL)[0]
            self.cseg, self.coff = f + 1, 0
        self._remove(f)
        self.first += 1
        if self.hseg < self.first:
            self.hseg, self.hoff = self.first, 0
        self.dropped += n - ncov
        self.pending -= n
        return n - ncov

    def _scan(self, buf, seg: int, off: int, kind: int, max_n: int, max_bytes: int):
        # Whole lines of segment seg from byte off, while each is of a kind in `kind`
        # (_SEND: a reading not confirmed yet, _DONE: one the platform confirmed, _BAD:
        # damage), at most max_n of them in max_bytes: (n, nbytes, confirmed, damaged).
        # self.stop is the seq of the line it stopped at (-1: none, or damaged). A line is
        # damaged when it is not {...} with a seq (flash damage) or longer than a batch.
        n = nb = ncov = nbad = pos = start = seq = st = nd = 0
        first = prev = -1
        lim = max_bytes if max_bytes < _LINE else _LINE
        d = self.done
        self.stop = -1
        try:
            f = open(self._path(seg), "rb")
        except OSError:
            return 0, 0, 0, 0
        with f:
            f.seek(off)
            while True:
                k = f.readinto(buf)
                if not k:
                    return n, nb, ncov, nbad
                for i in range(k):
                    b = buf[i]
                    if b == 10:
                        end = pos + i + 1
                        if first != 123 or prev != 125 or not nd or end - start > lim:
                            c = _BAD
                        else:
                            c = _SEND
                            for j in range(0, len(d), 2):
                                if d[j] <= seq <= d[j + 1]:
                                    c = _DONE
                                    break
                        if not c & kind or n == max_n or (c == _SEND and end > max_bytes):
                            if c != _BAD:
                                self.stop = seq
                            return n, nb, ncov, nbad
                        n += 1
                        nb = start = end
                        if c == _DONE:
                            ncov += 1
                        elif c == _BAD:
                            nbad += 1
                        first = -1
                        seq = st = nd = 0
                        continue
                    if first < 0:
                        first = b
                    if st < 6:  # looking for "seq":
                        st = st + 1 if b == b'"seq":'[st] else (1 if b == 34 else 0)
                    elif st == 6:
                        if 48 <= b <= 57:
                            seq = seq * 10 + b - 48
                            nd += 1
                        else:
                            st = 7
                    prev = b
                pos += k

    def peek(self, buf, max_n: int, max_bytes: int):
        """The oldest readings not sent yet, up to max_n of them in at most max_bytes:
        (n, nbytes, seg, off). They stay in flash (buf is only scratch for the scan): send
        them with stream(), note the broker's PUBACK with commit(). Readings the platform
        already confirmed are passed over."""
        while True:
            while self.cseg < self.last and self.coff >= self._size(self.cseg):
                self.cseg += 1
                self.coff = 0
            if self.unsent <= 0:
                return 0, 0, self.cseg, self.coff
            n, nb, _, bad = self._scan(buf, self.cseg, self.coff, _DONE | _BAD, _ALL, max_bytes)
            if n:  # confirmed already, or damaged (counted as dropped): nothing to send
                at_head = self.cseg == self.hseg and self.coff == self.hoff
                self.coff += nb
                self.unsent -= n
                if at_head:  # and nothing before them waits: freed at once
                    self.hoff = self.coff
                    self.pending -= n
                    self.dropped += bad
                    self._save()
                continue
            n, nb, _, _ = self._scan(buf, self.cseg, self.coff, _SEND, max_n, max_bytes)
            if n:
                return n, nb, self.cseg, self.coff
            if self.cseg >= self.last:
                self.unsent = 0  # nothing whole left to read
                return 0, 0, self.cseg, self.coff
            self.cseg += 1
            self.coff = 0

    def stream(self, seg: int, off: int, nbytes: int, buf, write, sep: int = 10) -> None:
        """Pass nbytes of segment seg from byte off to write(buf, 0, k) a bufful at a time,
        with each newline turned into sep (commas make the lines a JSON array's items)."""
        with open(self._path(seg), "rb") as f:
            f.seek(off)
            while nbytes > 0:
                k = f.readinto(buf, min(nbytes, len(buf)))
                if not k:
                    raise OSError("ring: segment %d is short" % seg)
                if sep != 10:
                    for i in range(k):
                        if buf[i] == 10:
                            buf[i] = sep
                write(buf, 0, k)
                nbytes -= k

    def _next_segment(self) -> None:
        self._remove(self.hseg)
        self.hseg += 1
        self.hoff = 0
        self.first = self.hseg
        if self.cseg < self.hseg:
            self.cseg, self.coff = self.hseg, 0

    def commit(self, n: int, nbytes: int, seg: int, off: int, force: bool = False) -> None:
        """The broker acknowledged a batch from peek(): it waits for the platform's
        confirmation now (unless the send position moved meanwhile). force: a platform
        that does not confirm, the PUBACK is the end of the chain: forget what was sent."""
        if seg == self.cseg and off == self.coff:
            self.coff += nbytes
            self.unsent -= n
        if force:
            while self.hseg < self.cseg:
                self._next_segment()
            self.hoff = self.coff
            self.pending = self.unsent
            if self.hseg < self.last and self.hoff >= self._size(self.hseg):
                self._next_segment()
            self._save()

    def confirm(self, buf) -> int:
        """Forget the readings at the head that the platform confirmed (self.done), and
        damaged lines (counted as dropped), oldest first, up to the first one it has not:
        the ring is FIFO. Returns how many were freed."""
        freed = 0
        while self.pending > 0:
            while self.hseg < self.last and self.hoff >= self._size(self.hseg):
                self._next_segment()
            n, nb, _, bad = self._scan(buf, self.hseg, self.hoff, _DONE | _BAD, _ALL, _ALL)
            if not n:
                break
            self.hoff += nb
            self.pending -= n
            self.dropped += bad
            freed += n
        if freed and self.hseg < self.last and self.hoff >= self._size(self.hseg):
            self._next_segment()
        if self.cseg < self.hseg or (self.cseg == self.hseg and self.coff < self.hoff):
            self.cseg, self.coff, self.unsent = self.hseg, self.hoff, self.pending
        d = self.done
        if self.pending <= 0:
            d.clear()
        elif self.stop >= 0:  # the head waits for self.stop: ranges below it are of no more use
            while d and d[1] < self.stop:
                del d[0:2]
        if freed:
            self._save()
        return freed


# --- the platform's `stored` confirmations (contract/stored.py) --------------------------
def _merge(d: list, lo: int, hi: int) -> None:
    # [lo, hi] into the sorted, disjoint ranges d (lo, hi, lo, hi, ...); beyond _KEEP
    # ranges the highest go (their readings are sent again and confirmed again: harmless).
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


def num(b, k: int):
    # Plain digits at b[k] (no sign, no leading zero): (value, end), or (-1, k).
    j = k
    v = 0
    while j < len(b) and 48 <= b[j] <= 57:
        v = v * 10 + b[j] - 48
        j += 1
    if j == k or (b[k] == 48 and j > k + 1):
        return -1, k
    return v, j


def check(b, d):
    """(n, t_ms) of a `stored` payload in the form the platform writes it
    (contract.stored.encode_stored: compact, keys in order), `{"v":1,"seq":[[40,52],
    [55,55]],"t":1764000000.25}`: n ranges, the time in ms (-1 if not given); None for
    any other form (stored.py, the full parser, decides those). d: a list to merge the
    ranges into once the payload is known good (None: only check)."""
    if not b.startswith(b'{"v":1,"seq":['):
        return None
    k = 14
    n = 0
    last = -1
    if k < len(b) and b[k] == 93:
        k += 1
    else:
        while True:
            if k >= len(b) or b[k] != 91 or n >= 32:
                return None
            lo, k = num(b, k + 1)
            if lo < 0 or k >= len(b) or b[k] != 44:
                return None
            hi, k = num(b, k + 1)
            if hi < lo or lo <= last or hi > 9007199254740991 or k >= len(b) or b[k] != 93:
                return None
            if d is not None:
                _merge(d, lo, hi)
            n += 1
            last = hi
            k += 1
            if k < len(b) and b[k] == 93:
                k += 1
                break
            if k >= len(b) or b[k] != 44:
                return None
            k += 1
    ms = -1
    if b[k : k + 5] == b',"t":':
        ms, k = num(b, k + 5)
        if ms < 0:
            return None
        ms *= 1000
        if k < len(b) and b[k] == 46:  # a fraction: its first three digits, as ms
            j = k + 1
            w = 100
            while j < len(b) and 48 <= b[j] <= 57:
                ms += (b[j] - 48) * w
                w //= 10
                j += 1
            if j == k + 1:
                return None
            k = j
        if ms >= 8589934592000:
            return None
    if k != len(b) - 1 or b[k] != 125:
        return None
    return n, ms


def apply(node: Any, b: bytes) -> None:
    """A `stored` message: free what it confirms (the ring from its head on), and take its
    time if the clock is unknown and NTP does not answer."""
    r = node.ring
    got = check(b, None)
    if got is None:  # another form than the platform's: the full parser, loaded for this once
        d = [0] * 64
        try:
            got = __import__("stored").parse(b, d)
        finally:
            sys.modules.pop("stored", None)
        for k in range(max(got[0], 0)):
            _merge(r.done, d[2 * k], d[2 * k + 1])
    elif got[0] > 0:
        check(b, r.done)
    n, ms = got
    if n < 0:
        log.warn("stored: refused %r" % (b[:80],))
        node.fault("stored", "invalid")
        return
    if node.faults.get("stored") == "invalid":
        node.fault("stored", None)
    # The platform's time only while NTP does not answer (after the attempts that make the
    # status say ntp:no_answer): NTP is the finer source, and a first try that fails is common.
    if ms >= 0 and not node.clock.synced and node.clock.tries > 3:
        gc.collect()
        import online

        try:
            online.sync(node, ms)
        finally:
            sys.modules.pop("online", None)  # loaded again at the next connect or NTP sync
    node.confirm_ms = max(60000, node.client.keepalive_ms)  # the platform answers: back to the base wait
    if not n:
        return
    freed = 0
    try:
        freed += r.confirm(node.buf)
    except OSError as e:  # the head moved in RAM; flash gets it at the next confirmation
        node.flash_error(e)
    if freed:
        node.confirm_t = hal.ticks_ms()
        log.info("stored: %d confirmed, pending=%d" % (freed, r.pending))
        gc.collect()  # what the scan of flash left: a replay brings one confirmation per batch
