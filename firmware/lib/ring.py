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
import os

from micropython import const

_SCAN = const(256)
_SEND = const(1)  # kinds of line for _walk: a reading not confirmed yet,
_DONE = const(2)  # one the platform confirmed,
_BAD = const(4)  # damage
_ALL = const(0x3FFFFFFF)
_SEQ = b'"seq":'


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
        self.line_max = 8192

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
            n, _, ncov, _ = self._walk(buf, f, self.hoff, _ALL, _ALL, _ALL)
        if self.cseg == f:
            self.unsent -= self._walk(buf, f, self.coff, _ALL, _ALL, _ALL)[0]
            self.cseg, self.coff = f + 1, 0
        self._remove(f)
        self.first += 1
        if self.hseg < self.first:
            self.hseg, self.hoff = self.first, 0
        self.dropped += n - ncov
        self.pending -= n
        return n - ncov

    def covered(self, seq: int) -> bool:
        """Whether the platform confirmed seq (as far as the ring remembers)."""
        d = self.done
        for i in range(0, len(d), 2):
            if d[i] <= seq <= d[i + 1]:
                return True
        return False

    def _walk(self, buf, seg: int, off: int, want: int, max_n: int, max_bytes: int):
        # Whole lines of segment seg from byte off, while each is of a kind in `want`
        # (_SEND: a reading not yet confirmed, _DONE: one confirmed, _BAD: damage), at most
        # max_n of them in max_bytes: (n, nbytes, confirmed, damaged). self.stop is the seq
        # of the line it stopped at (-1: none, or damaged). A line is damaged when it is not
        # {...} with a seq (flash damage) or longer than a batch (line_max).
        n = nb = ncov = nbad = pos = start = seq = st = nd = 0
        first = prev = -1
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
                        if first != 123 or prev != 125 or not nd or end - start > self.line_max:
                            c = _BAD
                        elif self.covered(seq):
                            c = _DONE
                        else:
                            c = _SEND
                        if not c & want or n == max_n or (c == _SEND and end > max_bytes):
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
                        st = st + 1 if b == _SEQ[st] else (1 if b == 34 else 0)
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
        them with stream(), note the broker's PUBACK with sent(). Readings the platform
        already confirmed are passed over."""
        self.line_max = max_bytes
        while True:
            while self.cseg < self.last and self.coff >= self._size(self.cseg):
                self.cseg += 1
                self.coff = 0
            if self.unsent <= 0:
                return 0, 0, self.cseg, self.coff
            n, nb, _, bad = self._walk(buf, self.cseg, self.coff, _DONE | _BAD, _ALL, _ALL)
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
            n, nb, _, _ = self._walk(buf, self.cseg, self.coff, _SEND, max_n, max_bytes)
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

    def sent(self, n: int, nbytes: int, seg: int, off: int) -> None:
        """The broker acknowledged a batch from peek(): it waits for the platform's
        confirmation now (unless the send position moved meanwhile)."""
        if seg == self.cseg and off == self.coff:
            self.coff += nbytes
            self.unsent -= n

    def rewind(self) -> None:
        """Send again everything not confirmed, oldest first (after a reconnect, or when
        no confirmation came in time)."""
        self.cseg, self.coff, self.unsent = self.hseg, self.hoff, self.pending

    def release(self) -> None:
        """Forget everything sent (a platform that does not confirm: the broker's PUBACK
        is the end of the chain)."""
        while self.hseg < self.cseg:
            self._next_segment()
        self.hoff = self.coff
        self.pending = self.unsent
        if self.hseg < self.last and self.hoff >= self._size(self.hseg):
            self._next_segment()
        self._save()

    def commit(self, n: int, nbytes: int, seg: int, off: int) -> None:
        """sent() and release() at once."""
        self.sent(n, nbytes, seg, off)
        self.release()
