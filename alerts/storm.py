"""Alert storms: one notification per city per storm, not hundreds (pure, no I/O; the clock is passed in).

On a haze day hundreds of a city's stations cross into a worse band within
minutes; a backlog drained after an outage does the same in seconds. Every
alert still exists on its own (MQTT, InfluxDB, the API); what is grouped is
what reaches people, the webhooks.

The rule, per city (`storm` in the rules file, alerts.rules.StormRule):
- A storm begins when `stations` distinct stations of the city have had an
  alert event (opened, updated, closed) within the last `window_s`. A batch
  of events is judged as a whole before any of it is sent, so a burst that
  arrives together (a backlog, a city-wide crossing) is grouped from its first
  event; events before the storm began went out one by one, and are counted in
  its first notification too (said so).
- While it lasts, the city's events (its stations' and the city-wide AQI's)
  are absorbed: the first notification goes out `gather_s` after the storm
  began ("23 stations in Chiang Mai entered AQI orange"), later ones at most
  every `digest_s`, each with what happened since the one before, and only
  when something did.
- It ends after `quiet_s` without an event of the city; news not yet sent go
  out then, in a last notification that says the storm is over.

A storm is a single burst of news for the officials: a city whose stations
all cross at once gets exactly one notification. The state is small (the
stations of the window, counts, at most `NAMES` station names per group) and
is committed with the events, so a restart neither repeats nor loses one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from alerts.core import Event
from alerts.rules import StormRule
from contract.alerts import CITY_SUBJECT, RULES

NOTIFIABLE = ("opened", "updated", "closed")
NAMES = 10  # station names kept per group (the rest are counted)
_SEVERITY = ("info", "warning", "critical")


@dataclass(slots=True)
class Group:
    """Events of one rule and kind in a storm notification: how many, and the first stations' names."""

    n: int = 0
    devices: list[str] = field(default_factory=list)

    def add(self, device: str) -> None:
        self.n += 1
        if len(self.devices) < NAMES and device not in self.devices:
            self.devices.append(device)


@dataclass(slots=True)
class Storm:
    began_ms: int
    due_ms: int  # when the next notification may go out
    last_ms: int  # the newest event absorbed
    sent: int = 0  # notifications so far
    events: int = 0  # events absorbed in all
    before: int = 0  # events of the first notification that had gone out one by one
    news: dict[str, Group] = field(default_factory=dict)  # "rule|kind|city-or-station" -> group, since the last notification


