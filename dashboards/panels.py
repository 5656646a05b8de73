"""Builders for the pieces of a Grafana dashboard (schema version 39+ JSON).

Each function returns plain dicts shaped as Grafana's published schema
(`@grafana/schema`, checked by `dashboards.schema_check`). Every query is
raw InfluxQL against the one datasource; identifiers in queries come from
the contract, values from dashboard variables.
"""

from __future__ import annotations

from typing import Any

from dashboards import datasource

Json = dict[str, Any]
GRAFANA_VERSION = "13.2.3"  # the Grafana release (docker-compose image, @grafana/schema) the option shapes follow


def target(ref: str, query: str, fmt: str = "time_series", alias: str | None = None) -> Json:
    """One raw InfluxQL query. `fmt` is "time_series" or "table"."""
    t: Json = {"datasource": dict(datasource.REF), "query": query, "rawQuery": True, "refId": ref, "resultFormat": fmt}
    if alias:
        t["alias"] = alias
    return t


def thresholds(base: str, *steps: tuple[float, str]) -> Json:
    return {"mode": "absolute", "steps": [{"color": base, "value": None}] + [{"color": c, "value": v} for v, c in steps]}


def value_mapping(values: dict[str, tuple[str, str]]) -> Json:
    return {
        "type": "value",
        "options": {v: {"color": c, "index": i, "text": t} for i, (v, (t, c)) in enumerate(values.items())},
    }


def override(name: str, **props: Any) -> Json:
    """Field override by field name; props as Grafana property ids (dots allowed via __)."""
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": k.replace("__", "."), "value": v} for k, v in props.items()],
    }


def _field_config(unit: str | None, custom: Json, thresholds_: Json | None, mappings: list[Json] | None,
                  overrides: list[Json] | None, color: Json | None, minmax: tuple[float | None, float | None]) -> Json:
    defaults: Json = {"custom": custom, "mappings": mappings or []}
    if unit:
        defaults["unit"] = unit
    defaults["thresholds"] = thresholds_ or thresholds("green")
    defaults["color"] = color or {"mode": "palette-classic"}
    if minmax[0] is not None:
        defaults["min"] = minmax[0]
    if minmax[1] is not None:
        defaults["max"] = minmax[1]
    return {"defaults": defaults, "overrides": overrides or []}


def _panel(kind: str, title: str, targets: list[Json], description: str, options: Json, field_config: Json,
           transformations: list[Json] | None = None, interval: str | None = None) -> Json:
    p: Json = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": dict(datasource.REF),
        "targets": targets,
        "options": options,
        "fieldConfig": field_config,
        "pluginVersion": GRAFANA_VERSION,
        "transformations": transformations or [],
    }
    if interval:
        p["interval"] = interval
    return p


def _legend(placement: str = "bottom", calcs: list[str] | None = None) -> Json:
    return {"calcs": calcs or [], "displayMode": "list", "placement": placement, "showLegend": True}


def timeseries(title: str, targets: list[Json], *, description: str = "", unit: str | None = None,
               thresholds_: Json | None = None, threshold_style: str = "off", draw: str = "line",
               overrides: list[Json] | None = None, minmax: tuple[float | None, float | None] = (None, None),
               legend_calcs: list[str] | None = None, interval: str | None = None, stack: bool = False) -> Json:
    custom: Json = {
        "drawStyle": draw,
        "lineWidth": 1,
        "fillOpacity": 60 if draw == "bars" else 10,
        "showPoints": "never",
        "spanNulls": False,
        "axisPlacement": "auto",
        "thresholdsStyle": {"mode": threshold_style},
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
    }
    options = {"legend": _legend(calcs=legend_calcs), "tooltip": {"mode": "multi", "sort": "desc"}}
    return _panel("timeseries", title, targets, description, options,
                  _field_config(unit, custom, thresholds_, None, overrides, None, minmax), interval=interval)


