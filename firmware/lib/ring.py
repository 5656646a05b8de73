# A bounded ring buffer of readings in flash, for while the broker is out of reach.
#
# Readings are JSON lines appended to segment files s00000000, s00000001, ... in the
# ring folder; a new segment starts when one reaches `seg_bytes`, and when there are
# more than `segments` the oldest file is deleted and its unsent readings are counted
# as dropped. Appends go to the newest file only and whole files are deleted, which
# suits flash wear (LittleFS spreads the blocks). The read position (segment, byte
# offset) and the dropped count live in `head`, rewritten once per acknowledged batch
# (through a new file and a rename, so a power cut leaves the old head or the new one).
# A write that flash refuses raises OSError after the state in RAM is consistent: the
# caller reports it and goes on.
import os

from micropython import const

_SCAN = const(256)


class Ring:
    # Opened at boot by start.open_ring(), which finds the segments, the read position and
    # the dropped count in flash, mends a torn last line and counts what is pending.
    def __init__(self, folder: str, segments: int, seg_bytes: int) -> None:
        self.folder = folder
        self.segments = segments
        self.seg_bytes = seg_bytes
        self.first = self.last = self.hseg = self.hoff = self.dropped = self.pending = 0

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
        if self._size(self.last) >= self.seg_bytes:
            self.last += 1  # the next append starts a new segment

    def _drop_oldest(self) -> int:
        n = self._lines(self.first, self.hoff) if self.hseg == self.first else 0
        self._remove(self.first)
        self.first += 1
        if self.hseg < self.first:
            self.hseg, self.hoff = self.first, 0
        self.dropped += n
        self.pending -= n
        return n

    def peek(self, buf, max_n: int, max_bytes: int):
        """The oldest readings, up to max_n of them in at most max_bytes: (n, nbytes, seg, off).
        They stay in flash (buf is only scratch for the scan): send them with stream()."""
        while True:
            while self.hseg < self.last and self.hoff >= self._size(self.hseg):
                self._next_segment()
            if self.pending <= 0:
                return 0, 0, self.hseg, self.hoff
            n, end, bad = self._scan(buf, max_n, max_bytes)
            if bad < 0:
                return n, end, self.hseg, self.hoff
            self.hoff += bad + 1  # a damaged first line: skip it, counted as dropped
            self.pending -= 1
            self.dropped += 1
            self._save()

    def _scan(self, buf, max_n: int, max_bytes: int):
        # (lines, bytes) of the good whole lines at the read position, and where a damaged
        # first line ends (-1 if none). A line is damaged when it is not {...} (flash
        # damage) or longer than a batch; after good lines it ends the batch instead, and
        # heads the next one.
        n = end = pos = 0
        first = prev = -1
        with open(self._path(self.hseg), "rb") as f:
            f.seek(self.hoff)
            while True:
                k = f.readinto(buf)
                if not k:
                    return n, end, -1
                for i in range(k):
                    b = buf[i]
                    if first < 0:
                        first = b
                    if b == 10:
                        p = pos + i
                        if first != 123 or prev != 125 or p < end + 2 or p + 1 - end > max_bytes:
                            return n, end, p if n == 0 else -1
                        if p + 1 > max_bytes:
                            return n, end, -1
                        n += 1
                        end = p + 1
                        if n == max_n:
                            return n, end, -1
                        first = -1
                    prev = b
                pos += k

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

    def commit(self, n: int, nbytes: int, seg: int, off: int) -> None:
        """Forget readings the broker acknowledged (unless the ring moved on meanwhile)."""
        if seg != self.hseg or off != self.hoff:
            return  # their segment was dropped while the batch was in flight
        self.hoff += nbytes
        self.pending -= n
        if self.hseg < self.last and self.hoff >= self._size(self.hseg):
            self._next_segment()
        self._save()
