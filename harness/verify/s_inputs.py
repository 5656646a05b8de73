"""Scenarios 7-10: bad input through the real broker into the real ingest.

7 fuzzed payloads, 8 ids and names that would forge line protocol, 9 timestamps
outside the window, 10 payload sizes up to and past the broker's limit. Each
starts its own broker, InfluxDB and `nakhon ingest` (harness.verify.rig.Stack).
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from contract import storage
from contract.catalogue import FW_PATTERN, MEASUREMENTS, METRICS
from contract.payload import MAX_BATCH, MAX_SEQ
from contract.topics import DEVICE_ID_PATTERN
from harness.verify.report import Row, Size
from harness.verify.rig import MqttDevice, Publisher, Stack, mem_kb, say, wait_for
from harness.verify.scenarios import register

TS = "__TS__"  # placeholder for a fresh, unique, in-window timestamp, filled in when a case is rendered
_NUMERIC = [m for m in METRICS.values() if m.kind != "string"]
_FW_RE = re.compile(FW_PATTERN)


# --- scenario 7: fuzzed payloads ------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One fuzzed message: a JSON-able document (or raw bytes), how to spoil it, what the ingest must do."""

    kind: str
    doc: Any = None  # rendered with json.dumps (NaN/Infinity literals, big integers kept as text)
    raw: bytes | None = None  # sent as is instead of `doc`
    literal: str = ""  # text-level corruption: replace the first TS with this literal (NaN, Infinity, 1e999, ...)
    cut: int = 0  # text-level corruption: keep only this many bytes (0 = all)
    good: int = 0  # readings the ingest must store
    refused: bool = True  # the message must end in the dead-letter store


def _metric_value(name: str) -> st.SearchStrategy[Any]:
    m = METRICS[name]
    if m.kind == "string":
        return st.from_regex(_FW_RE, fullmatch=True)
    return st.one_of(st.floats(m.lo, m.hi), st.integers(math.ceil(m.lo), math.floor(m.hi)))


_good_m = st.dictionaries(st.sampled_from(list(METRICS)), st.none(), min_size=1, max_size=6).flatmap(
    lambda keys: st.fixed_dictionaries({k: _metric_value(k) for k in keys}))
_good_reading = st.builds(lambda seq, m: {"ts": TS, "seq": seq, "m": m}, st.integers(0, MAX_SEQ), _good_m)

_anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)


def _outside(lo: float, hi: float) -> st.SearchStrategy[Any]:
    """Numbers (huge, tiny, negative, non-finite) that are not in lo..hi, or no number at all."""
    numbers = st.one_of(st.floats(), st.integers(-(1 << 80), 1 << 80), st.sampled_from([-1e-300, 5e-324, 1e308, -1e308, 2 ** 64]))
    return st.one_of(
        numbers.filter(lambda x: not (type(x) in (int, float) and math.isfinite(x) and lo <= x <= hi)),
        st.text(max_size=10), st.booleans(), st.none(), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )


@st.composite
def _bad_reading(draw: st.DrawFn) -> dict[str, Any]:
    """A good reading with exactly one thing wrong."""
    r = dict(draw(_good_reading))
    now = time.time()
    what = draw(st.sampled_from(["ts", "seq", "m_type", "m_empty", "metric", "value", "fw", "extra", "missing"]))
    if what == "ts":  # far outside the window, or not a number
        r["ts"] = draw(_outside(now - 40 * 86400, now + 3600))
    elif what == "seq":
        r["seq"] = draw(st.one_of(st.integers(max_value=-1), st.integers(min_value=MAX_SEQ + 1), st.floats(), st.text(max_size=5),
                                  st.booleans(), st.none()))
    elif what == "m_type":
        r["m"] = draw(st.one_of(st.lists(st.integers(), max_size=3), st.text(max_size=5), st.none(), st.integers()))
    elif what == "m_empty":
        r["m"] = {}
    elif what == "metric":
        r["m"] = {**r["m"], draw(st.text(min_size=0, max_size=20).filter(lambda s: s not in METRICS)): 1.0}
    elif what == "value":
        m = draw(st.sampled_from(_NUMERIC))
        r["m"] = {**r["m"], m.name: draw(_outside(m.lo, m.hi))}
    elif what == "fw":
        r["m"] = {**r["m"], "fw": draw(st.one_of(st.text(max_size=40).filter(lambda s: not _FW_RE.fullmatch(s)), st.integers(), st.none()))}
    elif what == "extra":
        r[draw(st.text(max_size=8).filter(lambda s: s not in ("ts", "seq", "m", "v")))] = draw(_anything)
    else:
        del r[draw(st.sampled_from(["ts", "seq", "m"]))]
    return r


