"""What a `nakhon up` that was killed outright (SIGKILL, a closed terminal) left running.

Its services run in sessions of their own, so they outlive it. The next
`nakhon up` on the same root finds them in the last status file (`pid` of
each service), makes sure each still belongs to that root (its command line
or environment names the root), and stops them before starting its own: two
brokers or databases on one data folder would corrupt it. A `nakhon up`
that still runs on the root is refused instead.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import orjson


class AlreadyRunning(RuntimeError):
    pass


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _belongs(pid: int, root: Path) -> bool:
    """The process names `root` in its command line or environment (a recycled pid does not)."""
    needle = str(root).encode()
    for part in ("cmdline", "environ"):
        try:
            if needle in Path(f"/proc/{pid}/{part}").read_bytes():
                return True
        except OSError:
            continue
    return False


def _is_up(pid: int) -> bool:
    """The process is a `nakhon up` (its status file names this root)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"up" in args and any(a.endswith(b"nakhon") for a in args)


def find(status_path: Path, root: Path) -> list[tuple[str, int]]:
    """(service, pid) of what the last `nakhon up` on `root` left running; AlreadyRunning if it still runs."""
    try:
        doc = orjson.loads(status_path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return []
    up = int(doc.get("pid", 0))
    if up and up != os.getpid() and alive(up) and _is_up(up):
        raise AlreadyRunning(f"nakhon up already runs on {root} (pid {up}): stop it (Ctrl-C or kill {up}) or use another --root")
    left = []
    for e in doc.get("services", []):
        pid = e.get("pid")
        if pid and alive(int(pid)) and _belongs(int(pid), root):
            left.append((str(e["name"]), int(pid)))
    return left


def stop(left: list[tuple[str, int]], timeout: float = 30.0) -> None:
    """SIGTERM each one's process group (it leads a session of its own), then SIGKILL what is still there."""
    for _, pid in left:
        try:
            os.killpg(pid, signal.SIGTERM)
        except OSError:
            continue
    deadline = time.monotonic() + timeout
    while any(alive(pid) for _, pid in left) and time.monotonic() < deadline:
        time.sleep(0.1)
    for _, pid in left:
        if alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                continue
