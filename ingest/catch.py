"""The catch session: N workers lose nothing when the broker forgets their `$share` subscriptions.

Mosquitto 2.0 saves sessions and plain subscriptions, not shared ones: after
a restart (clean or SIGKILL) the workers' sessions come back without them,
and whatever devices publish before a worker subscribes again has no
subscriber; the broker acknowledges it and drops it. Any broker that loses
shared subscriptions for any reason leaves the same gap.

So worker 0 keeps one more persistent session, `<client id>_catch`, with
plain subscriptions to the device stream, which every broker keeps. Its data
path is what differs:

- from each (re)connect it *covers*: what it receives is stored like the
  worker's own messages (parsed, made durable, then acknowledged). After a
  broker restart its restored subscription holds everything published in
  the gap;
- each worker, once its shared subscriptions are granted on a connection,
  publishes a mark (QoS 1, its wall-clock time) on `INGEST_MARK_TOPIC`, and
  again every `MARK_INTERVAL_S`. The broker queues a subscriber's QoS 1
  messages in the order it routes them, so every message that reaches the
  catch after a mark routed since its own connect was routed while a worker
  held the shared subscription: the group has it. A mark stamped before the
  catch's connect may have been routed by the broker before a restart and
  proves nothing;
- after such a mark it stands down: it acknowledges without storing, until
  its next connect.

Messages both the catch and a worker stored (routed between a worker's
subscription and its mark) are written twice with the same series and
timestamp: InfluxDB keeps one. In normal operation the catch costs the
broker a second delivery of every message and the ingest its PUBACK, nothing
else. On a broker that restores shared subscriptions (EMQX, HiveMQ, VerneMQ)
turn it off (`NAKHON_INGEST_SHARE_CATCH=false`); with one worker the worker's
own plain subscription does the same job and a catch session left from an
earlier run is removed (`retire`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import orjson

from contract import topics
from contract.logs import kv
from ingest import mqttwire
from ingest.session import RECV_BYTES, Endpoint, Publishes, Session, dial_tcp

log = logging.getLogger("nakhon.ingest.catch")

MARK_INTERVAL_S = 1.0  # a catch that connects after a worker's first mark stands down within this
SUFFIX = "_catch"
COVER_WARN_S = 60.0  # covering this long after a connect is worth a warning
UPTIME_TOPIC = "$SYS/broker/uptime"  # Mosquitto's, retained: "<seconds> seconds"
PROBE_TIMEOUT_S = 12.0  # Mosquitto sends its $SYS figures every sys_interval (5 s in our config, 10 by default)
MARK_MARGIN_S = 2.0  # clocks of the workers' hosts may differ this much
STATE_EVERY_S = 5.0  # the latest mark is noted on disk at most this often (and at stop)


class Store(Protocol):
    """What the catch needs of the worker that hosts it."""

    def take(self, pubs: Publishes, generation: int, session: Session) -> None: ...  # store, then ack in order (marks: ack only)
    def pass_on(self, packet_ids: list[int], generation: int, session: Session) -> None: ...  # ack only, in order
    def full(self) -> bool: ...
    def room(self) -> int: ...
    def catch_held(self) -> int: ...  # the catch's stored messages not yet acked


def catch_id(client_id: str) -> str:
    return f"{client_id}{SUFFIX}"


def mark(worker: str, now: float | None = None) -> bytes:
    return orjson.dumps({"worker": worker, "t": time.time() if now is None else now})


def mark_time(payload: bytes) -> float | None:
    """The wall-clock time a mark was published; None for anything else."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    t = doc.get("t") if isinstance(doc, dict) else None
    return float(t) if isinstance(t, int | float) and not isinstance(t, bool) else None


