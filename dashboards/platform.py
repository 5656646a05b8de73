"""Platform health: the ingest's own counters (measurement `ingest_stats`,
one series per worker, written every NAKHON_INGEST_STATS_INTERVAL_S).

Counters only grow while a worker runs and restart at zero with it, so
rates use non_negative_derivative (a restart is not a negative rate).
"""

from __future__ import annotations

from contract import storage
from dashboards import panels
from dashboards.panels import Json, target

UID = "nakhon-platform-health"
STATS = f'"{storage.RP_RAW}"."{storage.INGEST_MEASUREMENT}"'
WINDOW = "WHERE $timeFilter GROUP BY time($__interval), \"worker\" fill(none)"
MIN_INTERVAL = "10s"  # the ingest's default stats interval


def _rate(field: str, alias: str) -> str:
    return f'SELECT non_negative_derivative(max("{field}"), 1s) AS "{alias}" FROM {STATS} {WINDOW}'


def throughput() -> Json:
    return panels.timeseries(
        "ข้อความต่อวินาที / Ingest: received, written, rejected per second",
        [
            target("A", _rate("received", "received"), alias="received $tag_worker"),
            target("B", _rate("points_written", "written"), alias="points written $tag_worker"),
            target("C", _rate("messages_rejected", "rejected"), alias="rejected $tag_worker"),
        ],
        description="MQTT messages received, InfluxDB points written and messages rejected, per second and worker.",
        unit="reqps", interval=MIN_INTERVAL, legend_calcs=["mean", "max"],
    )


def rejects_by_reason() -> Json:
    return panels.timeseries(
        "ถูกปฏิเสธตามสาเหตุ / Rejects by reason per second",
        [target("A", f'SELECT non_negative_derivative(max(/^rejected_/), 1s) FROM {STATS} {WINDOW}', alias="$col $tag_worker")],
        description="Rejected messages per second by reason code (bad_json, out_of_range, ...). Every reject is kept in the "
                    "dead-letter store: `nakhon deadletter --summary`.",
        unit="reqps", interval=MIN_INTERVAL, draw="bars", stack=True, legend_calcs=["sum"],
    )


def spool_depth() -> Json:
    return panels.timeseries(
        "คิวสำรองบนดิสก์ / Spool depth (points waiting for InfluxDB)",
        [target("A", f'SELECT max("spool_depth") AS "spool_depth" FROM {STATS} {WINDOW}', alias="$tag_worker")],
        description="Points kept on the ingest's disk spool while InfluxDB was unavailable; they are replayed in order.",
        unit="short", interval=MIN_INTERVAL, thresholds_=panels.thresholds("green", (1, "orange")), threshold_style="dashed",
    )


def write_latency() -> Json:
    return panels.timeseries(
        "เวลาเขียนข้อมูล / InfluxDB write latency",
        [target("A", f'SELECT max("write_ms_p50") AS "p50", max("write_ms_p99") AS "p99" FROM {STATS} {WINDOW}',
                alias="$col $tag_worker")],
        description="Median and 99th-percentile time of a batch write to InfluxDB in each stats interval.",
        unit="ms", interval=MIN_INTERVAL, legend_calcs=["mean", "max"],
    )


def broker_drops() -> Json:
    return panels.timeseries(
        "ข้อความที่โบรกเกอร์ทิ้ง / Broker queue drops",
        [
            target("A", f'SELECT max("broker_dropped") AS "broker_dropped" FROM {STATS} {WINDOW}', alias="dropped total $tag_worker"),
            target("B", _rate("influx_errors", "influx_errors"), alias="InfluxDB errors/s $tag_worker"),
        ],
        description="Messages the broker reports it dropped for the ingest's session (as far as the ingest can see), and "
                    "InfluxDB write errors per second. Both should stay at zero.",
        unit="short", interval=MIN_INTERVAL, thresholds_=panels.thresholds("green", (1, "red")), threshold_style="dashed",
    )


def totals() -> Json:
    return panels.stat(
        "รวม (ช่วงเวลา) / Totals in range",
        [target("A", f'SELECT sum("received") AS "received", sum("written") AS "written", sum("rejected") AS "rejected" FROM '
                     f'(SELECT spread("received") AS "received", spread("points_written") AS "written", '
                     f'spread("messages_rejected") AS "rejected" FROM {STATS} WHERE $timeFilter GROUP BY "worker")', "table")],
        description="Messages received, points written and messages rejected over the dashboard's range, all workers.",
        thresholds_=panels.thresholds("blue"), color_mode="value", text_mode="value_and_name",
    )


def build() -> Json:
    panel_list = panels.layout([
        (totals(), 24, 4),
        (throughput(), 12, 9),
        (rejects_by_reason(), 12, 9),
        (spool_depth(), 8, 8),
        (write_latency(), 8, 8),
        (broker_drops(), 8, 8),
    ])
    return panels.dashboard(
        UID, "สุขภาพระบบ / Platform health",
        "The ingest service: throughput, rejects by reason, disk spool, InfluxDB write latency and broker drops.",
        ["platform"], panel_list, [], time_from="now-1h", refresh="30s", links=panels.dashboard_links(),
    )
