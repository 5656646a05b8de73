"""Alert storms: one notification per city per storm (pure grouping core, fake clock, real evaluator events)."""

from __future__ import annotations

import pytest

from alerts.core import Evaluator, Event
from alerts.rules import RuleBook, RulesError, StormRule
from alerts.storm import Grouper
from alerts.text import storm_body, storm_messages
from contract.alerts import CITY_SUBJECT, RULES
from contract.cities import load_cities
from contract.payload import Reading

pytestmark = pytest.mark.unit

T0 = 1_764_028_800_000  # ms
S = 1000
RULE = StormRule(stations=5, window_s=600, gather_s=30, digest_s=900, quiet_s=1800)


def _ev(city: str, device: str, rule: str = "aqi_orange", kind: str = "opened", at: int = T0) -> Event:
    return Event(id=f"{city}.{device}.{rule}.{at}.{kind}", alert_id=f"{city}.{device}.{rule}.{at}", event=kind,  # type: ignore[arg-type]
                 city=city, device=device, rule=rule, severity=RULES[rule][0], at_ms=at, opened_ms=at, since_ms=at, value=160.0,
                 peak=160.0, threshold=101.0, unit="AQI")


def _grouper(rule: StormRule = RULE) -> Grouper:
    return Grouper(lambda _city: rule)


def test_a_haze_burst_is_one_notification_per_city_and_other_cities_are_not_held() -> None:
    clock = [T0 / 1000]
    ev = Evaluator(RuleBook(), lambda: clock[0])
    events: list[Event] = []
    for i in range(23):  # 23 Chiang Mai stations, each its first reading at 100 µg/m³: yellow, orange, red, PM2.5, and the city's
        events += ev.readings("chiang_mai", f"cm-air-{i:03d}", [Reading(T0, 1, {"pm25": 100.0, "pm10": 80.0})])
    flood = _ev("phuket", "pk-water-001", "water_flood")
    g = _grouper()
    assert g.route([*events, flood], T0) == [flood]  # Phuket's one alert goes out at once; Chiang Mai's are the storm's
    assert g.tick(T0 + 29 * S) == []  # gathering
    [doc] = g.tick(T0 + 30 * S)
    assert doc["city"] == "chiang_mai" and doc["id"] == f"storm.chiang_mai.{T0}.0" and not doc["over"]
    assert doc["events"] == len(events) and doc["severity"] == "critical"
    by = {(x["rule"], x["event"], x["subject"]): x["n"] for x in doc["groups"]}
    assert by[("aqi_orange", "opened", "station")] == 23 and by[("aqi_red", "opened", "station")] == 23
    assert by[("pm25_24h", "opened", "station")] == 23
    assert ("aqi_red", "opened", "city") in by  # the city-wide AQI is in the same notification
    assert doc["groups"][0]["rule"] == "aqi_red"  # most severe first
    en, th = storm_messages(doc, load_cities())
    assert "Chiang Mai" in en and "23 stations entered AQI starting to affect health (orange)" in en and "the city as a whole" in en
    assert "เชียงใหม่" in th and "23 สถานีเข้าสู่ AQI เริ่มมีผลกระทบต่อสุขภาพ (ส้ม)" in th
    body = storm_body(doc, load_cities())
    assert body["text"] == f"{th}\n{en}" and body["storm"]["storm_id"] == f"storm.chiang_mai.{T0}"
    assert g.tick(T0 + 60 * S) == []  # nothing new: nothing sent


def test_early_events_go_out_alone_and_are_recalled_in_the_storm_notification() -> None:
    g = _grouper()
    for i in range(4):  # four stations, a minute apart: not a storm (yet)
        e = _ev("khon_kaen", f"kk-air-{i:03d}", at=T0 + i * 60 * S)
        assert g.route([e], T0 + i * 60 * S) == [e]
    assert g.route([_ev("khon_kaen", "kk-air-004")], T0 + 300 * S) == []  # the fifth within 10 minutes: a storm
    [doc] = g.tick(T0 + 330 * S)
    assert doc["events"] == 5 and doc["sent_before"] == 4
    en, th = storm_messages(doc, load_cities())
    assert "5 stations entered" in en and "4 of them went out one by one" in en and "4 รายการแรก" in th


def test_stations_spread_beyond_the_window_are_no_storm() -> None:
    g = _grouper()
    for i in range(20):  # one every 3 minutes: never 5 within 10 minutes
        e = _ev("phuket", f"pk-water-{i:03d}", "water_warning", at=T0 + i * 180 * S)
        assert g.route([e], T0 + i * 180 * S) == [e]
    assert g.tick(T0 + 4000 * S) == []


