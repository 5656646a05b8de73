"""`nakhon dashboards` commands, and how push decides what to change."""

from __future__ import annotations

import copy

import pytest

from dashboards import build, datasource, push
from nakhon.cli import main


@pytest.mark.integration  # node and Grafana's schema
def test_check_command_passes_on_the_committed_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboards", "check"]) == 0
    assert "dashboards: ok" in capsys.readouterr().out


def test_push_without_credentials_says_what_to_set(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GRAFANA_TOKEN", "GRAFANA_USER", "GRAFANA_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    assert main(["dashboards", "push", "--url", "http://127.0.0.1:9"]) == 2
    assert "GRAFANA_TOKEN" in capsys.readouterr().err


def test_push_leaves_an_unchanged_dashboard_alone() -> None:
    model = build.dashboards()["fleet-health.json"]
    stored = {**copy.deepcopy(model), "id": 42, "version": 7}  # as Grafana returns it after a save
    assert push.same_dashboard(stored, model)
    stored["panels"][1]["title"] = "edited in the UI"
    assert not push.same_dashboard(stored, model)
    assert not push.same_dashboard(None, model)


def test_push_updates_a_datasource_only_when_ours_differs() -> None:
    wanted = push.datasource_for("http://influxdb:8086", "nakhon", None)
    stored = {**wanted, "id": 3, "orgId": 1, "version": 2, "readOnly": False,
              "jsonData": {**wanted["jsonData"], "keepCookies": []}}  # Grafana adds its own keys
    assert push.same_datasource(stored, wanted)
    assert not push.same_datasource({**stored, "url": "http://other:8086"}, wanted)
    assert not push.same_datasource({**stored, "jsonData": {**stored["jsonData"], "dbName": "other"}}, wanted)
    assert wanted["uid"] == datasource.UID
