"""Fleet health: which devices are offline and since when, batteries, radio,
firmware, reset causes, readings held or lost on devices, sensor faults.

A multi-select `city` variable (All by default) filters every query with
`"city" =~ /^$city$/`.
"""

from __future__ import annotations

from contract import storage
from contract.catalogue import DEVICE
from contract.cities import City
from dashboards import panels
from dashboards.panels import Json, override, target

UID = "nakhon-fleet-health"
RAW = storage.RP_RAW
STATUS = storage.STATUS_MEASUREMENT
CITY = '"city" =~ /^$city$/'
LAST_KNOWN = "time > now() - 30d"


def _last_status(*fields: str) -> str:
    """Each device's latest value of status `fields` (a subquery)."""
    cols = ", ".join(f'last("{f}") AS "{f}"' for f in fields)
    return f'SELECT {cols} FROM "{RAW}"."{STATUS}" WHERE {CITY} AND {LAST_KNOWN} GROUP BY "city", "device"'


def _city_variable(cities: list[City]) -> Json:
    slugs = [c.slug for c in cities]
    return {
        "type": "custom",
        "name": "city",
        "label": "City / เมือง",
        "query": ",".join(slugs),
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [{"selected": True, "text": "All", "value": "$__all"}]
        + [{"selected": False, "text": s, "value": s} for s in slugs],
        "hide": 0,
    }


def offline_count() -> Json:
    return panels.stat(
        "ออฟไลน์ตอนนี้ / Offline now",
        [target("A", f"SELECT count(\"state\") AS \"offline\" FROM ({_last_status('state')}) WHERE \"state\" = 'offline'", "table")],
        description="Devices whose latest status document is `offline` (the broker published their Last Will).",
        thresholds_=panels.thresholds("green", (1, "red")), no_value="0",
    )


def offline_table() -> Json:
    return panels.table(
        "อุปกรณ์ออฟไลน์ ตั้งแต่ / Offline devices, since",
        [target("A", f"SELECT \"state\" AS \"state\" FROM ({_last_status('state')}) WHERE \"state\" = 'offline' "
                     'GROUP BY "city", "device"', "table")],
        description="Each offline device and the time (Bangkok) its offline status arrived; the last column says how long ago.",
        transformations=[panels.time_copy("offline_for")],
        overrides=[
            override("Time", displayName="ออฟไลน์ตั้งแต่ / Offline since", unit="dateTimeAsIso"),
            override("offline_for", displayName="นานเท่าไร / For", unit="dateTimeFromNow"),
            override("state", displayName="สถานะ / State"),
        ],
        sort_by="ออฟไลน์ตั้งแต่ / Offline since",
    )


def battery() -> Json:
    return panels.timeseries(
        "แบตเตอรี่ / Battery (V)",
        [target("A", f'SELECT min("battery_v") AS "min", mean("battery_v") AS "mean" FROM "{RAW}"."{DEVICE}" '
                     f'WHERE {CITY} AND $timeFilter GROUP BY time($__interval), "city" fill(none)', alias="$tag_city $col")],
        description="Lowest and mean battery voltage reported with readings, per city.",
        unit="volt", legend_calcs=["lastNotNull", "min"],
    )


def battery_lowest() -> Json:
    return panels.bargauge(
        "แบตเตอรี่ต่ำสุด 10 เครื่อง / 10 lowest batteries",
        [target("A", f'SELECT bottom("battery_v", "device", 10) AS "battery_v" FROM (SELECT last("battery_v") AS "battery_v" '
                     f'FROM "{RAW}"."{DEVICE}" WHERE {CITY} AND {LAST_KNOWN} GROUP BY "device")', "table")],
        description="The ten devices with the lowest latest battery voltage.",
        unit="volt", thresholds_=panels.thresholds("red", (3.4, "orange"), (3.6, "green")), minmax=(3.0, 4.3),
    )


def rssi() -> Json:
    return panels.timeseries(
        "สัญญาณ Wi-Fi / Wi-Fi signal, RSSI (dBm)",
        [target("A", f'SELECT min("rssi_dbm") AS "min", mean("rssi_dbm") AS "mean" FROM "{RAW}"."{DEVICE}" '
                     f'WHERE {CITY} AND $timeFilter GROUP BY time($__interval), "city" fill(none)', alias="$tag_city $col")],
        description="Weakest and mean Wi-Fi signal reported with readings, per city. Below -80 dBm links drop.",
        unit="dBm", thresholds_=panels.thresholds("red", (-80, "orange"), (-70, "green")), threshold_style="dashed",
    )


