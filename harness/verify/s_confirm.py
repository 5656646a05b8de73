"""Scenario 18: store-and-forward end to end. A device frees a reading only when the platform confirms it stored,
so no single fault loses one: the broker SIGKILLed again and again (with the ingest live, and with it away),
the ingest SIGKILLed between its write and its confirmation, InfluxDB down (confirmations from the spool).

A simulated fleet (each device its own MQTT connection, keeping every reading until a `stored` message covers
it, sending it again after its timeout and replaying what is unconfirmed after a reconnect) streams in real
time through all of it; afterwards InfluxDB is compared with every reading the devices made, device by device
and seq by seq.

Beside it, firmware-in-the-loop devices (the real firmware/ on the MicroPython unix port, simulators/fil.py; their
fake clock 20x, a reading every 30 s of theirs) stream through the same faults: each keeps its readings in its
flash ring until a `stored` message covers them and replays the rest after a reconnect. At the end the scenario
waits until each one's console says its ring is drained (a confirmation leaving nothing pending); every reading
its console says it took before that must be in InfluxDB exactly once (by device and seq).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from contract.cities import BUILTIN_CITIES
from contract.influx import Influx
from harness.verify.report import Row, Size
from harness.verify.s_devices import _stored_points
from harness.verify.scenarios import register
from harness.verify.stream import platform, rejected, restart_ingest, say
from nakhon.firmware_tools import FIRMWARE, MICROPYTHON, fakes_mpy, firmware_mpy
from simulators.devices import SimDevice, make_fleet
from simulators.fil import KINDS, READING_RE, FirmwareDevice, FirmwareFleet, FirmwarePaths, console_dropped
from simulators.fleet import Fleet
from simulators.runconfig import RunConfig

T18 = "store-and-forward: broker SIGKILLed again and again, ingest killed before confirming, InfluxDB down: nothing lost"
PREFIX = "saf"
FIL_PREFIX = "fil"  # not matched by /^saf-/: the fleet's counts leave the firmware devices out
FIL_SCALE = 20  # the firmware devices' clock: device seconds per real second
FIL_INTERVAL_S = 30  # a reading every 30 s of theirs: 1.5 s real
FIL_BEHIND_S = 2 * 86400  # their clock starts this far back, so it never passes the platform's now (readings may be 35 d old)
# the ring drained: a confirmation that left nothing pending, or a status with nothing buffered
DRAINED_RE = re.compile(r'stored: \d+ confirmed, pending=0\b|"buffered": ?0[,}]')
ONLINE_RE = re.compile(r"net: online")


def _stored_before(db: Influx, t: float) -> int:
    """Readings of the fleet stored with a time at or before `t` (one point per reading in `device`)."""
    rows = db.rows(f'SELECT count("seq") FROM "raw"."device" WHERE "device" =~ /^{PREFIX}-/ AND time <= {int(t * 1000)}ms')
    return int(rows[0]["count"]) if rows else 0


def _made_before(ledger: dict[str, list[tuple[float, int]]], t: float) -> int:
    return sum(sum(1 for ts, _ in list(v) if ts <= t) for v in list(ledger.values()))


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.5)
    return cond()


def _recovery(db: Influx, ledger: dict[str, list[tuple[float, int]]], t_fault: float, since: float, timeout: float) -> float | None:
    """Seconds from `since` (monotonic) until every reading made before the fault (wall `t_fault`) is stored; None: never."""
    if not _wait(lambda: _stored_before(db, t_fault) >= _made_before(ledger, t_fault), timeout):
        return None
    return time.monotonic() - since


def _fil_devices(n: int) -> list[SimDevice]:
    """n devices of the kinds the firmware has drivers for (air, weather, water, noise, in that order), cities in turn."""
    cities = list(BUILTIN_CITIES)
    pool = make_fleet(cities, 40, seed=18, prefix=FIL_PREFIX)
    picked: list[SimDevice] = []
    for i in range(n):
        kind, city = KINDS[i % len(KINDS)], cities[i % len(cities)].slug
        picked.append(next(d for d in pool if d.kind == kind and d.city == city and d not in picked))
    return picked


def _drained_at(d: FirmwareDevice, since: int) -> int | None:
    """Where in the console, after offset `since`, the device's ring was first drained; None: not yet."""
    m = DRAINED_RE.search(d.log_text(), since)
    return m.start() if m else None


