"""`nakhon device`, `nakhon apikey`, `nakhon broker-init` and `nakhon broker-upgrade`.

- `device` is for a technician with a laptop: it talks to the platform's API
  with an admin key (NAKHON_API_KEY or --key) and writes the device's
  config.json, which the API shows only once.
- `apikey` is for the operator on the API's host: it works on the registry
  file directly, so the first admin key can be made before any exists.
- `broker-init` writes the broker's dynamic-security file with the
  provisioning and ingest accounts, and prints the mosquitto.conf lines.
- `broker-upgrade` brings the roles of a running broker set up by an older
  version up to date (platform roles, every device's role), as the API's
  broker account (NAKHON_BROKER_ADMIN_USERNAME and _PASSWORD).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from contract.settings import ConfigError, Settings, load_settings
from contract.status import DEVICE_KINDS
from contract.topics import ALERTS_USER


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"nakhon: {exc}\n")
        raise SystemExit(2) from None


# --- device (over the API) ------------------------------------------------------
def _api(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    s = _settings()
    url = (args.api or f"http://{s.api_host}:{s.api_port}").rstrip("/")
    key = args.key or os.environ.get("NAKHON_API_KEY")
    if not key:
        sys.stderr.write("nakhon device: an admin API key is needed: --key or NAKHON_API_KEY (make one with `nakhon apikey create`)\n")
        raise SystemExit(2)
    return url, {"X-API-Key": key}


def _call(method: str, url: str, headers: dict[str, str], **kw: Any) -> Any:
    import httpx

    try:
        r = httpx.request(method, url, headers=headers, timeout=30, **kw)
    except httpx.HTTPError as exc:
        sys.stderr.write(f"nakhon: cannot reach the API at {url}: {exc}\n")
        raise SystemExit(1) from None
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text[:300]
        sys.stderr.write(f"nakhon: API answered {r.status_code}: {detail}\n")
        raise SystemExit(1)
    return r.json()


def _write_config(path: Path, config: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the device's password
    with os.fdopen(fd, "w") as fh:
        json.dump(config, fh, indent=2)
        fh.write("\n")
    sys.stderr.write(f"config.json for {config['device_id']} written to {path} (shown only this once: keep it safe)\n")


def cmd_device(args: argparse.Namespace) -> int:
    url, headers = _api(args)
    if args.action == "provision":
        body = {"id": args.id, "city": args.city, "kind": args.kind, "sensors": args.sensors.split(","), "lat": args.lat,
                "lon": args.lon, "interval_s": args.interval}
        if args.fw:
            body["fw"] = args.fw
        out = _call("POST", f"{url}/v1/devices", headers, json=body)
        if args.wifi_ssid:  # what the technician would add on site: the board can be flashed with the file as it is
            out["config"]["wifi"] = {"ssid": args.wifi_ssid, "password": args.wifi_password or ""}
        _write_config(Path(args.out or f"{args.id}.config.json"), out["config"])
    elif args.action == "rotate":
        out = _call("POST", f"{url}/v1/devices/{args.id}/rotate", headers, params={"grace_s": _seconds(args.grace)})
        _write_config(Path(args.out or f"{args.id}.config.json"), out["config"])
        if out.get("pending_until"):
            sys.stdout.write(f"{args.id}: new credentials sent over its config topic; the broker switches once the device confirms, "
                             f"at the latest {out['pending_until']}\n")
        else:
            sys.stdout.write(f"{args.id}: new credentials in force now; the device needs the new config.json\n")
    elif args.action == "config":
        change: dict[str, Any] = {"sensors": dict(_onoff(s) for s in args.sensor), "thresholds": dict(_threshold(t) for t in args.threshold)}
        if args.interval is not None:
            change["interval_s"] = args.interval
        out = _call("PUT", f"{url}/v1/devices/{args.id}/config", headers, json=change)
        sys.stdout.write(f"{out['device']}: config seq {out['seq']} published retained on {out['topic']}: {json.dumps(out['doc'])}\n")
    elif args.action == "revoke":
        out = _call("POST", f"{url}/v1/devices/{args.id}/revoke", headers)
        sys.stdout.write(f"{out['id']}: {out['state']} (broker credentials deleted)\n")
    else:
        params = {k: v for k, v in (("city", args.city), ("state", args.state)) if v}
        for d in _call("GET", f"{url}/v1/devices", headers, params=params):
            sys.stdout.write(f"{d['id']:<32} {d['city']:<12} {d['kind']:<8} {d['state']:<8} {d['lat']:.5f},{d['lon']:.5f} {','.join(d['sensors'])}\n")
    return 0


def _seconds(text: str) -> int:
    """'0', '90s', '30m', '2h', '7d' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return int(text[:-1]) * units[text[-1]] if text[-1:] in units else int(text)
    except (ValueError, KeyError):
        raise SystemExit(f"nakhon device rotate: --grace wants a duration like 0, 90s, 30m, 2h or 7d (got {text!r})") from None


