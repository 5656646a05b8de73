# Ultrasonic ranger (JSN-SR04T / HC-SR04) looking down at the water from `mount_cm`
# above the gauge datum: level = mount - distance. The median of five pings rejects the
# odd echo off a wall; too few echoes or a distance beyond the sensor's range is a fault.
#
# Distance = echo time x the speed of sound / 2, and the speed of sound is the air's:
# 331.3 m/s x sqrt(1 + T/273.15) in dry air (a fixed 343 m/s, right at 20 °C, reads
# 8-13 cm short at 3 m in 35-45 °C air), and faster in moist air (water vapour is lighter:
# +0.16 % per percent of vapour in the air by mole; in 35 °C air at 80 % RH that is +0.7 %,
# 2 cm at 3 m). The node hands the driver the temperature, humidity and pressure its own
# sensors measured in the same cycle (air(); read after them); until it has any it
# assumes `air_c` (config, default 30 °C) and dry air at 1013 hPa.
#
# Water inside the sensor's blind zone (closer than `blind_cm`: the transducer still
# rings from its own ping and cannot hear an echo) comes back as a very short echo. At a
# flood peak that is the water at or above the highest level the sensor can measure:
# reported as that level (mount - blind_cm) with water_capped = 1, a level and not a
# fault. A measured level carries water_capped = 0.
import math

import hal
from drivers import SensorError

_PINGS = 5
_MAX_CM = 600


def sound_speed(t_c: float, rh=None, p_hpa=None) -> float:
    """Speed of sound in air, m/s, at t_c °C, rh % and p_hpa (dry, 1013.25 hPa if unknown)."""
    c = 331.3 * math.sqrt(1 + t_c / 273.15)
    if rh:
        p_sat = 6.1094 * math.exp(17.625 * t_c / (t_c + 243.04))  # Magnus, hPa
        c *= 1 + 0.16 * (rh / 100) * p_sat / (p_hpa or 1013.25)
    return c


class Ultrasonic:
    def __init__(self, trig, echo, mount_cm: float, blind_cm: float = 20, air_c: float = 30.0) -> None:
        self.trig = trig
        self.echo = echo
        self.mount_cm = mount_cm
        self.blind_cm = blind_cm
        self.air_c = air_c
        self.rh = None
        self.p_hpa = None
        self.us = [0] * _PINGS

    def air(self, m: dict) -> None:
        """The air the node measured this cycle (kept for the cycles it cannot)."""
        t = m.get("temp_c")
        if t is not None:
            self.air_c = t
            self.rh = m.get("rh")
            self.p_hpa = m.get("pressure_hpa")

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
        mid = us[k // 2] if k % 2 else (us[k // 2 - 1] + us[k // 2]) / 2
        cm = mid * sound_speed(self.air_c, self.rh, self.p_hpa) / 20000  # round trip, µs x m/s -> cm one way
        if cm > _MAX_CM:
            raise SensorError("range")
        if cm < self.blind_cm:  # in the blind zone: at or above the highest level it measures
            m["water_level_cm"] = round(max(0.0, self.mount_cm - self.blind_cm), 1)
            m["water_capped"] = 1
            return
        m["water_level_cm"] = round(max(0.0, self.mount_cm - cm), 1)
        m["water_capped"] = 0
