# Ultrasonic ranger (JSN-SR04T / HC-SR04) looking down at the water from `mount_cm`
# above the gauge datum: level = mount - distance. The median of five pings rejects
# the odd echo off a wall; too few echoes or a distance outside the sensor's range is a fault.
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
        # The median of the echoes that came back: a missed ping (timeout, -1 or -2) is no
        # distance at all, and sorted among them it would pull the median to the nearest
        # echo, a water level too high (a false flood). Fewer than three echoes: a fault.
        us = self.us
        k = 0
        for _ in range(_PINGS):
            t = hal.pulse_us(self.trig, self.echo, 40000)
            if t > 0:
                us[k] = t
                k += 1
            hal.sleep_ms(60)  # let the previous ping's echoes die away
        if k < 3:
            raise SensorError("timeout")
        for i in range(1, k):  # insertion sort of the k echoes (no slice, no heap)
            v = us[i]
            j = i - 1
            while j >= 0 and us[j] > v:
                us[j + 1] = us[j]
                j -= 1
            us[j + 1] = v
        mid = us[k // 2] if k % 2 else (us[k // 2 - 1] + us[k // 2]) // 2
        cm = mid / 58.3  # round trip at 343 m/s
        if not _MIN_CM <= cm <= _MAX_CM:
            raise SensorError("range")
        m["water_level_cm"] = round(max(0.0, self.mount_cm - cm), 1)