def _fil_stored(db: Influx, device: str) -> dict[int, set[int]]:
    """seq -> the distinct times (ms) a firmware device's reading is stored at (one point per measurement it touched)."""
    return {seq: {t for _, t in pts} for seq, pts in _stored_points(db, device).items()}


def _fil_drain(db: Influx, fw: FirmwareFleet, timeout: float) -> tuple[dict[str, dict[int, float]], float | None]:
    """Wait until every firmware device's ring is drained after now and each reading its console showed before that
    point is stored. Returns the readings to compare (those before the drain point, or before now when it never came)
    and the seconds the wait took (None: not within `timeout`)."""
    marks = {d.dev.device_id: len(d.log_text()) for d in fw.devices}
    t0 = time.monotonic()
    while True:
        cut: dict[str, int] = {}
        for d in fw.devices:
            at = _drained_at(d, marks[d.dev.device_id])
            if at is not None:
                cut[d.dev.device_id] = at
        taken = {d.dev.device_id: {int(s): float(t) for s, t in READING_RE.findall(d.log_text()[: cut.get(d.dev.device_id,
                                                                                                      marks[d.dev.device_id])])}
                 for d in fw.devices}
        if len(cut) == len(fw.devices) and all(set(t) <= set(_fil_stored(db, dev)) for dev, t in taken.items()):
            return taken, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return taken, None
        time.sleep(1.0)


def _s(x: float | None) -> str:
    return "never" if x is None else f"{x:.1f} s"


