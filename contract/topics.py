"""MQTT topics of the telemetry contract (v1), all QoS 1.

nakhon/v1/{city}/{device_id}/telemetry   device -> platform readings
nakhon/v1/{city}/{device_id}/status      retained; online doc, offline LWT
nakhon/v1/{city}/{device_id}/config      retained; platform -> device
nakhon/v1/{city}/{device_id}/stored      platform -> device: readings now durable
nakhon/v1/{city}/{device_id}/ota         retained; platform -> device: firmware offer (contract/ota.py)
nakhon/fw/{sha256}/{n}                   retained; chunk n of the firmware file with that SHA-256
                                         (read by every device: firmware holds no secret, and the
                                         device checks each file against its offer's hash)

Platform services (ingest workers, API, observers) log in to the broker with
usernames and client ids outside the device-id alphabet (`nakhon_ingest_0`),
so no provisioned device can take a service's identity or session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from contract.cities import CITY_SLUG_PATTERN

PREFIX: Final = "nakhon/v1"
QOS: Final = 1
CHANNELS: Final = ("telemetry", "status", "config", "stored", "ota")
FIRMWARE_PREFIX: Final = "nakhon/fw"
DEVICE_ID_PATTERN: Final = r"^[a-z0-9][a-z0-9-]{2,31}$"

_DEVICE_RE: Final = re.compile(DEVICE_ID_PATTERN)
_CITY_RE: Final = re.compile(CITY_SLUG_PATTERN)

# Platform identities: an underscore puts them outside the device-id alphabet.
SERVICE_PREFIX: Final = "nakhon_"
INGEST_USER: Final = "nakhon_ingest"
API_USER: Final = "nakhon_api"  # provisioning and config pushes
OBSERVER_USER: Final = "nakhon_observer"  # read-only view of the whole stream
ALERTS_USER: Final = "nakhon_alerts"  # the alert evaluator: reads telemetry, publishes on nakhon/v1/{city}/alerts
# Device ids a provisioning request may never take: anything named like the platform.
RESERVED_PREFIXES: Final = ("nakhon", "admin", "root", "mosquitto")

# Subscriptions used by the platform.
TELEMETRY_FILTER: Final = f"{PREFIX}/+/+/telemetry"
STATUS_FILTER: Final = f"{PREFIX}/+/+/status"
# Ingest workers' marks for their catch session (ingest/catch.py): outside nakhon/v1, so
# nothing that reads the device stream sees them, and outside every device's ACL.
INGEST_MARK_TOPIC: Final = "nakhon/_ingest/mark"


class TopicError(ValueError):
    """A topic outside the contract."""


class TopicIdError(TopicError):
    """A contract topic whose city or device id is not acceptable."""


@dataclass(frozen=True, slots=True)
class Topic:
    city: str
    device: str
    channel: str


def is_device_id(value: str) -> bool:
    # fullmatch: `$` alone would accept a trailing newline.
    return _DEVICE_RE.fullmatch(value) is not None


def is_service_id(value: str) -> bool:
    """A platform identity: printable, and impossible for any device to have."""
    return bool(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value)) and not is_device_id(value)


def reserved_device_id(value: str) -> bool:
    """An id provisioning refuses although it matches the pattern (it would look like the platform)."""
    return value.startswith(RESERVED_PREFIXES)


def topic(city: str, device: str, channel: str) -> str:
    """Build a contract topic; refuses ids that would not parse back."""
    if _CITY_RE.fullmatch(city) is None:
        raise TopicError(f"bad city slug {city!r}")
    if not is_device_id(device):
        raise TopicError(f"bad device id {device!r}")
    if channel not in CHANNELS:
        raise TopicError(f"bad channel {channel!r}")
    return f"{PREFIX}/{city}/{device}/{channel}"


def firmware_chunk_topic(sha256: str, n: int) -> str:
    """Where chunk n of the firmware file with this SHA-256 (hex) is retained."""
    if re.fullmatch(r"[0-9a-f]{64}", sha256) is None or n < 0:
        raise TopicError(f"bad firmware chunk {sha256[:70]!r}/{n}")
    return f"{FIRMWARE_PREFIX}/{sha256}/{n}"


def parse_topic(name: str, known_cities: object = None) -> Topic:
    """Split a topic into city, device and channel, checking each part.

    `known_cities` (a container of slugs) restricts the city to the registry.
    """
    parts = name.split("/")
    if len(parts) != 5 or parts[0] != "nakhon" or parts[1] != "v1":
        raise TopicError(f"not a nakhon/v1 topic: {name[:200]!r}")
    city, device, channel = parts[2], parts[3], parts[4]
    if _CITY_RE.fullmatch(city) is None:
        raise TopicIdError(f"bad city slug {city[:64]!r}")
    if known_cities is not None and city not in known_cities:  # type: ignore[operator]
        raise TopicIdError(f"unknown city {city!r}")
    if not is_device_id(device):
        raise TopicIdError(f"bad device id {device[:64]!r}")
    if channel not in CHANNELS:
        raise TopicError(f"bad channel {channel[:32]!r}")
    return Topic(city, device, channel)
