"""Provisioning a simulated fleet the way a technician provisions real devices: through the API.

Each device is registered with `POST /v1/devices` (an admin key); the API creates its
broker account and exact ACL and answers with its config.json once; the password is kept
in the credentials file (mode 600) that `--credentials` reads. Devices already in the file
are left alone; one the registry knows but the file lost gets new credentials (rotate).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import httpx

from contract.logs import kv
from simulators.devices import SimDevice

log = logging.getLogger("nakhon.simulate")


class ProvisionError(RuntimeError):
    """The API refused or could not be reached; the message says which device and why (worth a retry)."""


class ProvisionConfigError(ProvisionError):
    """Provisioning cannot work as configured (no key, no credentials file): a retry will not help."""


def _save(path: Path, creds: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(creds, fh)
    tmp.replace(path)


def _call(http: httpx.Client, path: str, body: dict[str, object] | None) -> httpx.Response:
    """POST, waiting out the API's rate limit (429 with Retry-After) as often as it asks."""
    while True:
        try:
            r = http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ProvisionError(f"cannot reach the API at {http.base_url}: {exc}") from None  # e.g. still starting
        if r.status_code != 429:
            return r
        time.sleep(min(60.0, float(r.headers.get("Retry-After", "1"))))


def provision_fleet(devices: list[SimDevice], api_url: str, key: str, credentials: Path, ca_file: str | None = None,
                    interval_s: int = 60, fw: str = "sim-1.0.0") -> dict[str, str]:
    """Every device in `devices` has credentials afterwards; returns device id -> password."""
    credentials = Path(credentials)
    creds: dict[str, str] = json.loads(credentials.read_text()) if credentials.exists() else {}
    todo = [d for d in devices if d.device_id not in creds]
    if not todo:
        return creds
    verify: str | bool = ca_file if ca_file else True
    with httpx.Client(base_url=api_url.rstrip("/"), headers={"X-API-Key": key}, verify=verify, timeout=60) as http:
        for i, d in enumerate(todo):
            body = {"id": d.device_id, "city": d.city, "kind": d.kind, "sensors": list(d.metrics), "lat": round(d.lat, 6),
                    "lon": round(d.lon, 6), "interval_s": max(1, interval_s), "fw": fw}
            r = _call(http, "/v1/devices", body)
            if r.status_code == 409:  # registered before, its password lost: new credentials
                r = _call(http, f"/v1/devices/{d.device_id}/rotate", None)
            if r.status_code >= 400:
                raise ProvisionError(f"provisioning {d.device_id}: API answered {r.status_code}: {r.text[:300]}")
            creds[d.device_id] = r.json()["config"]["mqtt"]["password"]
            if i % 100 == 99:
                _save(credentials, creds)  # progress survives an interruption
    _save(credentials, creds)
    log.info("fleet provisioned through the API", extra=kv(devices=len(todo), credentials=str(credentials)))
    return creds
