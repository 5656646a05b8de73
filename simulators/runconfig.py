"""How a fleet runs: broker, time mode, pacing and the firmware-like policies."""

from __future__ import annotations

from dataclasses import dataclass, field

from contract.payload import MAX_BATCH

MODES = ("realtime", "accelerated", "backfill")


@dataclass(frozen=True)
class RunConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    mode: str = "realtime"
    interval_s: float = 60.0  # between a device's readings, simulated seconds
    speed: float = 1.0  # accelerated: simulated seconds per wall second
    since_s: float = 0.0  # accelerated: start this long ago
    duration_s: float | None = None  # realtime/accelerated: stop after this much simulated time
    count: int | None = None  # realtime/accelerated: stop after this many readings per device
    backfill_days: float = 1.0
    batch: int = 500  # readings per batch message (backfill, replay)
    window: int = 8  # un-acknowledged messages per device
    buffer_max: int = 10_000  # device ring of readings kept while offline (oldest dropped)
    keepalive: int = 60
    connect_rate: float = 1000.0  # new connections per second while the fleet starts
    connect_timeout_s: float = 10.0
    backoff_base_s: float = 1.0  # reconnect: full jitter, uniform(0, min(cap, base * 2**attempt))
    backoff_cap_s: float = 300.0  # the firmware's default cap
    passwords: dict[str, str] = field(default_factory=dict)  # device id -> password (username = device id)
    tls_ca: str | None = None  # TLS to the broker, verified against this CA file (host = the name in its certificate)
    fw: str = "sim-1.0.0"
    seed: int = 1
    max_payload_bytes: int = 262_144  # the ingest's limit (oversize faults go just past it)
    ts_max_age_s: float = 35 * 86400  # the ingest's window, to count skew it will refuse
    ts_max_future_s: float = 300.0
    keep_ledger: bool = False  # remember (ts, seq) of every reading (tests)
    # Store-and-forward (issue 18), as the firmware does it: a reading is kept until the platform's `stored`
    # message covers it (not freed at the broker's PUBACK), sent again after confirm_timeout_s without one (the wait
    # doubling, up to 32x, while none comes),
    # and replayed after a reconnect; off = the old behaviour, freed at PUBACK (for the bench's comparison).
    confirm: bool = False
    confirm_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if not 1 <= self.batch <= MAX_BATCH:
            raise ValueError(f"batch must be 1..{MAX_BATCH} (the contract's largest batch)")
        if self.interval_s <= 0 or self.window < 1 or self.buffer_max < 1:
            raise ValueError("interval_s must be > 0, window and buffer_max >= 1")
        if self.confirm_timeout_s <= 0:
            raise ValueError("confirm_timeout_s must be > 0")

    @property
    def open_broker(self) -> bool:
        """No credentials: the broker is anonymous and has no per-device ACL."""
        return not self.passwords
