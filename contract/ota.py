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

A link offer on the same topic changes how the device reaches the platform instead:
      {"v": 1, "id": 8, "minutes": 10, "link": {"wifi": {"ssid": "city-iot-2", "password": "..."},
                                               "mqtt": {"host": "mqtt.example", "port": 8883, "ca": "-----BEGIN..."}}}
Any of wifi, mqtt.host, mqtt.port, mqtt.ca may be given. The device keeps the settings
that worked, tries the new ones (after a reset), and keeps them once a reading has been
acknowledged through them; without that within `minutes` it falls back to the old ones
and reports the offer rolled back. (New MQTT credentials travel in the retained config
with the same old-until-confirmed rule: contract/device_config.py.)

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
_HOST_RE: Final = re.compile(r"^[A-Za-z0-9.-]{1,64}$")
CA_MAX: Final = 3000


def check_link(link: Any) -> dict[str, Any]:
    """The `link` of a link offer; OtaError says what is wrong."""
    if type(link) is not dict or not link or link.keys() - {"wifi", "mqtt"}:
        raise OtaError('link must be an object of "wifi" and/or "mqtt"')
    wifi = link.get("wifi")
    if wifi is not None and (type(wifi) is not dict or wifi.keys() - {"ssid", "password"} or type(wifi.get("ssid")) is not str
                             or not 1 <= len(wifi["ssid"]) <= 32 or type(wifi.get("password", "")) is not str
                             or len(wifi.get("password", "")) > 64):
        raise OtaError("link.wifi must be {ssid: 1-32 characters, password: up to 64}")
    mq = link.get("mqtt")
    if mq is not None:
        if type(mq) is not dict or not mq or mq.keys() - {"host", "port", "ca"}:
            raise OtaError('link.mqtt must be an object of "host", "port" and/or "ca"')
        if "host" in mq and (type(mq["host"]) is not str or not _HOST_RE.fullmatch(mq["host"])):
            raise OtaError("link.mqtt.host must be a host name or address")
        if "port" in mq and (type(mq["port"]) is not int or not 1 <= mq["port"] <= 65535):
            raise OtaError("link.mqtt.port must be an integer 1..65535")
        if "ca" in mq and (type(mq["ca"]) is not str or not mq["ca"].startswith("-----BEGIN") or len(mq["ca"]) > CA_MAX):
            raise OtaError(f"link.mqtt.ca must be PEM text of at most {CA_MAX} characters")
    return link


class OtaError(ValueError):
    pass


def check_offer(doc: Any) -> dict[str, Any]:
    """The offer if a device will act on it; OtaError says what is wrong."""
    if type(doc) is not dict:
        raise OtaError("offer must be a JSON object")
    extra = sorted(doc.keys() - {"v", "id", "fw", "chunk", "boots", "minutes", "files", "link"})
    if extra:
        raise OtaError(f"unknown keys {extra}")
    if doc.get("v") != VERSION:
        raise OtaError(f"v must be {VERSION}")
    if type(doc.get("id")) is not int or not 0 <= doc["id"] < 1 << 31:
        raise OtaError("id must be an integer 0..2^31-1")
    if "link" in doc:
        if doc.keys() - {"v", "id", "minutes", "link"}:
            raise OtaError("a link offer holds v, id, minutes and link only")
        m = doc.get("minutes", 10)
        if type(m) is not int or not 1 <= m <= 1440:
            raise OtaError("minutes must be an integer 1..1440")
        check_link(doc["link"])
        return doc
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


def encode_link_offer(offer_id: int, link: dict[str, Any], minutes: int = 10) -> bytes:
    raw = orjson.dumps(check_offer({"v": VERSION, "id": offer_id, "minutes": minutes, "link": link}))
    if len(raw) > MAX_BYTES:
        raise OtaError(f"offer of {len(raw)} bytes > {MAX_BYTES}")
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