@dataclass(slots=True)
class City:
    recent: OrderedDict[str, int] = field(default_factory=OrderedDict)  # station -> its newest event (ms), oldest first
    # events sent one by one in the window (rule, kind, device, ms): counted in a storm's first notification
    early: list[tuple[str, str, str, int]] = field(default_factory=list)
    storm: Storm | None = None

    def to_doc(self) -> dict[str, Any]:
        s = self.storm
        return {
            "recent": list(self.recent.items()),
            "early": self.early,
            "storm": None if s is None else [s.began_ms, s.due_ms, s.last_ms, s.sent, s.events, s.before,
                                             {k: [g.n, g.devices] for k, g in s.news.items()}],
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> City:
        c = cls(OrderedDict((d, int(t)) for d, t in doc.get("recent", [])), [(r, k, d, int(t)) for r, k, d, t in doc.get("early", [])])
        s = doc.get("storm")
        if s is not None:
            began, due, last, sent, events, before, news = s
            c.storm = Storm(began, due, last, sent, events, before, {k: Group(n, list(d)) for k, (n, d) in news.items()})
        return c


def _key(ev: Event) -> str:
    return f"{ev.rule}|{ev.event}|{'city' if ev.device == CITY_SUBJECT else 'station'}"


class Grouper:
    """Decides, per batch of events, which go to the webhooks one by one; `tick` makes the storms' notifications."""

    def __init__(self, rule_for: Callable[[str], StormRule]) -> None:
        self.rule_for = rule_for
        self.cities: dict[str, City] = {}
        self.dirty: set[str] = set()
        self._rules: dict[str, StormRule] = {}

    def rule(self, city: str) -> StormRule:
        r = self._rules.get(city)
        if r is None:
            r = self._rules[city] = self.rule_for(city)
        return r

    def load(self, city: str, doc: dict[str, Any]) -> None:
        self.cities[city] = City.from_doc(doc)

    def docs(self) -> list[tuple[str, dict[str, Any]]]:
        """The cities changed since the last call, to commit with the batch."""
        out = [(c, self.cities[c].to_doc()) for c in sorted(self.dirty)]
        self.dirty.clear()
        return out

    def route(self, events: Iterable[Event], now_ms: int) -> list[Event]:
        """The events to notify one by one; the rest are absorbed into their city's storm."""
        by_city: dict[str, list[Event]] = {}
        for ev in events:
            if ev.event in NOTIFIABLE:
                by_city.setdefault(ev.city, []).append(ev)
        out: list[Event] = []
        for city, evs in by_city.items():
            rule = self.rule(city)
            if not rule.enabled:
                out += evs
                continue
            c = self.cities.setdefault(city, City())
            self.dirty.add(city)
            if c.storm is None:
                window_ms = int(rule.window_s * 1000)
                for ev in evs:
                    if ev.device != CITY_SUBJECT:
                        c.recent[ev.device] = now_ms
                        c.recent.move_to_end(ev.device)
                while c.recent and next(iter(c.recent.values())) < now_ms - window_ms:
                    c.recent.popitem(last=False)
                c.early = [e for e in c.early if e[3] >= now_ms - window_ms]
                if len(c.recent) >= rule.stations:  # the whole batch is judged before any of it is sent
                    c.storm = Storm(began_ms=now_ms, due_ms=now_ms + int(rule.gather_s * 1000), last_ms=now_ms, before=len(c.early))
                    for rule_name, kind, device, _ms in c.early:
                        c.storm.news.setdefault(f"{rule_name}|{kind}|{'city' if device == CITY_SUBJECT else 'station'}", Group()).add(device)
                    c.storm.events = len(c.early)
                    c.recent.clear()  # bounded: fewer than `stations` entries outside a storm, none in one
                    c.early = []
                else:
                    out += evs
                    c.early = (c.early + [(ev.rule, ev.event, ev.device, now_ms) for ev in evs])[-10 * rule.stations:]
                    continue
            s = c.storm
            assert s is not None
            s.last_ms = now_ms
            s.events += len(evs)
            for ev in evs:
                s.news.setdefault(_key(ev), Group()).add(ev.device)
        return out

    def tick(self, now_ms: int) -> list[dict[str, Any]]:
        """The storm notifications due now (documents for alerts.text.storm_body)."""
        out: list[dict[str, Any]] = []
        for city, c in self.cities.items():
            s = c.storm
            if s is None:
                continue
            rule = self.rule(city)
            over = now_ms - s.last_ms >= rule.quiet_s * 1000
            if s.news and (now_ms >= s.due_ms or over):
                out.append(self._notice(city, s, now_ms, over))
                s.sent += 1
                s.news = {}
                s.before = 0
                s.due_ms = now_ms + int(rule.digest_s * 1000)
                self.dirty.add(city)
            if over:
                c.storm = None
                self.dirty.add(city)
        return out

    def _notice(self, city: str, s: Storm, now_ms: int, over: bool) -> dict[str, Any]:
        groups = []
        severity = 0
        events = 0
        for key, g in sorted(s.news.items(), key=lambda kv: (-_SEVERITY.index(RULES[kv[0].split("|")[0]][0]), kv[0])):
            rule, kind, subject = key.split("|")
            severity = max(severity, _SEVERITY.index(RULES[rule][0]))
            events += g.n
            groups.append({"rule": rule, "event": kind, "subject": subject, "n": g.n, "devices": g.devices})
        storm_id = f"storm.{city}.{s.began_ms}"
        return {"kind": "storm", "id": f"{storm_id}.{s.sent}", "storm_id": storm_id, "city": city, "n": s.sent, "over": over,
                "since_ms": s.began_ms, "at_ms": now_ms, "severity": _SEVERITY[severity], "events": events, "storm_events": s.events,
                "sent_before": s.before, "groups": groups}
