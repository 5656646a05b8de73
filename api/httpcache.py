"""History and open-data answers a proxy can cache: Cache-Control, ETag and 304.

A pure ASGI middleware over the read endpoints (`/v1/cities/...`,
`/v1/open/...`, and a device's readings, AQI and quality): a 200 answer to a
GET that carries no `Cache-Control` of its own gets
- `Cache-Control: public, max-age=N` (private when the call carried an API
  key: a shared cache must not serve it to others), where N is
  `api_cache_history_s` for a range that ended more than an hour ago (late
  data can still change the last hour) and `api_cache_recent_s` otherwise;
- a strong `ETag` (a hash of the body), and `304 Not Modified` without the
  body when `If-None-Match` names it.
The current values (api.current) set their own, shorter, `max-age` with
`Age`, and their ETag; the 304 rule here applies to them too.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]
_DEVICE_READ = re.compile(r"^/v1/devices/[^/]+/(readings|aqi|aqi/history|quality)$")


def cacheable(path: str) -> bool:
    return path.startswith(("/v1/cities/", "/v1/open/")) or bool(_DEVICE_READ.match(path))


def _end(query: bytes) -> datetime | None:
    values = parse_qs(query.decode("latin-1")).get("end")
    if not values:
        return None
    try:
        t = datetime.fromisoformat(values[0].replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def max_age(query: bytes, recent_s: int, history_s: int, now: datetime) -> int:
    """How long a proxy may keep the answer: long for a range that is over, short for one that reaches now."""
    end = _end(query)
    return history_s if end is not None and end < now - timedelta(hours=1) else recent_s


def etag_of(body: bytes) -> str:
    return f'"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'


def matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return etag in tags


class HttpCache:
    def __init__(self, app: Any, recent_s: int, history_s: int) -> None:
        self.app = app
        self.recent_s = recent_s
        self.history_s = history_s

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD") or not cacheable(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        inm = headers.get(b"if-none-match")
        keyed = b"x-api-key" in headers
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            await self._finish(scope, start, b"".join(chunks), inm.decode("latin-1") if inm else None, keyed, send)

        await self.app(scope, receive, capture)

    async def _finish(self, scope: Scope, start: dict[str, Any], body: bytes, inm: str | None, keyed: bool, send: Any) -> None:
        hdrs: list[tuple[bytes, bytes]] = list(start.get("headers", []))
        if start.get("status") != 200:
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        names = {k.lower() for k, _ in hdrs}
        etag = next((v.decode("latin-1") for k, v in hdrs if k.lower() == b"etag"), None)
        if etag is None:
            etag = etag_of(body)
            hdrs.append((b"etag", etag.encode()))
        if b"cache-control" not in names:
            age = max_age(scope.get("query_string", b""), self.recent_s, self.history_s, datetime.now(UTC))
            hdrs.append((b"cache-control", f"{'private' if keyed else 'public'}, max-age={age}".encode()))
        elif keyed:
            hdrs = [(k, v.replace(b"public", b"private") if k.lower() == b"cache-control" else v) for k, v in hdrs]
        hdrs.append((b"vary", b"X-API-Key, Accept-Encoding"))
        if matches(inm, etag):
            keep = {b"etag", b"cache-control", b"vary", b"age", b"date", b"last-modified", b"expires"}
            await send({"type": "http.response.start", "status": 304, "headers": [(k, v) for k, v in hdrs if k.lower() in keep]})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({**start, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})
