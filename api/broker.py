"""Device credentials in the real Mosquitto, through its dynamic-security plugin.

Why the plugin and not password/ACL files with a SIGHUP: the API then needs
no shared file system with the broker and no right to signal it (it works
the same across containers); a change takes effect at once and is atomic;
deleting a client disconnects it on the spot; and the plugin can pin a
client id per client, so a device's client id is forced to its username
without `use_username_as_clientid`, which would also force it on the ingest
workers and make them kick each other off. The broker stores the passwords
as salted PBKDF2-SHA512.

Each device gets a role of its own with exact topics (no `+`):
publish its `telemetry` and `status`, subscribe to and receive its `config`,
`stored` and `ota` (the firmware offer), and read the firmware files under
`nakhon/fw/#` (the same for every device: they hold no secret, and a device
checks each against its offer's SHA-256; only the platform may write there).
The default ACL access denies everything else. Platform accounts (provisioning, ingest, observer) have names outside the device-id
alphabet (contract/topics.py), so no device can ever be given one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from contract import topics

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
)
ADMIN_ROLE = "nakhon_admin"
INGEST_ROLE = "nakhon_ingest"
OBSERVER_ROLE = "nakhon_observer"
ALERTS_ROLE = "nakhon_alerts"


class BrokerError(RuntimeError):
    """The broker refused or did not answer a provisioning command."""


def new_password() -> str:
    return secrets.token_urlsafe(24)


def device_role(device: str) -> str:
    return f"device-{device}"


def device_acls(city: str, device: str) -> list[dict[str, Any]]:
    """Exact per-device entries: its own telemetry/status out, its own config, stored and ota in;
    the firmware files (read-only, shared)."""
    t, s, c, d, o = (topics.topic(city, device, ch) for ch in ("telemetry", "status", "config", "stored", "ota"))
    fw = f"{topics.FIRMWARE_PREFIX}/#"
    return [
        {"acltype": "publishClientSend", "topic": t, "allow": True},
        {"acltype": "publishClientSend", "topic": s, "allow": True},
        {"acltype": "subscribeLiteral", "topic": c, "allow": True},
        {"acltype": "publishClientReceive", "topic": c, "allow": True},
        {"acltype": "subscribeLiteral", "topic": d, "allow": True},
        {"acltype": "publishClientReceive", "topic": d, "allow": True},
        {"acltype": "subscribeLiteral", "topic": o, "allow": True},
        {"acltype": "publishClientReceive", "topic": o, "allow": True},
        {"acltype": "subscribePattern", "topic": fw, "allow": True},
        {"acltype": "publishClientReceive", "topic": fw, "allow": True},
    ]


def _acl(kind: str, topic: str) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "allow": True}


def platform_roles() -> list[dict[str, Any]]:
    """The admin (provisioning, config push), ingest (read telemetry, status, $SYS; confirm `stored`)
    and observer (read the whole stream, write nothing) roles."""
    control = CONTROL_TOPIC + "/#"
    admin = [_acl("publishClientSend", control), _acl("publishClientReceive", control), _acl("subscribePattern", control),
             _acl("publishClientSend", f"{topics.PREFIX}/+/+/config"), _acl("publishClientSend", f"{topics.PREFIX}/+/+/ota"),
             _acl("publishClientSend", f"{topics.FIRMWARE_PREFIX}/#")]
    ingest = []
    for pattern in (topics.TELEMETRY_FILTER, topics.STATUS_FILTER, "$SYS/#"):
        ingest += [_acl("subscribePattern", pattern), _acl("publishClientReceive", pattern)]
        if not pattern.startswith("$"):
            ingest.append(_acl("subscribePattern", f"$share/+/{pattern}"))
    ingest.append(_acl("publishClientSend", f"{topics.PREFIX}/+/+/stored"))
    # the workers' marks to their catch session (ingest/catch.py)
    mark = topics.INGEST_MARK_TOPIC
    ingest += [_acl("publishClientSend", mark), _acl("subscribeLiteral", mark), _acl("publishClientReceive", mark)]
    everything = f"{topics.PREFIX}/#"
    observer = [_acl("subscribePattern", everything), _acl("publishClientReceive", everything)]
    # the alert evaluator: reads telemetry (its own persistent session, not the ingest's share), publishes alert events
    alerts = [_acl("subscribePattern", topics.TELEMETRY_FILTER), _acl("publishClientReceive", topics.TELEMETRY_FILTER),
              _acl("publishClientSend", f"{topics.PREFIX}/+/alerts")]
    return [{"rolename": ADMIN_ROLE, "acls": admin}, {"rolename": INGEST_ROLE, "acls": ingest}, {"rolename": OBSERVER_ROLE, "acls": observer},
            {"rolename": ALERTS_ROLE, "acls": alerts}]


def _pbkdf2(password: str, iterations: int = 101) -> dict[str, Any]:
    """The plugin's own password format: PBKDF2-HMAC-SHA512, 12-byte salt, 64-byte hash."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return {"password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(), "iterations": iterations}


