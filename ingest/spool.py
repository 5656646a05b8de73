"""The spool: line-protocol batches kept on disk while InfluxDB is away.

One file per batch, named by a counter so replay runs oldest first. A file
is written to a temporary name, fsync'd and renamed, so a crash leaves
either the whole batch or none of it. A batch is deleted only after
InfluxDB took it; a crash in between replays it once more, which is
harmless because writes are idempotent.

The folder is listed once, at start; after that the spool keeps its files in
order in memory, so draining a spool of N batches costs O(N), not a listing
and sort of the whole folder per batch.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from pathlib import Path


class Spool:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for tmp in self.folder.glob("*.tmp"):
            tmp.unlink()  # a batch torn by a crash was never acknowledged
        names = sorted(self.folder.glob("*.lp"))
        self._files: deque[tuple[Path, int]] = deque((p, self._count(p)) for p in names)
        self._guard = threading.Lock()
        self._next = int(names[-1].stem) + 1 if names else 0
        self.lines = sum(n for _, n in self._files)

    @staticmethod
    def _count(path: Path) -> int:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)

    def __len__(self) -> int:
        return len(self._files)

    def append(self, lines: list[str]) -> None:
        final = self.folder / f"{self._next:012d}.lp"
        tmp = final.with_suffix(".tmp")
        try:  # a full disk fails here: nothing half-written is left behind, the caller retries
            with open(tmp, "wb") as fh:
                fh.write("\n".join(lines).encode() + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            tmp.rename(final)
            dir_fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        with self._guard:
            self._files.append((final, len(lines)))
            self._next += 1
            self.lines += len(lines)

    def oldest(self) -> tuple[Path, list[str]] | None:
        with self._guard:
            if not self._files:
                return None
            path = self._files[0][0]
        text = path.read_text()
        return path, [ln for ln in text.split("\n") if ln]

    def remove(self, path: Path, n_lines: int) -> None:
        path.unlink()
        with self._guard:
            if self._files and self._files[0][0] == path:
                self._files.popleft()
            else:
                self._files = deque(f for f in self._files if f[0] != path)
            self.lines = max(0, self.lines - n_lines)
