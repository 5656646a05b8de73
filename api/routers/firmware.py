"""Firmware releases over the air: publish one to a cohort, follow its rollout.

`POST /v1/firmware/releases` takes a built firmware (lib-relative .mpy files, base64,
as `nakhon firmware release` sends them) and a cohort (device ids, a city, a share of
a city or of all), records the release, and publishes it on the broker (api/releases.py,
contract/ota.py). `GET /v1/firmware/releases/{id}` shows the rollout from the devices'
own status reports: who runs the version, who is still staging or on probation, who
refused it or rolled it back, and why.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, Field

from api import releases
from api.broker import BrokerError
from api.deps import READ_ERRORS, WRITE_ERRORS, DynSecDep, InfluxDep, RegistryDep
from api.security import Admin, check_city
from contract import ota, storage, topics
from contract.catalogue import FW_PATTERN
from contract.cities import CITY_SLUG_PATTERN
from contract.influx import InfluxError
from contract.topics import DEVICE_ID_PATTERN

router = APIRouter(prefix="/v1/firmware", tags=["firmware"])

MAX_FILES = 40
MAX_FILE_BYTES = 256 * 1024


class ReleaseIn(BaseModel):
    """A built firmware version and the devices to offer it to (ids, or a city and/or a share, or all)."""

    fw: Annotated[str, Field(pattern=FW_PATTERN, description="the version the new firmware reports as `fw` in its status")]
    files: Annotated[dict[str, str], Field(min_length=1, max_length=MAX_FILES,
                                           description="lib-relative path (e.g. app.mpy, drivers/pm.mpy) -> content, base64")]
    devices: Annotated[list[Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]], Field(max_length=10000)] = []
    city: Annotated[str | None, Field(pattern=CITY_SLUG_PATTERN)] = None
    share: Annotated[float, Field(gt=0, le=100, description="percent of the city's (or all) devices, drawn reproducibly")] = 100
    all: bool = Field(False, description="every active device (with share: a share of them)")
    chunk: Annotated[int, Field(ge=ota.CHUNK_MIN, le=ota.CHUNK_MAX)] = ota.DEFAULT_CHUNK
    boots: Annotated[int, Field(ge=1, le=20, description="boots without a publish before the device rolls back")] = 3
    minutes: Annotated[int, Field(ge=1, le=1440, description="minutes without a publish before the device rolls back")] = 10


class ReleaseOut(BaseModel):
    id: int
    fw: str
    created: str
    cohort: dict[str, Any]
    targets: list[str]
    files: int


def _out(r: dict[str, Any]) -> ReleaseOut:
    return ReleaseOut(id=r["id"], fw=r["fw"], created=r["created"], cohort=r["cohort"], targets=r["targets"], files=len(r["manifest"]))


@router.post("/releases", response_model=ReleaseOut, status_code=201, responses=WRITE_ERRORS)
def publish_release(body: ReleaseIn, key: Admin, registry: RegistryDep, dynsec: DynSecDep) -> ReleaseOut:
    """Publish a firmware version to a cohort: its files retained once on the broker, the offer on each device's `ota` topic."""
    targets = _targets(key, registry, body.devices, body.city, body.share, body.all)
    files: dict[str, bytes] = {}
    for path, text in body.files.items():
        try:
            files[path] = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise HTTPException(400, f"file {path[:80]!r} is not base64") from None
        if len(files[path]) > MAX_FILE_BYTES:
            raise HTTPException(400, f"file {path[:80]!r} is over {MAX_FILE_BYTES} bytes")
    cohort: dict[str, Any] = {"devices": body.devices} if body.devices else {"city": body.city, "share": body.share}
    man = releases.manifest(files)
    try:
        ota.encode_offer(0, body.fw, man, body.chunk, body.boots, body.minutes)
    except ota.OtaError as exc:
        raise HTTPException(400, f"release: {exc}") from None
    rid = registry.add_release(body.fw, [list(m) for m in man], [d for _, d in targets], cohort, key.id)
    try:
        dynsec.publish_retained(releases.messages(files, rid, body.fw, targets, body.chunk, body.boots, body.minutes))
    except BrokerError as exc:
        registry.remove_release(rid)
        raise HTTPException(503, f"broker: {exc}") from None
    got = registry.release(rid)
    assert got is not None
    return _out(got)


class WifiIn(BaseModel):
    ssid: Annotated[str, Field(min_length=1, max_length=32)]
    password: Annotated[str, Field(max_length=64)] = ""


class MqttLinkIn(BaseModel):
    host: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9.-]{1,64}$")] = None
    port: Annotated[int | None, Field(ge=1, le=65535)] = None
    ca: Annotated[str | None, Field(max_length=ota.CA_MAX, description="the CA bundle devices verify the broker with, PEM")] = None


