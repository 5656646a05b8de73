"""Keep child processes alive: restart what dies, with backoff, and say why it died.

`Supervisor` watches services that are already started (anything with a
`name`, a `log_path`, a `proc` and `start()`/`stop()`: the local servers of
`nakhon.servers` and the `nakhon` subcommands of `nakhon.procs`), one thread
per service:

- a service whose process exits is logged (`"service died"`: exit code or
  signal, how long it ran, the tail of its log) and started again after a
  backoff that doubles with each quick death (`Policy.backoff_base_s` up to
  `Policy.backoff_cap_s`); a run longer than `Policy.stable_s` resets it;
- a service that dies `Policy.give_up_after` times in a row without staying
  up is reported loudly (`"service keeps dying; not restarting"`, with its
  last error) and left stopped: the others go on, nothing spins.
  `retry_failed()` (SIGHUP to `nakhon up`) tries such a service again;
- a service may name exit codes that no restart can fix (`fatal_exit_codes`:
  the `nakhon` commands exit 2 on a configuration error): it is given up on
  at once, with that error;
- a service whose `proc` is None was stopped on purpose and is left alone;
- `stop()` ends the watching; stopping the services themselves stays with
  their owner, so Ctrl-C stops everything in its own order.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any, Protocol

from contract.logs import kv

log = logging.getLogger("nakhon.supervisor")


class Supervisable(Protocol):
    name: str
    log_path: Path
    proc: Popen[bytes] | None

    def start(self) -> None: ...


@dataclass(frozen=True)
class Policy:
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 30.0
    stable_s: float = 30.0  # a run this long counts as healthy: the next death starts the backoff afresh
    give_up_after: int = 10  # deaths in a row, each shorter than stable_s
    poll_s: float = 0.2
    tail_lines: int = 12

    def backoff(self, failures: int) -> float:
        """Seconds to wait before the start that follows the `failures`-th death in a row."""
        return min(self.backoff_cap_s, self.backoff_base_s * 2 ** max(0, failures - 1))


STATES = ("running", "backoff", "starting", "failed", "stopped")


@dataclass
class UnitState:
    name: str
    state: str = "running"
    pid: int | None = None
    since: float = field(default_factory=time.time)  # wall clock of the last state change
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0
    failures: int = 0  # deaths in a row without a stable run
    last_exit: str = ""
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "pid": self.pid,
            "since": self.since,
            "restarts": self.restarts,
            "failures": self.failures,
            "last_exit": self.last_exit,
            "last_error": self.last_error,
        }


def describe_exit(returncode: int | None) -> str:
    """`exit code 3`, `killed by SIGKILL`: what a returncode says."""
    if returncode is None:
        return "unknown"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def log_tail(path: Path, offset: int, lines: int) -> str:
    """The last `lines` lines written to `path` since `offset` (the start of this run)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            end = fh.tell()
            start = max(offset if offset <= end else 0, end - 64 * 1024)
            fh.seek(start)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def last_error(tail: str) -> str:
    """The line of a log tail most likely to say what went wrong."""
    rows = [r for r in tail.splitlines() if r.strip()]
    for needle in ('"level":"error"', '"level":"critical"', "Error", "error", "Traceback"):
        hits = [r for r in rows if needle in r]
        if hits:
            return hits[-1][:500]
    return rows[-1][:500] if rows else ""


