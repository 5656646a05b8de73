"""Readings made in blocks, for many devices at once.

A device consumes its readings from a block of the next BLOCK readings.
Making one device's block costs numpy a few milliseconds whatever its
length; ten thousand devices each making their own would stall the event
loop for many seconds. So devices of one city and kind are put in chunks
of neighbours (by their phase in the interval), and when one of them needs
a block the whole chunk gets its next block in one numpy pass. The values
are the same as one device's alone: signals are a pure function of
(seed, device, time).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

import numpy as np

from simulators.devices import SimDevice
from simulators.signals import Signals

BLOCK = 16  # readings per block: small, so ten thousand devices hold little memory
CHUNK = 128

Block = deque[tuple[float, dict[str, Any]]]


class Consumer(Protocol):
    dev: SimDevice
    interval: float
    chunk: list[Consumer]
    block: Block
    ahead: tuple[float, float, Block] | None  # (start, interval, block) made for it by a neighbour
    next_t: float  # the time of the reading it will ask for next


def block_times(start: float, interval: float) -> list[float]:
    return [round(start + k * interval, 3) for k in range(BLOCK)]


class BlockMaker:
    def __init__(self, signals: Signals) -> None:
        self.signals = signals

    def chunk(self, consumers: list[Consumer], phase: dict[str, float]) -> None:
        """Put consumers of the same city and kind into chunks of neighbours."""
        groups: dict[tuple[str, str], list[Consumer]] = {}
        for c in consumers:
            groups.setdefault((c.dev.city, c.dev.kind), []).append(c)
        for members in groups.values():
            members.sort(key=lambda c: phase[c.dev.device_id])
            for i in range(0, len(members), CHUNK):
                part = members[i : i + CHUNK]
                for c in part:
                    c.chunk = part
                    c.next_t = phase[c.dev.device_id]

    def make(self, who: Consumer, start: float) -> Block:
        """`who`'s block from `start`, and the next block of its chunk's neighbours on the same interval."""
        peers = [who]
        starts = [start]
        for c in who.chunk:
            if c is who or c.ahead is not None or c.interval != who.interval:
                continue
            nxt = c.block[-1][0] + c.interval if c.block else c.next_t
            if abs(nxt - start) <= BLOCK * who.interval:  # a neighbour at the same point of its life
                peers.append(c)
                starts.append(nxt)
        ts = np.array([block_times(s, who.interval) for s in starts])
        rows = self.signals.readings_group([c.dev for c in peers], ts, who.interval)
        for c, t, r in zip(peers[1:], ts[1:], rows[1:], strict=True):
            c.ahead = (float(t[0]), who.interval, deque(zip(t.tolist(), r, strict=True)))
        return deque(zip(ts[0].tolist(), rows[0], strict=True))

    def values(self, who: Consumer, t: float) -> dict[str, Any]:
        """The values of `who`'s reading at `t`."""
        if not (who.block and who.block[0][0] == t):
            ahead = who.ahead
            who.ahead = None
            if ahead is not None and ahead[0] == t and ahead[1] == who.interval:
                who.block = ahead[2]
            else:
                who.block = self.make(who, t)
        who.next_t = t + who.interval
        return who.block.popleft()[1]
