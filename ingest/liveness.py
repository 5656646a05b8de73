"""The ingest's liveness: live (making progress) and ready (connected, subscribed, live).

A pure function of what a worker observes, so it can be served by any
endpoint (`/healthz`, the health file of ingest/health.py, the stats line)
and tested without servers.
Being connected is not being alive: a worker that holds messages and has made
none of them durable for `stall_s` is stalled, whatever its socket says.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Observed:
    connected: bool
    subscribed: bool  # every subscription the worker needs was granted
    pending: int  # messages held, not yet durable or not yet acked
    idle_s: float  # seconds since the last batch was made durable (or since work arrived, if none since)
    failing_s: float  # seconds since saving started to fail (0 when the last save worked)
    disconnected_s: float  # seconds since the session was last connected (0 while connected)


@dataclass(frozen=True)
class Liveness:
    live: bool
    ready: bool
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"live": self.live, "ready": self.ready, "reasons": self.reasons}


def assess(o: Observed, stall_s: float) -> Liveness:
    """`live` is false when held work makes no progress for `stall_s` (a restart may help);
    `ready` also needs a connected, fully subscribed session."""
    reasons: list[str] = []
    live = True
    if o.pending and o.idle_s >= stall_s:
        live = False
        reasons.append(f"stalled: {o.pending} messages held, nothing made durable for {o.idle_s:.0f} s")
    if o.failing_s >= stall_s:
        live = False
        reasons.append(f"saving has failed for {o.failing_s:.0f} s")
    if o.connected and not o.subscribed:
        reasons.append("connected but a subscription was refused: receiving nothing")
    if not o.connected:
        reasons.append(f"not connected to the broker for {o.disconnected_s:.0f} s")
    ready = live and o.connected and o.subscribed
    return Liveness(live=live, ready=ready, reasons=reasons)
