"""A service stops on SIGTERM even when the signal lands while its main loop holds the stop
event's lock (inside `stop.wait(0.5)`), the instant in which a handler calling `stop.set()`
deadlocked: an ingest worker that never stopped and was killed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration  # each case in a process of its own: a deadlock must not hang the suite

CASE = """
import os, signal, sys, threading
from contract.sigrelay import route
stop, hup = threading.Event(), threading.Event()
route({signal.SIGTERM: stop.set, signal.SIGHUP: hup.set})
with stop._cond:  # where the main thread is, for an instant, inside stop.wait(): holding the event's own lock
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(10000):  # bytecodes: the Python-level handler runs between two of them, here
        pass
os.kill(os.getpid(), signal.SIGHUP)
print("stopped" if stop.wait(10) and hup.wait(10) else "not stopped", flush=True)
"""


def run_case(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_signal_while_the_stop_events_lock_is_held_still_stops() -> None:
    proc = run_case(CASE)
    assert proc.returncode == 0 and proc.stdout.strip() == "stopped", proc.stdout + proc.stderr


def test_restore_puts_the_handlers_back() -> None:
    code = """
import signal
from contract.sigrelay import route
before = signal.getsignal(signal.SIGTERM)
restore = route({signal.SIGTERM: lambda: None})
assert signal.getsignal(signal.SIGTERM) is not before
restore()
assert signal.getsignal(signal.SIGTERM) is before and signal.set_wakeup_fd(-1) == -1
print("restored")
"""
    proc = run_case(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "restored", proc.stdout + proc.stderr
