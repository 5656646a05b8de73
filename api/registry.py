"""The device registry and the API keys: one small repository over SQLite.

Everything the API knows that is not a measurement lives here, behind plain
methods, so a server database can replace the file later without touching
the routers. Secrets are never stored: device passwords are kept as a
PBKDF2 hash (the broker keeps its own), API keys as SHA-256 of their
256-bit random secret (a slow hash adds nothing to a key nobody can guess).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

SCOPES = ("read", "admin")
DEVICE_STATES = ("active", "retired")
_KEY_PREFIX = "nk"
_COORDS_TTL_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    city TEXT NOT NULL,
    kind TEXT NOT NULL,
    sensors TEXT NOT NULL,
    lat REAL NOT NULL,
    lon REAL NOT NULL,
    installed TEXT NOT NULL,
    fw TEXT,
    interval_s INTEGER NOT NULL,
    state TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    hardware TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS devices_city ON devices (city);
CREATE TABLE IF NOT EXISTS device_configs (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    doc TEXT NOT NULL,
    created TEXT NOT NULL,
    by_key TEXT,
    PRIMARY KEY (device, seq)
);
CREATE TABLE IF NOT EXISTS rotations (
    device TEXT PRIMARY KEY,
    password TEXT NOT NULL,  -- the new one, until the broker is switched to it (then the row goes)
    seq INTEGER NOT NULL,    -- the config document that carried it
    deadline TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fw TEXT NOT NULL,
    manifest TEXT NOT NULL,  -- [[path, sha256, size], ...]
    targets TEXT NOT NULL,   -- the device ids offered the release
    cohort TEXT NOT NULL,    -- how they were chosen (ids, city, share, all)
    created TEXT NOT NULL,
    by_key TEXT
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    city TEXT,
    hash TEXT NOT NULL,
    created TEXT NOT NULL,
    revoked TEXT
);
"""


@dataclass(slots=True)
class Device:
    id: str
    city: str
    kind: str
    sensors: list[str]
    lat: float
    lon: float
    installed: date
    fw: str | None
    interval_s: int
    state: str = "active"
    hardware: list[dict[str, Any]] = field(default_factory=list)  # firmware `sensors` entries (driver type and pins)
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    scope: str
    city: str | None  # an admin key limited to one city's devices
    created: datetime
    revoked: datetime | None


class Conflict(Exception):
    """The record exists already."""


def hash_password(password: str, iterations: int = 100_000) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    if stored.count("$") != 3:
        return False
    _, iterations, salt, digest = stored.split("$")
    got = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(iterations))
    return hmac.compare_digest(got.hex(), digest)


