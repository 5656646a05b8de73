"""Run the ingest: one worker in this process, or N worker processes.

Workers share the stream through the MQTT shared subscription, so N
processes use N cores. SIGTERM or SIGINT stops them gracefully (flush, ack,
disconnect).
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Sequence

from contract.logs import kv, setup_logging
from contract.settings import Settings
from contract.sigrelay import route
from ingest.worker import Worker

log = logging.getLogger("nakhon.ingest")

WORKER_STABLE_S = 30.0  # a worker that ran this long starts its backoff afresh when it dies
WORKER_BACKOFF_CAP_S = 30.0


def run_worker(settings: Settings, index: int = 0) -> None:
    setup_logging(settings.log_level)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` dumps every thread's stack to the log
    stop, hup = threading.Event(), threading.Event()
    # SIGHUP: read NAKHON_INFLUX_PASSWORD_FILE again
    route({signal.SIGTERM: stop.set, signal.SIGINT: stop.set, signal.SIGHUP: hup.set})
    worker = Worker(settings, index)
    worker.start()
    # Wake up now and then to see whether SIGHUP came.
    while not stop.wait(0.5):
        if hup.is_set():
            hup.clear()
            worker.reload_credentials("SIGHUP")
    worker.stop()


def _forward(procs: Sequence[mp.process.BaseProcess], sig: int) -> None:
    """A signal for the workers (SIGHUP: read the password file again) goes to each one alive."""
    for p in procs:
        if p.pid and p.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, sig)


def run(settings: Settings) -> None:
    """Blocks until SIGTERM/SIGINT."""
    if settings.ingest_workers == 1:
        run_worker(settings, 0)
        return
    setup_logging(settings.log_level)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=run_worker, args=(settings, i), name=f"ingest-{i}") for i in range(settings.ingest_workers)]
    for p in procs:
        p.start()
    log.info("ingest started", extra=kv(workers=len(procs), pids=[p.pid for p in procs]))
    stop = threading.Event()
    route({signal.SIGTERM: stop.set, signal.SIGINT: stop.set, signal.SIGHUP: lambda: _forward(procs, signal.SIGHUP)})
    started = [time.monotonic()] * len(procs)
    deaths = [0] * len(procs)
    due: list[float | None] = [None] * len(procs)  # when a dead worker starts again
    while not stop.wait(0.5):
        now = time.monotonic()
        for i, p in enumerate(procs):
            if due[i] is None and not p.is_alive():  # a crashed worker is restarted; its session resumes
                ran = now - started[i]
                deaths[i] = deaths[i] + 1 if ran < WORKER_STABLE_S else 1
                delay = min(WORKER_BACKOFF_CAP_S, 2.0 ** (deaths[i] - 1))  # a worker that dies at start-up must not spin
                log.error("worker died, restarting", extra=kv(worker=i, exitcode=p.exitcode, ran_s=round(ran, 1), deaths_in_a_row=deaths[i],
                                                             restart_in_s=delay))
                due[i] = now + delay
            elif (at := due[i]) is not None and now >= at:
                procs[i] = ctx.Process(target=run_worker, args=(settings, i), name=f"ingest-{i}")
                procs[i].start()
                started[i], due[i] = now, None
    for p in procs:
        if p.pid:
            p.terminate()
    for p in procs:
        p.join(30)
    log.info("ingest stopped")
