"""The ingest's MQTT session against a real Mosquitto: resume, acks per connection, the local bound."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from harness.bench.ingest import publish_bulk
from ingest.session import Endpoint, Publishes, Session
from nakhon.servers import Mosquitto
from tests.helpers import wait_until

pytestmark = pytest.mark.integration  # a real Mosquitto

FILTER = "nakhon/v1/+/+/telemetry"


class Receiver:
    def __init__(self, port: int, receive_maximum: int, hold: int | None = None) -> None:
        self.got: list[tuple[int, int]] = []  # (generation, packet id)
        self.hold = hold
        self.lock = threading.Lock()
        endpoint = Endpoint("127.0.0.1", port, "session-test", 30, 3600, receive_maximum)
        self.session = Session(endpoint, lambda s, present: s.subscribe([(FILTER, 1)]), self.on_publishes, full=self.full)

    def on_publishes(self, pubs: Publishes, generation: int) -> None:
        with self.lock:
            self.got += [(generation, pid) for _, _, pid in pubs]

    def full(self) -> bool:
        return self.hold is not None and len(self.got) >= self.hold

    def ack_until(self, n: int, timeout: float = 20.0) -> int:
        """Ack what arrives until n are acked (or the time is up); returns how many."""
        done = 0
        deadline = time.monotonic() + timeout
        while done < n and time.monotonic() < deadline:
            done += self.ack_all()
            time.sleep(0.05)
        return done

    def ack_all(self) -> int:
        with self.lock:
            taken, self.got = self.got, []
        for gen in {g for g, _ in taken}:
            self.session.ack([p for g, p in taken if g == gen], gen)
        return len(taken)


def test_the_local_bound_stops_reading_even_when_the_broker_would_send_more(workdir: Path) -> None:
    with Mosquitto(workdir / "broker") as broker:
        r = Receiver(broker.port, receive_maximum=20_000, hold=1000)
        r.session.start()
        wait_until(lambda: r.session.subscribed, 10, what="subscribed")
        publish_bulk(broker.port, 5000, time.time() - 60, procs=1)
        wait_until(lambda: len(r.got) >= 1000, 10, what="the bound reached")
        time.sleep(1.0)  # the check itself: held at the bound, it reads no more while the broker has more to send
        held = len(r.got)
        assert 1000 <= held < 1000 + 3000, held  # one 1 MB read may overshoot by what it carried
        r.hold = None  # room again: reading resumes
        r.session._wake()
        assert r.ack_until(5000) == 5000
        r.session.stop()


def test_a_resumed_session_delivers_what_was_queued_and_unacked_messages_again(workdir: Path) -> None:
    with Mosquitto(workdir / "broker") as broker:
        r = Receiver(broker.port, receive_maximum=100)
        r.session.start()
        wait_until(lambda: r.session.subscribed, 10, what="subscribed")
        r.session.stop()
        publish_bulk(broker.port, 300, time.time() - 60, procs=1)  # queued for the offline session
        r2 = Receiver(broker.port, receive_maximum=100)
        r2.session.start()
        wait_until(lambda: len(r2.got) >= 100, 10, what="the first window")
        time.sleep(0.5)  # the check itself: with the window full and nothing acked, the broker sends nothing more
        assert len(r2.got) == 100  # Receive Maximum: nothing more until we ack
        first = list(r2.got)
        r2.session.stop()  # without acking: the broker must send the same 100 again
        r3 = Receiver(broker.port, receive_maximum=100)
        r3.session.start()
        wait_until(lambda: len(r3.got) >= 100, 10, what="the redelivered window")
        assert {p for _, p in r3.got[:100]} == {p for _, p in first}
        assert r3.ack_until(300) == 300
        assert r3.session.ack([1], generation=r3.session.generation - 1) is False  # an ack for a past connection is refused
        r3.session.stop()
