"""The one Grafana datasource every panel uses: InfluxDB 1.x over InfluxQL.

Its UID is fixed so dashboards, provisioning and `nakhon dashboards push`
all point at the same thing. Panels refer to it through the `datasource`
dashboard variable, whose value is this UID.
"""

from __future__ import annotations

from typing import Any, Final

from contract import storage

UID: Final = "nakhon-influxdb"
NAME: Final = "Nakhon InfluxDB"
TYPE: Final = "influxdb"
VARIABLE: Final = "datasource"
# What a panel or target carries: the dashboard variable that resolves to UID.
REF: Final = {"type": TYPE, "uid": "${" + VARIABLE + "}"}
# The URL Grafana reaches InfluxDB at inside docker-compose (service `influxdb`).
COMPOSE_URL: Final = "http://influxdb:8086"


def settings(url: str = COMPOSE_URL, database: str = storage.DATABASE, user: str | None = None) -> dict[str, Any]:
    """The datasource as Grafana's HTTP API and provisioning both describe it."""
    ds: dict[str, Any] = {
        "name": NAME,
        "uid": UID,
        "type": TYPE,
        "access": "proxy",
        "url": url,
        "isDefault": True,
        "jsonData": {
            "dbName": database,
            "httpMode": "GET",
            "version": "InfluxQL",
            # the ingest writes its own stats every 10 s by default; no panel should ask finer
            "timeInterval": "10s",
        },
    }
    if user:
        ds["user"] = user
    return ds


def provisioning(url: str = COMPOSE_URL, database: str = storage.DATABASE) -> dict[str, Any]:
    """The datasources provisioning file (Grafana reads it at start-up)."""
    ds = settings(url, database)
    ds["editable"] = False
    ds["orgId"] = 1
    # credentials, when InfluxDB has auth on, come from Grafana's environment, never from this file
    ds["user"] = "$NAKHON_INFLUX_USERNAME"
    ds["secureJsonData"] = {"password": "$NAKHON_INFLUX_PASSWORD"}
    return {"apiVersion": 1, "datasources": [ds]}