def bootstrap_config(admin: tuple[str, str], ingest: tuple[str, str], observer: tuple[str, str] | None = None,
                     alerts: tuple[str, str] | None = None) -> dict[str, Any]:
    """The plugin's initial JSON: default-deny, an admin client, an ingest client and (optionally) an observer and the alert evaluator."""
    for name, _ in (admin, ingest, *([observer] if observer else []), *([alerts] if alerts else [])):
        if not topics.is_service_id(name):
            raise ValueError(f"platform account {name!r} could be a device id: use a name with an underscore, e.g. {topics.INGEST_USER!r}")
    clients = [
        {"username": admin[0], "textname": "Nakhon provisioning", "roles": [{"rolename": ADMIN_ROLE}], **_pbkdf2(admin[1])},
        {"username": ingest[0], "textname": "Nakhon ingest", "roles": [{"rolename": INGEST_ROLE}], **_pbkdf2(ingest[1])},
    ]
    if observer:
        clients.append({"username": observer[0], "textname": "Nakhon observer (read-only)", "roles": [{"rolename": OBSERVER_ROLE}],
                        **_pbkdf2(observer[1])})
    if alerts:
        clients.append(alerts_client(*alerts))
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False, "subscribe": False, "unsubscribe": True},
        "clients": clients,
        "groups": [],
        "roles": platform_roles(),
    }


def alerts_client(username: str, password: str) -> dict[str, Any]:
    """The alert evaluator's account; its client id is forced to its username, as a device's is."""
    return {"username": username, "clientid": username, "textname": "Nakhon alert evaluator", "roles": [{"rolename": ALERTS_ROLE}],
            **_pbkdf2(password)}


def ensure_alerts_account(dynsec: DynSec, username: str, password: str) -> None:
    """On a broker set up before the alert evaluator existed: its role and account, made through the admin API. Idempotent."""
    role = next(r for r in platform_roles() if r["rolename"] == ALERTS_ROLE)
    dynsec.run([{"command": "createRole", "rolename": ALERTS_ROLE, "acls": role["acls"]},
                {"command": "createClient", "username": username, "password": password, "clientid": username,
                 "roles": [{"rolename": ALERTS_ROLE}]}], allow=("already exists",))
    dynsec.run([{"command": "setClientPassword", "username": username, "password": password}])


# --- bringing roles up to date on a broker set up by an older version ------------------
DEVICE_ROLE_PREFIX = "device-"
ROLE_PAGE = 1000  # roles or clients per list answer
COMMAND_BATCH = 200  # commands per control message (each change is saved by the broker at once)


