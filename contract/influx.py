"""A small client for the InfluxDB HTTP API every generation shares.

Line protocol over `/write`, InfluxQL over `/query` (with bound parameters,
so no caller ever pastes a value into a query string), `/ping`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import httpx
import orjson

from contract import storage


class InfluxError(Exception):
    """Base for InfluxDB failures."""


class InfluxUnavailable(InfluxError):
    """The server cannot take the request now (down, timeout, 5xx): retry later."""


class InfluxRejected(InfluxError):
    """The server refused the request (4xx): retrying the same request won't help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Influx:
    def __init__(
        self,
        url: str,
        database: str = storage.DATABASE,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.database = database
        auth = (username, password or "") if username else None
        self._http = httpx.Client(base_url=self.url, timeout=timeout, auth=auth)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Influx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self) -> bool:
        try:
            return self._http.get("/ping").status_code == 204
        except httpx.HTTPError:
            return False

    def write(self, lines: Sequence[str] | bytes, rp: str | None = None, precision: str = storage.PRECISION) -> None:
        body = lines if isinstance(lines, bytes) else "\n".join(lines).encode()
        params = {"db": self.database, "precision": precision}
        if rp:
            params["rp"] = rp
        try:
            resp = self._http.post("/write", params=params, content=body)
        except httpx.HTTPError as exc:
            raise InfluxUnavailable(f"write failed: {type(exc).__name__}: {exc}") from exc
        if resp.status_code == 204:
            return
        message = _error_message(resp)
        if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
            raise InfluxRejected(resp.status_code, message)
        raise InfluxUnavailable(f"HTTP {resp.status_code}: {message}")

    def query(
        self,
        q: str,
        params: dict[str, Any] | None = None,
        epoch: str = "ms",
        method: str = "GET",
        database: str | None = None,
    ) -> list[dict[str, Any]]:
        """Run InfluxQL; returns the statements' results. `$name` binds `params`."""
        data: dict[str, str] = {"q": q, "db": database or self.database, "epoch": epoch}
        if params:
            data["params"] = orjson.dumps(params).decode()
        try:
            resp = self._http.post("/query", data=data) if method == "POST" else self._http.get("/query", params=data)
        except httpx.HTTPError as exc:
            raise InfluxUnavailable(f"query failed: {type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 500:
            raise InfluxUnavailable(f"HTTP {resp.status_code}: {_error_message(resp)}")
        if resp.status_code != 200:
            raise InfluxRejected(resp.status_code, _error_message(resp))
        results: list[dict[str, Any]] = orjson.loads(resp.content).get("results", [])
        for r in results:
            if "error" in r:
                raise InfluxRejected(400, r["error"])
        return results

    def series(self, q: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The series of a single-statement query (empty list when none)."""
        results = self.query(q, params)
        return results[0].get("series", []) if results else []

    def rows(self, q: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """A single-statement query's rows as dicts, tags merged in."""
        out = []
        for s in self.series(q, params):
            tags = s.get("tags", {})
            cols = s["columns"]
            for values in s.get("values", []):
                row = dict(zip(cols, values, strict=True))
                row.update(tags)
                out.append(row)
        return out

    def execute(self, statements: Iterable[str]) -> None:
        for st in statements:
            self.query(st, method="POST")

    def ensure_schema(self, raw_retention: str = "400d", hourly_retention: str = "INF") -> None:
        self.execute(storage.schema_statements(raw_retention, hourly_retention))


def _error_message(resp: httpx.Response) -> str:
    try:
        return str(orjson.loads(resp.content).get("error", resp.text))[:2000]
    except orjson.JSONDecodeError:
        return resp.text[:2000]
