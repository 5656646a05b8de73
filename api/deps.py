"""Dependencies shared by the routers (settings, InfluxDB, registry, broker) and common answers."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Depends, HTTPException, Request, Response
from pydantic import BaseModel

from api.ainflux import AsyncInflux
from api.broker import DynSec
from api.registry import Registry
from contract.influx import Influx
from contract.settings import Settings


class Error(BaseModel):
    detail: str


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers an endpoint can give."""
    text = {400: "Bad request", 401: "Missing, invalid or revoked API key", 403: "Key lacks the scope or city",
            404: "Not found", 409: "Exists already", 429: "Rate limit exceeded", 503: "A backing service is unavailable"}
    return {c: {"model": Error, "description": text[c]} for c in codes}


READ_ERRORS = errors(400, 401, 404, 429, 503)
WRITE_ERRORS = errors(400, 401, 403, 404, 409, 429, 503)


def json_response(body: Any, media_type: str = "application/json") -> Response:
    """Serialized straight with orjson: the hot paths skip re-validating what they built.

    UTC datetimes come out as RFC 3339 with a Z (`2026-01-01T00:00:00Z`, `...T00:00:00.250000Z`), as isoformat would write them."""
    return Response(orjson.dumps(body, option=orjson.OPT_UTC_Z), media_type=media_type)


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_influx(request: Request) -> Influx:
    influx: Influx = request.app.state.influx
    return influx


async def get_ainflux(request: Request) -> AsyncInflux:
    ainflux: AsyncInflux = request.app.state.ainflux
    return ainflux


async def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


async def get_dynsec(request: Request) -> DynSec:
    dynsec: DynSec | None = request.app.state.dynsec
    if dynsec is None:
        raise HTTPException(503, "provisioning is not configured: set NAKHON_BROKER_ADMIN_USERNAME and NAKHON_BROKER_ADMIN_PASSWORD")
    return dynsec


SettingsDep = Annotated[Settings, Depends(get_settings)]
InfluxDep = Annotated[Influx, Depends(get_influx)]
AsyncInfluxDep = Annotated[AsyncInflux, Depends(get_ainflux)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
DynSecDep = Annotated[DynSec, Depends(get_dynsec)]
