"""The product installs and runs without the dev extras: what a city's server or the Docker image gets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # a fresh virtual environment and a wheel built from the tree

ROOT = Path(__file__).resolve().parent.parent
DEV_ONLY = ("pytest", "ruff", "mypy", "schemathesis")

# run inside the new environment: every command of the CLI, as a list of argument lists
_LIST_COMMANDS = """
import argparse, json
from nakhon.cli import build_parser
def walk(p, prefix=()):
    out = [list(prefix)]
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                out += walk(sub, (*prefix, name))
    return out
print(json.dumps(walk(build_parser())))
"""


def test_installed_without_dev_extras_every_command_runs(workdir: Path) -> None:
    venv = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    # a plain install from the tree (not editable): no tests/, no dev extras
    proc = subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NAKHON_", "PYTHON"))}
    run = dict(capture_output=True, text=True, timeout=120, cwd=workdir, env=env)  # not the tree: the installed copy
    for name in DEV_ONLY:
        assert subprocess.run([py, "-c", f"import {name}"], **run).returncode != 0, f"{name} came with the product"
    where = subprocess.run([py, "-c", "import nakhon, harness, simulators; print(nakhon.__file__)"], **run)
    assert where.returncode == 0 and str(venv) in where.stdout, where.stderr
    # the docs' Swagger UI and ReDoc, and the public city page, come with the installed package (no CDN to fall back on)
    page = ("from importlib.resources import files; from api.docs import assets_dir; print(assets_dir()); "
            "print(all((files('api') / 'public' / f).is_file() for f in ('city.html', 'city.js', 'city.css', 'index.html')))")
    assets = subprocess.run([py, "-c", page], **run)
    assert assets.returncode == 0 and str(venv) in assets.stdout and assets.stdout.strip().endswith("True"), assets.stderr[-2000:]

    commands = json.loads(subprocess.run([py, "-c", _LIST_COMMANDS], **run).stdout)
    assert len(commands) > 20
    nakhon = str(venv / "bin" / "nakhon")
    failed = []
    for cmd in commands:
        out = subprocess.run([nakhon, *cmd, "--help"], **run)
        if out.returncode != 0 or "usage: nakhon" not in out.stdout:
            failed.append((cmd, out.stderr[-500:]))
    assert not failed, failed
    listed = subprocess.run([nakhon, "verify", "--list"], **run)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "InfluxDB killed" in listed.stdout and len(listed.stdout.splitlines()) >= 13, listed.stdout
