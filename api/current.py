"""What a city looks like now: the snapshot the current-values cache (api.live) keeps per city.

One load asks InfluxDB two cheap questions (the `latest` point of every
device, and every device's newest hourly AQI within two days) and the
registry one, and builds from them the answers of `/v1/cities/{city}/latest`,
`/v1/cities/{city}/aqi`, `/v1/open/cities/{city}/latest.geojson` and each
station's `/v1/devices/{device}/aqi`. Answers are serialized (and gzip'd,
for clients that accept it) once per snapshot, and once more if it turns
stale, so serving one costs a lookup.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from fastapi import Request, Response

from api import history, queries
from api.guard import GuardedAsyncInflux
from api.live import Current, LiveCache
from api.registry import Device, Registry
from contract import aqi
from contract.rollups import AQI_AVG_FIELDS
from contract.settings import Settings

AVG_FIELDS = queries.AQI_FIELDS  # pm25_24h, pm10_24h, o3_8h, co_8h, no2_1h, so2_1h
Answer = Literal["latest", "aqi", "geojson"]



def aqi_value(t_ms: int, row: dict[str, Any]) -> dict[str, Any] | None:
    """From stored or averaged concentrations: the AQI with its band (recomputed, so one rule for all)."""
    when = datetime.fromtimestamp(t_ms / 1000, UTC)
    conc = {p: row.get(f) for p, f in AQI_AVG_FIELDS.items()}
    result = aqi.thai_aqi(conc, when)
    if result is None:
        return None
    b = result.band
    return {"time": when, "aqi": result.aqi, "band": b.level, "colour": b.colour, "label_en": b.en, "label_th": b.th,
            "pollutant": result.pollutant, "concentrations": {AQI_AVG_FIELDS[p]: float(v) for p, v in conc.items() if v is not None}}


def city_aqi(city: str, series: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, dict[str, Any] | None]]:
    """The city's AQI answer and each device's current AQI, from the newest-hour-per-device query's series.

    The city's value: the devices reporting in the newest hour, their concentrations averaged."""
    devices = []
    newest = 0
    for s in series:
        row = dict(zip(s["columns"], s["values"][0], strict=True))
        newest = max(newest, int(row["time"]))
        devices.append((s["tags"]["device"], int(row["time"]), row))
    current_rows = [r for _, t, r in devices if t == newest]
    mean = {f: sum(vals) / len(vals) for f in AVG_FIELDS if (vals := [r[f] for r in current_rows if r.get(f) is not None])}
    current = aqi_value(newest, mean) if current_rows else None
    per_device = {d: aqi_value(t, r) for d, t, r in devices}
    body = {"city": city, "current": current,
            "devices": [{"device": d, "current": per_device[d]} for d in sorted(per_device)]}
    return body, per_device


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def latest_body(city: str, values: dict[str, tuple[int, dict[str, float | str]]], registered: list[Device]) -> dict[str, Any]:
    coords = {d.id: (d.lat, d.lon) for d in registered}
    devices = []
    for device in sorted(set(values) | set(coords)):
        ts, vals = values.get(device, (0, {}))
        lat, lon = coords.get(device, (None, None))
        devices.append({"device": device, "time": datetime.fromtimestamp(ts / 1000, UTC) if ts else None, "lat": lat, "lon": lon,
                        "values": vals})
    return {"city": city, "devices": devices}


def geojson_body(values: dict[str, tuple[int, dict[str, float | str]]], registered: list[Device]) -> dict[str, Any]:
    """The latest reading of every registered station that has reported, as GeoJSON points (RFC 7946: lon, lat)."""
    features = []
    for d in registered:
        if d.id not in values:  # registered but never reported: nothing to publish yet
            continue
        ts, vals = values[d.id]
        features.append({
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [d.lon, d.lat]},
            "properties": {**vals, "device": d.id, "kind": d.kind, "state": d.state, "interval_s": d.interval_s,
                           "time": _iso(ts) if ts else None},
        })
    return {"type": "FeatureCollection", "features": features}