def broker_started(e: Endpoint, timeout: float = PROBE_TIMEOUT_S, clock: Callable[[], float] = time.time) -> float | None:
    """When the broker started, on our wall clock, from Mosquitto's `$SYS/broker/uptime` (one short
    connection); None when it does not say (another broker, an ACL, no answer in time).

    The retained figure is up to `sys_interval` old, so the probe waits for the next one (within `timeout`);
    either way the start it gives is late, never early: a mark judged by it is refused rather than wrongly taken."""
    probe = replace(e, client_id=f"{e.client_id}_probe")
    try:
        sock = dial_tcp(probe)
    except OSError:
        return None
    try:
        sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        sock.sendall(mqttwire.connect(probe.client_id, 30, clean_start=True, session_expiry=0, username=e.username, password=e.password))
        sock.sendall(mqttwire.subscribe(1, [(UPTIME_TOPIC, 0)]))
        buf = b""
        best: float | None = None
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                return None
            buf += data
            pubs: Publishes = []
            others: list[tuple[int, bytes]] = []
            used = mqttwire.split(buf, pubs, others)
            buf = buf[used:]
            for first, body in others:
                if first >> 4 == mqttwire.CONNACK and mqttwire.parse_connack(body).reason >= 0x80:
                    return None
                if first >> 4 == mqttwire.SUBACK and any(c >= 0x80 for c in mqttwire.parse_suback(body)[1]):
                    return None
            for name, payload, _ in pubs:
                if name == UPTIME_TOPIC:
                    started = clock() - int(payload.split()[0])  # "12345 seconds"
                    if best is not None:
                        return started  # published just now: exact to the second
                    best = started  # the retained one: up to sys_interval old, so late; wait for the next
        return best
    except (OSError, ValueError, IndexError, mqttwire.ProtocolError):
        return None
    finally:
        with contextlib.suppress(OSError):
            sock.sendall(mqttwire.DISCONNECT)
            sock.close()


