"""What an alert says: Thai and English, Bangkok time, a body a chat webhook takes."""

from __future__ import annotations

import pytest

from alerts.text import messages, webhook_body
from contract.cities import load_cities

pytestmark = pytest.mark.unit

EVENT = {"id": "phuket.pk-water-001.water_flood.1764000000000.0", "alert_id": "phuket.pk-water-001.water_flood.1764000000000",
         "event": "opened", "city": "phuket", "device": "pk-water-001", "rule": "water_flood", "severity": "critical",
         "at_ms": 1764000000000, "opened_ms": 1764000000000, "since_ms": 1764000000000, "value": 262.5, "peak": 262.5,
         "threshold": 250.0, "unit": "cm", "late": False, "closed_ms": None, "rules_version": "t"}


def test_messages_in_thai_and_english_in_bangkok_time() -> None:
    en, th = messages(EVENT, load_cities())
    # 1764000000 is 2025-11-24 16:00 UTC, 23:00 in Bangkok
    assert en == "[CRITICAL] Phuket pk-water-001: Water at flood level - 262.5 cm (threshold 250 cm), since 24/11 23:00 Bangkok time"
    assert th == "[วิกฤต] ภูเก็ต pk-water-001: ระดับน้ำถึงระดับน้ำท่วม - 262.5 cm (เกณฑ์ 250 cm) ตั้งแต่ 24/11 23:00 น."


def test_closing_and_city_wide_aqi() -> None:
    ev = {**EVENT, "event": "closed", "rule": "aqi_orange", "severity": "warning", "device": "_city", "city": "chiang_mai",
          "unit": "AQI", "value": 95.0, "threshold": 101.0}
    en, th = messages(ev, load_cities())
    assert en.startswith("[WARNING] Chiang Mai: ended: AQI starting to affect health") and "AQI 95 (threshold AQI 101)" in en
    assert th.startswith("[เตือนภัย] เชียงใหม่: สิ้นสุดแล้ว:")


def test_webhook_body_has_chat_text_and_the_event() -> None:
    body = webhook_body(EVENT, load_cities())
    assert body["text"].split("\n")[0].startswith("[วิกฤต]") and body["text"].split("\n")[1].startswith("[CRITICAL]")
    assert body["event"]["id"] == EVENT["id"] and body["event"]["message_en"].startswith("[CRITICAL]")