def _onoff(spec: str) -> tuple[str, bool]:
    name, _, value = spec.partition("=")
    if value not in ("on", "off"):
        raise SystemExit(f"nakhon device config: --sensor wants NAME=on or NAME=off (got {spec!r})")
    return name, value == "on"


def _threshold(spec: str) -> tuple[str, float]:
    name, _, value = spec.partition("=")
    try:
        return name, float(value)
    except ValueError:
        raise SystemExit(f"nakhon device config: --threshold wants METRIC=NUMBER (got {spec!r})") from None


# --- apikey (on the registry file) ---------------------------------------------
def cmd_apikey(args: argparse.Namespace) -> int:
    from api.registry import Registry

    s = _settings()
    reg = Registry(Path(args.registry) if args.registry else s.registry_path)
    if args.action == "create":
        if args.city and args.scope != "admin":
            sys.stderr.write("nakhon apikey: --city limits an admin key; read keys read every city\n")
            return 2
        key, token = reg.create_key(args.name, args.scope, args.city)
        sys.stderr.write(f"key {key.id} ({key.scope}{', ' + key.city if key.city else ''}) created; the token is shown only now:\n")
        sys.stdout.write(token + "\n")
    elif args.action == "revoke":
        if not reg.revoke_key(args.id):
            sys.stderr.write(f"nakhon apikey: no active key {args.id}\n")
            return 1
        sys.stdout.write(f"{args.id} revoked\n")
    else:
        for k in reg.api_keys():
            state = f"revoked {k.revoked:%Y-%m-%d}" if k.revoked else "active"
            sys.stdout.write(f"{k.id}  {k.scope:<5}  {k.city or '-':<12} {state:<18} {k.name}\n")
    return 0


# --- broker-init ------------------------------------------------------------------
# With --from-env the platform accounts' passwords come from these variables (compose's secrets).
BROKER_SECRET_ENV = {"admin": "NAKHON_BROKER_ADMIN_PASSWORD", "ingest": "NAKHON_INGEST_MQTT_PASSWORD", "observer": "NAKHON_OBSERVER_MQTT_PASSWORD",
                     "alerts": "NAKHON_ALERTS_MQTT_PASSWORD"}