class Catch:
    def __init__(
        self,
        endpoint: Endpoint,
        store: Store,
        state_file: Path | None = None,
        clock: Callable[[], float] = time.time,
        probe: Callable[[], float | None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.state_file = state_file
        self.covering = True
        self.since = 0.0  # wall-clock time of the current connection
        self.threshold = 0.0  # a mark stamped after this was routed by the broker we are connected to
        self.covered = 0  # messages stored while covering (all connections)
        self.passed = 0  # messages acknowledged without storing
        self.stand_downs = 0
        self._covered_now = 0
        self._warned = False
        self._state_due: float | None = None  # a mark to note on disk once nothing stored is un-acked
        self._noted_at = -STATE_EVERY_S
        self.session = Session(
            replace(endpoint, client_id=catch_id(endpoint.client_id)), self._on_connect, self._on_publishes, full=self._full, room=self._room
        )
        self.probe = probe or (lambda: broker_started(self.session.endpoint, clock=self.clock))

    def start(self) -> None:
        self.session.start()

    def stop(self) -> None:
        self.session.stop()
        if not self.covering:
            self._save(True)

    def _full(self) -> bool:
        return self.covering and self.store.full()

    def _room(self) -> int:
        return self.store.room() if self.covering else RECV_BYTES

    def _last_mark(self) -> float | None:
        """The mark the catch stood down on last (any connection, any run), from its state file."""
        if self.state_file is None:
            return None
        try:
            t = orjson.loads(self.state_file.read_bytes()).get("last_mark")
        except (OSError, orjson.JSONDecodeError, AttributeError):
            return None
        return float(t) if isinstance(t, int | float) and not isinstance(t, bool) else None

    def _note(self, t: float) -> None:
        if self.state_file is None:
            return
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps({"last_mark": t}))
            tmp.replace(self.state_file)
        except OSError as exc:  # without it the next start covers until a mark: more work, nothing lost
            log.warning("cannot write the catch session's state", extra=kv(file=str(self.state_file), error=str(exc)[:200]))

    def _on_connect(self, session: Session, session_present: bool) -> None:
        # Behind CONNACK the broker sends what it queued for us; judged once we know which broker routed it.
        self.since = self.clock()
        started = self.probe()
        self.threshold = self.since if started is None else started + MARK_MARGIN_S
        last = self._last_mark()
        # Stood down on a mark of this same broker (no restart since): everything queued for us since was routed
        # while the workers' shared subscriptions existed (the broker keeps them while it runs), so the group has it.
        resume = started is not None and session_present and last is not None and last > self.threshold
        self.covering, self._covered_now, self._warned, self._state_due, self._noted_at = not resume, 0, False, None, -STATE_EVERY_S
        # retained messages go to the shared group, never here: a retained status is stored once
        filters = [(f, topics.QOS | mqttwire.RETAIN_NEVER) for f in (topics.TELEMETRY_FILTER, topics.STATUS_FILTER, topics.INGEST_MARK_TOPIC)]
        session.subscribe(filters)
        log.info(
            "catch session connected: " + ("standing down (no broker restart since its last stand-down)" if resume else "covering until a worker's mark"),
            extra=kv(
                client_id=session.endpoint.client_id, session_present=session_present, broker_up_s=None if started is None else round(self.since - started)
            ),
        )

    def _on_publishes(self, pubs: Publishes, generation: int) -> None:
        """In order: store while covering, up to a mark this broker routed; after it, acknowledge only."""
        start = 0
        if self.covering:
            for i, (name, payload, _) in enumerate(pubs):
                if name != topics.INGEST_MARK_TOPIC:
                    continue
                t = mark_time(payload)
                if t is None or t <= self.threshold:
                    continue  # maybe routed by the broker before a restart: proves nothing
                if i > start:
                    self._store(pubs[start:i], generation)
                self.covering = False
                self.stand_downs += 1
                log.info(
                    "catch session stands down: a worker's shared subscription is in place",
                    extra=kv(client_id=self.session.endpoint.client_id, covered=self._covered_now, mark_age_s=round(self.clock() - t, 3)),
                )
                start = i
                break
            else:
                self._store(pubs, generation)
                return
        rest = pubs[start:]
        pids = []
        for name, payload, pid in rest:
            if pid:
                pids.append(pid)
            if name != topics.INGEST_MARK_TOPIC:
                self.passed += 1
            elif (t := mark_time(payload)) is not None and t > self.threshold and t > (self._state_due or 0.0):
                self._state_due = t  # the latest mark of this broker: what a restart of ours is judged by
        self.store.pass_on(pids, generation, self.session)
        self._save(self.clock() - self._noted_at >= STATE_EVERY_S)

    def _save(self, now: bool) -> None:
        """Note the latest mark on disk, once everything the catch stored is durable and acked."""
        if self._state_due is not None and now and not self.store.catch_held():
            self._note(self._state_due)
            self._noted_at = self.clock()
            self._state_due = None

    def _store(self, pubs: Publishes, generation: int) -> None:
        n = sum(1 for name, _, _ in pubs if name != topics.INGEST_MARK_TOPIC)
        if not self._warned and self.clock() - self.since > COVER_WARN_S:
            self._warned = True  # it still stores all it gets (nothing is lost), at twice the work
            log.warning(
                f"catch session still covering: no worker's mark has reached it; check that the workers are up and may publish on {topics.INGEST_MARK_TOPIC}",
                extra=kv(client_id=self.session.endpoint.client_id, covered=self._covered_now),
            )
        if n:  # stale marks among the data are acknowledged in their place, not stored
            self.covered += n
            self._covered_now += n
            self.store.take(pubs, generation, self.session)
        else:
            self.store.pass_on([pid for _, _, pid in pubs if pid], generation, self.session)


class Marker:
    """A worker's marks: one as soon as its shared subscriptions are granted, then every MARK_INTERVAL_S."""

    def __init__(self, session: Session, worker: str) -> None:
        self.session = session
        self.worker = worker
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mark", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        was = False
        while not self._stop.is_set():
            now = self.session.subscribed
            if now:
                self.sent += self.session.publish_if_subscribed(topics.INGEST_MARK_TOPIC, mark(self.worker))
            # look often until subscribed, so the first mark follows the SUBACK closely
            self._stop.wait(MARK_INTERVAL_S if now and was else 0.05)
            was = now


def retire(endpoint: Endpoint, stop: threading.Event) -> None:
    """Remove a catch session left from a run with several workers (it would queue every message for
    nobody): connect once with its client id, clean start, session expiry 0. Retries until done or `stop`."""
    e = replace(endpoint, client_id=catch_id(endpoint.client_id))
    delay = 0.5
    while not stop.is_set():
        try:
            sock = dial_tcp(e)
            try:
                sock.settimeout(10)
                sock.sendall(mqttwire.connect(e.client_id, e.keepalive, clean_start=True, session_expiry=0, username=e.username, password=e.password))
                buf = b""
                while (packet := mqttwire.head(buf)) is None:
                    data = sock.recv(4096)
                    if not data:
                        raise ConnectionError("broker closed the connection before CONNACK")
                    buf += data
                connack = mqttwire.parse_connack(packet[1])
                if connack.reason >= 0x80:
                    raise ConnectionError(f"broker refused the connection: {hex(connack.reason)}")
                sock.sendall(mqttwire.DISCONNECT)
            finally:
                with contextlib.suppress(OSError):
                    sock.close()
            log.info("no catch session with one worker: any left from an earlier run removed", extra=kv(client_id=e.client_id))
            return
        except (OSError, mqttwire.ProtocolError) as exc:
            log.debug("catch session not removed yet", extra=kv(error=str(exc)[:200]))
            stop.wait(delay)
            delay = min(delay * 2, 10.0)
