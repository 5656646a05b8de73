"""The flags of `nakhon simulate`, kept light: building the parser imports no numpy."""

from __future__ import annotations

import argparse
from pathlib import Path


def _presets() -> list[str]:
    return sorted(p.stem for p in (Path(__file__).resolve().parent / "scenarios").glob("*.yaml"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", choices=("run", "bench"), default="run",
                   help="run a fleet (default) or `bench`: find the largest fleet this machine sustains")
    p.add_argument("--scenario", default=None, help=f"a preset ({', '.join(_presets())}) or a YAML scenario file; flags override it")
    p.add_argument("--per-city", type=int, default=None, help="devices per city (default 20)")
    p.add_argument("--cities", nargs="*", help="city slugs (default: every registered city)")
    p.add_argument("--interval", type=float, default=None, help="simulated seconds between a device's readings (default 60)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--realtime", action="store_true", help="send each reading at its own time (the default)")
    mode.add_argument("--speed", type=float, default=None, help="accelerated: simulated seconds per second (with --since)")
    mode.add_argument("--backfill-days", type=float, default=None, help="send the last D days as batches with their original timestamps")
    p.add_argument("--since", default=None, help="accelerated: start this long ago, e.g. 6h (then run on in real time)")
    p.add_argument("--duration", default=None, help="stop after this much simulated time, e.g. 90s, 30m, 2h (default: until Ctrl-C)")
    p.add_argument("--count", type=int, default=None, help="stop after this many readings per device")
    p.add_argument("--batch", type=int, default=None, help="readings per batch message in backfill and replay (max 1000)")
    p.add_argument("--seed", type=int, default=None, help="random seed: same seed, same devices and readings (default 1)")
    p.add_argument("--credentials", default=None,
                   help='JSON file {"device_id": "password"}, or a folder of provisioned config.json files (username = device id)')
    p.add_argument("--provision", default=None, metavar="API_URL",
                   help="first register devices missing from --credentials through the API (admin key in NAKHON_API_KEY), as real ones are")
    p.add_argument("--procs", type=int, default=None, help="processes to spread the devices over (default 1)")
    p.add_argument("--connect-rate", type=float, default=None, help="new connections per second at start (default 1000)")
    p.add_argument("--prefix", default=None, help="device id prefix (default sim)")
    p.add_argument("--fault", action="append", default=[], metavar="SPEC",
                   help="inject a fault, e.g. offline:devices=2,at_s=30,for_s=60 or malformed:reasons=bad_json+empty (repeatable)")
    p.add_argument("--firmware", type=int, default=None, metavar="K",
                   help="also run K devices that are the real firmware/ on the MicroPython unix port, fed by the same city signals")
    p.add_argument("--no-confirm", dest="confirm", action="store_false",
                   help="free a reading at the broker's PUBACK instead of keeping it until the platform's `stored` confirmation "
                        "(the firmware's way, and the default)")
    p.add_argument("--confirm-timeout", type=float, default=None, metavar="S",
                   help="send unconfirmed readings again when no `stored` confirmation came within S seconds, "
                        "the wait doubling while none comes (default 30)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--list-presets", action="store_true", help="print the preset scenarios and exit")
    # bench only
    p.add_argument("--devices", type=int, default=10_000, help="bench: the largest fleet to try (default 10000)")
    p.add_argument("--root", default="var/simbench", help="bench: folder for the benchmark's own broker (default var/simbench)")
    p.add_argument("--hold", type=float, default=30.0, help="bench: seconds to hold each fleet size (default 30)")
