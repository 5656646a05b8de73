"""From an MQTT message to line-protocol lines or dead letters: pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from contract import storage
from contract.lineprotocol import encode_point, encode_reading, series_tags
from contract.payload import MAX_SEQ, Reason, Rejection, Window, parse_telemetry
from contract.status import StatusError, parse_status
from contract.topics import Topic, TopicError, TopicIdError, parse_topic
from ingest import deadletter

_TOPIC_CACHE_BYTES = 32 * 1024 * 1024  # bound on the topic cache's memory, whatever the topics' lengths
_ENTRY_OVERHEAD = 400  # dict slot, tuple, Topic and tags objects
_STATUS_STAMPS_MAX = 200_000


@dataclass(slots=True)
class Outcome:
    lines: list[str] = field(default_factory=list)
    accepted: int = 0
    dead: dict[str, Any] | None = None  # the dead-letter record, if anything was rejected
    rejections: list[Rejection] = field(default_factory=list)
    # the device's reading seqs this message makes done once durable (stored or dead-lettered as bad data)
    device: tuple[str, str] | None = None
    seqs: list[int] = field(default_factory=list)
    # a device's `online` status: it is answered with a `stored` message carrying the platform's
    # time (a device without NTP and so without dated readings learns it there, contract/stored.py)
    answer: bool = False


class Pipeline:
    def __init__(self, cities: object, window: Window, max_bytes: int) -> None:
        self.cities = cities
        self.window = window
        self.max_bytes = max_bytes
        self._topics: dict[str, tuple[Topic, str] | TopicError] = {}
        self._topic_bytes = 0
        # status points are stamped with their arrival (ms): two documents of one device
        # within a millisecond (online, then its will) must not overwrite each other
        self._status_ms: dict[str, int] = {}

    def _lookup(self, name: str) -> tuple[Topic, str] | TopicError:
        """A topic parsed once, with its series tags: devices repeat their topic forever."""
        hit = self._topics.get(name)
        if hit is None:
            try:
                t = parse_topic(name, self.cities)
                hit = (t, series_tags(t.city, t.device))
                cost = 2 * len(name) + len(hit[1]) + _ENTRY_OVERHEAD
            except TopicError as exc:
                hit = type(exc)(str(exc)[:200])  # a fresh, short error: no traceback, no long topic kept twice
                cost = len(name) + 200 + _ENTRY_OVERHEAD
            if self._topic_bytes + cost > _TOPIC_CACHE_BYTES:
                self._topics.clear()
                self._topic_bytes = 0
            self._topics[name] = hit
            self._topic_bytes += cost
        return hit

    def topic(self, name: str) -> Topic | TopicError:
        hit = self._lookup(name)
        return hit if isinstance(hit, TopicError) else hit[0]

    def message(self, topic_name: str, payload: bytes, now: float) -> Outcome:
        """Telemetry or status, by topic."""
        if topic_name.endswith("/status"):
            return self.status(topic_name, payload, now)
        return self.telemetry(topic_name, payload, now)

    def status(self, topic_name: str, payload: bytes, now: float) -> Outcome:
        out = Outcome()
        t = self.topic(topic_name)
        if isinstance(t, TopicError):
            out.rejections = [_topic_rejection(t)]
        elif not payload:
            return out  # a cleared retained status: nothing to record
        else:
            try:
                fields = parse_status(payload)
            except StatusError as exc:
                out.rejections = [Rejection(Reason.BAD_STATUS, str(exc)[:200])]
            else:
                stamp = self._status_stamp(topic_name, int(now * 1000))
                out.lines.append(encode_point(storage.STATUS_MEASUREMENT, {"city": t.city, "device": t.device}, fields, stamp))
                out.accepted = 1
                if fields.get("state") == "online":
                    out.device = (t.city, t.device)
                    out.answer = True
        if out.rejections:
            out.dead = deadletter.record(topic_name, payload, out.rejections, now)
        return out

    def _status_stamp(self, topic_name: str, now_ms: int) -> int:
        """The arrival time, moved on past the device's previous status so each one keeps its own point."""
        last = self._status_ms.get(topic_name, -1)
        stamp = now_ms if now_ms > last else last + 1
        if len(self._status_ms) >= _STATUS_STAMPS_MAX:
            self._status_ms.clear()  # only a burst within one millisecond needs the memory
        self._status_ms[topic_name] = stamp
        return stamp

    def telemetry(self, topic_name: str, payload: bytes, now: float) -> Outcome:
        out = Outcome()
        hit = self._lookup(topic_name)
        if isinstance(hit, TopicError):
            out.rejections = [_topic_rejection(hit)]
            t = None
        else:
            t, tags = hit
        if t is None:
            pass
        elif t.channel != "telemetry":
            out.rejections = [Rejection(Reason.BAD_TOPIC, f"not a telemetry topic: {t.channel}")]
        else:
            parsed = parse_telemetry(payload, now, self.window, self.max_bytes)
            out.rejections = parsed.rejections
            out.accepted = len(parsed.readings)
            out.device = (t.city, t.device)
            seqs = out.seqs
            for reading in parsed.readings:
                out.lines += encode_reading(t.city, t.device, reading, tags)
                seqs.append(reading.seq)
            if parsed.rejections and len(payload) <= self.max_bytes:  # the whole message goes to the dead letters: its bad readings are done too
                out.seqs = _all_seqs(payload)
        if out.rejections:
            out.dead = deadletter.record(topic_name, payload, out.rejections, now)
        return out


def _all_seqs(payload: bytes) -> list[int]:
    """Every well-formed seq in a telemetry payload (the rare path: a message with a rejected reading)."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return []
    if type(doc) is not dict:
        return []
    batch = doc.get("batch")
    items = batch if type(batch) is list and "batch" in doc else [doc]
    return [s for r in items if type(r) is dict and type(s := r.get("seq")) is int and 0 <= s <= MAX_SEQ]


def _topic_rejection(err: TopicError) -> Rejection:
    return Rejection(Reason.BAD_ID if isinstance(err, TopicIdError) else Reason.BAD_TOPIC, str(err))