@dataclass
class RoleUpgrade:
    """What `ensure_roles` changed: roles created, ACL entries added, device roles checked, clients
    disconnected to take up their changed role, and the device roles it left alone because no topic
    of theirs names the device's city."""

    roles_created: int = 0
    acls_added: int = 0
    device_roles: int = 0
    clients_reconnected: int = 0
    roles_changed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def missing_acls(have: list[dict[str, Any]], want: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries of `want` whose (acltype, topic) `have` lacks. An entry the role has, allowed or
    denied, is left as it is (the broker keeps one per type and topic; an operator may have set it)."""
    present = {(a["acltype"], a["topic"]) for a in have}
    return [a for a in want if (a["acltype"], a["topic"]) not in present]


def device_city(rolename: str, acls: list[dict[str, Any]]) -> str | None:
    """The city of a device role, read from its own topics (`nakhon/v1/{city}/{device}/...`);
    None when it is not a device role or its topics name no single city."""
    device = rolename.removeprefix(DEVICE_ROLE_PREFIX)
    if not rolename.startswith(DEVICE_ROLE_PREFIX) or not topics.is_device_id(device):
        return None
    cities = set()
    for a in acls:
        try:
            t = topics.parse_topic(a["topic"])
        except topics.TopicError:
            continue
        if t.device == device:
            cities.add(t.city)
    return cities.pop() if len(cities) == 1 else None


def role_upgrade(roles: dict[str, list[dict[str, Any]]]) -> tuple[list[dict[str, Any]], RoleUpgrade]:
    """The dynamic-security commands that bring `roles` (name -> ACL entries, as the broker lists
    them) up to this version: missing platform roles created, missing entries added to platform and
    device roles. Nothing is removed."""
    commands: list[dict[str, Any]] = []
    result = RoleUpgrade()
    wanted = [(r["rolename"], r["acls"]) for r in platform_roles()]
    for name in sorted(n for n in roles if n.startswith(DEVICE_ROLE_PREFIX)):
        city = device_city(name, roles[name])
        if city is None:
            result.skipped.append(name)
            continue
        result.device_roles += 1
        wanted.append((name, device_acls(city, name.removeprefix(DEVICE_ROLE_PREFIX))))
    for name, acls in wanted:
        if name not in roles:
            commands.append({"command": "createRole", "rolename": name, "acls": acls})
            result.roles_created += 1
            result.roles_changed.append(name)
            continue
        lacking = missing_acls(roles[name], acls)
        commands += [{"command": "addRoleACL", "rolename": name, **a} for a in lacking]
        result.acls_added += len(lacking)
        if lacking:
            result.roles_changed.append(name)
    return commands, result


def _list_all(dynsec: DynSec, command: str, key: str) -> list[dict[str, Any]]:
    """Every role or client the broker has (`listRoles`/`listClients`, verbose), a page per round trip."""
    found: list[dict[str, Any]] = []
    while True:
        data = dynsec.run([{"command": command, "verbose": True, "count": ROLE_PAGE, "offset": len(found)}])[0].get("data", {})
        page = data.get(key, [])
        found += page
        if not page or len(found) >= int(data.get("totalCount", 0)):
            return found


def _run_batched(dynsec: DynSec, commands: list[dict[str, Any]], allow: tuple[str, ...] = ()) -> None:
    for i in range(0, len(commands), COMMAND_BATCH):
        dynsec.run(commands[i : i + COMMAND_BATCH], allow=allow)


def ensure_roles(dynsec: DynSec) -> RoleUpgrade:
    """On a broker set up by an older version: every platform role and every device role brought up
    to what this version gives a new one (`platform_roles`, `device_acls`), through the admin API.
    Only what is missing is added, so a second run changes nothing. The clients of a changed role
    (but the admin account running this) are disconnected once, as a password change does: a
    subscription the broker refused at their last connect is allowed when they come back."""
    roles = {r["rolename"]: r.get("acls", []) for r in _list_all(dynsec, "listRoles", "roles")}
    commands, result = role_upgrade(roles)
    _run_batched(dynsec, commands, allow=("already exists",))  # a provisioning meanwhile is no error
    changed = set(result.roles_changed)
    if changed:
        kick = [c["username"] for c in _list_all(dynsec, "listClients", "clients")
                if c["username"] != dynsec.username and changed & {r["rolename"] for r in c.get("roles", [])}]
        _run_batched(dynsec, [{"command": cmd, "username": u} for u in kick for cmd in ("disableClient", "enableClient")],
                     allow=("not found",))
        result.clients_reconnected = len(kick)
    return result


def write_bootstrap(path: Path, admin: tuple[str, str], ingest: tuple[str, str], observer: tuple[str, str] | None = None,
                    alerts: tuple[str, str] | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(bootstrap_config(admin, ingest, observer, alerts), indent=2))
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def plugin_path() -> str:
    for p in PLUGIN_PATHS:
        if Path(p).exists():
            return p
    raise BrokerError("mosquitto_dynamic_security.so not found: install the mosquitto package (2.0 or later)")


def mosquitto_config(dynsec_file: Path) -> str:
    """The mosquitto.conf lines that load the plugin with `dynsec_file`."""
    return f"plugin {plugin_path()}\nplugin_opt_config_file {Path(dynsec_file).resolve()}\n"


class DynSec:
    """Runs dynamic-security commands: one short MQTT connection per call."""

    def __init__(self, host: str, port: int, username: str, password: str, tls: bool = False,
                 ca_file: str | None = None, timeout: float = 10.0) -> None:
        self.host, self.port, self.username, self.password = host, port, username, password
        self.tls, self.ca_file, self.timeout = tls, ca_file, timeout
        self._lock = threading.Lock()  # one command batch at a time keeps responses unambiguous

    def _client(self) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{topics.API_USER}_{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set(ca_certs=self.ca_file)
        return client

    @contextmanager
    def _connected(self, client: mqtt.Client) -> Iterator[None]:
        """One short connection, one at a time, closed whatever happens."""
        with self._lock:
            try:
                client.connect(self.host, self.port, keepalive=30)
            except OSError as exc:
                raise BrokerError(f"broker unreachable at {self.host}:{self.port}: {exc}") from None
            client.loop_start()
            try:
                yield
            finally:
                client.disconnect()
                client.loop_stop()

    def run(self, commands: list[dict[str, Any]], allow: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Send commands; raises BrokerError on any error not in `allow` (matched as a substring)."""
        tag = uuid.uuid4().hex
        for i, c in enumerate(commands):
            c["correlationData"] = f"{tag}-{i}"
        done = threading.Event()
        connected = threading.Event()
        answers: list[dict[str, Any]] = []
        failure: list[str] = []

        def on_connect(client: mqtt.Client, _u: object, _f: object, rc: mqtt.ReasonCode, _p: object) -> None:
            if rc.is_failure:
                failure.append(f"broker refused the admin login: {rc}")
                done.set()
                return
            client.subscribe(RESPONSE_TOPIC, 1)

        def on_subscribe(client: mqtt.Client, _u: object, _mid: int, codes: list[mqtt.ReasonCode], _p: object) -> None:
            if any(c.is_failure for c in codes):
                failure.append("admin may not read the dynamic-security responses")
                done.set()
                return
            connected.set()
            client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)

        def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            try:
                doc = json.loads(msg.payload)
            except ValueError:
                return
            for r in doc.get("responses", []):
                if str(r.get("correlationData", "")).startswith(tag):
                    answers.append(r)
            if len(answers) >= len(commands):
                done.set()

        client = self._client()
        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        with self._connected(client):
            if not done.wait(self.timeout):
                raise BrokerError("the broker did not answer the provisioning command in time")
        if failure:
            raise BrokerError(failure[0])
        errors = [str(r["error"]) for r in answers if r.get("error") and not any(a in str(r["error"]) for a in allow)]
        if errors:
            raise BrokerError("; ".join(errors))
        return answers

    # --- what provisioning needs --------------------------------------------
    def create_device(self, city: str, device: str, password: str) -> None:
        self.create_devices([(city, device, password)])

    def create_devices(self, devices: list[tuple[str, str, str]]) -> None:
        """(city, device, password) each: a role with its exact topics, and a client pinned to its id."""
        commands: list[dict[str, Any]] = []
        for city, device, password in devices:
            if not topics.is_device_id(device) or topics.reserved_device_id(device):
                raise BrokerError(f"{device!r} is not a device id a device may have")
            role = device_role(device)
            commands += [
                {"command": "createRole", "rolename": role, "acls": device_acls(city, device)},
                {"command": "createClient", "username": device, "password": password, "clientid": device,
                 "roles": [{"rolename": role}], "textname": f"{city} sensor"},
            ]
        for i in range(0, len(commands), 200):  # keep each control message well under the broker's packet limit
            self.run(commands[i : i + 200])

    def publish_config(self, topic: str, payload: bytes) -> None:
        """A retained QoS 1 publish on a device's config topic, confirmed by the broker's PUBACK."""
        client = self._client()
        acked = threading.Event()
        reason: list[mqtt.ReasonCode] = []

        def on_publish(_c: mqtt.Client, _u: object, _mid: int, rc: mqtt.ReasonCode, _p: object) -> None:
            reason.append(rc)
            acked.set()

        client.on_publish = on_publish
        with self._connected(client):
            client.publish(topic, payload, qos=1, retain=True)
            if not acked.wait(self.timeout):
                raise BrokerError("the broker did not acknowledge the config in time")
            if reason[0].is_failure:
                raise BrokerError(f"the broker refused the config: {reason[0]}")

    def publish_retained(self, messages: list[tuple[str, bytes]]) -> None:
        """Retained QoS 1 publishes (firmware chunks, then offers) on one connection, each
        confirmed by the broker's PUBACK, in order."""
        client = self._client()
        lock = threading.Lock()
        done = threading.Event()
        acked: list[int] = []
        refused: list[str] = []

        def on_publish(_c: mqtt.Client, _u: object, _mid: int, rc: mqtt.ReasonCode, _p: object) -> None:
            with lock:
                acked.append(_mid)
                if rc.is_failure:
                    refused.append(str(rc))
                if len(acked) >= len(messages):
                    done.set()

        client.on_publish = on_publish
        if not messages:
            return
        with self._connected(client):
            for t, payload in messages:
                client.publish(t, payload, qos=1, retain=True)
            if not done.wait(self.timeout + len(messages) / 50):
                raise BrokerError(f"the broker acknowledged {len(acked)} of {len(messages)} messages in time")
        if refused:
            raise BrokerError(f"the broker refused {len(refused)} message(s): {refused[0]}")

    def set_password(self, device: str, password: str) -> None:
        # Kick the live session too: whoever held the old secret is out at once.
        self.run([{"command": "setClientPassword", "username": device, "password": password},
                  {"command": "disableClient", "username": device},
                  {"command": "enableClient", "username": device}])

    def delete_device(self, device: str) -> None:
        """Delete the client (the broker disconnects it at once) and its role."""
        self.run([{"command": "deleteClient", "username": device}, {"command": "deleteRole", "rolename": device_role(device)}],
                 allow=("not found",))