class Supervisor:
    def __init__(self, services: list[Supervisable], policy: Policy | None = None, on_change: Callable[[UnitState], None] | None = None) -> None:
        self.services = list(services)
        self.policy = policy or Policy()
        self.on_change = on_change
        self.units = {s.name: UnitState(s.name, pid=s.proc.pid if s.proc else None) for s in self.services}
        self._offsets = {s.name: 0 for s in self.services}
        self._stop = threading.Event()
        self._retry = {s.name: threading.Event() for s in self.services}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # --- public ---------------------------------------------------------------
    def start(self) -> None:
        for svc in self.services:
            t = threading.Thread(target=self._watch, args=(svc,), name=f"supervise-{svc.name}", daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop watching (a start under way is finished first); the services keep running."""
        self._stop.set()
        for ev in self._retry.values():
            ev.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def all_stopped(self) -> None:
        """Record that the owner has stopped every service (after `stop()` and its own shutdown)."""
        for unit in self.units.values():
            if unit.state != "stopped":
                self._set(unit, "stopped", pid=None)

    def retry_failed(self) -> list[str]:
        """Give every service that was given up on a fresh start; returns their names."""
        names = [n for n, u in self.units.items() if u.state == "failed"]
        for n in names:
            self._retry[n].set()
        return names

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [u.as_dict() for u in self.units.values()]

    # --- one thread per service -------------------------------------------------
    def _set(self, unit: UnitState, state: str, **changes: Any) -> None:
        with self._lock:
            unit.state = state
            unit.since = time.time()
            for k, v in changes.items():
                setattr(unit, k, v)
        if self.on_change is not None:
            try:
                self.on_change(unit)
            except Exception:
                log.exception("status callback failed")

    def _watch(self, svc: Supervisable) -> None:
        p = self.policy
        unit = self.units[svc.name]
        while not self._stop.is_set():
            proc = svc.proc
            if proc is None:  # stopped on purpose by its owner
                if unit.state not in ("stopped", "failed"):
                    self._set(unit, "stopped", pid=None)
                self._stop.wait(p.poll_s)
                continue
            if proc.poll() is None:
                if unit.state != "running":
                    self._set(unit, "running", pid=proc.pid)
                self._stop.wait(p.poll_s)
                continue
            self._died(svc, unit, proc)
            if not self._pause(svc, unit):
                return
            while not self._restart(svc, unit):
                if not self._pause(svc, unit):
                    return

    def _pause(self, svc: Supervisable, unit: UnitState) -> bool:
        """Back off before the next start, or give up until retried. False when stopping."""
        if unit.failures >= self.policy.give_up_after:
            self._set(unit, "failed", pid=None)
            log.critical(
                "service keeps dying; not restarting",
                extra=kv(
                    service=svc.name, deaths_in_a_row=unit.failures, how=unit.last_exit, last_error=unit.last_error, log=str(svc.log_path),
                    hint="fix the cause, then send SIGHUP to nakhon up to try again (or restart it)",
                ),
            )
            self._retry[svc.name].wait()
            self._retry[svc.name].clear()
            if self._stop.is_set():
                return False
            log.warning("service retried on request", extra=kv(service=svc.name))
            with self._lock:
                unit.failures = 0
            return True
        self._set(unit, "backoff", pid=None)
        return not self._stop.wait(self.policy.backoff(unit.failures))

    def _died(self, svc: Supervisable, unit: UnitState, proc: Popen[bytes]) -> None:
        ran = time.monotonic() - unit.started
        tail = log_tail(svc.log_path, self._offsets[svc.name], self.policy.tail_lines)
        failures = unit.failures + 1 if ran < self.policy.stable_s else 1
        if proc.returncode in getattr(svc, "fatal_exit_codes", ()):
            failures = max(failures, self.policy.give_up_after)  # a restart cannot fix it
        how = describe_exit(proc.returncode)
        with self._lock:
            unit.failures = failures
            unit.last_exit = how
            unit.last_error = last_error(tail)
        log.error(
            "service died",
            extra=kv(
                service=svc.name, pid=proc.pid, how=how, returncode=proc.returncode, ran_s=round(ran, 1), deaths_in_a_row=failures,
                restart_in_s=None if failures >= self.policy.give_up_after else round(self.policy.backoff(failures), 2),
                log=str(svc.log_path), tail=tail,
            ),
        )

    def _restart(self, svc: Supervisable, unit: UnitState) -> bool:
        """Start the service again; a start that fails (a server that never becomes ready) counts as a death."""
        self._offsets[svc.name] = svc.log_path.stat().st_size if svc.log_path.exists() else 0
        self._set(unit, "starting", pid=None)
        with self._lock:
            unit.started = time.monotonic()
            unit.restarts += 1
        try:
            svc.start()
        except Exception as exc:
            with self._lock:
                unit.failures += 1
                unit.last_exit = "did not become ready"
                unit.last_error = last_error(str(exc))
            log.error("service failed to start", extra=kv(service=svc.name, deaths_in_a_row=unit.failures, error=str(exc)[-2000:]))
            return False
        pid = svc.proc.pid if svc.proc else None
        log.warning("service restarted", extra=kv(service=svc.name, pid=pid, restarts=unit.restarts, after=unit.last_exit))
        self._set(unit, "running", pid=pid)
        return True
