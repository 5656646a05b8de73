"""The device registry and provisioning: create (with broker credentials), rotate, revoke, list."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from api import queries, rotation
from api.broker import BrokerError, new_password
from api.deps import READ_ERRORS, WRITE_ERRORS, DynSecDep, InfluxDep, RegistryDep, SettingsDep
from api.params import DevicePath
from api.registry import Conflict, Device
from api.security import Admin, Reader, check_city
from contract import topics
from contract.boards import SENSORS as BOARD_SENSORS
from contract.catalogue import FW_PATTERN, METRICS
from contract.cities import CITY_SLUG_PATTERN
from contract.device_config import SENSOR_NAME_PATTERN, DeviceConfigError
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
    tls_verify: bool = True
    ca: str | None = Field(None, description="PEM CA bundle the device verifies the broker with (TLS)")
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
    ca = settings.device_ca_file.read_text() if settings.device_tls and settings.device_ca_file else None
    mqtt = MqttConfig(host=settings.device_mqtt_host or settings.mqtt_host, port=settings.device_mqtt_port or settings.mqtt_port,
                      tls=settings.device_tls, ca=ca, username=d.id, password=password, client_id=d.id, keepalive_s=60)
    return DeviceConfig(v=1, device_id=d.id, city=d.city, kind=d.kind, metrics=d.sensors, sensors=d.hardware, interval_s=d.interval_s, lat=d.lat,
                        lon=d.lon, mqtt=mqtt, topics={ch: topics.topic(d.city, d.id, ch) for ch in topics.CHANNELS})


def _get(registry: RegistryDep, device: str) -> Device:
    d = registry.device(device)
    if d is None:
        raise HTTPException(404, f"unknown device {device!r}")
    return d


def last_seen(influx: InfluxDep, device: str) -> datetime | None:
    newest = 0
    q = queries.latest_device(device)
    for s in influx.series(q.statement, q.params):
        cols = s["columns"]
        if "ts" in cols:
            newest = max([newest] + [int(v[cols.index("ts")]) for v in s["values"] if v[cols.index("ts")] is not None])
    return datetime.fromtimestamp(newest / 1000, UTC) if newest else None


@router.post("", response_model=Provisioned, status_code=201, responses=WRITE_ERRORS)
def provision(body: DeviceIn, key: Admin, registry: RegistryDep, dynsec: DynSecDep, settings: SettingsDep) -> Provisioned:
    """Register a device and create its broker credentials and ACL; returns its config.json once."""
    check_city(key, body.city)
    if topics.reserved_device_id(body.id):
        raise HTTPException(400, f"device id {body.id!r} is reserved (ids starting with {', '.join(topics.RESERVED_PREFIXES)} look like the platform)")
    if body.city not in settings.cities:
        raise HTTPException(400, f"unknown city {body.city!r}")
    unknown = [s for s in body.sensors if s not in METRICS]
    if unknown:
        raise HTTPException(400, f"unknown sensors {unknown}")
    d = Device(id=body.id, city=body.city, kind=body.kind, sensors=list(dict.fromkeys(body.sensors)), lat=body.lat, lon=body.lon,
               installed=body.installed or datetime.now(UTC).date(), fw=body.fw, interval_s=body.interval_s,
               # no entries given: the pilot board's pin map for the kind, so the config.json can be flashed as it is
               hardware=[h.model_dump() for h in body.hardware] or [dict(e) for e in BOARD_SENSORS.get(body.kind, [])])
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
def list_devices(key: Reader, registry: RegistryDep,
                 city: Annotated[str | None, Query(pattern=CITY_SLUG_PATTERN)] = None,
                 state: Annotated[Literal["active", "retired"] | None, Query()] = None) -> list[dict[str, Any]]:
    """Registered devices, optionally of one city or state (a city-bound key sees its city only)."""
    if key is not None and key.city is not None:
        if city is not None and city != key.city:
            raise HTTPException(403, f"this key manages {key.city} only")
        city = key.city
    return [_out(d) for d in registry.devices(city=city, state=state)]


@router.get("/{device}", response_model=DeviceOut, responses=READ_ERRORS)
def get_device(device: DevicePath, key: Reader, registry: RegistryDep, influx: InfluxDep) -> dict[str, Any]:
    """One device, with when it was last heard from."""
    d = _get(registry, device)
    if key is not None and key.city is not None and key.city != d.city:
        raise HTTPException(404, f"unknown device {device!r}")  # another city's device does not exist for this key
    return _out(d, last_seen(influx, device))


class Rotated(Provisioned):
    pending_until: datetime | None = Field(None, description="with a grace period: the broker switches to the new password "
                                                             "once the device confirms it received it, at the latest then")


@router.post("/{device}/rotate", response_model=Rotated, responses=WRITE_ERRORS)
def rotate(device: DevicePath, key: Admin, registry: RegistryDep, dynsec: DynSecDep, settings: SettingsDep,
           grace_s: Annotated[int, Query(ge=0, le=90 * 86400, description="0: switch now (the device needs its new config.json); "
                                         "N: deliver the password over the device's config topic, switch once it confirms or after N s")] = 0,
           ) -> Rotated:
    """New broker credentials; returns the new config.json once.

    Without a grace period the old password stops working at once. With one, the device receives the new
    password in its retained config and keeps its session; the broker switches when it confirms (or at the deadline)."""
    d = _get(registry, device)
    check_city(key, d.city)
    if d.state != "active":
        raise HTTPException(409, "a retired device cannot be given credentials")
    password = new_password()
    pending_until = None
    try:
        if grace_s:
            seq, _ = rotation.publish(registry, dynsec, d.id, d.city, rotation.config_fields(registry.last_config(d.id)), key.id, password)
            pending_until = datetime.now(UTC) + timedelta(seconds=grace_s)
            registry.start_rotation(d.id, password, seq, pending_until)
        else:
            dynsec.set_password(d.id, password)
            registry.set_password(d.id, password)
    except BrokerError as exc:
        raise HTTPException(503, f"broker: {exc}") from None
    return Rotated(device=DeviceOut(**_out(registry.device(d.id) or d)), config=_config(settings, d, password), pending_until=pending_until)


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




class ConfigIn(BaseModel):
    """A change of the device's retained config (contract/device_config.py); fields left out keep the device's value."""

    interval_s: Annotated[int | None, Field(ge=1, le=86400)] = None
    sensors: Annotated[dict[Annotated[str, Field(pattern=SENSOR_NAME_PATTERN)], bool], Field(max_length=16)] = {}
    thresholds: Annotated[dict[str, float], Field(max_length=32)] = {}


class ConfigOut(BaseModel):
    device: str
    topic: str
    seq: int
    doc: dict[str, Any]


@router.put("/{device}/config", response_model=ConfigOut, responses=WRITE_ERRORS)
def push_config(device: DevicePath, body: ConfigIn, key: Admin, registry: RegistryDep, dynsec: DynSecDep) -> ConfigOut:
    """Publish a new retained config to the device (it applies it and reports `config_seq` in its status); recorded."""
    d = _get(registry, device)
    check_city(key, d.city)
    if d.state != "active":
        raise HTTPException(409, "a retired device takes no config")
    fields = {k: v for k, v in (("interval_s", body.interval_s), ("sensors", body.sensors), ("thresholds", body.thresholds)) if v}
    pending = next((r for r in registry.rotations() if r["device"] == d.id), None)  # keep a rotation under way in the retained document
    topic = topics.topic(d.city, d.id, "config")
    try:
        seq, doc = rotation.publish(registry, dynsec, d.id, d.city, fields, key.id, pending["password"] if pending else None)
    except DeviceConfigError as exc:
        raise HTTPException(400, f"config: {exc}") from None
    except BrokerError as exc:
        raise HTTPException(503, f"broker: {exc}") from None
    return ConfigOut(device=d.id, topic=topic, seq=seq, doc=doc)


@router.get("/{device}/config", response_model=list[ConfigOut], responses=READ_ERRORS)
def config_history(device: DevicePath, key: Admin, registry: RegistryDep) -> list[ConfigOut]:
    """Every config published to the device, newest first."""
    d = _get(registry, device)
    check_city(key, d.city)
    topic = topics.topic(d.city, d.id, "config")
    return [ConfigOut(device=d.id, topic=topic, seq=c["seq"], doc=c["doc"]) for c in registry.configs(d.id)]
