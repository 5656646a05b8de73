"""Readings shaped like each city, built with numpy: seeded and reproducible.

Every value is a pure function of (seed, device, timestamp): the noise comes
from a counter-based hash rather than a stateful generator, so the same seed
gives the same readings whether they are made one at a time in real time or
ten thousand at once in a backfill, and in any order.

What shapes the signals (monthly tables are climate normals, rounded):
- Chiang Mai: PM2.5 from the burning season (February to April, daily means
  far above the Thai standard of 37.5 µg/m³), worse at night and in the early
  morning when the inversion traps smoke; clean air in the rainy months.
- Phuket: rain events (many in the south-west monsoon, May to October) that
  drive canal water levels through a unit hydrograph, with flood peaks over
  the warning level after heavy storms; nightlife noise in the tourist areas,
  louder in the high season.
- Khon Kaen: traffic counts with weekday rush hours, and the noise they make.
- Everywhere: temperature and humidity with the Thai diurnal and seasonal
  cycle, rain cooling, sensor noise, batteries charged by a solar panel and
  drained at night (less charge on rainy days), and Wi-Fi RSSI.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from contract.catalogue import METRICS
from contract.thresholds import water_level
from simulators.devices import SimDevice

DAY = 86400.0
TZ_OFFSET = 7 * 3600.0  # Asia/Bangkok, no daylight saving
YEAR_DAYS = 365.2425
_MID_MONTH = (np.arange(12) + 0.5) * YEAR_DAYS / 12


@dataclass(frozen=True, slots=True)
class Climate:
    temp_c: tuple[float, ...]  # monthly mean of the daily mean
    temp_swing: tuple[float, ...]  # monthly half of the daily range
    rh: tuple[float, ...]
    rain_mm: tuple[float, ...]  # monthly totals
    pm25: tuple[float, ...]  # monthly mean of daily PM2.5 at a city station
    pm_night: float = 0.35  # how much worse the night and early morning are
    pm10_ratio: float = 1.5
    event_mm: float = 12.0  # mean rain per event
    rain_peak_hour: float | None = 16.0  # convective afternoons; None = any time (monsoon)
    pressure_hpa: float = 1009.0  # station pressure (altitude matters)
    wind_ms: float = 1.8
    monsoon_wind: float = 0.0
    water_base_cm: float = 50.0
    water_gain: float = 3.0  # cm of rise per mm of rain on the catchment
    water_peak_h: float = 2.0
    traffic: float = 1000.0  # vehicles per hour at the evening peak on a main road
    nightlife: float = 0.0  # dB added late at night in tourist areas
    tourist_season: float = 0.0  # fraction: high season (Dec-Feb) busier


CLIMATES: dict[str, Climate] = {
    "chiang_mai": Climate(
        temp_c=(21.5, 23.5, 27.0, 29.5, 29.0, 28.0, 27.5, 27.0, 27.0, 26.0, 24.0, 21.5),
        temp_swing=(7.0, 7.5, 7.0, 6.0, 4.5, 3.8, 3.5, 3.5, 3.8, 4.5, 5.5, 6.5),
        rh=(68, 60, 52, 56, 72, 80, 82, 84, 83, 79, 75, 71),
        rain_mm=(5, 5, 15, 50, 150, 120, 160, 220, 200, 100, 30, 10),
        pm25=(45, 68, 95, 75, 30, 15, 11, 10, 11, 16, 25, 35),
        pm_night=0.40, pm10_ratio=1.45, event_mm=12.0, rain_peak_hour=16.5, pressure_hpa=975.0,
        wind_ms=1.3, water_base_cm=60.0, water_gain=3.0, water_peak_h=3.0, traffic=1100.0,
    ),
    "phuket": Climate(
        temp_c=(27.5, 28.0, 28.5, 29.0, 28.5, 28.5, 28.0, 28.0, 27.5, 27.5, 27.5, 27.5),
        temp_swing=(3.5, 3.8, 3.8, 3.5, 3.0, 2.8, 2.8, 2.8, 2.7, 2.8, 3.0, 3.2),
        rh=(72, 70, 72, 76, 80, 80, 80, 81, 83, 83, 80, 75),
        rain_mm=(30, 20, 50, 130, 300, 270, 280, 280, 400, 330, 180, 60),
        pm25=(18, 20, 24, 20, 13, 10, 9, 9, 10, 12, 14, 16),
        pm_night=0.15, pm10_ratio=1.8, event_mm=15.0, rain_peak_hour=None, pressure_hpa=1009.0,
        wind_ms=2.5, monsoon_wind=1.5, water_base_cm=60.0, water_gain=2.6, water_peak_h=1.5, traffic=800.0,
        nightlife=16.0, tourist_season=0.25,
    ),
    "khon_kaen": Climate(
        temp_c=(23.0, 26.0, 29.0, 30.0, 29.5, 29.0, 28.5, 28.0, 27.5, 27.0, 25.0, 23.0),
        temp_swing=(6.0, 6.5, 6.0, 5.5, 4.5, 4.0, 3.8, 3.8, 3.8, 4.5, 5.5, 6.0),
        rh=(65, 63, 62, 67, 75, 78, 80, 82, 84, 78, 70, 66),
        rain_mm=(5, 15, 40, 80, 180, 170, 180, 200, 250, 100, 15, 5),
        pm25=(45, 50, 45, 32, 20, 12, 11, 11, 12, 20, 30, 40),
        pm_night=0.30, pm10_ratio=1.5, event_mm=14.0, rain_peak_hour=17.0, pressure_hpa=990.0,
        wind_ms=2.0, water_base_cm=70.0, water_gain=3.5, water_peak_h=3.0, traffic=1500.0,
    ),
}
GENERIC = Climate(
    temp_c=(25, 27, 29, 30, 29.5, 29, 28.5, 28, 28, 27.5, 26, 25),
    temp_swing=(5.5, 6, 5.5, 5, 4, 3.5, 3.5, 3.5, 3.5, 4, 5, 5.5),
    rh=(68, 66, 66, 70, 77, 79, 80, 81, 83, 80, 74, 70),
    rain_mm=(10, 20, 40, 90, 200, 160, 170, 200, 280, 180, 50, 10),
    pm25=(35, 40, 40, 30, 18, 12, 11, 11, 12, 18, 25, 30),
)


# --- time ----------------------------------------------------------------------
def local_hours(ts: np.ndarray) -> np.ndarray:
    return ((ts + TZ_OFFSET) % DAY) / 3600.0


def local_days(ts: np.ndarray) -> np.ndarray:
    return np.floor((ts + TZ_OFFSET) / DAY).astype(np.int64)


def day_of_year(ts: np.ndarray) -> np.ndarray:
    """0 at 1 January (local), to within a day over this century."""
    return ((ts + TZ_OFFSET) / DAY - 0.0) % YEAR_DAYS


def weekday(ts: np.ndarray) -> np.ndarray:
    """0 = Monday (1970-01-01 was a Thursday)."""
    return (local_days(ts) + 3) % 7


def monthly(table: Sequence[float], doy: np.ndarray) -> np.ndarray:
    """A monthly table interpolated through the year, wrapping December to January."""
    xp = np.concatenate(([_MID_MONTH[-1] - YEAR_DAYS], _MID_MONTH, [_MID_MONTH[0] + YEAR_DAYS]))
    fp = np.concatenate(([table[-1]], np.asarray(table, float), [table[0]]))
    return np.interp(doy, xp, fp)


def _bump(h: np.ndarray, centre: float, width: float) -> np.ndarray:
    """A Gaussian bump on the 24-hour circle."""
    d = (h - centre + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width) ** 2)


# --- counter-based noise ---------------------------------------------------------
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a good 64-bit hash of a 64-bit counter."""
    x = x + _GOLD
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _key(*parts: int | np.ndarray) -> np.ndarray:
    h = np.zeros(1, np.uint64)
    for p in parts:
        h = _mix(h ^ np.asarray(p).astype(np.int64).astype(np.uint64))
    return h


