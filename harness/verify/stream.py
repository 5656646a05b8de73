"""What the fault scenarios share: the platform under test, a paced stream, and the counts that judge it.

`Stream` publishes contract readings at QoS 1 at a fixed rate from a few MQTT
connections (the broker is open in the local platform, so one connection can
speak for many devices). Every reading has a known device and `seq` (0, 1,
2, ... per device) and a timestamp that grows by at least a millisecond per
reading across the whole stream, so afterwards InfluxDB can be asked exactly
what arrived:

- `tally()` counts stored, lost (sent and not found) and duplicated (stored
  points minus distinct (device, seq): InfluxDB overwrites the same series
  and timestamp, so only a copy with another timestamp shows as a duplicate);
- `Stream.mark()` and `wait_stored()` measure recovery: the time until
  everything sent up to a moment is queryable.

paho re-sends a QoS 1 message that was in flight when the connection dropped,
and keeps publishing into its own queue while disconnected, so a broker
restart costs the stream nothing on the publishing side.

With `confirm` the stream does what a device does (store-and-forward): it
keeps every reading until the platform's `stored` message for that device
covers its seq, publishes again what is unconfirmed after a reconnect, and
what waited `confirm_timeout_s` without a confirmation.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from contract import topics
from contract.influx import Influx
from contract.payload import encode_reading
from contract.settings import Settings, load_settings
from contract.stored import StoredError, parse_stored
from harness.procstat import group_pids, memory_kb
from harness.progress import say
from ingest.deadletter import read_all
from nakhon.local import LocalPlatform
from nakhon.procs import Service
from nakhon.servers import free_port

CITIES = ("phuket", "khon_kaen", "chiang_mai")
# An air board's reading lands as two points: pm25/pm10 in `air`, temp_c/rh in `weather`.
MEASUREMENTS = ("air", "weather")
_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9]{1,7}$")


# --- the platform under test ---------------------------------------------------


def free_settings(**overrides: Any) -> Settings:
    """Settings for a platform of the harness's own: free ports, a stats report every second."""
    return load_settings(
        **{
            "mqtt_port": free_port(),
            "influx_url": f"http://127.0.0.1:{free_port()}",
            "api_port": free_port(),
            "ingest_stats_interval_s": 1.0,
            **overrides,
        }
    )


def open_platform(root: Path, *, own_services: tuple[str, ...] = ("ingest", "alerts", "api"), **overrides: Any) -> LocalPlatform:
    """`nakhon up`'s platform on an open broker and database (not started), without the simulated fleet."""
    return LocalPlatform(root, free_settings(**overrides), with_fleet=False, secure=False, own_services=own_services)


@contextlib.contextmanager
def platform(root: Path, **overrides: Any) -> Iterator[LocalPlatform]:
    """Broker, InfluxDB, ingest, alert evaluator and API as real processes on free ports, stopped on the way out.

    The open variant of what `nakhon up` runs: its publishers stand in for many devices at once."""
    p = open_platform(root, **overrides)
    try:
        p.start()
        yield p
    finally:
        p.stop()


def restart_ingest(p: LocalPlatform, timeout: float = 60.0) -> None:
    """Start the ingest again and wait until it has its session back."""
    p.ingest.start()
    if not p.ingest.wait_log('"msg":"connected"', timeout):
        raise RuntimeError(f"ingest did not reconnect; see {p.ingest.log_path}")


def rejected(p: LocalPlatform) -> int:
    """Messages the ingest set aside with a reason (its dead-letter store)."""
    return sum(1 for _ in read_all(p.settings.data_dir / "deadletter"))


def log_records(svc: Service, msg: str | None = None) -> list[dict[str, Any]]:
    """A service's JSON log lines (all of its runs), optionally only those with this `msg`."""
    out: list[dict[str, Any]] = []
    if not svc.log_path.exists():
        return out
    for raw in svc.log_path.read_bytes().splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = orjson.loads(raw)
            if isinstance(doc, dict) and (msg is None or doc.get("msg") == msg):
                out.append(doc)
    return out


def rss_mb(pid: int | None) -> float:
    """Resident memory of a process group (a service or server started in its own session), in MB."""
    if pid is None:
        return 0.0
    return sum(memory_kb(p).get("VmRSS", 0) for p in group_pids(pid)) / 1024