def rssi_weakest() -> Json:
    return panels.bargauge(
        "สัญญาณอ่อนสุด 10 เครื่อง / 10 weakest signals",
        [target("A", f'SELECT bottom("rssi_dbm", "device", 10) AS "rssi_dbm" FROM (SELECT last("rssi_dbm") AS "rssi_dbm" '
                     f'FROM "{RAW}"."{DEVICE}" WHERE {CITY} AND {LAST_KNOWN} GROUP BY "device")', "table")],
        description="The ten devices with the weakest latest Wi-Fi signal.",
        unit="dBm", thresholds_=panels.thresholds("red", (-80, "orange"), (-70, "green")), minmax=(-100, -30),
    )


def _count_by(field: str) -> list[Json]:
    return [{"id": "groupBy", "options": {"fields": {
        field: {"aggregations": [], "operation": "groupby"},
        "device": {"aggregations": ["count"], "operation": "aggregate"},
    }}}]


def firmware() -> Json:
    return panels.piechart(
        "เวอร์ชันเฟิร์มแวร์ / Firmware versions",
        [target("A", f"SELECT \"fw\" AS \"fw\" FROM ({_last_status('fw')}) GROUP BY \"device\"", "table")],
        description="How many devices run each firmware version (from their latest status).",
        transformations=_count_by("fw"),
    )


def reset_causes() -> Json:
    return panels.piechart(
        "สาเหตุการรีเซ็ต / Reset causes",
        [target("A", f'SELECT "reset" AS "reset" FROM "{RAW}"."{STATUS}" WHERE {CITY} AND $timeFilter GROUP BY "device"', "table")],
        description="Why devices restarted in the dashboard's range (one count per online status document): "
                    "watchdog and brownout deserve a visit.",
        transformations=_count_by("reset"),
    )


def buffered_dropped() -> Json:
    sub = _last_status("buffered", "dropped")
    return panels.stat(
        "ข้อมูลค้าง/สูญหายในอุปกรณ์ / Readings buffered and dropped on devices",
        [target("A", f'SELECT sum("buffered") AS "buffered", sum("dropped") AS "dropped" FROM ({sub})', "table")],
        description="Readings devices hold in their flash ring waiting to be sent, and readings they dropped from a full ring "
                    "(sum of each device's latest status).",
        overrides=[
            override("buffered", displayName="ค้างส่ง / Buffered", thresholds=panels.thresholds("green", (1000, "orange"))),
            override("dropped", displayName="สูญหาย / Dropped", thresholds=panels.thresholds("green", (1, "red"))),
        ],
        text_mode="value_and_name", no_value="0",
    )


def buffered_table() -> Json:
    sub = _last_status("buffered", "dropped")
    return panels.table(
        "อุปกรณ์ที่มีข้อมูลค้าง / Devices holding or losing readings",
        [target("A", f'SELECT "buffered" AS "buffered", "dropped" AS "dropped" FROM ({sub}) '
                     'WHERE "buffered" > 0 OR "dropped" > 0 GROUP BY "city", "device"', "table")],
        description="Devices whose latest status reports buffered or dropped readings.",
        transformations=[panels.drop_fields(["Time"])],
        overrides=[override("dropped", custom__cellOptions={"type": "color-text"}, thresholds=panels.thresholds("green", (1, "red")))],
        sort_by="buffered", desc=True,
    )


def faults() -> Json:
    sub = _last_status("faults", "fault_count")
    return panels.table(
        "เซ็นเซอร์ผิดปกติ / Sensor faults",
        [target("A", f'SELECT "faults" AS "faults", "fault_count" AS "fault_count" FROM ({sub}) '
                     'WHERE "fault_count" > 0 GROUP BY "city", "device"', "table")],
        description="Devices whose latest status lists sensor faults (`sensor:problem`, e.g. pm:timeout).",
        transformations=[panels.drop_fields(["Time"])],
        overrides=[override("faults", displayName="ข้อผิดพลาด / Faults"), override("fault_count", displayName="จำนวน / Count")],
        sort_by="จำนวน / Count", desc=True,
    )


def build(cities: list[City]) -> Json:
    panel_list = panels.layout([
        (panels.row("การเชื่อมต่อ / Connectivity"), 24, 1),
        (offline_count(), 6, 8),
        (offline_table(), 18, 8),
        (panels.row("พลังงานและสัญญาณ / Power and radio"), 24, 1),
        (battery(), 14, 8),
        (battery_lowest(), 10, 8),
        (rssi(), 14, 8),
        (rssi_weakest(), 10, 8),
        (panels.row("เฟิร์มแวร์และความผิดปกติ / Firmware and faults"), 24, 1),
        (firmware(), 8, 8),
        (reset_causes(), 8, 8),
        (buffered_dropped(), 8, 8),
        (buffered_table(), 12, 8),
        (faults(), 12, 8),
    ])
    return panels.dashboard(
        UID, "สุขภาพอุปกรณ์ / Fleet health",
        "Device connectivity, power, radio, firmware, resets, on-device buffering and sensor faults across the pilot cities.",
        ["fleet"], panel_list, [_city_variable(cities)], links=panels.dashboard_links(),
    )