def stat(title: str, targets: list[Json], *, description: str = "", unit: str | None = None,
         thresholds_: Json | None = None, mappings: list[Json] | None = None, overrides: list[Json] | None = None,
         text_mode: str = "auto", color_mode: str = "background", no_value: str | None = None) -> Json:
    options = {
        "colorMode": color_mode,
        "graphMode": "none",
        "justifyMode": "center",
        "orientation": "auto",
        "percentChangeColorMode": "standard",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showPercentChange": False,
        "textMode": text_mode,
        "wideLayout": True,
    }
    fc = _field_config(unit, {}, thresholds_, mappings, overrides, {"mode": "thresholds"}, (None, None))
    if no_value is not None:
        fc["defaults"]["noValue"] = no_value
    return _panel("stat", title, targets, description, options, fc)


def bargauge(title: str, targets: list[Json], *, description: str = "", unit: str | None = None,
             thresholds_: Json | None = None, minmax: tuple[float | None, float | None] = (None, None)) -> Json:
    options: Json = {
        "displayMode": "basic",
        "legend": {**_legend(), "showLegend": False},
        "maxVizHeight": 300,
        "minVizHeight": 16,
        "minVizWidth": 8,
        "namePlacement": "left",
        "orientation": "horizontal",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": True},
        "showUnfilled": True,
        "sizing": "auto",
        "valueMode": "color",
    }
    return _panel("bargauge", title, targets, description, options,
                  _field_config(unit, {}, thresholds_, None, None, {"mode": "thresholds"}, minmax))


def piechart(title: str, targets: list[Json], *, description: str = "", transformations: list[Json] | None = None) -> Json:
    options = {
        "displayLabels": ["name", "value"],
        "legend": {**_legend("right"), "values": ["value"]},
        "orientation": "auto",
        "pieType": "donut",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": True},
        "sort": "desc",
        "tooltip": {"mode": "single", "sort": "none"},
    }
    custom = {"hideFrom": {"legend": False, "tooltip": False, "viz": False}}
    return _panel("piechart", title, targets, description, options,
                  _field_config(None, custom, None, None, None, None, (None, None)), transformations)


