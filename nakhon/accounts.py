"""The platform's own accounts: their secrets, and InfluxDB's users.

`nakhon up` keeps the secrets it generates on its first run in one file
(mode 600) under its folder; compose takes them from the environment.
InfluxDB runs with authentication on: `init_influx` creates the admin on
the first start (InfluxDB allows that one statement without credentials
only while it has no user at all), then, as that admin, the database,
retention policies and continuous queries, and one user per service:

- the ingest: ALL (write, and read for the roll-ups it computes) on the
  Nakhon database only, no admin;
- the API and Grafana: READ on the Nakhon database only;
- the alert evaluator: WRITE on the Nakhon database only (its events).

Nothing at run time uses the admin (`nakhon db-init` and `nakhon backup`
are operator commands).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

from contract import rollups
from contract.influx import Influx, InfluxRefused, InfluxRejected
from contract.topics import ALERTS_USER, API_USER, INGEST_USER, OBSERVER_USER

BROKER_ADMIN = API_USER  # provisioning and config pushes go through the API
BROKER_INGEST = INGEST_USER
BROKER_OBSERVER = OBSERVER_USER
BROKER_ALERTS = ALERTS_USER
INFLUX_ADMIN = "nakhon_dbadmin"
INFLUX_INGEST = "nakhon_ingest"
INFLUX_API = "nakhon_api"
INFLUX_GRAFANA = "nakhon_grafana"
INFLUX_ALERTS = "nakhon_alerts"
INFLUX_USERS = {INFLUX_INGEST: "ALL", INFLUX_API: "READ", INFLUX_GRAFANA: "READ", INFLUX_ALERTS: "WRITE"}

_NAMES = ("broker_admin", "broker_ingest", "broker_observer", "broker_alerts", "influx_admin", "influx_ingest", "influx_api", "influx_grafana",
          "influx_alerts")
_SAFE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")  # goes into InfluxQL string literals: nothing that could close one


class AccountError(RuntimeError):
    """An account cannot be set up; the message says what to fix."""


def load_or_create(path: Path) -> dict[str, str]:
    """The generated secrets, made on the first call and kept (mode 600) for the next runs."""
    path = Path(path)
    doc: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = [n for n in _NAMES if n not in doc]
    for name in missing:
        doc[name] = secrets.token_urlsafe(24)
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=2)
        path.with_suffix(".tmp").replace(path)
    return doc


def _check(password: str, what: str) -> str:
    if not _SAFE.match(password):
        raise AccountError(f"{what}: use 16-128 characters of letters, digits, _ and - (e.g. `openssl rand -hex 24`)")
    return password


def init_influx(url: str, database: str, admin_password: str, passwords: dict[str, str], raw_retention: str = "400d",
                hourly_retention: str = "INF", admin: str = INFLUX_ADMIN) -> None:
    """Admin (first start only), schema, and the service users with exactly their rights. Idempotent."""
    _check(admin_password, "the InfluxDB admin password")
    with Influx(url, database, admin, admin_password) as db:
        try:
            db.query("SHOW USERS")
        except (InfluxRefused, InfluxRejected) as exc:  # 401/403 are refusals of the request, not of its data
            if exc.status != 401 and "create admin user first" not in exc.message:
                raise
            with Influx(url, database) as anon:  # only works while InfluxDB has no user at all
                try:
                    anon.query(f"CREATE USER \"{admin}\" WITH PASSWORD '{admin_password}' WITH ALL PRIVILEGES", method="POST")
                except (InfluxRefused, InfluxRejected):
                    raise AccountError(f"InfluxDB at {url} has users, and {admin!r} cannot log in with the configured admin password: "
                                       "give the password it was set up with (nakhon up: secrets.json from that run or a backup; "
                                       "compose: NAKHON_INFLUX_ADMIN_PASSWORD)") from None
        db.ensure_schema(raw_retention, hourly_retention)
        db.execute(rollups.schema_statements(database))
        existing = {r["user"] for r in db.rows("SHOW USERS")}
        for user, privilege in INFLUX_USERS.items():
            pw = _check(passwords[user], f"the password of InfluxDB user {user}")
            if user in existing:
                db.query(f"SET PASSWORD FOR \"{user}\" = '{pw}'", method="POST")
            else:
                db.query(f"CREATE USER \"{user}\" WITH PASSWORD '{pw}'", method="POST")
            db.query(f'REVOKE ALL PRIVILEGES FROM "{user}"', method="POST")  # never an InfluxDB admin
            db.query(f'REVOKE ALL ON "{database}" FROM "{user}"', method="POST")
            db.query(f'GRANT {privilege} ON "{database}" TO "{user}"', method="POST")
