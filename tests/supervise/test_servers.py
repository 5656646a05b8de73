"""The servers the project starts: a port of their own taken meanwhile is picked again; a port clients were told is not."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from nakhon.servers import InfluxDB, ServerError, free_port

pytestmark = pytest.mark.integration


def _held() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_influxdb_picks_another_backup_port_when_its_own_was_taken(workdir: Path) -> None:
    with _held() as taken:
        server = InfluxDB(workdir / "influxdb", rpc_port=taken.getsockname()[1])
        try:
            server.start()
            assert server.rpc_port != taken.getsockname()[1]
            assert httpx.get(f"{server.url}/ping", timeout=5).status_code == 204
        finally:
            server.stop()


def test_influxdb_fails_at_once_with_its_reason_when_the_http_port_is_taken(workdir: Path) -> None:
    with _held() as taken:
        server = InfluxDB(workdir / "influxdb", port=taken.getsockname()[1], rpc_port=free_port())
        with pytest.raises(ServerError, match=r"(?s)exited.*address already in use"):
            server.start(timeout=120)  # it exits: the error comes long before the timeout
