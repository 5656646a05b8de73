"""Signals for a service's main loop, acted on without a lock in the signal handler.

A Python signal handler runs in the main thread between two bytecodes. One that calls
`threading.Event.set()` deadlocks when the signal lands while the main thread is inside that
event's `wait()` holding the event's own lock, which a loop of `while not stop.wait(0.5)` does
twice a second: the process then never stops on SIGTERM and is killed. So the handler here does
nothing; the C-level handler writes the signal's number to a pipe (`signal.set_wakeup_fd`) and a
thread of ours reads it and runs the action, taking whatever locks it needs like any thread.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Mapping

Action = Callable[[], object]


def route(actions: Mapping[int, Action]) -> Callable[[], None]:
    """Run `actions[signum]` on a thread of its own for each signal received. Call from the main
    thread (as `signal.signal` requires); returns a function that puts the previous handlers back."""
    r, w = os.pipe()
    os.set_blocking(w, False)  # the C handler must never block; a full pipe drops (never: the thread drains it)
    previous_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    previous = {sig: signal.signal(sig, _ignore) for sig in actions}
    table = dict(actions)

    def relay() -> None:
        while True:
            try:
                got = os.read(r, 64)
            except OSError:
                got = b""
            if not got:  # restore() closed the write end
                os.close(r)
                return
            for sig in got:
                action = table.get(sig)
                if action is not None:
                    action()

    threading.Thread(target=relay, name="signals", daemon=True).start()

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(w)  # the relay reads end-of-file, closes its end and returns

    return restore


def forget_in_child() -> None:
    """In a forked child: stop writing signals into the parent's pipe (the handlers stay no-ops)."""
    signal.set_wakeup_fd(-1)


def _ignore(signum: int, frame: object) -> None:
    """The wakeup fd carries the signal; a Python-level handler must exist so the default action does not run."""