@register(18, T18)
def store_and_forward(root: Path, size: Size) -> Row:
    full = size == "full"
    n = 2000 if full else 60
    n_fil = 4 if full else 2
    interval = 10.0 if full else 1.0
    live_kills, away_kills, ingest_kills = (7, 3, 3) if full else (2, 1, 1)
    seg = 12.0 if full else 4.0  # seconds between faults; each kill lands at a random moment inside its segment
    outage = 30.0 if full else 5.0  # InfluxDB down
    timeout_s = 20.0 if full else 5.0  # the devices' confirmation timeout
    rng = random.Random(18)
    row = Row(18, T18)
    # confirmation rounds once a second (the default, said here because the ingest kills rely on it: each lands between writes and their confirmations)
    with platform(root, ingest_confirm_ms=1000) as p, Influx(p.influxdb.url) as db, contextlib.ExitStack() as cleanup:
        # the firmware devices first: they boot (NTP, then the broker) while the fleet connects
        paths = FirmwarePaths(FIRMWARE, fakes_mpy(), MICROPYTHON, firmware_mpy())
        fw = FirmwareFleet(_fil_devices(n_fil), root / "firmware", paths, "127.0.0.1", p.broker.port, seed=18, interval_s=FIL_INTERVAL_S,
                           scale=FIL_SCALE, behind_s=FIL_BEHIND_S)
        cleanup.callback(fw.stop)  # also when something fails on the way
        fw.start()
        devices = make_fleet(list(BUILTIN_CITIES), -(-n // len(BUILTIN_CITIES)), seed=18, prefix=PREFIX)[:n]
        cfg = RunConfig(port=p.broker.port, interval_s=interval, keep_ledger=True, seed=18, confirm=True, confirm_timeout_s=timeout_s,
                        backoff_base_s=0.5, backoff_cap_s=5.0, connect_rate=500.0)
        fleet = Fleet(devices, cfg)
        stop = threading.Event()

        async def run() -> None:
            astop = asyncio.Event()

            async def watch() -> None:
                while not stop.is_set():
                    await asyncio.sleep(0.2)
                astop.set()

            w = asyncio.get_running_loop().create_task(watch())
            await fleet.run(astop, settle_s=120, settle_on_stop=True)  # at the end: every reading delivered and confirmed
            w.cancel()

        runner = threading.Thread(target=lambda: asyncio.run(run()), name="fleet", daemon=True)
        runner.start()
        st = fleet.stats
        ledger = st.ledger
        assert ledger is not None
        if not _wait(lambda: st.connected >= n, 60):
            raise RuntimeError(f"only {st.connected} of {n} devices connected")
        if not _wait(lambda: all(ONLINE_RE.search(d.log_text()) for d in fw.devices), 180):
            raise RuntimeError(f"firmware devices never online: {[d.dev.device_id for d in fw.devices if not ONLINE_RE.search(d.log_text())]}")
        say(f"  {n:,} devices streaming, a reading every {interval:g} s each ({n / interval:,.0f}/s), and {n_fil} firmware devices "
            f"(clock {FIL_SCALE}x, a reading every {FIL_INTERVAL_S / FIL_SCALE:g} s real)")
        time.sleep(seg)

        recoveries: list[str] = []
        worst: list[float | None] = []

        def note(label: str, r: float | None) -> None:
            recoveries.append(f"{label} {_s(r)}")
            worst.append(r)
            say(f"  {label}: recovered in {_s(r)}")

        # A: the broker SIGKILLed at random moments while the ingest is live
        for i in range(live_kills):
            time.sleep(rng.uniform(0.2, 0.8) * seg)
            t_kill, m0 = time.time(), time.monotonic()
            p.broker.kill()
            time.sleep(1.0)
            p.broker.start()
            note(f"broker kill {i + 1}", _recovery(db, ledger, t_kill, m0, 180))

        # B: the broker SIGKILLed while the ingest is away: its queue is only in the broker's memory (and last save)
        p.ingest.stop()
        t_away = time.time()
        for _ in range(away_kills):
            time.sleep(rng.uniform(0.5, 1.0) * seg)
            p.broker.kill()
            time.sleep(1.0)
            p.broker.start()
        time.sleep(rng.uniform(0.2, 0.8) * seg)
        m0 = time.monotonic()
        restart_ingest(p)
        note(f"ingest away, broker killed {away_kills}x", _recovery(db, ledger, t_away + away_kills * seg, m0, 300))

        # C: the ingest SIGKILLed between its writes and their confirmations (rounds are 1 s apart)
        unconfirmed_at_kill = []
        for i in range(ingest_kills):
            time.sleep(rng.uniform(0.3, 1.0) * seg)
            t_kill, m0 = time.time(), time.monotonic()
            stored_now = _stored_before(db, t_kill)
            p.ingest.kill()
            unconfirmed_at_kill.append(max(0, stored_now - st.confirmed))  # about: written (queryable) and not yet confirmed
            restart_ingest(p)
            note(f"ingest kill {i + 1}", _recovery(db, ledger, t_kill, m0, 180))

        # D: InfluxDB down: the spool is durable, so confirmations go on
        time.sleep(seg / 2)
        p.influxdb.stop()
        confirmed0 = st.confirmed
        t_down = time.time()
        time.sleep(outage)
        confirmed_in_outage = st.confirmed - confirmed0
        m0 = time.monotonic()
        p.influxdb.start()
        note("InfluxDB outage", _recovery(db, ledger, t_down + outage, m0, 300))
        time.sleep(seg / 2)

        stop.set()
        runner.join(400)
        made = {dev: {seq for _, seq in v} for dev, v in ledger.items()}
        total = sum(len(s) for s in made.values())
        say(f"  stream stopped: {total:,} readings made; waiting for storage")
        _wait(lambda: _stored_before(db, time.time() + 3600) >= total, 120)
        stored_seqs: dict[str, list[int]] = {}
        for s in db.series(f'SELECT "seq" FROM "raw"."device" WHERE "device" =~ /^{PREFIX}-/ GROUP BY "device"'):
            stored_seqs[s["tags"]["device"]] = [int(v[1]) for v in s.get("values", [])]
        # the firmware devices go on taking readings: their rings drained, what each took before is compared
        fil_taken, fil_drain_s = _fil_drain(db, fw, 300)
        say(f"  firmware devices: {sum(len(t) for t in fil_taken.values()):,} readings taken; "
            + (f"rings drained in {fil_drain_s:.1f} s" if fil_drain_s is not None else "rings never drained"))
        fw.stop()
        fil_stored = {d.dev.device_id: _fil_stored(db, d.dev.device_id) for d in fw.devices}
        fil_all = {d.dev.device_id: set(d.readings()) for d in fw.devices}  # everything each console says it took, to the stop
        fil_texts = [d.log_text() for d in fw.devices]
        row.rejected = rejected(p)
        stats = {k: st.__dict__[k] for k in ("dropped", "resent", "confirmed", "stored_messages", "unconfirmed", "messages_sent", "readings_sent")}

    lost = sum(len(seqs - set(stored_seqs.get(dev, []))) for dev, seqs in made.items())
    dup = sum(len(v) - len(set(v)) for v in stored_seqs.values())
    extra = sum(len(set(v) - made.get(dev, set())) for dev, v in stored_seqs.items())
    stored = sum(len(set(v) & made.get(dev, set())) for dev, v in stored_seqs.items())
    # firmware devices: a reading is a seq; stored at two times would be a duplicate (a repeat at the same time overwrites)
    fil_n = sum(len(t) for t in fil_taken.values())
    fil_got = sum(1 for dev, t in fil_taken.items() for seq in t if seq in fil_stored[dev])
    fil_lost = fil_n - fil_got
    fil_dup = sum(len(times) - 1 for v in fil_stored.values() for times in v.values())
    fil_extra = sum(len(set(v) - fil_all[dev]) for dev, v in fil_stored.items())  # stored, and no console says it was taken
    fil_ring_dropped = sum(console_dropped(text) for text in fil_texts)
    fil_reconnects = sum(len(ONLINE_RE.findall(text)) for text in fil_texts) - n_fil  # sessions after each device's first
    fil_summary = fw.summary()
    row.sent = total + fil_n
    row.stored = stored + fil_got
    row.lost, row.duplicated, row.accepted_bad = lost + fil_lost, dup + fil_dup, extra + fil_extra
    done = [r for r in worst if r is not None]
    row.recovery_s = max(done) if len(done) == len(worst) else None
    row.figures = {
        "devices": n,
        "broker kills, ingest live": live_kills,
        "broker kills, ingest away": away_kills,
        "ingest kills": ingest_kills,
        "written unconfirmed at ingest kills (about)": ", ".join(f"{x:,}" for x in unconfirmed_at_kill),
        "InfluxDB down s": outage,
        "confirmed while InfluxDB down": confirmed_in_outage,
        "recoveries": "; ".join(recoveries),
        "resent after timeout": stats["resent"],
        "device drops": stats["dropped"],
        "stored msgs per reading": round(stats["stored_messages"] / max(1, stats["readings_sent"]), 3),
        "simulated readings made / stored": f"{total:,} / {stored:,}",
        "FIL devices": n_fil,
        "FIL readings taken": fil_n,
        "FIL readings stored": fil_got,
        "FIL readings lost": fil_lost,
        "FIL readings duplicated": fil_dup,
        "FIL fewest taken by a device": min((len(t) for t in fil_taken.values()), default=0),
        "FIL ring dropped": fil_ring_dropped,
        "FIL reconnects": fil_reconnects,
        "FIL resets": fil_summary["resets"],
        "FIL crashes": fil_summary["crashes"],
        "FIL rings drained s": round(fil_drain_s, 1) if fil_drain_s is not None else "never",
    }
    fil_ok = (fil_lost == 0 and fil_dup == 0 and fil_extra == 0 and fil_drain_s is not None and fil_ring_dropped == 0
              and fil_summary["crashes"] == 0 and min((len(t) for t in fil_taken.values()), default=0) > 0)
    row.ok = (lost == 0 and dup == 0 and extra == 0 and row.recovery_s is not None and stats["dropped"] == 0 and confirmed_in_outage > 0
              and row.rejected == 0 and fil_ok)
    row.note = (
        f"{n:,} simulated devices keep each reading until a `stored` message covers it, send it again after {timeout_s:g} s without one, "
        f"and replay everything unconfirmed after a reconnect. Recovery: from the broker back (or the ingest, or InfluxDB) until every "
        f"reading made before the fault is queryable; with the ingest away the broker's queue dies with it, so the devices' replay "
        f"(after reconnect, or after their timeout for what the broker had taken) is what brings it back. The ingest runs rounds of "
        f"confirmations 1 s apart here, so each of its kills lands between writes and their confirmations; those readings are "
        f"written again when the devices resend them (same timestamp: overwritten, not duplicated). Beside them, {n_fil} "
        f"firmware-in-the-loop devices ({', '.join(KINDS[:n_fil])}: the real firmware on the MicroPython unix port, its fake "
        f"clock at {FIL_SCALE}x, a reading every {FIL_INTERVAL_S} s of theirs) stream through every fault, keeping each reading in "
        f"their flash ring until a `stored` message covers it and replaying the rest after a reconnect; at the end the scenario "
        f"waits until each console shows its ring drained, and every reading a console shows taken before that must be in "
        f"InfluxDB exactly once (by device and seq). Sent/stored/lost/dup count both: the simulated fleet's readings and the "
        f"firmware devices' (the FIL figures)."
    )
    return row