def _non_finite(x: Any) -> bool:
    """NaN or infinity anywhere: JSON has no such number, so the whole message is bad JSON, not one reading."""
    if type(x) is float:
        return not math.isfinite(x)
    if isinstance(x, dict):
        return any(_non_finite(v) for v in x.values())
    if isinstance(x, list):
        return any(_non_finite(v) for v in x)
    return False


def _single(r: dict[str, Any]) -> dict[str, Any]:
    return {"v": 1, **r}


_cases = st.one_of(
    _good_reading.map(lambda r: Case("valid", _single(r), good=1, refused=False)),
    st.lists(_good_reading, min_size=1, max_size=5).map(lambda rs: Case("valid_batch", {"v": 1, "batch": rs}, good=len(rs), refused=False)),
    st.tuples(st.lists(_good_reading, min_size=1, max_size=5), _bad_reading(), st.integers(0, 5)).map(
        lambda t: Case("batch_one_bad", {"v": 1, "batch": [*t[0][: t[2]], t[1], *t[0][t[2]:]]}, good=0 if _non_finite(t[1]) else len(t[0]))),
    _bad_reading().map(lambda r: Case("bad_reading", _single(r))),
    st.tuples(_good_reading, st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "nan", "0x10", "01", "+1", ".5"])).map(
        lambda t: Case("non_finite_literal", _single(t[0]), literal=t[1])),
    st.tuples(_good_reading, st.integers(1, 60)).map(lambda t: Case("truncated", _single(t[0]), cut=t[1])),
    st.sampled_from(["", "1", 2, 1.0, True, "one", None]).map(lambda v: Case("bad_version", {"v": v, "ts": TS, "seq": 1, "m": {"pm25": 1}})),
    st.binary(max_size=2000).map(lambda b: Case("binary", raw=b)),
    st.text(max_size=200).map(lambda s: Case("text", raw=s.encode("utf-8", "surrogatepass"))),
    _anything.filter(lambda d: not (isinstance(d, dict) and "v" in d)).map(lambda d: Case("random_json", d)),
    st.just(Case("empty", raw=b"")),
    st.tuples(st.integers(10, 50_000), st.sampled_from(["[", '{"a":'])).map(lambda t: Case("deep_nesting", raw=(t[1] * t[0]).encode())),
    st.integers(1100, 100_000).map(lambda n: Case("deep_in_value", raw=b'{"v":1,"ts":1,"seq":1,"m":{"pm25":' + b"[" * n + b"]" * n + b"}}")),
    st.integers(MAX_BATCH + 1, 3000).map(lambda n: Case("huge_batch", {"v": 1, "batch": [{"ts": TS, "seq": i, "m": {"pm25": 1}} for i in range(n)]})),
    st.integers(10, 60_000).map(lambda n: Case("huge_array_value", {"v": 1, "ts": TS, "seq": 1, "m": {"pm25": [0] * n}})),
)


