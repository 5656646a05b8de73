"""`nakhon verify`: run the scenarios, print a line each, optionally write the report."""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import cast

from harness.progress import say as _say
from harness.verify.report import Row, Size, line, markdown
from harness.verify.scenarios import load_all


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    v = sub.add_parser("verify", help="attack a freshly started platform (faults, bad input, intruders) and report losses")
    v.add_argument("--only", default=None, help="comma-separated scenario numbers, e.g. 1,2,7 (default: all)")
    v.add_argument("--quick", action="store_true", help="the small sizes the test suite uses (minutes, not an hour)")
    v.add_argument("--list", action="store_true", help="list the scenarios and exit")
    v.add_argument("--root", default="var/verify", help="folder for the scenarios' servers and logs (default var/verify)")
    v.add_argument("--report", default=None, help="also write the table to this Markdown file, e.g. docs/verify.md")
    v.add_argument("--update", action="store_true", help="with --report: keep the rows of scenarios not run from the existing file")
    v.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    scenarios = load_all()
    if args.list:
        for n, (title, _) in scenarios.items():
            sys.stdout.write(f"{n:>3}  {title}\n")
        return 0
    wanted = sorted(scenarios) if not args.only else [int(x) for x in args.only.split(",")]
    unknown = [n for n in wanted if n not in scenarios]
    if unknown:
        sys.stderr.write(f"nakhon verify: no scenario {unknown}; `nakhon verify --list` shows them\n")
        return 2
    size = "quick" if args.quick else "full"
    root = Path(args.root).resolve()
    rows: list[Row] = []
    for n in wanted:
        title, fn = scenarios[n]
        where = root / f"s{n:02d}"
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        _say(f"scenario {n}: {title} ({size})")
        t = time.monotonic()
        try:
            row = fn(where, cast(Size, size))
        except Exception as exc:  # one broken scenario must not hide the others' figures
            traceback.print_exc()
            row = Row(n, title, ok=False, note=f"scenario failed to run: {type(exc).__name__}: {str(exc)[:300]}")
        _say(f"scenario {n} done in {time.monotonic() - t:.0f} s: {'PASS' if row.ok else 'FAIL'}")
        sys.stdout.write(line(row) + "\n")
        sys.stdout.flush()
        rows.append(row)
    table = markdown(rows)
    sys.stdout.write("\n" + table)
    if args.report:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        cmd = "nakhon verify" + (" --quick" if args.quick else "") + (f" --only {args.only}" if args.only else "")
        path = Path(args.report)
        kept = _read_report(path) if args.update and path.exists() else ([], [], [])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_report(rows, kept, f"{when}: `{cmd}`"))
    return 0 if all(r.ok for r in rows) else 1


def _read_report(path: Path) -> tuple[list[str], list[str], list[str]]:
    """(table rows, notes, runs) of an earlier report, as lines."""
    rows, notes, runs = [], [], []
    for text in path.read_text().splitlines():
        if re.match(r"^\| \d+ \|", text):
            rows.append(text)
        elif re.match(r"^\d+\. ", text):
            notes.append(text)
        elif text.startswith("- ") and "`nakhon verify" in text:
            runs.append(text[2:])
    return rows, notes, runs


def _report(rows: list[Row], kept: tuple[list[str], list[str], list[str]], run: str) -> str:
    """The Markdown report: this run's rows, and an earlier report's rows for scenarios not run now."""
    fresh = markdown(rows).splitlines()
    header, body = fresh[:2], [ln for ln in fresh[2:] if re.match(r"^\| \d+ \|", ln)]
    notes = [ln for ln in fresh if re.match(r"^\d+\. ", ln)]
    done = {r.number for r in rows}

    def number(line: str) -> int:
        return int(re.findall(r"\d+", line)[0])

    body += [ln for ln in kept[0] if number(ln) not in done]
    notes += [ln for ln in kept[1] if number(ln) not in done]
    out = ["# Verification: faults and attacks", "", "Each row comes from a freshly started platform; runs:", ""]
    out += [f"- {r}" for r in [*kept[2], run]] + ["", *header, *sorted(body, key=number)]
    if notes:
        out += ["", "Notes:", "", *sorted(notes, key=number)]
    return "\n".join(out) + "\n"