def uniform(key: np.ndarray, stream: int) -> np.ndarray:
    """Uniform (0, 1) from a hash of (key, stream)."""
    bits = _mix(key ^ _mix(np.full(1, stream, np.uint64)))
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def normal(key: np.ndarray, stream: int) -> np.ndarray:
    """Standard normal (Box-Muller) from a hash of (key, stream)."""
    u1, u2 = uniform(key, 2 * stream), uniform(key, 2 * stream + 1)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)


def _smooth_daily(seed: int, city_key: int, stream: int, ts: np.ndarray) -> np.ndarray:
    """A day-to-day standard normal, interpolated between local noons so it has no steps."""
    x = (ts + TZ_OFFSET) / DAY - 0.5
    d0 = np.floor(x).astype(np.int64)
    f = x - d0
    z0 = normal(_key(seed, city_key, stream) ^ d0.astype(np.uint64), 0)
    z1 = normal(_key(seed, city_key, stream) ^ (d0 + 1).astype(np.uint64), 0)
    return z0 * (1 - f) + z1 * f


# --- rain events -------------------------------------------------------------------
@dataclass
class Rain:
    """City-wide rain events, each drawn from the seed and its local day."""

    climate: Climate
    seed: int
    city_key: int
    _cache: dict[int, np.ndarray] = field(default_factory=dict)

    def day_events(self, day: int) -> np.ndarray:
        """Rows of (start_ts, duration_s, total_mm) for events starting on local `day`."""
        hit = self._cache.get(day)
        if hit is not None:
            return hit
        c = self.climate
        rng = np.random.default_rng([self.seed, self.city_key, day + (1 << 20)])
        day_start = day * DAY - TZ_OFFSET
        doy = float(day_of_year(np.array([day_start + DAY / 2]))[0])
        month_mm = float(monthly(c.rain_mm, np.array([doy]))[0])
        daily_mm = month_mm / 30.4
        # Storm days (a depression, a monsoon surge) carry part of the month's rain.
        storm = rng.random() < min(0.25, daily_mm / 120.0)
        lam = max(0.0, (daily_mm * (0.6 if storm else 1.0)) / c.event_mm)
        n = int(rng.poisson(lam))
        hours = rng.uniform(0, 24, n) if c.rain_peak_hour is None else (c.rain_peak_hour + rng.normal(0, 2.5, n)) % 24
        durs = rng.uniform(0.5, 3.5, n) * 3600
        totals = rng.gamma(0.8, c.event_mm / 0.8, n)
        rows = [np.column_stack([day_start + hours * 3600, durs, totals])]
        if storm:
            rows.append(np.array([[day_start + rng.uniform(0, 18) * 3600, rng.uniform(5, 10) * 3600, rng.uniform(45, 110)]]))
        events = np.concatenate(rows)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[day] = events
        return events

    def events(self, ts: np.ndarray, back_days: int = 2) -> np.ndarray:
        days = local_days(ts)
        lo, hi = int(days.min()) - back_days, int(days.max())
        return np.concatenate([self.day_events(d) for d in range(lo, hi + 1)])

    @staticmethod
    def _cdf(x: np.ndarray, dur: np.ndarray) -> np.ndarray:
        """Share of an event's rain fallen `x` seconds after it started (a sine-shaped shower)."""
        return 0.5 * (1 - np.cos(np.pi * np.clip(x / dur, 0.0, 1.0)))

    def amount(self, ts: np.ndarray, window_s: np.ndarray | float) -> np.ndarray:
        """Rain (mm) in (ts - window_s, ts]."""
        ev = self.events(ts)
        if not len(ev):
            return np.zeros_like(ts)
        s, d, tot = ev[:, 0], ev[:, 1], ev[:, 2]
        t = ts[:, None]
        w = np.broadcast_to(np.asarray(window_s, float), ts.shape)[:, None]
        return (tot * (self._cdf(t - s, d) - self._cdf(t - w - s, d))).sum(axis=1)

    def rate(self, ts: np.ndarray) -> np.ndarray:
        """Rain rate in mm/h at `ts` (the last 10 minutes)."""
        return self.amount(ts, 600.0) * 6.0

    def runoff(self, ts: np.ndarray, peak_s: float) -> np.ndarray:
        """Sum of unit hydrographs (peak 1 at `peak_s` after each event's middle) weighted by event rain."""
        ev = self.events(ts)
        if not len(ev):
            return np.zeros_like(ts)
        centre = ev[:, 0] + ev[:, 1] / 2
        x = np.maximum(ts[:, None] - centre, 0.0) / peak_s
        return (ev[:, 2] * x * np.exp(1.0 - x)).sum(axis=1)

    def daily_total(self, days: np.ndarray) -> np.ndarray:
        return np.array([self.day_events(int(d))[:, 2].sum() for d in days])


