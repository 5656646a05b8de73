# Ultrasonic ranger (JSN-SR04T / HC-SR04) looking down at the water from `mount_cm`
# above the gauge datum: level = mount - distance. The median of five pings rejects
# the odd echo off a wall; no echo or a distance outside the sensor's range is a fault.
import hal
from drivers import SensorError

_PINGS = 5
_MIN_CM = 20
_MAX_CM = 600


class Ultrasonic:
    def __init__(self, trig, echo, mount_cm: float) -> None:
        self.trig = trig
        self.echo = echo
        self.mount_cm = mount_cm
        self.us = [0] * _PINGS

    def read(self, m: dict) -> None:
        us = self.us
        for i in range(_PINGS):
            us[i] = hal.pulse_us(self.trig, self.echo, 40000)
            hal.sleep_ms(60)  # let the previous ping's echoes die away
        us.sort()
        mid = us[_PINGS // 2]
        if mid < 0:
            raise SensorError("timeout")
        cm = mid / 58.3  # round trip at 343 m/s
        if not _MIN_CM <= cm <= _MAX_CM:
            raise SensorError("range")
        m["water_level_cm"] = round(max(0.0, self.mount_cm - cm), 1)
