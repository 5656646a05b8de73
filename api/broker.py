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
