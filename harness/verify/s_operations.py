"""Scenarios 19-21: what operating the ingest brings (issue 13): restarts, rotated secrets, long outages.

19: two ingest workers on the shared subscription while the broker restarts
    cleanly and is SIGKILLed under a live stream: Mosquitto 2.0 forgets
    `$share` subscriptions, the catch session (ingest/catch.py) covers the
    gap; a control run with it off shows the gap.
20: the ingest's InfluxDB password rotated mid-stream, twice: first in
    InfluxDB and then in the file the ingest reads (it spools while refused
    and reads the file again by itself), then the other way round with
    SIGHUP (nothing refused at all).
21: a long outage's spool drained while live traffic keeps arriving: full
    size is 6 hours of the local fleet (`nakhon up`: 20 devices a city, one
    reading each 10 s) published while InfluxDB is down.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path

from contract.influx import Influx
from harness.verify.report import Row, Size
from harness.verify.scenarios import register
from harness.verify.stream import (
    Stream,
    free_settings,
    log_records,
    platform,
    rejected,
    say,
    sleep_until,
    tally,
    wait_stored,
)
from ingest.deadletter import read_all
from nakhon import accounts
from nakhon.procs import Service
from nakhon.servers import InfluxDB, Mosquitto, free_port

T19 = "two ingest workers while the broker restarts cleanly and is killed: the catch session covers the forgotten $share subscriptions"
T20 = "the ingest's InfluxDB password rotated mid-stream (in InfluxDB first, then in the file first with SIGHUP): nothing lost"
T21 = "a 6-hour outage's spool drained while live traffic keeps arriving: drain time and rate"

FLEET_RATE = 3 * 20 / 10.0  # readings/s of `nakhon up`'s simulated fleet: 20 devices a city, one reading each 10 s


def _covered(svc: Service) -> list[int]:
    """What the catch session stored before each stand-down (from the ingest's log)."""
    return [int(r.get("covered", 0)) for r in log_records(svc, "catch session stands down: a worker's shared subscription is in place")]


def _restarts(root: Path, size: Size, catch: bool, faults: tuple[str, ...], prefix: str) -> tuple[Row, list[float], list[int]]:
    """A stream through `faults` ("restart": clean, "kill": SIGKILL) with two workers; recovery after each."""
    rate, seg = (1000, 20.0) if size == "full" else (300, 3.0)
    row = Row(19, T19)
    recoveries: list[float] = []
    with platform(root, ingest_workers=2, ingest_share_catch=catch) as p, Influx(p.influxdb.url, timeout=120.0) as db:
        for who in ("nakhon_ingest_0", "nakhon_ingest_1") + (("nakhon_ingest_catch",) if catch else ()):
            if not p.ingest.wait_log(f'"msg":"subscribed","client_id":"{who}"', 60):
                raise RuntimeError(f"{who} did not subscribe; see {p.ingest.log_path}")
        stream = Stream(p.broker.port, rate, prefix=prefix).start()
        for i, fault in enumerate(faults):
            sleep_until(time.monotonic() + seg, "streaming")
            if fault == "kill":
                p.broker.kill()
                p.broker.start()
            else:
                p.broker.restart()
            back = stream.mark()
            say(f"  broker {'killed (SIGKILL) and started' if fault == 'kill' else 'restarted cleanly'} ({i + 1}/{len(faults)}) "
                f"after {back[1]:,} readings{'' if catch else '; no catch session'}")
            waited = wait_stored(db, stream, back, 60, what=f"recovery after fault {i + 1}", quiet=15.0)
            recoveries.append(-1.0 if waited is None else waited)
        sleep_until(time.monotonic() + seg, "streaming")
        stream.stop()
        unacked = stream.settle()
        wait_stored(db, stream, stream.mark(), 120, what="the rest", quiet=15.0)
        stream.close()
        t = tally(db, stream)
        row.rejected = rejected(p)
        covered = _covered(p.ingest)
    row.sent, row.stored, row.lost, row.duplicated, row.accepted_bad = t.sent, t.stored, t.lost, t.duplicated, t.unexpected
    row.figures["unacked"] = unacked
    return row, recoveries, covered


@register(19, T19)
def workers_across_restarts(root: Path, size: Size) -> Row:
    faults = ("restart", "kill", "restart", "kill", "restart", "kill") if size == "full" else ("restart", "kill")
    row, recoveries, covered = _restarts(root / "catch", size, True, faults, "s19")
    say("  control: the same with the catch session off, one clean restart")
    control, _, _ = _restarts(root / "control", size, False, ("restart",), "s19c")
    row.recovery_s = max(recoveries) if recoveries and min(recoveries) >= 0 else None
    row.figures = {
        "broker restarts": faults.count("restart"),
        "broker kills": faults.count("kill"),
        "stored by the catch": sum(covered),
        "catch stand-downs": len(covered),
        "recovery max s": round(max(recoveries), 1) if recoveries else -1.0,
        "unacked": row.figures["unacked"],
        "control (catch off) lost": control.lost,
        "control sent": control.sent,
    }
    row.ok = row.lost == 0 and row.duplicated == 0 and row.accepted_bad == 0 and row.figures["unacked"] == 0 and row.recovery_s is not None
    row.note = (
        "Two worker processes share the stream through `$share/nakhon_ingest/...`. Mosquitto 2.0 saves sessions and plain "
        "subscriptions, not shared ones: after each restart the workers' sessions come back without them, and what devices publish "
        "before a worker subscribes again has no subscriber. Worker 0's catch session (`nakhon_ingest_catch`, plain subscriptions, "
        "restored by the broker) stores what it receives from its connect until a worker's mark, published after that worker's "
        "SUBACK, reaches it; after it it acknowledges only. Duplicates of what both stored are the same point (0 duplicates counted). "
        f"The control run, catch off, lost {control.lost:,} of {control.sent:,} readings in one clean restart. A SIGKILL restores "
        "the last autosave: its queue re-delivers what was already stored, and the same timestamp overwrites."
    )
    return row


# --- 20: a rotated InfluxDB password ------------------------------------------------------------------


def _stats(svc: Service) -> dict[str, int]:
    """The latest of the ingest's counters, from its stats log lines."""
    last: dict[str, int] = {}
    for r in log_records(svc, "stats"):
        for k in ("influx_refused", "points_spooled", "points_written"):
            if isinstance(r.get(k), int):
                last[k] = r[k]
    return last


def _write_secret(path: Path, value: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    tmp.replace(path)  # whole or not at all: the ingest never reads half a password


@register(20, T20)
def credentials_rotated(root: Path, size: Size) -> Row:
    rate, before, gap, after = (500, 20.0, 30.0, 20.0) if size == "full" else (200, 2.0, 4.0, 3.0)
    row = Row(20, T20)
    root = Path(root).resolve()
    admin_pw = secrets.token_hex(16)
    passwords = {u: secrets.token_hex(16) for u in accounts.INFLUX_USERS}
    secret = root / "secrets" / "influx-ingest-password"
    secret.parent.mkdir(parents=True, exist_ok=True)
    _write_secret(secret, passwords[accounts.INFLUX_INGEST])
    broker = Mosquitto(root / "mosquitto", free_port())
    influxdb = InfluxDB(root / "influxdb", free_port(), free_port(), auth=True)
    ingest: Service | None = None
    try:
        broker.start()
        influxdb.start()
        settings = free_settings(mqtt_port=broker.port, influx_url=influxdb.url, data_dir=root / "data")
        accounts.init_influx(influxdb.url, settings.influx_db, admin_pw, passwords, settings.raw_retention, settings.hourly_retention)
        ingest = Service("ingest", ["ingest"], settings.model_copy(update={"influx_username": accounts.INFLUX_INGEST,
                                                                          "influx_password_file": secret}), root / "logs")
        ingest.start()
        if not ingest.wait_log('"msg":"connected"', 60):
            raise RuntimeError(f"ingest did not connect; see {ingest.log_path}")
        with Influx(influxdb.url, settings.influx_db, accounts.INFLUX_ADMIN, admin_pw, timeout=120.0) as db:
            stream = Stream(broker.port, rate, prefix="s20").start()
            sleep_until(time.monotonic() + before, "streaming")

            # A: InfluxDB first; the file `gap` seconds later: refused, spooled, taken up by itself
            new_a = secrets.token_hex(16)
            db.query(f"SET PASSWORD FOR \"{accounts.INFLUX_INGEST}\" = '{new_a}'", method="POST")
            say(f"  A: the ingest's password changed in InfluxDB; the file follows in {gap:.0f} s")
            sleep_until(time.monotonic() + gap, "refused, spooling")
            refused_a = _stats(ingest).get("influx_refused", 0)
            _write_secret(secret, new_a)
            t = time.monotonic()
            back = stream.mark()
            drained = wait_stored(db, stream, back, 300, what="A: caught up after the new secret", quiet=30.0)
            row.recovery_s = None if drained is None else time.monotonic() - t
            sleep_until(time.monotonic() + after, "streaming")

            # B: the file first, SIGHUP, then InfluxDB: nothing refused
            before_b = _stats(ingest)
            refused_before_b = before_b.get("influx_refused", 0)
            new_b = secrets.token_hex(16)
            _write_secret(secret, new_b)
            reloaded = len(log_records(ingest, "influxdb password read again from its file: a new one is in use"))
            assert ingest.proc is not None
            os.kill(ingest.proc.pid, signal.SIGHUP)
            deadline = time.monotonic() + 30
            while len(log_records(ingest, "influxdb password read again from its file: a new one is in use")) == reloaded:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SIGHUP: the ingest did not read its password file again; see {ingest.log_path}")
                time.sleep(0.1)
            db.query(f"SET PASSWORD FOR \"{accounts.INFLUX_INGEST}\" = '{new_b}'", method="POST")
            say("  B: new secret in the file, SIGHUP, then the password changed in InfluxDB")
            sleep_until(time.monotonic() + after, "streaming")
            stream.stop()
            unacked = stream.settle()
            wait_stored(db, stream, stream.mark(), 120, what="the rest", quiet=30.0)
            stream.close()
            tl = tally(db, stream)
            last = _stats(ingest)
        row.rejected = sum(1 for _ in read_all(root / "data" / "deadletter"))
    finally:
        if ingest is not None:
            ingest.stop()
        influxdb.stop()
        broker.stop()
    refused_b = last.get("influx_refused", 0) - refused_before_b
    row.sent, row.stored, row.lost, row.duplicated, row.accepted_bad = tl.sent, tl.stored, tl.lost, tl.duplicated, tl.unexpected
    row.figures = {
        "A refused requests": refused_a,
        "A points spooled": last.get("points_spooled", 0),
        "A caught up after the file s": round(row.recovery_s, 1) if row.recovery_s is not None else -1.0,
        "B refused requests": refused_b,
        "B points spooled": last.get("points_spooled", 0) - before_b.get("points_spooled", 0),
        "dead-lettered": row.rejected,
        "unacked": unacked,
    }
    # B may see a refusal or two: a write between the SIGHUP and InfluxDB's change carries the new password before
    # InfluxDB has it (then the one before it), and one just after the change the one before; none loses anything
    row.ok = (tl.lost == 0 and tl.duplicated == 0 and row.rejected == 0 and unacked == 0 and row.recovery_s is not None
              and refused_a > 0)
    row.note = (
        "The ingest reads its InfluxDB password from NAKHON_INFLUX_PASSWORD_FILE. A: the password changed in InfluxDB first: every "
        "write is refused (401), which is not bad data: the batches go to the spool (durable, so acknowledged) and nothing is "
        f"dead-lettered; at each refusal the ingest reads the file again (at most once a second). {gap:.0f} s later the operator "
        "writes the new password into the file; the next refusal reads it and the spool drains. B: the file first, then "
        "`kill -HUP`, then InfluxDB: a write between the two carries the new password before InfluxDB has it and is refused, "
        "and the ingest goes on with the one before it until InfluxDB takes the new one; nothing is lost or dead-lettered."
    )
    return row


# --- 21: a long outage drained under live traffic -----------------------------------------------------


@register(21, T21)
def outage_drained(root: Path, size: Size) -> Row:
    hours = 6.0 if size == "full" else 0.25
    backlog = int(hours * 3600 * FLEET_RATE)  # readings the fleet takes during the outage
    fill_rate = 1000 if size == "full" else 500  # published as fast as a stream goes: the outage's readings, not its hours
    live_rate = FLEET_RATE * (10 if size == "full" else 20)  # live traffic meanwhile: ten times the fleet (twenty at the quick size)
    row = Row(21, T21)
    with platform(root) as p, Influx(p.influxdb.url, timeout=120.0) as db:
        p.influxdb.stop()
        say(f"  InfluxDB stopped; publishing {hours:g} h of the local fleet ({backlog:,} readings at {FLEET_RATE:g}/s) at {fill_rate:,}/s")
        outage = Stream(p.broker.port, fill_rate, prefix="s21o", devices=60).start(seconds=backlog / fill_rate)
        live = Stream(p.broker.port, live_rate, prefix="s21l", devices=60).start()
        outage.wait()
        unacked_o = outage.settle()
        deadline = time.monotonic() + 600
        while (spooled := _stats(p.ingest).get("points_spooled", 0)) < 2 * outage.sent and time.monotonic() < deadline:
            time.sleep(0.5)  # every reading of the outage is in the spool: two points each (air, weather)
        say(f"  {outage.sent:,} readings published, {spooled:,} points spooled; InfluxDB back, live traffic at {live_rate:g}/s")
        p.influxdb.start()
        t = time.monotonic()
        live_at_start = live.sent
        drained = wait_stored(db, outage, outage.mark(), 3600, what="draining the outage", quiet=120.0)
        drain_s = None if drained is None else time.monotonic() - t
        back = live.mark()
        live_caught = wait_stored(db, live, back, 600, what="live traffic caught up", quiet=60.0)
        live_s = None if live_caught is None else time.monotonic() - t
        sleep_until(time.monotonic() + (10.0 if size == "full" else 2.0), "live traffic")
        live.stop()
        unacked_l = live.settle()
        wait_stored(db, live, live.mark(), 120, what="the rest", quiet=30.0)
        outage.close()
        live.close()
        to, tl = tally(db, outage), tally(db, live)
        row.rejected = rejected(p)
        last = _stats(p.ingest)
    row.sent, row.stored = to.sent + tl.sent, to.stored + tl.stored
    row.lost, row.duplicated, row.accepted_bad = to.lost + tl.lost, to.duplicated + tl.duplicated, to.unexpected + tl.unexpected
    row.recovery_s = live_s
    spooled = last.get("points_spooled", spooled)
    row.figures = {
        "outage hours of fleet": hours,
        "outage readings": to.sent,
        "points spooled": spooled,
        "drain s": round(drain_s, 1) if drain_s is not None else -1.0,
        "drain points/s": round(spooled / drain_s) if drain_s else 0,
        "live readings/s": live_rate,
        "live readings during drain": max(0, live.sent - live_at_start),
        "live caught up s": round(live_s, 1) if live_s is not None else -1.0,
        "unacked": unacked_o + unacked_l,
    }
    row.ok = row.lost == 0 and row.duplicated == 0 and row.accepted_bad == 0 and drain_s is not None and live_s is not None and \
        unacked_o + unacked_l == 0 and spooled >= 2 * to.sent
    row.note = (
        f"InfluxDB is stopped while {hours:g} h of the local fleet's readings ({to.sent:,}: {FLEET_RATE:g}/s, `nakhon up`'s 20 devices a "
        f"city each 10 s) arrive; the ingest spools them ({spooled:,} points, air and weather) and acknowledges them. InfluxDB comes "
        f"back while live traffic keeps arriving at {live_rate:g} readings/s (it arrived during the outage too, and is in the spool): "
        "the spool drains oldest first in time linear in its size (one folder listing, then one file per batch) and live batches "
        "queue behind it (order kept), so the live stream catches up when the spool is empty. Drain time: from InfluxDB answering "
        "until every reading of the outage is queryable; drain rate: the points "
        "spooled over that time."
    )
    return row

