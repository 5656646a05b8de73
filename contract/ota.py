"""Over-the-air updates (contract v1): the offer, the files, what a device reports.

    topic nakhon/v1/{city}/{device_id}/ota, retained, QoS 1, platform -> device:
      {"v": 1, "id": 7, "fw": "0.4.0", "chunk": 1024, "boots": 3, "minutes": 10,
       "files": [["app.mpy", "<sha256 hex>", 14321], ["drivers/pm.mpy", "...", 2210], ...]}

- `id` numbers the platform's releases (a rollout); a device tries one id once: a
  version it refused or rolled back is offered again only under a new id.
- `fw` the version string the new firmware reports in its status (`fw`).
- `files` every file of the version, relative to the firmware's lib/ folder (all .mpy,
  `app.mpy` among them), with its SHA-256 and size. The device stages them all, in a
  slot beside the running version, and runs nothing of a version until every file
  matches.
- `chunk` bytes per chunk message (256..3072); `boots`, `minutes` the probation: a new
  version that has not had one reading acknowledged by the broker within `boots` boots
  or `minutes` minutes of running is rolled back by the device.

    topic nakhon/fw/{sha256}/{n}, retained: bytes [n*chunk, (n+1)*chunk) of that file.

Content-addressed: a file unchanged between releases is stored once. Every device may
read these (firmware holds no secret); only the platform may write them or an offer.
Integrity rests on the offer's hashes, which reach the device over its verified TLS
session on a topic only the platform can publish to (not on a signature: see README).

The device reports the last update in `status` as
  "ota": {"id": 7, "fw": "0.4.0", "state": "rolled_back", "reason": "no publish in 3 boots"}
with state one of STATES. The firmware checks the offer's rules in firmware/lib/ota.py.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

from contract.catalogue import FW_PATTERN

VERSION: Final = 1
STATES: Final = ("staging", "trial", "updated", "refused", "rolled_back")
CHUNK_MIN: Final = 256
CHUNK_MAX: Final = 3072  # the firmware skips messages over 4096 bytes
DEFAULT_CHUNK: Final = 1024
MAX_BYTES: Final = 4096
REASON_PATTERN: Final = r"^[ -~]{1,64}$"
_PATH_RE: Final = re.compile(r"^[a-z0-9_]+(/[a-z0-9_]+)*\.mpy$")
_SHA_RE: Final = re.compile(r"^[0-9a-f]{64}$")
_FW_RE: Final = re.compile(FW_PATTERN)
_REASON_RE: Final = re.compile(REASON_PATTERN)


class OtaError(ValueError):
    pass


def check_offer(doc: Any) -> dict[str, Any]:
    """The offer if a device will act on it; OtaError says what is wrong."""
    if type(doc) is not dict:
        raise OtaError("offer must be a JSON object")
    extra = sorted(doc.keys() - {"v", "id", "fw", "chunk", "boots", "minutes", "files"})
    if extra:
        raise OtaError(f"unknown keys {extra}")
    if doc.get("v") != VERSION:
        raise OtaError(f"v must be {VERSION}")
    if type(doc.get("id")) is not int or not 0 <= doc["id"] < 1 << 31:
        raise OtaError("id must be an integer 0..2^31-1")
    if type(doc.get("fw")) is not str or not _FW_RE.fullmatch(doc["fw"]):
        raise OtaError(f"fw must match {FW_PATTERN}")
    chunk = doc.get("chunk", DEFAULT_CHUNK)
    if type(chunk) is not int or not CHUNK_MIN <= chunk <= CHUNK_MAX:
        raise OtaError(f"chunk must be an integer {CHUNK_MIN}..{CHUNK_MAX}")
    for key, hi in (("boots", 20), ("minutes", 1440)):
        v = doc.get(key, 1)
        if type(v) is not int or not 1 <= v <= hi:
            raise OtaError(f"{key} must be an integer 1..{hi}")
    files = doc.get("files")
    if type(files) is not list or not files:
        raise OtaError("files must be a non-empty list")
    for f in files:
        if (type(f) is not list or len(f) != 3 or type(f[0]) is not str or not _PATH_RE.fullmatch(f[0])
                or type(f[1]) is not str or not _SHA_RE.fullmatch(f[1]) or type(f[2]) is not int or f[2] < 0):
            raise OtaError(f"each file must be [path.mpy, sha256 hex, size]: {str(f)[:80]}")
    if "app.mpy" not in {f[0] for f in files}:
        raise OtaError("files must hold app.mpy")
    return doc


def encode_offer(release_id: int, fw: str, files: list[tuple[str, str, int]], chunk: int = DEFAULT_CHUNK,
                 boots: int = 3, minutes: int = 10) -> bytes:
    doc = {"v": VERSION, "id": release_id, "fw": fw, "chunk": chunk, "boots": boots, "minutes": minutes,
           "files": [list(f) for f in files]}
    raw = orjson.dumps(check_offer(doc))
    if len(raw) > MAX_BYTES:
        raise OtaError(f"offer of {len(raw)} bytes > {MAX_BYTES}: fewer files")
    return raw


def split(data: bytes, chunk: int = DEFAULT_CHUNK) -> list[bytes]:
    """A file's chunk messages, in order (an empty file is one empty chunk)."""
    return [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]


def check_report(value: Any) -> dict[str, Any]:
    """The `ota` field of a status document, as status fields (ota_id, ota_fw, ota_state, ota_reason)."""
    if type(value) is not dict or value.keys() - {"id", "fw", "state", "reason"}:
        raise OtaError('ota must be an object of "id", "fw", "state" and optionally "reason"')
    if value.get("state") not in STATES:
        raise OtaError(f"ota.state must be one of {STATES}")
    if type(value.get("id")) is not int or not 0 <= value["id"] < 1 << 31:
        raise OtaError("ota.id must be an integer 0..2^31-1")
    if type(value.get("fw")) is not str or not _FW_RE.fullmatch(value["fw"]):
        raise OtaError(f"ota.fw must match {FW_PATTERN}")
    out: dict[str, Any] = {"ota_id": float(value["id"]), "ota_fw": value["fw"], "ota_state": value["state"]}
    if "reason" in value:
        if type(value["reason"]) is not str or not _REASON_RE.fullmatch(value["reason"]):
            raise OtaError("ota.reason must be 1-64 printable ASCII characters")
        out["ota_reason"] = value["reason"]
    return out
