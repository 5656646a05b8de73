"""A rotated InfluxDB password: the ingest keeps every batch while refused and takes the new secret up without a restart.

What an operator does: change the user's password in InfluxDB and put the
new one in the file named by NAKHON_INFLUX_PASSWORD_FILE (in either order).
The ingest reads the file again whenever InfluxDB refuses its credentials
(at most once a second) and on SIGHUP. Unit tier: the worker against the
InfluxDB stub with authentication on; the real thing is `nakhon verify`
scenario 20 (tests/verify/test_operations.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from contract.payload import encode_reading
from contract.settings import ConfigError, Settings, load_settings
from ingest.deadletter import read_all
from ingest.worker import Worker
from nakhon.procs import settings_env
from tests.helpers import wait_until
from tests.influx_stub import InfluxStub

pytestmark = pytest.mark.unit

USER = "nakhon_ingest"
TOPIC = "nakhon/v1/phuket/pk-air-001/telemetry"
T0 = int(time.time()) - 3600


def _settings(tmp: Path, url: str, secret: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "influx_url": url,
        "data_dir": tmp,
        "mqtt_port": 1,
        "influx_timeout_s": 2.0,
        "ingest_batch_ms": 20,
        "influx_username": USER,
        "influx_password_file": secret,
    }
    return load_settings(**(base | kw))


def _pubs(first: int, n: int) -> list[tuple[str, bytes, int]]:
    return [(TOPIC, encode_reading(T0 + k, k, {"pm25": 10.0}), k + 1) for k in range(first, first + n)]


def _air(stub: InfluxStub) -> int:
    return sum(p.startswith("air") for p in stub.points())


def test_the_password_file_is_read_at_start_and_wrong_ones_fail_saying_what_to_fix(tmp_path: Path) -> None:
    secret = tmp_path / "influx-password"
    secret.write_text("s3cret-one\n")
    s = load_settings(influx_username=USER, influx_password_file=secret)
    assert s.influx_password == "s3cret-one"
    env = settings_env(s)  # a child process reads the file too: the secret never goes into an environment
    assert "NAKHON_INFLUX_PASSWORD" not in env and env["NAKHON_INFLUX_PASSWORD_FILE"] == str(secret.resolve())
    with pytest.raises(ConfigError, match="not both"):
        load_settings(influx_username=USER, influx_password="x", influx_password_file=secret)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(influx_username=USER, influx_password_file=tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_settings(influx_username=USER, influx_password_file=tmp_path / "empty")


def test_a_rotated_password_is_taken_up_from_its_file_and_nothing_is_lost(tmp_path: Path) -> None:
    secret = tmp_path / "influx-password"
    secret.write_text("old-password\n")
    with InfluxStub() as stub:
        stub.state.users, stub.state.writers = {USER: "old-password"}, {USER}
        w = Worker(_settings(tmp_path / "data", stub.url, secret))
        w._on_publishes(_pubs(0, 10), 1)
        w.flush()
        assert _air(stub) == 10
        stub.state.users = {USER: "new-password"}  # the operator changes it in InfluxDB first
        w._on_publishes(_pubs(10, 10), 1)
        w.flush()  # refused: kept in the spool, acknowledged (durable), not dead-lettered
        assert _air(stub) == 10 and len(w.spool) and w.stats.influx_refused >= 1
        assert w.writer.drain_spool() is False and w.credentials_reloaded == 0  # the file still holds the old one
        secret.write_text("new-password\n")  # ... then the secret the ingest reads
        wait_until(w.writer.drain_spool, 10, what="the spool drained with the new password")  # read again at a refusal
        assert _air(stub) == 20 and w.credentials_reloaded == 1
        w.report()  # the self-metrics client logs in with the new password too
        assert any(p.startswith("ingest_stats") for p in stub.points())
        w.dead.close()
        assert list(read_all(tmp_path / "data" / "deadletter")) == []


def test_sighup_reads_the_file_again_before_anything_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "influx-password"
    secret.write_text("old-password")
    with InfluxStub() as stub:
        stub.state.users, stub.state.writers = {USER: "old-password"}, {USER}
        w = Worker(_settings(tmp_path / "data", stub.url, secret))
        assert w.reload_credentials("SIGHUP") is False  # unchanged
        secret.write_text("new-password")  # the new secret first, then InfluxDB
        assert w.reload_credentials("SIGHUP") is True
        stub.state.users = {USER: "new-password"}
        w._on_publishes(_pubs(0, 5), 1)
        w.flush()
        assert _air(stub) == 5 and not len(w.spool) and w.stats.influx_refused == 0


def test_between_sighup_and_influxdb_the_password_before_is_used_and_nothing_is_refused(tmp_path: Path) -> None:
    """The file first, SIGHUP, then InfluxDB: until InfluxDB has the new password, writes
    go on with the one before it (one rotation holds both), and none is refused."""
    secret = tmp_path / "influx-password"
    secret.write_text("old-password")
    with InfluxStub() as stub:
        stub.state.users, stub.state.writers = {USER: "old-password"}, {USER}
        w = Worker(_settings(tmp_path / "data", stub.url, secret))
        secret.write_text("new-password")
        assert w.reload_credentials("SIGHUP") is True
        w._on_publishes(_pubs(0, 5), 1)  # InfluxDB does not have the new one yet
        w.flush()
        assert _air(stub) == 5 and not len(w.spool) and w.stats.influx_refused == 0
        stub.state.users = {USER: "new-password"}  # now it does, at once after the write before
        w._on_publishes(_pubs(5, 5), 1)
        w.flush()
        assert _air(stub) == 10 and not len(w.spool) and w.stats.influx_refused == 0
        w.dead.close()
        assert list(read_all(tmp_path / "data" / "deadletter")) == []


def test_a_sighup_just_after_a_refusal_still_goes_back_at_the_first_refusal(tmp_path: Path) -> None:
    """Refusals read the file at most once a second; a SIGHUP starts a new rotation, whose
    first refusal is answered at once (else that write was refused and spooled)."""
    secret = tmp_path / "influx-password"
    secret.write_text("old-password")
    with InfluxStub() as stub:
        stub.state.users, stub.state.writers = {USER: "old-password"}, {USER}
        w = Worker(_settings(tmp_path / "data", stub.url, secret))
        assert w.reload_credentials("refused") is False  # a refusal a moment ago read the file
        secret.write_text("new-password")
        assert w.reload_credentials("SIGHUP") is True
        w._on_publishes(_pubs(0, 5), 1)
        w.flush()
        assert _air(stub) == 5 and not len(w.spool) and w.stats.influx_refused == 0
