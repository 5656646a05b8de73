"""City overview: what a city official reads, one dashboard per pilot city.

Each city's copy has a hidden `city` variable holding its slug, so every
query reads `'$city'`; titles and labels are Thai / English and times are
shown in Asia/Bangkok.
"""

from __future__ import annotations

from contract import storage
from contract.alerts import ALERTS_MEASUREMENT
from contract.catalogue import AIR, DEVICE, NOISE, TRAFFIC, WATER, WEATHER
from contract.cities import City
from dashboards import bands, panels
from dashboards.panels import Json, override, target

RAW, HOURLY, AQI = storage.RP_RAW, storage.RP_HOURLY, storage.AQI_MEASUREMENT
STATUS = storage.STATUS_MEASUREMENT
ALERTS = ALERTS_MEASUREMENT
CITY = "\"city\" = '$city'"
# "current" panels look back this far, whatever the dashboard range
LAST_KNOWN = "time > now() - 30d"
CURRENT_AQI = "time > now() - 6h"


def uid(city: City) -> str:
    return f"nakhon-city-{city.slug.replace('_', '-')}"


def _city_variable(city: City) -> Json:
    return {
        "type": "constant",
        "name": "city",
        "label": "City / เมือง",
        "query": city.slug,
        "current": {"selected": True, "text": city.slug, "value": city.slug},
        "hide": 2,
        "options": [{"selected": True, "text": city.slug, "value": city.slug}],
        "skipUrlSync": False,
    }


def aqi_map(city: City) -> Json:
    return panels.geomap(
        "สถานีวัดคุณภาพอากาศตามระดับ AQI / Air stations by Thai AQI band",
        [
            target("A", f'SELECT last("lat") AS "lat", last("lon") AS "lon" FROM "{RAW}"."{STATUS}" '
                        f'WHERE {CITY} AND {LAST_KNOWN} GROUP BY "device"', "table"),
            target("B", f'SELECT last("band") AS "band", last("aqi") AS "aqi" FROM "{HOURLY}"."{AQI}" '
                        f'WHERE {CITY} AND {CURRENT_AQI} GROUP BY "device"', "table"),
        ],
        description="Each air-quality device at the position it reports in its status, coloured by its latest hourly Thai AQI band "
                    "(PCD colours). Devices without an AQI in the last 6 hours are not drawn.",
        lat=city.lat, lon=city.lon, zoom=11.5,
        color_field="band", lat_field="lat", lon_field="lon",
        thresholds_=bands.band_thresholds(), mappings=bands.band_mappings(),
        transformations=[panels.drop_fields(["Time"]), {"id": "joinByField", "options": {"byField": "device", "mode": "inner"}}],
    )


def current_aqi() -> Json:
    worst = f'FROM "{HOURLY}"."{AQI}" WHERE {CITY} AND {CURRENT_AQI} GROUP BY "device"'
    return panels.stat(
        "ดัชนีคุณภาพอากาศตอนนี้ / Thai AQI now",
        [
            target("A", f'SELECT max("aqi") AS "aqi" FROM (SELECT last("aqi") AS "aqi" {worst})', "table"),
            target("B", f'SELECT max("band") AS "band" FROM (SELECT last("band") AS "band" {worst})', "table"),
        ],
        description="The highest latest-hour Thai AQI among the city's stations (PM2.5/PM10 on 24-hour averages), "
                    "and its band as PCD names and colours it.",
        thresholds_=bands.aqi_thresholds(),
        overrides=[
            override("aqi", displayName="AQI"),
            override("band", displayName="ระดับ / Band", mappings=bands.band_mappings(), thresholds=bands.band_thresholds()),
        ],
        text_mode="value_and_name", no_value="—",
    )


def aqi_history() -> Json:
    return panels.timeseries(
        "AQI รายชั่วโมง / Hourly Thai AQI (worst station)",
        [target("A", f'SELECT max("aqi") AS "aqi" FROM "{HOURLY}"."{AQI}" WHERE {CITY} AND $timeFilter '
                     'GROUP BY time(1h) fill(none)', alias="AQI")],
        description="The highest Thai AQI of any station in each hour; the background shows the PCD bands.",
        thresholds_=bands.aqi_thresholds(), threshold_style="area", minmax=(0, None),
    )


