"""`nakhon systemd`: units that systemd accepts, carry the hardening, and run the configuration `nakhon up` runs."""

from __future__ import annotations

import configparser
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from api.broker import write_bootstrap
from contract.settings import load_settings
from nakhon.servers import MOSQUITTO_BIN, Mosquitto, free_port, make_certs
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

DEBIAN_UNITS = Path("/lib/systemd/system")


@pytest.fixture
def written(tmp_path: Path) -> Path:
    out = subprocess.run(
        [sys.executable, "-m", "nakhon", "systemd", "write", "--root", str(tmp_path), "--workers", "2",
         "--nakhon-bin", str(Path(sys.executable).parent / "nakhon")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("wrote ") == 9
    return tmp_path


def unit(path: Path) -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser(strict=True, delimiters=("=",), comment_prefixes=("#",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(path.read_text())
    return cp


def test_units_pass_systemd_analyze_verify(written: Path) -> None:
    units = written / "etc/systemd/system"
    # the template as systemd instantiates it, and Debian's own units with our drop-ins next to them
    for i in range(2):
        shutil.copy(units / "nakhon-ingest@.service", units / f"nakhon-ingest@{i}.service")
    for name in ("mosquitto.service", "influxdb.service"):
        shutil.copy(DEBIAN_UNITS / name, units / name)
    names = ["nakhon-ingest@0.service", "nakhon-ingest@1.service", "nakhon-api.service", "nakhon-alerts.service", "nakhon.target",
             "mosquitto.service", "influxdb.service"]
    # --man=no: Debian's influxdb.service names a man page the package does not ship
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", *(f"./{n}" for n in names)], cwd=units, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == "", out.stdout + out.stderr  # not even a warning (an unknown key is only a warning)


def test_units_carry_the_hardening_and_restart_on_failure(written: Path) -> None:
    units = written / "etc/systemd/system"
    for name in ("nakhon-ingest@.service", "nakhon-api.service", "nakhon-alerts.service"):
        svc = unit(units / name)["Service"]
        for key, value in {
            "User": "nakhon", "Group": "nakhon", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
            "PrivateDevices": "yes", "CapabilityBoundingSet": "", "StandardOutput": "journal", "StandardError": "journal", "Restart": "always",
            "RestartPreventExitStatus": "2", "StateDirectory": "nakhon", "EnvironmentFile": "/etc/nakhon/nakhon.env",
        }.items():
            assert svc[key] == value, (name, key)
        assert float(svc["RestartSec"]) > 0
        u = unit(units / name)["Unit"]
        assert u["StartLimitBurst"] == "10" and u["StartLimitIntervalSec"] == "300"
        assert "mosquitto.service" in u["After"] and "influxdb.service" in u["After"]
    assert unit(units / "nakhon-ingest@.service")["Service"]["ExecStart"].endswith("nakhon ingest --worker %i")
    assert "nakhon-ingest@0.service nakhon-ingest@1.service" in unit(units / "nakhon.target")["Unit"]["Wants"]
    for name in ("mosquitto.service.d", "influxdb.service.d"):
        text = (units / name / "nakhon.conf").read_text()
        assert "ExecStart=\nExecStart=" in text and "/etc/nakhon/" in text and "Restart=always" in text
    assert (written / "etc/nakhon/nakhon.env").stat().st_mode & 0o777 == 0o640


def test_systemd_rates_the_units_exposure_low(written: Path) -> None:
    units = written / "etc/systemd/system"
    for name in ("nakhon-api.service", "nakhon-alerts.service", "nakhon-ingest@.service"):
        target = name.replace("@.", "@0.")
        if target != name:
            shutil.copy(units / name, units / target)
        out = subprocess.run(["systemd-analyze", "security", "--offline=yes", f"./{target}"], cwd=units, capture_output=True, text=True, timeout=120)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout)
        assert m, out.stdout + out.stderr
        assert float(m.group(1)) <= 2.5, out.stdout  # systemd's scale: 0 safe .. 10 exposed; the unhardened default is 9.6


def test_the_env_file_gives_back_the_settings(written: Path) -> None:
    env = {}
    for line in (written / "etc/nakhon/nakhon.env").read_text().splitlines():
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            env[key] = value[1:-1].replace('\\"', '"').replace("\\\\", "\\") if value.startswith('"') else value
    fields = {k.removeprefix("NAKHON_").lower(): v for k, v in env.items()}
    s = load_settings(**fields)
    assert s.mqtt_port == 1883 and s.influx_url == "http://127.0.0.1:8086" and s.ingest_workers == 2
    assert s.open_data_publisher == load_settings().open_data_publisher  # a value with spaces survives the quoting
    assert "NAKHON_DATA_DIR" not in env  # the units set it: their StateDirectory


def test_the_broker_config_is_secured_as_nakhon_up_and_compose_and_mosquitto_takes_it(written: Path, tmp_path: Path) -> None:
    text = (written / "etc/nakhon/mosquitto.conf").read_text()
    lines = text.splitlines()
    # secure by default: no anonymous access, accounts and ACLs from dynamic security, devices on TLS,
    # the plain listener for platform services on loopback only
    assert "allow_anonymous false" in lines and any(x.startswith("plugin ") and "dynamic_security" in x for x in lines)
    assert "plugin_opt_config_file /var/lib/mosquitto/dynamic-security.json" in lines
    assert "listener 1883 127.0.0.1" in lines and "listener 8883" in lines and "certfile /etc/nakhon/certs/server.pem" in lines
    assert [x for x in lines if x.startswith("listener ")] == ["listener 1883 127.0.0.1", "listener 8883"]
    # the same limits and persistence as every other broker the project runs (compose's committed file included)
    limits = ("max_inflight_messages", "max_queued_messages", "max_queued_bytes", "max_packet_size", "autosave_interval", "persistence ")
    compose = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    assert [x for x in lines if x.startswith(limits)] == [x for x in compose if x.startswith(limits)]
    assert "user mosquitto" in lines and "persistence_location /var/lib/mosquitto/" in lines
    # the real broker accepts it (moved onto this test's folder, certificates and free ports), and refuses anonymous clients
    port, tls_port = free_port(), free_port()
    data = tmp_path / "data"
    data.mkdir()
    ca, cert, key = make_certs(tmp_path / "certs")
    write_bootstrap(data / "dynamic-security.json", ("nakhon_api", "a" * 24), ("nakhon_ingest", "b" * 24))
    me = Mosquitto(tmp_path / "u", 1).config_text().split("user ", 1)[1].split()[0]
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        text.replace("/var/lib/mosquitto/", f"{data}/").replace("user mosquitto", f"user {me}")
        .replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1").replace("listener 8883", f"listener {tls_port} 127.0.0.1")
        .replace("/etc/nakhon/certs/ca.pem", str(ca)).replace("/etc/nakhon/certs/server.pem", str(cert))
        .replace("/etc/nakhon/certs/server.key", str(key))
    )
    proc = subprocess.Popen([MOSQUITTO_BIN, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def accepts() -> bool:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                socket.create_connection(("127.0.0.1", tls_port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_until(accepts, 20, what="mosquitto on the generated config")
        anonymous = subprocess.run(["mosquitto_pub", "-p", str(port), "-t", "nakhon/v1/phuket/pk-001/telemetry", "-m", "{}", "-q", "1"],
                                   capture_output=True, text=True, timeout=30)
        assert anonymous.returncode != 0 and "not authori" in (anonymous.stderr + anonymous.stdout).lower(), anonymous
    finally:
        proc.terminate()
        proc.wait(20)
    influx = (written / "etc/nakhon/influxdb.conf").read_text()
    assert str(tmp_path) not in influx and '"/var/lib/influxdb/wal"' in influx and 'bind-address = "127.0.0.1:8086"' in influx
    assert "auth-enabled = true" in influx


def test_ingest_worker_index_must_be_one_of_the_workers() -> None:
    out = subprocess.run([sys.executable, "-m", "nakhon", "ingest", "--worker", "2"], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "NAKHON_INGEST_WORKERS": "2"})
    assert out.returncode == 2
    assert "--worker 2 is outside 0..1: set NAKHON_INGEST_WORKERS" in out.stderr


def test_install_dry_run_says_what_it_would_do() -> None:
    out = subprocess.run([sys.executable, "-m", "nakhon", "systemd", "install", "--dry-run"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "write /etc/systemd/system/nakhon-ingest@.service (mode 644)" in out.stdout
    assert "write /etc/nakhon/nakhon.env (mode 640)" in out.stdout
    assert "useradd --system" in out.stdout and "systemctl daemon-reload" in out.stdout
