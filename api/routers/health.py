"""Liveness and readiness.

`/healthz` says the API process answers. `/readyz` says whether the platform
behind it does its job: the broker and InfluxDB answer, and readings flow,
judged from the ingest workers' own reports (`ingest_stats` in InfluxDB,
written every `NAKHON_INGEST_STATS_INTERVAL_S`): at least one worker reported
recently, connected to the broker, with its spool not only growing (a spool
that only grows means InfluxDB takes no writes).
"""

from __future__ import annotations

import socket
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api import queries
from api.deps import InfluxDep, SettingsDep
from contract.influx import InfluxRefused, InfluxUnavailable

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class IngestWorker(BaseModel):
    worker: str
    connected: bool
    spool_depth: int
    spool_growing: bool
    received: int


class IngestState(BaseModel):
    flowing: bool
    window_s: int
    workers: list[IngestWorker]
    problems: list[str]


class Ready(BaseModel):
    status: str
    broker: bool
    influxdb: bool
    ingest: IngestState


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


def judge_ingest(rows: list[dict[str, Any]], window_s: int) -> IngestState:
    """Whether readings flow, from each worker's stats over the last `window_s` (rows of the readiness query)."""
    workers = []
    for r in rows:
        spool, spool0, low, reports = (int(r.get(k) or 0) for k in ("spool", "spool0", "spool_min", "reports"))
        workers.append(
            IngestWorker(
                worker=str(r.get("worker", "?")),
                connected=bool(r.get("connected")),
                spool_depth=spool,
                spool_growing=reports >= 3 and spool > spool0 and low == spool0,
                received=int(r.get("received") or 0),
            )
        )
    problems = []
    if not workers:
        problems.append(f"no ingest worker reported in the last {window_s} s")
    for w in workers:
        if not w.connected:
            problems.append(f"{w.worker}: not connected to the broker")
        if w.spool_growing:
            problems.append(f"{w.worker}: spool growing ({w.spool_depth} lines): InfluxDB takes no writes")
    flowing = any(w.connected and not w.spool_growing for w in workers)
    return IngestState(flowing=flowing, window_s=window_s, workers=workers, problems=problems)


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
def readyz(settings: SettingsDep, influx: InfluxDep) -> JSONResponse:
    try:
        with socket.create_connection((settings.mqtt_host, settings.mqtt_port), timeout=1.0):
            broker = True
    except OSError:
        broker = False
    db = influx.ping()
    window = max(10, round(3.5 * settings.ingest_stats_interval_s))  # three reports or more, and a loaded machine's pause
    rows: list[dict[str, Any]] = []
    if db:
        try:
            q = queries.ingest_reports(window)
            rows = influx.rows(q.statement, q.params)
        except InfluxRefused as exc:
            if not exc.schema_missing:  # our credentials refused: the database is of no use to us
                db = False
            rows = []  # no database yet: no ingest has ever started
        except InfluxUnavailable:
            db = False
    ingest = judge_ingest(rows, window)
    ok = broker and db and ingest.flowing
    body = Ready(status="ready" if ok else "not ready", broker=broker, influxdb=db, ingest=ingest)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