class LinkIn(BaseModel):
    """New link settings for a cohort: kept by each device once a reading got through them, else dropped after `minutes`."""

    wifi: WifiIn | None = None
    mqtt: MqttLinkIn | None = None
    devices: Annotated[list[Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]], Field(max_length=10000)] = []
    city: Annotated[str | None, Field(pattern=CITY_SLUG_PATTERN)] = None
    share: Annotated[float, Field(gt=0, le=100)] = 100
    all: bool = False
    minutes: Annotated[int, Field(ge=1, le=1440)] = 10


def _targets(key: Any, registry: Any, devices: list[str], city: str | None, share: float, every: bool) -> list[tuple[str, str]]:
    if bool(devices) + (city is not None or every) != 1:
        raise HTTPException(400, "give the cohort as devices, or as a city and/or all (with an optional share)")
    if key.city is not None and (every or (city is not None and city != key.city)):  # its own city only
        raise HTTPException(403, f"this key manages {key.city} only")
    active = [(d.city, d.id) for d in registry.devices(state="active")]
    try:
        targets = releases.cohort(active, devices or None, city, share)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    for c, _ in targets:
        check_city(key, c)
    if not targets:
        raise HTTPException(400, "the cohort holds no active device")
    return targets


@router.post("/links", response_model=ReleaseOut, status_code=201, responses=WRITE_ERRORS)
def publish_link(body: LinkIn, key: Admin, registry: RegistryDep, dynsec: DynSecDep) -> ReleaseOut:
    """Offer new link settings (Wi-Fi, broker host/port, CA) to a cohort over the `ota` topic; followed like a release.
    What changed is recorded, not the Wi-Fi password."""
    link: dict[str, Any] = {}
    if body.wifi is not None:
        link["wifi"] = body.wifi.model_dump()
    if body.mqtt is not None:
        m = {k: v for k, v in body.mqtt.model_dump().items() if v is not None}
        if m:
            link["mqtt"] = m
    try:
        ota.check_link(link)
    except ota.OtaError as exc:
        raise HTTPException(400, f"link: {exc}") from None
    targets = _targets(key, registry, body.devices, body.city, body.share, body.all)
    cohort: dict[str, Any] = {"devices": body.devices} if body.devices else {"city": body.city, "share": body.share}
    cohort["link"] = sorted([*(["wifi"] if "wifi" in link else []), *(f"mqtt.{k}" for k in link.get("mqtt", {}))])
    rid = registry.add_release("link", [], [d for _, d in targets], cohort, key.id)
    try:
        offer = ota.encode_link_offer(rid, link, body.minutes)
        dynsec.publish_retained([(topics.topic(c, d, "ota"), offer) for c, d in targets])
    except ota.OtaError as exc:
        registry.remove_release(rid)
        raise HTTPException(400, f"link: {exc}") from None
    except BrokerError as exc:
        registry.remove_release(rid)
        raise HTTPException(503, f"broker: {exc}") from None
    got = registry.release(rid)
    assert got is not None
    return _out(got)


@router.get("/releases", response_model=list[ReleaseOut], responses=READ_ERRORS)
def list_releases(key: Admin, registry: RegistryDep) -> list[ReleaseOut]:
    """Every release, newest first."""
    return [_out(r) for r in registry.releases()]


_STATUS_QUERY = (f'SELECT last("fw") AS fw, last("ota_id") AS ota_id, last("ota_state") AS ota_state, last("ota_reason") AS ota_reason '
                 f'FROM "{storage.RP_RAW}"."{storage.STATUS_MEASUREMENT}" WHERE time > now() - 30d GROUP BY "device"')


class RolloutDevice(BaseModel):
    device: str
    state: str = Field(description="pending, staging, trial, updated, refused or rolled_back")
    fw: str | None = Field(None, description="the version it last reported running")
    reason: str | None = None


class Rollout(BaseModel):
    id: int
    fw: str
    targets: int
    counts: dict[str, int]
    devices: list[RolloutDevice]


@router.get("/releases/{release}", response_model=Rollout, responses=READ_ERRORS)
def rollout(release: Annotated[int, Path(ge=1)], key: Admin, registry: RegistryDep, influx: InfluxDep) -> dict[str, Any]:
    """Where a release stands, from the devices' status: counts per state and each device with its reason."""
    r = registry.release(release)
    if r is None:
        raise HTTPException(404, f"unknown release {release}")
    targets = r["targets"]
    if key.city is not None:
        mine = {d.id for d in registry.devices(city=key.city)}
        targets = [t for t in targets if t in mine]
    status: dict[str, dict[str, Any]] = {}
    try:
        for s in influx.series(_STATUS_QUERY):
            cols = s["columns"]
            dev = s.get("tags", {}).get("device")
            if dev and s["values"]:
                status[dev] = dict(zip(cols, s["values"][0], strict=False))
    except InfluxError as exc:
        raise HTTPException(503, f"database: {exc}") from None
    return releases.rollout(targets, r["fw"], r["id"], status)
