"""Which readings each device may free: the ingest's confirmation tracker (pure, bounded).

After a batch is durable (in InfluxDB, in the fsync'd spool, or set aside in
the fsync'd dead letters as bad data), the worker `add`s each device's seqs
here; a confirmation round `take`s the devices waiting longest and sends each
one `stored` message (contract/stored.py) with its ranges, lowest first, at
most MAX_RANGES per message. Batches may commit in any order: seqs are merged
into sorted, disjoint inclusive ranges, so what a round says is exactly what
is durable, never more.

A device's `online` status is answered too: the worker adds it with no seqs,
and the round sends it a `stored` message with the ranges it has, or none,
and the platform's time `t` (a device whose NTP is blocked has only undated
readings, so sends no telemetry, and learns the time there). It costs one
small message per status, in the same rounds and bounds.

Forgetting a confirmation is always safe (the device replays the reading
after its timeout; the write is idempotent), so the memory is bounded by
forgetting, and counting it:
- at most `max_ranges` ranges per device (a device that skips every other
  seq cannot grow it): past it, the highest ranges are forgotten;
- at most `max_devices` devices waiting (a broker that takes no publish for
  a long time): past it, the device waiting longest is forgotten.
So the tracker holds at most max_devices x max_ranges ranges (defaults:
100,000 x 128, about 40 bytes per range beside the device's entry).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable

from contract.stored import MAX_RANGES, Ranges

Key = tuple[str, str]  # (city, device)

MAX_DEVICES = 100_000
MAX_DEVICE_RANGES = 4 * MAX_RANGES


def merge(cur: Ranges, new: Ranges) -> Ranges:
    """Two sorted lists of inclusive ranges as one sorted, disjoint list (touching ranges joined)."""
    if not cur:
        return new
    if not new:
        return cur
    if new[0][0] > cur[-1][1] + 1:  # the common case: the device's next readings, after a gap
        return cur + new
    if new[0][0] == cur[-1][1] + 1 and len(new) == 1:  # the commonest: the very next readings
        return [*cur[:-1], (cur[-1][0], new[0][1])]
    out: Ranges = []
    for lo, hi in sorted(cur + new):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def to_ranges(seqs: list[int]) -> Ranges:
    """Sorted, merged inclusive ranges of `seqs` (fast when they come in order, as they mostly do)."""
    if not seqs:
        return []
    if len(seqs) == 1:
        return [(seqs[0], seqs[0])]
    ordered = seqs if all(a < b for a, b in itertools.pairwise(seqs)) else sorted(set(seqs))
    out: Ranges = []
    lo = hi = ordered[0]
    for s in ordered[1:]:
        if s == hi + 1:
            hi = s
        else:
            out.append((lo, hi))
            lo = hi = s
    out.append((lo, hi))
    return out


class Tracker:
    """Durable seqs per device, not yet confirmed. Not thread-safe: the worker holds a lock around it."""

    def __init__(self, max_devices: int = MAX_DEVICES, max_ranges: int = MAX_DEVICE_RANGES) -> None:
        if max_devices < 1 or max_ranges < MAX_RANGES:
            raise ValueError(f"max_devices >= 1 and max_ranges >= {MAX_RANGES}")
        self.max_devices = max_devices
        self.max_ranges = max_ranges
        self._waiting: OrderedDict[Key, Ranges] = OrderedDict()  # oldest first
        self.ranges_forgotten = 0  # ranges dropped past a device's bound (their readings are replayed)
        self.devices_forgotten = 0  # devices dropped past the bound on devices

    def __len__(self) -> int:
        return len(self._waiting)

    def held(self) -> int:
        """Ranges held now (the memory bound counts these)."""
        return sum(len(r) for r in self._waiting.values())

    def add(self, key: Key, seqs: list[int]) -> None:
        """`seqs` of device `key` are durable (none: the device is answered anyway, with the time)."""
        self.add_all(((key, seqs),))

    def add_ranges(self, key: Key, ranges: Ranges) -> None:
        """`ranges` of device `key` are durable; with none, the device waits for a message all the same
        (its `online` status is answered with the platform's time, contract/stored.py)."""
        cur = self._waiting.get(key)
        if cur is None:
            while len(self._waiting) >= self.max_devices:
                self._waiting.popitem(last=False)
                self.devices_forgotten += 1
            cur = self._waiting[key] = []
        if not ranges:
            return
        if cur and ranges[0][0] > cur[-1][1] + 1:
            cur += ranges  # in place: the device's next readings, after a gap
        else:
            cur[:] = merge(cur, ranges)
        if len(cur) > self.max_ranges:
            self.ranges_forgotten += len(cur) - self.max_ranges
            del cur[self.max_ranges :]

    def add_all(self, done: Iterable[tuple[Key, list[int]]]) -> int:
        """Many devices at once (a batch made durable); returns the seqs added."""
        n = 0
        waiting = self._waiting
        bound = self.max_ranges
        for key, seqs in done:
            k = len(seqs)
            if not k:
                self.add_ranges(key, [])
                continue
            n += k
            first, last = seqs[0], seqs[-1]
            # the hot path: a device's next readings, in order and without a gap (one range)
            if last - first == k - 1 and (k < 3 or seqs == list(range(first, last + 1))):
                cur = waiting.get(key)
                if cur:  # (an empty list: a device waiting for an answer to its status, see add_ranges)
                    lo, hi = cur[-1]
                    if first == hi + 1:
                        cur[-1] = (lo, last)
                        continue
                    if first > hi + 1 and len(cur) < bound:
                        cur.append((first, last))
                        continue
                self.add_ranges(key, [(first, last)])
            else:
                self.add_ranges(key, to_ranges(seqs))
        return n

    def take(self, limit: int) -> list[tuple[Key, Ranges]]:
        """One round: up to `limit` devices, those waiting longest first, each with at most MAX_RANGES ranges
        (the lowest). A device with more keeps the rest and waits at the back for the next round."""
        out: list[tuple[Key, Ranges]] = []
        for _ in range(min(limit, len(self._waiting))):  # only those here now: one message per device per round
            key, ranges = self._waiting.popitem(last=False)
            if len(ranges) > MAX_RANGES:
                self._waiting[key] = ranges[MAX_RANGES:]
                ranges = ranges[:MAX_RANGES]
            out.append((key, ranges))
        return out