def service_pid(svc: Service) -> int | None:
    return svc.proc.pid if svc.proc is not None else None


def broker_sys(port: int, name: str, timeout: float = 8.0) -> int | None:
    """One of the broker's retained `$SYS/broker/...` counters, e.g. "publish/messages/dropped"."""
    got: list[int] = []
    done = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError):
            got.append(int(msg.payload))
        done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_message = on_message
    c.on_connect = lambda client, *_: client.subscribe(f"$SYS/broker/{name}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        done.wait(timeout)
    finally:
        c.disconnect()
        c.loop_stop()
    return got[0] if got else None


def sleep_until(t_end: float, what: str, every: float = 10.0) -> None:
    """Sleep until monotonic time `t_end`, with a progress line every `every` seconds."""
    last = time.monotonic()
    while (left := t_end - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))
        if time.monotonic() - last >= every and t_end - time.monotonic() > 1:
            last = time.monotonic()
            say(f"  {what}: {t_end - last:.0f} s to go")


# --- the stream ------------------------------------------------------------------


def acked(info: mqtt.MQTTMessageInfo) -> bool:
    """Whether the broker acknowledged this message.

    Not `is_published()`: for a message published while disconnected (rc
    NO_CONN) it raises forever, even after paho has sent it on reconnect and
    the PUBACK came back. The flag it guards is the answer.
    """
    return bool(info._published)


