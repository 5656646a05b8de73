"""The pure evaluation core: readings and clock ticks in, alert events out.

No I/O and no wall clock: the caller passes each reading and a `clock`
(seconds) is injected, so the whole behaviour is table-testable.

- Every rule is judged at the reading's measurement time, with hysteresis:
  an alert opens at the threshold and closes only below threshold - margin.
- A reading is *late* when it was measured more than `late_after_s` before
  the clock (a device replaying its buffer). Late data feeds the windows and
  can close an open alert (at the time the condition ended), but never opens
  one: a condition that began and ended in the past is one `past` event
  (history, not a notification); one that still holds when the replay reaches
  the present opens the alert then, carrying when it began (`since`).
- A reading measured before the station's newest evaluated one (or at the
  same millisecond with a seq not above it) is a repeat or out of order: it changes nothing (so a redelivery after a crash
  cannot count twice).
- Silence is judged on the clock: no message for more than N of the station's
  intervals opens `silent`; any message closes it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import date
from typing import Any

from alerts.rules import RuleBook, Rules
from contract import aqi
from contract.alerts import CITY_SUBJECT, RULES, EventKind
from contract.payload import Reading

HOUR_MS = 3_600_000
_BAND_RULES = {3: "aqi_yellow", 4: "aqi_orange", 5: "aqi_red"}
CITY_EVERY_MS = 10_000
CITY_FRESH_MS = 2 * HOUR_MS  # a station's AQI counts in its city's while its newest hour is this recent


@dataclass(slots=True)
class Event:
    id: str  # unique per event: alert id + sequence
    alert_id: str
    event: EventKind
    city: str
    device: str  # station id, or CITY_SUBJECT
    rule: str
    severity: str
    at_ms: int  # when it happened: the measurement time, or the clock for silence
    opened_ms: int
    since_ms: int  # when the condition began (earlier than opened for a late start or silence)
    value: float
    peak: float
    threshold: float
    unit: str
    late: bool = False
    closed_ms: int | None = None
    rules_version: str = ""

    def doc(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _EVENT_FIELDS}


_EVENT_FIELDS = tuple(f.name for f in fields(Event))


@dataclass(slots=True)
class Open:
    alert_id: str
    opened_ms: int
    since_ms: int
    peak: float
    reported: float  # peak in the last event sent
    n: int  # events so far


@dataclass(slots=True)
class Past:
    since_ms: int
    peak: float


@dataclass(slots=True)
class Station:
    last_ts_ms: int = 0
    last_seq: int = -1
    last_arrival_s: float = 0.0
    gaps: list[float] = field(default_factory=list)  # the last measured reading intervals (s)
    hours: dict[int, list[float]] = field(default_factory=dict)  # hour -> [sum pm25, n, sum pm10, n]
    rain: list[list[float]] = field(default_factory=list)  # [ts_ms, mm], inside the rain window
    aqi_hour: int = 0  # newest hour of the station's AQI inputs, and their values (for the city's)
    aqi_pm25: float | None = None
    aqi_pm10: float | None = None
    open: dict[str, Open] = field(default_factory=dict)
    past: dict[str, Past] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        # by hand: dataclasses.asdict deep-copies and was half the service's CPU
        return {
            "last_ts_ms": self.last_ts_ms, "last_seq": self.last_seq, "last_arrival_s": self.last_arrival_s, "gaps": list(self.gaps),
            "hours": {str(k): list(v) for k, v in self.hours.items()}, "rain": [list(r) for r in self.rain],
            "aqi_hour": self.aqi_hour, "aqi_pm25": self.aqi_pm25, "aqi_pm10": self.aqi_pm10,
            "open": {k: [o.alert_id, o.opened_ms, o.since_ms, o.peak, o.reported, o.n] for k, o in self.open.items()},
            "past": {k: [p.since_ms, p.peak] for k, p in self.past.items()},
        }

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Station:
        st = cls(**{k: v for k, v in d.items() if k not in ("hours", "open", "past")})
        st.hours = {int(k): v for k, v in d.get("hours", {}).items()}
        st.open = {k: Open(*v) for k, v in d.get("open", {}).items()}
        st.past = {k: Past(*v) for k, v in d.get("past", {}).items()}
        return st


_EPOCH = date(1970, 1, 1).toordinal()
_DAYS: dict[int, date] = {}


def _bangkok_day(ts_ms: int) -> date:
    """The Bangkok date of a time (as contract.aqi takes a datetime's), without a datetime per reading."""
    n = (ts_ms + 7 * HOUR_MS) // 86_400_000
    d = _DAYS.get(n)
    if d is None:
        if len(_DAYS) > 1000:
            _DAYS.clear()
        d = _DAYS[n] = date.fromordinal(_EPOCH + n)
    return d


def _mean(vals: list[float]) -> float | None:
    return sum(vals) / len(vals) if vals else None


class CityMeans:
    """Running sums of a city's stations' newest 24-hour means."""

    def __init__(self) -> None:
        self.members: dict[str, tuple[int, float | None, float | None]] = {}
        self.sums = [0.0, 0, 0.0, 0]
        self.newest = 0

    def _add(self, v25: float | None, v10: float | None, sign: int) -> None:
        if v25 is not None:
            self.sums[0] += sign * v25
            self.sums[1] += sign
        if v10 is not None:
            self.sums[2] += sign * v10
            self.sums[3] += sign

    def put(self, device: str, hour: int, v25: float | None, v10: float | None) -> None:
        old = self.members.get(device)
        if old is not None:
            self._add(old[1], old[2], -1)
        self.members[device] = (hour, v25, v10)
        self._add(v25, v10, 1)
        self.newest = max(self.newest, hour)

    def expire(self) -> None:
        for device, (hour, v25, v10) in list(self.members.items()):
            if self.newest - hour >= CITY_FRESH_MS:
                del self.members[device]
                self._add(v25, v10, -1)

    def count(self) -> int:
        return len(self.members)

    def value(self) -> tuple[float | None, float | None] | None:
        s25, n25, s10, n10 = self.sums
        if not n25 and not n10:
            return None
        return (s25 / n25 if n25 else None), (s10 / n10 if n10 else None)


class Evaluator:
    def __init__(self, book: RuleBook, clock: Callable[[], float], late_after_s: float = 900.0) -> None:
        self.book = book
        self.clock = clock
        self.late_after_ms = int(late_after_s * 1000)
        self.stations: dict[tuple[str, str], Station] = {}
        self.dirty: set[tuple[str, str]] = set()
        self._rules: dict[tuple[str, str], Rules] = {}
        self.started_s = clock()
        self.counts = {"readings": 0, "late": 0, "repeat": 0, "events": 0}
        self._city: dict[str, CityMeans] = {}

    # --- state ----------------------------------------------------------------
    def rules(self, city: str, device: str) -> Rules:
        key = (city, device)
        r = self._rules.get(key)
        if r is None:
            r = self._rules[key] = self.book.for_station(city, None if device == CITY_SUBJECT else device)
        return r

    def station(self, city: str, device: str) -> Station:
        st = self.stations.get((city, device))
        if st is None:
            st = self.stations[(city, device)] = Station()
        return st

    def load(self, city: str, device: str, doc: dict[str, Any]) -> None:
        st = self.stations[(city, device)] = Station.from_doc(doc)
        if device != CITY_SUBJECT and st.aqi_hour:
            self._city.setdefault(city, CityMeans()).put(device, st.aqi_hour, st.aqi_pm25, st.aqi_pm10)

    # --- input ------------------------------------------------------------------
    def readings(self, city: str, device: str, readings: Iterable[Reading]) -> list[Event]:
        """One telemetry message: closes a `silent` alert, then judges each reading."""
        now_s = self.clock()
        st = self.station(city, device)
        self.dirty.add((city, device))
        events: list[Event] = []
        st.last_arrival_s = now_s
        if "silent" in st.open:
            o = st.open["silent"]
            silence = (now_s * 1000 - o.since_ms) / 1000
            events.append(self._close(city, device, "silent", o, int(now_s * 1000), silence, o.peak, "s", late=False))
            del st.open["silent"]
        for r in sorted(readings, key=lambda r: r.ts_ms):
            events += self._reading(city, device, st, r, now_s)
        self.counts["events"] += len(events)
        return events

    def _reading(self, city: str, device: str, st: Station, r: Reading, now_s: float) -> list[Event]:
        if (r.ts_ms, r.seq) <= (st.last_ts_ms, st.last_seq):  # seq orders readings taken in the same millisecond
            self.counts["repeat"] += 1
            return []
        self.counts["readings"] += 1
        late = now_s * 1000 - r.ts_ms > self.late_after_ms
        self.counts["late"] += late
        if st.last_ts_ms and r.ts_ms > st.last_ts_ms:
            gap = (r.ts_ms - st.last_ts_ms) / 1000
            st.gaps = [*st.gaps[-4:], gap]
        st.last_ts_ms, st.last_seq = r.ts_ms, r.seq
        rules = self.rules(city, device)
        events: list[Event] = []
        m = r.m
        pm25, pm10 = m.get("pm25"), m.get("pm10")
        if isinstance(pm25, int | float) or isinstance(pm10, int | float):
            events += self._air(city, device, st, rules, r.ts_ms, pm25, pm10, late)
        level = m.get("water_level_cm")
        if isinstance(level, int | float) and rules.water.enabled:
            w = rules.water
            assert w.warning_cm is not None and w.flood_cm is not None
            events += self._judge(city, device, st, "water_warning", float(level), w.warning_cm, w.warning_cm - w.clear_margin_cm,
                                  w.update_step_cm, "cm", r.ts_ms, late)
            events += self._judge(city, device, st, "water_flood", float(level), w.flood_cm, w.flood_cm - w.clear_margin_cm,
                                  w.update_step_cm, "cm", r.ts_ms, late)
        rain = m.get("rain_mm")
        if isinstance(rain, int | float) and rules.rain.enabled:
            rr = rules.rain
            window_ms = rr.window_s * 1000
            st.rain.append([r.ts_ms, float(rain)])
            cut = bisect.bisect_right([t for t, _ in st.rain], r.ts_ms - window_ms)
            del st.rain[:cut]
            rate = sum(v for _, v in st.rain) * 3600 / rr.window_s
            events += self._judge(city, device, st, "rain_heavy", rate, rr.heavy_mm_h, rr.heavy_mm_h - rr.clear_margin_mm_h,
                                  rr.update_step_mm_h, "mm/h", r.ts_ms, late)
            events += self._judge(city, device, st, "rain_very_heavy", rate, rr.very_heavy_mm_h,
                                  rr.very_heavy_mm_h - rr.clear_margin_mm_h, rr.update_step_mm_h, "mm/h", r.ts_ms, late)
        return events

    def _air(self, city: str, device: str, st: Station, rules: Rules, ts_ms: int, pm25: object, pm10: object, late: bool) -> list[Event]:
        hour = ts_ms - ts_ms % HOUR_MS
        b = st.hours.get(hour)
        if b is None:
            b = st.hours[hour] = [0.0, 0, 0.0, 0]
            for h in [h for h in st.hours if h <= hour - 24 * HOUR_MS]:
                del st.hours[h]
        if isinstance(pm25, int | float):
            b[0] += float(pm25)
            b[1] += 1
        if isinstance(pm10, int | float):
            b[2] += float(pm10)
            b[3] += 1
        # as the ingest's roll-up does (contract.rollups.aqi_points): the mean of the hourly means of the last 24 hours
        window = [st.hours[h] for h in range(hour - 23 * HOUR_MS, hour + 1, HOUR_MS) if h in st.hours]
        pm25_24h = _mean([x[0] / x[1] for x in window if x[1]])
        pm10_24h = _mean([x[2] / x[3] for x in window if x[3]])
        st.aqi_hour, st.aqi_pm25, st.aqi_pm10 = hour, pm25_24h, pm10_24h
        events: list[Event] = []
        if pm25_24h is not None and rules.pm25.enabled:
            p = rules.pm25
            events += self._judge(city, device, st, "pm25_24h", pm25_24h, p.limit, p.limit - p.clear_margin, p.update_step, "µg/m³", ts_ms, late)
        events += self._aqi(city, device, st, rules, ts_ms, pm25_24h, pm10_24h, late)
        city_value = self._city_inputs(city, device, st)
        if city_value is not None and self._city[city].count() >= rules.aqi.city_min_stations:
            cst = self.station(city, CITY_SUBJECT)
            if ts_ms >= cst.last_ts_ms + CITY_EVERY_MS:  # the mean of many stations moves slowly: judged every 10 s of data
                cst.last_ts_ms = ts_ms
                self.dirty.add((city, CITY_SUBJECT))
                events += self._aqi(city, CITY_SUBJECT, cst, self.rules(city, CITY_SUBJECT), ts_ms, *city_value, late)
        return events

    def _aqi(self, city: str, device: str, st: Station, rules: Rules, ts_ms: int, pm25: float | None, pm10: float | None,
             late: bool) -> list[Event]:
        if not rules.aqi.enabled:
            return []
        result = aqi.thai_aqi({"pm25": pm25, "pm10": pm10}, _bangkok_day(ts_ms))
        if result is None:
            return []
        a = rules.aqi
        events: list[Event] = []
        for band in range(a.min_band, 6):
            floor = aqi.BANDS[band - 1].lo
            events += self._judge(city, device, st, _BAND_RULES[band], float(result.aqi), floor, floor - a.clear_margin - 0.5,
                                  a.update_step, "AQI", ts_ms, late)
        return events

    def _city_inputs(self, city: str, device: str, st: Station) -> tuple[float | None, float | None] | None:
        """The city's AQI inputs: the mean over its stations of their newest 24-hour means (as the API's city AQI).

        Kept as running sums (one station's reading costs O(1)); stations whose newest hour is too old leave in tick()."""
        sums = self._city.setdefault(city, CityMeans())
        sums.put(device, st.aqi_hour, st.aqi_pm25, st.aqi_pm10)
        return sums.value()

    def tick(self) -> list[Event]:
        """Silence, judged on the clock. Call every second or so."""
        now_s = self.clock()
        events: list[Event] = []
        for sums in self._city.values():
            sums.expire()
        for (city, device), st in self.stations.items():
            if device == CITY_SUBJECT or "silent" in st.open or not st.last_arrival_s:
                continue
            rule = self.rules(city, device).silent
            if not rule.enabled:
                continue
            interval = rule.interval_s or (sorted(st.gaps)[len(st.gaps) // 2] if st.gaps else rule.default_interval_s)
            limit = max(rule.min_silence_s, rule.intervals * interval)
            # after a restart every station gets a fresh window: the broker's queued messages come first
            since = max(st.last_arrival_s, self.started_s)
            silence = now_s - since
            if silence > limit:
                self.dirty.add((city, device))
                at = int(now_s * 1000)
                since_ms = int(st.last_arrival_s * 1000)
                o = Open(f"{city}.{device}.silent.{at}", at, since_ms, silence, silence, 0)
                st.open["silent"] = o
                events.append(self._event(o, "opened", city, device, "silent", at, now_s - st.last_arrival_s, round(limit, 1), "s", False))
        self.counts["events"] += len(events)
        return events

    # --- one rule ------------------------------------------------------------------
    def _judge(self, city: str, device: str, st: Station, rule: str, value: float, open_at: float, clear_below: float,
               step: float, unit: str, ts_ms: int, late: bool) -> list[Event]:
        o = st.open.get(rule)
        if o is not None:
            if value < clear_below:
                del st.open[rule]
                return [self._close(city, device, rule, o, ts_ms, value, open_at, unit, late)]
            o.peak = max(o.peak, value)
            if o.peak >= o.reported + step and not late:
                o.reported = o.peak
                o.n += 1
                return [self._event(o, "updated", city, device, rule, ts_ms, value, open_at, unit, late)]
            return []
        p = st.past.get(rule)
        if value >= open_at:
            if late:  # a past condition: remembered, not announced
                if p is None:
                    st.past[rule] = Past(ts_ms, value)
                else:
                    p.peak = max(p.peak, value)
                return []
            since = ts_ms if p is None else p.since_ms
            peak = value if p is None else max(p.peak, value)
            st.past.pop(rule, None)
            o = st.open[rule] = Open(f"{city}.{device}.{rule}.{ts_ms}", ts_ms, since, peak, peak, 0)
            return [self._event(o, "opened", city, device, rule, ts_ms, value, open_at, unit, late)]
        if p is not None and value < clear_below:
            del st.past[rule]
            alert_id = f"{city}.{device}.{rule}.{p.since_ms}.past"
            o = Open(alert_id, p.since_ms, p.since_ms, p.peak, p.peak, 0)
            ev = self._event(o, "past", city, device, rule, ts_ms, value, open_at, unit, True)
            ev.closed_ms = ts_ms
            return [ev]
        return []

    def _close(self, city: str, device: str, rule: str, o: Open, ts_ms: int, value: float, threshold: float, unit: str,
               late: bool) -> Event:
        o.n += 1
        ev = self._event(o, "closed", city, device, rule, ts_ms, value, threshold, unit, late)
        ev.closed_ms = ts_ms
        return ev

    def _event(self, o: Open, kind: EventKind, city: str, device: str, rule: str, at_ms: int, value: float, threshold: float,
               unit: str, late: bool) -> Event:
        return Event(id=f"{o.alert_id}.{o.n}", alert_id=o.alert_id, event=kind, city=city, device=device, rule=rule,
                     severity=RULES[rule][0], at_ms=at_ms, opened_ms=o.opened_ms, since_ms=o.since_ms, value=round(value, 2),
                     peak=round(o.peak, 2), threshold=threshold, unit=unit, late=late, rules_version=self.book.version)