def _key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(token: str) -> tuple[str, str] | None:
    """`nk_<id>_<secret>` -> (id, secret), or None if it is not shaped like a key."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != _KEY_PREFIX or len(parts[1]) != 12 or not parts[1].isalnum() or len(parts[2]) < 20:
        return None
    return parts[1], parts[2]


class Registry:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._coords: dict[str, tuple[float, dict[str, tuple[float, float]]]] = {}
        conn = self._conn()
        conn.executescript(_SCHEMA)
        columns = {r["name"] for r in conn.execute("PRAGMA table_info(devices)")}
        if "hardware" not in columns:  # a registry from before firmware sensor entries were kept
            conn.execute("ALTER TABLE devices ADD COLUMN hardware TEXT NOT NULL DEFAULT '[]'")

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=10000")
            self._local.conn = conn
        return conn

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """One connection per thread; each block is one transaction."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # --- devices -------------------------------------------------------------
    def add_device(self, device: Device, password: str) -> None:
        self._coords.clear()
        now = datetime.now(UTC).isoformat()
        try:
            with self._db() as db:
                db.execute(
                    "INSERT INTO devices VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (device.id, device.city, device.kind, json.dumps(device.sensors), device.lat, device.lon,
                     device.installed.isoformat(), device.fw, device.interval_s, device.state, hash_password(password), now, now,
                     json.dumps(device.hardware)),
                )
        except sqlite3.IntegrityError:
            raise Conflict(f"device {device.id!r} exists") from None

    def import_devices(self, devices: list[Device]) -> None:
        """Register devices whose broker credentials are managed elsewhere (bulk import, benchmarks)."""
        self._coords.clear()
        now = datetime.now(UTC).isoformat()
        with self._db() as db:
            db.executemany(
                "INSERT OR REPLACE INTO devices VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(d.id, d.city, d.kind, json.dumps(d.sensors), d.lat, d.lon, d.installed.isoformat(), d.fw, d.interval_s,
                  d.state, "!", now, now, json.dumps(d.hardware)) for d in devices],  # "!" matches no password
            )

    def coordinates(self, city: str) -> dict[str, tuple[float, float]]:
        """device -> (lat, lon) for a city; cached for a few seconds (read on every latest-values call)."""
        now = time.monotonic()
        hit = self._coords.get(city)
        if hit is not None and now - hit[0] < _COORDS_TTL_S:
            return hit[1]
        with self._db() as db:
            rows = db.execute("SELECT id, lat, lon FROM devices WHERE city = ?", (city,)).fetchall()
        coords = {r["id"]: (r["lat"], r["lon"]) for r in rows}
        self._coords[city] = (now, coords)
        return coords

    def remove_device(self, device_id: str) -> None:
        """Undo an `add_device` whose broker half failed."""
        self._coords.clear()
        with self._db() as db:
            db.execute("DELETE FROM devices WHERE id = ?", (device_id,))

    def set_password(self, device_id: str, password: str) -> None:
        with self._db() as db:
            db.execute("UPDATE devices SET secret_hash = ?, updated = ? WHERE id = ?",
                       (hash_password(password), datetime.now(UTC).isoformat(), device_id))

    def set_state(self, device_id: str, state: str) -> None:
        if state not in DEVICE_STATES:
            raise ValueError(f"state must be one of {DEVICE_STATES}")
        with self._db() as db:
            db.execute("UPDATE devices SET state = ?, updated = ? WHERE id = ?", (state, datetime.now(UTC).isoformat(), device_id))

    def device(self, device_id: str) -> Device | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM devices WHERE id = ?", (device_id,)).fetchone()
        return _device(row) if row else None

    def devices(self, city: str | None = None, state: str | None = None) -> list[Device]:
        q, args = "SELECT * FROM devices WHERE 1=1", []
        if city is not None:
            q += " AND city = ?"
            args.append(city)
        if state is not None:
            q += " AND state = ?"
            args.append(state)
        with self._db() as db:
            rows = db.execute(q + " ORDER BY id", args).fetchall()
        return [_device(r) for r in rows]

    # --- retained configs ----------------------------------------------------------
    def next_config_seq(self, device_id: str) -> int:
        with self._db() as db:
            row = db.execute("SELECT MAX(seq) AS m FROM device_configs WHERE device = ?", (device_id,)).fetchone()
        return 1 if row is None or row["m"] is None else int(row["m"]) + 1

    def record_config(self, device_id: str, seq: int, doc: dict[str, Any], by_key: str | None) -> None:
        """Keep what was published to a device (every version, with the key that sent it)."""
        with self._db() as db:
            db.execute("INSERT INTO device_configs VALUES (?,?,?,?,?)",
                       (device_id, seq, json.dumps(doc, sort_keys=True), datetime.now(UTC).isoformat(), by_key))

    def configs(self, device_id: str) -> list[dict[str, Any]]:
        """The device's published configs, newest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM device_configs WHERE device = ? ORDER BY seq DESC", (device_id,)).fetchall()
        return [{"seq": r["seq"], "doc": json.loads(r["doc"]), "created": r["created"], "by_key": r["by_key"]} for r in rows]

    # --- credential rotations in the field ----------------------------------------------
    def start_rotation(self, device_id: str, password: str, seq: int, deadline: datetime) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO rotations VALUES (?,?,?,?,?)",
                       (device_id, password, seq, deadline.isoformat(), datetime.now(UTC).isoformat()))

    def rotations(self) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM rotations ORDER BY deadline").fetchall()
        return [{"device": r["device"], "password": r["password"], "seq": r["seq"], "deadline": datetime.fromisoformat(r["deadline"])}
                for r in rows]

    def finish_rotation(self, device_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM rotations WHERE device = ?", (device_id,))

    def last_config(self, device_id: str) -> dict[str, Any] | None:
        got = self.configs(device_id)
        return got[0]["doc"] if got else None

    # --- firmware releases (over-the-air updates) ---------------------------------
    def add_release(self, fw: str, manifest: list[Any], targets: list[str], cohort: dict[str, Any], by_key: str | None) -> int:
        """Record a release before it is published (its id is the offer's); returns the id."""
        with self._db() as db:
            cur = db.execute("INSERT INTO releases (fw, manifest, targets, cohort, created, by_key) VALUES (?,?,?,?,?,?)",
                             (fw, json.dumps(manifest), json.dumps(targets), json.dumps(cohort, sort_keys=True),
                              datetime.now(UTC).isoformat(), by_key))
            return int(cur.lastrowid or 0)

    def remove_release(self, release_id: int) -> None:
        with self._db() as db:
            db.execute("DELETE FROM releases WHERE id = ?", (release_id,))

    def releases(self) -> list[dict[str, Any]]:
        """Every release, newest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM releases ORDER BY id DESC").fetchall()
        return [_release(r) for r in rows]

    def release(self, release_id: int) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM releases WHERE id = ?", (release_id,)).fetchone()
        return _release(row) if row else None

    # --- API keys --------------------------------------------------------------
    def create_key(self, name: str, scope: str, city: str | None = None) -> tuple[ApiKey, str]:
        """A new key; the token (`nk_<id>_<secret>`) is returned here and never again."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with self._db() as db:
            db.execute("INSERT INTO api_keys VALUES (?,?,?,?,?,?,NULL)", (key_id, name, scope, city, _key_hash(secret), now.isoformat()))
        return ApiKey(key_id, name, scope, city, now, None), f"{_KEY_PREFIX}_{key_id}_{secret}"

    def authenticate(self, token: str) -> ApiKey | None:
        """The key a token belongs to, if it is valid and not revoked."""
        parts = split_key(token)
        if parts is None:
            return None
        key_id, secret = parts
        with self._db() as db:
            row = db.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        if row is None or row["revoked"] is not None or not hmac.compare_digest(row["hash"], _key_hash(secret)):
            return None
        return _key(row)

    def revoke_key(self, key_id: str) -> bool:
        with self._db() as db:
            cur = db.execute("UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (datetime.now(UTC).isoformat(), key_id))
        return cur.rowcount == 1

    def api_keys(self) -> list[ApiKey]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM api_keys ORDER BY created").fetchall()
        return [_key(r) for r in rows]


def _device(row: sqlite3.Row) -> Device:
    return Device(
        id=row["id"], city=row["city"], kind=row["kind"], sensors=json.loads(row["sensors"]), lat=row["lat"], lon=row["lon"],
        installed=date.fromisoformat(row["installed"]), fw=row["fw"], interval_s=row["interval_s"], state=row["state"],
        created=datetime.fromisoformat(row["created"]), updated=datetime.fromisoformat(row["updated"]),
        hardware=json.loads(row["hardware"]),
    )


def _release(row: sqlite3.Row) -> dict[str, Any]:
    return {"id": row["id"], "fw": row["fw"], "manifest": json.loads(row["manifest"]), "targets": json.loads(row["targets"]),
            "cohort": json.loads(row["cohort"]), "created": row["created"], "by_key": row["by_key"]}


def _key(row: Any) -> ApiKey:
    revoked = datetime.fromisoformat(row["revoked"]) if row["revoked"] else None
    return ApiKey(row["id"], row["name"], row["scope"], row["city"], datetime.fromisoformat(row["created"]), revoked)
