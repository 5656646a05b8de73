"""Firmware releases: what goes on the broker for an over-the-air update, and who gets it.

A release is a built firmware lib/ folder (.mpy files, `nakhon firmware build`) with a
version string. Publishing it puts every file on the broker once, retained and
content-addressed (nakhon/fw/{sha256}/{n}, contract/ota.py), then the offer, retained,
on the `ota` topic of each device of the cohort. The devices do the rest and report
in their status (`fw`, and `ota`: staging, trial, updated, refused, rolled_back).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from typing import Any

from contract import ota, topics


def manifest(files: dict[str, bytes]) -> list[tuple[str, str, int]]:
    """(path, sha256 hex, size) of each file, sorted by path."""
    return [(p, hashlib.sha256(files[p]).hexdigest(), len(files[p])) for p in sorted(files)]


def messages(files: dict[str, bytes], release_id: int, fw: str, targets: Iterable[tuple[str, str]], chunk: int = ota.DEFAULT_CHUNK,
             boots: int = 3, minutes: int = 10) -> list[tuple[str, bytes]]:
    """The retained messages of a release, files first, then one offer per (city, device)."""
    man = manifest(files)
    offer = ota.encode_offer(release_id, fw, man, chunk, boots, minutes)
    out: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    for path, sha, _ in man:
        if sha in seen:
            continue  # the same content under two paths: stored once
        seen.add(sha)
        for n, piece in enumerate(ota.split(files[path], chunk)):
            out.append((topics.firmware_chunk_topic(sha, n), piece))
    for city, device in targets:
        out.append((topics.topic(city, device, "ota"), offer))
    return out


def cohort(devices: list[tuple[str, str]], ids: list[str] | None = None, city: str | None = None, share: float = 100.0,
           seed: int = 0) -> list[tuple[str, str]]:
    """(city, id) of the devices a release goes to: the ids named, or a city's (or all),
    of those a share in percent, drawn the same way for the same seed (a second wave at
    a larger share keeps the first wave's devices)."""
    if not 0 < share <= 100:
        raise ValueError("share must be a percentage in (0, 100]")
    if ids:
        known = {d for _, d in devices}
        missing = sorted(set(ids) - known)
        if missing:
            raise ValueError(f"unknown devices {missing}")
        picked = [(c, d) for c, d in devices if d in set(ids)]
    else:
        picked = [(c, d) for c, d in devices if city is None or c == city]
    ranked = sorted(picked, key=lambda cd: random.Random(f"{seed}:{cd[1]}").random())
    n = len(ranked) if share >= 100 else round(len(ranked) * share / 100)
    return sorted(ranked[:n])


def rollout(targets: list[str], fw: str, release_id: int, status: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Where a release stands, from each target's last status (fw, ota_id, ota_state, ota_reason):
    counts per state and the devices with their state and reason."""
    rows = []
    counts: dict[str, int] = {}
    for dev in sorted(targets):
        s = status.get(dev, {})
        if s.get("ota_id") is not None and int(s["ota_id"]) == release_id:
            state = str(s.get("ota_state"))
        elif s.get("fw") == fw:
            state = "updated"  # it runs the version (another release of it, or flashed)
        else:
            state = "pending"  # has not reported on this release yet
        counts[state] = counts.get(state, 0) + 1
        row: dict[str, Any] = {"device": dev, "state": state, "fw": s.get("fw")}
        if state in ("refused", "rolled_back") and s.get("ota_reason"):
            row["reason"] = s["ota_reason"]
        rows.append(row)
    return {"id": release_id, "fw": fw, "targets": len(targets), "counts": counts, "devices": rows}
