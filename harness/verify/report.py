"""One row per scenario, and the table they make (terminal and Markdown)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Size = Literal["quick", "full"]


Figure = int | float | str | bool


@dataclass
class Row:
    """What one scenario sent, what came out, and how long recovery took.

    `sent` counts what was offered (readings, messages, connections or
    requests: `unit` says which); `stored` what the platform kept; `lost` what
    should have been kept and was not; `duplicated` extra copies in storage;
    `rejected` what was refused with a reason; `accepted_bad` what should have
    been refused and was not (unauthorised successes, points outside the
    schema, timestamps outside the window). `ok` is the scenario's own verdict.
    """

    number: int
    name: str
    unit: str = "readings"
    sent: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    rejected: int = 0
    accepted_bad: int = 0
    recovery_s: float | None = None
    ok: bool = False
    # scenario-specific figures, kept as values (the unit in the name: {"p99 ms": 12.0}) so that
    # tests compare numbers; a string only for what is text (a list of reasons, a description)
    figures: dict[str, Figure] = field(default_factory=dict)
    note: str = ""

    def figure_text(self) -> str:
        return "; ".join(f"{k} {fmt(v)}" for k, v in self.figures.items())


def fmt(v: Figure) -> str:
    """A figure as the report prints it: 12,345; 16.7; 0.25; yes/no."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return v


HEADER = ("#", "scenario", "unit", "sent", "stored", "lost", "dup", "rejected", "bad accepted", "recovery", "figures", "verdict")


def _cells(r: Row) -> tuple[str, ...]:
    rec = "-" if r.recovery_s is None else f"{r.recovery_s:.1f} s"
    return (
        str(r.number), r.name, r.unit, f"{r.sent:,}", f"{r.stored:,}", f"{r.lost:,}", f"{r.duplicated:,}",
        f"{r.rejected:,}", f"{r.accepted_bad:,}", rec, r.figure_text() or "-", "PASS" if r.ok else "FAIL",
    )


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "| " + " | ".join("---" for _ in HEADER) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in _cells(r)) + " |" for r in rows]
    notes = [f"{r.number}. {r.note}" for r in rows if r.note]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def line(r: Row) -> str:
    """One terminal line, printed as soon as the scenario ends."""
    return "  ".join(f"{h}={c}" for h, c in zip(HEADER, _cells(r), strict=True))