def _pm(metric: str, label: str, avg_field: str, thresholds_: Json, standard: float) -> Json:
    return panels.timeseries(
        f"ฝุ่น {label} / {label} (µg/m³)",
        [
            target("A", f'SELECT mean("{metric}") AS "{metric}" FROM "{RAW}"."{AIR}" WHERE {CITY} AND $timeFilter '
                        'GROUP BY time($__interval) fill(none)', alias=f"{label} (city mean / เฉลี่ยทั้งเมือง)"),
            target("B", f'SELECT mean("{avg_field}") AS "{avg_field}" FROM "{HOURLY}"."{AQI}" WHERE {CITY} AND $timeFilter '
                        'GROUP BY time(1h) fill(none)', alias=f"{label} 24 h average / เฉลี่ย 24 ชม."),
        ],
        description=f"City mean of {label} readings and the 24-hour average the Thai AQI uses. "
                    f"The dashed red line is the Thai 24-hour standard ({standard:g} µg/m³).",
        unit="conµgm3", thresholds_=thresholds_, threshold_style="dashed", minmax=(0, None), legend_calcs=["lastNotNull", "max"],
    )


def pm25() -> Json:
    return _pm("pm25", "PM2.5", "pm25_24h", bands.pm25_thresholds(), bands.PM25_STANDARD_24H)


def pm10() -> Json:
    return _pm("pm10", "PM10", "pm10_24h", bands.pm10_thresholds(), bands.PM10_STANDARD_24H)


def water(city: City) -> Json:
    level = bands.water_level(city.slug)
    return panels.timeseries(
        "ระดับน้ำ / Water level (cm)",
        [target("A", f'SELECT mean("water_level_cm") AS "water_level_cm" FROM "{RAW}"."{WATER}" WHERE {CITY} AND $timeFilter '
                     'GROUP BY time($__interval), "device" fill(none)', alias="$tag_device")],
        description=f"Each water gauge above its datum. Orange dashed line: warning level ({level.warning_cm:g} cm); "
                    f"red: flood level ({level.flood_cm:g} cm).",
        unit="lengthcm", thresholds_=bands.water_thresholds(city.slug), threshold_style="dashed", minmax=(0, None),
        legend_calcs=["lastNotNull", "max"],
    )


def rain() -> Json:
    inner = (f'SELECT sum("rain_mm") AS "rain" FROM "{RAW}"."{WEATHER}" WHERE {CITY} AND $timeFilter '
             'GROUP BY time(1h), "device"')
    return panels.timeseries(
        "ปริมาณฝน / Rain per hour (mm)",
        [target("A", f'SELECT mean("rain") AS "rain_mm" FROM ({inner}) WHERE $timeFilter GROUP BY time(1h) fill(none)',
                alias="Rain / ฝน")],
        description="Rain in each hour, averaged over the city's rain gauges (each gauge's hourly total).",
        unit="lengthmm", draw="bars", minmax=(0, None), legend_calcs=["sum", "max"],
    )


def temperature_humidity() -> Json:
    return panels.timeseries(
        "อุณหภูมิและความชื้น / Temperature and humidity",
        [
            target("A", f'SELECT mean("temp_c") AS "temp_c" FROM "{RAW}"."{WEATHER}" WHERE {CITY} AND $timeFilter '
                        'GROUP BY time($__interval) fill(none)', alias="Temperature / อุณหภูมิ"),
            target("B", f'SELECT mean("rh") AS "rh" FROM "{RAW}"."{WEATHER}" WHERE {CITY} AND $timeFilter '
                        'GROUP BY time($__interval) fill(none)', alias="Humidity / ความชื้น"),
        ],
        description="City means of air temperature (left axis, °C) and relative humidity (right axis, %).",
        unit="celsius",
        overrides=[override("Humidity / ความชื้น", unit="percent", custom__axisPlacement="right", min=0, max=100)],
        legend_calcs=["lastNotNull", "min", "max"],
    )


def noise() -> Json:
    return panels.timeseries(
        "ระดับเสียง / Noise level, LAeq (dB(A))",
        [target("A", f'SELECT mean("laeq_db") AS "laeq_db" FROM "{RAW}"."{NOISE}" WHERE {CITY} AND $timeFilter '
                     'GROUP BY time($__interval), "device" fill(none)', alias="$tag_device")],
        description=f"A-weighted equivalent sound level at each noise station. The dashed line is the Thai 24-hour "
                    f"average standard ({bands.NOISE_STANDARD_24H_DBA:g} dB(A)).",
        unit="dB", thresholds_=bands.noise_thresholds(), threshold_style="dashed", legend_calcs=["mean", "max"],
    )


def traffic() -> Json:
    return panels.timeseries(
        "ปริมาณรถ / Vehicles per hour",
        [target("A", f'SELECT sum("vehicle_count") AS "vehicles" FROM "{RAW}"."{TRAFFIC}" WHERE {CITY} AND $timeFilter '
                     'GROUP BY time(1h) fill(none)', alias="Vehicles / คัน")],
        description="Vehicles counted by all of the city's counters in each hour.",
        unit="short", draw="bars", minmax=(0, None), legend_calcs=["sum", "max"],
    )


