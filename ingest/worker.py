"""One ingest worker: a persistent MQTT 5 session (shared subscription when there are several).

The session's thread reads the broker in large chunks and hands each chunk's
messages here: they are parsed and queued. The flusher threads (`ingest_writers`) make
each batch durable (InfluxDB, else spool; rejects to the dead letters) and only
then acknowledge its messages, in the order they arrived (MQTT 5, 4.6), however
the writes finish. A batch whose save fails (a full disk, an I/O error, a bug)
goes back to the head of the queue and is retried with backoff: it is never
dropped and never leaves `pending` stuck; `health()` turns not-live while no
batch is made durable.

Store-and-forward (DESIGN, Delivery guarantee): once a batch is durable,
each device's seqs in it (readings stored, spooled, or dead-lettered as bad
data) go to the confirmation tracker (ingest/confirm.py); the confirmer
thread sends each waiting device one `stored` message per round (QoS 1, not
retained), rounds at most every `ingest_confirm_ms`. Nothing is confirmed
before it is durable, and the broker's PUBACK still goes only after that.

Memory is bounded: at most `ingest_receive_maximum` messages (QoS 0 counted
as QoS 1) and `ingest_max_pending_mb` of parsed lines and dead letters are
held un-acked. The first is our MQTT 5 Receive Maximum; past either the
session stops reading (the broker does not always keep to Receive Maximum,
and QoS 0 is not bound by it at all), TCP holds the broker back.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from contract import topics
from contract.influx import Influx, InfluxError, InfluxRefused
from contract.logs import kv
from contract.payload import Window
from contract.settings import Settings, read_secret
from contract.stored import encode_stamped, stamp
from ingest import mqttwire
from ingest.catch import Catch, Marker, retire
from ingest.confirm import Key, Tracker
from ingest.deadletter import DeadLetterStore
from ingest.health import Health, counters, write_file
from ingest.liveness import Liveness, Observed, assess
from ingest.pipeline import Pipeline
from ingest.rollups import Rollups
from ingest.session import Endpoint, Publishes, Session
from ingest.spool import Spool
from ingest.stats import Stats
from ingest.writer import DurableWriter

log = logging.getLogger("nakhon.ingest")

BROKER_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"


HEALTH_INTERVAL_S = 2.0
SEGMENT = 500  # messages parsed together; a write takes whole segments, up to ingest_batch_size lines
MESSAGE_OVERHEAD = 200  # bytes a held message costs besides its lines (packet id, list slots, objects)
REDELIVERED_MAX = 100_000  # rejected messages remembered until the broker sends them again
RETRY_MAX_S = 10.0  # a failing save is retried at most this far apart


@dataclass
class _Segment:
    """Acks of one parsed segment, released in arrival order."""

    seq: int
    acks: dict[int, list[int]]  # connection generation -> packet ids
    messages: int
    dead_keys: dict[int, int] = field(default_factory=dict)  # packet id -> key of its dead-lettered message
    session: Session | None = None  # whose acks these are: None the worker's own, else the catch session's


Done = dict[Key, list[int]]  # device -> seqs a segment makes done once durable


@dataclass
class _Batch:
    lines: list[str] = field(default_factory=list)
    segments: list[_Segment] = field(default_factory=list)
    messages: int = 0
    bytes: int = 0
    dead: list[dict[str, object]] = field(default_factory=list)  # emptied once on disk: a retry does not write them twice
    started: float = 0.0
    done: list[Done] = field(default_factory=list)

    def merge(self, other: _Batch) -> None:
        self.dead += other.dead
        self.done += other.done
        self.lines += other.lines
        self.segments += other.segments
        self.messages += other.messages
        self.bytes += other.bytes
        self.started = min(self.started, other.started) if self.started else other.started


class Worker:
    def __init__(self, settings: Settings, index: int = 0) -> None:
        self.settings = settings
        self.name = f"{settings.ingest_client_id}_{index}"
        self.stats = Stats(worker=self.name)
        self.pipeline = Pipeline(
            settings.cities,
            Window(settings.ts_max_age_s, settings.ts_max_future_s),
            settings.max_payload_bytes,
        )
        self.influx = Influx(settings.influx_url, settings.influx_db, settings.influx_username, settings.influx_password, settings.influx_timeout_s)
        self.dead = DeadLetterStore(settings.path("deadletter"), self.name, settings.ingest_deadletter_max_mb * 1024 * 1024)
        self.spool = Spool(settings.path("spool", self.name))
        self.writer = DurableWriter(self.influx, self.spool, self.dead, self.stats, schema=self._ensure_schema,
                                    credentials=lambda: self.reload_credentials("refused"))
        self._influx_password = settings.influx_password
        # The password before a SIGHUP brought a new one: the file may come before InfluxDB,
        # so until InfluxDB takes the new one, a refusal goes back to this one.
        self._influx_previous: str | None = None
        self._creds_lock = threading.Lock()
        self._creds_read_at = -1.0
        self.credentials_reloaded = 0
        # self-metrics have a client of their own with a short timeout: a hanging InfluxDB must
        # not silence the reports that show it hanging
        self._stats_influx = Influx(settings.influx_url, settings.influx_db, settings.influx_username, settings.influx_password,
                                    min(2.0, settings.influx_timeout_s))
        # hourly roll-ups, AQI and latest values for what each batch touched (own client: own thread)
        self.rollups = Rollups(
            Influx(settings.influx_url, settings.influx_db, settings.influx_username, settings.influx_password, settings.influx_timeout_s),
            settings.ingest_rollup_interval_s,
            ready=lambda: not len(self.spool),
            shared=settings.ingest_workers > 1,
            state_file=settings.path("rollups") / f"{self.name}.json",
        )
        # parsed segments waiting to be made durable, oldest first; bounded by the
        # broker's Receive Maximum (un-acked messages are all that can be here)
        self._pending: deque[_Batch] = deque()
        self._pending_lines = 0
        self._next_seq = 0  # segment numbers in arrival order
        self._ack_lock = threading.Lock()
        self._ack_next = 0  # the next segment whose acks may go out
        self._ack_ready: dict[int, _Segment] = {}  # durable segments waiting for an earlier one
        self._progress_at = time.monotonic()  # last batch made durable (or last idle moment)
        self._failing_since = 0.0  # monotonic time the current run of failed saves began
        self._failures_run = 0
        self._redelivered: OrderedDict[int, bool] = OrderedDict()  # keys of dead-lettered messages the broker will send again
        self._max_pending_bytes = settings.ingest_max_pending_mb * 1024 * 1024
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._accepting = True
        self._wire_bytes = 200.0  # running mean of a message's size on the wire, to size reads near the bound
        self.session = Session(self._endpoint(), self._on_connect, self._on_publishes, full=self._full, room=self._room)
        # store-and-forward confirmations: durable seqs per device, sent in rounds
        self.confirm = Tracker(settings.ingest_confirm_devices) if settings.ingest_confirm else None
        self._confirm_lock = threading.Lock()
        self._confirm_wake = threading.Event()
        self._stored_topics: dict[Key, bytes] = {}  # each device's `stored` topic, as a PUBLISH carries it, made once
        self.session.on_puback = self._room_again
        self.connected = self.session.connected
        # Several workers: each marks its shared subscription, worker 0 keeps the catch session (ingest/catch.py)
        catching = settings.ingest_workers > 1 and settings.ingest_share_catch
        self.marker = Marker(self.session, self.name) if catching else None
        self.catch = (
            Catch(self._endpoint(settings.ingest_client_id), self, state_file=settings.path("catch") / "state.json") if catching and index == 0 else None
        )
        self._catch_pipeline = Pipeline(settings.cities, Window(settings.ts_max_age_s, settings.ts_max_future_s), settings.max_payload_bytes)
        self._catch_held = 0  # catch segments queued and not yet acked (its acks go in order behind them)
        self._retire = index == 0 and self.catch is None
        self.health = Health(self.name)
        self.health_dir = settings.path("health")

    # --- MQTT -------------------------------------------------------------
    def _endpoint(self, client_id: str | None = None) -> Endpoint:
        """Our session's endpoint; the catch session's names itself after `client_id` (ingest/catch.py)."""
        s = self.settings
        tls = None
        if s.mqtt_tls:
            tls = ssl.create_default_context(cafile=str(s.mqtt_ca_file) if s.mqtt_ca_file else None)
        return Endpoint(
            host=s.mqtt_host,
            port=s.mqtt_port,
            client_id=client_id or self.name,
            keepalive=s.mqtt_keepalive_s,
            session_expiry=s.ingest_session_expiry_s,
            receive_maximum=s.ingest_receive_maximum,
            maximum_packet_size=s.ingest_max_packet_bytes,
            username=s.mqtt_username,
            password=s.mqtt_password,
            tls=tls,
        )

    def _on_connect(self, session: Session, session_present: bool) -> None:
        group = self.settings.ingest_share_group
        shared = [f"$share/{group}/{topics.TELEMETRY_FILTER}", f"$share/{group}/{topics.STATUS_FILTER}"]
        plain = [topics.TELEMETRY_FILTER, topics.STATUS_FILTER]
        # Mosquitto 2.0 does not restore $share subscriptions from its persistence
        # file: after a broker restart, messages published before we resubscribe
        # would have no subscriber. A single worker therefore uses plain filters,
        # which the persistent session keeps across restarts. The other form is
        # dropped so a change of worker count never delivers a message twice.
        use, drop = (shared, plain) if self.settings.ingest_workers > 1 else (plain, shared)
        session.unsubscribe(drop)
        # A retained status is sent once, when the subscription is made, not at every reconnect
        # of the persistent session: each document is stored once.
        session.subscribe([(f, topics.QOS | mqttwire.RETAIN_IF_NEW) for f in use])
        session.subscribe([(BROKER_DROPPED_TOPIC, 0)], required=False)  # a broker's ACL may keep $SYS from us
        log.info("connected", extra=kv(worker=self.name, session_present=session_present, reconnects=session.reconnects))
        self._confirm_wake.set()  # confirmations held while away go now

    def _full(self) -> bool:
        """The bound on what is held: messages (any QoS) and bytes parsed and not yet acked."""
        st = self.stats
        return st.pending >= self.settings.ingest_receive_maximum or st.pending_bytes >= self._max_pending_bytes

    def _room(self) -> int:
        """Bytes the session may read now: about what the room left under the bound holds (a read never
        carries many more messages than we may hold; at full speed it stays at the session's 1 MB)."""
        st = self.stats
        room_msgs = self.settings.ingest_receive_maximum - st.pending
        room_bytes = self._max_pending_bytes - st.pending_bytes
        return int(min(room_msgs * self._wire_bytes, room_bytes))

    def _broker_dropped(self, payload: bytes) -> None:
        try:
            dropped = int(payload)
        except ValueError:
            return
        with self.stats.lock:
            if dropped > self.stats.broker_dropped:
                log.error("broker reports dropped messages", extra=kv(dropped=dropped))
            self.stats.broker_dropped = dropped

    def _on_publishes(self, pubs: Publishes, generation: int) -> None:
        """A chunk of messages from the session thread: parse, queue for the flusher."""
        if not self._accepting:
            return  # not acked: the broker redelivers them to us or a peer
        for k in range(0, len(pubs), SEGMENT):
            self._parse(pubs[k : k + SEGMENT], generation)

    # --- what the catch session hands over (its own thread) -----------------
    def take(self, pubs: Publishes, generation: int, session: Session) -> None:
        """The catch session's messages while it covers: stored like ours, acked on its session in order."""
        if not self._accepting:
            return
        for k in range(0, len(pubs), SEGMENT):
            self._parse(pubs[k : k + SEGMENT], generation, session)

    def pass_on(self, packet_ids: list[int], generation: int, session: Session) -> None:
        """Acknowledge the catch session's messages without storing them, behind any it still holds."""
        if not packet_ids:
            return
        with self._ack_lock:
            if not self._catch_held:
                session.ack(packet_ids, generation)
                return
            self._catch_held += 1
        with self._lock:
            self._pending.append(_Batch(segments=[_Segment(self._next_seq, {generation: packet_ids}, 0, session=session)], started=time.monotonic()))
            self._next_seq += 1

    def full(self) -> bool:
        return self._full()

    def catch_held(self) -> int:
        with self._ack_lock:
            return self._catch_held

    def room(self) -> int:
        return self._room()

    def _parse(self, pubs: Publishes, generation: int, session: Session | None = None) -> None:
        handle = (self.pipeline if session is None else self._catch_pipeline).message
        skip = topics.INGEST_MARK_TOPIC if session is not None else None  # a stale mark in the catch's stream: ack only
        clock = time.time  # per message: a status document is stamped with its arrival
        seg = _Batch(started=time.monotonic())
        lines = seg.lines
        pids: list[int] = []
        accepted = rejected_msgs = 0
        rejections = []
        messages = 0
        size = wire_bytes = 0
        dead_keys: dict[int, int] = {}
        done: Done = {}
        for topic_name, payload, pid in pubs:
            if not pid and topic_name == BROKER_DROPPED_TOPIC:
                self._broker_dropped(payload)
                continue
            if skip is not None and topic_name == skip:
                if pid:
                    pids.append(pid)
                continue
            out = handle(topic_name, payload, clock())
            if out.seqs:
                d = done.get(out.device)  # type: ignore[arg-type]
                if d is None:
                    done[out.device] = out.seqs  # type: ignore[index]
                else:
                    d += out.seqs
            elif out.answer and out.device not in done:  # a status: answered with the time (and any ranges)
                done[out.device] = []  # type: ignore[index]
            lines += out.lines
            messages += 1
            wire_bytes += len(payload) + len(topic_name) + 9
            size += MESSAGE_OVERHEAD + sum(map(len, out.lines)) + (len(payload) + len(topic_name) if out.dead is not None else 0)
            if pid:  # QoS 0 (a device's last will, say) is stored too, with nothing to ack
                pids.append(pid)
            accepted += out.accepted
            if out.dead is not None:
                key = hash((topic_name, payload))
                if pid and self._redelivered and self._was_redelivered(key):
                    continue  # dead-lettered already; its ack was lost with a connection and the broker sent it again
                seg.dead.append(out.dead)
                if pid:
                    dead_keys[pid] = key
                rejections += out.rejections
                if not out.accepted:
                    rejected_msgs += 1
        if not messages:
            if pids and session is not None:
                self.pass_on(pids, generation, session)
            return
        self._wire_bytes = 0.9 * self._wire_bytes + 0.1 * (wire_bytes / messages)
        seg.messages = messages
        seg.bytes = size
        if done and self.confirm is not None:
            seg.done.append(done)
        if session is not None:  # counted before it is queued (lock order: _ack_lock is never taken inside _lock)
            with self._ack_lock:
                self._catch_held += 1
        with self._lock:
            if not self._pending and not self.stats.pending:
                self._progress_at = time.monotonic()  # idle until now: the stall clock starts with this work
            seg.segments.append(_Segment(self._next_seq, {generation: pids}, messages, dead_keys, session))
            self._next_seq += 1
            self._pending.append(seg)
            self._pending_lines += len(lines)
            full = self._pending_lines >= self.settings.ingest_batch_size
        with self.stats.lock:
            st = self.stats
            st.received += messages
            st.pending += messages
            st.pending_bytes += size
            st.readings_accepted += accepted
            if rejections:
                st.readings_rejected += len(rejections)
                st.messages_rejected += rejected_msgs
                for r in rejections:
                    st.rejected_by_reason[r.reason] += 1
        if full:
            self._wake.set()

    # --- durability -------------------------------------------------------
    def _take_batch(self) -> _Batch:
        """The oldest segments, up to ingest_batch_size lines (at least one segment)."""
        batch = _Batch()
        with self._lock:
            while self._pending and (not batch.segments or len(batch.lines) + len(self._pending[0].lines) <= self.settings.ingest_batch_size):
                seg = self._pending.popleft()
                self._pending_lines -= len(seg.lines)
                batch.merge(seg)
        return batch

    def _due(self, period: float) -> bool:
        with self._lock:
            if not self._pending:
                return False
            return self._pending_lines >= self.settings.ingest_batch_size or time.monotonic() - self._pending[0].started >= period

    def _write_batch(self, batch: _Batch) -> None:
        """Make one batch durable, then ack its messages (in arrival order across batches)."""
        if batch.dead:
            self.dead.append(batch.dead)
            batch.dead = []
        self.writer.commit(batch.lines)
        if batch.done and self.confirm is not None:  # durable now: these readings may be freed
            self._durable(batch.done)
        self.rollups.touched(batch.lines)
        with self._lock:
            self._progress_at = time.monotonic()
            self._failing_since = 0.0
            self._failures_run = 0
        with self.stats.lock:
            self.stats.pending_bytes -= batch.bytes
        self._release(batch.segments)

    def _durable(self, done: list[Done]) -> None:
        assert self.confirm is not None
        if len(done) > 1:  # a device in several segments of the batch: one merge into the tracker, not one per segment
            joined: Done = done[0]  # the batch's own: joined in place
            for d in done[1:]:
                for key, seqs in d.items():
                    have = joined.get(key)
                    if have is None:
                        joined[key] = seqs
                    else:
                        have += seqs
            done = [joined]
        n = 0
        with self._confirm_lock:
            for d in done:
                n += self.confirm.add_all(d.items())
            waiting = len(self.confirm)
        with self.stats.lock:
            self.stats.confirmed_readings += n
            self.stats.confirm_waiting = waiting
        self._confirm_wake.set()

    def _room_again(self) -> None:
        """A PUBACK: room in the publish window. The confirmer is woken once, not at each of a round's acks."""
        if not self._confirm_wake.is_set():
            self._confirm_wake.set()

    def confirm_round(self) -> int:
        """Send each device waiting one `stored` message (as many as the publish window takes); returns messages sent."""
        if self.confirm is None:
            return 0
        room = self.session.publish_room()
        if not room:
            return 0
        with self._confirm_lock:
            items = self.confirm.take(room)
        if not items:
            return 0
        end = stamp(time.time())  # one time for the round: the payloads' common end, made once
        names = self._stored_topics
        if len(names) > 2 * self.settings.ingest_confirm_devices:
            names.clear()  # bounded like the tracker
        out = []
        for key, ranges in items:
            name = names.get(key)
            if name is None:
                name = names[key] = mqttwire.topic_name(topics.topic(key[0], key[1], "stored"))
            out.append((name, encode_stamped(ranges, end)))
        sent = self.session.publish(out)
        with self._confirm_lock:
            for key, ranges in items[sent:]:  # the connection went meanwhile: kept for the next round
                self.confirm.add_ranges(key, ranges)
            waiting = len(self.confirm)
            forgotten = self.confirm.ranges_forgotten + self.confirm.devices_forgotten
        with self.stats.lock:
            st = self.stats
            st.confirm_messages += sent
            st.confirm_waiting = waiting
            st.confirm_forgotten = forgotten
            st.confirm_acked = self.session.published
            st.confirm_refused = self.session.publish_refused
        return sent

    def _confirmer(self) -> None:
        period = self.settings.ingest_confirm_ms / 1000
        while not self._stopping.is_set():
            if not self._confirm_wake.wait(1.0):
                continue
            self._confirm_wake.clear()
            try:
                self.confirm_round()
            except Exception:  # a bug must not stop the confirmations for good: devices replay meanwhile
                log.exception("confirmation round failed; will retry")
            self._stopping.wait(period)  # what becomes durable meanwhile joins the next round

    def _release(self, segments: list[_Segment]) -> None:
        """Send the acks of every durable segment whose predecessors are all acked."""
        acked = held = 0
        with self._ack_lock:  # held while queueing, so two writers cannot interleave their acks
            for seg in segments:
                self._ack_ready[seg.seq] = seg
            while self._ack_next in self._ack_ready:
                seg = self._ack_ready.pop(self._ack_next)
                self._ack_next += 1
                held += seg.messages
                session = self.session if seg.session is None else seg.session
                if seg.session is not None:
                    self._catch_held -= 1
                for generation, pids in seg.acks.items():
                    if session.ack(pids, generation):  # refused for a lost connection: redelivered, rewritten
                        acked += len(pids)
                    elif seg.dead_keys:
                        self._expect_redelivery(seg.dead_keys)
        with self.stats.lock:
            self.stats.acked += acked
            self.stats.pending -= held
        if held:
            self.session.wake()  # room again: a session holding at the bound reads on (QoS 0 sends no ack that would wake it)

    def _was_redelivered(self, key: int) -> bool:
        with self._lock:
            return self._redelivered.pop(key, None) is not None

    def _expect_redelivery(self, dead_keys: dict[int, int]) -> None:
        """Rejected messages whose ack was lost: the broker sends them again, and they are not dead-lettered twice."""
        with self._lock:
            for key in dead_keys.values():
                self._redelivered[key] = True
            while len(self._redelivered) > REDELIVERED_MAX:
                self._redelivered.popitem(last=False)

    def _retry_later(self, batch: _Batch, exc: BaseException) -> float:
        """A save failed: put the batch back at the head of the queue; returns the backoff."""
        now = time.monotonic()
        with self._lock:
            self._pending.appendleft(batch)
            self._pending_lines += len(batch.lines)
            if not self._failing_since:
                self._failing_since = now
            failing = now - self._failing_since
            self._failures_run += 1
            delay = min(RETRY_MAX_S, 0.5 * 2.0 ** min(10, self._failures_run - 1))
        with self.stats.lock:
            self.stats.save_failures += 1
            self.stats.save_last_error = f"{type(exc).__name__}: {exc}"[:200]
        log.error(
            "saving a batch failed; kept, will retry",
            exc_info=exc,
            extra=kv(worker=self.name, messages=batch.messages, failing_s=round(failing, 1), retry_s=delay, error=str(exc)[:200]),
        )
        return delay

    def reload_credentials(self, why: str) -> bool:
        """Read NAKHON_INFLUX_PASSWORD_FILE again (InfluxDB refused us, or SIGHUP); True when the password changed.

        Every InfluxDB client of the worker logs in with it from the next request: the spooled
        batches go out at the replayer's next try. A rotation holds two passwords: after a
        SIGHUP, a refusal of the new one (InfluxDB not told yet) goes back to the one before,
        and the next refusal of that one (InfluxDB told) finds the new one in the file."""
        path, user = self.settings.influx_password_file, self.settings.influx_username
        if path is None or user is None:
            if why == "SIGHUP":
                log.warning("SIGHUP: no NAKHON_INFLUX_PASSWORD_FILE to read again; a password from the environment needs a restart")
            return False
        with self._creds_lock:
            now = time.monotonic()
            if why == "refused" and now - self._creds_read_at < 1.0:
                return False  # every refused write asks: read the file at most once a second while nothing changes
            try:
                password = read_secret(path, "NAKHON_INFLUX_PASSWORD_FILE")
            except ValueError as exc:
                self._creds_read_at = now
                log.error("cannot read the InfluxDB password again", extra=kv(worker=self.name, error=str(exc)))
                return False
            if password == self._influx_password:
                if why == "refused" and self._influx_previous is not None:
                    password, self._influx_previous = self._influx_previous, None
                    self._use_password(user, password)
                    log.warning("influxdb refused the new password: the one before it is in use until InfluxDB takes the new one",
                                extra=kv(worker=self.name))
                    return True
                self._creds_read_at = now
                if why == "SIGHUP":
                    log.info("SIGHUP: the InfluxDB password is unchanged", extra=kv(worker=self.name))
                return False
            self._influx_previous = self._influx_password if why == "SIGHUP" else None
            if why == "SIGHUP":
                self._creds_read_at = -1.0  # a new rotation: its first refusal is answered at once
            self._use_password(user, password)
        log.warning("influxdb password read again from its file: a new one is in use", extra=kv(worker=self.name, why=why, file=str(path)))
        return True

    def _use_password(self, user: str, password: str) -> None:
        self._influx_password = password
        for client in (self.influx, self._stats_influx, self.rollups.influx):
            client.set_credentials(user, password)
        self.credentials_reloaded += 1

    def liveness(self) -> Liveness:
        """Live: held work is being made durable; ready: also connected and subscribed."""
        now = time.monotonic()
        with self._lock:
            idle = now - self._progress_at
            failing = now - self._failing_since if self._failing_since else 0.0
        with self.stats.lock:
            pending = self.stats.pending
        s = self.session
        return assess(
            Observed(
                connected=s.connected.is_set(),
                subscribed=s.subscribed,
                pending=pending,
                idle_s=idle,
                failing_s=failing,
                disconnected_s=s.disconnected_for(),
            ),
            self.settings.ingest_stall_s,
        )

    def flush(self) -> int:
        """Make everything pending durable and ack it. Returns messages acked."""
        done = 0
        while (batch := self._take_batch()).segments:  # a segment may be acks only (the catch's)
            self._write_batch(batch)
            done += batch.messages
        return done

    def _flusher(self) -> None:
        # Writes go out in batches of at most ingest_batch_size lines and each is
        # acked at once, so the broker refills its window while the next is written.
        period = self.settings.ingest_batch_ms / 1000
        while not self._stopping.is_set():
            if not self._due(period):
                self._wake.wait(period / 4)
                self._wake.clear()
                continue
            batch = self._take_batch()
            try:
                self._write_batch(batch)
            except Exception as exc:  # a full disk, an I/O error or a bug: keep the batch, retry with backoff
                self._stopping.wait(self._retry_later(batch, exc))

    def _replayer(self) -> None:
        while not self._stopping.wait(1.0):
            if len(self.spool):
                try:
                    self.writer.drain_spool()
                except Exception:
                    log.exception("spool replay failed; will retry")

    def _reporter(self) -> None:
        interval = self.settings.ingest_stats_interval_s
        while not self._stopping.wait(interval):
            self.report()

    def _health(self) -> None:
        while not self._stopping.wait(HEALTH_INTERVAL_S):
            self.write_health()

    def write_health(self, status: str | None = None) -> dict[str, object]:
        """The worker's health file (`<data_dir>/health/<worker>.json`), for `nakhon up`/`nakhon status` and operators."""
        doc = self.health.update(time.monotonic(), self.connected.is_set(), counters(self.stats))
        live = self.liveness()  # what the counters cannot see: saves failing, a refused subscription
        doc.update(live=live.live, ready=live.ready, subscribed=self.session.subscribed)
        if not live.live:
            doc["status"] = "down"
        problems = doc.get("problems")
        doc["problems"] = [*(problems if isinstance(problems, list) else []), *(r for r in live.reasons if not r.startswith("not connected"))]
        if status:
            doc["status"] = status
        with contextlib.suppress(OSError):  # a full disk must not stop the data path; the spool reports it
            write_file(self.health_dir, doc)
        return doc

    def report(self) -> None:
        live = self.liveness()
        snap = self.stats.snapshot()
        snap["deadletter_dropped"] = self.dead.dropped  # > 0 is an alarm: the store hit its bound
        snap["connected"] = int(self.connected.is_set())
        snap["live"] = int(live.live)
        snap["ready"] = int(live.ready)
        if live.live:
            log.info("stats", extra=kv(worker=self.name, **snap))
        else:
            log.error("stats", extra=kv(worker=self.name, reasons=live.reasons, **snap))
        with contextlib.suppress(InfluxError):  # self-metrics are best effort; the data path has its own spool
            self._stats_influx.write([self.stats.line(int(time.time() * 1000), snap)])

    # --- lifecycle ----------------------------------------------------------
    def _ensure_schema(self) -> None:
        """Create the database and retention policies (idempotent); the roll-ups' schema follows."""
        self.influx.ensure_schema(self.settings.raw_retention, self.settings.hourly_retention)
        self.rollups.schema_lost()

    def start(self) -> None:
        s = self.settings
        try:
            self.influx.ensure_schema(s.raw_retention, s.hourly_retention)
        except InfluxError as exc:
            if isinstance(exc, InfluxRefused) and exc.status == 403:  # a least-privileged user: the schema is made at set-up
                log.info("storage schema left to the database administrator", extra=kv(error=exc.message[:200]))
            else:
                log.warning("influxdb not reachable at start; spooling until it is", extra=kv(error=str(exc)[:200]))
        self.session.start()
        if self.marker is not None:
            self.marker.start()
        if self.catch is not None:
            self.catch.start()
        elif self._retire:  # one worker (or the catch off): a catch session left by an earlier run would queue for nobody
            threading.Thread(target=retire, args=(self._endpoint(s.ingest_client_id), self._stopping), name="retire", daemon=True).start()
        self._threads = [
            *(threading.Thread(target=self._flusher, name="flusher", daemon=True) for _ in range(s.ingest_writers)),
            threading.Thread(target=self._replayer, name="replayer", daemon=True),
            *([threading.Thread(target=self._confirmer, name="confirmer", daemon=True)] if self.confirm is not None else []),
            threading.Thread(target=self._reporter, name="reporter", daemon=True),
            threading.Thread(target=self._health, name="health", daemon=True),
        ]
        for t in self._threads:
            t.start()
        # after the flushers: the roll-ups' start reads InfluxDB, and a hanging InfluxDB must not keep
        # what the session receives from being spooled (touched() before start only takes notes)
        self.rollups.start(s.influx_db)
        log.info("ingest worker started", extra=kv(worker=self.name, broker=f"{s.mqtt_host}:{s.mqtt_port}", influx=s.influx_url, spool_depth=self.spool.lines))

    def stop(self) -> None:
        """Graceful: stop taking messages, flush and ack what we hold, disconnect."""
        self._accepting = False
        self._stopping.set()
        for t in self._threads:
            if t.name == "flusher":
                t.join(5)
        try:
            acked = self.flush()
        except Exception:
            log.exception("final flush failed; un-acked messages will be redelivered")
            acked = 0
        with contextlib.suppress(Exception):
            while self.confirm_round():  # what is durable is confirmed before we go (else the devices replay it)
                pass
        if self.marker is not None:
            self.marker.stop()
        if self.catch is not None:
            self.catch.stop()
        self.session.stop()  # sends the queued PUBACKs, then DISCONNECT
        self.rollups.stop()
        self.report()
        self.write_health("stopped")
        self.dead.close()
        self.influx.close()
        self._stats_influx.close()
        log.info("ingest worker stopped", extra=kv(worker=self.name, acked_on_stop=acked))
