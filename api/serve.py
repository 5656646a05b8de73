"""The API's processes: one, or several behind one port.

With `api_processes` above one, uvicorn's supervisor binds the port once and
starts that many worker processes on the same listening socket (the kernel
hands each new connection to whichever worker accepts first), restarts a
worker that dies, and stops them all on SIGTERM. Each worker builds its app
from the same environment with `worker_app`; they share the rate limiter's
table (api.ratelimit), so limits hold across them, and each keeps its own
current-values cache (a few small queries every refresh period).
"""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from contract.logs import setup_logging
from contract.settings import Settings, load_settings


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn calls it in the worker)."""
    settings = load_settings()
    setup_logging(settings.log_level)
    return create_app(settings)


def serve(settings: Settings) -> None:
    """Serve the API on `api_host:api_port` with `api_processes` processes, until SIGTERM or Ctrl-C."""
    common = {"host": settings.api_host, "port": settings.api_port, "log_config": None, "access_log": False}
    if settings.api_processes == 1:
        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
        return
    uvicorn.run("api.serve:worker_app", factory=True, workers=settings.api_processes, **common)  # type: ignore[arg-type]
