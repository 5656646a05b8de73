"""Who may call what: API keys with scopes, public reading, rate limits.

- A key travels in the `X-API-Key` header. A key that is presented must be
  valid and unrevoked, on every endpoint (401 otherwise), so a revoked key
  never silently falls back to public access.
- Reading needs no key while `api_public_read` is on; with it off, a read
  or admin key. Writing (provisioning, keys) needs the `admin` scope; an
  admin key bound to a city manages only that city's devices (403).
- Rate limits: a token bucket per key and, for calls without a key, per
  client address (429 with Retry-After), taken before anything else by the
  ASGI middleware in api.throttle, shared by all the API's processes.
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from api.ratelimit import Limiter, RateLimiter
from api.registry import ApiKey, Registry, split_key

__all__ = ["Admin", "RateLimiter", "Reader", "caller", "check_city"]

_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key: nk_<id>_<secret>")


def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


async def caller(request: Request, token: Annotated[str | None, Security(_header)] = None) -> ApiKey | None:
    """The key behind this call (None without one), after the rate limit.

    Async on purpose: it never waits on the network (one indexed SQLite read at most), and a
    sync dependency would cost a thread-pool hop on every call."""
    return _caller(request, token)


def _caller(request: Request, token: str | None) -> ApiKey | None:
    """The key behind the call. The rate limit was taken before routing (api.throttle); a presented key that is
    invalid or revoked also costs its address a call from the `fail:` bucket, so made-up keys cannot dodge it."""
    if token is None:
        return None
    key = _registry(request).authenticate(token)
    if key is None and split_key(token) is not None:  # a malformed one took from `fail:` in the middleware already
        settings = request.app.state.settings
        limiter: Limiter = request.app.state.limiter
        address = request.client.host if request.client else "unknown"
        wait = limiter.take(f"fail:{address}", settings.api_rate_per_address)
        if wait > 0:
            raise HTTPException(429, "rate limit exceeded", headers={"Retry-After": str(max(1, math.ceil(wait)))})
    if key is None:
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
