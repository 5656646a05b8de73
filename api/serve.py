"""The API's processes: one, or several behind one port.

With `api_processes` above one, uvicorn's supervisor binds the port once and
starts that many worker processes on the same listening socket (the kernel
hands each new connection to whichever worker accepts first), restarts a
worker that dies, and stops them all on SIGTERM; a worker dies with its
supervisor, even one killed with SIGKILL (PR_SET_PDEATHSIG), so nothing is
left holding the port for the restarted API. Each worker builds its app
from the same environment with `worker_app`; they share the rate limiter's
table (api.ratelimit), so limits hold across them, and each keeps its own
current-values cache (a few small queries every refresh period).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from contract.logs import setup_logging
from contract.settings import Settings, load_settings

_SUPERVISOR = "NAKHON_API_SUPERVISOR_PID"  # not a setting: how a worker knows its supervisor


def die_with_supervisor(supervisor: int) -> None:
    """Have the kernel kill this worker when its supervisor dies (Linux PR_SET_PDEATHSIG), so a supervisor
    killed with SIGKILL leaves no workers behind holding the port (its restart could not bind it)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != supervisor:  # it died before the line above
        os._exit(1)


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn calls it in the worker)."""
    die_with_supervisor(int(os.environ.get(_SUPERVISOR, os.getppid())))
    settings = load_settings()
    setup_logging(settings.log_level)
    return create_app(settings)


def serve(settings: Settings) -> None:
    """Serve the API on `api_host:api_port` (HTTPS with a certificate) with `api_processes` processes, until SIGTERM or Ctrl-C."""
    cert, key = settings.api_tls_cert_file, settings.api_tls_key_file  # HTTPS when both are set (Settings checks the pair)
    common = {"host": settings.api_host, "port": settings.api_port, "log_config": None, "access_log": False,
              "ssl_certfile": str(cert) if cert else None, "ssl_keyfile": str(key) if key else None}
    if settings.api_processes == 1:
        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
        return
    os.environ[_SUPERVISOR] = str(os.getpid())  # the workers inherit it
    uvicorn.run("api.serve:worker_app", factory=True, workers=settings.api_processes, **common)  # type: ignore[arg-type]