def table(title: str, targets: list[Json], *, description: str = "", overrides: list[Json] | None = None,
          transformations: list[Json] | None = None, sort_by: str | None = None, desc: bool = False) -> Json:
    options: Json = {"cellHeight": "sm", "frameIndex": 0, "showHeader": True}
    if sort_by:
        options["sortBy"] = [{"desc": desc, "displayName": sort_by}]
    custom = {"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True, "inspect": False}
    return _panel("table", title, targets, description, options,
                  _field_config(None, custom, None, None, overrides, None, (None, None)), transformations)


def geomap(title: str, targets: list[Json], *, description: str = "", lat: float, lon: float, zoom: float,
           color_field: str, lat_field: str, lon_field: str, thresholds_: Json, mappings: list[Json],
           transformations: list[Json] | None = None) -> Json:
    layer = {
        "type": "markers",
        "name": "Devices / อุปกรณ์",
        "tooltip": True,
        "location": {"mode": "coords", "latitude": lat_field, "longitude": lon_field},
        "config": {
            "showLegend": True,
            "style": {
                "color": {"field": color_field, "fixed": "dark-green"},
                "opacity": 0.9,
                "size": {"fixed": 9, "max": 15, "min": 2},
                "symbol": {"fixed": "img/icons/marker/circle.svg", "mode": "fixed"},
            },
        },
    }
    options = {
        "basemap": {"type": "default", "name": "Basemap"},
        "controls": {"mouseWheelZoom": True, "showAttribution": True, "showScale": True, "showZoom": True},
        "layers": [layer],
        "tooltip": {"mode": "details"},
        "view": {"id": "coords", "lat": lat, "lon": lon, "zoom": zoom, "allLayers": True},
    }
    return _panel("geomap", title, targets, description, options,
                  _field_config(None, {}, thresholds_, mappings, None, {"mode": "thresholds"}, (None, None)),
                  transformations)


def row(title: str) -> Json:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def layout(items: list[tuple[Json, int, int]]) -> list[Json]:
    """Place panels left to right in a 24-column grid; (panel, width, height). Rows take a full line.

    Ids are assigned in order, so the JSON is stable.
    """
    out: list[Json] = []
    x = y = line_h = 0
    for n, (panel, w, h) in enumerate(items, start=1):
        if panel["type"] == "row":
            y += line_h
            x, line_h, w, h = 0, 0, 24, 1
        elif x + w > 24:
            x, y, line_h = 0, y + line_h, 0
        panel = {**panel, "id": n, "gridPos": {"h": h, "w": w, "x": x, "y": y}}
        out.append(panel)
        if panel["type"] == "row":
            y += 1
        else:
            x += w
            line_h = max(line_h, h)
    return out


def datasource_variable() -> Json:
    """The datasource picker; its saved value is the provisioned datasource."""
    return {
        "type": "datasource",
        "name": datasource.VARIABLE,
        "label": "Datasource / แหล่งข้อมูล",
        "query": datasource.TYPE,
        "current": {"selected": True, "text": datasource.NAME, "value": datasource.UID},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
    }


def influx_annotation(name: str, query: str, color: str, panel_ids: list[int], title_column: str, text_column: str,
                      tags_column: str) -> Json:
    """An annotation from an InfluxQL query, shown on the given panels only.

    The InfluxDB datasource reads its query from `target` (an InfluxQuery with `fromAnnotations`; a legacy top-level
    `query` is migrated into it by Grafana). The query must carry `$timeFilter`; the columns map to the marker's title,
    text and tags."""
    return {
        "name": name,
        "datasource": datasource.REF,
        "enable": True,
        "hide": False,
        "iconColor": color,
        "filter": {"exclude": False, "ids": panel_ids},
        "target": {"refId": "Anno", "query": query, "rawQuery": True, "fromAnnotations": True, "resultFormat": "table",
                   "titleColumn": title_column, "textColumn": text_column, "tagsColumn": tags_column},
    }


def ids_of(panel_list: list[Json], *titles: str) -> list[int]:
    """The ids `layout` gave the panels with these titles."""
    ids = [p["id"] for p in panel_list if p.get("title") in titles]
    if len(ids) != len(titles):
        raise ValueError(f"panels not found: {sorted(set(titles) - {p.get('title') for p in panel_list})}")
    return ids


def dashboard(uid: str, title: str, description: str, tags: list[str], panels: list[Json], variables: list[Json],
              time_from: str = "now-24h", refresh: str = "1m", links: list[Json] | None = None,
              annotations: list[Json] | None = None) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["nakhon", *tags],
        "timezone": "Asia/Bangkok",
        "weekStart": "monday",
        "editable": False,
        "graphTooltip": 1,
        "liveNow": False,
        "refresh": refresh,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": time_from, "to": "now"},
        "timepicker": {"refresh_intervals": ["30s", "1m", "5m", "15m", "1h"]},
        "fiscalYearStartMonth": 0,
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }, *(annotations or [])]},
        "links": links or [],
        "templating": {"list": [datasource_variable(), *variables]},
        "panels": panels,
    }


def dashboard_links() -> list[Json]:
    """A drop-down to every other Nakhon dashboard (by tag), keeping time and variables."""
    return [{
        "asDropdown": True, "icon": "external link", "includeVars": False, "keepTime": True, "tags": ["nakhon"],
        "targetBlank": False, "title": "Nakhon dashboards / แดชบอร์ด", "tooltip": "", "type": "dashboards", "url": "",
    }]


def time_copy(alias: str, ref: str | None = None) -> Json:
    """A copy of a frame's Time column under `alias` (shown as "x minutes ago" by giving it unit dateTimeFromNow).

    `ref` limits it to one query's frame. Binary operands use the matcher/fixed form of Grafana 11.2+.
    """
    t: Json = {"id": "calculateField", "options": {
        "mode": "binary", "alias": alias, "replaceFields": False,
        "binary": {"left": {"matcher": {"id": "byName", "options": "Time"}}, "operator": "*", "right": {"fixed": "1"}},
    }}
    if ref:
        t["filter"] = {"id": "byRefId", "options": ref}
    return t


def drop_fields(names: list[str], ref: str | None = None) -> Json:
    """Hide columns by name (from one query's frame when `ref` is given)."""
    t: Json = {"id": "organize", "options": {"excludeByName": dict.fromkeys(names, True), "indexByName": {}, "renameByName": {}}}
    if ref:
        t["filter"] = {"id": "byRefId", "options": ref}
    return t
