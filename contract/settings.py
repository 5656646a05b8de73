"""The one settings object. Everything configurable enters here.

Values come from `NAKHON_*` environment variables (or keyword overrides);
a wrong value fails at start-up with `ConfigError`, whose message names the
variable and says what to fix.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract import topics
from contract.cities import City, CityRegistryError, load_cities
from contract.topics import ALERTS_USER

Port = Annotated[int, Field(ge=1, le=65535)]
_DURATION_RE = re.compile(r"^(INF|[1-9][0-9]*(h|d|w))$")


class ConfigError(ValueError):
    """Configuration that cannot work; str() is a message for the operator."""


def read_secret(path: Path, var: str) -> str:
    """A secret kept in a file: its first line, without the line end. Raises ValueError saying what to fix."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{var}={path} cannot be read ({exc.__class__.__name__}): give a readable file holding the secret") from None
    secret = text.split("\n", 1)[0].rstrip("\r")
    if not secret:
        raise ValueError(f"{var}={path} is empty: put the secret on its first line")
    return secret


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NAKHON_", extra="forbid", frozen=True)

    # where the platform keeps its files (spool, dead letters, registry, local servers)
    data_dir: Path = Path("var")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    cities_file: Path | None = None

    mqtt_host: str = "127.0.0.1"
    mqtt_port: Port = 18830
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_tls: bool = False
    mqtt_ca_file: Path | None = None
    mqtt_keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30

    influx_url: str = "http://127.0.0.1:18086"
    influx_db: str = "nakhon"
    influx_username: str | None = None
    influx_password: str | None = None
    # The password in a file instead (one line): the ingest reads it again when InfluxDB refuses its
    # credentials and on SIGHUP, so a rotated secret is taken up without a restart.
    influx_password_file: Path | None = None
    influx_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    raw_retention: str = "400d"
    hourly_retention: str = "INF"

    # Platform identities stay outside the device-id alphabet (an underscore), so no device can take them.
    ingest_client_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,48}$")] = topics.INGEST_USER
    ingest_share_group: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,48}$")] = topics.INGEST_USER
    ingest_workers: Annotated[int, Field(ge=1, le=64)] = 1
    # With several workers: worker 0 also keeps the catch session (ingest/catch.py), a plain persistent
    # subscription that covers the gap after a broker restart that forgets `$share` subscriptions
    # (Mosquitto 2.0). Off only on a broker that restores them (EMQX, HiveMQ, VerneMQ clusters).
    ingest_share_catch: bool = True
    ingest_batch_size: Annotated[int, Field(ge=1, le=100_000)] = 20_000  # lines per write; InfluxDB 1.x takes large batches cheapest
    ingest_batch_ms: Annotated[int, Field(ge=1, le=60_000)] = 200
    # writes in flight at once per worker: one waits on InfluxDB while the next is sent
    ingest_writers: Annotated[int, Field(ge=1, le=16)] = 2
    # MQTT 5 Receive Maximum: messages the broker may have un-acked with us.
    ingest_receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 40_000  # two writes in flight plus the next batch filling
    ingest_session_expiry_s: Annotated[int, Field(ge=60)] = 7 * 86400
    # Memory bound in bytes of what the ingest holds un-acked (QoS 0 and 1 alike): it stops reading past it.
    ingest_max_pending_mb: Annotated[int, Field(ge=1, le=65_536)] = 256
    # MQTT 5 Maximum Packet Size we accept; the broker discards (and counts) larger messages for us.
    ingest_max_packet_bytes: Annotated[int, Field(ge=65_536, le=268_435_460)] = 16 * 1024 * 1024
    # Bound on each worker's dead-letter files; past it the oldest are removed and counted (deadletter_dropped).
    ingest_deadletter_max_mb: Annotated[int, Field(ge=1, le=1_048_576)] = 1024
    # Liveness: held work with no batch made durable for this long means stalled (not live).
    ingest_stall_s: Annotated[float, Field(gt=0, le=86_400)] = 120.0
    ingest_stats_interval_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    # Store-and-forward (issue 18): after each durable batch the ingest tells each device, on its `stored` topic,
    # which of its readings it may free; one message per device per round, rounds at most this often.
    ingest_confirm: bool = True  # false: no confirmations (devices that wait for them replay after their timeout)
    ingest_confirm_ms: Annotated[int, Field(ge=1, le=60_000)] = 200
    # Bound on devices with confirmations waiting to be sent (each holds at most 128 seq ranges); past it, the oldest is
    # forgotten and counted (its readings are replayed by the device and stored again: idempotent).
    ingest_confirm_devices: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000
    ts_max_age_s: Annotated[float, Field(gt=0)] = 35 * 86400
    ts_max_future_s: Annotated[float, Field(ge=0)] = 300
    max_payload_bytes: Annotated[int, Field(ge=256, le=268_435_455)] = 262_144

    api_host: str = "127.0.0.1"
    api_port: Port = 18080
    # HTTPS: the API serves TLS itself with these (PEM); both or neither
    api_tls_cert_file: Path | None = None
    api_tls_key_file: Path | None = None

    # API (issue 5): device registry, keys, limits, open data.
    registry_file: Path | None = None  # SQLite file; default <data_dir>/registry.sqlite3
    api_public_read: bool = True  # open-data reads without a key; false = every call needs a key
    api_rate_per_key: Annotated[int, Field(ge=1, le=1_000_000)] = 600  # requests per minute per API key
    api_rate_per_address: Annotated[int, Field(ge=1, le=1_000_000)] = 120  # per minute per client address, keyless
    api_default_interval_s: Annotated[int, Field(ge=1, le=86400)] = 60  # expected reading interval when a device states none
    api_raw_max_days: Annotated[int, Field(ge=1, le=400)] = 7  # longest range served from raw points unaggregated
    # API under public load (issue 20): processes, the current-values cache, InfluxDB's protection, proxy caching.
    api_workers: Annotated[int, Field(ge=0, le=32)] = 0  # API processes behind the one port; 0 = one per core, at most 4
    api_live_refresh_s: Annotated[float, Field(gt=0, le=60)] = 2.0  # current values reloaded this often
    api_live_max_age_s: Annotated[float, Field(gt=0, le=3600)] = 10.0  # older current values are answered marked stale
    api_live_timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0  # a reload of current values waits this long for InfluxDB
    api_influx_concurrency: Annotated[int, Field(ge=1, le=256)] = 8  # queries a process has at InfluxDB at once (per pool)
    api_query_wait_s: Annotated[float, Field(ge=0, le=60)] = 0.5  # wait for a free query slot, then 503
    api_query_timeout_s: Annotated[float, Field(gt=0, le=300)] = 5.0  # a read query's limit, then 503
    # after InfluxDB failed to answer, 503 at once for this long; longer than a refresh and its timeout, so that while
    # InfluxDB stays away the cache's reloads keep it open and only their first success closes it
    api_influx_retry_s: Annotated[float, Field(gt=0, le=300)] = 5.0
    api_cache_recent_s: Annotated[int, Field(ge=0, le=86400)] = 60  # proxy max-age of answers whose range reaches the last hour
    api_cache_history_s: Annotated[int, Field(ge=0, le=31_536_000)] = 3600  # proxy max-age of answers about the past
    api_cache_memory_s: Annotated[float, Field(ge=0, le=3600)] = 2.0  # keyless public answers kept in the process; 0 = off
    open_data_license: Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]{1,40}$")] = "cc-by-4.0"
    open_data_publisher: str = "Nakhon smart-city pilots"
    # Provisioning speaks to Mosquitto's dynamic-security plugin with these admin credentials.
    broker_admin_username: str | None = None
    broker_admin_password: str | None = None
    # The broker address written into a device's config.json (what the device dials).
    device_mqtt_host: str | None = None  # default: mqtt_host
    device_mqtt_port: Port | None = None  # default: mqtt_port
    device_mqtt_tls: bool | None = None  # default: mqtt_tls
    # PEM CA bundle that signs the broker's certificate; copied into every config.json a device gets
    device_ca_file: Path | None = None
    # The ingest recomputes the hourly roll-ups of the hours it touched this often.
    ingest_rollup_interval_s: Annotated[float, Field(gt=0, le=3600)] = 10.0

    # Alerts (issue 17): the evaluator's broker identity, its rules and where its events go.
    alerts_client_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,48}$")] = ALERTS_USER  # MQTT client id, persistent session
    alerts_rules_file: Path | None = None  # YAML or JSON rules (alerts/rules.py); default: the built-in rules
    alerts_webhook_urls: str = ""  # comma-separated http(s) URLs; each gets every event
    alerts_webhook_secret: str | None = None  # HMAC-SHA256 key of the X-Nakhon-Signature header
    alerts_webhook_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    alerts_retry_cap_s: Annotated[float, Field(gt=0, le=86400)] = 300.0  # longest wait between delivery attempts
    alerts_give_up_s: Annotated[float, Field(gt=0)] = 86400.0  # an undeliverable event is marked failed (and logged) after this
    alerts_late_after_s: Annotated[float, Field(gt=0)] = 900.0  # a reading measured longer ago than this is late (replay)
    # telemetry messages the evaluator holds un-judged at most (its memory while draining a backlog)
    alerts_inbox_max: Annotated[int, Field(ge=100, le=1_000_000)] = 4000

    @field_validator("alerts_client_id")
    @classmethod
    def _service_id(cls, v: str) -> str:
        if re.fullmatch(r"[a-z0-9][a-z0-9-]{2,31}", v):
            raise ValueError("is a possible device id: a platform service needs an id outside that alphabet, e.g. with an underscore (nakhon_alerts)")
        return v

    @field_validator("alerts_webhook_urls")
    @classmethod
    def _urls(cls, v: str) -> str:
        for url in cls.split_urls(v):
            if not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
                raise ValueError(f"{url!r} is not an http:// or https:// URL (separate several with commas)")
        return v

    @staticmethod
    def split_urls(v: str) -> list[str]:
        return [u.strip() for u in v.split(",") if u.strip()]

    @property
    def alerts_webhooks(self) -> list[str]:
        return self.split_urls(self.alerts_webhook_urls)

    @field_validator("influx_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+(/.*)?$", v):
            raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:18086")
        return v.rstrip("/")

    @field_validator("raw_retention", "hourly_retention")
    @classmethod
    def _duration(cls, v: str) -> str:
        if not _DURATION_RE.match(v):
            raise ValueError("must be an InfluxDB duration like 400d, 52w, 720h or INF")
        return v

    @field_validator("influx_db")
    @classmethod
    def _db_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", v):
            raise ValueError("must be letters, digits or _ (1-64 characters)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.mqtt_ca_file is not None and not self.mqtt_tls:
            raise ValueError("NAKHON_MQTT_CA_FILE is set but NAKHON_MQTT_TLS is off: set NAKHON_MQTT_TLS=true")
        if (self.mqtt_username is None) != (self.mqtt_password is None):
            raise ValueError("set both NAKHON_MQTT_USERNAME and NAKHON_MQTT_PASSWORD, or neither")
        if self.api_live_refresh_s > self.api_live_max_age_s:
            raise ValueError("NAKHON_API_LIVE_REFRESH_S must not exceed NAKHON_API_LIVE_MAX_AGE_S (values are reloaded "
                             "before they may be answered stale)")
        if self.alerts_webhook_urls.strip() and not self.alerts_webhook_secret:
            raise ValueError("NAKHON_ALERTS_WEBHOOK_URLS is set without NAKHON_ALERTS_WEBHOOK_SECRET: set a secret to sign the webhooks with")
        if (self.broker_admin_username is None) != (self.broker_admin_password is None):
            raise ValueError("set both NAKHON_BROKER_ADMIN_USERNAME and NAKHON_BROKER_ADMIN_PASSWORD, or neither")
        if (self.api_tls_cert_file is None) != (self.api_tls_key_file is None):
            raise ValueError("set both NAKHON_API_TLS_CERT_FILE and NAKHON_API_TLS_KEY_FILE (PEM), or neither")
        for var, f in (("NAKHON_API_TLS_CERT_FILE", self.api_tls_cert_file), ("NAKHON_API_TLS_KEY_FILE", self.api_tls_key_file)):
            if f is not None and not f.is_file():
                raise ValueError(f"{var}={f} is not a file")
        if self.influx_password_file is not None:
            if self.influx_password is not None:
                raise ValueError("set NAKHON_INFLUX_PASSWORD or NAKHON_INFLUX_PASSWORD_FILE, not both")
            # frozen settings: filled in once, here, as if it had been given
            object.__setattr__(self, "influx_password", read_secret(self.influx_password_file, "NAKHON_INFLUX_PASSWORD_FILE"))
        if (self.influx_username is None) != (self.influx_password is None):
            raise ValueError("set both NAKHON_INFLUX_USERNAME and NAKHON_INFLUX_PASSWORD, or neither")
        for var, value in (("NAKHON_INGEST_CLIENT_ID", self.ingest_client_id), ("NAKHON_MQTT_USERNAME", self.mqtt_username),
                           ("NAKHON_BROKER_ADMIN_USERNAME", self.broker_admin_username)):
            if value is not None and topics.is_device_id(value):
                raise ValueError(f"{var}={value!r} could be a device id, so a device could take that identity: "
                                 f"use a name with an underscore, e.g. {topics.INGEST_USER!r}")
        if self.device_ca_file is not None and not self.device_ca_file.is_file():
            raise ValueError(f"NAKHON_DEVICE_CA_FILE={self.device_ca_file} is not a file: give the PEM CA that signed the broker's certificate")
        if self.ingest_max_packet_bytes < self.max_payload_bytes + 65_536:
            raise ValueError("NAKHON_INGEST_MAX_PACKET_BYTES must exceed NAKHON_MAX_PAYLOAD_BYTES by 65536 (topic and header), "
                             "or oversize payloads are discarded by the broker instead of dead-lettered")
        if self.ingest_stall_s < 2 * self.influx_timeout_s:
            raise ValueError("NAKHON_INGEST_STALL_S must be at least twice NAKHON_INFLUX_TIMEOUT_S: one slow write is not a stall")
        return self

    @property
    def registry_path(self) -> Path:
        return self.registry_file if self.registry_file is not None else self.data_dir / "registry.sqlite3"

    @cached_property
    def cities(self) -> dict[str, City]:
        return load_cities(self.cities_file)

    @property
    def api_processes(self) -> int:
        """API worker processes: as set, or one per core (at most 4) when 0."""
        return self.api_workers or max(1, min(4, os.cpu_count() or 1))

    @property
    def device_tls(self) -> bool:
        return self.mqtt_tls if self.device_mqtt_tls is None else self.device_mqtt_tls

    def influx_url_port(self) -> int:
        tail = self.influx_url.split("://", 1)[1].split("/", 1)[0]
        return int(tail.rsplit(":", 1)[1]) if ":" in tail else (443 if self.influx_url.startswith("https") else 80)

    def path(self, *parts: str) -> Path:
        p = self.data_dir.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, or a ConfigError that says what to fix."""
    try:
        settings = Settings(**overrides)
        _ = settings.cities  # a bad cities file fails here, at start-up
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None
    except CityRegistryError as exc:
        raise ConfigError(f"NAKHON_CITIES_FILE: {exc}") from None
    return settings


def _explain(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        loc = "_".join(str(p) for p in err["loc"])
        var = f"NAKHON_{loc.upper()}" if loc else "settings"
        got = err.get("input")
        shown = "" if isinstance(got, dict) or got is None else f" (got {str(got)[:80]!r})"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {var}: {msg}{shown}")
    return "\n".join(lines)