def cmd_broker_init(args: argparse.Namespace) -> int:
    from api.broker import mosquitto_config, new_password, write_bootstrap

    path = Path(args.file)
    if path.exists() and args.keep:
        sys.stderr.write(f"nakhon broker-init: {path} exists; the broker's accounts in it are kept\n")
        return 0
    if path.exists() and not args.force:
        sys.stderr.write(f"nakhon broker-init: {path} exists (the broker keeps its accounts there); --force replaces it\n")
        return 2
    if args.from_env:
        missing = [v for v in BROKER_SECRET_ENV.values() if not os.environ.get(v)]
        if missing:
            sys.stderr.write(f"nakhon broker-init: set {', '.join(missing)} (the platform accounts' passwords)\n")
            return 2
        pw = {k: os.environ[v] for k, v in BROKER_SECRET_ENV.items()}
    else:
        pw = {k: new_password() for k in BROKER_SECRET_ENV}
    admin, ingest, observer = (args.admin_user, pw["admin"]), (args.ingest_user, pw["ingest"]), (args.observer_user, pw["observer"])
    alerts = (ALERTS_USER, pw["alerts"])
    try:
        write_bootstrap(path, admin, ingest, observer, alerts)
    except ValueError as exc:
        sys.stderr.write(f"nakhon broker-init: {exc}\n")
        return 2
    if args.from_env:
        sys.stderr.write(f"nakhon broker-init: wrote {path} with the accounts {admin[0]}, {ingest[0]}, {observer[0]}, {alerts[0]}\n")
        return 0
    sys.stdout.write(
        f"# mosquitto.conf (and allow_anonymous false):\n{mosquitto_config(path)}\n"
        f"# API (provisioning):\nNAKHON_BROKER_ADMIN_USERNAME={admin[0]}\nNAKHON_BROKER_ADMIN_PASSWORD={admin[1]}\n"
        f"# ingest:\nNAKHON_MQTT_USERNAME={ingest[0]}\nNAKHON_MQTT_PASSWORD={ingest[1]}\n"
        f"# read-only observer (subscribe to nakhon/v1/#):\nusername {observer[0]} password {observer[1]}\n"
        f"# alert evaluator (nakhon alerts run):\nNAKHON_MQTT_USERNAME={alerts[0]}\nNAKHON_MQTT_PASSWORD={alerts[1]}\n"
    )
    return 0


def cmd_broker_upgrade(args: argparse.Namespace) -> int:
    from api.broker import BrokerError, DynSec, ensure_roles

    s = _settings()
    if not (s.broker_admin_username and s.broker_admin_password):
        sys.stderr.write("nakhon broker-upgrade: set NAKHON_BROKER_ADMIN_USERNAME and NAKHON_BROKER_ADMIN_PASSWORD (the API's broker account)\n")
        return 2
    dynsec = DynSec(s.mqtt_host, s.mqtt_port, s.broker_admin_username, s.broker_admin_password, s.mqtt_tls,
                    str(s.mqtt_ca_file) if s.mqtt_ca_file else None, timeout=args.timeout)
    try:
        up = ensure_roles(dynsec)
    except BrokerError as exc:
        sys.stderr.write(f"nakhon broker-upgrade: {exc}\n")
        return 1
    changed = ", ".join(up.roles_changed[:10]) + (f" and {len(up.roles_changed) - 10} more" if len(up.roles_changed) > 10 else "")
    sys.stdout.write(f"roles created: {up.roles_created}, ACL entries added: {up.acls_added}, device roles checked: {up.device_roles}, "
                     f"clients reconnected: {up.clients_reconnected}\n" + (f"changed: {changed}\n" if changed else "nothing to change\n"))
    if up.skipped:
        sys.stdout.write(f"left as they are (no topic names their city): {', '.join(up.skipped)}\n")
    return 0


