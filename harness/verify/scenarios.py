"""The registry: scenario number -> (title, function)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.verify.report import Row, Size

Scenario = Callable[[Path, Size], Row]

# filled in by the scenario modules' entries below, in the issue's order
SCENARIOS: dict[int, tuple[str, Scenario]] = {}


def register(number: int, title: str) -> Callable[[Scenario], Scenario]:
    def deco(fn: Scenario) -> Scenario:
        SCENARIOS[number] = (title, fn)
        return fn

    return deco


def load_all() -> dict[int, tuple[str, Scenario]]:
    """Import every scenario module (each registers its scenarios)."""
    import importlib
    import pkgutil

    import harness.verify as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name.startswith("s_"):
            importlib.import_module(f"harness.verify.{mod.name}")
    return dict(sorted(SCENARIOS.items()))
