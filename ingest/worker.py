"""One ingest worker: a persistent MQTT 5 session (shared subscription when there are several).

The session's thread reads the broker in large chunks and hands each chunk's
messages here: they are parsed and queued. The flusher threads (`ingest_writers`) make
each batch durable (InfluxDB, else spool; rejects to the dead letters) and only
then acknowledges its messages. At most
`ingest_receive_maximum` messages are held un-acked: it is our MQTT 5 Receive
Maximum, and the session stops reading while we hold that many (the broker
does not always keep to it), which bounds memory.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from contract import topics
from contract.influx import Influx, InfluxError, InfluxRejected
from contract.logs import kv
from contract.payload import Window
from contract.settings import Settings
from ingest import mqttwire
from ingest.deadletter import DeadLetterStore
from ingest.health import Health, counters, write_file
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


@dataclass
class _Batch:
    lines: list[str] = field(default_factory=list)
    acks: dict[int, list[int]] = field(default_factory=dict)  # connection generation -> packet ids
    messages: int = 0
    dead: list[dict[str, object]] = field(default_factory=list)
    started: float = 0.0

    def merge(self, other: _Batch) -> None:
        self.lines += other.lines
        for generation, pids in other.acks.items():
            self.acks.setdefault(generation, []).extend(pids)
        self.messages += other.messages
        self.dead += other.dead


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
        self.dead = DeadLetterStore(settings.path("deadletter"), self.name)
        self.spool = Spool(settings.path("spool", self.name))
        self.writer = DurableWriter(self.influx, self.spool, self.dead, self.stats)
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
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._accepting = True
        self.session = Session(self._endpoint(), self._on_connect, self._on_publishes, full=self._full)
        self.connected = self.session.connected
        self.health = Health(self.name)
        self.health_dir = settings.path("health")

    # --- MQTT -------------------------------------------------------------
    def _endpoint(self) -> Endpoint:
        s = self.settings
        tls = None
        if s.mqtt_tls:
            tls = ssl.create_default_context(cafile=str(s.mqtt_ca_file) if s.mqtt_ca_file else None)
        return Endpoint(
            host=s.mqtt_host,
            port=s.mqtt_port,
            client_id=self.name,
            keepalive=s.mqtt_keepalive_s,
            session_expiry=s.ingest_session_expiry_s,
            receive_maximum=s.ingest_receive_maximum,
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
        session.subscribe([(f, topics.QOS | mqttwire.RETAIN_IF_NEW) for f in use] + [(BROKER_DROPPED_TOPIC, 0)])
        log.info("connected", extra=kv(worker=self.name, session_present=session_present, reconnects=session.reconnects))

    def _full(self) -> bool:
        """The bound on undelivered messages: parsed and not yet acked."""
        return self.stats.pending >= self.settings.ingest_receive_maximum

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

    def _parse(self, pubs: Publishes, generation: int) -> None:
        handle = self.pipeline.message
        clock = time.time  # per message: a status document is stamped with its arrival
        seg = _Batch(started=time.monotonic())
        lines = seg.lines
        pids: list[int] = []
        accepted = rejected_msgs = 0
        rejections = []
        messages = 0
        for topic_name, payload, pid in pubs:
            if not pid and topic_name == BROKER_DROPPED_TOPIC:
                self._broker_dropped(payload)
                continue
            out = handle(topic_name, payload, clock())
            lines += out.lines
            messages += 1
            if pid:  # QoS 0 (a device's last will, say) is stored too, with nothing to ack
                pids.append(pid)
            accepted += out.accepted
            if out.dead is not None:
                seg.dead.append(out.dead)
                rejections += out.rejections
                if not out.accepted:
                    rejected_msgs += 1
        if not messages:
            return
        seg.acks[generation] = pids
        seg.messages = messages
        with self._lock:
            self._pending.append(seg)
            self._pending_lines += len(lines)
            full = self._pending_lines >= self.settings.ingest_batch_size
        with self.stats.lock:
            st = self.stats
            st.received += messages
            st.pending += len(pids)
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
            while self._pending and (not batch.messages or len(batch.lines) + len(self._pending[0].lines) <= self.settings.ingest_batch_size):
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
        """Make one batch durable, then ack its messages."""
        self.dead.append(batch.dead)
        self.writer.commit(batch.lines)
        self.rollups.touched(batch.lines)
        acked = held = 0
        for generation, pids in batch.acks.items():
            held += len(pids)
            if self.session.ack(pids, generation):  # refused for a lost connection: redelivered, rewritten
                acked += len(pids)
        with self.stats.lock:
            self.stats.acked += acked
            self.stats.pending -= held

    def flush(self) -> int:
        """Make everything pending durable and ack it. Returns messages acked."""
        done = 0
        while (batch := self._take_batch()).messages:
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
            try:
                self._write_batch(self._take_batch())
            except Exception:  # a bug must not stop acking forever: log and retry
                log.exception("flush failed; will retry")
                time.sleep(1)

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
        if status:
            doc["status"] = status
        with contextlib.suppress(OSError):  # a full disk must not stop the data path; the spool reports it
            write_file(self.health_dir, doc)
        return doc

    def report(self) -> None:
        snap = self.stats.snapshot()
        snap["connected"] = int(self.connected.is_set())
        log.info("stats", extra=kv(worker=self.name, **snap))
        with contextlib.suppress(InfluxError):  # self-metrics are best effort; the data path has its own spool
            self._stats_influx.write([self.stats.line(int(time.time() * 1000), snap)])

    # --- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        try:
            self.influx.ensure_schema(s.raw_retention, s.hourly_retention)
        except InfluxError as exc:
            if isinstance(exc, InfluxRejected) and exc.status == 403:  # a least-privileged user: the schema is made at set-up
                log.info("storage schema left to the database administrator", extra=kv(error=exc.message[:200]))
            else:
                log.warning("influxdb not reachable at start; spooling until it is", extra=kv(error=str(exc)[:200]))
        self.session.start()
        self._threads = [
            *(threading.Thread(target=self._flusher, name="flusher", daemon=True) for _ in range(s.ingest_writers)),
            threading.Thread(target=self._replayer, name="replayer", daemon=True),
            threading.Thread(target=self._reporter, name="reporter", daemon=True),
            threading.Thread(target=self._health, name="health", daemon=True),
        ]
        self.rollups.start(s.influx_db)
        for t in self._threads:
            t.start()
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
        self.session.stop()  # sends the queued PUBACKs, then DISCONNECT
        self.rollups.stop()
        self.report()
        self.write_health("stopped")
        self.dead.close()
        self.influx.close()
        self._stats_influx.close()
        log.info("ingest worker stopped", extra=kv(worker=self.name, acked_on_stop=acked))
