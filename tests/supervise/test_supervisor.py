"""The supervisor on real child processes: restart with backoff and a reason, give up loudly, leave the others alone."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nakhon.supervisor import Policy, Supervisor
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

FAST = Policy(backoff_base_s=0.05, backoff_cap_s=0.4, stable_s=5.0, give_up_after=10, poll_s=0.05)


class Child:
    """A supervisable process running a snippet of Python; counts its starts."""

    def __init__(self, name: str, code: str, folder: Path) -> None:
        self.name = name
        self.code = code
        self.log_path = folder / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts: list[float] = []

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", self.code], stdout=log, stderr=subprocess.STDOUT)
        self.starts.append(time.monotonic())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


CRASH = "import sys; print('starting'); print('error: NAKHON_THING is not set', flush=True); sys.exit(3)"
SLEEP = "import time; print('up', flush=True); time.sleep(600)"


@pytest.fixture
def children(tmp_path: Path):
    made: list[Child] = []

    def make(name: str, code: str) -> Child:
        c = Child(name, code, tmp_path)
        c.start()
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def records(caplog: pytest.LogCaptureFixture, msg: str, service: str) -> list[dict[str, object]]:
    return [r.fields for r in caplog.records if r.getMessage() == msg and r.fields.get("service") == service]  # type: ignore[attr-defined]


def test_a_service_that_keeps_dying_is_given_up_on_loudly_and_the_others_go_on(children, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nakhon.supervisor")
    bad = children("bad", CRASH)
    good = children("good", SLEEP)
    good_pid = good.proc.pid
    sup = Supervisor([bad, good], FAST)
    sup.start()
    try:
        wait_until(lambda: sup.units["bad"].state == "failed", 30, what="the crashing service to be given up on")
        # ten deaths in a row: the first start and nine restarts, each after a longer wait
        assert len(bad.starts) == 10
        gaps = [b - a for a, b in zip(bad.starts, bad.starts[1:], strict=False)]
        assert all(g >= FAST.backoff(i + 1) * 0.9 for i, g in enumerate(gaps)), gaps
        assert gaps[-1] >= FAST.backoff_cap_s * 0.9
        died = records(caplog, "service died", "bad")
        assert len(died) == 10
        assert died[0]["how"] == "exit code 3" and died[0]["returncode"] == 3
        assert "NAKHON_THING is not set" in str(died[0]["tail"])
        gave_up = records(caplog, "service keeps dying; not restarting", "bad")
        assert len(gave_up) == 1
        assert gave_up[0]["deaths_in_a_row"] == 10
        assert "error: NAKHON_THING is not set" in str(gave_up[0]["last_error"])
        assert any(r.levelno == logging.CRITICAL for r in caplog.records)
        # no spinning: nothing more is started, and the healthy one was never touched
        time.sleep(1.0)  # the check itself: a span in which a spinning supervisor would start it again
        assert len(bad.starts) == 10
        assert good.proc is not None and good.proc.poll() is None and good.proc.pid == good_pid
        assert sup.units["good"].restarts == 0
        snap = {e["name"]: e for e in sup.snapshot()}
        assert snap["bad"]["state"] == "failed" and "NAKHON_THING" in snap["bad"]["last_error"]
        # fixed: a retry on request starts it again
        bad.code = SLEEP
        assert sup.retry_failed() == ["bad"]
        wait_until(lambda: sup.units["bad"].state == "running" and bad.proc is not None and bad.proc.poll() is None, 20, what="the retried service")
        assert len(bad.starts) == 11
    finally:
        sup.stop()


def test_a_killed_service_comes_back_and_says_why_it_died(children, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nakhon.supervisor")
    svc = children("svc", SLEEP)
    sup = Supervisor([svc], FAST)
    sup.start()
    try:
        for round_ in range(1, 4):
            wait_until(lambda round_=round_: svc.log_path.read_text().count("up") == round_, 20, what="the child to say it is up")
            pid = svc.proc.pid
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda pid=pid: svc.proc is not None and svc.proc.pid != pid and sup.units["svc"].state == "running", 20, what="the restart")
            assert sup.units["svc"].restarts == round_
        died = records(caplog, "service died", "svc")
        assert [d["how"] for d in died] == ["killed by SIGKILL"] * 3
        assert [d["deaths_in_a_row"] for d in died] == [1, 2, 3]  # each ran shorter than stable_s: the backoff grows
        assert "up" in str(died[0]["tail"])
        assert sup.units["svc"].last_exit == "killed by SIGKILL"
    finally:
        sup.stop()


def test_a_service_stopped_by_its_owner_is_not_restarted(children) -> None:
    svc = children("svc", SLEEP)
    sup = Supervisor([svc], FAST)
    sup.start()
    try:
        svc.stop()
        wait_until(lambda: sup.units["svc"].state == "stopped", 10, what="the stopped state")
        time.sleep(0.5)  # the check itself: a span in which a wrong supervisor would restart it
        assert svc.proc is None and len(svc.starts) == 1
    finally:
        sup.stop()


class NeverReady(Child):
    """A server whose start() fails the way nakhon.servers does when it never answers."""

    def start(self) -> None:
        self.starts.append(time.monotonic())
        if len(self.starts) > 1:
            raise RuntimeError("influxdb did not become ready in 30s; log tail:\nrun: open server: listen tcp 127.0.0.1:8086: bind: address already in use")
        super().start()


def test_a_server_that_never_becomes_ready_counts_as_a_death(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nakhon.supervisor")
    svc = NeverReady("influxdb", SLEEP, tmp_path)
    svc.start()
    sup = Supervisor([svc], FAST)
    sup.start()
    try:
        os.kill(svc.proc.pid, signal.SIGKILL)
        wait_until(lambda: sup.units["influxdb"].state == "failed", 30, what="giving up")
        assert len(svc.starts) == 11  # the first run, then ten failed starts
        assert "address already in use" in sup.units["influxdb"].last_error
    finally:
        sup.stop()
        svc.stop()


def test_a_configuration_error_is_given_up_on_at_once(children, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nakhon.supervisor")
    bad = children("bad", "import sys; sys.stderr.write('nakhon: invalid configuration: NAKHON_MQTT_PORT must be 1-65535\\n'); sys.exit(2)")
    bad.fatal_exit_codes = (2,)  # type: ignore[attr-defined]
    sup = Supervisor([bad], FAST)
    sup.start()
    try:
        wait_until(lambda: sup.units["bad"].state == "failed", 20, what="giving up")
        assert len(bad.starts) == 1
        [gave_up] = records(caplog, "service keeps dying; not restarting", "bad")
        assert gave_up["how"] == "exit code 2" and "NAKHON_MQTT_PORT" in str(gave_up["last_error"])
    finally:
        sup.stop()