def fuzz_cases(n: int) -> list[Case]:
    """`n` cases from hypothesis, derandomized so a run is reproducible."""
    out: list[Case] = []

    @given(case=_cases)
    @settings(max_examples=n, database=None, derandomize=True, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    def collect(case: Case) -> None:
        out.append(case)

    collect()
    return out


class _Clock:
    """Unique in-window timestamps for the readings that must be stored (so none overwrites another)."""

    def __init__(self) -> None:
        self.t0 = time.time() - 120
        self.i = 0

    def next(self) -> str:
        self.i += 1
        return repr(round(self.t0 - self.i + (self.i % 1000) / 1000, 3))


def render(case: Case, clock: _Clock) -> bytes:
    if case.raw is not None:
        return case.raw
    text = json.dumps(case.doc, separators=(",", ":"), allow_nan=True)
    if case.literal:
        text = text.replace(f'"{TS}"', case.literal, 1)
    parts = text.split(f'"{TS}"')
    text = parts[0] + "".join(clock.next() + p for p in parts[1:])
    data = text.encode("utf-8", "surrogatepass")
    return data[: min(case.cut, len(data) - 1)] if case.cut else data


def _payload(rec: dict[str, Any]) -> bytes:
    return base64.b64decode(rec["payload_b64"]) if "payload_b64" in rec else str(rec.get("payload", "")).encode("utf-8", "surrogatepass")


def _stored_times(stack: Stack, device: str) -> set[int]:
    """Distinct timestamps (ms) of the device's points across the data measurements: one per stored reading."""
    times: set[int] = set()
    for meas in MEASUREMENTS:
        for s in stack.db.series(f'SELECT "seq" FROM "raw"."{meas}" WHERE "device" = $d', {"d": device}):
            times.update(int(v[0]) for v in s.get("values", []))
    return times


@register(7, "fuzzed payloads (hypothesis) into the real broker and ingest")
def fuzzed_payloads(root: Path, size: Size) -> Row:
    n = 500 if size == "quick" else 10_000
    row = Row(7, "fuzzed payloads", unit="messages")
    say(f"generating {n:,} cases with hypothesis")
    cases = fuzz_cases(n)
    device, topic = "fz-phuket-01", "nakhon/v1/phuket/fz-phuket-01/telemetry"
    with Stack(root) as stack:
        assert stack.ingest is not None and stack.ingest.proc is not None
        pid = stack.ingest.proc.pid
        clock = _Clock()
        payloads = [render(c, clock) for c in cases]
        say(f"publishing {len(payloads):,} messages ({sum(map(len, payloads)) / 1e6:.1f} MB)")
        pub = Publisher(stack.broker.port)
        for p in payloads:
            pub.publish(topic, p)
        acked = pub.settle()
        pub.close()
        want_dead = Counter(p for c, p in zip(cases, payloads, strict=True) if c.refused)
        want_stored = sum(c.good for c in cases)
        say(f"{acked:,} acknowledged by the broker; waiting for {sum(want_dead.values()):,} dead letters and {want_stored:,} readings")
        stats = stack.settled(len(payloads), timeout=300)
        wait_for(lambda: len(_stored_times(stack, device)) >= want_stored and len(stack.dead_letters()) >= sum(want_dead.values()), 60, 1.0)
        dead = stack.dead_letters()
        stored = len(_stored_times(stack, device))
        alive = stack.ingest.running and stack.ingest.proc.pid == pid
    got_dead = Counter(_payload(d) for d in dead)
    missing = want_dead - got_dead  # should have been refused and kept, and were not
    extra = got_dead - want_dead  # valid messages refused
    unexplained = sum(1 for d in dead if not d.get("reason") or not all(r.get("detail") for r in d.get("rejections", [{}])))
    kinds = Counter(c.kind for c in cases)
    reasons = Counter(str(d.get("reason")) for d in dead)
    row.sent = len(payloads)
    row.stored = stored
    row.rejected = len(dead)
    row.lost = sum(extra.values()) + max(0, want_stored - stored)
    row.accepted_bad = sum(missing.values()) + max(0, stored - want_stored)
    crashed = 0 if alive else 1
    row.figures = {
        "ingest crashes": crashed,
        "valid msgs": sum(1 for c in cases if not c.refused),
        "valid readings": want_stored,
        "refused msgs": sum(want_dead.values()),
        "broker acked": acked,
        "ingest received": int(stats.get("received", 0)),
        "without reason": unexplained,
        "reasons": ", ".join(f"{r} {k}" for r, k in reasons.most_common()),
    }
    row.ok = crashed == 0 and row.lost == 0 and row.accepted_bad == 0 and unexplained == 0 and acked == len(payloads) and \
        stats.get("received") == len(payloads)
    row.note = (f"{len(payloads):,} hypothesis cases ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}); dead letters matched to the "
                "refused payloads byte for byte; every valid reading stored once (distinct timestamps).")
    return row


# --- scenario 8: ids and names that would forge line protocol ---------------------------------------

HOSTILE = [",", " ", "=", "\n", "\\", '"', "'", "\t", "ภูเก็ต", "🚦", "\u200b", "\r\n", "\\n", ",city=khon_kaen", " x=1", '"; DROP']
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ufffe\uffff]")  # Mosquitto refuses these in a topic: malformed packet, publisher disconnected


