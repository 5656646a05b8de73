"""The ingest's own counters, logged and written to InfluxDB for dashboards."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from contract import storage
from contract.lineprotocol import encode_point


@dataclass
class Stats:
    worker: str
    received: int = 0
    acked: int = 0  # messages acknowledged to the broker (durable)
    pending: int = 0  # messages (any QoS) parsed and not yet acked
    pending_bytes: int = 0  # what they hold in memory (lines, dead letters, per-message overhead)
    save_failures: int = 0  # batches whose save raised (full disk, I/O error, bug): kept and retried
    save_last_error: str = ""
    readings_accepted: int = 0
    points_written: int = 0
    messages_rejected: int = 0
    readings_rejected: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    points_spooled: int = 0
    spool_depth: int = 0
    batches: int = 0
    batch_points_total: int = 0
    write_ms: list[float] = field(default_factory=list)
    influx_errors: int = 0
    influx_refused: int = 0  # requests refused for credentials or a missing database (data kept, retried)
    influx_too_large: int = 0  # 413 answers (the batch was split)
    influx_last_error: str = ""
    schema_created: int = 0  # the database or a retention policy was missing and created again
    broker_dropped: int = 0
    confirmed_readings: int = 0  # seqs made durable and handed to the confirmation rounds
    confirm_messages: int = 0  # `stored` messages sent (one per device per round)
    confirm_acked: int = 0  # ... that the broker acknowledged
    confirm_refused: int = 0  # ... that the broker refused (the ingest account may not write `stored`: fix its ACL)
    confirm_waiting: int = 0  # devices with confirmations not sent yet (broker away, window full)
    confirm_forgotten: int = 0  # ranges or devices forgotten past the tracker's bound (those devices replay)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict[str, float | int]:
        with self.lock:
            lat = sorted(self.write_ms)
            self.write_ms.clear()
            snap: dict[str, float | int] = {
                "received": self.received,
                "acked": self.acked,
                "pending": self.pending,
                "pending_bytes": self.pending_bytes,
                "save_failures": self.save_failures,
                "readings_accepted": self.readings_accepted,
                "points_written": self.points_written,
                "messages_rejected": self.messages_rejected,
                "readings_rejected": self.readings_rejected,
                "points_spooled": self.points_spooled,
                "spool_depth": self.spool_depth,
                "batches": self.batches,
                "batch_points_mean": (self.batch_points_total / self.batches) if self.batches else 0.0,
                "influx_errors": self.influx_errors,
                "influx_refused": self.influx_refused,
                "influx_too_large": self.influx_too_large,
                "schema_created": self.schema_created,
                "broker_dropped": self.broker_dropped,
                "confirmed_readings": self.confirmed_readings,
                "confirm_messages": self.confirm_messages,
                "confirm_acked": self.confirm_acked,
                "confirm_refused": self.confirm_refused,
                "confirm_waiting": self.confirm_waiting,
                "confirm_forgotten": self.confirm_forgotten,
            }
            if lat:
                snap["write_ms_p50"] = lat[len(lat) // 2]
                snap["write_ms_p99"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
                snap["write_ms_max"] = lat[-1]
            for reason, n in self.rejected_by_reason.items():
                snap[f"rejected_{reason}"] = n
            return snap

    def line(self, ts_ms: int, snap: dict[str, float | int]) -> str:
        """The self-metrics point of a snapshot (taking a snapshot empties the latency samples)."""
        fields: dict[str, float | int | str | bool] = {k: (v if isinstance(v, int) else float(v)) for k, v in snap.items()}
        return encode_point(storage.INGEST_MEASUREMENT, {"worker": self.worker}, fields, ts_ms)
