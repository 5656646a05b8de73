"""An asyncio InfluxQL reader for the hot read paths (latest values, history).

Same contract as contract.influx.Influx.series (bound $params, same errors),
but awaited on the event loop, so those endpoints skip the thread-pool hop
a blocking call costs on every request.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from contract.influx import InfluxRejected, InfluxUnavailable


class AsyncInflux:
    def __init__(self, url: str, database: str, username: str | None, password: str | None, timeout: float) -> None:
        self.database = database
        auth = (username, password or "") if username else None
        self._http = httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout, auth=auth,
                                       limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def series(self, q: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The series of a single-statement query (empty list when none)."""
        data = {"q": q, "db": self.database, "epoch": "ms"}
        if params:
            data["params"] = orjson.dumps(params).decode()
        try:
            resp = await self._http.get("/query", params=data)
        except httpx.HTTPError as exc:
            raise InfluxUnavailable(f"query failed: {type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 500:
            raise InfluxUnavailable(f"HTTP {resp.status_code}")
        body = orjson.loads(resp.content) if resp.content else {}
        if resp.status_code != 200:
            raise InfluxRejected(resp.status_code, str(body.get("error", ""))[:2000])
        results = body.get("results", [])
        for r in results:
            if "error" in r:
                raise InfluxRejected(400, str(r["error"])[:2000])
        return results[0].get("series", []) if results else []
