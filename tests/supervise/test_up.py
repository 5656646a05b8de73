"""`nakhon up` as a user starts it: kill each service it runs, one at a time, and see it come back by itself
with every reading published meanwhile stored exactly once; a service that crashes at start-up is given up
on loudly while the rest runs on; Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import secrets as secrets_mod
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from api.broker import DynSec
from contract import topics
from contract.influx import Influx
from harness.verify.stream import Stream, tally, wait_stored
from nakhon import accounts
from nakhon.leftovers import alive
from nakhon.servers import free_port
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

SERVICES = ("mosquitto", "influxdb", "ingest", "alerts", "api")


class Up:
    """`nakhon up --no-fleet` in its own session, on free ports, logging to a file."""

    def __init__(self, root: Path, *args: str, **env: str) -> None:
        self.root = root
        self.mqtt_port, self.influx_port, self.api_port = free_port(), free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NAKHON_") or k in ("NAKHON_MOSQUITTO_BIN", "NAKHON_INFLUXD_BIN")}
        self.env.update(
            NAKHON_MQTT_PORT=str(self.mqtt_port),
            NAKHON_INFLUX_URL=f"http://127.0.0.1:{self.influx_port}",
            NAKHON_API_PORT=str(self.api_port),
            NAKHON_INGEST_STATS_INTERVAL_S="1",
            **env,
        )
        self.log_path = root / "up.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nakhon", "up", "--root", str(root / "up"), "--no-fleet", *args],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.pids: set[int] = set()

    def status(self) -> dict[str, dict[str, Any]]:
        """The services as this `nakhon up` last wrote them (nothing while the file is another's)."""
        path = self.root / "up" / "status.json"
        if not path.exists():
            return {}
        doc = orjson.loads(path.read_bytes())
        if doc["pid"] != self.proc.pid:
            return {}
        entries = {e["name"]: e for e in doc["services"]}
        self.pids |= {int(e["pid"]) for e in entries.values() if e.get("pid")}
        return entries

    def written(self) -> float:
        """When nakhon up last wrote its status file."""
        return float(orjson.loads((self.root / "up" / "status.json").read_bytes())["ts"])

    def well(self, name: str, not_pid: int | None = None) -> bool:
        e = self.status().get(name)
        return bool(e and e["state"] == "running" and e["health"] == "ok" and e["pid"] != not_pid)

    def records(self, msg: str) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_bytes().splitlines():
            if raw.startswith(b"{"):
                doc = orjson.loads(raw)
                if doc.get("msg") == msg:
                    out.append(doc)
        return out

    def interrupt(self, timeout: float = 120.0) -> int:
        """Ctrl-C."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.interrupt()


@pytest.fixture
def up(workdir: Path) -> Iterator[Any]:
    made: list[Up] = []

    def start(*args: str, **env: str) -> Up:
        u = Up(workdir, *args, **env)
        made.append(u)
        return u

    yield start
    for u in made:
        u.close()


def gone(pid: int) -> bool:
    return not alive(pid)


def harness_publisher(port: int, admin_password: str) -> tuple[str, str]:
    """An account that may publish any device's telemetry (and nothing else), made through the broker's
    dynamic-security API as an operator could: the stream stands in for many devices on a few connections."""
    password = secrets_mod.token_urlsafe(16)
    DynSec("127.0.0.1", port, accounts.BROKER_ADMIN, admin_password).run([
        {"command": "createRole", "rolename": "harness_stream",
         "acls": [{"acltype": "publishClientSend", "topic": topics.TELEMETRY_FILTER, "allow": True},
                  # and hear the platform's confirmations, as each device hears its own (store-and-forward)
                  {"acltype": "subscribePattern", "topic": f"{topics.PREFIX}/+/+/stored", "allow": True},
                  {"acltype": "publishClientReceive", "topic": f"{topics.PREFIX}/+/+/stored", "allow": True}]},
        {"command": "createClient", "username": "harness_stream", "password": password, "roles": [{"rolename": "harness_stream"}]},
    ])
    return "harness_stream", password


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def test_every_service_killed_comes_back_and_every_reading_is_stored_once(up: Any) -> None:
    u = up("--backoff-min", "0.5")
    wait_until(lambda: all(u.well(s) for s in SERVICES), 120, what="nakhon up with every service healthy")
    # nakhon up's broker has no anonymous access and InfluxDB wants a user: the operator's accounts, from its secrets
    secrets = json.loads((u.root / "up" / "secrets.json").read_text())
    publisher = harness_publisher(u.mqtt_port, secrets["broker_admin"])
    # as devices do: keep each reading until the platform confirms it stored, so a broker killed between its
    # saves (autosave_interval) loses nothing that is not sent again
    stream = Stream(u.mqtt_port, 150, prefix="upkill", devices=60, connections=2, username=publisher[0], password=publisher[1],
                    confirm=True).start()
    db = Influx(f"http://127.0.0.1:{u.influx_port}", username=accounts.INFLUX_ADMIN, password=secrets["influx_admin"])
    try:
        for name in ("ingest", "alerts", "api", "mosquitto", "influxdb"):
            sent = stream.sent
            wait_until(lambda sent=sent: stream.sent >= sent + 300, 60, what="readings streaming before the kill")
            pid = int(u.status()[name]["pid"])
            os.kill(pid, signal.SIGKILL)  # what `kill -9` does to it
            wait_until(lambda name=name, pid=pid: u.well(name, not_pid=pid), 120, what=f"{name} back by itself")
            wait_until(lambda: u.well("ingest") and u.well("api"), 120, what=f"readings flowing again after {name} was killed")
            assert u.status()[name]["restarts"] == 1
        stream.stop()
        assert stream.settle() == 0
        assert stream.settle_confirmed(300) == 0
        assert wait_stored(db, stream, stream.mark(), 180, what="every reading") is not None
        t = tally(db, stream)
    finally:
        stream.close()
        db.close()
    assert t.sent > 1200
    assert (t.lost, t.duplicated, t.unexpected) == (0, 0, 0), t
    assert t.stored == t.sent
    died = u.records("service died")
    assert sorted(d["service"] for d in died) == sorted(SERVICES)
    assert {d["how"] for d in died} == {"killed by SIGKILL"}
    assert not u.records("service keeps dying; not restarting")
    pids = set(u.pids)
    assert len(pids) >= 8  # every service's first and second process
    assert u.interrupt() == 0
    wait_until(lambda: all(gone(p) for p in pids), 30, what="every process nakhon up started to be gone")
    assert not any(listening(p) for p in (u.mqtt_port, u.influx_port, u.api_port))
    assert {e["state"] for e in u.status().values()} == {"stopped"}
    out = subprocess.run([sys.executable, "-m", "nakhon", "status", "--root", str(u.root / "up")], env=u.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and out.stdout.startswith("nakhon up is not running")


def test_a_service_that_crashes_at_start_up_is_reported_and_does_not_stop_the_rest(up: Any) -> None:
    # the API cannot bind the address it is given: it dies at start-up, every time
    u = up("--backoff-min", "0.1", "--backoff-max", "0.5", NAKHON_API_HOST="192.0.2.1")
    wait_until(lambda: u.records("service keeps dying; not restarting"), 120, what="the API to be given up on")
    [gave_up] = u.records("service keeps dying; not restarting")
    assert gave_up["level"] == "critical" and gave_up["service"] == "api" and gave_up["deaths_in_a_row"] == 10
    assert "cannot assign requested address" in gave_up["last_error"].lower()
    died = [d for d in u.records("service died") if d["service"] == "api"]
    assert len(died) == 10 and {d["how"] for d in died} == {"exit code 3"}
    # the rest runs on: readings still flow through the ingest
    wait_until(lambda: u.well("ingest") and u.well("mosquitto") and u.well("influxdb"), 60, what="the other services healthy")
    api = wait_until(lambda: (e := u.status()["api"])["state"] == "failed" and e, 30, what="the status file to show the API failed")
    assert "cannot assign requested address" in api["last_error"].lower()
    # it does not spin: nothing more is started while it stays given up (three more status rounds)
    seen = u.written()
    wait_until(lambda: u.written() >= seen + 5, 30, what="nakhon up to write its status again")
    out = subprocess.run([sys.executable, "-m", "nakhon", "status", "--root", str(u.root / "up")], env=u.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "api        failed" in out.stdout and "last error:" in out.stdout and "ingest     running" in out.stdout
    assert len([d for d in u.records("service died") if d["service"] == "api"]) == 10
    # on request: every line printed (SIGUSR1), and a service given up on tried again (SIGHUP)
    os.kill(u.proc.pid, signal.SIGUSR1)
    wait_until(lambda: re.search(rb"^  api +failed .*last error: .*cannot assign requested address", u.log_path.read_bytes(), re.M | re.I), 30,
               what="the status lines on SIGUSR1")
    assert re.search(rb"^  ingest +running +pid \d+ .*health ok", u.log_path.read_bytes(), re.M)
    os.kill(u.proc.pid, signal.SIGHUP)
    wait_until(lambda: len(u.records("service keeps dying; not restarting")) == 2, 60, what="the retried API to be given up on again")
    assert [r["services"] for r in u.records("retrying failed services")] == [["api"]]
    assert len([d for d in u.records("service died") if d["service"] == "api"]) == 20
    assert u.interrupt() == 0


def test_a_nakhon_up_killed_outright_leaves_nothing_behind_for_the_next(up: Any) -> None:
    first = up()
    wait_until(lambda: all(first.well(s) for s in SERVICES), 120, what="the first nakhon up healthy")
    left = {name: int(e["pid"]) for name, e in first.status().items()}
    first.proc.kill()  # a closed terminal, an OOM kill: no Ctrl-C, no clean-up
    first.proc.wait(30)
    assert not any(gone(p) for p in left.values())  # its services outlive it: they run in sessions of their own

    second = up()
    wait_until(lambda: all(second.well(s) for s in SERVICES), 120, what="the second nakhon up healthy")
    wait_until(lambda: all(gone(p) for p in left.values()), 30, what="the first one's services to be gone")
    [note] = second.records("stopping what a previous nakhon up left running")
    assert sorted(note["services"]) == sorted(f"{n} (pid {p})" for n, p in left.items())

    # a third on the same root while the second runs is refused, saying why
    out = subprocess.run([sys.executable, "-m", "nakhon", "up", "--root", str(second.root / "up"), "--no-fleet"], env=second.env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert f"nakhon up already runs on {(second.root / 'up').resolve()} (pid {second.proc.pid})" in out.stderr
    assert all(second.well(s) for s in SERVICES)
    assert second.interrupt() == 0