def _device_completeness() -> str:
    # readings received vs expected: a device's seq counts up by one per reading
    return (f'SELECT count("seq") * 100 / (spread("seq") + 1) AS "completeness" FROM "{RAW}"."{DEVICE}" '
            f'WHERE {CITY} AND $timeFilter GROUP BY "device"')


def completeness() -> Json:
    return panels.stat(
        "ความครบถ้วนของข้อมูล / Data completeness",
        [target("A", f'SELECT mean("completeness") AS "completeness" FROM ({_device_completeness()})', "table")],
        description="Readings received as a share of those expected (from each device's sequence numbers) over the "
                    "dashboard's time range, averaged over the city's devices.",
        unit="percent", thresholds_=panels.thresholds("red", (90, "orange"), (98, "green")), no_value="—",
    )


def devices_reporting() -> Json:
    return panels.stat(
        "อุปกรณ์ที่ส่งข้อมูล (15 นาที) / Devices reporting (15 min)",
        [target("A", f'SELECT count("seq") AS "devices" FROM (SELECT last("seq") AS "seq" FROM "{RAW}"."{DEVICE}" '
                     f'WHERE {CITY} AND time > now() - 15m GROUP BY "device")', "table")],
        description="Devices with at least one reading in the last 15 minutes.",
        thresholds_=panels.thresholds("blue"), color_mode="value", no_value="0",
    )


def newest_reading() -> Json:
    panel = panels.stat(
        "ข้อมูลล่าสุดเมื่อ / Newest reading",
        [target("A", f'SELECT last("seq") AS "last_seq" FROM "{RAW}"."{DEVICE}" WHERE {CITY} AND {LAST_KNOWN}', "table")],
        description="How long ago the newest reading of any device in the city was taken: the city's staleness.",
        unit="dateTimeFromNow", thresholds_=panels.thresholds("blue"), color_mode="value", no_value="—",
    )
    panel["options"]["reduceOptions"]["fields"] = "/^Time$/"  # show the reading's time, not its value
    return panel


def devices_offline() -> Json:
    return panels.stat(
        "อุปกรณ์ออฟไลน์ / Devices offline",
        [target("A", f'SELECT count("state") AS "offline" FROM (SELECT last("state") AS "state" FROM "{RAW}"."{STATUS}" '
                     f"WHERE {CITY} AND {LAST_KNOWN} GROUP BY \"device\") WHERE \"state\" = 'offline'", "table")],
        description="Devices whose latest status is offline (their broker connection was lost).",
        thresholds_=panels.thresholds("green", (1, "red")), no_value="0",
    )


def device_table() -> Json:
    return panels.table(
        "อุปกรณ์ / Devices: last seen, staleness, completeness",
        [
            target("A", f'SELECT last("seq") AS "last_seq" FROM "{RAW}"."{DEVICE}" WHERE {CITY} AND {LAST_KNOWN} '
                        'GROUP BY "device"', "table"),
            target("B", _device_completeness(), "table"),
            target("C", f'SELECT last("state") AS "state" FROM "{RAW}"."{STATUS}" WHERE {CITY} AND {LAST_KNOWN} '
                        'GROUP BY "device"', "table"),
        ],
        description="One row per device: when its latest reading was taken (Bangkok time), how long ago that is, the share "
                    "of expected readings received in the dashboard's range, and its connection state.",
        transformations=[
            panels.time_copy("staleness", ref="A"),
            # only A's Time is the last reading; drop the others before joining so one "Time" column remains
            panels.drop_fields(["Time"], ref="B"),
            panels.drop_fields(["Time"], ref="C"),
            {"id": "joinByField", "options": {"byField": "device", "mode": "outer"}},
            {"id": "organize", "options": {
                "excludeByName": {"last_seq": True},
                "indexByName": {"device": 0, "state": 1, "Time": 2, "staleness": 3, "completeness": 4},
                "renameByName": {},
            }},
        ],
        overrides=[
            override("device", displayName="อุปกรณ์ / Device"),
            override("Time", displayName="เห็นล่าสุด / Last seen", unit="dateTimeAsIso"),
            override("staleness", displayName="ขาดข้อมูลมา / Staleness", unit="dateTimeFromNow"),
            override("completeness", displayName="ครบถ้วน / Completeness", unit="percent", decimals=1,
                     thresholds=panels.thresholds("red", (90, "orange"), (98, "green")),
                     custom__cellOptions={"type": "color-text"}),
            override("state", displayName="สถานะ / State",
                     mappings=[panels.value_mapping({"online": ("ออนไลน์ / online", "green"),
                                                     "offline": ("ออฟไลน์ / offline", "red")})],
                     custom__cellOptions={"type": "color-text"}),
        ],
        sort_by="ขาดข้อมูลมา / Staleness",
    )


