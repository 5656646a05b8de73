# A bounded ring buffer of readings in flash, for while the broker is out of reach.
#
# Readings are JSON lines appended to segment files s00000000, s00000001, ... in the
# ring folder; a new segment starts when one reaches `seg_bytes`, and when there are
# more than `segments` the oldest file is deleted and its unsent readings are counted
# as dropped. Appends go to the newest file only and whole files are deleted, which
# suits flash wear (LittleFS spreads the blocks). The read position (segment, byte
# offset) and the dropped count live in `head`, rewritten once per acknowledged batch.
import os

from micropython import const

_SCAN = const(256)


class Ring:
    def __init__(self, folder: str, segments: int, seg_bytes: int) -> None:
        self.folder = folder
        self.segments = segments
        self.seg_bytes = seg_bytes
        try:
            os.mkdir(folder)
        except OSError:
            pass
        nums = sorted(int(n[1:]) for n in os.listdir(folder) if n[0] == "s")
        self.first = nums[0] if nums else 0
        self.last = nums[-1] if nums else 0
        self.hseg, self.hoff, self.dropped = self.first, 0, 0
        try:
            with open(folder + "/head") as f:
                parts = f.read().split()
            self.hseg, self.hoff, self.dropped = int(parts[0]), int(parts[1]), int(parts[2])
        except (OSError, ValueError, IndexError):
            pass
        if self.hseg < self.first or self.hseg > self.last:
            self.hseg, self.hoff = self.first, 0
        self._repair(self.last)
        self.pending = 0
        for n in range(self.hseg, self.last + 1):
            self.pending += self._lines(n, self.hoff if n == self.hseg else 0)

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

    def _repair(self, n: int) -> None:
        # A power cut during an append can leave a partial last line: cut it off, so
        # the next append does not glue a valid reading to garbage.
        size = self._size(n)
        if not size:
            return
        buf = bytearray(_SCAN)
        keep = 0
        with open(self._path(n), "rb") as f:
            pos = 0
            while True:
                k = f.readinto(buf)
                if not k:
                    break
                for i in range(k):
                    if buf[i] == 10:
                        keep = pos + i + 1
                pos += k
        if keep == size:
            return
        tmp = self._path(n) + ".tmp"
        with open(self._path(n), "rb") as src, open(tmp, "wb") as dst:
            left = keep
            while left > 0:
                k = src.readinto(buf)
                dst.write(buf[: min(k, left)])
                left -= k
        os.rename(tmp, self._path(n))

    def _save(self) -> None:
        with open(self.folder + "/head", "w") as f:
            f.write("%d %d %d\n" % (self.hseg, self.hoff, self.dropped))

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

    def peek(self, buf, max_n: int):
        """Read up to max_n of the oldest readings into buf: (n, nbytes, seg, off)."""
        while True:
            while self.hseg < self.last and self.hoff >= self._size(self.hseg):
                self._next_segment()
            if self.pending <= 0:
                return 0, 0, self.hseg, self.hoff
            with open(self._path(self.hseg), "rb") as f:
                f.seek(self.hoff)
                k = f.readinto(buf)
            n = end = 0
            bad = False
            for i in range(k or 0):
                if buf[i] == 10:
                    if buf[end] != 123 or i < end + 2 or buf[i - 1] != 125:  # not {...}: flash damage
                        bad = n == 0  # send the good ones first; the bad line heads the next batch
                        if bad:
                            self.hoff += i + 1  # skip it, counted as dropped
                            self.pending -= 1
                            self.dropped += 1
                            self._save()
                        break
                    n += 1
                    end = i + 1
                    if n == max_n:
                        break
            if not bad:
                return n, end, self.hseg, self.hoff

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
