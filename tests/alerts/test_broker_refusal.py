"""A broker that refuses the evaluator's alert publishes (an account without the right): retried and said, never taken as sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from alerts.deliver import Retry
from alerts.rules import RuleBook
from alerts.service import AlertService
from alerts.store import Item
from api.broker import mosquitto_config, write_bootstrap
from contract.settings import load_settings
from nakhon.servers import Mosquitto, free_port
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

PW = "alerts-secret-for-tests-0123"


def test_a_refused_publish_is_retried_not_taken_as_delivered(tmp_path: Path) -> None:
    dynsec = tmp_path / "mosquitto" / "dynamic-security.json"
    # the evaluator's account exists, but with the observer's role: it may read everything and publish nothing
    write_bootstrap(dynsec, ("nakhon_api", "admin-secret-for-tests-0123"), ("nakhon_ingest", "ingest-secret-for-tests-0123"),
                    observer=("nakhon_alerts", PW))
    with Mosquitto(tmp_path / "mosquitto", allow_anonymous=False, extra=mosquitto_config(dynsec)) as broker:
        settings = load_settings(mqtt_port=broker.port, mqtt_username="nakhon_alerts", mqtt_password=PW, data_dir=tmp_path / "data",
                                 influx_url=f"http://127.0.0.1:{free_port()}", influx_timeout_s=1.0)
        service = AlertService(settings, RuleBook())
        service.client.connect(settings.mqtt_host, settings.mqtt_port)
        service.client.loop_start()
        try:
            wait_until(lambda: service.connected, timeout=30, what="connected")
            item = Item(1, "e1", "mqtt", b'{"city": "phuket", "id": "e1"}', 0.0, 0, 0.0)
            with pytest.raises(Retry, match="refused"):
                service._publish([item])
        finally:
            service.client.disconnect()
            service.client.loop_stop()
            service.store.close()
