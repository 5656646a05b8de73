"""The application factory."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api import docs
from api.ainflux import AsyncInflux
from api.broker import DynSec
from api.registry import Registry
from api.rotation import Rotator
from api.routers import alerts, apikeys, aqi, devices, health, opendata, public, quality, readings
from api.security import RateLimiter
from contract import rollups
from contract.influx import Influx, InfluxError, InfluxRefused, InfluxRejected, InfluxUnavailable
from contract.logs import kv
from contract.settings import Settings, load_settings

log = logging.getLogger("nakhon.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # What start-up built (modules, routes, schemas: tens of thousands of objects) lives as long as the
        # process: keep it out of the cyclic collector, whose full passes over it otherwise stall a request
        # now and then for tens of milliseconds (the p99).
        gc.collect()
        gc.freeze()
        rotator = None
        if app.state.dynsec is not None:  # rotations with a grace period complete in the background
            rotator = Rotator(app.state.registry, app.state.dynsec,
                              Influx(settings.influx_url, settings.influx_db, settings.influx_username, settings.influx_password))
            rotator.start()
        yield
        if rotator is not None:
            rotator.stop()
        await app.state.ainflux.aclose()
        app.state.influx.close()

    app = FastAPI(
        title="Nakhon API",
        version="1.0.0",
        description=(
            "Open data and operations for the Nakhon smart-city sensor platform (Phuket, Khon Kaen, Chiang Mai). "
            "Reading is public unless switched off; provisioning and keys need an admin key in `X-API-Key`."
        ),
        lifespan=lifespan,
        docs_url=None,  # served by api.docs from installed assets, not from a CDN
        redoc_url=None,
    )
    docs.install(app)
    app.state.settings = settings
    # Created here, not in the lifespan, so the app also serves when driven without one (tests, fuzzing).
    app.state.influx = Influx(settings.influx_url, settings.influx_db, settings.influx_username, settings.influx_password,
                              settings.influx_timeout_s)
    try:  # the ingest creates these too; whichever starts first
        app.state.influx.ensure_schema(settings.raw_retention, settings.hourly_retention)
        app.state.influx.execute(rollups.schema_statements(settings.influx_db))
    except InfluxRefused as exc:  # a read-only user (as it should be): the schema is made at set-up
        log.info("storage schema left to the database administrator", extra=kv(status=exc.status, error=exc.message[:200]))
    except InfluxError as exc:
        log.warning("could not create the storage schema yet", extra=kv(error=str(exc)[:200]))
    app.state.ainflux = AsyncInflux(settings.influx_url, settings.influx_db, settings.influx_username, settings.influx_password,
                                    settings.influx_timeout_s)
    app.state.registry = Registry(settings.registry_path)
    app.state.limiter = RateLimiter()
    app.state.dynsec = (
        DynSec(settings.mqtt_host, settings.mqtt_port, settings.broker_admin_username, settings.broker_admin_password,
               settings.mqtt_tls, str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None)
        if settings.broker_admin_username and settings.broker_admin_password else None
    )

    @app.exception_handler(InfluxUnavailable)
    async def _influx_down(request: Request, exc: InfluxUnavailable) -> JSONResponse:
        log.warning("influxdb unavailable", extra=kv(path=request.url.path, error=str(exc)[:200]))
        return JSONResponse({"detail": "the database is unavailable; try again shortly"}, status_code=503)

    @app.exception_handler(InfluxRejected)
    async def _influx_refused(request: Request, exc: InfluxRejected) -> JSONResponse:
        # A query we built was refused: a bug on our side, logged, with nothing of the query shown to the caller.
        log.error("influxdb refused a query", extra=kv(path=request.url.path, error=exc.message[:300]))
        return JSONResponse({"detail": "internal error"}, status_code=500)

    for r in (health, readings, aqi, alerts, quality, opendata, public, devices, apikeys):
        app.include_router(r.router)
    return app
