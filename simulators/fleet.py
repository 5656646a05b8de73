"""A fleet of simulated devices, multiplexed on one asyncio loop per process.

`Fleet.run()` connects every device (ramped at `connect_rate`), runs the
time mode, fires the event faults (offline, storm, malformed) at their
time, and at the end waits for the broker's acknowledgements (and, with
`confirm`, for the platform's `stored` confirmations), publishes
each device's `offline` status and disconnects cleanly. `run_fleet()` does
the same over several processes when one core is not enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from contract.sigrelay import forget_in_child
from simulators.agent import Agent
from simulators.blocks import BlockMaker
from simulators.clock import Clock
from simulators.devices import SimDevice
from simulators.faults import Fault, Plan
from simulators.runconfig import RunConfig
from simulators.signals import Signals
from simulators.stats import Stats, merge

log = logging.getLogger("nakhon.simulate")

Tick = Callable[[dict[str, Any]], None]


def _usage() -> dict[str, float]:
    """CPU seconds and resident memory of this process."""
    rss_mb = 0.0
    with contextlib.suppress(OSError), open("/proc/self/statm") as fh:
        rss_mb = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return {"cpu_s": time.process_time(), "rss_mb": rss_mb}


class Fleet:
    def __init__(self, devices: list[SimDevice], cfg: RunConfig, faults: list[Fault] | Plan | None = None) -> None:
        self.devices = devices
        self.cfg = cfg
        ids = [d.device_id for d in devices]
        self.plan = faults if isinstance(faults, Plan) else Plan.resolve(list(faults or []), ids, cfg.seed)
        self.stats = Stats(devices=len(devices), ledger={} if cfg.keep_ledger else None)
        self.signals = Signals(cfg.seed)
        self.agents: list[Agent] = []
        self.clock: Clock | None = None

    def snapshot(self) -> dict[str, Any]:
        return {**self.stats.snapshot(), **_usage()}

    def _make_clock(self) -> tuple[Clock, float]:
        cfg = self.cfg
        if cfg.mode == "accelerated":
            return Clock(start=time.time() - cfg.since_s, speed=cfg.speed), 0.0
        if cfg.mode == "backfill":
            end = math.floor(time.time() / cfg.interval_s) * cfg.interval_s
            return Clock(origin=end - cfg.backfill_days * 86400), end
        return Clock(), 0.0

    async def _life(self, a: Agent, backfill_end: float) -> None:
        await a.ready.wait()
        cfg = self.cfg
        if cfg.mode == "backfill":
            await a.backfill(backfill_end, cfg.backfill_days)
        else:
            end = a.clock.start + cfg.duration_s if cfg.duration_s is not None else None
            await a.live(end, cfg.count)

    async def _fault(self, f: Fault, targets: frozenset[str]) -> None:
        clock = self.clock
        assert clock is not None
        await clock.sleep_until(clock.start + f.at_s)
        hit = [a for a in self.agents if a.dev.device_id in targets]
        if not hit:
            return
        log.info("fault", extra={"fields": {"kind": f.kind, "devices": len(hit)}})
        if f.kind == "offline":
            for a in hit:
                a.drop(until=clock.now() + f.for_s)
            self.stats.faults["offline"] += len(hit)
        elif f.kind == "storm":
            self.stats.storm_pending += len(hit)
            self.stats.storm_seconds = 0.0
            for a in hit:
                a.drop(storm=True)
            self.stats.faults["storm"] += len(hit)
        elif f.kind == "malformed":
            await asyncio.gather(*(a.send_malformed(f.reasons, f.count) for a in hit))

    async def run(self, stop: asyncio.Event | None = None, tick: Tick | None = None, tick_s: float = 1.0, settle_s: float = 60.0,
                  settle_on_stop: bool = False) -> Stats:
        """Run to the end or until `stop`; then settle (replays, acks, confirmations) for up to `settle_s`, after a stop
        too when `settle_on_stop` (a harness that ends the stream and wants everything delivered)."""
        cfg = self.cfg
        self.clock, backfill_end = self._make_clock()
        blocks = BlockMaker(self.signals)
        self.agents = [Agent(d, cfg, self.stats, self.signals, blocks, self.clock, self.plan.for_device(d.device_id)) for d in self.devices]
        if cfg.mode != "backfill":
            blocks.chunk(self.agents, {a.dev.device_id: a.first_time(self.clock.start) for a in self.agents})  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        for i, a in enumerate(self.agents):
            loop.call_later(i / cfg.connect_rate, a.start_connecting)
        lives = [loop.create_task(self._life(a, backfill_end)) for a in self.agents]
        events = [(f, t) for f, t in zip(self.plan.faults, self.plan.targets, strict=True) if f.kind in ("offline", "storm", "malformed")]
        faults = [loop.create_task(self._fault(f, t)) for f, t in events]
        fault_list = [f for f, _ in events]
        stop = stop or asyncio.Event()
        ticker = loop.create_task(self._ticker(tick, tick_s)) if tick else None
        stopper: asyncio.Future[Any] = loop.create_task(stop.wait())
        everyone: asyncio.Future[Any] = asyncio.gather(*lives) if lives else loop.create_future()
        if not lives:
            everyone.set_result([])
        await asyncio.wait([everyone, stopper], return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            for t in lives:
                t.cancel()
        else:  # the lives ended on their own: faults already under way finish (e.g. a malformed burst), later ones never come
            started = [t for t, f in zip(faults, fault_list, strict=True) if self.clock.rel() >= f.at_s and not t.done()]
            if started:
                pending: asyncio.Future[Any] = asyncio.gather(*started, return_exceptions=True)
                await asyncio.wait([pending, stopper], return_when=asyncio.FIRST_COMPLETED)
        for t in faults:
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await everyone
        stopper.cancel()
        settle = settle_on_stop or not stop.is_set()
        # devices still reconnecting (offline fault, storm) get their chance to replay
        if settle and not cfg.confirm:  # (with confirm, settle_confirmed below replays and waits)
            deadline = loop.time() + settle_s
            while any(a.buffer or not a.ready.is_set() for a in self.agents) and loop.time() < deadline and (settle_on_stop or not stop.is_set()):
                await asyncio.sleep(0.1)
        await asyncio.gather(*(a.settle(settle_s) for a in self.agents))
        if cfg.confirm and settle:  # store-and-forward: done when the platform confirmed it, not at PUBACK
            await asyncio.gather(*(a.settle_confirmed(settle_s) for a in self.agents))
        await asyncio.gather(*(a.close() for a in self.agents))
        if ticker is not None:
            ticker.cancel()
            tick(self.snapshot())  # type: ignore[misc]
        return self.stats

    async def _ticker(self, tick: Tick | None, every: float) -> None:
        while tick is not None:
            await asyncio.sleep(every)
            tick(self.snapshot())


def _uvloop() -> None:
    """Use uvloop's faster event loop when it is installed."""
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _shard_main(devices: list[SimDevice], cfg: RunConfig, plan: Plan, out: Any, index: int, stop_flag: Any, tick_s: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    forget_in_child()  # a forked child: its signals are not the parent's to act on
    _uvloop()

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()
        fleet = Fleet(devices, cfg, plan)

        async def watch() -> None:
            while not stop_flag.is_set():
                await asyncio.sleep(0.2)
            stop.set()

        watcher = asyncio.get_running_loop().create_task(watch())
        await fleet.run(stop, tick=lambda snap: out.put(("tick", index, snap)), tick_s=tick_s)
        watcher.cancel()
        return fleet.snapshot()

    out.put(("done", index, asyncio.run(main())))


def run_fleet(
    devices: list[SimDevice],
    cfg: RunConfig,
    faults: list[Fault] | None = None,
    procs: int = 1,
    tick: Tick | None = None,
    stop: threading.Event | None = None,
    tick_s: float = 1.0,
    shutdown_s: float = 120.0,
) -> dict[str, Any]:
    """Run the fleet to the end (or until `stop`), in `procs` processes; returns the merged counters.

    After `stop`, processes that have not finished within `shutdown_s` are terminated (and counted as lost).
    """
    plan = Plan.resolve(list(faults or []), [d.device_id for d in devices], cfg.seed)
    stop = stop or threading.Event()
    if procs <= 1:
        _uvloop()

        async def main() -> dict[str, Any]:
            fleet = Fleet(devices, cfg, plan)
            astop = asyncio.Event()
            loop = asyncio.get_running_loop()

            async def watch() -> None:
                while not stop.is_set():
                    await asyncio.sleep(0.2)
                astop.set()

            watcher = loop.create_task(watch())
            await fleet.run(astop, tick=tick, tick_s=tick_s)
            watcher.cancel()
            return fleet.snapshot()

        return asyncio.run(main())

    ctx = mp.get_context("fork")  # the children need only what is already imported
    out = ctx.Queue()
    flag = ctx.Event()
    shard_cfg = dataclasses.replace(cfg, connect_rate=cfg.connect_rate / procs)
    workers = [
        ctx.Process(target=_shard_main, args=(devices[i::procs], shard_cfg, plan, out, i, flag, tick_s), name=f"fleet-{i}", daemon=True)
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    snaps: dict[int, dict[str, Any]] = {}
    done: set[int] = set()
    stopped_at: float | None = None
    try:
        while len(done) < procs:
            if stop.is_set() and stopped_at is None:
                flag.set()
                stopped_at = time.monotonic()
            if stopped_at is not None and time.monotonic() - stopped_at > shutdown_s:
                log.error("fleet processes did not finish after stop", extra={"fields": {"waiting": procs - len(done)}})
                break
            try:
                what, index, snap = out.get(timeout=0.5)
            except queue.Empty:
                if not any(w.is_alive() for w in workers) and out.empty():
                    break
                continue
            snaps[index] = snap
            if what == "done":
                done.add(index)
            if tick is not None and (what == "done" or len(snaps) == procs):
                tick(merge(list(snaps.values())))
    finally:
        flag.set()
        for w in workers:
            w.join(5)
            if w.is_alive():
                w.terminate()
                w.join(5)
    lost = procs - len(done)
    result = merge(list(snaps.values()))
    result["lost_processes"] = lost
    return result
