"""Scenarios 11-12: intruders at the broker and at the API.

11 runs the secured broker (dynamic-security plugin, no anonymous access, a TLS
listener with a CA made here) with provisioned devices and a real ingest, and
tries every way in that a device or a stranger has. 12 runs the API as a real
uvicorn process and tries keys, scopes, injection through every parameter of
the OpenAPI document, and a flood from one client.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt

from nakhon.verify.report import Row, Size
from nakhon.verify.rig import MqttDevice, Stack, make_certs, say
from nakhon.verify.scenarios import register


def _reading(ts: float, seq: int, pm25: float) -> bytes:
    return json.dumps({"v": 1, "ts": ts, "seq": seq, "m": {"pm25": pm25}}).encode()


@register(11, "devices and strangers at the secured broker: other topics, other client ids, anonymous, wrong password, untrusted TLS")
def broker_intruders(root: Path, size: Size) -> Row:
    row = Row(11, "broker intruders", unit="attempts")
    with Stack(root, secure=True) as stack:
        port, tls_port, ca = stack.broker.port, stack.tls_port, stack.ca
        assert tls_port is not None and ca is not None and stack.ingest is not None
        a, b, p = ("chiang_mai", "cm-sec-001"), ("chiang_mai", "cm-sec-002"), ("phuket", "pk-sec-001")
        pw = {dev: stack.provision(city, dev) for city, dev in (a, b, p)}
        gone = stack.provision("chiang_mai", "cm-sec-009")
        stack.dynsec().delete_device("cm-sec-009")  # revoked: its password must stop working
        rogue_ca, rogue_cert, rogue_key = make_certs(root / "rogue", cn="localhost")  # a CA nobody trusts, and a cert signed by it
        now = time.time()
        own = f"nakhon/v1/{a[0]}/{a[1]}/telemetry"
        outcomes: list[tuple[str, str, bool]] = []  # (attempt, what the broker said, let in?)

        # the control: the device itself, in plain MQTT and over TLS, is let in and lands
        dev = MqttDevice(port, a[1], a[1], pw[a[1]])
        control = [dev.accepted() and dev.publish(own, _reading(now - 2, 1, 11.0))]

        # publishing where it may not: another device, another city, a forged status, pushing config
        for topic in (f"nakhon/v1/{b[0]}/{b[1]}/telemetry", f"nakhon/v1/{b[0]}/{b[1]}/status", f"nakhon/v1/{p[0]}/{p[1]}/telemetry",
                      f"nakhon/v1/{p[0]}/{a[1]}/telemetry", f"nakhon/v1/{a[0]}/{a[1]}/config", f"nakhon/v1/{b[0]}/{b[1]}/config",
                      "$CONTROL/dynamic-security/v1", "nakhon/v1/chiang_mai/cm-sec-001/telemetry/x"):
            said = dev.publish(topic, _reading(now, 99, 999.0))
            outcomes.append((f"v5 publish to {topic}", said, said in ("Success", "No matching subscribers")))
        # reading what it may not
        for topic in (f"nakhon/v1/{b[0]}/{b[1]}/config", "#", "nakhon/v1/+/+/telemetry", "$SYS/#", "$CONTROL/dynamic-security/v1/#",
                      "$share/x/nakhon/v1/+/+/telemetry"):
            said = dev.subscribe(topic)[0]
            outcomes.append((f"subscribe {topic}", said, said.startswith("Granted")))
        dev.close()
        tls_dev = MqttDevice(tls_port, a[1], a[1], pw[a[1]], tls_ca=ca)  # same client id: after the plain session is closed
        control.append(tls_dev.accepted() and tls_dev.publish(own, _reading(now - 1, 2, 12.0)))
        tls_dev.close()
        # MQTT 3.1.1 has no negative PUBACK: the broker acknowledges and drops; storage says whether it was let in
        v3 = MqttDevice(port, a[1], a[1], pw[a[1]], protocol=mqtt.MQTTv311)
        v3_acked = 0
        if v3.accepted():
            for c, d in (b, p):
                said = v3.publish(f"nakhon/v1/{c}/{d}/telemetry", _reading(now, 98, 998.0))
                v3_acked += said != "no puback"
                outcomes.append((f"v3.1.1 publish to {c}/{d}", "PUBACK, dropped" if said != "no puback" else said, False))  # storage is the judge
        v3.close()

        # logging in as someone else, or as no one
        logins = [
            ("another device's client id", dict(client_id=b[1], username=a[1], password=pw[a[1]])),
            ("the ingest's client id (would kick the ingest off)", dict(client_id="nakhon-ingest-0", username=a[1], password=pw[a[1]])),
            ("the ingest's client id, anonymous", dict(client_id="nakhon-ingest-0")),
            ("anonymous", dict(client_id="stranger-01")),
            ("anonymous with an empty username", dict(client_id="stranger-02", username="", password="")),
            ("wrong password", dict(client_id=a[1], username=a[1], password=pw[a[1]][:-2] + "xx")),
            ("another device's password", dict(client_id=a[1], username=a[1], password=pw[b[1]])),
            ("no password", dict(client_id=a[1], username=a[1])),
            ("the admin account, guessed password", dict(client_id="nakhon-admin-x", username="nakhon-admin", password="admin")),
            ("revoked device", dict(client_id="cm-sec-009", username="cm-sec-009", password=gone)),
        ]
        for what, kw in logins:
            for label, extra in (("", {}), (" over TLS", {"tls": True})):
                d = MqttDevice(tls_port if extra else port, kw["client_id"], kw.get("username"), kw.get("password"), tls_ca=ca if extra else None)
                ok = d.accepted()
                outcomes.append((what + label, d.error or d.reason or "no CONNACK", ok))
                d.close()
        # TLS that must not complete: trusting a rogue CA (a man in the middle's view), a wrong host name,
        # and a client certificate from the rogue CA (client certs are not how devices log in: still needs a password)
        for what, d in (
            ("TLS, client trusts another CA", MqttDevice(tls_port, a[1], a[1], pw[a[1]], tls_ca=rogue_ca)),
            ("TLS, client cert from an untrusted CA, no password", _with_client_cert(tls_port, ca, rogue_cert, rogue_key, None, None)),
            ("TLS, client cert from an untrusted CA, wrong password", _with_client_cert(tls_port, ca, rogue_cert, rogue_key, a[1], "nope")),
            ("TLS, certificate for another host name", _by_address(tls_port, ca, a[1], pw[a[1]])),
            ("plain MQTT to the TLS port", MqttDevice(tls_port, a[1], a[1], pw[a[1]])),
        ):
            ok = d.accepted(5)
            outcomes.append((what, d.error or d.reason or "no CONNACK", ok))
            d.close()

        say(f"{len(outcomes)} intrusion attempts made; checking what reached the ingest and storage")
        stack.settled(2, timeout=30)
        time.sleep(1.0)
        rows = stack.db.rows('SELECT count("pm25") FROM "raw"."air" GROUP BY "device"')
        stored = {r["device"]: int(r["count"]) for r in rows}
        dead = stack.dead_letters()
        ingest_log = stack.ingest.log_path.read_text()
        ingest_kicked = ingest_log.count('"msg":"disconnected from broker') > 0
    let_in = [o for o in outcomes if o[2]]
    landed_bad = sum(n for d, n in stored.items() if d != a[1]) + max(0, stored.get(a[1], 0) - 2)
    row.sent = len(outcomes) + 2
    row.stored = sum(stored.values())
    row.rejected = len(outcomes) - len(let_in)
    row.accepted_bad = len(let_in) + landed_bad + (1 if ingest_kicked else 0)
    row.lost = 2 - min(2, stored.get(a[1], 0))
    said = Counter(o[1].split(":")[0][:60] for o in outcomes)
    row.figures = {
        "let in": str(len(let_in)),
        "landed from intruders": str(landed_bad),
        "v3.1.1 forged publishes acked then dropped": f"{v3_acked}",
        "dead letters": str(len(dead)),
        "ingest kicked off": "yes" if ingest_kicked else "no",
        "control (plain, TLS) stored": f"{stored.get(a[1], 0)}/2",
        "answers": ", ".join(f"{k} {n}" for k, n in said.most_common()),
    }
    row.ok = not let_in and landed_bad == 0 and not ingest_kicked and all(c in ("Success", "No matching subscribers") for c in control) and \
        stored.get(a[1], 0) == 2
    row.note = "Let in: " + ("; ".join(f"{w} ({s})" for w, s, _ in let_in) if let_in else "nothing") + \
        ". MQTT 3.1.1 publishers get a PUBACK for a refused publish (the protocol has no negative PUBACK); nothing of it reached storage."
    return row


def _by_address(port: int, ca: Path, username: str, password: str) -> MqttDevice:
    """TLS to 127.0.0.1 while the broker's certificate names `localhost`: host name verification must fail."""
    d = MqttDevice(port, username, username, password, tls_ca=ca, connect=False)
    d.host = "127.0.0.1"
    d.start()
    return d


def _with_client_cert(port: int, ca: Path, cert: Path, key: Path, username: str | None, password: str | None) -> MqttDevice:
    d = MqttDevice(port, "cert-holder", username, password, connect=False)
    d.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
    d.host = "localhost"
    d.start()
    return d