@dataclass(slots=True)
class CitySnapshot:
    city: str
    as_of: datetime  # when the load that built it started
    answers: dict[str, dict[str, Any]]  # latest, aqi, geojson
    device_aqi: dict[str, dict[str, Any] | None]
    _bytes: dict[tuple[str, bool, bool], tuple[bytes, str]] = field(default_factory=dict)

    def body(self, answer: Answer, stale: bool, gz: bool = False) -> tuple[bytes, str]:
        """The answer serialized with `as_of` and `stale` (gzip'd when `gz`), and its ETag; built once per
        snapshot, flag and encoding (a city's latest values are ~100 KB of JSON, ~10 KB gzip'd)."""
        hit = self._bytes.get((answer, stale, gz))
        if hit is None:
            if gz:
                plain, tag = self.body(answer, stale)
                hit = (gzip.compress(plain, compresslevel=6, mtime=0), tag[:-1] + '-gzip"')
            else:
                doc = self.answers[answer]
                meta = {"as_of": self.as_of, "stale": stale}
                data = orjson.dumps({**doc, **meta} if answer != "geojson" else {**doc, "metadata": meta}, option=orjson.OPT_UTC_Z)
                hit = (data, f'"{hashlib.blake2b(data, digest_size=12).hexdigest()}"')
            self._bytes[(answer, stale, gz)] = hit
        return hit


async def load_city(influx: GuardedAsyncInflux, registry: Registry, city: str, timeout: float) -> CitySnapshot:
    """One snapshot of `city` (InfluxError when InfluxDB does not answer within `timeout`)."""
    as_of = datetime.now(UTC)
    latest, aqi = queries.latest_city(city), queries.aqi_latest_by_device(city, as_of - timedelta(days=2))
    latest_q = influx.series(latest.statement, latest.params, probe=True, timeout=timeout)
    aqi_q = influx.series(aqi.statement, aqi.params, probe=True, timeout=timeout)
    latest_series, aqi_series = await asyncio.gather(latest_q, aqi_q)
    registered = await asyncio.to_thread(registry.devices, city=city)
    values = history.latest_values(latest_series)
    aqi_doc, per_device = city_aqi(city, aqi_series)
    return CitySnapshot(city, as_of, {"latest": latest_body(city, values, registered), "aqi": aqi_doc,
                                      "geojson": geojson_body(values, registered)}, per_device)


def city_loader(state: Any, city: str) -> Callable[[], Awaitable[CitySnapshot]]:
    """The loader of `city`'s snapshot for the app whose `app.state` is `state`."""
    settings: Settings = state.settings
    live: LiveCache[CitySnapshot] = state.live
    # a reload has a snapshot to fall back on and gives up soon; the first load has none: it waits as a query would
    timeout = settings.api_live_timeout_s if live.age(city) is not None else settings.api_query_timeout_s
    return lambda: load_city(state.ainflux, state.registry, city, timeout)


async def city_now(request: Request, city: str) -> Current[CitySnapshot]:
    """The city's snapshot from the cache (api.live); InfluxError (503) only if it was never loaded."""
    live: LiveCache[CitySnapshot] = request.app.state.live
    return await live.get(city, city_loader(request.app.state, city))


def answer(request: Request, now: Current[CitySnapshot], name: Answer, media_type: str = "application/json") -> Response:
    """A current answer with its age: `Age` (seconds since the data was read), `as_of` and `stale` in the body,
    an ETag, and a proxy max-age of the refresh period (304 when the client has it: api.httpcache)."""
    gz = "gzip" in request.headers.get("accept-encoding", "")
    body, etag = now.value.body(name, now.stale, gz)
    settings: Settings = request.app.state.settings
    headers = {"ETag": etag, "Age": str(int(now.age_s)),
               "Cache-Control": f"public, max-age={max(1, math.ceil(settings.api_live_refresh_s))}"}
    if gz:
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=media_type, headers=headers)
