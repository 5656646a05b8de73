"""A webhook receiver on 127.0.0.1 (a free port) that fails its first N attempts, as a flaky endpoint does."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    def __init__(self, secret: str, fail_first: int = 0, status: int = 503) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.status = status
        self.attempts: list[tuple[float, str]] = []  # (monotonic time, event id) of every request
        self.accepted: list[dict[str, Any]] = []  # bodies answered 200, with a valid signature
        self.bad_signatures = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ts, sig, event = self.headers["X-Nakhon-Timestamp"], self.headers["X-Nakhon-Signature"], self.headers["X-Nakhon-Event"]
                with outer._lock:
                    outer.attempts.append((time.monotonic(), event))
                    failing = len(outer.attempts) <= outer.fail_first
                    good = hmac.compare_digest(sig or "", "sha256=" + hmac.new(outer.secret.encode(), f"{ts}.".encode() + body,
                                                                                 hashlib.sha256).hexdigest())
                    if not good:
                        outer.bad_signatures += 1
                    elif not failing:
                        doc = json.loads(body)
                        doc["received_at"] = time.time()
                        outer.accepted.append(doc)
                self.send_response(outer.status if failing else (200 if good else 401))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[dict[str, Any]]:
        """The single events received (a storm notification carries `storm` instead)."""
        with self._lock:
            return [d["event"] for d in self.accepted if "event" in d]

    def storms(self) -> list[dict[str, Any]]:
        """The storm notifications received (alerts.storm), whole bodies."""
        with self._lock:
            return [d for d in self.accepted if "storm" in d]
