"""The bound on undelivered messages: with InfluxDB frozen, the ingest holds at most
`ingest_receive_maximum` messages and the rest wait at the broker, then all land once."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from contract.influx import Influx
from contract.settings import Settings
from nakhon.servers import InfluxDB
from tests.conftest import start_ingest
from tests.helpers import wait_count, wait_until
from tests.spine.publisher import Publisher
from tests.spine.test_delivery import assert_exactly_once


def stats(log: Path) -> list[dict[str, int]]:
    return [json.loads(line) for line in log.read_text().splitlines() if '"msg":"stats"' in line]


def test_a_frozen_database_holds_the_stream_at_the_broker_not_in_memory(settings: Settings, workdir: Path, influxdb: InfluxDB, influx: Influx) -> None:
    bounded = settings.model_copy(update={"ingest_receive_maximum": 600, "ingest_batch_size": 200, "influx_timeout_s": 60.0})
    svc = start_ingest(bounded, workdir)
    pub = Publisher(settings.mqtt_port, per_city=10)
    assert influxdb.pid
    os.kill(influxdb.pid, signal.SIGSTOP)  # writes hang: nothing the ingest holds can be acked
    try:
        pub.publish(100)  # 3,000 readings
        assert pub.settle() == 3000  # the broker took them all
        # the ingest fills up to its bound, then holds there: two more reports after it got there
        at = wait_until(lambda: next((i + 1 for i, r in enumerate(stats(svc.log_path)) if r["pending"] >= 600), 0), 30,
                        what="the ingest holding its bound")
        wait_until(lambda: len(stats(svc.log_path)) >= at + 2, 30, what="two stats reports at the bound")
        held = stats(svc.log_path)[-1]
        # received counts what was parsed; one read of the socket may complete the last segment
        assert 0 < held["pending"] <= 600 + 500, held
        assert held["received"] < 3000, held
    finally:
        os.kill(influxdb.pid, signal.SIGCONT)
        pub.close()
    try:
        assert wait_count(influx, "air", "pm25", 3000, timeout=90) == 3000
        assert_exactly_once(influx, pub)
        wait_until(lambda: stats(svc.log_path)[-1].get("pending") == 0, 10, what="nothing left pending")
    finally:
        assert svc.stop() == 0
