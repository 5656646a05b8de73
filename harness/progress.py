"""Progress lines on stderr for the long-running harness commands (stdout carries their reports)."""

from __future__ import annotations

import sys
import time


def say(msg: str, who: str = "verify", indent: int = 0) -> None:
    sys.stderr.write(f"[{who} {time.strftime('%H:%M:%S')}] {' ' * indent}{msg}\n")
    sys.stderr.flush()
