"""The over-the-air contract: offers, chunk topics, the `ota` report in status, and the
platform's release pieces (messages, cohorts, rollout view)."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from api import releases
from contract import ota, topics
from contract.status import StatusError, encode_status, parse_status

SHA = hashlib.sha256(b"x").hexdigest()


def test_offer_is_checked_and_bounded() -> None:
    raw = ota.encode_offer(3, "0.4.0", [("app.mpy", SHA, 1)])
    assert ota.check_offer(orjson.loads(raw))["id"] == 3
    with pytest.raises(ota.OtaError, match=r"app\.mpy"):
        ota.encode_offer(3, "0.4.0", [("ota.mpy", SHA, 1)])
    with pytest.raises(ota.OtaError, match="each file"):
        ota.encode_offer(3, "0.4.0", [("app.mpy", SHA, 1), ("../x.mpy", SHA, 1)])
    with pytest.raises(ota.OtaError, match="bytes"):  # too many files for one offer the firmware reads
        ota.encode_offer(3, "0.4.0", [("app.mpy", SHA, 1)] + [(f"m{i:03d}.mpy", SHA, 1) for i in range(60)])


def test_chunk_topics_are_content_addressed_and_checked() -> None:
    assert topics.firmware_chunk_topic(SHA, 2) == f"nakhon/fw/{SHA}/2"
    for bad in ("abc", SHA.upper(), SHA + "0"):
        with pytest.raises(topics.TopicError):
            topics.firmware_chunk_topic(bad, 0)
    assert ota.split(b"abcdefghij", 4) == [b"abcd", b"efgh", b"ij"] and ota.split(b"", 4) == [b""]


def test_status_carries_the_last_update_as_fields() -> None:
    doc = parse_status(encode_status("online", fw="0.4.0", ota={"id": 3, "fw": "0.4.0", "state": "rolled_back", "reason": "no publish in 3 boots"}))
    assert doc["ota_id"] == 3.0 and doc["ota_state"] == "rolled_back" and doc["ota_reason"] == "no publish in 3 boots" and doc["ota_fw"] == "0.4.0"
    for bad in ({"id": 3, "fw": "0.4.0", "state": "done"}, {"id": 3, "fw": "0.4.0", "state": "updated", "why": "x"},
                {"id": 3, "fw": "0.4.0", "state": "refused", "reason": "x" * 65}, {"id": "3", "fw": "0.4.0", "state": "updated"}, "updated"):
        with pytest.raises(StatusError, match="ota"):
            parse_status(encode_status("online", ota=bad))


def test_release_messages_put_files_first_once_each_then_one_offer_per_device() -> None:
    files = {"app.mpy": b"a" * 2500, "drivers/pm.mpy": b"p" * 10, "same.mpy": b"a" * 2500}
    msgs = releases.messages(files, 5, "0.5.0", [("chiang_mai", "cm-air-001"), ("phuket", "pk-air-002")], chunk=1024)
    chunk_topics = [t for t, _ in msgs if t.startswith("nakhon/fw/")]
    # app.mpy and same.mpy share their content: its 3 chunks are published once
    assert len(chunk_topics) == len(set(chunk_topics)) == 3 + 1
    assert [t for t, _ in msgs[-2:]] == ["nakhon/v1/chiang_mai/cm-air-001/ota", "nakhon/v1/phuket/pk-air-002/ota"]
    prefix = f"nakhon/fw/{hashlib.sha256(files['app.mpy']).hexdigest()}/"
    assert b"".join([p for t, p in msgs if t.startswith(prefix)]) == files["app.mpy"]


def test_cohorts_by_ids_city_share_and_all() -> None:
    fleet = [("chiang_mai", f"cm-{i:03d}") for i in range(40)] + [("phuket", f"pk-{i:03d}") for i in range(60)]
    assert releases.cohort(fleet, ["pk-001", "cm-002"]) == [("chiang_mai", "cm-002"), ("phuket", "pk-001")]
    with pytest.raises(ValueError, match="unknown devices"):
        releases.cohort(fleet, ["xx-001"])
    assert len(releases.cohort(fleet, city="phuket")) == 60 and len(releases.cohort(fleet)) == 100
    first = releases.cohort(fleet, city="phuket", share=10)
    second = releases.cohort(fleet, city="phuket", share=50)
    assert len(first) == 6 and len(second) == 30 and set(first) <= set(second)  # a wider wave keeps the first
    with pytest.raises(ValueError):
        releases.cohort(fleet, share=0)


def test_rollout_view_counts_states_and_keeps_reasons() -> None:
    status = {"a-001": {"fw": "0.5.0", "ota_id": 5.0, "ota_state": "updated"},
              "a-002": {"fw": "0.4.0", "ota_id": 5.0, "ota_state": "rolled_back", "ota_reason": "no publish in 3 boots"},
              "a-003": {"fw": "0.4.0", "ota_id": 4.0, "ota_state": "updated"},
              "a-004": {"fw": "0.5.0"}}
    r = releases.rollout(["a-001", "a-002", "a-003", "a-004", "a-005"], "0.5.0", 5, status)
    assert r["counts"] == {"updated": 2, "rolled_back": 1, "pending": 2}
    assert r["devices"][1] == {"device": "a-002", "state": "rolled_back", "fw": "0.4.0", "reason": "no publish in 3 boots"}
