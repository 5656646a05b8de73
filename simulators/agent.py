"""One simulated device: its connection, its readings, its buffer and its faults.

It behaves like the firmware: a retained `online` status on every connect
with an `offline` Last Will, readings at its interval (changed by retained
config), a bounded buffer while the broker is unreachable that is replayed
in order as batches on reconnect, and reconnects with exponential backoff
and full jitter. A reading stays with the device until the broker has
acknowledged it, so a dropped connection costs nothing (at worst a
duplicate, which the platform stores once).

With `confirm` on (store-and-forward, as the firmware): a reading stays until
the platform's `stored` message covers its seq, not only until the broker's
PUBACK; when the oldest waited `confirm_timeout_s` without a confirmation,
everything unconfirmed is sent again, and the wait doubles (up to 32 times
the base) while none comes, back to the base at the next `stored` message,
as the firmware's confirm_ms; everything unconfirmed is replayed after a
reconnect. The device holds at most `buffer_max` readings (unsent and
unconfirmed together); past it the oldest is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
from collections import OrderedDict, deque
from typing import Any

import orjson

from contract import topics
from contract.payload import encode_batch, encode_reading
from contract.status import encode_status
from contract.stored import StoredError, parse_stored
from simulators.blocks import Block, BlockMaker
from simulators.clock import Clock
from simulators.devices import SimDevice
from simulators.faults import Fault, clamp, malformed, target_metric
from simulators.mqtt import Connection, ConnectRefused, MqttError, Will, tls_context
from simulators.runconfig import RunConfig
from simulators.signals import Signals
from simulators.stats import Stats

log = logging.getLogger("nakhon.simulate")

Reading = tuple[float, int, dict[str, Any]]
OFFLINE = encode_status("offline")


class Agent:
    def __init__(
        self, dev: SimDevice, cfg: RunConfig, stats: Stats, signals: Signals, blocks: BlockMaker, clock: Clock, faults: list[Fault]
    ) -> None:
        self.dev = dev
        self.cfg = cfg
        self.stats = stats
        self.signals = signals
        self.clock = clock
        self.faults = faults
        self.value_faults = [f for f in faults if f.kind in ("stuck", "spike", "drift", "skew", "duplicate")]
        self.tele = topics.topic(dev.city, dev.device_id, "telemetry")
        self.status_topic = topics.topic(dev.city, dev.device_id, "status")
        self.config_topic = topics.topic(dev.city, dev.device_id, "config")
        self.stored_topic = topics.topic(dev.city, dev.device_id, "stored")
        self.password = cfg.passwords.get(dev.device_id)
        self.rng = random.Random(cfg.seed * 1_000_003 + dev.key)
        self.interval = cfg.interval_s
        self.config_seq: int | None = None
        self.seq = 0
        self.conn: Connection | None = None
        self.ready = asyncio.Event()  # connected and buffer replayed
        self.buffer: deque[Reading] = deque()
        self.dropped = 0
        self.inflight: deque[tuple[asyncio.Future[None], list[Reading]]] = deque()
        # confirm on: every reading sent and not yet confirmed, by seq, with when it was (last) sent; oldest send first
        self.unconfirmed: OrderedDict[int, tuple[Reading, float]] = OrderedDict()
        self.all_confirmed = asyncio.Event()
        self.confirm_wait = cfg.confirm_timeout_s  # the wait before a resend: doubles while no confirmation comes
        self.offline_until: float | None = None  # simulated time an offline fault ends
        self.closing = False
        self.last: dict[str, Any] = {}
        self._stuck: dict[int, Any] = {}
        self.blocks = blocks
        self.block: Block = deque()
        self.ahead: tuple[float, float, Block] | None = None
        self.chunk: list[Any] = [self]  # neighbours whose readings are made together (blocks.py)
        self.next_t = 0.0
        self._connector: asyncio.Task[None] | None = None
        self._reset = "power_on"
        self._started = clock.now()
        if cfg.keep_ledger and stats.ledger is not None:
            stats.ledger[dev.device_id] = []

    # --- connection ---------------------------------------------------------------
    def start_connecting(self, jitter_first: bool = False) -> None:
        if self._connector is None or self._connector.done():
            self._connector = asyncio.get_running_loop().create_task(self._connect_loop(jitter_first))

    async def _connect_loop(self, jitter_first: bool) -> None:
        cfg, st = self.cfg, self.stats
        attempt = 0
        while not self.closing:
            if self.offline_until is not None:
                await self.clock.sleep_until(self.offline_until)
                self.offline_until = None
            if attempt or jitter_first:
                # the firmware's policy: full jitter over an exponentially growing window
                await asyncio.sleep(self.rng.uniform(0, min(cfg.backoff_cap_s, cfg.backoff_base_s * 2 ** min(attempt, 16))))
            attempt += 1
            if self.closing:
                return
            st.connect_attempts += 1
            try:
                conn = await Connection.open(
                    cfg.host, cfg.port, self.dev.device_id,
                    username=self.dev.device_id if self.password is not None else None, password=self.password,
                    will=Will(self.status_topic, OFFLINE), keepalive=cfg.keepalive,
                    on_message=self._on_message, timeout=cfg.connect_timeout_s,
                    tls=tls_context(cfg.tls_ca) if cfg.tls_ca is not None else None,
                )
            except ConnectRefused as exc:
                st.refused += 1
                if st.refused <= 3:
                    log.error("broker refused device", extra={"fields": {"device": self.dev.device_id, "reason": str(exc)}})
                continue
            except MqttError:
                st.connect_failures += 1
                continue
            self.conn = conn
            st.connected += 1
            st.connects += 1
            if st.storm_pending and self._in_storm:
                self._in_storm = False
                st.storm_pending -= 1
                if not st.storm_pending:
                    st.storm_seconds = asyncio.get_running_loop().time() - self._storm_t0
            conn.closed.add_done_callback(functools.partial(self._lost_cb, conn))
            try:
                conn.subscribe(self.config_topic)
                if cfg.confirm:
                    conn.subscribe(self.stored_topic)
                self._publish_status()
                await self._replay()
            except MqttError:
                self._lost(conn)  # lost again while replaying: the readings go back to the buffer
                continue
            if self.conn is conn and conn.is_open:
                self.ready.set()
                return

    _in_storm = False
    _storm_t0 = 0.0

    def _lost_cb(self, conn: Connection, _fut: asyncio.Future[None]) -> None:
        self._lost(conn)

    def _lost(self, conn: Connection) -> None:
        if self.conn is not conn:
            return
        self.conn = None
        self.ready.clear()
        self.stats.connected -= 1
        back: list[Reading] = []
        if self.cfg.confirm:  # everything unconfirmed (in flight or not) is replayed on the next connection
            back = [r for r, _ in self.unconfirmed.values()]
            self.unconfirmed.clear()
            self.stats.unconfirmed -= len(back)
        else:
            for fut, readings in self.inflight:
                if fut.cancelled() or fut.exception() is not None:
                    back.extend(readings)
        self.inflight.clear()
        if back:  # not acknowledged (or not confirmed): keep them, in order, with what was buffered
            self.buffer = deque(sorted([*back, *self.buffer], key=lambda r: r[1]))
            self.stats.buffered += len(back)
        self._reset = "unknown"
        if not self.closing:
            self.start_connecting(jitter_first=self.offline_until is None)

    def drop(self, until: float | None = None, storm: bool = False) -> None:
        """Lose the connection without DISCONNECT (the broker fires the Last Will)."""
        self.offline_until = until
        if storm:
            self._in_storm = True
            self._storm_t0 = asyncio.get_running_loop().time()
        if self.conn is not None:
            self.conn.abort()
        elif storm:
            self.start_connecting(jitter_first=True)

    def _publish_status(self) -> None:
        if self.conn is None:
            return
        doc: dict[str, Any] = {
            "fw": self.cfg.fw, "reset": self._reset, "kind": self.dev.kind, "lat": self.dev.lat, "lon": self.dev.lon,
            "interval_s": self.interval, "buffered": len(self.buffer) + len(self.unconfirmed), "dropped": self.dropped,
            "uptime_s": int(max(0.0, self.clock.now() - self._started)),
        }
        for k in ("battery_v", "rssi_dbm"):
            if k in self.last:
                doc[k] = self.last[k]
        if self.config_seq is not None:
            doc["config_seq"] = self.config_seq
        self.conn.publish(self.status_topic, encode_status("online", **doc), retain=True)
        self.stats.status_sent += 1

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """Retained config: apply the interval, acknowledge its seq in the status. `stored`: free what it covers."""
        if topic == self.stored_topic:
            self._on_stored(payload)
            return
        if topic != self.config_topic or not payload:
            return
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(doc, dict):
            return
        interval = doc.get("interval_s")
        if isinstance(interval, int | float) and not isinstance(interval, bool) and 1 <= interval <= 86400:
            self.interval = float(interval)
        seq = doc.get("seq", doc.get("config_seq"))
        if type(seq) is int and 0 <= seq < 1 << 31:
            self.config_seq = seq
        self.stats.config_applied += 1
        self._publish_status()

    def _on_stored(self, payload: bytes) -> None:
        st = self.stats
        try:
            ranges = parse_stored(payload).ranges
        except StoredError:
            st.stored_bad += 1
            return
        st.stored_messages += 1
        self.confirm_wait = self.cfg.confirm_timeout_s  # the platform answers: back to the base wait
        u = self.unconfirmed
        freed = 0
        for lo, hi in ranges:
            if hi - lo < len(u):
                for seq in range(lo, hi + 1):
                    if u.pop(seq, None) is not None:
                        freed += 1
            else:
                for seq in [q for q in u if lo <= q <= hi]:
                    del u[seq]
                    freed += 1
        st.confirmed += freed
        st.unconfirmed -= freed
        if not u:
            self.all_confirmed.set()

    def _hold(self, readings: list[Reading]) -> None:
        """Sent: keep them until confirmed (moved to the back: the timeout counts from this send)."""
        now = asyncio.get_running_loop().time()
        u = self.unconfirmed
        added = 0
        for r in readings:
            if u.pop(r[1], None) is None:
                added += 1
            u[r[1]] = (r, now)
        self.stats.unconfirmed += added
        self.all_confirmed.clear()
        self._bound()

    def _bound(self) -> None:
        """At most buffer_max readings held, unsent and unconfirmed together: the oldest (lowest seq) is dropped."""
        u, buf, st = self.unconfirmed, self.buffer, self.stats
        while len(buf) + len(u) > self.cfg.buffer_max:
            if u and (not buf or next(iter(u)) < buf[0][1]):
                oldest = min(u)  # usually the first; a resent reading moved back
                del u[oldest]
                st.unconfirmed -= 1
            else:
                buf.popleft()
                st.buffered -= 1
            self.dropped += 1
            st.dropped += 1

    async def resend_due(self) -> int:
        """When the oldest unconfirmed reading waited `confirm_wait` (the ingest or the broker lost it, or the
        ingest is away), send every unconfirmed reading again, oldest first, and double the wait (the firmware's
        confirm_ms: up to 32 times confirm_timeout_s; a `stored` message sets it back)."""
        u = self.unconfirmed
        if not u or not self.ready.is_set():
            return 0
        now = asyncio.get_running_loop().time()
        if next(iter(u.values()))[1] > now - self.confirm_wait:
            return 0
        due = sorted((r for r, _ in u.values()), key=lambda r: r[1])
        self.confirm_wait = min(self.confirm_wait * 2, self.cfg.confirm_timeout_s * 32)
        self.stats.resends += 1
        for k in range(0, len(due), self.cfg.batch):
            chunk = [r for r in due[k : k + self.cfg.batch] if r[1] in u]  # a confirmation may have come meanwhile
            if not chunk:
                continue
            try:
                await self._send(chunk)
            except MqttError:
                return k  # lost again: _lost moved everything unconfirmed to the replay
            self.stats.resent += len(chunk)
        return len(due)

    async def settle_confirmed(self, timeout: float) -> None:
        """End of the run: wait up to `timeout` for every reading to be confirmed, sending again what times out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.unconfirmed or self.buffer:
            left = deadline - loop.time()
            if left <= 0:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.all_confirmed.wait(), min(left, 1.0))
            if self.buffer and self.ready.is_set():
                with contextlib.suppress(MqttError):
                    await self._replay()
            await self.resend_due()

    # --- sending ----------------------------------------------------------------------
    async def _window(self) -> None:
        while self.inflight and (self.inflight[0][0].done() or len(self.inflight) >= self.cfg.window):
            fut, _ = self.inflight[0]
            if not fut.done():
                with contextlib.suppress(MqttError, asyncio.CancelledError):
                    await asyncio.shield(fut)
            if self.inflight and self.inflight[0][0] is fut:
                self.inflight.popleft()

    def _acked(self, n: int, fut: asyncio.Future[None]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self.stats.messages_acked += 1
            self.stats.readings_acked += n

    async def _send(self, readings: list[Reading], duplicate: bool = False) -> None:
        """Publish one reading or a batch; raises MqttError if the connection is gone."""
        await self._window()
        conn = self.conn
        if conn is None or not conn.is_open:
            raise MqttError("not connected")
        payload = encode_reading(*readings[0]) if len(readings) == 1 else encode_batch(readings)
        fut = conn.publish(self.tele, payload)
        fut.add_done_callback(functools.partial(self._acked, len(readings)))
        self.inflight.append((fut, readings))
        if self.cfg.confirm:
            self._hold(readings)
        self.stats.messages_sent += 1
        self.stats.readings_sent += len(readings)
        if duplicate:
            conn.publish(self.tele, payload)
            self.stats.duplicates_sent += 1
            self.stats.faults["duplicate"] += 1

    async def _replay(self) -> None:
        """Send the buffer, oldest first, as batches."""
        while self.buffer:
            n = min(self.cfg.batch, len(self.buffer))
            chunk = [self.buffer.popleft() for _ in range(n)]
            self.stats.buffered -= n
            try:
                await self._send(chunk)
            except MqttError:
                self.buffer.extendleft(reversed(chunk))
                self.stats.buffered += n
                raise
            self.stats.replayed += n

    def _keep(self, reading: Reading) -> None:
        """Into the ring while offline; a full ring drops its oldest, as the firmware does."""
        if len(self.buffer) >= self.cfg.buffer_max:
            self.buffer.popleft()
            self.dropped += 1
            self.stats.dropped += 1
            self.stats.buffered -= 1
        self.buffer.append(reading)
        self.stats.buffered += 1
        self.stats.buffered_total += 1
        if self.unconfirmed:
            self._bound()

    async def deliver(self, reading: Reading, duplicate: bool = False) -> None:
        if self.unconfirmed:
            await self.resend_due()
        if self.ready.is_set():
            try:
                await self._send([reading], duplicate)
                return
            except MqttError:
                pass
            except asyncio.CancelledError:  # the run ends while it waits for the window: keep it (the ledger has it)
                self._keep(reading)
                raise
        self._keep(reading)

    # --- readings -----------------------------------------------------------------------
    def make(self, t: float, m: dict[str, Any] | None = None) -> tuple[Reading | None, bool]:
        """The reading due at simulated time `t` with the active faults applied, and whether to send it twice.

        A reading whose (skewed) time the ingest will refuse is still sent, and counted as expected_rejected.
        """
        t = round(t, 3)
        m = dict(self.blocks.values(self, t) if m is None else m)  # type: ignore[arg-type]
        self.seq += 1
        ts, dup = t, False
        rel = t - self.clock.origin
        for i, f in enumerate(self.value_faults):
            if not f.active(rel):
                continue
            if f.kind == "skew":
                ts = round(t + f.seconds, 3)
                self.stats.faults["skew"] += 1
                continue
            if f.kind == "duplicate":
                dup = dup or self.rng.random() < f.probability
                continue
            metric = target_metric(f, self.dev.metrics)
            if metric is None:
                continue
            old = m[metric]
            if f.kind == "stuck":
                new = self._stuck.setdefault(i, old)
            elif f.kind == "spike":
                if self.rng.random() >= f.probability:
                    continue
                new = clamp(metric, old * f.factor if old else f.factor)
            else:  # drift
                new = clamp(metric, old + f.per_hour * (rel - f.at_s) / 3600)
            m[metric] = round(new) if type(old) is int else round(new, 2)
            self.stats.faults[f.kind] += 1
        self.last = m
        reading = (ts, self.seq, m)
        wall = self.clock.now()
        if not (wall - self.cfg.ts_max_age_s <= ts <= wall + self.cfg.ts_max_future_s):
            self.stats.expected_rejected["ts_out_of_window"] += 1
        elif self.stats.ledger is not None and self.dev.device_id in self.stats.ledger:
            self.stats.ledger[self.dev.device_id].append((ts, self.seq))
        return reading, dup

    # --- the device's life ------------------------------------------------------------------
    def first_time(self, start: float) -> float:
        """The device's first reading at or after `start`: devices are spread over the interval."""
        phase = (self.dev.key % 1000) / 1000 * self.interval
        k = math.ceil((start - phase) / self.interval)
        return k * self.interval + phase

    async def live(self, end: float | None, count: int | None) -> None:
        t = self.first_time(self.clock.start)
        self.next_t = t
        sent = 0
        while (end is None or t < end) and (count is None or sent < count):
            await self.clock.sleep_until(t)
            reading, dup = self.make(t)
            if reading is not None:
                await self.deliver(reading, dup)
            sent += 1
            t += self.interval

    async def backfill(self, end: float, days: float) -> None:
        n = int(days * 86400 // self.interval)
        ts = [round(end - self.interval * (n - 1 - k), 3) for k in range(n)]
        values = self.signals.readings(self.dev, ts, self.interval) if n else []
        chunk: list[Reading] = []
        for t, m in zip(ts, values, strict=True):
            reading, _ = self.make(t, m)
            if reading is not None:
                chunk.append(reading)
            if len(chunk) >= self.cfg.batch:
                await self._send_chunk(chunk)
                chunk = []
        if chunk:
            await self._send_chunk(chunk)

    async def _send_chunk(self, chunk: list[Reading]) -> None:
        while True:
            await self.ready.wait()
            try:
                await self._send(chunk)
                return
            except MqttError:
                continue

    async def send_malformed(self, reasons: tuple[str, ...], count: int) -> None:
        await self.ready.wait()
        conn = self.conn
        if conn is None:
            return
        for reason in reasons:
            if reason == "bad_id" and not self.cfg.open_broker:
                continue  # an ACL would drop it silently: nothing the ingest could count
            for _ in range(count):
                topic, payload, retain = malformed(reason, self.dev.city, self.dev.device_id, self.clock.now(), self.cfg.max_payload_bytes)
                await self._window()
                fut = conn.publish(topic, payload, retain=retain)
                self.inflight.append((fut, []))
                self.stats.malformed[reason] += 1
                self.stats.faults["malformed"] += 1

    async def settle(self, timeout: float) -> None:
        """Wait for the broker to acknowledge everything in flight."""
        futs = [f for f, _ in self.inflight if not f.done()]
        if futs:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait(futs, timeout=timeout)

    async def close(self) -> None:
        """End of the run: say offline (retained), then a clean DISCONNECT."""
        self.closing = True
        if self._connector is not None and not self._connector.done():
            self._connector.cancel()
        conn = self.conn
        if conn is not None and conn.is_open:
            with contextlib.suppress(MqttError):
                fut = conn.publish(self.status_topic, OFFLINE, retain=True)
                with contextlib.suppress(asyncio.TimeoutError, MqttError):
                    await asyncio.wait_for(fut, 5)
            await conn.disconnect()
        self.stats.unsent += len(self.buffer)
