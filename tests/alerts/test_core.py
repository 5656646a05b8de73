"""The alert evaluator's pure core, table-driven, on a fake clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from alerts.core import Evaluator, Event
from alerts.rules import RuleBook, RulesError, load_rules
from contract import aqi
from contract.alerts import CITY_SUBJECT
from contract.payload import Reading
from contract.rollups import aqi_points

pytestmark = pytest.mark.unit

T0 = 1_764_028_800  # a whole day, seconds
H = 3600


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _feed(ev: Evaluator, clock: Clock, city: str, device: str, points: list[tuple[float, dict[str, float]]],
          live: bool = True) -> list[Event]:
    """Readings at (seconds from T0, metrics); live: the clock follows each reading."""
    out: list[Event] = []
    for i, (t, m) in enumerate(points):
        if live:
            clock.t = T0 + t + 1
        out += ev.readings(city, device, [Reading(int((T0 + t) * 1000), i, m)])
    return out


def _kinds(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.rule, e.event) for e in events]


WATER = [
    # levels (cm, Phuket: warning 180, flood 250, margin 5), expected (rule, event) in order
    ([170, 181, 178, 182, 176, 179, 174], [("water_warning", "opened"), ("water_warning", "closed")]),  # wobble: no flap
    ([170, 179.9, 175.1, 179], []),
    ([200, 260, 246, 240, 170], [("water_warning", "opened"), ("water_warning", "updated"), ("water_flood", "opened"), ("water_flood", "closed"),
                                 ("water_warning", "closed")]),
    ([180, 180, 180], [("water_warning", "opened")]),  # at the level counts
    ([181, 195, 205], [("water_warning", "opened"), ("water_warning", "updated"), ("water_warning", "updated")]),  # +10 cm steps
]


@pytest.mark.parametrize(("levels", "expected"), WATER)
def test_water_levels_with_hysteresis(levels: list[float], expected: list[tuple[str, str]]) -> None:
    clock = Clock()
    ev = Evaluator(RuleBook(), clock)
    events = _feed(ev, clock, "phuket", "pk-water-001", [(i * 60, {"water_level_cm": v}) for i, v in enumerate(levels)])
    assert _kinds(events) == expected
    assert all(not e.late for e in events)


def test_station_override_sets_its_own_levels() -> None:
    book = RuleBook(version="t1", stations={"pk-water-002": {"water": {"warning_cm": 120, "flood_cm": 150}}})
    clock = Clock()
    ev = Evaluator(book, clock)
    a = _feed(ev, clock, "phuket", "pk-water-002", [(0, {"water_level_cm": 130.0})])
    b = _feed(ev, clock, "phuket", "pk-water-001", [(60, {"water_level_cm": 130.0})])
    assert _kinds(a) == [("water_warning", "opened")] and a[0].threshold == 120 and a[0].rules_version == "t1"
    assert b == []


def test_city_override_and_khon_kaen_default_levels() -> None:
    book = RuleBook(cities={"chiang_mai": {"water": {"enabled": False}}})
    clock = Clock()
    ev = Evaluator(book, clock)
    assert _feed(ev, clock, "chiang_mai", "cm-water-001", [(0, {"water_level_cm": 400.0})]) == []
    kk = _feed(ev, clock, "khon_kaen", "kk-water-001", [(60, {"water_level_cm": 205.0})])
    assert [(e.rule, e.threshold) for e in kk] == [("water_warning", 200.0)]


def _haze(days: int = 3) -> list[tuple[float, dict[str, float]]]:
    """PM2.5 rising from 20 to 120 µg/m³ over `days` days and back, one reading every 10 minutes."""
    n = days * 24 * 6
    up = [20 + 100 * i / n for i in range(n)]
    return [(i * 600, {"pm25": round(v, 1), "pm10": round(v * 1.4, 1)}) for i, v in enumerate(up + up[::-1] + [20.0] * 24 * 6 * 2)]


def test_haze_episode_one_alert_per_band_crossed_each_closed() -> None:
    clock = Clock()
    ev = Evaluator(RuleBook(), clock)
    events = [e for e in _feed(ev, clock, "chiang_mai", "cm-air-001", _haze()) if e.device == "cm-air-001"]
    opened = [e.rule for e in events if e.event == "opened"]
    closed = [e.rule for e in events if e.event == "closed"]
    assert sorted(opened) == ["aqi_orange", "aqi_red", "aqi_yellow", "pm25_24h"]
    assert sorted(closed) == sorted(opened)
    assert opened.index("aqi_yellow") < opened.index("aqi_orange") < opened.index("aqi_red")
    assert not ev.station("chiang_mai", "cm-air-001").open


def test_aqi_in_the_alert_is_the_aqi_the_ingest_stores_and_the_api_serves() -> None:
    """At every band event, the ingest's own roll-up (contract.rollups.aqi_points, which fills hourly.aqi for the API)
    over the same readings gives the same AQI."""
    clock = Clock()
    ev = Evaluator(RuleBook(), clock)
    points = _haze()
    events = [e for e in _feed(ev, clock, "chiang_mai", "cm-air-001", points) if e.rule.startswith("aqi_") and e.device == "cm-air-001"]
    assert len(events) >= 6
    for e in events:
        hour_ms = e.at_ms - e.at_ms % (H * 1000)
        hours: dict[int, list[tuple[float, float]]] = {}
        for t, m in points:
            ms = (T0 + t) * 1000
            if ms <= e.at_ms:  # what had arrived when the event was judged
                hours.setdefault(ms - ms % (H * 1000), []).append((m["pm25"], m["pm10"]))
        values = [[h, sum(a for a, _ in v) / len(v), sum(b for _, b in v) / len(v)] for h, v in sorted(hours.items())]
        series = [{"tags": {"city": "chiang_mai", "device": "cm-air-001"}, "columns": ["time", "mean_pm25", "mean_pm10"], "values": values}]
        line = aqi_points(series, hour_ms, hour_ms)[0]
        stored = int(line.split(" ")[1].split(",")[0].removeprefix("aqi=").removesuffix("i"))
        assert e.value == stored, (e.rule, e.event, e.at_ms)


def test_city_aqi_alert_from_the_mean_of_its_stations() -> None:
    clock = Clock()
    ev = Evaluator(RuleBook(cities={"chiang_mai": {"pm25": {"enabled": False}, "aqi": {"city_min_stations": 2}}}), clock)
    events: list[Event] = []
    for i in range(12):
        clock.t = T0 + i * 600 + 1
        events += ev.readings("chiang_mai", "cm-air-001", [Reading((T0 + i * 600) * 1000, i, {"pm25": 60.0})])
        events += ev.readings("chiang_mai", "cm-air-002", [Reading((T0 + i * 600) * 1000 + 10, i, {"pm25": 10.0})])
    city = [e for e in events if e.device == CITY_SUBJECT]
    # the city's mean is 35 µg/m³ (yellow, AQI 95) while one station alone is orange
    assert [(e.rule, e.event) for e in city] == [("aqi_yellow", "opened")]
    assert any(e.rule == "aqi_orange" and e.device == "cm-air-001" for e in events)
    assert city[0].value == aqi.thai_aqi({"pm25": 35.0}, datetime.fromtimestamp(T0, UTC)).aqi  # type: ignore[union-attr]


def test_late_replay_opens_nothing_for_the_past() -> None:
    """A device replays a day of buffered readings with a water peak in it: one `past` event, no alert."""
    clock = Clock(T0 + 26 * H)
    ev = Evaluator(RuleBook(), clock)
    day = [(i * 600, {"water_level_cm": 260.0 if 6 * H <= i * 600 < 8 * H else 100.0}) for i in range(24 * 6)]
    events = _feed(ev, clock, "phuket", "pk-water-001", day, live=False)
    assert sorted(_kinds(events)) == [("water_flood", "past"), ("water_warning", "past")]
    assert all(e.late for e in events)
    flood = next(e for e in events if e.rule == "water_flood")
    assert flood.since_ms == (T0 + 6 * H) * 1000 and flood.closed_ms == (T0 + 8 * H) * 1000 and flood.peak == 260.0
    assert not ev.station("phuket", "pk-water-001").open


def test_late_replay_still_high_opens_when_it_reaches_now_with_its_start() -> None:
    clock = Clock(T0 + 3 * H)
    ev = Evaluator(RuleBook(), clock)
    late = _feed(ev, clock, "phuket", "pk-water-001", [(i * 600, {"water_level_cm": 190.0}) for i in range(12)], live=False)
    assert late == []
    now = _feed(ev, clock, "phuket", "pk-water-001", [(3 * H - 10, {"water_level_cm": 191.0})], live=False)
    assert _kinds(now) == [("water_warning", "opened")]
    assert now[0].since_ms == T0 * 1000 and now[0].opened_ms == (T0 + 3 * H - 10) * 1000 and not now[0].late


def test_late_data_closes_an_open_alert_at_measurement_time() -> None:
    clock = Clock()
    ev = Evaluator(RuleBook(), clock)
    opened = _feed(ev, clock, "phuket", "pk-water-001", [(0, {"water_level_cm": 200.0})])
    clock.t = T0 + 5 * H  # the device was offline; it replays what it buffered
    replay = _feed(ev, clock, "phuket", "pk-water-001", [(600, {"water_level_cm": 190.0}), (1200, {"water_level_cm": 150.0}),
                                                          (1800, {"water_level_cm": 185.0})], live=False)
    assert _kinds(opened) == [("water_warning", "opened")]
    assert [(e.rule, e.event, e.closed_ms, e.late) for e in replay if e.rule == "water_warning"] == [
        ("water_warning", "closed", (T0 + 1200) * 1000, True)]
    assert not ev.station("phuket", "pk-water-001").open  # 185 after it, late: not re-opened as new


def test_a_repeated_or_older_reading_changes_nothing() -> None:
    clock = Clock()
    ev = Evaluator(RuleBook(), clock)
    first = _feed(ev, clock, "phuket", "pk-water-001", [(0, {"water_level_cm": 200.0})])
    again = ev.readings("phuket", "pk-water-001", [Reading(T0 * 1000, 0, {"water_level_cm": 100.0})])
    assert len(first) == 1 and again == [] and ev.counts["repeat"] == 1


def test_silent_after_n_intervals_closed_when_it_returns() -> None:
    clock = Clock()
    ev = Evaluator(RuleBook(defaults={"silent": {"intervals": 3}}), clock)
    _feed(ev, clock, "khon_kaen", "kk-traffic-001", [(i * 60, {"vehicle_count": 5.0}) for i in range(5)])
    last = clock.t
    clock.t = last + 179
    assert ev.tick() == []
    clock.t = last + 181
    opened = ev.tick()
    clock.t = last + 300
    assert ev.tick() == []  # once
    closed = ev.readings("khon_kaen", "kk-traffic-001", [Reading(int(clock.t * 1000) - 500, 9, {"vehicle_count": 1.0})])
    assert _kinds(opened) == [("silent", "opened")] and opened[0].since_ms == int(last * 1000)
    assert _kinds(closed) == [("silent", "closed")] and closed[0].alert_id == opened[0].alert_id


def test_rain_intensity_classes() -> None:
    clock = Clock()
    ev = Evaluator(RuleBook(), clock)
    # 10-minute readings; 3 mm each is 18 mm/h (heavy), 7 mm each 42 mm/h (very heavy)
    mm = [0.0] * 6 + [3.0] * 6 + [7.0] * 6 + [0.0] * 12
    events = _feed(ev, clock, "phuket", "pk-weather-001", [(i * 600, {"rain_mm": v}) for i, v in enumerate(mm)])
    assert _kinds(events) == [("rain_heavy", "opened"), ("rain_heavy", "updated"), ("rain_heavy", "updated"),
                              ("rain_very_heavy", "opened"), ("rain_very_heavy", "closed"), ("rain_heavy", "closed")]
    assert [e.value for e in events if e.event == "opened"] == [12.0, 38.0]  # mm in the last hour


def test_restart_from_saved_state_continues_without_repeats() -> None:
    """The state written after any reading, loaded into a new evaluator, gives the events an uninterrupted run gives."""
    points = _haze(2)
    clock = Clock()
    whole = _feed(Evaluator(RuleBook(), clock), clock, "chiang_mai", "cm-air-001", points)
    for cut in (100, 300, 500):
        clock = Clock()
        first = Evaluator(RuleBook(), clock)
        a = _feed(first, clock, "chiang_mai", "cm-air-001", points[:cut])
        saved = {k: json.loads(json.dumps(st.to_doc())) for k, st in first.stations.items()}
        second = Evaluator(RuleBook(), clock)
        for (city, device), doc in saved.items():
            second.load(city, device, doc)
        again = _feed(second, clock, "chiang_mai", "cm-air-001", points[cut - 5:cut])  # redelivered: ignored
        b = _feed(second, clock, "chiang_mai", "cm-air-001", points[cut:])
        assert again == []
        assert [e.id for e in a + b] == [e.id for e in whole]


def test_event_ids_are_unique_and_stable() -> None:
    clock = Clock()
    events = _feed(Evaluator(RuleBook(), clock), clock, "chiang_mai", "cm-air-001", _haze())
    assert len({e.id for e in events}) == len(events)


# --- rules files ----------------------------------------------------------------
BAD_RULES = [
    ({"defaults": {}}, "set `version`"),
    ({"version": "1", "defaults": {"water": {"warning": 1}}}, "unknown key 'warning'"),
    ({"version": "1", "defaults": {"noise": {}}}, "unknown section 'noise'"),
    ({"version": "1", "cities": {"phuket": {"water": {"warning_cm": 300}}}}, "below warning_cm"),
    ({"version": "1", "defaults": {"aqi": {"min_band": 2}}}, "min_band"),
    ({"version": "1", "stations": {"x-1": {"silent": {"intervals": "three"}}}}, "not a number"),
    ({"version": "1", "oops": 1}, "unknown keys"),
]


@pytest.mark.parametrize(("doc", "message"), BAD_RULES)
def test_a_bad_rules_file_says_what_to_fix(tmp_path: Path, doc: dict, message: str) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(RulesError, match="rules file") as exc:
        load_rules(path)
    assert message in str(exc.value)


def test_rules_file_in_yaml(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text('version: "2026-11-29.1"\ncities:\n  chiang_mai:\n    aqi: {min_band: 4}\nstations:\n  pk-water-003:\n'
                    "    water: {warning_cm: 150, flood_cm: 210}\n")
    book = load_rules(path)
    assert book.version == "2026-11-29.1"
    assert book.for_station("chiang_mai", "cm-air-001").aqi.min_band == 4
    w = book.for_station("phuket", "pk-water-003").water
    assert (w.warning_cm, w.flood_cm) == (150, 210)


def test_readings_in_the_same_millisecond_are_told_apart_by_seq() -> None:
    clock = Clock()
    ev = Evaluator(RuleBook(), clock)
    events = ev.readings("phuket", "pk-water-001", [Reading(T0 * 1000, 1, {"water_level_cm": 190.0}),
                                                     Reading(T0 * 1000, 2, {"water_level_cm": 100.0})])
    assert _kinds(events) == [("water_warning", "opened"), ("water_warning", "closed")]
    assert ev.readings("phuket", "pk-water-001", [Reading(T0 * 1000, 2, {"water_level_cm": 300.0})]) == []
