"""Liveness and readiness."""

from __future__ import annotations

import socket

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.deps import InfluxDep, SettingsDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    broker: bool
    influxdb: bool


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
def readyz(settings: SettingsDep, influx: InfluxDep) -> JSONResponse:
    try:
        with socket.create_connection((settings.mqtt_host, settings.mqtt_port), timeout=1.0):
            broker = True
    except OSError:
        broker = False
    db = influx.ping()
    ok = broker and db
    body = Ready(status="ready" if ok else "not ready", broker=broker, influxdb=db)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
