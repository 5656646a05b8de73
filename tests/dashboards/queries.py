"""Read the queries out of dashboard JSON and fill in variables as Grafana does."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_RANGE = re.compile(r"^now-(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_INTERVAL_S = 60  # Grafana's auto interval for a 24 h range on a dashboard-wide panel
LEFT_VARIABLE = re.compile(r"\$(?!/)[A-Za-z_{]")


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref: str
    text: str
    fmt: str
    min_interval: str | None


def panels(model: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in model.get("panels", []):
        yield p
        yield from p.get("panels", [])


def queries(name: str, model: dict[str, Any]) -> Iterator[Query]:
    """Every panel's queries, and every annotation's that runs one (an InfluxDB annotation's `target`)."""
    for p in panels(model):
        for t in p.get("targets", []):
            yield Query(name, f"{p['id']} {p['title']}", t["refId"], t["query"], t.get("resultFormat", "time_series"), p.get("interval"))
    for a in model.get("annotations", {}).get("list", []):
        t = a.get("target") or {}
        if "query" in t:
            yield Query(name, f"annotation {a['name']}", t["refId"], t["query"], t.get("resultFormat", "table"), None)


def range_s(model: dict[str, Any]) -> int:
    m = _RANGE.match(model["time"]["from"])
    assert m and model["time"]["to"] == "now", f"unexpected default time range {model['time']}"
    return int(m.group(1)) * _UNITS[m.group(2)]


def interval_s(q: Query) -> int:
    if q.min_interval:
        m = re.fullmatch(r"(\d+)([smhd])", q.min_interval)
        assert m, q.min_interval
        return max(int(m.group(1)) * _UNITS[m.group(2)], 1)
    return DEFAULT_INTERVAL_S


def fill(q: Query, model: dict[str, Any], city: str | None, now: float | None = None) -> str:
    """The query as Grafana sends it: $timeFilter, $__interval and $city replaced."""
    now_ms = int((now or time.time()) * 1000)
    text = q.text.replace("$timeFilter", f"time >= {now_ms - range_s(model) * 1000}ms and time <= {now_ms}ms")
    text = text.replace("$__interval", f"{interval_s(q)}s")
    if "$city" in text:
        assert city is not None, f"{q.panel}: query uses $city but no city given"
        text = text.replace("/^$city$/", f"/^{city}$/").replace("'$city'", f"'{city}'")
    assert not LEFT_VARIABLE.search(text), f"{q.panel} {q.ref}: variable left unfilled in {text}"
    return text


def outer_aliases(text: str) -> list[str]:
    """The column names the outermost SELECT gives (`AS "name"`)."""
    depth, end = 0, len(text)
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and text.startswith(" FROM ", i):
            end = i
            break
    return re.findall(r'AS "([A-Za-z0-9_]+)"', text[:end])
