"""A closed-loop HTTP/1.1 load client light enough to leave the CPU to what it measures.

`nakhon bench` runs the load client on the same (small) machine as the API
and InfluxDB: a client that spends more CPU per request than the server it
times measures itself. This one sends the same prebuilt GET over each of N
keep-alive connections as soon as the last answer is complete (httptools
parses the answer: status, framing, keep-alive), on uvloop, and leaves the
body as it came (gzip'd when the server gzips it: decoding is the client's
business, as it is for wrk or ab). The bench checks what the answers say
separately, once, with an ordinary client. Measured side by side with
aiohttp's client (which decoded every body) on a 2-core machine: about a
sixth of the client's CPU per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import httptools
import uvloop


@dataclass
class Tally:
    """Latencies (ms) of the answers 200, and how many were not 200 (or lost with their connection)."""

    ms: list[float] = field(default_factory=list)
    failed: int = 0


class _Client(asyncio.Protocol):
    """One connection: a request, its answer, the next request, until `until` (perf_counter)."""

    def __init__(self, request: bytes, until: float, tally: Tally, done: asyncio.Future[None], warm: int) -> None:
        self.request = request
        self.until = until
        self.tally = tally
        self.done = done
        self.warm = warm  # answers not timed: the connection's first ones
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.sent = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.tally.failed += 1
            self._finish()

    def on_message_complete(self) -> None:
        now = time.perf_counter()
        if self.warm > 0:
            self.warm -= 1
        elif self.parser.get_status_code() == 200:
            self.tally.ms.append((now - self.sent) * 1000)
        else:
            self.tally.failed += 1
        if now >= self.until or not self.parser.should_keep_alive():
            self._finish()
        else:
            self._send()

    def _finish(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():  # closed by the server before our last answer
            self.tally.failed += 1
            self.done.set_result(None)


def request_bytes(url: str, headers: Mapping[str, str]) -> tuple[str, int, bytes]:
    """(host, port, the GET request) for `url`."""
    u = urlsplit(url)
    target = u.path + (f"?{u.query}" if u.query else "")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return u.hostname or "127.0.0.1", u.port or 80, f"GET {target} HTTP/1.1\r\nHost: {u.netloc}\r\n{head}\r\n".encode("latin-1")


async def _run(url: str, headers: Mapping[str, str], concurrency: int, seconds: float, tally: Tally, warm: int) -> None:
    loop = asyncio.get_running_loop()
    host, port, request = request_bytes(url, headers)
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:  # a connection the server closed is replaced until the time is up
        dones: list[asyncio.Future[None]] = []
        clients: list[_Client] = []
        for _ in range(concurrency):
            done: asyncio.Future[None] = loop.create_future()
            client = _Client(request, until, tally, done, warm)
            await loop.create_connection(lambda c=client: c, host, port)  # type: ignore[misc]
            dones.append(done)
            clients.append(client)
        _, hung = await asyncio.wait(dones, timeout=max(0.0, until - time.perf_counter()) + 60)
        for client in clients:  # an answer that never came within a minute of the end: counted, not waited for
            if client.done in hung:
                client.tally.failed += 1
                client._finish()


def load(url: str, headers: Mapping[str, str], concurrency: int, seconds: float, warm: int = 0) -> Tally:
    """`concurrency` clients on keep-alive connections to `url` for `seconds`, each sending the next request
    as soon as its last is answered; the first `warm` answers of each connection are not counted."""
    tally = Tally()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_run(url, headers, concurrency, seconds, tally, warm))
    return tally
