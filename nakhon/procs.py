"""Run Nakhon services as child processes with a given configuration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from contract.settings import Settings


def settings_env(settings: Settings, **extra: Any) -> dict[str, str]:
    """The environment that reproduces `settings` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAKHON_") or k in ("NAKHON_MOSQUITTO_BIN", "NAKHON_INFLUXD_BIN")}
    values = settings.model_dump(exclude_none=True)
    if settings.influx_password_file is not None:
        values.pop("influx_password", None)  # the child reads it from its file, as this process did; never in the environment
    values.update(extra)
    for key, value in values.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        env[f"NAKHON_{key.upper()}"] = str(Path(value).resolve()) if key.endswith(("_dir", "_file")) else str(value)
    return env


class Service:
    """`nakhon <args>` as a child process, logs to a file."""

    fatal_exit_codes = (2,)  # a configuration error (contract.settings): restarting cannot fix it

    def __init__(self, name: str, args: list[str], settings: Settings, log_dir: Path, **extra: Any) -> None:
        self.name = name
        self.args = args
        self.env = settings_env(settings, **extra)
        self.log_path = Path(log_dir) / f"{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([sys.executable, "-m", "nakhon", *self.args], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def wait_log(self, text: str, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_path.exists():
                with open(self.log_path, "rb") as fh:
                    fh.seek(self._log_offset)
                    if text.encode() in fh.read():
                        return True
            if not self.running:
                return False
            time.sleep(0.1)
        return False
