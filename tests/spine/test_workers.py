"""Scale-out and shutdown: N workers on the shared subscription; SIGTERM flushes."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from contract.influx import Influx
from contract.settings import Settings
from harness.verify.stream import Stream, tally, wait_stored
from ingest.catch import broker_started
from ingest.session import Endpoint
from nakhon.servers import Mosquitto
from tests.conftest import start_ingest
from tests.helpers import count, wait_count, wait_until
from tests.spine.publisher import Publisher
from tests.spine.test_delivery import assert_exactly_once


def test_two_workers_share_the_stream(settings: Settings, workdir: Path, influx: Influx) -> None:
    svc = start_ingest(settings, workdir, workers=2)
    try:
        # both workers' subscriptions granted: the broker shares the stream only among members of the group
        for worker in ("nakhon_ingest_0", "nakhon_ingest_1"):
            assert svc.wait_log(f'"msg":"subscribed","client_id":"{worker}"', 30), worker
        pub = Publisher(settings.mqtt_port, per_city=10)
        try:
            pub.publish(200)
            assert pub.settle() == 6000
        finally:
            pub.close()
        assert wait_count(influx, "air", "pm25", 6000) == 6000
        assert_exactly_once(influx, pub)
        # both workers took a share: their own counters say so
        wait_until(lambda: len(influx.rows('SELECT last(points_written) FROM "raw"."ingest_stats" GROUP BY worker')) == 2, 20, what="stats of both workers")
        shares = [r["last"] for r in influx.rows('SELECT last(points_written) FROM "raw"."ingest_stats" GROUP BY worker')]
        assert all(s > 0 for s in shares), shares
    finally:
        assert svc.stop() == 0


def test_sigterm_flushes_and_acks_what_it_holds(workdir: Path, settings: Settings, influx: Influx) -> None:
    # a long batch window: whatever is pending at SIGTERM must be flushed by the shutdown itself
    slow = settings.model_copy(update={"ingest_batch_ms": 60_000, "ingest_batch_size": 100_000})
    svc = start_ingest(slow, workdir)
    pub = Publisher(settings.mqtt_port, per_city=2)
    try:
        t = threading.Thread(target=pub.publish, args=(300,), kwargs={"rate": 1000})
        t.start()
        t.join()
        assert svc.wait_log('"received":1800', 15), "the ingest did not receive the whole stream"
        assert count(influx, "air", "pm25") == 0  # nothing flushed yet: the window is a minute
        assert svc.stop() == 0
        assert count(influx, "air", "pm25") == 1800
        assert pub.settle() == 1800
    finally:
        pub.close()
    assert_exactly_once(influx, pub)


def test_two_workers_lose_nothing_across_broker_restarts(settings: Settings, workdir: Path, broker: Mosquitto, influx: Influx) -> None:
    """Mosquitto 2.0 forgets `$share` subscriptions when it restarts: what devices publish before the workers
    subscribe again has no subscriber. The catch session holds a plain subscription that the broker keeps."""
    svc = start_ingest(settings, workdir, workers=2)
    stream = Stream(settings.mqtt_port, 600, prefix="tw", devices=60)
    try:
        for worker in ("nakhon_ingest_0", "nakhon_ingest_1", "nakhon_ingest_catch"):
            assert svc.wait_log(f'"msg":"subscribed","client_id":"{worker}"', 30), worker
        stream.start()
        for fault in ("restart", "kill", "restart"):  # clean stop (state saved), SIGKILL (the last autosave restored)
            at = stream.sent
            wait_until(lambda at=at: stream.sent >= at + 1500, 60, what="the devices publishing")
            if fault == "kill":
                broker.kill()
                broker.start()
            else:
                broker.restart()
        wait_until(lambda: stream.sent >= at + 3000, 60, what="the devices publishing after the last restart")
        stream.stop()
        assert stream.settle() == 0
        assert wait_stored(influx, stream, stream.mark(), 120, quiet=20) is not None, tally(influx, stream)
        t = tally(influx, stream)
        assert (t.lost, t.duplicated, t.unexpected) == (0, 0, 0) and t.stored == stream.sent > 6000, t
        # the catch did cover: it stored what it received after a restart until a worker's mark (the gap among it)
        covered = [int(m) for m in re.findall(r'"msg":"catch session stands down[^\n]*"covered":(\d+)', svc.log_path.read_text())]
        assert len(covered) >= 2 and sum(covered) > 0, covered
    finally:
        stream.close()
        assert svc.stop() == 0


def test_the_catch_learns_when_the_broker_started(broker: Mosquitto) -> None:
    """Mosquitto says how long it has run ($SYS/broker/uptime, retained, every sys_interval): the catch judges marks by it."""
    e = Endpoint(host="127.0.0.1", port=broker.port, client_id="nakhon_ingest_catch", keepalive=30, session_expiry=0, receive_maximum=10)
    before = time.time()
    started = wait_until(lambda: broker_started(e), 30, what="the broker's uptime")
    assert started <= before + 1  # it started before we asked (the figure may be a few seconds old: later, never earlier)
    broker.restart()
    again = wait_until(lambda: broker_started(e), 30, what="the restarted broker's uptime")
    assert again > before  # a restart moves it on: marks from before it prove nothing
