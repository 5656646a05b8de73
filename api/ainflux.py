"""An asyncio InfluxQL reader for the hot read paths (latest values, history).

Same contract as contract.influx.Influx.series (bound $params, same errors),
but awaited on the event loop, so those endpoints skip the thread-pool hop a
blocking call costs.

It speaks HTTP/1.1 itself over pooled keep-alive connections, with the
httptools parser uvicorn already uses: measured on a small history query, it
costs about half the CPU of aiohttp (request and response objects, cookie
jar, timers, gzip) and answers ~0.3 ms sooner. Answers are asked for
uncompressed (no Accept-Encoding): InfluxDB sits next to the API, and gzip
costs both ends CPU for bytes that only cross a local link.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from typing import Any
from urllib.parse import urlencode, urlsplit

import httptools
import orjson

from contract.influx import InfluxRejected, InfluxUnavailable


class _Closed(ConnectionError):
    """The connection ended before a whole answer arrived; `started` says whether any byte of the answer had come."""

    def __init__(self, started: bool) -> None:
        super().__init__("connection closed by the server")
        self.started = started


class _Conn(asyncio.Protocol):
    """One keep-alive connection: one request at a time, the answer parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[bytes] | None = None
        self.body: list[bytes] = []
        self.started = False  # any byte of the current answer seen
        self.framed = False  # the answer says where it ends (Content-Length or chunked)
        self.closed = False
        self.reusable = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(InfluxUnavailable(f"bad HTTP answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self.started and not self.framed:  # an answer that ends with the connection (HTTP/1.0 style)
                self.waiter.set_result(b"".join(self.body))
            else:
                self.waiter.set_exception(_Closed(self.started))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(b"".join(self.body))

    # ours
    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def request(self, head: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.body, self.started, self.framed, self.reusable = [], False, False, False
        self.transport.write(head)
        body = await self.waiter
        self.waiter = None
        return self.parser.get_status_code(), body


class _Pool:
    """Idle connections of one event loop, and at most `limit` in use at once."""

    def __init__(self, limit: int) -> None:
        self.idle: list[_Conn] = []
        self.slots = asyncio.Semaphore(limit)


class AsyncInflux:
    """A connection pool per event loop, opened on first use in that loop (an app may be served by more than one)."""

    def __init__(self, url: str, database: str, username: str | None, password: str | None, timeout: float, limit: int = 64) -> None:
        self.url = url.rstrip("/")
        self.database = database
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"InfluxDB URL must be http(s)://host[:port][/path], not {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._path = parts.path.rstrip("/") + "/query?"
        auth = ""
        if username:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            auth = f"Authorization: Basic {token}\r\n"
        self._headers = f"Host: {parts.netloc.rpartition('@')[2]}\r\nUser-Agent: nakhon-api\r\nAccept: application/json\r\n{auth}\r\n".encode()
        self._timeout = timeout
        self._limit = limit
        self._pools: dict[asyncio.AbstractEventLoop, _Pool] = {}

    def _pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            for old in [lp for lp in self._pools if lp.is_closed()]:
                del self._pools[old]  # their loops are gone, and their sockets with them
            pool = self._pools[loop] = _Pool(self._limit)
        return pool

    async def aclose(self) -> None:
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            for conn in pool.idle:
                conn.close()
            pool.idle.clear()

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Conn, self._host, self._port, ssl=self._ssl)
        return conn

    async def _get(self, target: str) -> tuple[int, bytes]:
        head = b"GET " + target.encode() + b" HTTP/1.1\r\n" + self._headers
        pool = self._pool()
        async with pool.slots:
            while pool.idle:
                conn = pool.idle.pop()
                if conn.closed:
                    continue
                try:
                    status, body = await conn.request(head)
                except _Closed as exc:
                    if exc.started:
                        raise
                    continue  # the server dropped an idle connection as we sent on it: nothing was done, try another
                except BaseException:
                    conn.close()  # cancelled or failed mid-answer: the connection's state is unknown
                    raise
                self._release(pool, conn)
                return status, body
            conn = await self._connect()
            try:
                status, body = await conn.request(head)
            except BaseException:
                conn.close()
                raise
            self._release(pool, conn)
            return status, body

    @staticmethod
    def _release(pool: _Pool, conn: _Conn) -> None:
        if conn.reusable and not conn.closed:
            pool.idle.append(conn)
        else:
            conn.close()

    def target(self, q: str, params: dict[str, Any] | None = None, epoch: str | None = "ms") -> str:
        """The request target (path and query string) `series` sends for this query."""
        data = {"q": q, "db": self.database}
        if epoch:
            data["epoch"] = epoch
        if params:
            data["params"] = orjson.dumps(params).decode()
        return self._path + urlencode(data)

    async def series(self, q: str, params: dict[str, Any] | None = None, epoch: str | None = "ms") -> list[dict[str, Any]]:
        """The series of a single-statement query (empty list when none); epoch=None: times as RFC 3339 text."""
        try:
            async with asyncio.timeout(self._timeout):
                status, content = await self._get(self.target(q, params, epoch))
        except (OSError, TimeoutError) as exc:  # refused, reset, closed mid-answer, or too slow
            raise InfluxUnavailable(f"query failed: {type(exc).__name__}: {exc}") from exc
        if status >= 500:
            raise InfluxUnavailable(f"HTTP {status}")
        try:
            body = orjson.loads(content) if content else {}
        except orjson.JSONDecodeError:
            raise InfluxUnavailable(f"HTTP {status}: not JSON") from None
        if status != 200:
            raise InfluxRejected(status, str(body.get("error", ""))[:2000])
        results = body.get("results", [])
        for r in results:
            if "error" in r:
                raise InfluxRejected(400, str(r["error"])[:2000])
        return results[0].get("series", []) if results else []
