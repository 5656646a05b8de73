"""The API's asyncio InfluxQL reader: the same answers and errors as the blocking client on a real
InfluxDB, and, against a scripted server, every way an HTTP/1.1 answer can be framed, connections the
server drops while idle, timeouts, cancellation, and what it sends (the target and headers api-bench copies)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from api.ainflux import HEADERS, AsyncInflux
from contract.influx import Influx, InfluxRejected, InfluxUnavailable
from nakhon.servers import InfluxDB, free_port

BODY = orjson.dumps({"results": [{"statement_id": 0, "series": [{"name": "air", "columns": ["time", "pm25"], "values": [[1000, 1.5]]}]}]})
SERIES = [{"name": "air", "columns": ["time", "pm25"], "values": [[1000, 1.5]]}]


def test_same_answers_and_errors_as_the_blocking_client(influxdb: InfluxDB, influx: Influx) -> None:
    t0 = int(time.time() * 1000) - 3_600_000
    influx.write([f"air,city=chiang_mai,device=cm-air-00{i} pm25={10 + i},pm10={20 + i} {t0 + i * 60_000}" for i in range(5)])
    q = 'SELECT "pm25", "pm10" FROM "raw"."air" WHERE "city" = $city'

    async def run() -> None:
        ai = AsyncInflux(influxdb.url, influx.database, None, None, 10)
        try:
            got = await ai.series(q, {"city": "chiang_mai"})
            assert got == influx.series(q, {"city": "chiang_mai"})
            assert [v[0] for v in got[0]["values"]] == [t0 + i * 60_000 for i in range(5)]
            text = await ai.series(q, {"city": "chiang_mai"}, epoch=None)  # times as RFC 3339
            assert [v[1:] for v in text[0]["values"]] == [v[1:] for v in got[0]["values"]]
            assert all(isinstance(v[0], str) and v[0].endswith("Z") for v in text[0]["values"])
            assert await ai.series(q, {"city": "phuket"}) == []
            with pytest.raises(InfluxRejected):
                await ai.series('SELECT FROM WHERE "')
        finally:
            await ai.aclose()

    asyncio.run(run())
    influxdb.stop()

    async def down() -> None:
        ai = AsyncInflux(influxdb.url, influx.database, None, None, 5)
        with pytest.raises(InfluxUnavailable):
            await ai.series(q, {"city": "chiang_mai"})
        await ai.aclose()

    asyncio.run(down())


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[bytes]], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def _serve(handler: Handler, test: Callable[[str, list[bytes]], Awaitable[None]]) -> None:
    """Run `test(url, requests seen)` against a server whose every connection `handler` drives."""
    seen: list[bytes] = []

    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer, seen)
        finally:
            writer.close()

    server = await asyncio.start_server(conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await test(f"http://127.0.0.1:{port}", seen)
    finally:
        server.close()


def _answer(body: bytes, status: str = "200 OK", framing: str = "length") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
    if framing == "length":
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    if framing == "chunked":
        half = len(body) // 2
        chunks = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in (body[:half], body[half:]))
        return f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + chunks + b"0\r\n\r\n"
    return f"{head}Connection: close\r\n\r\n".encode() + body  # ends with the connection


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_every_framing_of_an_answer(framing: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]) -> None:
        while (req := await _read_request(reader)) is not None:
            seen.append(req)
            for i in range(0, len(answer := _answer(BODY, framing=framing)), 7):  # in small pieces
                writer.write(answer[i:i + 7])
                await writer.drain()
            if framing == "close":
                return

    async def test(url: str, seen: list[bytes]) -> None:
        ai = AsyncInflux(url, "nakhon", None, None, 5)
        for _ in range(3):
            assert await ai.series("SELECT 1", {"a": 1}) == SERIES
        assert len(seen) == 3
        await ai.aclose()

    asyncio.run(_serve(handler, test))


def test_what_it_sends_is_what_api_bench_sends() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]) -> None:
        while (req := await _read_request(reader)) is not None:
            seen.append(req)
            writer.write(_answer(BODY))

    async def test(url: str, seen: list[bytes]) -> None:
        ai = AsyncInflux(url, "nakhon", "reader", "s3cret", 5)
        q, params = 'SELECT "pm25" FROM "raw"."air" WHERE "device" = $id AND time >= $start', {"id": "cm-air-001", "start": "2026-01-01T00:00:00Z"}
        await ai.series(q, params)
        head = seen[0].decode()
        target = head.split(" ")[1]
        assert parse_qs(urlsplit(target).query) == parse_qs(urlsplit(ai.target(q, params)).query)
        assert urlsplit(target).path == "/query"
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in head.split("\r\n")[1:] if line)}
        assert headers["authorization"] == f"Basic {base64.b64encode(b'reader:s3cret').decode()}"
        assert {k.lower(): v for k, v in HEADERS.items()}.items() <= headers.items()
        await ai.aclose()

    asyncio.run(_serve(handler, test))


@pytest.mark.parametrize("when", ["idle", "as-sent"])
def test_a_connection_the_server_dropped_is_replaced(when: str) -> None:
    """idle: the server closes a kept-alive connection while it waits in the pool; as-sent: it takes the
    next request on it and closes without a word (an idle timeout racing the request). Nothing was done,
    so the query goes again on a fresh connection."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]) -> None:
        req = await _read_request(reader)
        if req is not None:
            seen.append(req)
            writer.write(_answer(BODY))  # a keep-alive answer...
            await writer.drain()
            if when == "as-sent":
                await _read_request(reader)  # ...then the next request is read and dropped

    async def test(url: str, seen: list[bytes]) -> None:
        ai = AsyncInflux(url, "nakhon", None, None, 5)
        for _ in range(4):
            assert await ai.series("SELECT 1") == SERIES
            if when == "idle":
                await asyncio.sleep(0.05)
        assert len(seen) == 4
        await ai.aclose()

    asyncio.run(_serve(handler, test))


