"""The read path's pure cores under load: the current-values cache, the shared rate limiter, the throttle's
choice of bucket, the breaker and the proxy-cache rules; clocks injected."""

from __future__ import annotations

import asyncio
import gzip
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from api.app import create_app
from api.current import CitySnapshot, build_snapshot, city_aqi
from api.guard import Breaker
from api.history import open_end
from api.httpcache import HttpCache, Memory, cacheable, matches, max_age
from api.live import LiveCache
from api.ratelimit import RateLimiter, SharedRateLimiter
from api.registry import Device
from api.throttle import Throttle
from contract.influx import InfluxError, InfluxUnavailable
from contract.settings import ConfigError, load_settings

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Loader:
    """Counts its loads; fails while `down`; each load returns the number of the load."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> int:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise InfluxUnavailable("down")
        return self.calls


def test_live_cache_serves_from_memory_and_reloads_in_the_background() -> None:
    async def run() -> None:
        clock, load = Clock(), Loader()
        cache: LiveCache[int] = LiveCache(refresh_s=2, max_age_s=10, wait_s=1, clock=clock)
        first = await cache.get("cm", load)
        assert (first.value, first.stale, load.calls) == (1, False, 1)
        clock.t += 1.9
        assert [(await cache.get("cm", load)).value for _ in range(100)] == [1] * 100 and load.calls == 1  # no query
        clock.t += 0.2  # due: this request starts one reload and is answered from memory at once
        due = await cache.get("cm", load)
        assert due.value == 1 and due.age_s == pytest.approx(2.1)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert load.calls == 2 and (await cache.get("cm", load)).value == 2

    asyncio.run(run())


def test_live_cache_loads_once_however_many_ask() -> None:
    async def run() -> None:
        clock, load = Clock(), Loader()
        load.gate = asyncio.Event()
        cache: LiveCache[int] = LiveCache(refresh_s=2, max_age_s=10, wait_s=1, clock=clock)
        waiting = [asyncio.create_task(cache.get("cm", load)) for _ in range(50)]
        await asyncio.sleep(0)
        load.gate.set()
        got = await asyncio.gather(*waiting)
        assert {g.value for g in got} == {1} and load.calls == 1

    asyncio.run(run())


def test_live_cache_serves_the_last_values_marked_stale_while_loads_fail_then_recovers() -> None:
    async def run() -> None:
        clock, load = Clock(), Loader()
        cache: LiveCache[int] = LiveCache(refresh_s=2, max_age_s=10, wait_s=0.01, clock=clock)
        await cache.get("cm", load)
        load.down = True
        clock.t += 5
        mid = await cache.get("cm", load)
        assert (mid.value, mid.stale) == (1, False)  # within the bound: served as it is
        clock.t += 6
        late = await cache.get("cm", load)  # beyond the bound: waits a moment for a reload, which fails
        assert (late.value, late.stale, late.age_s) == (1, True, pytest.approx(11))
        load.down = False
        clock.t += 1
        again = await cache.get("cm", load)  # the last load failed: no waiting, the stale values at once, a reload started
        assert (again.value, again.stale) == (1, True)
        await asyncio.sleep(0)
        back = await cache.get("cm", load)
        assert (back.value, back.stale, back.age_s) == (load.calls, False, 0)

    asyncio.run(run())


def test_live_cache_without_values_raises_so_the_api_answers_503() -> None:
    async def run() -> None:
        load = Loader()
        load.down = True
        cache: LiveCache[int] = LiveCache(refresh_s=2, max_age_s=10, wait_s=1, clock=Clock())
        with pytest.raises(InfluxError):
            await cache.get("cm", load)

    asyncio.run(run())


def test_live_cache_keeps_the_newer_of_two_overlapping_loads() -> None:
    async def run() -> None:
        clock = Clock()
        cache: LiveCache[str] = LiveCache(refresh_s=2, max_age_s=10, wait_s=1, clock=clock)
        slow_gate = asyncio.Event()

        async def slow() -> str:
            await slow_gate.wait()
            return "old"

        async def fast() -> str:
            return "new"

        t_old = cache.refresh("a", slow)
        await asyncio.sleep(0)
        cache._loading.clear()  # let a second load start while the first is under way
        clock.t += 1
        await cache.refresh("a", fast)
        slow_gate.set()
        await t_old
        assert (await cache.get("a", fast)).value == "new"

    asyncio.run(run())


def test_settings_refuse_a_refresh_slower_than_the_bound() -> None:
    with pytest.raises(ConfigError, match="NAKHON_API_LIVE_REFRESH_S"):
        load_settings(api_live_refresh_s=20, api_live_max_age_s=10)


def test_shared_buckets_are_one_limit_for_every_process(tmp_path: Path) -> None:
    clock = Clock()
    a = SharedRateLimiter(tmp_path / "rl", clock=clock)  # two processes map the same file
    b = SharedRateLimiter(tmp_path / "rl", clock=clock)
    allowed = sum(1 for i in range(100) if (a if i % 2 else b).take("addr:1.2.3.4", 30) == 0)
    assert allowed == 30  # not 30 each
    assert b.take("addr:1.2.3.4", 30) == pytest.approx(2.0) and not a.peek("addr:1.2.3.4", 30)
    clock.t += 2
    assert a.peek("addr:1.2.3.4", 30) and a.take("addr:1.2.3.4", 30) == 0 and b.take("addr:1.2.3.4", 30) > 0
    assert b.take("addr:5.6.7.8", 30) == 0  # another client its own bucket
    c = SharedRateLimiter(tmp_path / "rl", clock=clock)  # a process started later sees the same state
    assert c.take("addr:1.2.3.4", 30) > 0


def test_shared_buckets_match_the_in_process_ones(tmp_path: Path) -> None:
    clock = Clock()
    shared, local = SharedRateLimiter(tmp_path / "rl", clock=clock), RateLimiter(clock=clock)
    for step in [0.0, 0.1, 0.5, 3.0, 0.01, 61.0, 0.2] * 20:
        clock.t += step
        assert shared.take("k", 45) == pytest.approx(local.take("k", 45))


def test_shared_buckets_stay_bounded_and_exact_for_the_active(tmp_path: Path) -> None:
    clock = Clock()
    rl = SharedRateLimiter(tmp_path / "rl", slots=1024, clock=clock)
    for _ in range(10):
        rl.take("flooder", 10)
    for i in range(300):  # other clients in the same minute, fewer than the slots: the flooder's bucket is kept
        clock.t += 0.01
        assert rl.take(f"addr:{i}", 10) == 0
    assert rl.take("flooder", 10) > 0
    for i in range(20_000):  # far more clients than slots: the table does not grow
        rl.take(f"other:{i}", 10)
    assert (tmp_path / "rl").stat().st_size == 16 + 1024 * 24


def test_shared_buckets_reset_a_file_of_another_layout(tmp_path: Path) -> None:
    (tmp_path / "rl").write_bytes(b"garbage" * 10)
    rl = SharedRateLimiter(tmp_path / "rl", slots=128, clock=Clock())
    assert rl.take("a", 1) == 0 and rl.take("a", 1) > 0


def _scope(addr: str, key: str | None = None) -> dict:
    headers = [(b"x-api-key", key.encode())] if key else []
    return {"type": "http", "path": "/v1/cities/chiang_mai/latest", "client": (addr, 5000), "headers": headers}


GOOD_SHAPE = "nk_abcdef123456_" + "s" * 30


def test_throttle_takes_from_the_address_the_key_id_or_the_failures() -> None:
    clock = Clock()
    lim = RateLimiter(clock=clock)
    t = Throttle(None, lim, per_key=5, per_address=3)
    assert [t.wait(_scope("10.0.0.1")) == 0 for _ in range(4)] == [True, True, True, False]
    assert [t.wait(_scope("10.0.0.1", GOOD_SHAPE)) == 0 for _ in range(6)] == [True] * 5 + [False]  # the key's own limit
    assert t.wait(_scope("10.0.0.2", "not-a-key")) == 0  # malformed: from the address's failures, then 401
    for _ in range(3):
        lim.take("fail:10.0.0.3", 3)  # what security.py takes for three made-up keys
    assert t.wait(_scope("10.0.0.3", "nk_zzzzzz999999_" + "x" * 30)) > 0  # a fourth made-up key id is turned away here


def test_breaker_opens_for_the_retry_time_and_closes_on_success() -> None:
    clock = Clock()
    b = Breaker(2.0, clock=clock)
    assert b.allow()
    b.failure()
    assert not b.allow() and b.retry_after() == pytest.approx(2.0)
    clock.t += 2.0
    assert b.allow()
    b.failure()
    b.success()
    assert b.allow()


def test_proxy_cache_rules() -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert max_age(b"every=1h&end=2026-02-01T00:00:00Z", 60, 3600, now) == 3600  # the past: kept long
    assert max_age(b"every=1h&end=2026-03-01T11:30:00%2B00:00", 60, 3600, now) == 60  # the last hour can still change
    assert max_age(b"every=1h", 60, 3600, now) == 60  # up to now
    assert max_age(b"end=garbage", 60, 3600, now) == 60
    assert max_age(f"end={(now - timedelta(days=2)).isoformat()}".encode().replace(b"+", b"%2B"), 60, 3600, now) == 3600
    assert matches('"abc"', '"abc"') and matches('W/"abc", "x"', '"abc"') and matches("*", '"abc"')
    assert not matches('"abd"', '"abc"') and not matches(None, '"abc"')
    assert cacheable("/v1/cities/phuket/readings") and cacheable("/v1/open/cities/phuket/readings.csv")
    assert cacheable("/v1/devices/cm-air-001/readings") and cacheable("/v1/devices/cm-air-001/aqi/history")
    assert not cacheable("/v1/devices") and not cacheable("/v1/devices/cm-air-001") and not cacheable("/v1/keys")
    assert not cacheable("/v1/cities/phuket/alerts") and not cacheable("/v1/cities/phuket/alerts/a1/ack")


def test_a_range_up_to_now_ends_at_the_next_whole_minute() -> None:
    assert open_end(datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)) == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert open_end(datetime(2026, 3, 1, 12, 0, 0, 1, tzinfo=UTC)) == datetime(2026, 3, 1, 12, 1, tzinfo=UTC)
    assert open_end(datetime(2026, 3, 1, 12, 59, 59, tzinfo=UTC)) == datetime(2026, 3, 1, 13, 0, tzinfo=UTC)


def test_a_snapshot_serializes_each_answer_once_per_flag_and_encoding() -> None:
    snap = CitySnapshot("chiang_mai", datetime(2026, 3, 1, tzinfo=UTC), {"latest": {"city": "chiang_mai", "devices": []}}, {})
    plain, tag = snap.body("latest", False)
    assert orjson.loads(plain) == {"city": "chiang_mai", "devices": [], "as_of": "2026-03-01T00:00:00Z", "stale": False}
    packed, gz_tag = snap.body("latest", False, gz=True)
    assert gzip.decompress(packed) == plain and gz_tag != tag  # a representation of its own, its own strong tag
    stale, stale_tag = snap.body("latest", True)
    assert orjson.loads(stale)["stale"] is True and stale_tag not in (tag, gz_tag)
    assert snap.body("latest", False) == (plain, tag) and snap.body("latest", False)[0] is plain  # built once


def test_answers_kept_in_the_process_expire_and_stay_bounded() -> None:
    clock = Clock()
    mem = Memory(2.0, entries=3, max_body=100, clock=clock)
    mem.put("a", [(b"etag", b'"1"')], b"x" * 10, '"1"')
    clock.t += 1.5
    hit = mem.get("a")
    assert hit is not None and hit[0].body == b"x" * 10 and hit[1] == pytest.approx(1.5)
    clock.t += 0.5
    assert mem.get("a") is None  # two seconds old: asked again
    mem.put("big", [], b"x" * 101, '"2"')
    assert mem.get("big") is None  # too big to keep
    for k in "bcd":
        mem.put(k, [], b"", '"3"')
    mem.get("b")  # used: kept ahead of c
    mem.put("e", [], b"", '"4"')
    assert mem.get("c") is None and mem.get("b") is not None and mem.get("e") is not None
    assert Memory(0.0).get("a") is None


def test_one_question_asked_by_many_at_once_reaches_the_app_once() -> None:
    calls = []

    async def app(scope: dict, receive: object, send: object) -> None:
        calls.append(scope["path"])
        await asyncio.sleep(0.05)  # the app's own work, so the identical questions overlap: not a wait for anything
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b'{"n": 1}'})  # type: ignore[operator]

    async def run() -> list[int]:
        cache = HttpCache(app, recent_s=60, history_s=3600, memory_s=2.0)
        statuses: list[int] = []

        async def one() -> None:
            async def send(message: dict) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            scope = {"type": "http", "method": "GET", "path": "/v1/cities/phuket/readings", "query_string": b"every=1h", "headers": []}
            await cache(scope, None, send)

        await asyncio.gather(*(one() for _ in range(50)))
        return statuses

    assert asyncio.run(run()) == [200] * 50 and calls == ["/v1/cities/phuket/readings"]


def _aqi_series(rows: dict[str, tuple[int, float]]) -> list[dict]:
    cols = ["time", "pm25_24h", "pm10_24h", "o3_8h", "co_8h", "no2_1h", "so2_1h"]
    return [{"name": "aqi", "tags": {"device": d}, "columns": cols, "values": [[t, pm, pm * 1.5, None, None, None, None]]}
            for d, (t, pm) in rows.items()]


def test_a_reload_computes_the_aqi_only_of_the_stations_whose_hour_changed() -> None:
    hour = 1_772_323_200_000  # 2026-03-01 00:00 UTC
    first, per_device, memo = city_aqi("chiang_mai", _aqi_series({"a": (hour, 20.0), "b": (hour, 40.0), "c": (hour, 80.0)}))
    assert [d["current"]["aqi"] for d in first["devices"]] == [per_device[d]["aqi"] for d in "abc"]  # type: ignore[index]
    # an hour later only b has a new hour: a and c keep the very values computed before, b's is new
    again, per_device2, memo2 = city_aqi("chiang_mai", _aqi_series({"a": (hour, 20.0), "b": (hour + 3_600_000, 90.0),
                                                                  "c": (hour, 80.0)}), memo)
    assert per_device2["a"] is per_device["a"] and per_device2["c"] is per_device["c"]
    assert per_device2["b"] is not per_device["b"] and per_device2["b"]["aqi"] > per_device["b"]["aqi"]  # type: ignore[index]
    assert again == city_aqi("chiang_mai", _aqi_series({"a": (hour, 20.0), "b": (hour + 3_600_000, 90.0), "c": (hour, 80.0)}))[0]
    assert len(memo2) == 3  # only what the stations report now is kept for the next reload


def test_a_built_snapshot_has_latest_and_aqi_encoded_and_builds_geojson_on_first_use() -> None:
    hour = 1_772_323_200_000
    latest = orjson.dumps({"results": [{"statement_id": 0, "series": [
        {"name": "air", "columns": ["time", "city", "device", "pm25", "ts"], "values": [[0, "chiang_mai", "a", 31.5, hour]]}]}]})
    aqi_answer = orjson.dumps({"results": [{"statement_id": 0, "series": _aqi_series({"a": (hour, 20.0)})}]})
    dev = Device(id="a", city="chiang_mai", kind="air", sensors=["pm25"], lat=18.79, lon=98.98, installed=date(2026, 1, 1),
                 fw="1.0.0", interval_s=60)
    snap = build_snapshot("chiang_mai", datetime(2026, 3, 1, tzinfo=UTC), latest, aqi_answer, [dev])
    for name in ("latest", "aqi"):
        for gz in (False, True):
            assert snap.encoded(name, False, gz) is not None, (name, gz)  # type: ignore[arg-type]
    assert orjson.loads(snap.encoded("latest", False)[0])["devices"][0]["values"] == {"pm25": 31.5}  # type: ignore[index]
    assert snap.encoded("geojson", False) is None and "geojson" not in snap.answers
    feature = orjson.loads(snap.body("geojson", False)[0])["features"][0]
    assert feature["geometry"]["coordinates"] == [98.98, 18.79] and feature["properties"]["pm25"] == 31.5
    assert snap.encoded("aqi", True) is None  # the stale flag's bytes only when asked


def test_a_request_over_its_limit_is_answered_before_fastapi_runs(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, influx_url="http://127.0.0.1:9", api_rate_per_address=2, log_level="WARNING")
    app = create_app(settings)
    for _ in range(2):
        app.state.limiter.take("addr:203.0.113.7", 2)
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/v1/cities/chiang_mai/latest", "query_string": b"", "headers": [],
             "client": ("203.0.113.7", 40000)}
    asyncio.run(app(scope, None, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 429
    assert app.middleware_stack is None  # FastAPI's own stack (built on first use) was never needed


def test_a_current_answer_is_kept_only_until_its_snapshot_is_due_and_the_hint_never_leaves() -> None:
    clock = Clock()
    calls: list[int] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        calls.append(1)
        await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                    "headers": [(b"content-type", b"application/json"), (b"age", b"1"), (b"x-nakhon-keep", b"0.500")]})
        await send({"type": "http.response.body", "body": b'{"n": 1}'})  # type: ignore[operator]

    async def ask(cache: HttpCache) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                out.extend(message["headers"])

        await cache({"type": "http", "method": "GET", "path": "/v1/cities/phuket/latest", "query_string": b"", "headers": []}, None, send)
        return out

    cache = HttpCache(app, recent_s=60, history_s=3600, memory_s=2.0)
    cache.memory = Memory(2.0, clock=clock)
    first = asyncio.run(ask(cache))
    assert b"x-nakhon-keep" not in dict(first) and dict(first)[b"age"] == b"1"
    clock.t += 0.4
    assert b"x-nakhon-keep" not in dict(asyncio.run(ask(cache))) and len(calls) == 1  # from memory
    clock.t += 0.2  # past the snapshot's due time, well inside the cache's 2 s: asked again
    asyncio.run(ask(cache))
    assert len(calls) == 2