# --- per-device parameters ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Params:
    """Per-device constants; each field a number, or an array aligned with the timestamps of a group."""

    site: Any  # PM station factor (a busy road vs a park)
    temp_offset: Any  # urban heat island / shade
    water_base: Any
    water_gain: Any
    road: Any  # traffic scale of the road the counter watches
    loud: Any  # dB offset of the noise site
    rssi: Any
    battery: Any


def device_params(dev: SimDevice, seed: int) -> Params:
    rng = np.random.default_rng([seed, dev.key, 7])
    return Params(
        site=float(rng.uniform(0.8, 1.25)),
        temp_offset=float(rng.normal(0.0, 0.6)),
        water_base=float(rng.uniform(-15, 15)),
        water_gain=float(rng.uniform(0.85, 1.15)),
        road=float(rng.uniform(0.35, 1.4)),
        loud=float(rng.normal(0.0, 3.0)),
        rssi=float(rng.uniform(-86, -55)),
        battery=float(rng.uniform(-0.05, 0.05)),
    )


# --- the model ----------------------------------------------------------------------
_ROUND = {"vehicle_count": 0, "rssi_dbm": 0, "battery_v": 3, "pressure_hpa": 1, "water_level_cm": 1, "rain_mm": 2}
# noise streams: one per metric, so adding a metric never changes another's noise
_STREAMS = {name: i + 10 for i, name in enumerate(METRICS)}


