"""Local Mosquitto and InfluxDB, started by the project with its own config.

Each server gets a config file and a data folder of its own under the given
directory, listens on 127.0.0.1 on the ports given (or free ones), and is
stopped cleanly. Used by `nakhon up`, the benchmarks and the test fixtures,
so tests need nothing running beforehand.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

import httpx

from nakhon.brokerconf import AUTOSAVE_INTERVAL_S, MAX_PACKET_SIZE, Listener, config_text

MOSQUITTO_BIN = os.environ.get("NAKHON_MOSQUITTO_BIN") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
INFLUXD_BIN = os.environ.get("NAKHON_INFLUXD_BIN") or shutil.which("influxd") or "/usr/bin/influxd"


class ServerError(RuntimeError):
    pass


def dynsec_plugin() -> str:
    """Where the OS's mosquitto package put the dynamic-security plugin."""
    from api.broker import BrokerError, plugin_path

    try:
        return plugin_path()
    except BrokerError as exc:
        raise ServerError(str(exc)) from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pick_port(preferred: int) -> int:
    """`preferred` when free, else the next free port above it."""
    for port in range(preferred, preferred + 200):
        if port_free(port):
            return port
    return free_port()


def _wait_tcp(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def make_certs(folder: Path, cn: str = "localhost", days: int = 2, names: tuple[str, ...] = ()) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for `cn` (and `names`: host names or IPs) signed by it: (ca, cert, key)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))

    def sh(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    sh("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", str(days), "-subj", f"/CN=nakhon-{folder.name}-ca")
    sh("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}")
    ext = folder / "ext.cnf"
    alt = [f"IP:{n}" if n.replace(".", "").isdigit() or ":" in n else f"DNS:{n}" for n in (cn, *names)]
    ext.write_text(f"subjectAltName={','.join(alt)}\n")
    sh("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert), "-days", str(days),
       "-extfile", str(ext))
    for private in (ca_key, key):
        private.chmod(0o600)
    return ca, cert, key


class _Process:
    name = "server"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / f"{self.name}.log"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self, timeout: float) -> bool:
        raise NotImplementedError

    ready_timeout_s = 30.0  # how long start() waits for the server to answer, unless told

    def start(self, timeout: float | None = None) -> None:
        timeout = self.ready_timeout_s if timeout is None else timeout
        if self.running:
            return
        for attempt in range(3):
            self._write_config()
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
            self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            t0 = time.monotonic()
            if self._ready(timeout):
                return
            waited = time.monotonic() - t0
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                said = fh.read().decode(errors="replace")
            self.stop()
            # a port only we use was free when picked and taken before the server bound it: pick again
            if attempt < 2 and self._repick_internal_port(said):
                continue
            how = "exited" if waited < timeout else f"did not become ready in {timeout:.0f}s"
            raise ServerError(f"{self.name} {how}; its log:\n{said[-2000:]}")

    def _repick_internal_port(self, said: str) -> bool:
        """Whether the server failed on a port of its own (no client is told it) that is now picked again."""
        return False

    def _write_config(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it will not go."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, for fault tests."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Mosquitto(_Process):
    """A broker with the project's limits set on purpose (see `config_text`)."""

    name = "mosquitto"

    def __init__(
        self,
        root: Path,
        port: int | None = None,
        *,
        allow_anonymous: bool = True,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        tls_port: int | None = None,
        tls_files: tuple[Path, Path, Path] | None = None,  # cafile, certfile, keyfile
        max_queued_messages: int = 1_000_000,
        max_packet_size: int = MAX_PACKET_SIZE,
        autosave_interval: int = AUTOSAVE_INTERVAL_S,
        dynsec_file: Path | None = None,
        extra: str = "",
    ) -> None:
        super().__init__(root)
        self.port = port or free_port()
        self.allow_anonymous = allow_anonymous
        self.password_file = password_file
        self.acl_file = acl_file
        self.tls_port = tls_port
        self.tls_files = tls_files
        self.max_queued_messages = max_queued_messages
        self.max_packet_size = max_packet_size
        self.autosave_interval = autosave_interval
        self.dynsec_file = dynsec_file
        self.extra = extra
        self.config_path = self.root / "mosquitto.conf"

    def config_text(self) -> str:
        """The project's one broker configuration (nakhon/brokerconf.py) for this broker's folder and ports."""
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        listeners = [Listener(self.port, "127.0.0.1")]
        if self.tls_port and self.tls_files:
            ca, cert, key = (str(Path(p).resolve()) for p in self.tls_files)
            listeners.append(Listener(self.tls_port, "127.0.0.1", (ca, cert, key)))
        extra = []
        if self.password_file:
            extra.append(f"password_file {Path(self.password_file).resolve()}")
        if self.acl_file:
            extra.append(f"acl_file {Path(self.acl_file).resolve()}")
        if self.extra:
            extra.append(self.extra)
        dynsec = (dynsec_plugin(), str(Path(self.dynsec_file).resolve())) if self.dynsec_file else None
        return config_text(listeners=listeners, data_dir=str(data), dynsec=dynsec, user=getpass.getuser(),
                           allow_anonymous=self.allow_anonymous, autosave_interval=self.autosave_interval,
                           max_queued_messages=self.max_queued_messages, max_packet_size=self.max_packet_size, extra="\n".join(extra))

    def _write_config(self) -> None:
        self.config_path.write_text(self.config_text())

    def _command(self) -> list[str]:
        return [MOSQUITTO_BIN, "-c", str(self.config_path)]

    def _ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                return False
            if _wait_tcp(self.port, 0.5):
                return True
        return False


class InfluxDB(_Process):
    """InfluxDB 1.x (`influxd`) with its own config, data and ports."""

    name = "influxdb"

    def __init__(self, root: Path, port: int | None = None, rpc_port: int | None = None, *, auth: bool = False) -> None:
        super().__init__(root)
        self.port = port or free_port()
        self.rpc_port = rpc_port or free_port()
        self.auth = auth
        self.config_path = self.root / "influxdb.conf"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _repick_internal_port(self, said: str) -> bool:
        if f"127.0.0.1:{self.rpc_port}: bind: address already in use" not in said:
            return False
        self.rpc_port = free_port()  # the backup/restore port: nothing else was told it yet
        return True

    def config_text(self) -> str:
        r = self.root
        return f"""# Generated by nakhon.
reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"

[meta]
  dir = "{r / "meta"}"

[data]
  dir = "{r / "data"}"
  wal-dir = "{r / "wal"}"
  query-log-enabled = false
  wal-fsync-delay = "0s"

[coordinator]
  query-timeout = "60s"

[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = {"true" if self.auth else "false"}
  log-enabled = false
  write-tracing = false
  max-body-size = 0

[monitor]
  store-enabled = false

[continuous_queries]
  enabled = true
  log-enabled = false
  run-interval = "1m"

[subscriber]
  enabled = false

[logging]
  level = "warn"
"""

    def _write_config(self) -> None:
        self.config_path.write_text(self.config_text())

    def _command(self) -> list[str]:
        return [INFLUXD_BIN, "run", "-config", str(self.config_path)]

    def _ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                return False
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/ping", timeout=1).status_code == 204:
                    return True
            time.sleep(0.1)
        return False
