"""Upload the datasource and dashboards to a running Grafana, idempotently.

Uses grafana-client (the `grafana` extra). Each object is read first and
written only when it differs, so pushing twice changes nothing and adds no
dashboard versions. Dashboards go to the `Nakhon` folder under their fixed
UIDs, replacing what is there (they are code; edit them in dashboards/).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dashboards import build, datasource

log = logging.getLogger("nakhon.dashboards.push")

Json = dict[str, Any]
# Properties Grafana adds or bumps on save; not ours to compare.
_SERVER_KEYS = ("id", "version")
_DS_KEYS = ("name", "type", "access", "url", "isDefault", "jsonData", "user")


def same_dashboard(existing: Json | None, wanted: Json) -> bool:
    if existing is None:
        return False
    strip = lambda d: {k: v for k, v in d.items() if k not in _SERVER_KEYS}  # noqa: E731
    return strip(existing) == strip(wanted)


def same_datasource(existing: Json | None, wanted: Json) -> bool:
    if existing is None:
        return False
    for key in _DS_KEYS:
        if key not in wanted:
            continue
        if key == "jsonData":
            if any(existing.get("jsonData", {}).get(k) != v for k, v in wanted["jsonData"].items()):
                return False
        elif existing.get(key) != wanted[key]:
            return False
    return True


def _get_or_none(fn: Callable[[], Json]) -> Json | None:
    from grafana_client.client import GrafanaClientError

    try:
        return fn()
    except GrafanaClientError as exc:
        if exc.status_code == 404:
            return None
        raise


def push(api: Any, dashboards: dict[str, Json], ds: Json, ds_password: str | None = None) -> list[str]:
    """Make Grafana hold `ds` and `dashboards`; returns what was done, one line per object."""
    done: list[str] = []
    existing_ds = _get_or_none(lambda: api.datasource.get_datasource_by_uid(ds["uid"]))
    body = dict(ds)
    if ds_password:
        body["secureJsonData"] = {"password": ds_password}
    if existing_ds is None:
        api.datasource.create_datasource(body)
        done.append(f"datasource {ds['uid']}: created")
    elif not same_datasource(existing_ds, ds) or ds_password:
        api.datasource.update_datasource_by_uid(ds["uid"], {**body, "id": existing_ds["id"], "version": existing_ds.get("version")})
        done.append(f"datasource {ds['uid']}: updated")
    else:
        done.append(f"datasource {ds['uid']}: unchanged")

    if _get_or_none(lambda: api.folder.get_folder(build.FOLDER_UID)) is None:
        api.folder.create_folder(build.FOLDER, uid=build.FOLDER_UID)
        done.append(f"folder {build.FOLDER_UID}: created")

    for name, model in dashboards.items():
        uid: str = model["uid"]
        current = _get_or_none(lambda: api.dashboard.get_dashboard(uid))  # noqa: B023 (called at once)
        existing = current["dashboard"] if current else None
        in_folder = current is not None and current.get("meta", {}).get("folderUid") == build.FOLDER_UID
        if same_dashboard(existing, model) and in_folder:
            done.append(f"dashboard {model['uid']} ({name}): unchanged")
            continue
        payload = {"dashboard": {**model, "id": None}, "folderUid": build.FOLDER_UID, "overwrite": True,
                   "message": "nakhon dashboards push"}
        api.dashboard.update_dashboard(payload)
        done.append(f"dashboard {model['uid']} ({name}): {'updated' if existing else 'created'}")
    return done


def connect(url: str, token: str | None, user: str | None, password: str | None, timeout: float = 10.0) -> Any:
    from grafana_client import GrafanaApi

    credential: str | tuple[str, str] | None = token or ((user, password) if user and password else None)
    if credential is None:
        raise ValueError("give a Grafana API token (GRAFANA_TOKEN) or a user and password (GRAFANA_USER, GRAFANA_PASSWORD)")
    return GrafanaApi.from_url(url, credential=credential, timeout=timeout)


def datasource_for(influx_url: str, database: str, user: str | None) -> Json:
    return datasource.settings(influx_url, database, user)
