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
    """The server cannot take the request now (down, timeout, 5xx, 408, 429): retry later."""


class InfluxRefused(InfluxUnavailable):
    """The server refused the request itself, not its data: credentials (401/403) or a missing
    database (404). Retrying the same request succeeds once an operator (or the schema) fixes it,
    so it is a kind of "unavailable": nothing it carried is bad data."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message

    @property
    def schema_missing(self) -> bool:
        """The database or retention policy is missing: creating the schema fixes it."""
        return self.status == 404 or "not found" in self.message


class InfluxRejected(InfluxError):
    """The server refused the data (400: unparsable lines, type conflicts, partial writes)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class InfluxTooLarge(InfluxRejected):
    """413: the body is larger than the server takes (`max-body-size`); smaller requests will pass."""


def classify(status: int, message: str) -> InfluxError | None:
    """The one error classification of an InfluxDB HTTP answer (sync and async clients alike).

    None for success (2xx). 401/403/404 refuse the request (credentials, database),
    413 its size, other 4xx but 408/429 its data; 408, 429 and 5xx are "try later".
    A missing retention policy comes back as a 500 whose message says so: that is a
    refusal of the request too (the schema is missing), not a passing fault.
    """
    if 200 <= status < 300:
        return None
    if status in (401, 403, 404) or (status >= 500 and "retention policy not found" in message):
        return InfluxRefused(status, message)
    if status == 413:
        return InfluxTooLarge(status, message)
    if 400 <= status < 500 and status not in (408, 429):
        return InfluxRejected(status, message)
    return InfluxUnavailable(f"HTTP {status}: {message}")


def query_params(q: str, database: str, params: dict[str, Any] | None = None, epoch: str | None = "ms") -> dict[str, str]:
    """The parameters of a `/query` request: InfluxQL with `$name` bound to `params` (never pasted in)."""
    data = {"q": q, "db": database}
    if epoch:
        data["epoch"] = epoch
    if params:
        data["params"] = orjson.dumps(params).decode()
    return data


def answer_error(status: int, content: bytes) -> InfluxError | None:
    """`classify` of an answer, its body read for the message only when it is an error (a query's answer can
    be megabytes of JSON: parsed once, by the caller, not twice)."""
    return None if 200 <= status < 300 else classify(status, error_text(content))


def error_text(content: bytes, fallback: str = "") -> str:
    """InfluxDB's own error message from an answer body (`{"error": ...}`), else the text."""
    try:
        doc = orjson.loads(content) if content else {}
        if isinstance(doc, dict) and "error" in doc:
            return str(doc["error"])[:2000]
    except orjson.JSONDecodeError:
        pass
    return (content.decode("utf-8", "replace") or fallback)[:2000]


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
        self.logins = 0  # how many times the credentials were changed (a request refused before one may go again)

    def set_credentials(self, username: str, password: str) -> None:
        """Log in with these from the next request on (a rotated password)."""
        self._http.auth = httpx.BasicAuth(username, password)
        self.logins += 1

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
        error = answer_error(resp.status_code, resp.content)
        if error is not None:
            raise error

    def query(
        self,
        q: str,
        params: dict[str, Any] | None = None,
        epoch: str = "ms",
        method: str = "GET",
        database: str | None = None,
    ) -> list[dict[str, Any]]:
        """Run InfluxQL; returns the statements' results. `$name` binds `params`."""
        data = query_params(q, database or self.database, params, epoch)
        try:
            resp = self._http.post("/query", data=data) if method == "POST" else self._http.get("/query", params=data)
        except httpx.HTTPError as exc:
            raise InfluxUnavailable(f"query failed: {type(exc).__name__}: {exc}") from exc
        error = answer_error(resp.status_code, resp.content)
        if error is not None:
            raise error
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

