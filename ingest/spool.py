"""The spool: line-protocol batches kept on disk while InfluxDB is away.

One file per batch, named by a counter so replay runs oldest first. A file
is written to a temporary name, fsync'd and renamed, so a crash leaves
either the whole batch or none of it. A batch is deleted only after
InfluxDB took it; a crash in between replays it once more, which is
harmless because writes are idempotent.
"""

from __future__ import annotations

import os
from pathlib import Path


class Spool:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for tmp in self.folder.glob("*.tmp"):
            tmp.unlink()  # a batch torn by a crash was never acknowledged
        names = self._segments()
        self._next = int(names[-1].stem) + 1 if names else 0
        self.lines = sum(self._count(p) for p in names)

    def _segments(self) -> list[Path]:
        return sorted(self.folder.glob("*.lp"))

    @staticmethod
    def _count(path: Path) -> int:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)

    def __len__(self) -> int:
        return len(self._segments())

    def append(self, lines: list[str]) -> None:
        final = self.folder / f"{self._next:012d}.lp"
        tmp = final.with_suffix(".tmp")
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
        self._next += 1
        self.lines += len(lines)

    def oldest(self) -> tuple[Path, list[str]] | None:
        names = self._segments()
        if not names:
            return None
        text = names[0].read_text()
        return names[0], [ln for ln in text.split("\n") if ln]

    def remove(self, path: Path, n_lines: int) -> None:
        path.unlink()
        self.lines = max(0, self.lines - n_lines)
