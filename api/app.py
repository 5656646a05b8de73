"""The application factory."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api import docs
from api.broker import DynSec
from api.current import CitySnapshot, city_loader
from api.guard import Breaker, GuardedAsyncInflux, GuardedInflux
from api.httpcache import HttpCache
from api.live import LiveCache
from api.ratelimit import SharedRateLimiter
from api.registry import Registry
from api.rotation import Rotator
from api.routers import alerts, apikeys, aqi, devices, firmware, health, opendata, public, quality, readings
from api.throttle import Throttle
from contract import rollups
from contract.influx import Influx, InfluxError, InfluxRefused, InfluxRejected
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
                              Influx(settings.influx_url, settings.influx_db, settings.influx_username, settings.influx_password),
                              lock_file=settings.registry_path.with_name("rotator.lock"))
            rotator.start()
        keeper = asyncio.get_running_loop().create_task(_keep_current(app))
        yield
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
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
    # Reads go through the guard (api.guard): a bound on concurrent queries, a time limit, and a breaker shared by both clients.
    breaker = Breaker(settings.api_influx_retry_s)
    app.state.breaker = breaker
    app.state.influx = GuardedInflux(settings.influx_url, settings.influx_db, settings.influx_username, settings.influx_password,
                                     settings.api_query_timeout_s, breaker, settings.api_influx_concurrency, settings.api_query_wait_s)
    try:  # the ingest creates these too; whichever starts first
        app.state.influx.ensure_schema(settings.raw_retention, settings.hourly_retention)
        app.state.influx.execute(rollups.schema_statements(settings.influx_db))
    except InfluxRefused as exc:  # a read-only user (as it should be): the schema is made at set-up
        log.info("storage schema left to the database administrator", extra=kv(status=exc.status, error=exc.message[:200]))
    except InfluxError as exc:
        log.warning("could not create the storage schema yet", extra=kv(error=str(exc)[:200]))
    app.state.ainflux = GuardedAsyncInflux(settings.influx_url, settings.influx_db, settings.influx_username,
                                           settings.influx_password, settings.api_query_timeout_s, breaker,
                                           settings.api_influx_concurrency, settings.api_query_wait_s)
    app.state.registry = Registry(settings.registry_path)
    app.state.live = LiveCache[CitySnapshot](settings.api_live_refresh_s, settings.api_live_max_age_s, settings.api_live_timeout_s)
    # One table of buckets for every process of this API (api.ratelimit): the limits hold whichever process answers.
    app.state.limiter = SharedRateLimiter(settings.path("api") / "ratelimit.buckets")
    app.state.dynsec = (
        DynSec(settings.mqtt_host, settings.mqtt_port, settings.broker_admin_username, settings.broker_admin_password,
               settings.mqtt_tls, str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None)
        if settings.broker_admin_username and settings.broker_admin_password else None
    )

    @app.exception_handler(InfluxError)
    async def _influx_down(request: Request, exc: InfluxError) -> JSONResponse:
        if isinstance(exc, InfluxRejected):
            return await _influx_refused(request, exc)
        log.warning("influxdb unavailable", extra=kv(path=request.url.path, error=str(exc)[:200]))
        retry = max(1, round(breaker.retry_after()) or round(settings.api_influx_retry_s))
        return JSONResponse({"detail": "the database is unavailable; try again shortly"}, status_code=503,
                            headers={"Retry-After": str(retry)})

    @app.exception_handler(InfluxRejected)
    async def _influx_refused(request: Request, exc: InfluxRejected) -> JSONResponse:
        # A query we built was refused: a bug on our side, logged, with nothing of the query shown to the caller.
        log.error("influxdb refused a query", extra=kv(path=request.url.path, error=exc.message[:300]))
        return JSONResponse({"detail": "internal error"}, status_code=500)

    for r in (health, readings, aqi, alerts, quality, opendata, public, devices, firmware, apikeys):
        app.include_router(r.router)
    # Outermost last: the rate limit answers before anything else runs, even the proxy-cache layer.
    app.add_middleware(HttpCache, recent_s=settings.api_cache_recent_s, history_s=settings.api_cache_history_s,
                       memory_s=settings.api_cache_memory_s, public=settings.api_public_read)
    app.add_middleware(Throttle, limiter=app.state.limiter, per_key=settings.api_rate_per_key,
                       per_address=settings.api_rate_per_address)
    return app


async def _keep_current(app: FastAPI) -> None:
    """Reload every city's current values every `api_live_refresh_s`, requested or not (api.live)."""
    s: Settings = app.state.settings
    live: LiveCache[CitySnapshot] = app.state.live
    while True:
        for city in s.cities:
            live.refresh(city, city_loader(app.state, city))
        await asyncio.sleep(s.api_live_refresh_s)
