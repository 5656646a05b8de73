"""A peer pipeline for `nakhon bench`: Node-RED doing the ingest's job.

The flow is what a Node-RED user would build for the same contract:

    mqtt in (QoS 1, persistent session, nakhon/v1/+/+/telemetry)
      -> json -> function (contract payload -> `air` and `weather` points)
      -> influxdb batch (node-red-contrib-influxdb, InfluxDB 1.x, ms precision)

The function node batches (flush at 5,000 points or every second), so the
database sees the same batch size as the ingest's. Node-RED acknowledges an
MQTT message when it arrives, not when its point is stored, so what it loses
is counted: stored vs sent, from InfluxDB.

Node-RED is not a dependency of the project: on first use it is installed with
npm (`node-red@4`, which runs on Node.js 20, and `node-red-contrib-influxdb`)
into a cache folder outside the source tree, reused by later runs.

    python -m harness.bench.peer --messages 100000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from contract import storage
from contract.influx import Influx
from harness.bench.ingest import Figure, publish_bulk
from harness.procstat import cpu_seconds
from harness.progress import say as say_line
from nakhon.servers import InfluxDB, Mosquitto, _Process, free_port

NODE_RED_SPEC = "node-red@4"  # 5.x needs Node.js 22; this machine and CI have 20
INFLUX_NODES_SPEC = "node-red-contrib-influxdb@0.7"
TOPIC_FILTER = "nakhon/v1/+/+/telemetry"
BATCH_POINTS = 5000
FLUSH_MS = 1000
CONNECTED_MARK = "nakhon-peer: connected"


def _say(msg: str) -> None:
    say_line(msg, who="peer")


# --- install ---------------------------------------------------------------


def node_red_home() -> Path:
    """Where Node-RED is installed: NAKHON_NODE_RED_DIR, else the user's cache."""
    env = os.environ.get("NAKHON_NODE_RED_DIR")
    if env:
        return Path(env).expanduser().resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "nakhon" / "node-red"


def _installed(home: Path) -> bool:
    try:
        pkg = json.loads((home / "node_modules" / "node-red" / "package.json").read_text())
    except (OSError, ValueError):
        return False
    return str(pkg.get("version", "")).startswith("4.") and (home / "node_modules" / "node-red-contrib-influxdb" / "package.json").is_file()


def ensure_node_red(home: Path | None = None) -> Path:
    """Install Node-RED and the InfluxDB nodes on first use; returns red.js."""
    home = home or node_red_home()
    red = home / "node_modules" / "node-red" / "red.js"
    if _installed(home):
        return red
    npm = shutil.which("npm")
    if not npm or not shutil.which("node"):
        raise RuntimeError("the Node-RED peer needs node and npm (Node.js 20): ./dev installs them, or apt-get install nodejs npm")
    home.mkdir(parents=True, exist_ok=True)
    pkg = home / "package.json"
    if not pkg.exists():  # keeps npm from walking up to some other package.json
        pkg.write_text(json.dumps({"name": "nakhon-peer-node-red", "private": True}) + "\n")
    _say(f"installing {NODE_RED_SPEC} and {INFLUX_NODES_SPEC} into {home} (first use only)")
    cmd = [npm, "install", "--no-audit", "--no-fund", "--omit=dev", "--loglevel=http", NODE_RED_SPEC, INFLUX_NODES_SPEC]
    proc = subprocess.run(cmd, cwd=home, stdout=sys.stderr, stderr=sys.stderr)
    if proc.returncode != 0 or not _installed(home):
        raise RuntimeError(f"npm install of Node-RED failed (exit {proc.returncode}) in {home}")
    _say("Node-RED installed")
    return red


# --- flow (pure) -----------------------------------------------------------

# Node ids are fixed so a flow file can be compared and diffed.
TAB_ID = "harness.bench.peer.tab"
BROKER_ID = "harness.bench.peer.broker"
MQTT_IN_ID = "harness.bench.peer.mqtt-in"
JSON_ID = "harness.bench.peer.json"
FUNCTION_ID = "harness.bench.peer.map"
INFLUX_CONFIG_ID = "harness.bench.peer.influxdb"
INFLUX_OUT_ID = "harness.bench.peer.influx-batch"

