# Bosch BME280 (temperature, humidity, pressure) over I2C, in forced mode: one
# measurement per read. Raw values are turned into units with the integer compensation
# formulas of the datasheet (section 4.2.3, 32-bit versions) and the chip's own
# calibration words, read once at start.
import struct

import hal
from drivers import SensorError

try:
    from typing import Any  # for the type checker; MicroPython skips annotations
except ImportError:
    pass

_CHIP_ID = 0x60


class BME280:
    def __init__(self, i2c, addr: int = 0x76) -> None:
        self.i2c = i2c
        self.addr = addr
        self.raw = bytearray(8)
        self.cal: Any = None

    def _calibrate(self) -> None:
        i2c, a = self.i2c, self.addr
        if i2c.readfrom_mem(a, 0xD0, 1)[0] != _CHIP_ID:
            raise SensorError("wrong_chip")
        c = i2c.readfrom_mem(a, 0x88, 26)
        h = i2c.readfrom_mem(a, 0xE1, 7)
        t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9 = struct.unpack("<HhhHhhhhhhhh", c[:24])
        e4 = h[3] - 256 if h[3] > 127 else h[3]
        e6 = h[5] - 256 if h[5] > 127 else h[5]
        h6 = h[6] - 256 if h[6] > 127 else h[6]
        h2 = struct.unpack("<h", h[0:2])[0]
        h4 = e4 * 16 | (h[4] & 0x0F)
        h5 = e6 * 16 | (h[4] >> 4)
        self.cal = (t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9, c[25], h2, h[2], h4, h5, h6)

    def read(self, m: dict) -> None:
        try:
            if self.cal is None:
                self._calibrate()
            self.i2c.writeto_mem(self.addr, 0xF2, b"\x01")  # humidity x1
            self.i2c.writeto_mem(self.addr, 0xF4, b"\x25")  # temp x1, pressure x1, forced
            hal.sleep_ms(10)
            self.i2c.readfrom_mem_into(self.addr, 0xF7, self.raw)
        except OSError:
            self.cal = None  # re-read the calibration once it answers again
            raise SensorError("absent")
        r = self.raw
        adc_p = r[0] << 12 | r[1] << 4 | r[2] >> 4
        adc_t = r[3] << 12 | r[4] << 4 | r[5] >> 4
        adc_h = r[6] << 8 | r[7]
        if adc_t == 0x80000 or adc_p == 0x80000:
            raise SensorError("not_ready")  # the reset value: no measurement was made
        t, p, h = compensate(self.cal, adc_t, adc_p, adc_h)
        m["temp_c"] = t / 100
        m["pressure_hpa"] = round(p / 100, 2)
        m["rh"] = round(h / 1024, 2)


def compensate(cal, adc_t: int, adc_p: int, adc_h: int):
    """(0.01 °C, Pa, %RH in Q22.10) from raw readings; the datasheet's int32 formulas."""
    t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9, h1, h2, h3, h4, h5, h6 = cal
    var1 = ((adc_t >> 3) - (t1 << 1)) * t2 >> 11
    var2 = (((adc_t >> 4) - t1) * ((adc_t >> 4) - t1) >> 12) * t3 >> 14
    t_fine = var1 + var2
    t = (t_fine * 5 + 128) >> 8

    var1 = (t_fine >> 1) - 64000
    var2 = ((var1 >> 2) * (var1 >> 2) >> 11) * p6
    var2 = var2 + (var1 * p5 << 1)
    var2 = (var2 >> 2) + (p4 << 16)
    var1 = ((p3 * ((var1 >> 2) * (var1 >> 2) >> 13) >> 3) + (p2 * var1 >> 1)) >> 18
    var1 = (32768 + var1) * p1 >> 15
    if var1 == 0:
        raise SensorError("calibration")
    p = ((1048576 - adc_p) - (var2 >> 12)) * 3125 & 0xFFFFFFFF
    p = (p << 1) // var1 if p < 0x80000000 else p // var1 * 2
    var1 = (p9 * ((p >> 3) * (p >> 3) >> 13)) >> 12
    var2 = ((p >> 2) * p8) >> 13
    p = p + ((var1 + var2 + p7) >> 4)

    v = t_fine - 76800
    v = (((adc_h << 14) - (h4 << 20) - (h5 * v)) + 16384 >> 15) * (
        ((((v * h6 >> 10) * ((v * h3 >> 11) + 32768)) >> 10) + 2097152) * h2 + 8192 >> 14
    )
    v = v - ((((v >> 15) * (v >> 15)) >> 7) * h1 >> 4)
    v = 0 if v < 0 else 419430400 if v > 419430400 else v
    return t, p, v >> 12