def _allowed_fields(measurement: str) -> set[str] | None:
    """Field keys the schema allows in a measurement (any retention policy); None = self-metrics, names checked by pattern."""
    from contract.rollups import AGGREGATES, AQI_AVG_FIELDS, numeric_fields
    from contract.status import _NUMBERS as STATUS_NUMBERS

    if measurement in MEASUREMENTS:
        from contract.catalogue import metrics_of

        return {m.name for m in metrics_of(measurement)} | {"seq", "ts"} | {f"{a}_{f}" for a in AGGREGATES for f in numeric_fields(measurement)}
    if measurement == storage.AQI_MEASUREMENT:
        return {"aqi", "band", "pollutant", *AQI_AVG_FIELDS.values()}
    if measurement == storage.STATUS_MEASUREMENT:
        return {"state", "fw", "reset", "kind", "faults", "fault_count", *STATUS_NUMBERS}
    return None


def outside_schema(stack: Stack, devices: set[str]) -> list[str]:
    """Everything InfluxDB holds that the schema (contract.storage, contract.catalogue) does not allow, as readable lines."""
    db = stack.db
    bad: list[str] = []
    cities = set(stack.cfg.cities)
    known = set(MEASUREMENTS) | {storage.INGEST_MEASUREMENT, storage.STATUS_MEASUREMENT, storage.AQI_MEASUREMENT}
    measurements = {v[0] for s in db.series("SHOW MEASUREMENTS") for v in s.get("values", [])}
    # every retention policy, not only ours: a point written into another would be outside the schema too
    bad += [f"measurement {m!r}" for m in sorted(measurements - known)]
    for s in db.series("SHOW TAG KEYS"):
        allowed = {"worker"} if s["name"] == storage.INGEST_MEASUREMENT else set(storage.TAGS)
        bad += [f"tag key {s['name']}.{v[0]!r}" for v in s.get("values", []) if v[0] not in allowed]
    for s in db.series('SHOW TAG VALUES WITH KEY = "city"'):
        bad += [f"city {s['name']}.{v[1]!r}" for v in s.get("values", []) if v[1] not in cities]
    for s in db.series('SHOW TAG VALUES WITH KEY = "device"'):
        bad += [f"device {s['name']}.{v[1]!r}" for v in s.get("values", []) if v[1] not in devices or not re.fullmatch(DEVICE_ID_PATTERN, v[1])]
    for rp in [v[0] for s in db.series("SHOW RETENTION POLICIES") for v in s.get("values", [])]:
        for meas in measurements:
            allowed_f = _allowed_fields(meas)
            for s in db.series(f'SHOW FIELD KEYS FROM "{rp}"."{meas}"'):
                for name, _type in s.get("values", []):
                    if (allowed_f is None and not re.fullmatch(r"[a-z0-9_]{1,64}", name)) or (allowed_f is not None and name not in allowed_f):
                        bad.append(f"field {rp}.{meas}.{name!r}")
    return bad


