"""Token buckets for the API's rate limits: one process, or every process of the API at once.

`RateLimiter` keeps its buckets in the process. `SharedRateLimiter` keeps
them in a memory-mapped file that all the API's worker processes map, so a
client's limit is the same whichever process its connections land on (per-
process limits would not add up: one keep-alive connection stays on one
process, several spread over all). Each bucket is a slot of a fixed table
(key hash, tokens, time), found by open addressing, updated under an
exclusive `flock` of the file: a few microseconds per call, no server. When
every slot near a key is busy, the one idle longest is taken over: a bucket
idle for a minute is full anyway, so nothing is lost until the table holds
more clients active in the same minute than it has slots.
The clock is CLOCK_MONOTONIC, the same for every process of the machine.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

_SLOT: Final = struct.Struct("<Qdd")  # key hash (0 = empty), tokens, stamp
_PROBE: Final = 8
_MAGIC: Final = b"NKRL0001"


class Limiter(Protocol):
    def take(self, who: str, per_minute: int) -> float: ...

    def peek(self, who: str, per_minute: int) -> bool: ...


def _refill(tokens: float, stamp: float, now: float, per_minute: int) -> float:
    return min(float(per_minute), tokens + max(0.0, now - stamp) * per_minute / 60.0)


def _decide(tokens: float, per_minute: int) -> tuple[float, float]:
    """(tokens left, seconds to wait: 0 if the call may go ahead)."""
    if tokens >= 1:
        return tokens - 1, 0.0
    return tokens, (1 - tokens) / (per_minute / 60.0)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets in this process: `per_minute` calls a minute, bursts up to the same number."""

    def __init__(self, max_buckets: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self._max = max_buckets

    def take(self, who: str, per_minute: int) -> float:
        """0 if the call may go ahead, else the seconds to wait."""
        now = self._clock()
        with self._lock:
            b = self._buckets.get(who)
            if b is None:
                if len(self._buckets) >= self._max:
                    self._buckets.clear()  # bounded memory beats exact accounting under a flood
                b = self._buckets[who] = _Bucket(float(per_minute), now)
            b.tokens, wait = _decide(_refill(b.tokens, b.stamp, now, per_minute), per_minute)
            b.stamp = now
            return wait

    def peek(self, who: str, per_minute: int) -> bool:
        """Whether `who` has a call left, without taking it."""
        with self._lock:
            b = self._buckets.get(who)
            return b is None or _refill(b.tokens, b.stamp, self._clock(), per_minute) >= 1


class SharedRateLimiter:
    """Token buckets in a file every process of the API maps (see the module's note)."""

    def __init__(self, path: Path, slots: int = 1 << 16, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._slots = slots
        self._lock = threading.Lock()  # flock excludes other processes, not this process's threads
        path.parent.mkdir(parents=True, exist_ok=True)
        size = len(_MAGIC) + 8 + slots * _SLOT.size
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            head = os.pread(self._fd, len(_MAGIC) + 8, 0)
            if head != _MAGIC + struct.pack("<Q", slots) or os.fstat(self._fd).st_size != size:
                os.ftruncate(self._fd, 0)  # another layout (or a torn file): start empty
                os.ftruncate(self._fd, size)
                os.pwrite(self._fd, _MAGIC + struct.pack("<Q", slots), 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._map = mmap.mmap(self._fd, size)
        self._base = len(_MAGIC) + 8

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    def _find(self, key: int, now: float) -> tuple[int, bool]:
        """(offset of the slot for `key`, whether it holds `key` already)."""
        start = key % self._slots
        oldest, oldest_stamp = -1, float("inf")
        for i in range(_PROBE):
            off = self._base + ((start + i) % self._slots) * _SLOT.size
            k, _, stamp = _SLOT.unpack_from(self._map, off)
            if k == key:
                return off, True
            if k == 0:
                return off, False
            if stamp < oldest_stamp:
                oldest, oldest_stamp = off, stamp
        return oldest, False

    @staticmethod
    @functools.lru_cache(maxsize=4096)  # the same few clients call again and again: hashed once
    def _hash(who: str) -> int:
        return int.from_bytes(hashlib.blake2b(who.encode(), digest_size=8).digest(), "little") or 1

    def take(self, who: str, per_minute: int) -> float:
        """0 if the call may go ahead, else the seconds to wait."""
        key = self._hash(who)
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                now = self._clock()
                off, found = self._find(key, now)
                tokens = float(per_minute)
                if found:
                    _, t, stamp = _SLOT.unpack_from(self._map, off)
                    tokens = _refill(t, stamp, now, per_minute)
                tokens, wait = _decide(tokens, per_minute)
                _SLOT.pack_into(self._map, off, key, tokens, now)
                return wait
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def peek(self, who: str, per_minute: int) -> bool:
        """Whether `who` has a call left, without taking it."""
        key = self._hash(who)
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_SH)
            try:
                now = self._clock()
                off, found = self._find(key, now)
                if not found:
                    return True
                _, t, stamp = _SLOT.unpack_from(self._map, off)
                return _refill(t, stamp, now, per_minute) >= 1
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
