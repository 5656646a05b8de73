"""The city registry: pilot cities built in, more by configuration.

Extra cities come from a JSON file named by `NAKHON_CITIES_FILE`
(a list of objects with the fields of `City`), so a new pilot needs no code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CITY_SLUG_PATTERN: Final = r"^[a-z][a-z0-9_]{1,31}$"
_SLUG_RE: Final = re.compile(CITY_SLUG_PATTERN)


@dataclass(frozen=True, slots=True)
class City:
    slug: str
    name_en: str
    name_th: str
    lat: float
    lon: float
    tz: str = "Asia/Bangkok"
    radius_km: float = 8.0  # devices are placed within this distance of the centre


BUILTIN_CITIES: Final[tuple[City, ...]] = (
    City("phuket", "Phuket", "ภูเก็ต", 7.8804, 98.3923, radius_km=10.0),
    City("khon_kaen", "Khon Kaen", "ขอนแก่น", 16.4322, 102.8236, radius_km=8.0),
    City("chiang_mai", "Chiang Mai", "เชียงใหม่", 18.7883, 98.9853, radius_km=8.0),
)


class CityRegistryError(ValueError):
    """A cities file that cannot be used; the message says what to fix."""


def load_cities(extra_file: Path | None = None) -> dict[str, City]:
    """Built-in cities plus those from `extra_file` (JSON list), validated."""
    cities = {c.slug: c for c in BUILTIN_CITIES}
    if extra_file is None:
        return cities
    try:
        raw = json.loads(Path(extra_file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CityRegistryError(f"cities file {extra_file}: cannot read JSON ({exc})") from exc
    if not isinstance(raw, list):
        raise CityRegistryError(f"cities file {extra_file}: expected a JSON list of cities")
    for i, item in enumerate(raw):
        try:
            city = City(**item)
        except TypeError as exc:
            raise CityRegistryError(f"cities file {extra_file}, entry {i}: {exc}") from exc
        if not _SLUG_RE.match(city.slug):
            raise CityRegistryError(f"cities file {extra_file}, entry {i}: slug {city.slug!r} must match {CITY_SLUG_PATTERN}")
        if not (-90 <= city.lat <= 90 and -180 <= city.lon <= 180):
            raise CityRegistryError(f"cities file {extra_file}, entry {i}: lat/lon out of range")
        cities[city.slug] = city
    return cities