def test_errors_timeouts_and_cancellation() -> None:
    plan: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]) -> None:
        while (req := await _read_request(reader)) is not None:
            seen.append(req)
            what = plan.pop(0)
            if what == "silent":
                await asyncio.sleep(10)
            elif what == "500":
                writer.write(_answer(b"oops", "500 Internal Server Error"))
            elif what == "400":
                writer.write(_answer(b'{"error":"error parsing query"}', "400 Bad Request"))
            elif what == "stmt-error":
                writer.write(_answer(b'{"results":[{"statement_id":0,"error":"database not found"}]}'))
            elif what == "garbage":
                writer.write(b"SPDY/9 nonsense\r\n\r\n")
            else:
                writer.write(_answer(BODY))

    async def test(url: str, seen: list[bytes]) -> None:
        ai = AsyncInflux(url, "nakhon", None, None, 0.5)
        expect: list[tuple[str, type[Exception] | None]] = [
            ("ok", None), ("500", InfluxUnavailable), ("400", InfluxRejected), ("stmt-error", InfluxRejected),
            ("silent", InfluxUnavailable), ("ok", None), ("garbage", InfluxUnavailable), ("ok", None)]
        for what, error in expect:
            plan.append(what)
            if error is None:
                assert await ai.series("SELECT 1") == SERIES
            else:
                with pytest.raises(error):
                    await ai.series("SELECT 1")
        plan.append("silent")  # a caller that goes away mid-query leaves no half-read connection behind
        task: asyncio.Task[Any] = asyncio.ensure_future(ai.series("SELECT 1"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        plan.append("ok")  # and the next query finds a working connection
        assert await ai.series("SELECT 1") == SERIES
        await ai.aclose()

    asyncio.run(_serve(handler, test))


def test_refused_connection_is_unavailable() -> None:
    async def test() -> None:
        ai = AsyncInflux(f"http://127.0.0.1:{free_port()}", "nakhon", None, None, 2)
        with pytest.raises(InfluxUnavailable, match="query failed"):
            await ai.series("SELECT 1")
        await ai.aclose()

    asyncio.run(test())