@register(8, "ids, tags and metric names carrying , space = newline \\ quotes unicode emoji")
def hostile_names(root: Path, size: Size) -> Row:
    row = Row(8, "hostile ids and names", unit="messages")
    now = time.time()
    good = {"pm25": 12.5, "pm10": 30.0, "temp_c": 31.0, "rh": 70.0, "battery_v": 3.9, "fw": "1.2.0"}
    legit = [(city, f"ok-{city[:2]}-01") for city in ("phuket", "khon_kaen", "chiang_mai")]
    attacks: list[tuple[str, bytes, str]] = []  # (topic, payload, what)
    reading = json.dumps({"v": 1, "ts": now, "seq": 1, "m": {"pm25": 1.0}}).encode()
    status = json.dumps({"v": 1, "state": "online"}).encode()
    for h in HOSTILE:
        for channel, payload in (("telemetry", reading), ("status", status)):
            attacks.append((f"nakhon/v1/phuket/dev{h}001/{channel}", payload, "device id"))
            attacks.append((f"nakhon/v1/phuket{h}/dev-001/{channel}", payload, "city"))
            attacks.append((f"nakhon/v1/{h}/dev-001/{channel}", payload, "city"))
        ok_topic = f"nakhon/v1/phuket/{legit[0][1]}/telemetry"
        for m in ({f"pm25{h}": 1.0}, {f"{h}pm25": 1.0}, {h: 1.0}, {"pm25": 1.0, f"x{h}": 2.0}, {"fw": f"1.2{h}0"}, {"fw": f"1.2.0{h}"},
                  {"pm25": f"1{h}2"}, {"pm25": h}):
            attacks.append((ok_topic, json.dumps({"v": 1, "ts": now, "seq": 2, "m": m}).encode(), "metric name/value"))
        status_topic = f"nakhon/v1/phuket/{legit[0][1]}/status"
        for doc in ({"fw": f"1.2{h}0"}, {"faults": [f"pm:{h}"]}, {"faults": [f"pm{h}x:timeout"]}, {f"state{h}": "x"}, {"reset": h},
                    {"kind": f"air{h}"}):
            attacks.append((status_topic, json.dumps({"v": 1, "state": "online", **doc}).encode(), "status field"))
    attacks += [("nakhon/v1/phuket//telemetry", reading, "empty id"), ("nakhon/v1//dev-001/telemetry", reading, "empty city"),
                ("nakhon/v1/phuket/" + "a" * 200 + "/telemetry", reading, "long id"), ("nakhon/v1/PHUKET/DEV-001/telemetry", reading, "case")]
    with Stack(root) as stack:
        pub = Publisher(stack.broker.port)
        for city, dev in legit:
            pub.publish(f"nakhon/v1/{city}/{dev}/telemetry", json.dumps({"v": 1, "ts": now - 5, "seq": 1, "m": good}).encode())
            pub.publish(f"nakhon/v1/{city}/{dev}/status", json.dumps({"v": 1, "state": "online", "fw": "1.2.0", "faults": ["pm:timeout"]}).encode())
        by_broker = [a for a in attacks if _CONTROL.search(a[0])]
        attacks = [a for a in attacks if not _CONTROL.search(a[0])]
        for topic, payload, _ in attacks:
            pub.publish(topic, payload)
        acked = pub.settle()
        pub.close()
        broker_said: Counter[str] = Counter()
        say(f"{acked}/{len(attacks) + 2 * len(legit)} acknowledged; {len(by_broker)} topics with control characters, one connection each")
        for topic, payload, _ in by_broker:  # one throw-away connection each: the broker drops it
            probe = MqttDevice(stack.broker.port, "verify-ctl")
            answer = probe.publish(topic, payload, timeout=5) if probe.accepted() else "not connected"
            broker_said[f"{answer} ({probe.disconnect_reason or 'still connected'})"] += 1
            probe.close()
        sent = 2 * len(legit) + len(attacks)
        say(f"{acked}/{sent} acknowledged; waiting for the ingest")
        stats = stack.settled(sent, timeout=60)
        dead = wait_for(lambda: len(stack.dead_letters()) >= len(attacks) and stack.dead_letters(), 30, 0.5) or stack.dead_letters()
        stored = sum(int(r["count"]) for r in stack.db.rows('SELECT count("seq") FROM "raw"."air"'))
        time.sleep(1.5)  # let the roll-ups of the legit readings land too, so their schema is checked as well
        bad = outside_schema(stack, {d for _, d in legit})
        alive = stack.ingest is not None and stack.ingest.running
    got = Counter((str(d.get("topic")), _payload(d)) for d in dead)
    missing = Counter((t, p) for t, p, _ in attacks) - got
    refused_by_broker = sum(n for k, n in broker_said.items() if k.startswith("no puback"))
    row.sent = sent + len(by_broker)
    row.stored = stored
    row.rejected = len(dead) + refused_by_broker
    row.lost = len(legit) - stored
    row.accepted_bad = len(bad) + sum(missing.values()) + len(by_broker) - refused_by_broker
    row.figures = {"outside schema": len(bad), "attacks": len(attacks) + len(by_broker), "not dead-lettered": sum(missing.values()),
                   "refused by broker": refused_by_broker, "sent past the broker's checks": len(by_broker), "broker said": ", ".join(broker_said),
                   "broker acked": acked, "sent": sent, "ingest received": int(stats.get("received", 0)), "ingest alive": alive,
                   "reasons": ", ".join(f"{r} {k}" for r, k in Counter(str(d.get("reason")) for d in dead).most_common())}
    row.ok = not bad and not missing and stored == len(legit) and alive and acked == sent and refused_by_broker == len(by_broker)
    row.note = ("Topics with control characters (newline, tab, CR) never reach the ingest: Mosquitto answers a malformed packet by "
                "disconnecting the publisher. Checked with SHOW MEASUREMENTS / TAG KEYS / TAG VALUES (city, device) / FIELD KEYS (raw, hourly, latest) against "
                "contract.storage and contract.catalogue." + (f" Outside the schema: {'; '.join(bad[:10])}" if bad else ""))
    return row


