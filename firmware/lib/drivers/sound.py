# Sound level from an analog microphone module on an ADC: sample a short window,
# take the RMS around the mean (the DC bias) and convert to dB with the offset found
# when calibrating against a reference meter (dB = 20 log10(rms counts) + cal_db).
import math
from array import array

from drivers import SensorError

_N = 256


class Sound:
    def __init__(self, adc, cal_db: float) -> None:
        self.adc = adc
        self.cal_db = cal_db
        self.buf = array("H", bytes(2 * _N))

    def read(self, m: dict) -> None:
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
        m["laeq_db"] = round(20 * math.log10(rms) + self.cal_db, 1)
