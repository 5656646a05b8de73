"""The floor under the API's figures: uvicorn serving one constant answer, nothing else.

`nakhon api-bench` starts it beside the API (same server, same number of
processes, same event loop and parser) answering every request with the
bytes of the API's own gzip'd latest-per-city answer, and loads it with the
same client in the same run. What the API cannot beat on this machine at
this load: its figures are read against this one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

BODY_FILE = "NAKHON_BENCH_FLOOR_BODY"
_body = Path(os.environ[BODY_FILE]).read_bytes() if BODY_FILE in os.environ else b"{}"
_headers = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip"), (b"content-length", str(len(_body)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": _headers})
    await send({"type": "http.response.body", "body": _body})
