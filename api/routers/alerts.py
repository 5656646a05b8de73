"""A city's alerts (contract.alerts): open now and history, and acknowledgement by an official.

The alert evaluator stores one point per event in `raw.alerts` (tags city,
device, rule); an alert is folded from its events. Acknowledgements are the
API's own record (who and when), kept in a small SQLite table beside the
registry. A key bound to a city sees and acknowledges only that city.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel

from api import history, queries
from api.deps import READ_ERRORS, WRITE_ERRORS, InfluxDep, SettingsDep
from api.params import CityPath, End, Start
from api.registry import ApiKey
from api.routers.readings import known_city
from api.security import Admin, Reader
from contract.alerts import CITY_SUBJECT, RULES
from contract.topics import DEVICE_ID_PATTERN

router = APIRouter(prefix="/v1", tags=["alerts"])

ALERT_ID_PATTERN = r"^[a-z][a-z0-9_]{1,31}\.(_city|[a-z0-9][a-z0-9-]{2,31})\.[a-z0-9_]{1,32}\.[0-9]{1,16}(\.past)?$"
AlertIdPath = Annotated[str, PathParam(pattern=ALERT_ID_PATTERN, description="alert id, e.g. phuket.pk-water-001.water_warning.1764000000000")]
RuleName = Literal["aqi_yellow", "aqi_orange", "aqi_red", "pm25_24h", "water_warning", "water_flood", "rain_heavy", "rain_very_heavy", "silent"]
assert set(RuleName.__args__) == set(RULES)  # type: ignore[attr-defined]  # kept in step with the contract


class Ack(BaseModel):
    by: str  # the API key's name
    key_id: str
    at: datetime


class Alert(BaseModel):
    id: str
    city: str
    device: str | None  # None: the whole city
    rule: str
    severity: str
    state: Literal["open", "closed", "past"]  # past: began and ended in data that arrived late, never announced
    opened_at: datetime
    since: datetime  # when the condition began
    closed_at: datetime | None
    updated_at: datetime
    value: float
    peak: float
    threshold: float
    unit: str
    message_en: str
    message_th: str
    late: bool
    rules_version: str
    events: int
    acknowledged: Ack | None


class Alerts(BaseModel):
    city: str
    state: str
    start: datetime | None
    end: datetime | None
    alerts: list[Alert]


class Acks:
    """Who acknowledged which alert, when (SQLite, beside the registry)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("CREATE TABLE IF NOT EXISTS alert_acks (alert_id TEXT PRIMARY KEY, city TEXT NOT NULL, key_id TEXT NOT NULL, "
                         "by_name TEXT NOT NULL, at TEXT NOT NULL)")
        self._lock = threading.Lock()

    def get(self, ids: list[str]) -> dict[str, Ack]:
        if not ids:
            return {}
        with self._lock:
            rows = self._db.execute(f"SELECT alert_id, key_id, by_name, at FROM alert_acks WHERE alert_id IN ({','.join('?' * len(ids))})",
                                    ids).fetchall()
        return {a: Ack(by=n, key_id=k, at=datetime.fromisoformat(t)) for a, k, n, t in rows}

    def put(self, alert_id: str, city: str, key: ApiKey) -> Ack:
        """Idempotent: the first acknowledgement stands."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO alert_acks VALUES (?, ?, ?, ?, ?)",
                             (alert_id, city, key.id, key.name, datetime.now(UTC).isoformat()))
        return self.get([alert_id])[alert_id]


def _acks(request: Request) -> Acks:
    acks: Acks | None = getattr(request.app.state, "alert_acks", None)
    if acks is None:
        settings = request.app.state.settings
        acks = request.app.state.alert_acks = Acks(Path(settings.registry_path).with_name("alert_acks.sqlite3"))
    return acks


def _may_see(key: ApiKey | None, city: str) -> None:
    if key is not None and key.city is not None and key.city != city:
        raise HTTPException(403, f"this key sees {key.city} only")


def _t(ms: int | float) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


def _fold(rows: list[dict[str, Any]]) -> list[Alert]:
    """Events (time-ordered) into alerts: the first event's opening, the last event's state and values."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_id.setdefault(r["alert_id"], []).append(r)
    out = []
    for alert_id, evs in by_id.items():
        first, last = evs[0], evs[-1]
        kind = last["event"]
        state: Literal["open", "closed", "past"] = "past" if kind == "past" else "closed" if kind == "closed" else "open"
        out.append(Alert(
            id=alert_id, city=last["city"], device=None if last["device"] == CITY_SUBJECT else last["device"], rule=last["rule"],
            severity=last["severity"], state=state, opened_at=_t(last["opened_ms"]), since=_t(last["since_ms"]),
            closed_at=_t(last["closed_ms"]) if last.get("closed_ms") is not None else None, updated_at=_t(last["time"]),
            value=last["value"], peak=max(e["peak"] for e in evs), threshold=last["threshold"], unit=last["unit"],
            message_en=last["message_en"], message_th=last["message_th"], late=bool(first["late"]) or kind == "past",
            rules_version=last["rules_version"], events=len(evs), acknowledged=None))
    return out



