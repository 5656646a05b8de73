"""The Node-RED peer's flow, built in Python: node types, wiring, ids, and the mapping code.

No Node-RED and no npm here: the flow is checked as data, and the function
node's JavaScript is run by plain `node` with a stand-in for Node-RED's
`node` and `context` objects.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path

import pytest

from contract import storage, topics
from contract.payload import encode_reading
from harness.bench import peer

CONFIG_TYPES = {"tab", "mqtt-broker", "influxdb"}


def _by_id(flow: list[dict]) -> dict[str, dict]:
    return {n["id"]: n for n in flow}


def test_flow_nodes_and_wiring() -> None:
    flow = peer.build_flow(18831, "http://127.0.0.1:18087", "nakhon", client_id="peer-x")
    nodes = _by_id(flow)
    assert len(nodes) == len(flow), "node ids are unique"
    assert sorted(n["type"] for n in flow) == sorted(["tab", "mqtt-broker", "mqtt in", "json", "function", "influxdb", "influxdb batch"])
    # the pipeline, in order, by fixed ids
    chain = [peer.MQTT_IN_ID, peer.JSON_ID, peer.FUNCTION_ID, peer.INFLUX_OUT_ID]
    assert [nodes[i]["type"] for i in chain] == ["mqtt in", "json", "function", "influxdb batch"]
    for src, dst in itertools.pairwise(chain):
        assert nodes[src]["wires"] == [[dst]]
    assert nodes[peer.INFLUX_OUT_ID]["wires"] == []
    for n in flow:
        if n["type"] not in CONFIG_TYPES:
            assert n["z"] == peer.TAB_ID
            assert all(target in nodes for out in n["wires"] for target in out)
    json.dumps(flow)  # a flow file is JSON


def test_flow_config_matches_the_ingest_job() -> None:
    nodes = _by_id(peer.build_flow(18831, "http://127.0.0.1:18087", "nakhon", client_id="peer-x"))
    mqtt_in = nodes[peer.MQTT_IN_ID]
    assert mqtt_in["topic"] == "nakhon/v1/+/+/telemetry" and mqtt_in["qos"] == "1"
    broker = nodes[mqtt_in["broker"]]
    assert (broker["broker"], broker["port"], broker["clientid"]) == ("127.0.0.1", "18831", "peer-x")
    assert broker["cleansession"] is False and broker["autoUnsubscribe"] is False  # a persistent session that survives a stop
    out = nodes[peer.INFLUX_OUT_ID]
    assert (out["precision"], out["retentionPolicy"]) == ("ms", storage.RP_RAW)
    cfg = nodes[out["influxdb"]]
    assert (cfg["hostname"], cfg["port"], cfg["database"], cfg["influxdbVersion"]) == ("127.0.0.1", "18087", "nakhon", "1.x")
    fn = nodes[peer.FUNCTION_ID]
    assert "max: 5000" in fn["initialize"] and "setInterval(st.flush, 1000)" in fn["initialize"]
    assert fn["func"] != peer.function_node(batched=False)["func"]


def test_settings_are_headless() -> None:
    text = peer.settings_js(Path("/srv/peer"), 19999)
    assert "httpAdminRoot: false" in text and "disableEditor: true" in text
    assert 'uiHost: "127.0.0.1"' in text and "uiPort: 19999" in text
    assert 'level: "warn"' in text and peer.CONNECTED_MARK in text


_HARNESS = """
const fn = JSON.parse(process.argv[1]);
const msgs = JSON.parse(process.argv[2]);
const store = {};
const context = {get: (k) => store[k], set: (k, v) => { store[k] = v; }};
const sent = [];
const node = {send: (m) => sent.push(m), warn: () => {}};
const setInterval = () => 0, clearInterval = () => {};
new Function("node", "context", "setInterval", fn.initialize)(node, context, setInterval);
const run = new Function("msg", "node", "context", fn.func);
for (const m of msgs) {
    const out = run({topic: m.topic, payload: JSON.parse(m.body)}, node, context);
    if (out) sent.push(out);
}
store.st.flush();
// render fields the way the 1.x client does: String(value)
const text = (fields) => Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, String(v)]));
const points = [].concat(...sent.map((m) => m.payload)).map((p) => ({...p, fields: text(p.fields)}));
process.stdout.write(JSON.stringify({sends: sent.length, points: points}));
"""


def _run_function(batched: bool, batch_points: int, readings: list[tuple[str, bytes]]) -> dict:
    fn = peer.function_node(batched=batched, batch_points=batch_points)
    msgs = [{"topic": t, "body": b.decode()} for t, b in readings]
    proc = subprocess.run(["node", "-e", _HARNESS, json.dumps(fn), json.dumps(msgs)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.integration  # node runs the peer's function
def test_function_maps_contract_payload_to_the_ingest_points() -> None:
    topic = topics.topic("phuket", "pkt-air-0001", "telemetry")
    readings = [(topic, encode_reading(1764000000.123 + i, 40 + i, {"pm25": 12.5, "pm10": 20.0, "temp_c": 30.1, "rh": 61.5})) for i in range(3)]
    readings.append((topics.topic("chiang_mai", "cnx-air-0002", "telemetry"), encode_reading(1764000100, 7, {"pm25": 3.0})))
    out = _run_function(True, 4, readings)
    assert out["sends"] == 2  # 7 points, 4 per batch: one full batch on the way, the other 3 at the timed flush
    points = out["points"]
    assert len(points) == 7
    tags = {"city": "phuket", "device": "pkt-air-0001"}
    assert points[0] == {"measurement": "air", "tags": tags, "fields": {"seq": "40i", "pm25": "12.5", "pm10": "20"}, "timestamp": 1764000000123}
    assert points[1] == {"measurement": "weather", "tags": tags, "fields": {"seq": "40i", "temp_c": "30.1", "rh": "61.5"}, "timestamp": 1764000000123}
    assert points[6] == {
        "measurement": "air",
        "tags": {"city": "chiang_mai", "device": "cnx-air-0002"},
        "fields": {"seq": "7i", "pm25": "3"},
        "timestamp": 1764000100000,
    }


@pytest.mark.integration  # node runs the peer's function
def test_unbatched_function_writes_once_per_message() -> None:
    topic = topics.topic("khon_kaen", "kkn-air-0003", "telemetry")
    readings = [(topic, encode_reading(1764000000 + i, i, {"pm25": 1.0, "rh": 50.0})) for i in range(5)]
    out = _run_function(False, 5000, readings)
    assert out["sends"] == 5 and len(out["points"]) == 10