# The mapping of one contract reading to points, as node-red-contrib-influxdb's
# batch node takes them ({measurement, tags, fields, timestamp}). The 1.x client
# writes every JS number as a float; `seq` is an integer field in Nakhon's schema,
# so it goes as an object whose string form is line protocol's `42i`.
_MAP_JS = """\
const p = msg.payload;
if (!p || p.v !== 1 || typeof p.m !== "object" || p.m === null || typeof p.ts !== "number") {
    node.warn("rejected: not a contract v1 reading");
    return null;
}
const parts = msg.topic.split("/");  // nakhon/v1/<city>/<device>/telemetry
const tags = {city: parts[2], device: parts[3]};
const ts = Math.round(p.ts * 1000);
const seq = new st.Int(p.seq);
const m = p.m;
const pts = [];
if (m.pm25 !== undefined || m.pm10 !== undefined) {
    const f = {seq: seq};
    if (m.pm25 !== undefined) f.pm25 = +m.pm25;
    if (m.pm10 !== undefined) f.pm10 = +m.pm10;
    pts.push({measurement: "air", tags: tags, fields: f, timestamp: ts});
}
if (m.temp_c !== undefined || m.rh !== undefined) {
    const f = {seq: seq};
    if (m.temp_c !== undefined) f.temp_c = +m.temp_c;
    if (m.rh !== undefined) f.rh = +m.rh;
    pts.push({measurement: "weather", tags: tags, fields: f, timestamp: ts});
}
"""

_BATCHED_JS = (
    'const st = context.get("st");\n'
    + _MAP_JS
    + """\
for (const pt of pts) st.buf.push(pt);
if (st.buf.length >= st.max) st.flush();
return null;
"""
)

_UNBATCHED_JS = 'const st = context.get("st");\n' + _MAP_JS + "return pts.length ? {payload: pts} : null;\n"

_INIT_JS = """\
class Int {
    constructor(v) { this.v = v; }
    toString() { return this.v + "i"; }
}
const st = {buf: [], max: %(max)d, Int: Int, timer: null};
// send without Node-RED's deep clone of the whole batch: nothing else holds it
st.flush = function () {
    if (st.buf.length) {
        const batch = st.buf;
        st.buf = [];
        node.send({payload: batch}, false);
    }
};
if (%(batched)s) st.timer = setInterval(st.flush, %(flush_ms)d);
context.set("st", st);
"""

_FINAL_JS = """\
const st = context.get("st");
if (st && st.timer) clearInterval(st.timer);
"""


def tab_node() -> dict[str, Any]:
    return {"id": TAB_ID, "type": "tab", "label": "nakhon peer", "disabled": False, "info": "Nakhon benchmark peer: MQTT -> InfluxDB"}


def broker_node(port: int, client_id: str, host: str = "127.0.0.1") -> dict[str, Any]:
    """MQTT 3.1.1, persistent session (clean session off), kept subscribed when stopped."""
    return {
        "id": BROKER_ID,
        "type": "mqtt-broker",
        "name": "nakhon broker",
        "broker": host,
        "port": str(port),
        "clientid": client_id,
        "autoConnect": True,
        "usetls": False,
        "protocolVersion": "4",
        "keepalive": "60",
        "cleansession": False,
        # Node-RED 3.1+ unsubscribes on stop by default, which empties a persistent session.
        "autoUnsubscribe": False,
        "birthTopic": "",
        "closeTopic": "",
        "willTopic": "",
    }


def mqtt_in_node(topic: str = TOPIC_FILTER) -> dict[str, Any]:
    return {
        "id": MQTT_IN_ID,
        "type": "mqtt in",
        "z": TAB_ID,
        "name": "telemetry",
        "topic": topic,
        "qos": "1",
        "datatype": "utf8",
        "broker": BROKER_ID,
        "nl": False,
        "rap": True,
        "rh": 0,
        "inputs": 0,
        "x": 120,
        "y": 80,
        "wires": [[JSON_ID]],
    }


def json_node() -> dict[str, Any]:
    return {
        "id": JSON_ID,
        "type": "json",
        "z": TAB_ID,
        "name": "",
        "property": "payload",
        "action": "obj",
        "pretty": False,
        "x": 290,
        "y": 80,
        "wires": [[FUNCTION_ID]],
    }


def function_node(batched: bool = True, batch_points: int = BATCH_POINTS, flush_ms: int = FLUSH_MS) -> dict[str, Any]:
    """Contract payload -> points; batched: accumulate, flush at `batch_points` or every `flush_ms`."""
    init = _INIT_JS % {"max": batch_points, "batched": "true" if batched else "false", "flush_ms": flush_ms}
    return {
        "id": FUNCTION_ID,
        "type": "function",
        "z": TAB_ID,
        "name": f"contract -> points ({'batched' if batched else 'one write per message'})",
        "func": _BATCHED_JS if batched else _UNBATCHED_JS,
        "outputs": 1,
        "timeout": 0,
        "noerr": 0,
        "initialize": init,
        "finalize": _FINAL_JS,
        "libs": [],
        "x": 470,
        "y": 80,
        "wires": [[INFLUX_OUT_ID]],
    }


