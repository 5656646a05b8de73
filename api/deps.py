"""Dependencies shared by the routers (settings, the InfluxDB client)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from contract.influx import Influx
from contract.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_influx(request: Request) -> Influx:
    influx: Influx = request.app.state.influx
    return influx


SettingsDep = Annotated[Settings, Depends(get_settings)]
InfluxDep = Annotated[Influx, Depends(get_influx)]
