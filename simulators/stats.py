"""The fleet's counters: what it sent, what the broker acknowledged, what it broke on purpose."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_SUMS = (
    "devices", "connected", "connects", "connect_attempts", "connect_failures", "refused", "messages_sent",
    "messages_acked", "readings_sent", "readings_acked", "duplicates_sent", "status_sent", "config_applied",
    "buffered", "buffered_total", "replayed", "dropped", "unsent", "storm_pending",
    "stored_messages", "stored_bad", "confirmed", "unconfirmed", "resent", "resends",
)
_COUNTERS = ("faults", "malformed", "expected_rejected")


@dataclass
class Stats:
    devices: int = 0
    connected: int = 0  # connected right now
    connects: int = 0  # successful connects, reconnects included
    connect_attempts: int = 0
    connect_failures: int = 0  # no answer, connection refused by TCP
    refused: int = 0  # CONNACK with an error (bad credentials, not authorised)
    messages_sent: int = 0
    messages_acked: int = 0  # PUBACK from the broker
    readings_sent: int = 0
    readings_acked: int = 0
    duplicates_sent: int = 0
    status_sent: int = 0
    config_applied: int = 0
    buffered: int = 0  # readings in device buffers right now
    buffered_total: int = 0  # readings that went through a buffer while offline
    replayed: int = 0  # buffered readings sent after reconnecting
    dropped: int = 0  # readings lost to a full device buffer
    unsent: int = 0  # readings still buffered when the run ended
    storm_pending: int = 0  # devices still reconnecting after a storm
    stored_messages: int = 0  # `stored` confirmations received
    stored_bad: int = 0  # ... that did not follow the contract (ignored)
    confirmed: int = 0  # readings the platform confirmed durable (freed)
    unconfirmed: int = 0  # readings sent and not confirmed yet, right now (at the end: what no confirmation covered)
    resent: int = 0  # readings sent again because no confirmation came within confirm_timeout_s
    resends: int = 0  # times a device sent its unconfirmed readings again (the wait doubles each time, as the firmware's)
    storm_seconds: float = 0.0  # from the storm to the last device back
    faults: Counter[str] = field(default_factory=Counter)  # readings or events touched, by fault kind
    malformed: Counter[str] = field(default_factory=Counter)  # messages sent, by the reason the ingest should give
    expected_rejected: Counter[str] = field(default_factory=Counter)  # readings the platform should refuse (skew)
    started: float = field(default_factory=time.monotonic)
    ledger: dict[str, list[tuple[float, int]]] | None = None  # device -> (ts, seq) of every valid reading made

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {k: getattr(self, k) for k in _SUMS}
        for k in _COUNTERS:
            snap[k] = dict(getattr(self, k))
        snap["storm_seconds"] = self.storm_seconds
        snap["elapsed_s"] = time.monotonic() - self.started
        return snap


def merge(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the snapshots of several fleet processes."""
    out: dict[str, Any] = {k: sum(s.get(k, 0) for s in snaps) for k in _SUMS}
    for k in _COUNTERS:
        c: Counter[str] = Counter()
        for s in snaps:
            c.update(s.get(k, {}))
        out[k] = dict(c)
    for k in ("cpu_s", "rss_mb"):  # simulator processes' own usage
        out[k] = sum(s.get(k, 0.0) for s in snaps)
    out["storm_seconds"] = max((s.get("storm_seconds", 0.0) for s in snaps), default=0.0)
    out["elapsed_s"] = max((s.get("elapsed_s", 0.0) for s in snaps), default=0.0)
    return out
