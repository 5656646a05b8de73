"""What an event says to people, in Thai and English, and the documents built from it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from contract.alerts import CITY_SUBJECT, RULES
from contract.cities import City

BANGKOK = timezone(timedelta(hours=7), "ICT")

_WHAT_EN = {"opened": "", "updated": "still", "closed": "ended:", "past": "in the replayed past:"}
_WHAT_TH = {"opened": "", "updated": "ยังคง", "closed": "สิ้นสุดแล้ว:", "past": "ย้อนหลัง:"}
_SEV_EN = {"info": "NOTICE", "warning": "WARNING", "critical": "CRITICAL"}
_SEV_TH = {"info": "แจ้งเตือน", "warning": "เตือนภัย", "critical": "วิกฤต"}


def _hhmm(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(BANGKOK).strftime("%d/%m %H:%M")


def _num(v: float) -> str:
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"


def messages(ev: dict[str, Any], cities: dict[str, City]) -> tuple[str, str]:
    """(English, Thai) one-line messages for an event document (alerts.core.Event.doc())."""
    city = cities.get(ev["city"])
    name_en = city.name_en if city else ev["city"]
    name_th = city.name_th if city else ev["city"]
    where_en = name_en if ev["device"] == CITY_SUBJECT else f"{name_en} {ev['device']}"
    where_th = name_th if ev["device"] == CITY_SUBJECT else f"{name_th} {ev['device']}"
    sev, rule_en, rule_th = RULES[ev["rule"]]
    unit = ev["unit"]
    value = f"{_num(ev['value'])} {unit}" if unit != "AQI" else f"AQI {_num(ev['value'])}"
    threshold = f"{_num(ev['threshold'])} {unit}" if unit != "AQI" else f"AQI {_num(ev['threshold'])}"
    since = _hhmm(ev["since_ms"])
    en = f"[{_SEV_EN[sev]}] {where_en}: {_WHAT_EN[ev['event']]} {rule_en} - {value} (threshold {threshold}), since {since} Bangkok time".replace(": ", ": ", 1)
    th = f"[{_SEV_TH[sev]}] {where_th}: {_WHAT_TH[ev['event']]} {rule_th} - {value} (เกณฑ์ {threshold}) ตั้งแต่ {since} น."
    return " ".join(en.split()), " ".join(th.split())


def webhook_body(ev: dict[str, Any], cities: dict[str, City]) -> dict[str, Any]:
    """A body a chat service's incoming webhook takes (`text`), with the whole event beside it for programs."""
    en, th = messages(ev, cities)
    return {"text": f"{th}\n{en}", "event": {**ev, "message_en": en, "message_th": th}}
