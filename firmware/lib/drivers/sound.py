# Sound level as laeq_db: the equivalent continuous level over the reading interval, the
# energy mean of level samples taken across it, Leq = 10 log10(mean of 10^(L/10)) (a loud
# minute in a quiet hour counts as the energy it carried, not as one sample in sixty).
# The node calls sample() every loop; it samples every `sample_s` (default 2 s), and a
# reading with no sample yet (the first after boot; a deep-sleep node, awake seconds a
# cycle) takes one at once. Two inputs:
# - `dba_per_v` set: an A-weighted sound level meter module with an analog output in
#   proportion to dB(A) (e.g. 50 dB(A) per volt over 30-130 dB(A)): one calibrated ADC
#   read (read_uv) is one A-weighted sample (the module's own time weighting, "fast"
#   125 ms or "slow" 1 s, smooths between samples);
# - otherwise an analog microphone: one sample is the RMS of 256 ADC reads around their
#   mean (the DC bias), dB = 20 log10(rms counts) + cal_db (from a reference meter). It
#   has no A-weighting (flat, dB(Z)), reads high where low frequencies dominate (traffic):
#   a module is what a pilot that reports against dB(A) limits uses.
import math
from array import array

import hal
from drivers import SensorError

try:
    from typing import Any  # for the type checker; MicroPython skips annotations
except ImportError:
    pass

_N = 256


class Sound:
    def __init__(self, adc, cal_db: float, dba_per_v=None, sample_s: float = 2) -> None:
        self.adc = adc
        self.cal_db = cal_db
        self.dba_per_v = dba_per_v
        self.sample_ms = int(sample_s * 1000)
        self.buf: Any = None if dba_per_v else array("H", bytes(2 * _N))
        self.energy = 0.0
        self.n = 0
        self.err: Any = None
        self.next = hal.ticks_ms()

    def _level(self) -> float:
        if self.dba_per_v:
            v = self.adc.read_uv() / 1000000
            if v < 0.1:
                raise SensorError("absent")  # the module's output reads 0.6 V even at 30 dB(A)
            return v * self.dba_per_v
        buf = self.buf
        total = 0
        for i in range(_N):
            v = self.adc.read_u16()
            buf[i] = v
            total += v
        mean = total / _N
        acc = 0.0
        for i in range(_N):
            d = buf[i] - mean
            acc += d * d
        rms = math.sqrt(acc / _N)
        if mean < 100 or rms < 0.5:
            raise SensorError("absent")  # a floating or shorted input, not silence
        return 20 * math.log10(rms) + self.cal_db

    def _add(self) -> None:
        try:
            self.energy += 10 ** (self._level() / 10)
            self.n += 1
        except SensorError as e:
            self.err = e.problem
        except Exception:  # an ADC that raises: a fault at the reading, never a crash of the loop
            self.err = "error"

    def sample(self) -> None:
        now = hal.ticks_ms()
        if hal.ticks_diff(now, self.next) >= 0:
            self.next = hal.ticks_add(now, self.sample_ms)
            self._add()

    def read(self, m: dict) -> None:
        if not self.n:
            self._add()
        n, energy, err = self.n, self.energy, self.err
        self.n, self.energy, self.err = 0, 0.0, None
        if not n:
            raise SensorError(err or "absent")
        m["laeq_db"] = round(10 * math.log10(energy / n), 1)
