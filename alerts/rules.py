"""Alert rules as configuration: defaults in code, a versioned file for the rest.

The file (`NAKHON_ALERTS_RULES_FILE`, YAML or JSON) carries a `version` (stamped
on every event, so an alert says which rules judged it), `defaults`, and
overrides per city and per station, each a partial copy of the sections below:

    version: "2026-11-29.1"
    defaults: {silent: {intervals: 5}}
    cities:   {chiang_mai: {aqi: {min_band: 4}}}
    stations: {pk-water-003: {water: {warning_cm: 150, flood_cm: 210}, silent: {interval_s: 300}}}

A station's effective rules are defaults <- city <- station, section by section,
key by key. Water levels default to the city's in contract/thresholds.py; the
PM2.5 limit to the Thai 24-hour standard; AQI bands come from contract/aqi.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from contract.thresholds import PM25_STANDARD_24H, water_level


class RulesError(ValueError):
    """A rules file that cannot be used; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class AqiRule:
    enabled: bool = True
    min_band: int = 3  # alert from this band up: 3 yellow, 4 orange, 5 red (one alert per band crossed)
    clear_margin: int = 5  # a band's alert closes when the AQI is this far below the band's floor
    update_step: int = 25  # an open alert is updated when its peak grows by this much
    city_min_stations: int = 3  # a city's AQI is judged once this many of its stations report (one alone is not the city)


@dataclass(frozen=True, slots=True)
class Pm25Rule:
    enabled: bool = True
    limit: float = PM25_STANDARD_24H  # µg/m³, 24-hour mean
    clear_margin: float = 2.5
    update_step: float = 10.0


@dataclass(frozen=True, slots=True)
class WaterRule:
    enabled: bool = True
    warning_cm: float | None = None  # None: the city's level in contract/thresholds.py
    flood_cm: float | None = None
    clear_margin_cm: float = 5.0
    update_step_cm: float = 10.0


@dataclass(frozen=True, slots=True)
class RainRule:
    """Rain intensity: the rain measured in the last `window_s`, scaled to mm per hour."""

    enabled: bool = True
    window_s: int = 3600
    heavy_mm_h: float = 10.0  # heavy from 10 mm/h
    very_heavy_mm_h: float = 35.0  # very heavy from 35 mm/h
    clear_margin_mm_h: float = 2.0
    update_step_mm_h: float = 10.0


@dataclass(frozen=True, slots=True)
class SilentRule:
    enabled: bool = True
    intervals: float = 3.0  # silent after this many of the station's reading intervals without a message
    interval_s: float | None = None  # None: learned from the station's readings
    default_interval_s: float = 60.0  # until learned
    min_silence_s: float = 30.0


@dataclass(frozen=True, slots=True)
class StormRule:
    """Alert storms (alerts/storm.py): when many of a city's stations have alert events at once, the webhooks get one
    grouped notification instead of one per event. Set per city (or in defaults), not per station."""

    enabled: bool = True
    stations: int = 5  # a storm: this many of a city's stations with an alert event within window_s
    window_s: float = 600.0
    gather_s: float = 30.0  # its first notification this long after it began (the burst gathered in one message)
    digest_s: float = 900.0  # then at most one notification this often, and only with news
    quiet_s: float = 1800.0  # it ends after this long without an event (news not yet sent go out then)


@dataclass(frozen=True, slots=True)
class Rules:
    aqi: AqiRule = AqiRule()
    pm25: Pm25Rule = Pm25Rule()
    water: WaterRule = WaterRule()
    rain: RainRule = RainRule()
    silent: SilentRule = SilentRule()
    storm: StormRule = StormRule()


SECTIONS = {f.name: f.type for f in fields(Rules)}
_CLASSES: dict[str, type] = {"aqi": AqiRule, "pm25": Pm25Rule, "water": WaterRule, "rain": RainRule, "silent": SilentRule, "storm": StormRule}


