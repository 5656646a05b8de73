"""One line per service of `nakhon up`: is it running, and does it do its job?

`nakhon up` probes each service every few seconds (`probe`), logs a line
when one changes, prints them all on SIGUSR1 and keeps them in
`<root>/status.json`, which `nakhon status` reads.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from ingest.health import read_files

STALE_S = 10.0  # a health file older than this belongs to a worker that stopped writing it


def broker_health(host: str, port: int) -> tuple[str, str]:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return "ok", f"accepting connections on {port}"
    except OSError as exc:
        return "down", f"not accepting connections on {port}: {exc.strerror or exc}"


def influxdb_health(url: str) -> tuple[str, str]:
    try:
        code = httpx.get(f"{url}/ping", timeout=2.0).status_code
    except httpx.HTTPError as exc:
        return "down", f"not answering: {type(exc).__name__}"
    return ("ok", "answering /ping") if code == 204 else ("down", f"/ping answered {code}")


def ingest_health(folder: Path, pids: set[int] | None = None, now: float | None = None) -> tuple[str, str]:
    """From the workers' health files; with `pids`, only files written by those processes (the live ingest)."""
    now = time.time() if now is None else now
    docs = [d for d in read_files(folder) if d.get("status") != "stopped" and (pids is None or d.get("pid") in pids)]
    fresh = [d for d in docs if now - float(d.get("ts", 0)) <= STALE_S]
    if not fresh:
        return "down", "no worker reports its health" + (f" (last report {now - max(float(d.get('ts', 0)) for d in docs):.0f} s ago)" if docs else "")
    worst = max(fresh, key=lambda d: ("ok", "degraded", "down").index(str(d.get("status", "down"))))
    received = sum(int(d.get("received", 0)) for d in fresh)
    acked = sum(int(d.get("acked", 0)) for d in fresh)
    spool = sum(int(d.get("spool_depth", 0)) for d in fresh)
    detail = f"{len(fresh)} worker(s), received {received}, acked {acked}, spool {spool}"
    problems = [p for d in fresh for p in d.get("problems", [])]
    if problems:
        detail += "; " + "; ".join(problems)
    return str(worst.get("status", "down")), detail


def api_health(host: str, port: int) -> tuple[str, str]:
    try:
        resp = httpx.get(f"http://{host}:{port}/readyz", timeout=3.0)
    except httpx.HTTPError as exc:
        return "down", f"not answering: {type(exc).__name__}"
    if resp.status_code == 200:
        return "ok", "ready"
    try:
        body = resp.json()
        why = [k for k in ("broker", "influxdb") if not body.get(k)]
        why += body.get("ingest", {}).get("problems", [])
    except ValueError:
        why = [f"HTTP {resp.status_code}"]
    return "degraded", "not ready: " + "; ".join(str(w) for w in why)


def duration(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def line(entry: dict[str, Any], now: float | None = None) -> str:
    """`ingest    running  pid 4242  up 5m03s  restarts 1 (last: killed by SIGKILL)  health ok: ...`"""
    now = time.time() if now is None else now
    parts = [f"{entry['name']:<9}", f"{entry['state']:<8}"]
    if entry.get("pid"):
        parts.append(f"pid {entry['pid']}")
    parts.append(("up " if entry["state"] == "running" else "for ") + duration(now - float(entry.get("since", now))))
    if entry.get("restarts") or entry.get("last_exit"):
        parts.append(f"restarts {entry.get('restarts', 0)}" + (f" (last: {entry['last_exit']})" if entry.get("last_exit") else ""))
    if entry["state"] == "failed" and entry.get("last_error"):
        parts.append(f"last error: {entry['last_error']}")
    if entry.get("health"):
        parts.append(f"health {entry['health']}" + (f": {entry['health_detail']}" if entry.get("health_detail") else ""))
    return "  ".join(parts)


def write_file(path: Path, entries: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({"ts": time.time(), "pid": os.getpid(), "services": entries}))
    os.replace(tmp, path)


def read_file(path: Path) -> tuple[list[str], bool]:
    """The status lines `nakhon up` last wrote, and whether that `nakhon up` still runs."""
    doc = orjson.loads(path.read_bytes())
    try:
        os.kill(int(doc["pid"]), 0)
        alive = True
    except ProcessLookupError:
        alive = False
    except PermissionError:  # runs as another user
        alive = True
    now = time.time()
    return [line(e, now) for e in doc["services"]], alive and now - float(doc["ts"]) < 30