# --- scenario 9: timestamps outside the window ------------------------------------------------------

ESP32_EPOCH = 946_684_800  # MicroPython on ESP32 counts from 2000-01-01


def timestamp_cases(now: float, max_age: float, max_future: float) -> list[tuple[str, float | int, bool]]:
    """(what, ts, accept): clocks devices really get wrong, and both edges of the window (5 s inside, 5 s outside)."""
    return [
        ("1970: epoch 0", 0, False),
        ("1970: one day", 86_400, False),
        ("negative", -1, False),
        ("2000: RTC never set (ESP32 epoch start)", ESP32_EPOCH + 3600, False),
        ("2000-based epoch sent as Unix time", now - ESP32_EPOCH, False),
        ("Unix time sent as 2000-based (2056)", now + ESP32_EPOCH, False),
        ("a day in the future", now + 86_400, False),
        ("2100-01-01", 4_102_444_800, False),
        ("milliseconds by mistake", int(now * 1000), False),
        ("microseconds by mistake", now * 1e6, False),
        ("oldest edge + 5 s", now - max_age + 5, True),
        ("oldest edge - 5 s", now - max_age - 5, False),
        ("future edge - 5 s", now + max_future - 5, True),
        ("future edge + 5 s", now + max_future + 5, False),
        ("now, integer", int(now), True),
        ("now, sub-millisecond fraction", now + 0.0004, True),
        ("an hour ago", now - 3600, True),
    ]