@router.get("/cities/{city}/alerts", response_model=Alerts, responses=READ_ERRORS)
def city_alerts(
    city: CityPath, key: Reader, influx: InfluxDep, settings: SettingsDep, request: Request,
    state: Annotated[Literal["open", "all", "closed", "past"], Query(description="open now, or history of all / closed / past alerts")] = "open",
    rule: Annotated[RuleName | None, Query(description="only this rule")] = None,
    device: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN, description="only this station")] = None,
    start: Start = None, end: End = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many alerts, newest first")] = 200,
) -> Alerts:
    """The city's open alerts (default), or its history in a range (default the last 30 days) with filters."""
    known_city(settings, city)
    _may_see(key, city)
    t0 = t1 = None
    if state == "open":
        # the newest event of every series (station x rule): open unless it closed the alert
        q = queries.alert_newest_events(city, rule, device)
        ids = [r["alert_id"] for r in influx.rows(q.statement, q.params) if r["event"] in ("opened", "updated")]
        rows = []
        if ids:
            q = queries.alert_events_of(city, rule, device, ids)
            rows = influx.rows(q.statement, q.params)
    else:
        try:
            t0, t1 = history.time_range(start, end, timedelta(days=30))
        except history.QueryError as exc:
            raise HTTPException(400, str(exc)) from None
        q = queries.alert_events_between(city, rule, device, t0, t1)
        rows = influx.rows(q.statement, q.params)
    rows.sort(key=lambda r: r["time"])
    alerts = [a for a in _fold(rows) if state == "all" or a.state == state]
    alerts.sort(key=lambda a: a.updated_at, reverse=True)
    alerts = alerts[:limit]
    acks = _acks(request).get([a.id for a in alerts])
    for a in alerts:
        a.acknowledged = acks.get(a.id)
    return Alerts(city=city, state=state, start=t0, end=t1, alerts=alerts)


@router.post("/cities/{city}/alerts/{alert_id}/ack", response_model=Ack, responses=WRITE_ERRORS)
def acknowledge(city: CityPath, alert_id: AlertIdPath, key: Admin, influx: InfluxDep, settings: SettingsDep, request: Request) -> Ack:
    """An official acknowledges an alert (admin key, or an admin key of this city); the first acknowledgement stands."""
    known_city(settings, city)
    _may_see(key, city)
    if not alert_id.startswith(f"{city}."):
        raise HTTPException(404, "no such alert in this city")
    q = queries.alert_exists(city, alert_id)
    found = influx.rows(q.statement, q.params)
    if not found:
        raise HTTPException(404, "no such alert in this city")
    return _acks(request).put(alert_id, city, key)