def alerts_list() -> Json:
    return panels.table(
        "การแจ้งเตือน / Alerts",
        [target("A", f'SELECT "device", "rule", "event", "severity", "value", "threshold", "unit", "message_th", "message_en" '
                     f'FROM "{RAW}"."{ALERTS}" WHERE {CITY} AND $timeFilter ORDER BY time DESC LIMIT 200', "table")],
        description="Every alert event of the city in the range, newest first: opened, updated, closed, and past (a condition "
                    "found in data a station replayed late: history, never announced). `_city` is the city as a whole. "
                    "Open alerts and acknowledgements: GET /v1/cities/{city}/alerts.",
        overrides=[
            override("Time", displayName="เวลา / Time", unit="dateTimeAsIso"),
            override("device", displayName="สถานี / Station"),
            override("rule", displayName="กฎ / Rule"),
            override("event", displayName="เหตุการณ์ / Event", custom__cellOptions={"type": "color-text"},
                     mappings=[panels.value_mapping({"opened": ("เริ่ม / opened", "red"), "updated": ("ต่อเนื่อง / updated", "orange"),
                                                     "closed": ("สิ้นสุด / closed", "green"), "past": ("ย้อนหลัง / past", "blue")})]),
            override("severity", displayName="ระดับ / Severity", custom__cellOptions={"type": "color-text"},
                     mappings=[panels.value_mapping({"critical": ("วิกฤต / critical", "red"), "warning": ("เตือนภัย / warning", "orange"),
                                                     "info": ("แจ้งเตือน / notice", "yellow")})]),
            override("message_th", displayName="ข้อความ / Message (TH)"),
            override("message_en", displayName="Message (EN)"),
        ],
    )


def _alert_query(rules: str) -> str:
    """Alert events of the city whose rule matches, as annotation markers: openings, closings and past alerts (found in a
    replay), not every update."""
    return (f'SELECT "message_en", "message_th", "rule", "event", "device" FROM "{RAW}"."{ALERTS}" WHERE {CITY} '
            f'AND "rule" =~ /^({rules})/ AND "event" != \'updated\' AND $timeFilter')


def alert_annotations(panel_list: list[Json]) -> list[Json]:
    """Alert markers on the PM2.5 and AQI panels (air rules) and on the water panel (water rules)."""
    air = panels.ids_of(panel_list, aqi_history()["title"], pm25()["title"])
    wet = panels.ids_of(panel_list, "ระดับน้ำ / Water level (cm)")
    return [
        panels.influx_annotation("แจ้งเตือนคุณภาพอากาศ / Air alerts", _alert_query("aqi_|pm25_"), "orange", air,
                                 "message_en", "message_th", "rule,event,device"),
        panels.influx_annotation("แจ้งเตือนระดับน้ำ / Water alerts", _alert_query("water_"), "blue", wet,
                                 "message_en", "message_th", "rule,event,device"),
    ]


def build(city: City) -> Json:
    panel_list = panels.layout([
        (panels.row("คุณภาพอากาศ / Air quality"), 24, 1),
        (aqi_map(city), 14, 11),
        (current_aqi(), 10, 11),
        (aqi_history(), 24, 7),
        (pm25(), 12, 8),
        (pm10(), 12, 8),
        (panels.row("น้ำ อากาศ เสียง / Water, weather, noise"), 24, 1),
        (water(city), 12, 8),
        (rain(), 12, 8),
        (temperature_humidity(), 12, 8),
        (noise(), 12, 8),
        (traffic(), 24, 7),
        (panels.row("อุปกรณ์ / Devices"), 24, 1),
        (completeness(), 6, 4),
        (newest_reading(), 6, 4),
        (devices_reporting(), 6, 4),
        (devices_offline(), 6, 4),
        (device_table(), 24, 10),
        (panels.row("การแจ้งเตือน / Alerts"), 24, 1),
        (alerts_list(), 24, 9),
    ])
    return panels.dashboard(
        uid(city),
        f"{city.name_th} · {city.name_en} — ภาพรวมเมือง / City overview",
        f"Air quality (Thai AQI), water, weather, noise and device health for {city.name_en} ({city.name_th}).",
        ["city", city.slug],
        panel_list,
        [_city_variable(city)],
        links=panels.dashboard_links(),
        annotations=alert_annotations(panel_list),
    )