def add_parsers(sub: Any) -> None:
    dev = sub.add_parser("device", help="provision, configure, rotate, revoke or list devices through the API (admin key)")
    dev.add_argument("--api", default=None, help="API base URL (default http://NAKHON_API_HOST:NAKHON_API_PORT)")
    dev.add_argument("--key", default=None, help="admin API key (default NAKHON_API_KEY)")
    dsub = dev.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = dsub.add_parser("provision", help="register a device, create its broker credentials, write its config.json")
    p.add_argument("--id", required=True, help="device id, e.g. cm-air-001 (also its MQTT username)")
    p.add_argument("--city", required=True, help="city slug, e.g. chiang_mai")
    p.add_argument("--kind", required=True, choices=DEVICE_KINDS, help="device kind")
    p.add_argument("--sensors", required=True, help="comma-separated catalogue metrics, e.g. pm25,pm10,temp_c,rh")
    p.add_argument("--lat", type=float, required=True, help="latitude (WGS84)")
    p.add_argument("--lon", type=float, required=True, help="longitude (WGS84)")
    p.add_argument("--interval", type=int, default=60, help="seconds between readings (default 60)")
    p.add_argument("--fw", default=None, help="firmware version")
    p.add_argument("--out", default=None, help="where to write config.json (default <id>.config.json)")
    p.add_argument("--wifi-ssid", default=None, help="the site's Wi-Fi, written into config.json (or add it on site)")
    p.add_argument("--wifi-password", default=None, help="the site's Wi-Fi password")
    r = dsub.add_parser("rotate", help="new broker credentials, in the field (--grace) or at once; writes the new config.json")
    r.add_argument("--id", required=True, help="device id")
    r.add_argument("--grace", default="0",
                   help="deliver the new password over the device's config topic and keep the old one until the device confirms, "
                        "at most this long (e.g. 1h, 7d); 0 (default): the old one stops now and the device needs the new config.json")
    r.add_argument("--out", default=None, help="where to write config.json (default <id>.config.json)")
    cf = dsub.add_parser("config", help="publish a retained config change (interval, sensors on/off, thresholds); recorded")
    cf.add_argument("--id", required=True, help="device id")
    cf.add_argument("--interval", type=int, default=None, help="seconds between readings")
    cf.add_argument("--sensor", action="append", default=[], help="NAME=on or NAME=off, by the sensor's name in config.json (repeat)")
    cf.add_argument("--threshold", action="append", default=[], help="METRIC=VALUE: read faster while at or above it (repeat)")
    v = dsub.add_parser("revoke", help="retire a device: delete its credentials, disconnect it now")
    v.add_argument("--id", required=True, help="device id")
    lst = dsub.add_parser("list", help="list registered devices")
    lst.add_argument("--city", default=None, help="only this city")
    lst.add_argument("--state", default=None, choices=["active", "retired"], help="only this state")
    dev.set_defaults(func=cmd_device)

    key = sub.add_parser("apikey", help="create, list or revoke API keys (on the registry file, for the operator)")
    key.add_argument("--registry", default=None, help="registry file (default NAKHON_REGISTRY_FILE or NAKHON_DATA_DIR/registry.sqlite3)")
    ksub = key.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = ksub.add_parser("create", help="a new key; prints its token once")
    c.add_argument("--name", required=True, help="who or what the key is for")
    c.add_argument("--scope", required=True, choices=["read", "admin"], help="read: read endpoints; admin: also provisioning and keys")
    c.add_argument("--city", default=None, help="admin keys only: manage this city's devices only")
    rv = ksub.add_parser("revoke", help="revoke a key by id")
    rv.add_argument("id", help="key id (the 12 hex digits after nk_)")
    ksub.add_parser("list", help="list keys (never their tokens)")
    key.set_defaults(func=cmd_apikey)

    bi = sub.add_parser("broker-init", help="write the broker's dynamic-security file with the provisioning and ingest accounts")
    bi.add_argument("--file", required=True, help="path of the dynamic-security JSON the broker will load")
    bi.add_argument("--admin-user", default="nakhon_api", help="provisioning account (default nakhon_api)")
    bi.add_argument("--ingest-user", default="nakhon_ingest", help="ingest account (default nakhon_ingest)")
    bi.add_argument("--observer-user", default="nakhon_observer", help="read-only observer account (default nakhon_observer)")
    bi.add_argument("--force", action="store_true", help="replace an existing file (every device account in it is lost)")
    bi.add_argument("--keep", action="store_true", help="leave an existing file as it is and succeed (a start-up step)")
    bi.add_argument("--from-env", action="store_true",
                    help="passwords from " + ", ".join(BROKER_SECRET_ENV.values()) + " instead of new random ones (nothing printed)")
    bi.set_defaults(func=cmd_broker_init)

    bu = sub.add_parser("broker-upgrade",
                        help="bring a running broker's roles up to this version: missing platform roles and the ACL entries older "
                             "versions did not give (ingest marks, device ota/stored/firmware); adds only, never removes")
    bu.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each batch of broker commands (default 60)")
    bu.set_defaults(func=cmd_broker_upgrade)