def influx_config_node(influx_url: str, database: str) -> dict[str, Any]:
    url = urlsplit(influx_url)
    return {
        "id": INFLUX_CONFIG_ID,
        "type": "influxdb",
        "hostname": url.hostname or "127.0.0.1",
        "port": str(url.port or 8086),
        "protocol": url.scheme or "http",
        "database": database,
        "name": "nakhon influxdb",
        "usetls": url.scheme == "https",
        "tls": "",
        "influxdbVersion": "1.x",
        "url": influx_url,
        "timeout": "10",
        "rejectUnauthorized": True,
    }


def influx_batch_node(rp: str = storage.RP_RAW, precision: str = storage.PRECISION) -> dict[str, Any]:
    return {
        "id": INFLUX_OUT_ID,
        "type": "influxdb batch",
        "z": TAB_ID,
        "influxdb": INFLUX_CONFIG_ID,
        "precision": precision,
        "retentionPolicy": rp,
        "name": "influxdb batch",
        "database": "",
        "precisionV18FluxV20": precision,
        "retentionPolicyV18Flux": "",
        "org": "",
        "bucket": "",
        "x": 700,
        "y": 80,
        "wires": [],
    }


def build_flow(
    broker_port: int,
    influx_url: str,
    database: str = storage.DATABASE,
    *,
    client_id: str = "nakhon-peer",
    batched: bool = True,
    rp: str = storage.RP_RAW,
    batch_points: int = BATCH_POINTS,
    flush_ms: int = FLUSH_MS,
) -> list[dict[str, Any]]:
    """The whole flow file: mqtt in -> json -> function -> influxdb batch, plus config nodes."""
    return [
        tab_node(),
        mqtt_in_node(),
        json_node(),
        function_node(batched, batch_points, flush_ms),
        influx_batch_node(rp),
        broker_node(broker_port, client_id),
        influx_config_node(influx_url, database),
    ]


def settings_js(user_dir: Path, ui_port: int) -> str:
    """Headless settings: no editor or admin API, warnings only, plus one line when MQTT connects."""
    return f"""// Generated by harness.bench.peer for the benchmark; rewritten on every run.
module.exports = {{
    userDir: {json.dumps(str(user_dir))},
    flowFile: "flows.json",
    credentialSecret: false,
    uiHost: "127.0.0.1",
    uiPort: {ui_port},
    httpAdminRoot: false,
    httpNodeRoot: false,
    disableEditor: true,
    diagnostics: {{enabled: false, ui: false}},
    runtimeState: {{enabled: false, ui: false}},
    telemetry: {{enabled: false}},
    functionExternalModules: false,
    contextStorage: {{default: {{module: "memory"}}}},
    logging: {{
        console: {{level: "warn", metrics: false, audit: false}},
        // the benchmark times from the moment the flow is connected to the broker
        nakhon: {{
            level: "info", metrics: false, audit: false,
            handler: function () {{
                return function (msg) {{
                    if (msg.type === "mqtt-broker" && /^Connected to broker/.test(msg.msg)) console.log({json.dumps(CONNECTED_MARK)});
                }};
            }}
        }}
    }}
}};
"""


# --- running it ------------------------------------------------------------


