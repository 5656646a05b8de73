# Sensor drivers. Each takes its bus or pin (made by the HAL) and offers
# read(m): it writes validated metrics into the dict m, or raises SensorError
# naming the problem ("timeout", "checksum", "crc", "absent", ...), which the
# main loop reports in status as "<sensor>:<problem>" while the others go on.
import hal


class SensorError(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def make(spec: dict):
    """A driver for one `sensors` entry of config.json (modules loaded only when used)."""
    t = spec["type"]
    if t == "pms5003" or t == "sds011":
        from drivers import pm

        uart = hal.uart(spec["uart"], 9600, spec["rx"], spec["tx"])
        return pm.PMS5003(uart) if t == "pms5003" else pm.SDS011(uart)
    if t == "sht3x" or t == "bme280":
        bus = hal.i2c(spec["i2c"], spec["scl"], spec["sda"])
        if t == "sht3x":
            from drivers.sht3x import SHT3x

            return SHT3x(bus, spec.get("addr", 0x44))
        from drivers.bme280 import BME280

        return BME280(bus, spec.get("addr", 0x76))
    if t == "ultrasonic":
        from drivers.ultrasonic import Ultrasonic

        return Ultrasonic(hal.pin_out(spec["trig"]), hal.pin_in(spec["echo"], False), spec["mount_cm"])
    if t == "rain":
        from drivers.rain import Rain

        return Rain(hal.pin_in(spec["pin"]), spec.get("mm_per_tip", 0.2794), spec.get("debounce_ms", 50))
    if t == "sound":
        from drivers.sound import Sound

        return Sound(hal.adc(spec["adc"]), spec.get("cal_db", 28.0))
    raise SensorError("unknown_type")