@register(9, "timestamps from 1970, a 2000-based epoch, the future, 2100, and the window's edges")
def timestamps(root: Path, size: Size) -> Row:
    row = Row(9, "timestamps outside the window", unit="readings")
    windows = [(35 * 86400.0, 300.0), (2 * 86400.0, 60.0)]  # the default, and a tighter one set through settings
    sent = stored = accepted_bad = lost = rejected = wrong_reason = 0
    details: list[str] = []
    for w, (max_age, max_future) in enumerate(windows):
        with Stack(root / f"window{w}", ts_max_age_s=max_age, ts_max_future_s=max_future) as stack:
            now = time.time()
            cases = timestamp_cases(now, max_age, max_future)
            pub = Publisher(stack.broker.port)
            for i, (_, ts, _) in enumerate(cases):
                pub.publish(f"nakhon/v1/chiang_mai/ts-{i:03d}/telemetry", json.dumps({"v": 1, "ts": ts, "seq": i, "m": {"pm25": 10.0 + i}}).encode())
            # a device replaying its buffer: good readings around bad clocks, one message
            batch = [{"ts": now - 60, "seq": 1, "m": {"pm25": 1.0}}, {"ts": 0, "seq": 2, "m": {"pm25": 2.0}},
                     {"ts": now + 86_400, "seq": 3, "m": {"pm25": 3.0}}, {"ts": now - 30, "seq": 4, "m": {"pm25": 4.0}}]
            pub.publish("nakhon/v1/chiang_mai/ts-batch/telemetry", json.dumps({"v": 1, "batch": batch}).encode())
            pub.settle()
            pub.close()
            stack.settled(len(cases) + 1, timeout=60)
            per_device = {r["device"]: int(r["count"]) for r in stack.db.rows('SELECT count("pm25") FROM "raw"."air" GROUP BY "device"')}
            # every point outside the window, whoever wrote it (a SELECT stops at now() unless given an upper bound)
            lo, hi = int((now - max_age - 5) * 1e9), int((time.time() + max_future + 5) * 1e9)
            outside = sum(int(r["count"]) for q, p in (('WHERE time < $lo', {"lo": lo}), ('WHERE time > $hi AND time < $end', {"hi": hi, "end": 9 * 10**18}))
                          for r in stack.db.rows(f'SELECT count("pm25") FROM "raw"."air" {q}', p))
            dead = stack.dead_letters()
        reasons = {d["topic"].split("/")[3]: [r["reason"] for r in d["rejections"]] for d in dead}
        for i, (what, _, accept) in enumerate(cases):
            dev = f"ts-{i:03d}"
            got = per_device.get(dev, 0)
            if accept and got != 1:
                lost += 1
                details.append(f"window {w}: {what} not stored")
            if not accept and got:
                accepted_bad += got
                details.append(f"window {w}: {what} STORED")
            if not accept and reasons.get(dev) != ["ts_out_of_window"]:
                wrong_reason += 1
                details.append(f"window {w}: {what} dead-lettered as {reasons.get(dev)}")
        if per_device.get("ts-batch", 0) != 2 or reasons.get("ts-batch") != ["ts_out_of_window"] * 2:
            details.append(f"window {w}: batch stored {per_device.get('ts-batch', 0)}/2, refused {reasons.get('ts-batch')}")
            lost += max(0, 2 - per_device.get("ts-batch", 0))
            accepted_bad += max(0, per_device.get("ts-batch", 0) - 2)
        accepted_bad += outside
        sent += len(cases) + len(batch)
        stored += sum(per_device.values())
        rejected += sum(len(r) for r in reasons.values())
    row.sent, row.stored, row.rejected, row.lost, row.accepted_bad = sent, stored, rejected, lost, accepted_bad
    row.figures = {"accepted outside window": accepted_bad, "refused inside window": lost, "wrong reason": wrong_reason,
                   "windows": ", ".join(f"-{a / 86400:g} d/+{f:g} s" for a, f in windows)}
    row.ok = accepted_bad == 0 and lost == 0 and wrong_reason == 0 and not details
    row.note = ("Each clock error on its own device, in two windows (the default and one set through NAKHON_TS_MAX_AGE_S/"
                "NAKHON_TS_MAX_FUTURE_S); edges probed 5 s inside and outside; a replayed batch keeps its 2 good readings. "
                + "; ".join(details[:8]))
    return row



# --- scenario 10: payload sizes up to and past the broker's limit -----------------------------------

def padded_batch(size: int, t0: float, first_seq: int, readings: int = MAX_BATCH) -> bytes:
    """A valid batch of `readings` readings, padded with JSON whitespace to exactly `size` bytes (unique ms timestamps)."""
    body = json.dumps({"v": 1, "batch": [{"ts": round(t0 - (first_seq + i) / 1000, 3), "seq": first_seq + i, "m": {"pm25": 12.5, "pm10": 30.25}}
                                         for i in range(readings)]}, separators=(",", ":")).encode()
    if len(body) > size:
        raise ValueError(f"{readings} readings need {len(body)} bytes > {size}")
    return body[:-1] + b" " * (size - len(body)) + b"}"


def _broker_answer(port: int, topic: str, payload: bytes, protocol: mqtt.MQTTProtocolVersion) -> str:
    """What the broker does with one publish from a fresh connection: PUBACK reason, or how it dropped us."""
    dev = MqttDevice(port, f"verify-big-{protocol}", protocol=protocol)
    if not dev.accepted():
        return "no connection"
    answer = dev.publish(topic, payload, timeout=5)
    dropped = dev.disconnected.wait(1)
    dev.close()
    return f"{answer}, disconnected ({dev.disconnect_reason})" if dropped else answer


