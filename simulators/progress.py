"""What the operator sees: a live progress line, then a summary."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

log = logging.getLogger("nakhon.simulate")


def _n(x: float) -> str:
    return f"{int(x):,}"


class Progress:
    """Called with each fleet snapshot. On a terminal: one line rewritten in place; else a log line every `every` s."""

    def __init__(self, stream: TextIO = sys.stderr, every: float | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.every = every if every is not None else (1.0 if self.tty else 10.0)
        self._last = 0.0
        self._prev: tuple[float, int] | None = None
        self.rate = 0.0

    def __call__(self, snap: dict[str, Any]) -> None:
        now = time.monotonic()
        if self._prev is not None and now - self._prev[0] > 0:
            self.rate = (snap["readings_acked"] - self._prev[1]) / (now - self._prev[0])
        self._prev = (now, snap["readings_acked"])
        if now - self._last < self.every:
            return
        self._last = now
        faults = sum(snap.get("faults", {}).values())
        if self.tty:
            line = (
                f"connected {_n(snap['connected'])}/{_n(snap['devices'])}  sent {_n(snap['readings_sent'])}"
                f"  acked {_n(snap['readings_acked'])}  buffered {_n(snap['buffered'])}  faults {_n(faults)}"
                f"  {self.rate:,.0f} readings/s  cpu {snap.get('cpu_s', 0):.0f}s  mem {snap.get('rss_mb', 0):.0f} MB"
            )
            self.stream.write("\r\x1b[K" + line)
            self.stream.flush()
        else:
            log.info(
                "progress",
                extra={"fields": {
                    "connected": snap["connected"], "devices": snap["devices"], "sent": snap["readings_sent"],
                    "acked": snap["readings_acked"], "buffered": snap["buffered"], "faults": faults, "rate": round(self.rate, 1),
                }},
            )

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def summary(snap: dict[str, Any]) -> str:
    """The end-of-run report, for a person."""
    el = max(snap.get("elapsed_s", 0.0), 1e-9)
    rows = [
        ("devices", _n(snap["devices"])),
        ("connects (attempts, failed, refused)",
         f"{_n(snap['connects'])} ({_n(snap['connect_attempts'])}, {_n(snap['connect_failures'])}, {_n(snap['refused'])})"),
        ("messages sent / acked by broker", f"{_n(snap['messages_sent'])} / {_n(snap['messages_acked'])}"),
        ("readings sent / acked by broker", f"{_n(snap['readings_sent'])} / {_n(snap['readings_acked'])}"),
        ("rate (acked readings per second)", f"{snap['readings_acked'] / el:,.1f}"),
        ("status documents", _n(snap["status_sent"])),
        ("configs applied", _n(snap["config_applied"])),
        ("buffered while offline / replayed / dropped", f"{_n(snap['buffered_total'])} / {_n(snap['replayed'])} / {_n(snap['dropped'])}"),
        ("still buffered at the end (unsent)", _n(snap["unsent"])),
        ("stored confirmed / resent / unconfirmed",
         f"{_n(snap.get('confirmed', 0))} / {_n(snap.get('resent', 0))} / {_n(snap.get('unconfirmed', 0))}"),
        ("duplicates sent", _n(snap["duplicates_sent"])),
        ("elapsed", f"{el:.1f} s"),
        ("simulator cpu / memory", f"{snap.get('cpu_s', 0):.1f} s ({100 * snap.get('cpu_s', 0) / el:.0f}%) / {snap.get('rss_mb', 0):.0f} MB"),
    ]
    for kind, n in sorted(snap.get("faults", {}).items()):
        rows.append((f"fault {kind}", _n(n)))
    for reason, n in sorted(snap.get("malformed", {}).items()):
        rows.append((f"malformed sent: {reason}", _n(n)))
    for reason, n in sorted(snap.get("expected_rejected", {}).items()):
        rows.append((f"expected rejected: {reason}", _n(n)))
    if snap.get("storm_seconds"):
        rows.append(("storm: all back after", f"{snap['storm_seconds']:.1f} s"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows) + "\n"
