"""The rate limit, in front of everything else: a pure ASGI middleware.

A client over its limit is answered 429 before routing, dependencies,
validation or any database: the cost of turning a flood away is one bucket
update. Only `/v1/` is limited (the health checks, docs and the public
page's static files were never limited and cost nothing to serve).

Whose bucket a call takes from:
- no `X-API-Key`: the client address (`api_rate_per_address` a minute);
- a header shaped like a key (`nk_<id>_<secret>`): that key id
  (`api_rate_per_key`), before the key is checked (checking costs a
  database read: the flood must not get one). A key id that turns out
  invalid or revoked costs its address a call from a separate `fail:`
  bucket (security.py), and an address whose failures are used up is
  turned away here too, so made-up keys cannot be used to dodge the limit;
- a header not shaped like a key: the address's `fail:` bucket (it will be
  answered 401).
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from api.ratelimit import Limiter
from api.registry import split_key

Scope = dict[str, Any]
_BODY = orjson.dumps({"detail": "rate limit exceeded"})


def address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def api_key(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-api-key":
            return str(value.decode("latin-1"))
    return None


class Throttle:
    def __init__(self, app: Any, limiter: Limiter, per_key: int, per_address: int) -> None:
        self.app = app
        self.limiter = limiter
        self.per_key = per_key
        self.per_address = per_address

    def wait(self, scope: Scope) -> float:
        """0 if this call may go ahead, else the seconds the client should wait."""
        addr = address(scope)
        token = api_key(scope)
        if token is None:
            return self.limiter.take(f"addr:{addr}", self.per_address)
        parts = split_key(token)
        if parts is None:
            return self.limiter.take(f"fail:{addr}", self.per_address)
        if not self.limiter.peek(f"fail:{addr}", self.per_address):
            return 60.0 / self.per_address
        return self.limiter.take(f"key:{parts[0]}", self.per_key)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        wait = self.wait(scope)
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 429, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode()),
            (b"retry-after", str(max(1, math.ceil(wait))).encode())]})
        await send({"type": "http.response.body", "body": _BODY})
