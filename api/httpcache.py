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

It is also a small cache in the process, as a proxy in front would be:
while public reading is on, a 200 answer to a call without a key is kept
for `api_cache_memory_s` (2 s; at most 512 answers of up to 2 MB, least
recently used out first) and the same question within that time is answered
from it, with `Age` (a current answer's own age plus its time here, so the
bound stays visible). A current answer is kept only until its snapshot is
due for reloading (it says so in an internal `x-nakhon-keep` header, never
sent out), so the cache adds nothing to its freshness; while one call asks a question, others asking the same
wait for its answer instead of sending their own. On a haze day everyone
asks the same few questions: InfluxDB then sees each of them once every two
seconds per process, not once per visitor, and FastAPI runs for them as
often. Calls with a key always reach the app (their key is checked).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]
_DEVICE_READ = re.compile(r"^/v1/devices/[^/]+/(readings|aqi|aqi/history|quality)$")


def cacheable(path: str) -> bool:
    """The read endpoints of readings, AQI, quality and open data (alerts are news: not kept anywhere)."""
    if path.endswith("/alerts") or "/alerts/" in path:
        return False
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


@dataclass(frozen=True, slots=True)
class Kept:
    stored: float
    headers: list[tuple[bytes, bytes]]
    body: bytes
    etag: str
    base_age: int  # the answer's own Age when kept (current values)
    ttl_s: float  # kept this long: the cache's time to live, or less when the answer said so (KEEP)


class Memory:
    """Answers kept for `ttl_s`, least recently used out first beyond `entries`."""

    def __init__(self, ttl_s: float, entries: int = 512, max_body: int = 2 << 20, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.entries = entries
        self.max_body = max_body
        self._clock = clock
        self._kept: OrderedDict[str, Kept] = OrderedDict()

    def get(self, key: str) -> tuple[Kept, float] | None:
        """The answer kept under `key` and its age, while younger than the time to live."""
        kept = self._kept.get(key)
        if kept is None:
            return None
        age = self._clock() - kept.stored
        if age >= kept.ttl_s:
            del self._kept[key]
            return None
        self._kept.move_to_end(key)
        return kept, age

    def put(self, key: str, headers: list[tuple[bytes, bytes]], body: bytes, etag: str, base_age: int = 0,
            ttl_s: float | None = None) -> None:
        """Keep an answer for the time to live, or `ttl_s` if shorter."""
        ttl = self.ttl_s if ttl_s is None else min(self.ttl_s, ttl_s)
        if ttl <= 0 or len(body) > self.max_body:
            return
        self._kept[key] = Kept(self._clock(), headers, body, etag, base_age, ttl)
        self._kept.move_to_end(key)
        while len(self._kept) > self.entries:
            self._kept.popitem(last=False)


KEEP = b"x-nakhon-keep"  # set by an answer that may be kept in the process only so long (seconds); never sent out
_KEEP_304 = {b"etag", b"cache-control", b"vary", b"age", b"date", b"last-modified", b"expires"}


class HttpCache:
    def __init__(self, app: Any, recent_s: int, history_s: int, memory_s: float = 0.0, public: bool = True) -> None:
        self.app = app
        self.recent_s = recent_s
        self.history_s = history_s
        self.memory = Memory(memory_s)
        self.public = public
        self._pending: dict[str, asyncio.Event] = {}
        self.follow_s = 10.0  # how long a request waits for the same question's answer before asking itself

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD") or not cacheable(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        inm = headers.get(b"if-none-match")
        keyed = b"x-api-key" in headers
        key = None
        if self.public and not keyed and b"gzip" not in headers.get(b"accept-encoding", b""):
            key = scope["path"] + "?" + scope.get("query_string", b"").decode("latin-1")
        elif self.public and not keyed:
            key = "gz:" + scope["path"] + "?" + scope.get("query_string", b"").decode("latin-1")
        if key is not None:
            if await self._from_memory(key, inm, send):
                return
            pending = self._pending.get(key)
            if pending is not None:  # the same question is being answered: wait for that answer, not a query of our own
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pending.wait(), self.follow_s)
                if await self._from_memory(key, inm, send):
                    return
            else:
                done = self._pending[key] = asyncio.Event()
                try:
                    await self._ask(scope, receive, send, inm, keyed, key)
                finally:
                    del self._pending[key]
                    done.set()
                return
        await self._ask(scope, receive, send, inm, keyed, key)

    async def _from_memory(self, key: str, inm: bytes | None, send: Any) -> bool:
        hit = self.memory.get(key)
        if hit is None:
            return False
        kept, age = hit
        hdrs = [*kept.headers, (b"age", str(kept.base_age + int(age)).encode())]
        if matches(inm.decode("latin-1") if inm else None, kept.etag):
            await send({"type": "http.response.start", "status": 304, "headers": [(k, v) for k, v in hdrs if k in _KEEP_304]})
            await send({"type": "http.response.body", "body": b""})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": hdrs})
            await send({"type": "http.response.body", "body": kept.body})
        return True

    async def _ask(self, scope: Scope, receive: Any, send: Any, inm: bytes | None, keyed: bool, key: str | None) -> None:
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
            await self._finish(scope, start, b"".join(chunks), inm.decode("latin-1") if inm else None, keyed, send, key)

        await self.app(scope, receive, capture)

    async def _finish(self, scope: Scope, start: dict[str, Any], body: bytes, inm: str | None, keyed: bool, send: Any,
                      key: str | None) -> None:
        hdrs: list[tuple[bytes, bytes]] = list(start.get("headers", []))
        keep = next((float(v) for k, v in hdrs if k.lower() == KEEP), None)
        if keep is not None:
            hdrs = [(k, v) for k, v in hdrs if k.lower() != KEEP]
            start = {**start, "headers": hdrs}
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
        if key is not None:  # current values come with their Age (api.live): kept, it grows on
            base_age = next((int(v) for k, v in hdrs if k.lower() == b"age"), 0)
            self.memory.put(key, [(k.lower(), v) for k, v in hdrs if k.lower() not in (b"date", b"server", b"age")], body, etag,
                            base_age, keep)
        if matches(inm, etag):
            await send({"type": "http.response.start", "status": 304, "headers": [(k, v) for k, v in hdrs if k.lower() in _KEEP_304]})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({**start, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})
