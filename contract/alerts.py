"""The alert contract: what an alert event is, where it travels and how it is stored.

Events are published on `nakhon/v1/{city}/alerts` (QoS 1), stored in InfluxDB
(`raw.alerts`, one point per event, tags city / device / rule) and served by the
API. An alert is one episode of one rule on one subject (a station, or a whole
city for the city AQI): it is `opened` once, `updated` while it worsens and
`closed` when the condition has passed. A condition that began and ended
inside data that arrived late (a device replaying its buffer) is stored as one
`past` event: history, never a notification.
"""

from __future__ import annotations

from typing import Final, Literal

from contract.cities import CITY_SLUG_PATTERN
from contract.topics import PREFIX

ALERTS_MEASUREMENT: Final = "alerts"
CITY_SUBJECT: Final = "_city"  # the `device` tag of a city-wide alert (outside the device-id alphabet)

EventKind = Literal["opened", "updated", "closed", "past"]
EVENT_KINDS: Final = ("opened", "updated", "closed", "past")
Severity = Literal["info", "warning", "critical"]

# rule -> (severity, English name, Thai name). The `rule` tag of the stored events (low cardinality).
RULES: Final[dict[str, tuple[Severity, str, str]]] = {
    "aqi_yellow": ("info", "AQI moderate (yellow) or worse", "AQI ปานกลาง (เหลือง) ขึ้นไป"),
    "aqi_orange": ("warning", "AQI starting to affect health (orange) or worse", "AQI เริ่มมีผลกระทบต่อสุขภาพ (ส้ม) ขึ้นไป"),
    "aqi_red": ("critical", "AQI affects health (red)", "AQI มีผลกระทบต่อสุขภาพ (แดง)"),
    "pm25_24h": ("warning", "PM2.5 24-hour mean above the Thai standard", "PM2.5 เฉลี่ย 24 ชั่วโมงเกินมาตรฐาน"),
    "water_warning": ("warning", "Water at warning level", "ระดับน้ำถึงระดับเฝ้าระวัง"),
    "water_flood": ("critical", "Water at flood level", "ระดับน้ำถึงระดับน้ำท่วม"),
    "rain_heavy": ("warning", "Heavy rain", "ฝนตกหนัก"),
    "rain_very_heavy": ("critical", "Very heavy rain", "ฝนตกหนักมาก"),
    "silent": ("warning", "Station silent", "สถานีไม่ส่งข้อมูล"),
}


def alerts_topic(city: str) -> str:
    import re

    if re.fullmatch(CITY_SLUG_PATTERN, city) is None:
        raise ValueError(f"bad city slug {city!r}")
    return f"{PREFIX}/{city}/alerts"


ALERTS_FILTER: Final = f"{PREFIX}/+/alerts"