class NodeRed(_Process):
    """Node-RED as a child process with a generated settings.js and flows.json (started, stopped as the servers are)."""

    name = "node-red"

    def __init__(self, red_js: Path, user_dir: Path, flow: list[dict[str, Any]]) -> None:
        super().__init__(user_dir)
        self.red_js = red_js
        self.user_dir = self.root
        self.flow = flow
        self.started_at = 0.0

    def _write_config(self) -> None:
        (self.user_dir / "flows.json").write_text(json.dumps(self.flow, indent=1) + "\n")
        (self.user_dir / "settings.js").write_text(settings_js(self.user_dir, free_port()))
        self.started_at = time.perf_counter()  # the process starts right after this

    def _command(self) -> list[str]:
        return ["node", str(self.red_js), "--settings", str(self.user_dir / "settings.js"), "--userDir", str(self.user_dir)]

    def _ready(self, timeout: float) -> bool:
        return self.running  # ready means connected to the broker: wait_connected() times that

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_connected(self, timeout: float = 60.0, seen: int = 0) -> float:
        """Seconds from start to the (seen+1)-th broker connection; raises if it does not come."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_text().count(CONNECTED_MARK) > seen:
                return time.perf_counter() - self.started_at
            if self.proc is None or self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"Node-RED did not connect to the broker; log tail:\n{self.log_text()[-2000:]}")

    def open_connections(self, port: int) -> int:
        """TCP connections of the node process to 127.0.0.1:`port` (its open InfluxDB writes)."""
        if self.proc is None:
            return 0
        pid = self.proc.pid
        inodes = set()
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
        count = 0
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                    cols = line.split()
                    # remote address hex "ADDR:PORT", state 0A = listening
                    if int(cols[2].rsplit(":", 1)[1], 16) == port and cols[3] != "0A" and cols[9] in inodes:
                        count += 1
        return count

    def cpu_seconds(self) -> float:
        """user+sys CPU of the node process (from /proc)."""
        return cpu_seconds(self.proc.pid) if self.proc is not None else 0.0


def _count(db: Influx, rp: str, measurement: str, field: str, t0_ms: int, n: int) -> int:
    """Points of one run (its time range only: runs use disjoint ranges)."""
    q = f'SELECT count("{field}") FROM "{rp}"."{measurement}" WHERE time >= {t0_ms}ms AND time < {t0_ms + n + 1000}ms'
    rows = db.rows(q)
    return int(rows[0]["count"]) if rows else 0


def _error_kinds(log: str) -> str:
    """Node-RED's error lines by message, most frequent first: '3 x Error: No host available'."""
    kinds = Counter(line.split("] ", 2)[-1].strip() for line in log.splitlines() if "[error]" in line)
    return ", ".join(f"{c} x {k}" for k, c in kinds.most_common(3)) or "no errors logged"


def _drop_session(port: int, client_id: str) -> None:
    """Discard a persistent session so the broker stops queueing for it."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    c.connect("127.0.0.1", port)
    c.loop_start()
    time.sleep(0.2)
    c.disconnect()
    c.loop_stop()


def run_peer(
    red_js: Path,
    root: Path,
    broker_port: int,
    influx_url: str,
    database: str,
    n: int,
    *,
    batched: bool,
    t0: float,
    rp: str = storage.RP_RAW,
    stall: float = 20.0,
    timeout: float = 900.0,
) -> dict[str, Any]:
    """One run: create the flow's session, queue n messages for it, start it and wait for the count."""
    name = "batched" if batched else "unbatched"
    client_id = f"nakhon-peer-{name}"
    flow = build_flow(broker_port, influx_url, database, client_id=client_id, batched=batched, rp=rp)
    t0_ms = round(t0 * 1000)
    red = NodeRed(red_js, root / f"node-red-{name}", flow)
    with Influx(influx_url, database=database) as db:
        # first start: creates the persistent session and subscription, as bench_ingest does for the ingest
        with red:
            startup = red.wait_connected()
            time.sleep(1.0)
        _say(f"{name}: Node-RED connects {startup:.1f}s after start; queueing {n} messages for its session")
        publish_bulk(broker_port, n, t0)
        red.start()
        started = red.started_at
        try:
            connected = red.started_at + red.wait_connected(seen=1)
            influx_port = urlsplit(influx_url).port or 8086
            got = last = 0
            changed = quiet_since = time.perf_counter()
            last_log = changed
            cpu_before = red.cpu_seconds()
            while got < n:
                now = time.perf_counter()
                if now - quiet_since > stall or now - started > timeout:
                    break
                if now - last_log > 5:
                    last_log = now
                    _say(f"  {name}: {got}/{n} stored")
                time.sleep(0.25)
                got = _count(db, rp, "air", "pm25", t0_ms, n)
                cpu_now = red.cpu_seconds()
                # still working: InfluxDB's count moves, or Node-RED computes or has writes open
                # (a write can wait 30 s for InfluxDB and be retried: the count alone would stall early)
                busy = got != last or cpu_now - cpu_before > 0.05 or red.open_connections(influx_port) > 0
                cpu_before = cpu_now
                if got != last:
                    last, changed = got, time.perf_counter()
                if busy:
                    quiet_since = time.perf_counter()
            done = changed
            cpu = red.cpu_seconds()
            time.sleep(1.5)  # a write still in flight is stored, not lost
            air = _count(db, rp, "air", "pm25", t0_ms, n)
            weather = _count(db, rp, "weather", "temp_c", t0_ms, n)
        finally:
            red.stop()
        _drop_session(broker_port, client_id)
    log = red.log_text()
    return {
        "sent": n,
        "stored": min(air, weather),
        "air": air,
        "weather": weather,
        "secs": done - started,
        "secs_connected": done - connected,
        "startup": connected - started,
        "cpu": cpu,
        "errors": _error_kinds(log),
        "stalled": air < n,
    }