class CityModel:
    """The signals of one city for one seed."""

    def __init__(self, city: str, seed: int) -> None:
        self.city = city
        self.seed = seed
        self.climate = CLIMATES.get(city, GENERIC)
        self.key = zlib.crc32(city.encode())
        self.rain = Rain(self.climate, seed, self.key)
        self.water = water_level(city)

    # weather ------------------------------------------------------------------
    def temp(self, ts: np.ndarray, rain_rate: np.ndarray) -> np.ndarray:
        c = self.climate
        doy, h = day_of_year(ts), local_hours(ts)
        mean = monthly(c.temp_c, doy) + 1.2 * _smooth_daily(self.seed, self.key, 1, ts)
        swing = monthly(c.temp_swing, doy)
        # coolest just before dawn (06:00), hottest mid-afternoon (14:30)
        shape = np.cos(2 * np.pi * (h - 14.5) / 24) + 0.25 * np.cos(4 * np.pi * (h - 14.5) / 24)
        return mean + swing * shape / 1.1 - 2.0 * np.minimum(rain_rate, 10) / 10

    def rh(self, ts: np.ndarray, temp: np.ndarray, rain_rate: np.ndarray) -> np.ndarray:
        c = self.climate
        doy = day_of_year(ts)
        mean_t = monthly(c.temp_c, doy)
        rh = monthly(c.rh, doy) - 3.0 * (temp - mean_t) + 20 * np.minimum(rain_rate, 5) / 5
        return np.clip(rh, 15, 100)

    def pm25(self, ts: np.ndarray, rain_rate: np.ndarray) -> np.ndarray:
        c = self.climate
        doy, h = day_of_year(ts), local_hours(ts)
        daily = monthly(c.pm25, doy) * np.exp(0.28 * _smooth_daily(self.seed, self.key, 2, ts) - 0.04)
        # inversion: worst about 05:00, cleanest in the late afternoon when the mixing layer is deep
        diurnal = 1 + c.pm_night * np.cos(2 * np.pi * (h - 5.0) / 24)
        return daily * diurnal / (1 + 0.15 * np.minimum(rain_rate, 20))

    def traffic_rate(self, ts: np.ndarray) -> np.ndarray:
        """Vehicles per hour on a main road: weekday rush hours, flatter weekends."""
        h, wd = local_hours(ts), weekday(ts)
        weekday_profile = 0.08 + 0.95 * _bump(h, 7.6, 0.9) + 1.0 * _bump(h, 17.6, 1.1) + 0.45 * _bump(h, 12.5, 3.0) + 0.25 * _bump(h, 14, 5)
        weekend_profile = 0.08 + 0.45 * _bump(h, 11.0, 2.5) + 0.5 * _bump(h, 17.0, 3.0)
        return self.climate.traffic * np.where(wd < 5, weekday_profile, weekend_profile)

    def community_noise(self, ts: np.ndarray) -> np.ndarray:
        """dB(A) at a community noise site, before the site's own offset."""
        c = self.climate
        h, doy, wd = local_hours(ts), day_of_year(ts), weekday(ts)
        road = 46 + 10 * np.log10(1 + self.traffic_rate(ts) / 10)
        season = 1 + c.tourist_season * np.cos(2 * np.pi * (doy - 15) / YEAR_DAYS)
        night = c.nightlife * season * (_bump(h, 23.5, 2.2) + 0.15 * (wd >= 4))
        return 10 * np.log10(10 ** (road / 10) + 10 ** ((48 + night) / 10) * (c.nightlife > 0)) + 2 * _bump(h, 18, 2)

    def battery(self, ts: np.ndarray, p: Params) -> np.ndarray:
        """Solar-charged Li-ion: charges 07-15, drains over night; rainy days charge less."""
        h = local_hours(ts)
        days = local_days(ts)
        first = int(days.min()) - 1
        span = np.arange(first, int(days.max()) + 1)
        peak = 1 - 0.5 * np.minimum(1.0, self.rain.daily_total(span) / 25)
        peak_today, peak_yday = peak[days - first], peak[days - first - 1]
        low = 0.3
        x = np.clip((h - 7) / 8, 0, 1)
        charging = low + (peak_today - low) * x * x * (3 - 2 * x)
        after = peak_today - (peak_today - low) * (h - 15) / 16
        before = peak_yday - (peak_yday - low) * (h + 9) / 16
        s = np.where(h < 7, before, np.where(h < 15, charging, after))
        return 3.45 + 0.7 * s + p.battery

    # all metrics of a device ------------------------------------------------------
    def sample(self, kind: str, metrics: tuple[str, ...], dev_key: int | np.ndarray, p: Params, ts: np.ndarray, interval_s: float) -> dict[str, np.ndarray]:
        """Values of `metrics` at times `ts` (readings `interval_s` apart) for a device of `kind`.

        `dev_key` and the fields of `p` are numbers for one device, or arrays aligned with `ts` for a group.
        """
        ts = np.asarray(ts, float)
        c = self.climate
        key = _key(self.seed, dev_key) ^ np.round(ts * 1000).astype(np.int64).astype(np.uint64)
        z = {name: normal(key, _STREAMS[name]) for name in metrics}
        rate = self.rain.rate(ts)
        out: dict[str, np.ndarray] = {}
        want = set(metrics)
        temp = None
        if want & {"temp_c", "rh"}:
            temp = self.temp(ts, rate) + p.temp_offset
        for name in metrics:
            if name == "temp_c":
                v = temp + 0.15 * z[name]  # type: ignore[operator]
            elif name == "rh":
                v = self.rh(ts, temp, rate) + 1.0 * z[name]  # type: ignore[arg-type]
            elif name == "pm25":
                pm = self.pm25(ts, rate) * p.site
                out["_pm"] = pm
                v = pm * (1 + 0.08 * z[name])
            elif name == "pm1":
                v = self.pm25(ts, rate) * p.site * 0.68 * (1 + 0.08 * z[name])
            elif name == "pm10":
                v = self.pm25(ts, rate) * p.site * c.pm10_ratio * (1 + 0.08 * z[name])
            elif name == "pressure_hpa":
                doy, h = day_of_year(ts), local_hours(ts)
                v = (c.pressure_hpa + 3 * np.cos(2 * np.pi * (doy - 10) / YEAR_DAYS) + 1.2 * np.cos(4 * np.pi * (h - 10) / 24)
                     + 1.5 * _smooth_daily(self.seed, self.key, 3, ts) + 0.1 * z[name])
            elif name == "rain_mm":
                v = self.rain.amount(ts, interval_s)
                v = np.where(v < 0.01, 0.0, v)
            elif name == "wind_ms":
                doy, h = day_of_year(ts), local_hours(ts)
                monsoon = c.monsoon_wind * (np.cos(2 * np.pi * (doy - 230) / YEAR_DAYS) + 1) / 2
                v = (c.wind_ms + monsoon) * (0.6 + 0.8 * _bump(h, 15, 3.5)) + 0.15 * np.minimum(rate, 20) + 0.5 * np.abs(z[name])
            elif name == "water_level_cm":
                doy = day_of_year(ts)
                base = c.water_base_cm + p.water_base + 0.15 * monthly(c.rain_mm, doy)
                v = base + c.water_gain * p.water_gain * self.rain.runoff(ts, c.water_peak_h * 3600) + 0.8 * z[name]
            elif name == "vehicle_count":
                mean = self.traffic_rate(ts) * p.road * interval_s / 3600 / (1 + 0.02 * np.minimum(rate, 20))
                v = np.maximum(0.0, mean + np.sqrt(mean + 1) * z[name])
            elif name == "laeq_db":
                if kind == "traffic":
                    v = 42 + 10 * np.log10(1 + self.traffic_rate(ts) * p.road / 5) + p.loud / 2 + 1.5 * z[name]
                else:
                    v = self.community_noise(ts) + p.loud + 1.5 * z[name]
            elif name == "battery_v":
                v = self.battery(ts, p) + 0.004 * z[name]
            elif name == "rssi_dbm":
                v = p.rssi + 2.0 * z[name] - 4 * np.minimum(rate, 10) / 10
            else:  # a metric this model does not shape: mid-range with noise
                m = METRICS[name]
                v = (m.lo + m.hi) / 2 + z[name]
            m = METRICS[name]
            out[name] = np.round(np.clip(v, m.lo, m.hi), _ROUND.get(name, 2))
        out.pop("_pm", None)
        return out