def test_one_station_flapping_is_no_storm() -> None:
    g = _grouper()
    events = [_ev("phuket", "pk-water-900", "water_warning", kind=("opened", "closed")[i % 2], at=T0 + i * S) for i in range(60)]
    for i, e in enumerate(events):
        assert g.route([e], T0 + i * S) == [e]


def test_digests_while_it_lasts_then_it_ends_and_the_next_event_goes_alone() -> None:
    g = _grouper()
    g.route([_ev("chiang_mai", f"cm-air-{i:03d}") for i in range(10)], T0)
    assert len(g.tick(T0 + 30 * S)) == 1
    g.route([_ev("chiang_mai", f"cm-air-{i:03d}", "aqi_red") for i in range(3)], T0 + 60 * S)  # absorbed
    assert g.tick(T0 + 600 * S) == []  # at most one every 15 minutes
    [second] = g.tick(T0 + 930 * S)
    assert second["n"] == 1 and second["events"] == 3 and second["storm_events"] == 13 and not second["over"]
    g.route([_ev("chiang_mai", "cm-air-001", "aqi_red", "closed")], T0 + 1000 * S)
    [last] = g.tick(T0 + 2800 * S)  # 30 minutes without an event: over, with its news
    assert last["over"] and last["events"] == 1 and last["id"] == f"storm.chiang_mai.{T0}.2"
    assert "alert storm over" in storm_messages(last, load_cities())[0]
    assert g.tick(T0 + 4000 * S) == []
    e = _ev("chiang_mai", "cm-air-050", at=T0 + 5000 * S)
    assert g.route([e], T0 + 5000 * S) == [e]  # a new episode starts afresh


def test_a_storm_that_ends_with_nothing_new_sends_nothing_more() -> None:
    g = _grouper()
    g.route([_ev("phuket", f"pk-water-{i:03d}", "water_warning") for i in range(6)], T0)
    assert len(g.tick(T0 + 30 * S)) == 1
    assert g.tick(T0 + 1800 * S) == []
    assert g.cities["phuket"].storm is None


def test_restart_from_the_committed_state_gives_the_same_notification() -> None:
    a, b = _grouper(), _grouper()
    batch = [_ev("chiang_mai", f"cm-air-{i:03d}") for i in range(8)]
    a.route(batch, T0)
    b.route(batch, T0)
    for city, doc in b.docs():
        c = _grouper()
        c.load(city, doc)
        b = c
    more = [_ev("chiang_mai", "cm-air-100", "aqi_red")]
    assert a.route(more, T0 + S) == b.route(more, T0 + S) == []
    assert a.tick(T0 + 30 * S) == b.tick(T0 + 30 * S) != []


def test_disabled_storms_send_every_event() -> None:
    g = _grouper(StormRule(enabled=False))
    batch = [_ev("chiang_mai", f"cm-air-{i:03d}") for i in range(50)]
    assert g.route(batch, T0) == batch


def test_state_stays_small_in_a_large_storm() -> None:
    g = _grouper()
    g.route([_ev("chiang_mai", f"cm-air-{i:04d}", r) for i in range(3000) for r in ("aqi_yellow", "aqi_orange", "aqi_red")], T0)
    [(_, doc)] = g.docs()
    assert not doc["recent"] and sum(len(d) for _n, d in doc["storm"][6].values()) <= 3 * 10  # counts, and ten names per group


def test_storm_rules_are_per_city() -> None:
    book = RuleBook("t", cities={"chiang_mai": {"storm": {"stations": 20}}})
    assert book.for_station("chiang_mai", None).storm.stations == 20
    assert book.for_station("phuket", None).storm.stations == 5
    with pytest.raises(RulesError, match="storms are a city's"):
        RuleBook("t", stations={"cm-air-001": {"storm": {"stations": 3}}}).check()
    with pytest.raises(RulesError, match="quiet_s"):
        RuleBook("t", defaults={"storm": {"window_s": 600, "quiet_s": 60}}).check()
    with pytest.raises(RulesError, match="stations"):
        RuleBook("t", defaults={"storm": {"stations": 1}}).check()


def test_city_subject_counts_in_a_storm_but_does_not_start_one() -> None:
    g = _grouper()
    city = [_ev("phuket", CITY_SUBJECT, r) for r in ("aqi_yellow", "aqi_orange", "aqi_red")]
    assert g.route(city, T0) == city
