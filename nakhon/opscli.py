"""Operator commands for a deployment: `broker-config`, `certs`, `db-init`, `backup`, `restore`.

- `broker-config` prints the compose broker's mosquitto.conf from the one generator
  (nakhon/brokerconf.py); `deploy/mosquitto/mosquitto.conf` is its output.
- `certs` makes a CA and a broker/API certificate for a host name (or checks
  that bring-your-own files are there).
- `db-init` turns on what InfluxDB's authentication needs: the admin (first start
  only), the schema, and one least-privileged user per service, with passwords
  from the environment (nothing is printed).
- `backup` / `restore` save and bring back InfluxDB's Nakhon database, the device
  registry and the broker's device accounts of a local platform (`nakhon up`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from contract.settings import ConfigError, load_settings

INFLUX_SECRET_ENV = {
    "admin": "NAKHON_INFLUX_ADMIN_PASSWORD",
    "nakhon_ingest": "NAKHON_INFLUX_INGEST_PASSWORD",
    "nakhon_api": "NAKHON_INFLUX_API_PASSWORD",
    "nakhon_grafana": "NAKHON_INFLUX_GRAFANA_PASSWORD",
    "nakhon_alerts": "NAKHON_INFLUX_ALERTS_PASSWORD",
}


def _fail(cmd: str, msg: str, code: int = 2) -> int:
    sys.stderr.write(f"nakhon {cmd}: {msg}\n")
    return code


def cmd_broker_config(args: argparse.Namespace) -> int:
    from nakhon.brokerconf import compose_config

    text = compose_config()
    if args.out:
        Path(args.out).write_text(text)
        sys.stderr.write(f"wrote {args.out}\n")
    else:
        sys.stdout.write(text)
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from nakhon.servers import make_certs

    out = Path(args.out)
    have = [out / n for n in ("ca.pem", "server.pem", "server.key")]
    if all(p.exists() for p in have) and not args.force:
        sys.stderr.write(f"nakhon certs: {out} has ca.pem, server.pem and server.key; kept (--force makes new ones)\n")
        return 0
    ca, cert, key = make_certs(out, args.host, days=args.days, names=tuple(args.also))
    (out / "ca.key").chmod(0o600)
    sys.stderr.write(f"CA {ca} (give it to devices: provisioning puts it into config.json), certificate {cert} for {args.host}, key {key}\n"
                     f"Keep {out / 'ca.key'} offline; it signs anything devices will trust.\n")
    return 0


def cmd_db_init(args: argparse.Namespace) -> int:
    from nakhon.accounts import AccountError, init_influx

    try:
        s = load_settings()
    except ConfigError as exc:
        return _fail("db-init", str(exc))
    missing = [v for v in INFLUX_SECRET_ENV.values() if not os.environ.get(v)]
    if missing:
        return _fail("db-init", f"set {', '.join(missing)} (InfluxDB's admin and service users' passwords)")
    pw = {k: os.environ[v] for k, v in INFLUX_SECRET_ENV.items()}
    import httpx

    deadline = time.monotonic() + args.wait
    while True:
        try:
            if httpx.get(f"{s.influx_url}/ping", timeout=2).status_code == 204:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            return _fail("db-init", f"InfluxDB at {s.influx_url} did not answer /ping in {args.wait:.0f}s", 1)
        time.sleep(1)
    try:
        init_influx(s.influx_url, s.influx_db, pw.pop("admin"), pw, s.raw_retention, s.hourly_retention, admin=args.admin_user)
    except AccountError as exc:
        return _fail("db-init", str(exc), 1)
    sys.stderr.write(f"nakhon db-init: {s.influx_url}: admin {args.admin_user}, schema, users {', '.join(pw)} ready\n")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from nakhon.backup import BackupError, backup

    try:
        manifest = backup(Path(args.root), Path(args.out))
    except BackupError as exc:
        return _fail("backup", str(exc), 1)
    sys.stdout.write(f"backup in {args.out}: {manifest}\n")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from nakhon.backup import BackupError, restore

    try:
        restore(Path(args.source), Path(args.root))
    except BackupError as exc:
        return _fail("restore", str(exc), 1)
    sys.stdout.write(f"restored {args.source} into {args.root}; start it with `nakhon up --root {args.root}`\n")
    return 0


def add_parsers(sub: Any) -> None:
    bc = sub.add_parser("broker-config", help="print the compose broker's mosquitto.conf (deploy/mosquitto/mosquitto.conf is this output)")
    bc.add_argument("--out", default=None, help="write it to this file instead of stdout")
    bc.set_defaults(func=cmd_broker_config)

    ce = sub.add_parser("certs", help="make a CA and a certificate for the broker and API host (or keep the ones there)")
    ce.add_argument("--host", required=True, help="the host name devices and clients dial, e.g. mqtt.city.example")
    ce.add_argument("--also", action="append", default=[], help="another name or IP address for the certificate (repeat)")
    ce.add_argument("--out", default="deploy/certs", help="folder (default deploy/certs, git-ignored)")
    ce.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    ce.add_argument("--force", action="store_true", help="replace existing files (devices must then get the new CA)")
    ce.set_defaults(func=cmd_certs)

    di = sub.add_parser("db-init", help="InfluxDB with authentication: admin (first start), schema, one user per service; passwords from "
                        + ", ".join(INFLUX_SECRET_ENV.values()))
    di.add_argument("--admin-user", default="nakhon_dbadmin", help="InfluxDB admin name (default nakhon_dbadmin)")
    di.add_argument("--wait", type=float, default=60.0, help="seconds to wait for InfluxDB to answer (default 60)")
    di.set_defaults(func=cmd_db_init)

    bk = sub.add_parser("backup", help="save InfluxDB's Nakhon database, the device registry and the broker's device accounts of a running `nakhon up`")
    bk.add_argument("--root", default="var/local", help="the platform's folder (default var/local, as `nakhon up`)")
    bk.add_argument("--out", required=True, help="folder for the backup (must not exist)")
    bk.set_defaults(func=cmd_backup)

    rs = sub.add_parser("restore", help="bring a backup back into a stopped platform's folder (then `nakhon up`)")
    rs.add_argument("source", help="folder written by `nakhon backup`")
    rs.add_argument("--root", default="var/local", help="the platform's folder (default var/local); its broker, database and registry are replaced")
    rs.set_defaults(func=cmd_restore)
