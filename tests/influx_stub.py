"""A stand-in for InfluxDB 1.x's HTTP API at a pure core's edge (the ingest's writer, the roll-ups), for the fast unit tier.

It answers as InfluxDB 1.6 does (status, JSON `{"error": ...}` body and the
`X-Influxdb-Error` header), from state a test can change while it runs: which
databases and retention policies exist (`CREATE DATABASE` makes one, `DROP
DATABASE` drops it), whether credentials are required and whose are good, the
largest body it takes, and whether it answers at all. Lines are parsed just
enough to refuse a line that is not `measurement[,tags] fields timestamp` with
a partial write, as InfluxDB does. What a real InfluxDB decides is also tested
against one (tests/spine).
"""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import orjson


@dataclass
class State:
    databases: set[str] = field(default_factory=lambda: {"nakhon"})
    users: dict[str, str] | None = None  # None: auth off; else user -> password
    writers: set[str] = field(default_factory=set)  # users allowed to write (others get 403)
    max_body: int = 0  # bytes; 0 = no limit (InfluxDB's max-body-size)
    hang_s: float = 0.0  # answer nothing for this long
    fail_5xx: int = 0  # answer this many requests with 500 first
    answer_next: list[int] = field(default_factory=list)  # statuses to answer the next requests with (429, 503...)
    points: list[str] = field(default_factory=list)  # every line stored, in order
    writes: int = 0  # /write requests seen
    queries: list[str] = field(default_factory=list)


class InfluxStub:
    def __init__(self) -> None:
        self.state = State()
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: bytes = b"", error: str | None = None) -> None:
                if error is not None:
                    body = orjson.dumps({"error": error})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Influxdb-Version", "1.6.7~stub")
                if error is not None:
                    self.send_header("X-Influxdb-Error", error)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _auth(self, query: dict[str, list[str]]) -> str | None:
                """The user, or None after answering 401 as InfluxDB does."""
                users = stub.state.users
                if users is None:
                    return ""
                user = password = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                elif "u" in query:
                    user, password = query["u"][0], query.get("p", [""])[0]
                if user is None or users.get(user) != password:
                    self._answer(401, error="authorization failed")
                    return None
                return user

            def _common(self) -> tuple[dict[str, list[str]], bytes] | None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                length = int(self.headers.get("Content-Length") or 0)
                s = stub.state
                if s.max_body and length > s.max_body:
                    self.rfile.read(length)
                    self._answer(413, error="Request Entity Too Large")
                    return None
                body = self.rfile.read(length) if length else b""
                if s.hang_s:
                    time.sleep(s.hang_s)
                with stub.lock:
                    if s.fail_5xx:
                        s.fail_5xx -= 1
                        self._answer(500, error="timeout")
                        return None
                    if s.answer_next:
                        status = s.answer_next.pop(0)
                        self._answer(status, error="too many requests" if status == 429 else f"status {status}")
                        return None
                if self.headers.get("Content-Type") == "application/x-www-form-urlencoded":
                    query.update(parse_qs(body.decode()))
                return query, body

            def do_GET(self) -> None:
                if urlparse(self.path).path == "/ping":
                    self._answer(204)
                    return
                self._route()

            def do_POST(self) -> None:
                self._route()

            def _route(self) -> None:
                got = self._common()
                if got is None:
                    return
                query, body = got
                user = self._auth(query)
                if user is None:
                    return
                path = urlparse(self.path).path
                if path == "/write":
                    self._write(query, body, user)
                elif path == "/query":
                    self._query(query)
                else:
                    self._answer(404, b"404 page not found\n")

            def _write(self, query: dict[str, list[str]], body: bytes, user: str) -> None:
                s = stub.state
                db = query.get("db", [""])[0]
                with stub.lock:
                    s.writes += 1
                    if db not in s.databases:
                        self._answer(404, error=f'database not found: "{db}"')
                        return
                    if s.users is not None and user not in s.writers:
                        self._answer(403, error=f'"{user}" user is not authorized to write to database "{db}"')
                        return
                    good = bad = 0
                    first_bad = ""
                    for line in body.decode().split("\n"):
                        if not line:
                            continue
                        parts = line.split(" ")
                        if len(parts) == 3 and "=" in parts[1] and parts[2].isdigit():
                            s.points.append(line)
                            good += 1
                        else:
                            bad += 1
                            first_bad = first_bad or line
                if bad:
                    self._answer(400, error=f"partial write: unable to parse '{first_bad}': bad timestamp dropped={bad}")
                    return
                self._answer(204)

            def _query(self, query: dict[str, list[str]]) -> None:
                s = stub.state
                q = query.get("q", [""])[0]
                with stub.lock:
                    s.queries.append(q)
                    words = q.split()
                    if len(words) >= 3 and words[0].upper() == "CREATE" and words[1].upper() == "DATABASE":
                        s.databases.add(words[2].strip('"'))
                    elif len(words) >= 3 and words[0].upper() == "DROP" and words[1].upper() == "DATABASE":
                        s.databases.discard(words[2].strip('"'))
                self._answer(200, orjson.dumps({"results": [{"statement_id": 0}]}))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="influx-stub", daemon=True)

    def __enter__(self) -> InfluxStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.state.hang_s = 0
        self.server.shutdown()
        self.server.server_close()

    def points(self) -> list[str]:
        with self.lock:
            return list(self.state.points)