def bench_peer(
    broker_port: int,
    influx_url: str,
    database: str = storage.DATABASE,
    n: int = 100_000,
    *,
    root: Path,
    burst: int = 0,
    rp: str = storage.RP_RAW,
    stall: float = 20.0,
    node_red_dir: Path | None = None,
) -> list[Figure]:
    """Node-RED as a peer of the ingest, against a running broker and InfluxDB (schema already made).

    Batched run: n messages queued for its persistent session, then readings/s
    from Node-RED's MQTT connect (its start-up is not throughput) until the count in InfluxDB reaches n (or stops
    growing for `stall` s while Node-RED is idle), stored vs sent and CPU. With `burst` > 0, the
    one-write-per-message flow on a queued burst of that many messages: how
    many are lost. Runs use disjoint time ranges, so one database serves both.
    """
    red_js = ensure_node_red(node_red_dir)
    root = Path(root).resolve()
    now = float(int(time.time()))  # whole seconds: each run's time range is exact to the millisecond
    b = run_peer(red_js, root, broker_port, influx_url, database, n, batched=True, t0=now - 3600, rp=rp, stall=stall)
    lost = b["sent"] - b["stored"]
    figs = [
        Figure(
            f"Node-RED peer (mqtt in -> json -> function -> influxdb batch, {BATCH_POINTS:,}-point batches)",
            b["stored"] / b["secs_connected"],
            "readings/s",
            f"{b['stored']} of {n} stored in {b['secs_connected']:.2f}s from its MQTT connect"
            f" ({b['stored'] / b['secs']:,.0f}/s counting its {b['startup']:.1f}s start-up)"
            + (f"; stopped: no progress and Node-RED idle for {stall:.0f}s" if b["stalled"] else ""),
        ),
        Figure(
            "Node-RED peer readings lost (batched)",
            lost,
            "readings",
            f"sent {n}, stored {b['stored']} (air {b['air']}, weather {b['weather']}); {b['errors']}",
        ),
        Figure("Node-RED peer CPU per 100,000 readings", b["cpu"] / max(1, n) * 100_000, "cpu-s", "user+sys of the node process"),
    ]
    if burst:
        u = run_peer(red_js, root, broker_port, influx_url, database, burst, batched=False, t0=now - 3 * 3600, rp=rp, stall=stall)
        ulost = u["sent"] - u["stored"]
        figs.append(
            Figure(
                f"Node-RED peer unbatched (one write of 2 points per message), {burst:,}-message burst: readings lost",
                ulost,
                "readings",
                f"{u['stored']} of {burst} stored ({100 * ulost / burst:.1f}% lost) in {u['secs']:.0f}s; {u['errors']}",
            )
        )
    return figs


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.bench.peer",
        description="Benchmark peer: Node-RED (mqtt in -> json -> function -> influxdb batch) doing the ingest's job, "
        "with its own Mosquitto and InfluxDB. Installs Node-RED with npm on first use (outside the source tree).",
    )
    ap.add_argument("--messages", type=int, default=100_000, help="queued messages for the batched run (default 100000)")
    ap.add_argument("--burst", type=int, default=200_000, help="queued burst for the one-write-per-message run; 0 skips it (default 200000)")
    ap.add_argument("--root", default="var/peer-bench", help="working folder for servers and Node-RED user dirs, emptied first (default var/peer-bench)")
    ap.add_argument(
        "--stall",
        type=float,
        default=20.0,
        help="seconds without progress in InfluxDB while Node-RED is idle (no CPU, no open writes) that end a run (default 20)",
    )
    ap.add_argument("--node-red-dir", default=None, help="Node-RED install folder (default $NAKHON_NODE_RED_DIR or ~/.cache/nakhon/node-red)")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    red_dir = Path(args.node_red_dir).resolve() if args.node_red_dir else None
    ensure_node_red(red_dir)
    with Mosquitto(root / "broker") as broker, InfluxDB(root / "influxdb") as server, Influx(server.url) as db:
        db.ensure_schema()
        figs = bench_peer(broker.port, server.url, storage.DATABASE, args.messages, root=root, burst=args.burst, stall=args.stall, node_red_dir=red_dir)
    lines = ["| measure | value | unit | note |", "| --- | ---: | --- | --- |"]
    lines += [f"| {f.name} | {f.value:,.{0 if abs(f.value) >= 100 or f.value == int(f.value) else 1}f} | {f.unit} | {f.note} |" for f in figs]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
