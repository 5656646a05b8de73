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


# a storm notification (alerts.storm): what its groups' stations did, per kind of event
_DID_EN = {"opened": "entered", "updated": "worsened further in", "closed": "left"}
_DID_TH = {"opened": "เข้าสู่", "updated": "รุนแรงขึ้นใน", "closed": "พ้นจาก"}


def storm_messages(doc: dict[str, Any], cities: dict[str, City]) -> tuple[str, str]:
    """(English, Thai) text of a storm notification (alerts.storm.Grouper.tick): one line per group, most severe first."""
    city = cities.get(doc["city"])
    name_en = city.name_en if city else doc["city"]
    name_th = city.name_th if city else doc["city"]
    lines_en, lines_th = [], []
    for g in doc["groups"]:
        _sev, rule_en, rule_th = RULES[g["rule"]]
        n = g["n"]
        if g["subject"] == "city":
            who_en, who_th = "the city as a whole", "ค่าเฉลี่ยทั้งเมือง"
        else:
            who_en, who_th = f"{n} station{'s' if n != 1 else ''}", f"{n} สถานี"
        named = g["subject"] != "city" and not any(x["subject"] != "city" for x in doc["groups"][: doc["groups"].index(g)])
        names = ", ".join(g["devices"]) + (", ..." if n > len(g["devices"]) else "") if named else ""  # in the most severe group only
        lines_en.append(f"{who_en} {_DID_EN[g['event']]} {rule_en}" + (f" ({names})" if names else ""))
        lines_th.append(f"{who_th}{_DID_TH[g['event']]} {rule_th}" + (f" ({names})" if names else ""))
    since = _hhmm(doc["since_ms"])
    sev = doc["severity"]
    if doc["over"]:
        head_en, head_th = f"alert storm over (since {since} Bangkok time)", f"สิ้นสุดช่วงแจ้งเตือนพร้อมกันจำนวนมาก (ตั้งแต่ {since} น.)"
    else:
        head_en, head_th = f"alert storm since {since} Bangkok time", f"แจ้งเตือนพร้อมกันจำนวนมาก ตั้งแต่ {since} น."
    tail_en = f"{doc['events']} alert events in this message; each is in the API and on the city dashboard."
    tail_th = f"รวม {doc['events']} รายการในข้อความนี้ ดูแต่ละรายการได้ใน API และแดชบอร์ดของเมือง"
    if doc.get("sent_before"):
        tail_en += f" {doc['sent_before']} of them went out one by one before the storm was recognised."
        tail_th += f" ({doc['sent_before']} รายการแรกส่งแยกไปแล้วก่อนเริ่มรวมข้อความ)"
    en = f"[{_SEV_EN[sev]}] {name_en}: {head_en}: " + "; ".join(lines_en) + ". " + tail_en
    th = f"[{_SEV_TH[sev]}] {name_th}: {head_th}: " + "; ".join(lines_th) + " " + tail_th
    return en, th


def storm_body(doc: dict[str, Any], cities: dict[str, City]) -> dict[str, Any]:
    """A storm notification for the webhooks: `text` for a chat service, `storm` for programs (no `event` key)."""
    en, th = storm_messages(doc, cities)
    return {"text": f"{th}\n{en}", "storm": {**doc, "message_en": en, "message_th": th}}
