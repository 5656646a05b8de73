"""A stand-in for InfluxDB 1.x's HTTP API at a pure core's edge (unit tier only).

It answers as InfluxDB does: 204 to a good `/write`, 200 with `{"results": [...]}`
to `/query`, 404 `{"error": "database not found: ..."}` for a database it lacks,
and takes as long as it is told to (an overloaded server). What a real server
decides is tested against one in the integration tier.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class InfluxStub:
    def __init__(self, databases: tuple[str, ...] = ("nakhon",), delay_s: float = 0.0) -> None:
        self.databases = set(databases)
        self.delay_s = delay_s
        self.queries: list[str] = []
        self.writes: list[str] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: dict | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _params(self) -> dict[str, str]:
                url = urlparse(self.path)
                params = {k: v[-1] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                if self.command == "POST" and url.path == "/query":
                    params.update({k: v[-1] for k, v in parse_qs(body).items()})
                elif body:
                    params["_body"] = body
                return params

            def do_GET(self) -> None:
                self._handle()

            def do_POST(self) -> None:
                self._handle()

            def _handle(self) -> None:
                path = urlparse(self.path).path
                params = self._params()
                if stub.delay_s:
                    time.sleep(stub.delay_s)  # the stand-in for a server that is slow to answer
                if path == "/ping":
                    return self._answer(204)
                db = params.get("db", "")
                if path == "/write":
                    if db not in stub.databases:
                        return self._answer(404, {"error": f"database not found: \"{db}\""})
                    with stub._lock:
                        stub.writes.extend(params.get("_body", "").splitlines())
                    return self._answer(204)
                if path == "/query":
                    with stub._lock:
                        stub.queries.append(params.get("q", ""))
                    n = params.get("q", "").count(";") + 1
                    return self._answer(200, {"results": [{"statement_id": i} for i in range(n)]})
                return self._answer(404, {"error": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="influx-stub", daemon=True)

    def __enter__(self) -> InfluxStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