class Stream:
    """Contract readings at `rate` per second, QoS 1, from `devices` devices over `connections` connections."""

    def __init__(self, port: int, rate: float, *, prefix: str, devices: int = 300, connections: int = 4,
                 username: str | None = None, password: str | None = None, confirm: bool = False,
                 confirm_timeout_s: float = 10.0) -> None:
        if not _PREFIX_RE.match(prefix):
            raise ValueError("prefix: 2-8 lower-case letters or digits (it goes into device ids and a regex)")
        if not 0 < rate <= 1000:
            raise ValueError("rate: at most 1,000 readings/s per stream (timestamps step by a millisecond)")
        self.rate = rate
        self.prefix = prefix
        self.devices = [(CITIES[i % 3], f"{prefix}-{CITIES[i % 3][:2]}-{i:05d}") for i in range(devices)]
        self.reconnects = 0
        self._connected: set[int] = set()  # ids of the clients that have connected at least once
        self._lock = threading.Lock()
        self._clients: list[mqtt.Client] = []
        for i in range(connections):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"verify-{prefix}-{i}")
            c.max_inflight_messages_set(1000)
            c.max_queued_messages_set(0)  # while the broker is away, keep everything
            c.reconnect_delay_set(0.2, 2)  # type: ignore[arg-type]  # paho takes a float, its hints say int  # come back quickly after a broker restart
            c.on_connect = self._on_connect
            if username is not None:  # a secured broker: an account allowed to publish for these devices
                c.username_pw_set(username, password)
            c.connect("127.0.0.1", port)
            c.loop_start()
            self._clients.append(c)
        self._pending: deque[mqtt.MQTTMessageInfo] = deque()  # published, PUBACK not seen yet (oldest first)
        self._sent = 0
        self._t0_ms = int(time.time() * 1000)
        self._stop = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        # store-and-forward: (device, seq) -> (k, monotonic time last sent) until a `stored` message covers it
        self.confirm = confirm
        self.confirm_timeout_s = confirm_timeout_s
        self._held: dict[tuple[str, int], tuple[int, float]] = {}
        self.resent = 0
        self.confirmations = 0
        self._listener: mqtt.Client | None = None
        self._resender: threading.Thread | None = None
        if confirm:
            lc = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"verify-{prefix}-stored")
            lc.reconnect_delay_set(0.2, 2)  # type: ignore[arg-type]
            lc.on_connect = lambda client, *_: client.subscribe(f"{topics.PREFIX}/+/+/stored", qos=1)
            lc.on_message = self._on_stored
            if username is not None:
                lc.username_pw_set(username, password)
            lc.connect("127.0.0.1", port)
            lc.loop_start()
            self._listener = lc
            self._resender = threading.Thread(target=self._resend_loop, name=f"stream-{prefix}-resend", daemon=True)
            self._resender.start()

    def _on_stored(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            ranges = parse_stored(bytes(msg.payload)).ranges
        except StoredError:
            return
        dev = msg.topic.split("/")[3]
        with self._lock:
            self.confirmations += 1
            for lo, hi in ranges:
                for seq in range(lo, hi + 1):
                    self._held.pop((dev, seq), None)

    def _resend_loop(self) -> None:
        seen = 0
        while not self._closed.wait(1.0):
            with self._lock:
                again = self.reconnects != seen  # a reconnect: what the broker had may be gone with it
                seen = self.reconnects
                limit = time.monotonic() - self.confirm_timeout_s
                due = sorted(k for k, t in self._held.values() if again or t <= limit)
            for k in due:
                name, body = self._reading(k)
                with self._lock:
                    key = self._key(k)
                    if key not in self._held:
                        continue  # confirmed meanwhile
                    self._held[key] = (k, time.monotonic())
                    self._pending.append(self._clients[k % len(self._clients)].publish(name, body, qos=1))
                    self.resent += 1

    def _key(self, k: int) -> tuple[str, int]:
        return self.devices[k % len(self.devices)][1], k // len(self.devices)

    def unconfirmed(self) -> int:
        with self._lock:
            return len(self._held)

    def settle_confirmed(self, timeout: float = 300.0) -> int:
        """Wait until the platform has confirmed everything; returns how many are still unconfirmed."""
        deadline = time.monotonic() + timeout
        while (left := self.unconfirmed()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, rc: mqtt.ReasonCode, props: object) -> None:
        with self._lock:
            if id(client) in self._connected:
                self.reconnects += 1
            self._connected.add(id(client))

    def ts_ms(self, k: int) -> int:
        """The timestamp of the stream's k-th reading: its scheduled send time, a millisecond or more apart."""
        return self._t0_ms + int(k * 1000 / self.rate)

    def _reading(self, k: int) -> tuple[str, bytes]:
        city, dev = self.devices[k % len(self.devices)]
        seq = k // len(self.devices)
        m = {"pm25": round(5 + k % 300 / 4, 2), "pm10": round(10 + k % 400 / 4, 2), "temp_c": round(24 + k % 120 / 10, 1), "rh": 40.0 + k % 50}
        return topics.topic(city, dev, "telemetry"), encode_reading(self.ts_ms(k) / 1000, seq, m)

    def start(self, seconds: float | None = None) -> Stream:
        self._thread = threading.Thread(target=self._run, args=(seconds,), name=f"stream-{self.prefix}", daemon=True)
        self._thread.start()
        return self

    def _run(self, seconds: float | None) -> None:
        begin = time.monotonic()
        k = 0
        while not self._stop.is_set() and (seconds is None or time.monotonic() - begin < seconds):
            name, body = self._reading(k)
            with self._lock:
                info = self._clients[k % len(self._clients)].publish(name, body, qos=1)
                self._pending.append(info)
                self._sent += 1
                if self.confirm:
                    self._held[self._key(k)] = (k, time.monotonic())
            k += 1
            if k % 256 == 0:
                self._prune()
            # paced to the schedule: after a stall it catches up, as a fleet's buffers would
            if (ahead := k / self.rate - (time.monotonic() - begin)) > 0:
                time.sleep(ahead)

    def _prune(self) -> None:
        with self._lock:
            while self._pending and acked(self._pending[0]):
                self._pending.popleft()

    def stop(self) -> None:
        """Stop publishing (the network threads keep running until `close`)."""
        self._stop.set()
        self.wait()

    def wait(self) -> None:
        """Wait for a stream started with a duration to finish."""
        if self._thread is not None:
            self._thread.join()

    @property
    def sent(self) -> int:
        return self._sent

    def mark(self) -> tuple[int, int]:
        """(timestamp of the last reading published, readings published): a point to measure recovery to."""
        with self._lock:
            return self.ts_ms(self._sent - 1), self._sent

    def unacked(self) -> int:
        """Readings published whose PUBACK has not come back (yet)."""
        with self._lock:
            return sum(not acked(info) for info in self._pending)

    def settle(self, timeout: float = 120.0) -> int:
        """Wait until the broker has acknowledged everything; returns how many are still unacknowledged."""
        deadline = time.monotonic() + timeout
        while (left := self.unacked()) and time.monotonic() < deadline:
            time.sleep(0.1)
        self._prune()
        return left

    def per_device(self) -> dict[str, int]:
        """How many readings each device sent (their seqs are 0 .. n-1)."""
        n, d = self._sent, len(self.devices)
        return {dev: n // d + (1 if i < n % d else 0) for i, (_, dev) in enumerate(self.devices)}

    def close(self) -> None:
        self._stop.set()
        self._closed.set()
        self.wait()
        if self._resender is not None:
            self._resender.join(10)
        for c in [*self._clients, *([self._listener] if self._listener else [])]:
            c.disconnect()
            c.loop_stop()


# --- counting what arrived -------------------------------------------------------


@dataclass
class Tally:
    sent: int
    stored: int  # readings found with all their points
    lost: int  # readings sent and not found
    duplicated: int  # extra copies in storage (points minus distinct (device, seq))
    unexpected: int  # (device, seq) in storage that the stream never sent
    resent: int = 0  # readings the stream published again because no confirmation came


def stored_until(db: Influx, prefix: str, cut_ms: int) -> int:
    """Points of the stream in `air` with a timestamp up to `cut_ms`."""
    rows = db.rows(f'SELECT count(seq) FROM "raw"."air" WHERE device =~ /^{prefix}-/ AND time <= {int(cut_ms)}ms')
    return int(rows[0]["count"]) if rows else 0


def wait_stored(db: Influx, stream: Stream, mark: tuple[int, int], timeout: float, what: str = "stored", quiet: float | None = None) -> float | None:
    """Seconds until every reading published up to `mark` is queryable.

    None when `timeout` passes first, or when nothing new arrived for `quiet`
    seconds (for a fault that may really lose readings: no point waiting out the timeout).
    """
    cut_ms, n = mark
    t = last_say = last_change = time.monotonic()
    seen = -1
    while (got := stored_until(db, stream.prefix, cut_ms)) < n:
        now = time.monotonic()
        if got != seen:
            seen, last_change = got, now
        if now - t > timeout or (quiet is not None and now - last_change > quiet):
            say(f"  {what}: {got:,} of {n:,} queryable after {now - t:.0f} s; giving up")
            return None
        if now - last_say >= 10:
            last_say = now
            say(f"  {what}: {got:,} of {n:,} queryable")
        time.sleep(0.25)
    return time.monotonic() - t


_AGG = 'SELECT count(seq) AS n, count(distinct(seq)) AS d, min(seq) AS lo, max(seq) AS hi FROM "raw"."{m}" WHERE device =~ /^{p}-/ GROUP BY device'


def tally(db: Influx, stream: Stream) -> Tally:
    """Compare what the stream sent with what InfluxDB holds, reading by reading.

    One aggregate query per measurement settles every device whose points are
    exactly seqs 0 .. n-1 once each; only when some device differs are the seqs read.
    """
    expected = stream.per_device()
    agg = {m: {r["device"]: r for r in db.rows(_AGG.format(m=m, p=stream.prefix))} for m in MEASUREMENTS}

    def exact(dev: str, n: int) -> bool:
        rows = [agg[m].get(dev) for m in MEASUREMENTS]
        if n == 0:
            return not any(rows)
        return all(r is not None and r["n"] == r["d"] == n and r["lo"] == 0 and r["hi"] == n - 1 for r in rows)

    differ = [dev for dev, n in expected.items() if not exact(dev, n)]
    strangers = {dev for m in MEASUREMENTS for dev in agg[m]} - set(expected)
    lost = duplicated = unexpected = 0
    if differ:
        copies: dict[str, list[Counter[int]]] = {dev: [Counter() for _ in MEASUREMENTS] for dev in differ}
        for i, m in enumerate(MEASUREMENTS):
            for r in db.rows(f'SELECT seq FROM "raw"."{m}" WHERE device =~ /^{stream.prefix}-/ GROUP BY device'):
                if r["device"] in copies:
                    copies[r["device"]][i][int(r["seq"])] += 1
        for dev in differ:
            n = expected[dev]
            for seq in range(n):
                found = [c[seq] for c in copies[dev]]
                lost += min(found) == 0  # stored only when all its points are
                duplicated += max(0, max(found) - 1)
            unexpected += len({s for c in copies[dev] for s in c if not 0 <= s < n})
    unexpected += sum(int(agg[m][dev]["d"]) for m in MEASUREMENTS for dev in strangers if dev in agg[m])
    return Tally(sent=stream.sent, stored=stream.sent - lost, lost=lost, duplicated=duplicated, unexpected=unexpected, resent=stream.resent)
