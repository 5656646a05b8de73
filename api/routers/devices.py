"""The device registry and provisioning: create (with broker credentials), rotate, revoke, list."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from api.broker import BrokerError, new_password
from api.deps import READ_ERRORS, WRITE_ERRORS, DynSecDep, InfluxDep, RegistryDep, SettingsDep
from api.history import latest_device_query
from api.params import DevicePath
from api.registry import Conflict, Device
from api.security import Admin, Reader, check_city
from contract import topics
from contract.catalogue import FW_PATTERN, METRICS
from contract.cities import CITY_SLUG_PATTERN
from contract.settings import Settings
from contract.status import DEVICE_KINDS, DeviceKind

router = APIRouter(prefix="/v1/devices", tags=["devices"])

Kind = DeviceKind
assert set(Kind.__args__) == set(DEVICE_KINDS)  # type: ignore[attr-defined]
SensorName = Annotated[str, Field(pattern=r"^[a-z0-9_]{1,32}$")]
HardwareValue = Annotated[str, Field(max_length=32, pattern=r"^[A-Za-z0-9_.-]*$")] | int | float


class Hardware(BaseModel):
    """One firmware `sensors` entry: a name, a driver type and its pins/ports (e.g. uart, rx, tx)."""

    model_config = {"extra": "allow"}
    __pydantic_extra__: dict[str, HardwareValue] = Field(init=False)  # pins and ports: numbers or short names
    name: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,16}$")]
    type: Literal["pms5003", "sds011", "sht3x", "bme280", "ultrasonic", "rain", "sound"]


class DeviceIn(BaseModel):
    id: Annotated[str, Field(pattern=topics.DEVICE_ID_PATTERN, description="device id; also its MQTT username and client id")]
    city: Annotated[str, Field(pattern=CITY_SLUG_PATTERN)]
    kind: Kind
    sensors: Annotated[list[SensorName], Field(min_length=1, max_length=32, description="catalogue metrics it reports")]
    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]
    installed: date | None = None
    fw: Annotated[str | None, Field(pattern=FW_PATTERN)] = None
    interval_s: Annotated[int, Field(ge=1, le=86400)] = 60
    hardware: Annotated[list[Hardware], Field(max_length=16, description="firmware sensors entries, copied into config.json")] = []


class DeviceOut(BaseModel):
    id: str
    city: str
    kind: str
    sensors: list[str]
    lat: float
    lon: float
    installed: date
    fw: str | None
    interval_s: int
    state: str
    created: datetime
    updated: datetime
    last_seen: datetime | None = None


class MqttConfig(BaseModel):
    host: str
    port: int
    tls: bool
    username: str
    password: str
    client_id: str
    keepalive_s: int


class DeviceConfig(BaseModel):
    """The device's config.json (firmware/lib/config.py): shown once, never stored in clear.

    The technician adds `wifi` on site; `sensors` holds the hardware entries given at provisioning."""

    v: int
    device_id: str
    city: str
    kind: str
    metrics: list[str]
    sensors: list[dict[str, Any]]
    interval_s: int
    lat: float
    lon: float
    mqtt: MqttConfig
    topics: dict[str, str]


class Provisioned(BaseModel):
    device: DeviceOut
    config: DeviceConfig


def _out(d: Device, last_seen: datetime | None = None) -> dict[str, Any]:
    return {**{k: getattr(d, k) for k in DeviceOut.model_fields if k != "last_seen"}, "last_seen": last_seen}  # hardware stays out


def _config(settings: Settings, d: Device, password: str) -> DeviceConfig:
    mqtt = MqttConfig(host=settings.device_mqtt_host or settings.mqtt_host, port=settings.device_mqtt_port or settings.mqtt_port,
                      tls=settings.mqtt_tls, username=d.id, password=password, client_id=d.id, keepalive_s=60)
    return DeviceConfig(v=1, device_id=d.id, city=d.city, kind=d.kind, metrics=d.sensors, sensors=d.hardware, interval_s=d.interval_s, lat=d.lat,
                        lon=d.lon, mqtt=mqtt, topics={ch: topics.topic(d.city, d.id, ch) for ch in topics.CHANNELS})


def _get(registry: RegistryDep, device: str) -> Device:
    d = registry.device(device)
    if d is None:
        raise HTTPException(404, f"unknown device {device!r}")
    return d


def last_seen(influx: InfluxDep, device: str) -> datetime | None:
    newest = 0
    for s in influx.series(latest_device_query(), {"id": device}):
        cols = s["columns"]
        if "ts" in cols:
            newest = max([newest] + [int(v[cols.index("ts")]) for v in s["values"] if v[cols.index("ts")] is not None])
    return datetime.fromtimestamp(newest / 1000, UTC) if newest else None


@router.post("", response_model=Provisioned, status_code=201, responses=WRITE_ERRORS)
def provision(body: DeviceIn, key: Admin, registry: RegistryDep, dynsec: DynSecDep, settings: SettingsDep) -> Provisioned:
    """Register a device and create its broker credentials and ACL; returns its config.json once."""
    check_city(key, body.city)
    if body.city not in settings.cities:
        raise HTTPException(400, f"unknown city {body.city!r}")
    unknown = [s for s in body.sensors if s not in METRICS]
    if unknown:
        raise HTTPException(400, f"unknown sensors {unknown}")
    d = Device(id=body.id, city=body.city, kind=body.kind, sensors=list(dict.fromkeys(body.sensors)), lat=body.lat, lon=body.lon,
               installed=body.installed or datetime.now(UTC).date(), fw=body.fw, interval_s=body.interval_s,
               hardware=[h.model_dump() for h in body.hardware])
    password = new_password()
    try:
        registry.add_device(d, password)
    except Conflict:
        raise HTTPException(409, f"device {body.id!r} exists (ids are never reused)") from None
    try:
        dynsec.create_device(d.city, d.id, password)
    except BrokerError as exc:
        registry.remove_device(d.id)  # all or nothing
        raise HTTPException(503, f"broker: {exc}") from None
    return Provisioned(device=DeviceOut(**_out(d)), config=_config(settings, d, password))


@router.get("", response_model=list[DeviceOut], responses=READ_ERRORS)
def list_devices(_key: Reader, registry: RegistryDep,
                 city: Annotated[str | None, Query(pattern=CITY_SLUG_PATTERN)] = None,
                 state: Annotated[Literal["active", "retired"] | None, Query()] = None) -> list[dict[str, Any]]:
    """Registered devices, optionally of one city or state."""
    return [_out(d) for d in registry.devices(city=city, state=state)]


@router.get("/{device}", response_model=DeviceOut, responses=READ_ERRORS)
def get_device(device: DevicePath, _key: Reader, registry: RegistryDep, influx: InfluxDep) -> dict[str, Any]:
    """One device, with when it was last heard from."""
    return _out(_get(registry, device), last_seen(influx, device))


@router.post("/{device}/rotate", response_model=Provisioned, responses=WRITE_ERRORS)
def rotate(device: DevicePath, key: Admin, registry: RegistryDep, dynsec: DynSecDep, settings: SettingsDep) -> Provisioned:
    """New broker credentials (the old ones stop working at once); returns the new config.json once."""
    d = _get(registry, device)
    check_city(key, d.city)
    if d.state != "active":
        raise HTTPException(409, "a retired device cannot be given credentials")
    password = new_password()
    try:
        dynsec.set_password(d.id, password)
    except BrokerError as exc:
        raise HTTPException(503, f"broker: {exc}") from None
    registry.set_password(d.id, password)
    return Provisioned(device=DeviceOut(**_out(registry.device(d.id) or d)), config=_config(settings, d, password))


@router.post("/{device}/revoke", response_model=DeviceOut, responses=WRITE_ERRORS)
def revoke(device: DevicePath, key: Admin, registry: RegistryDep, dynsec: DynSecDep) -> dict[str, Any]:
    """Retire a device: its broker credentials are deleted and it is disconnected at once."""
    d = _get(registry, device)
    check_city(key, d.city)
    try:
        dynsec.delete_device(d.id)
    except BrokerError as exc:
        raise HTTPException(503, f"broker: {exc}") from None
    registry.set_state(d.id, "retired")
    return _out(registry.device(d.id) or d)


