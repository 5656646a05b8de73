"""`nakhon alerts run`: telemetry in over MQTT, alert events out to MQTT, InfluxDB and webhooks.

A read-only platform client of the broker (client id outside the device-id
alphabet, MQTT 5 persistent session, QoS 1, manual acknowledgements, a
Receive Maximum that bounds what it holds): a message is
acknowledged only once the state it changed and the events it produced are
committed to the store, so a crash at any point loses nothing and repeats
nothing (see alerts.store). Delivery runs beside it, one worker per target.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from alerts import health
from alerts.core import Evaluator, Event
from alerts.deliver import InfluxTarget, Retry, Webhook, Worker
from alerts.rules import RuleBook
from alerts.store import Item, Store
from alerts.storm import Grouper
from alerts.text import messages, storm_body, webhook_body
from contract.alerts import alerts_topic
from contract.influx import Influx, InfluxError
from contract.logs import kv
from contract.payload import Window, parse_telemetry
from contract.settings import Settings
from contract.sigrelay import route
from contract.topics import QOS, TELEMETRY_FILTER, TopicError, parse_topic

log = logging.getLogger("nakhon.alerts")

BATCH_MAX = 2000
RECEIVE_MAXIMUM = 4000  # two batches: one being judged, the next arriving
# What the service holds un-judged. The broker is asked for RECEIVE_MAXIMUM, but Mosquitto 2.0 sends a
# resumed session's whole queue at once (its quota is not counted on reconnect): 100,000 queued readings
# were 85,000 messages in memory, 840 MB. So the client bounds it too: past this the network thread waits
# (TCP pushes back on the broker) until the judge has taken a batch: settings.alerts_inbox_max (4,000).
BATCH_WAIT_S = 0.2
PUBACK_WAIT_S = 30.0
TICK_S = 1.0
STATS_S = 30.0
HEALTH_S = 2.0
PRUNE_S = 3600.0  # delivered events leave the outbox after a week (they live on in InfluxDB)


class AlertService:
    def __init__(self, settings: Settings, book: RuleBook, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.store = Store(settings.path("alerts") / "state.sqlite3")
        self.evaluator = Evaluator(book, clock, settings.alerts_late_after_s)
        loaded = 0
        for city, device, doc in self.store.stations():
            self.evaluator.load(city, device, doc)
            loaded += 1
        self.grouper = Grouper(lambda city: book.for_station(city, None).storm)
        for city, doc in self.store.storms():
            self.grouper.load(city, doc)
        self.window = Window(settings.ts_max_age_s, settings.ts_max_future_s)
        self._inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue(maxsize=settings.alerts_inbox_max)
        self.held_max = 0  # the most messages held un-judged at once (health; the bench and tests read it)
        self.stop_event = threading.Event()
        self.client = self._client()
        self.influx = Influx(settings.influx_url, settings.influx_db, settings.influx_username, settings.influx_password, settings.influx_timeout_s)
        try:  # the ingest and the API create it too; whichever starts first (writes wait and retry until it exists)
            self.influx.ensure_schema(settings.raw_retention, settings.hourly_retention)
        except InfluxError as exc:
            log.warning("could not create the storage schema yet", extra=kv(error=str(exc)[:200]))
        self.webhooks = [Webhook(url, settings.alerts_webhook_secret or "", settings.alerts_webhook_timeout_s) for url in settings.alerts_webhooks]
        targets: dict[str, tuple[Callable[[list[Item]], None], int]] = {"mqtt": (self._publish, 500), "influx": (InfluxTarget(self.influx), 1000)}
        targets.update({f"webhook:{i}": (w, 1) for i, w in enumerate(self.webhooks)})
        self.wakes = {t: threading.Event() for t in targets}
        self.workers = [Worker(self.store, t, send, self.wakes[t], self.stop_event, cap_s=settings.alerts_retry_cap_s,
                               give_up_s=settings.alerts_give_up_s, batch=batch) for t, (send, batch) in targets.items()]
        self.bad_messages = 0
        self.messages = 0
        self.connected = False
        self._refused: dict[int, str] = {}  # mid -> the reason a PUBACK refused it (MQTT 5: e.g. Not authorized)
        self.health_path = settings.path("alerts") / "health.json"
        log.info("alert evaluator ready", extra=kv(rules_version=book.version, stations=loaded, webhooks=len(self.webhooks),
                                                   state=str(self.store.path)))

    # --- MQTT ----------------------------------------------------------------
    def _client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s.alerts_client_id, protocol=mqtt.MQTTv5, manual_ack=True)
        if s.mqtt_username:
            client.username_pw_set(s.mqtt_username, s.mqtt_password)
        if s.mqtt_tls:
            client.tls_set(ca_certs=str(s.mqtt_ca_file) if s.mqtt_ca_file else None, cert_reqs=ssl.CERT_REQUIRED)
        client.reconnect_delay_set(1, 30)
        client.max_inflight_messages_set(100)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the connection", extra=kv(reason=str(reason)))
            return
        client.subscribe(TELEMETRY_FILTER, qos=QOS)
        self.connected = True
        log.info("connected", extra=kv(broker=f"{self.settings.mqtt_host}:{self.settings.mqtt_port}",
                                       session_present=bool(getattr(flags, "session_present", False))))

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        """Network thread: hand the message to the judge, waiting while it holds alerts_inbox_max (backpressure, nothing dropped)."""
        while not self.stop_event.is_set():
            try:
                self._inbox.put(msg, timeout=0.5)
            except queue.Full:
                continue
            self.held_max = max(self.held_max, self._inbox.qsize())
            return
        # stopping: not acknowledged, so the broker sends it again to the next run

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected = False
        if not self.stop_event.is_set():
            log.warning("disconnected from the broker, reconnecting", extra=kv(reason=str(reason)))

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        if getattr(reason, "is_failure", False):
            self._refused[mid] = str(reason)

    def _publish(self, items: list[Item]) -> None:
        """Publish the lot, then wait for every PUBACK (one round trip per batch, not per event)."""
        infos = []
        for item in items:
            info = self.client.publish(alerts_topic(orjson.loads(item.body)["city"]), item.body, qos=QOS)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise Retry(f"publish: {mqtt.error_string(info.rc)}")
            infos.append(info)
        # PUBACKs come on the telemetry's connection, behind what the broker has already sent us: while draining a
        # backlog that is up to alerts_inbox_max messages plus the socket's buffers, hence a generous wait
        deadline = time.monotonic() + PUBACK_WAIT_S
        for info in infos:
            info.wait_for_publish(max(0.01, deadline - time.monotonic()))
            if not info.is_published():
                raise Retry(f"no PUBACK within {PUBACK_WAIT_S:.0f} s")
        refused = [self._refused.pop(i.mid) for i in infos if i.mid in self._refused]
        if refused:  # a broker that refuses the alerts topic (its ACL): retried until an operator fixes the account, and logged
            raise Retry(f"the broker refused {len(refused)} publish(es): {refused[0]}")

    # --- the loop --------------------------------------------------------------
    def run(self) -> None:
        for w in self.workers:
            w.start()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.settings.ingest_session_expiry_s  # what arrives while it is down waits for it
        props.ReceiveMaximum = RECEIVE_MAXIMUM  # bounded memory: the broker holds the rest until we acknowledge
        self.client.connect_async(self.settings.mqtt_host, self.settings.mqtt_port, keepalive=self.settings.mqtt_keepalive_s,
                                  clean_start=False, properties=props)
        self.client.loop_start()
        last_tick = last_stats = last_health = 0.0
        last_prune = time.monotonic()
        try:
            while not self.stop_event.is_set():
                batch = self._take()
                events: list[Event] = []
                for msg in batch:
                    events += self._message(msg)
                now = time.monotonic()
                storms: list[dict[str, Any]] = []
                if now - last_tick >= TICK_S:
                    events += self.evaluator.tick()
                    storms = self.grouper.tick(int(self.clock() * 1000))
                    last_tick = now
                if events or storms or self.evaluator.dirty or self.grouper.dirty:
                    self._commit(events, storms)
                for msg in batch:  # only now: what they changed is durable
                    self.client.ack(msg.mid, msg.qos)
                if events:
                    for wake in self.wakes.values():
                        wake.set()
                if now - last_health >= HEALTH_S:
                    last_health = now
                    self._health()
                if now - last_prune >= PRUNE_S:
                    last_prune = now
                    self.store.prune()
                if now - last_stats >= STATS_S:
                    last_stats = now
                    log.info("alerts stats", extra=kv(**self.evaluator.counts, bad_messages=self.bad_messages, outbox=self.store.undelivered(),
                                                      stations=len(self.evaluator.stations)))
        finally:
            self.stop_event.set()
            self.client.disconnect()
            self.client.loop_stop()
            for w in self.workers:
                w.join(15)
            for wh in self.webhooks:
                wh.close()
            self.influx.close()
            self.store.close()
            log.info("alert evaluator stopped")

    def stop(self) -> None:
        self.stop_event.set()

    def _health(self) -> None:
        counts = self.store.undelivered()
        oldest, targets = self.store.oldest_pending(self.wakes)
        try:
            health.write(self.health_path, {
                "connected": self.connected, "messages": self.messages, "held_max": self.held_max,
                "stations": len(self.evaluator.stations), "readings": self.evaluator.counts["readings"],
                "events": self.evaluator.counts["events"], "pending": counts.get("pending", 0), "failed": counts.get("failed", 0),
                "oldest_pending_s": None if oldest is None else round(time.time() - oldest, 1), "stuck_targets": targets})
        except OSError as exc:
            log.warning("cannot write the health file", extra=kv(path=str(self.health_path), error=str(exc)))

    def _take(self) -> list[mqtt.MQTTMessage]:
        batch: list[mqtt.MQTTMessage] = []
        deadline = time.monotonic() + BATCH_WAIT_S
        while len(batch) < BATCH_MAX:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(self._inbox.get(timeout=left))
            except queue.Empty:
                break
        return batch

    def _message(self, msg: mqtt.MQTTMessage) -> list[Event]:
        self.messages += 1
        try:
            t = parse_topic(msg.topic, self.settings.cities)
        except TopicError:
            self.bad_messages += 1
            return []
        parsed = parse_telemetry(bytes(msg.payload), time.time(), self.window, self.settings.max_payload_bytes)
        if parsed.rejections:
            self.bad_messages += 1  # the ingest keeps the rejected ones with their reasons; here they only don't count
        if not parsed.readings:
            return []
        return self.evaluator.readings(t.city, t.device, parsed.readings)

    def _commit(self, events: list[Event], storms: list[dict[str, Any]] | None = None) -> None:
        ev = self.evaluator
        stations = [(c, d, ev.stations[(c, d)].to_doc()) for c, d in ev.dirty]
        items: list[tuple[str, str, bytes]] = []
        # the webhooks (people) get one notification per city per storm; MQTT and InfluxDB get every event
        notify = {id(e) for e in self.grouper.route(events, int(self.clock() * 1000))}
        for doc in storms or []:
            hook = orjson.dumps(storm_body(doc, self.settings.cities))
            items += [(doc["id"], f"webhook:{i}", hook) for i in range(len(self.webhooks))]
            log.info("alert storm", extra=kv(city=doc["city"], storm=doc["storm_id"], notification=doc["n"], events=doc["events"],
                                             storm_events=doc["storm_events"], over=doc["over"]))
        for e in events:
            doc = e.doc()
            doc["message_en"], doc["message_th"] = messages(doc, self.settings.cities)
            body = orjson.dumps(doc)
            items.append((e.id, "influx", body))
            if e.event == "past":  # history only
                continue
            items.append((e.id, "mqtt", body))
            if id(e) in notify:
                hook = orjson.dumps(webhook_body(e.doc(), self.settings.cities))
                items += [(e.id, f"webhook:{i}", hook) for i in range(len(self.webhooks))]
            log.info("alert", extra=kv(alert=e.alert_id, event=e.event, rule=e.rule, city=e.city, device=e.device, value=e.value,
                                       late=e.late))
        self.store.commit(stations, items, storms=self.grouper.docs())
        ev.dirty.clear()


def run(settings: Settings, book: RuleBook) -> None:
    """Blocks until SIGTERM/SIGINT (the caller sets the handlers through `service.stop`)."""
    import signal

    service = AlertService(settings, book)
    route({signal.SIGTERM: service.stop, signal.SIGINT: service.stop})
    service.run()