@register(10, "payloads of 1 KB, 256 KB and above the broker's limit; ingest memory under large payloads")
def payload_sizes(root: Path, size: Size) -> Row:
    row = Row(10, "payload sizes", unit="messages")
    burst = 40 if size == "quick" else 400
    with Stack(root) as stack:
        assert stack.ingest is not None and stack.ingest.proc is not None
        limit = stack.cfg.max_payload_bytes  # the contract's largest payload
        packet_max = stack.broker.max_packet_size  # the broker's max_packet_size (whole MQTT packet)
        topic = "nakhon/v1/khon_kaen/sz-big-001/telemetry"
        header = len(topic) + 2 + 2 + 5 + 3  # topic length field, packet id, fixed header, MQTT 5 properties length: what the packet adds to the payload
        now = time.time() - 60
        seq = 0
        pub = Publisher(stack.broker.port)
        # 1 KB and exactly the contract's limit: stored
        pub.publish(topic, padded_batch(1024, now, seq, readings=10))
        pub.publish(topic, padded_batch(limit, now, seq + 10))
        seq += 10 + MAX_BATCH
        # one byte over the contract's limit, and just under the broker's: dead-lettered as oversize
        over = [limit + 1, packet_max - header - 16]
        for n in over:
            pub.publish(topic, padded_batch(n, now, 10_000_000))
        acked = pub.settle()
        pub.close()
        stack.settled(4, timeout=60)
        # above the broker's limit: see what Mosquitto does, for MQTT 5 and 3.1.1 publishers
        answers = {f"{n // 1024} KiB v{v}": _broker_answer(stack.broker.port, topic, b"x" * n, proto)
                   for n in (packet_max + 1, 1 << 20) for v, proto in (("5", mqtt.MQTTv5), ("3.1.1", mqtt.MQTTv311))}
        # memory: a burst of large payloads, half valid at the limit, half oversize
        pid = stack.ingest.proc.pid
        before = mem_kb(pid)
        say(f"burst of {burst} payloads of ~256 KiB; ingest RSS before {before['VmRSS'] / 1024:.0f} MiB")
        pub = Publisher(stack.broker.port, "verify-burst")
        valid_burst = 0
        for i in range(burst):
            if i % 2 == 0:
                pub.publish(topic, padded_batch(limit, now, seq))
                seq += MAX_BATCH
                valid_burst += 1
            else:
                pub.publish(topic, padded_batch(limit + 1 + i, now, 10_000_000))
        burst_acked = pub.settle(timeout=300)
        pub.close()
        stats = stack.settled(4 + burst, timeout=300)
        after = mem_kb(pid)
        want = 10 + MAX_BATCH * (1 + valid_burst)
        def count() -> int:
            return sum(int(r["count"]) for r in stack.db.rows('SELECT count("pm25") FROM "raw"."air"'))

        wait_for(lambda: count() >= want, 60, 1.0)
        stored = count()
        dead = stack.dead_letters()
        alive = stack.ingest.running and stack.ingest.proc.pid == pid
        broker_mem = mem_kb(stack.broker.pid) if stack.broker.pid else {}
    oversize = sum(1 for d in dead if d.get("reason") == "oversize")
    want_oversize = len(over) + burst - valid_burst
    refused_by_broker = sum(1 for a in answers.values() if "disconnected" in a or a == "no puback")
    growth = (after["VmHWM"] - before["VmRSS"]) / 1024
    row.sent = 4 + len(answers) + burst
    row.stored = stored
    row.lost = max(0, want - stored)
    row.accepted_bad = max(0, stored - want) + (want_oversize - oversize) + (len(answers) - refused_by_broker)
    row.rejected = len(dead) + refused_by_broker
    row.figures = {
        "stored readings": stored,
        "readings to store": want,
        "oversize dead-lettered": oversize,
        "oversize sent": want_oversize,
        "over broker limit refused": refused_by_broker,
        "over broker limit sent": len(answers),
        "ingest RSS MiB first": round(before["VmRSS"] / 1024, 1),
        "ingest RSS MiB last": round(after["VmRSS"] / 1024, 1),
        "ingest RSS MiB peak": round(after["VmHWM"] / 1024, 1),
        "broker peak MiB": round(broker_mem.get("VmHWM", 0) / 1024, 1),
        "received": int(stats.get("received", 0)),
    }
    row.ok = (acked == 4 and burst_acked == burst and alive and row.lost == 0 and row.accepted_bad == 0 and growth < 512)
    row.note = (f"Limits: contract {limit:,} bytes of payload, broker max_packet_size {packet_max:,} bytes of packet. Over the broker's "
                f"limit Mosquitto drops the publisher: {'; '.join(f'{k}: {v}' for k, v in answers.items())}. paho then reconnects and "
                f"resends the same message, so a device must not publish what the broker cannot take. Burst: {burst} payloads at or just over the limit "
                f"({burst * limit / 2**20:.0f} MiB), ingest peak RSS {growth:+.0f} MiB over its resting size.")
    return row