def _apply(rules: Rules, doc: Any, where: str) -> Rules:
    if doc is None:
        return rules
    if not isinstance(doc, dict):
        raise RulesError(f"{where}: expected a mapping of sections ({', '.join(_CLASSES)})")
    for section, values in doc.items():
        cls = _CLASSES.get(section)
        if cls is None:
            raise RulesError(f"{where}: unknown section {section!r}; known: {', '.join(_CLASSES)}")
        if not isinstance(values, dict):
            raise RulesError(f"{where}.{section}: expected a mapping")
        current = getattr(rules, section)
        known = {f.name: f for f in fields(cls)}
        for key, value in values.items():
            if key not in known:
                raise RulesError(f"{where}.{section}: unknown key {key!r}; known: {', '.join(known)}")
            default = getattr(cls(), key)
            ok = isinstance(value, bool) if isinstance(default, bool) else (
                value is None or (isinstance(value, int | float) and not isinstance(value, bool)))
            if not ok:
                raise RulesError(f"{where}.{section}.{key}: {value!r} is not a {'boolean' if isinstance(default, bool) else 'number'}")
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise RulesError(f"{where}.{section}.{key}: must not be negative")
        current = replace(current, **values)
        rules = replace(rules, **{section: current})
    if rules.aqi.min_band not in (3, 4, 5):
        raise RulesError(f"{where}.aqi.min_band: must be 3 (yellow), 4 (orange) or 5 (red)")
    if rules.rain.window_s <= 0:
        raise RulesError(f"{where}.rain.window_s: must be more than 0")
    st = rules.storm
    if st.stations < 2:
        raise RulesError(f"{where}.storm.stations: must be 2 or more (one station is not a storm)")
    if st.quiet_s < st.window_s:
        raise RulesError(f"{where}.storm.quiet_s: must be at least window_s ({st.window_s:g}), or a storm would end while it still holds")
    return rules


@dataclass(frozen=True, slots=True)
class RuleBook:
    """Every station's effective rules."""

    version: str = "builtin"
    defaults: dict[str, Any] = field(default_factory=dict)
    cities: dict[str, dict[str, Any]] = field(default_factory=dict)
    stations: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_station(self, city: str, device: str | None) -> Rules:
        rules = _apply(Rules(), self.defaults, "defaults")
        rules = _apply(rules, self.cities.get(city), f"cities.{city}")
        if device is not None:
            station = self.stations.get(device)
            if isinstance(station, dict) and "storm" in station:
                raise RulesError(f"stations.{device}.storm: storms are a city's; set them under cities.{city} or defaults")
            rules = _apply(rules, station, f"stations.{device}")
        w = rules.water
        levels = water_level(city)
        warning = w.warning_cm if w.warning_cm is not None else levels.warning_cm
        flood = w.flood_cm if w.flood_cm is not None else levels.flood_cm
        if flood < warning:
            raise RulesError(f"{city}/{device}: water flood_cm {flood} is below warning_cm {warning}")
        return replace(rules, water=replace(w, warning_cm=warning, flood_cm=flood))

    def check(self) -> None:
        """Resolve every override once, so a bad file fails at start-up."""
        self.for_station("_", None)
        for city in self.cities:
            self.for_station(city, None)
        for device in self.stations:
            for city in [*self.cities, "_"]:
                self.for_station(city, device)


def load_rules(path: Path | None) -> RuleBook:
    if path is None:
        return RuleBook()
    try:
        text = Path(path).read_text(encoding="utf-8")
        doc = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise RulesError(f"rules file {path}: cannot read it ({str(exc)[:200]})") from None
    if not isinstance(doc, dict):
        raise RulesError(f"rules file {path}: expected a mapping with version, defaults, cities, stations")
    unknown = set(doc) - {"version", "defaults", "cities", "stations"}
    if unknown:
        raise RulesError(f"rules file {path}: unknown keys {sorted(unknown)}; known: version, defaults, cities, stations")
    version = doc.get("version")
    if not isinstance(version, str | int) or not str(version).strip():
        raise RulesError(f"rules file {path}: set `version` (a string naming this revision of the rules)")
    for name in ("cities", "stations"):
        if not isinstance(doc.get(name) or {}, dict):
            raise RulesError(f"rules file {path}: `{name}` must be a mapping")
    book = RuleBook(str(version), doc.get("defaults") or {}, doc.get("cities") or {}, doc.get("stations") or {})
    try:
        book.check()
    except RulesError as exc:
        raise RulesError(f"rules file {path}: {exc}") from None
    return book
