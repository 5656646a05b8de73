"""The application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.routers import health, readings
from contract.influx import Influx
from contract.settings import Settings, load_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.influx = Influx(settings.influx_url, settings.influx_db, settings.influx_username, settings.influx_password, settings.influx_timeout_s)
        yield
        app.state.influx.close()

    app = FastAPI(
        title="Nakhon API",
        version="1.0.0",
        description="Open data and operations for the Nakhon smart-city sensor platform (Phuket, Khon Kaen, Chiang Mai).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(health.router)
    app.include_router(readings.router)
    return app
