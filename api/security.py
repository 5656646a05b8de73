"""Who may call what: API keys with scopes, public reading, rate limits.

- A key travels in the `X-API-Key` header. A key that is presented must be
  valid and unrevoked, on every endpoint (401 otherwise), so a revoked key
  never silently falls back to public access.
- Reading needs no key while `api_public_read` is on; with it off, a read
  or admin key. Writing (provisioning, keys) needs the `admin` scope; an
  admin key bound to a city manages only that city's devices (403).
- Rate limits: a token bucket per key and, for calls without a valid key,
  per client address (429 with Retry-After).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from api.registry import ApiKey, Registry

_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key: nk_<id>_<secret>")


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets: `per_minute` calls a minute, bursts up to the same number."""

    def __init__(self, max_buckets: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self._max = max_buckets

    def take(self, who: str, per_minute: int) -> float:
        """0 if the call may go ahead, else the seconds to wait."""
        now = self._clock()
        rate = per_minute / 60.0
        with self._lock:
            b = self._buckets.get(who)
            if b is None:
                if len(self._buckets) >= self._max:
                    self._buckets.clear()  # bounded memory beats exact accounting under a flood
                b = self._buckets[who] = _Bucket(float(per_minute), now)
            b.tokens = min(float(per_minute), b.tokens + (now - b.stamp) * rate)
            b.stamp = now
            if b.tokens >= 1:
                b.tokens -= 1
                return 0.0
            return (1 - b.tokens) / rate


def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


async def caller(request: Request, token: Annotated[str | None, Security(_header)] = None) -> ApiKey | None:
    """The key behind this call (None without one), after the rate limit.

    Async on purpose: it never waits on the network (one indexed SQLite read at most), and a
    sync dependency would cost a thread-pool hop on every call."""
    return _caller(request, token)


def _caller(request: Request, token: str | None) -> ApiKey | None:
    settings = request.app.state.settings
    limiter: RateLimiter = request.app.state.limiter
    key = None
    if token is not None:
        key = _registry(request).authenticate(token)
    if key is not None:
        wait = limiter.take(f"key:{key.id}", settings.api_rate_per_key)
    else:
        address = request.client.host if request.client else "unknown"
        wait = limiter.take(f"addr:{address}", settings.api_rate_per_address)
    if wait > 0:
        raise HTTPException(429, "rate limit exceeded", headers={"Retry-After": str(math.ceil(wait))})
    if token is not None and key is None:
        raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "X-API-Key"})
    return key


# reader and admin take the header themselves rather than through `caller`: one dependency less to solve on every call.
async def reader(request: Request, token: Annotated[str | None, Security(_header)] = None) -> ApiKey | None:
    key = _caller(request, token)
    if key is None and not request.app.state.settings.api_public_read:
        raise HTTPException(401, "an API key is required (public reading is off)", headers={"WWW-Authenticate": "X-API-Key"})
    return key


async def admin(request: Request, token: Annotated[str | None, Security(_header)] = None) -> ApiKey:
    key = _caller(request, token)
    if key is None:
        raise HTTPException(401, "an admin API key is required", headers={"WWW-Authenticate": "X-API-Key"})
    if key.scope != "admin":
        raise HTTPException(403, "this key may only read")
    return key


def check_city(key: ApiKey, city: str) -> None:
    """An admin key bound to a city may manage only that city."""
    if key.city is not None and key.city != city:
        raise HTTPException(403, f"this key manages {key.city} only")


Reader = Annotated[ApiKey | None, Depends(reader)]
Admin = Annotated[ApiKey, Depends(admin)]