class Signals:
    """Signal models for a fleet: one per city, parameters per device."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._cities: dict[str, CityModel] = {}
        self._params: dict[str, Params] = {}

    def city(self, slug: str) -> CityModel:
        model = self._cities.get(slug)
        if model is None:
            model = self._cities[slug] = CityModel(slug, self.seed)
        return model

    def params(self, dev: SimDevice) -> Params:
        p = self._params.get(dev.device_id)
        if p is None:
            p = self._params[dev.device_id] = device_params(dev, self.seed)
        return p

    def sample(self, dev: SimDevice, ts: np.ndarray | Sequence[float], interval_s: float) -> dict[str, np.ndarray]:
        return self.city(dev.city).sample(dev.kind, dev.metrics, dev.key, self.params(dev), np.asarray(ts, float), interval_s)

    def readings(self, dev: SimDevice, ts: Sequence[float], interval_s: float) -> list[dict[str, float | int]]:
        """One dict per timestamp, ready for the payload (ints where the metric counts things)."""
        return _rows(self.sample(dev, ts, interval_s))

    def readings_group(self, devs: list[SimDevice], ts: np.ndarray, interval_s: float) -> list[list[dict[str, float | int]]]:
        """Readings of several devices of one city and kind at once: row i of `ts` (devices x readings) is device i's.

        The same values as `readings()` device by device, in one numpy pass: what lets one process feed thousands.
        """
        d0 = devs[0]
        assert all(d.city == d0.city and d.kind == d0.kind for d in devs)
        n, k = ts.shape
        ps = [self.params(d) for d in devs]
        p = Params(**{f.name: np.repeat(np.array([getattr(x, f.name) for x in ps]), k) for f in fields(Params)})
        keys = np.repeat(np.array([d.key for d in devs], np.int64), k)
        cols = self.city(d0.city).sample(d0.kind, d0.metrics, keys, p, ts.reshape(-1), interval_s)
        rows = _rows(cols)
        return [rows[i * k : (i + 1) * k] for i in range(n)]


def _rows(cols: dict[str, np.ndarray]) -> list[dict[str, float | int]]:
    names = list(cols)
    lists = [cols[n].astype(np.int64).tolist() if _ROUND.get(n) == 0 else cols[n].tolist() for n in names]
    return [dict(zip(names, row, strict=True)) for row in zip(*lists, strict=True)]
