# Sensor drivers. Each takes its bus or pin (made by the HAL) and offers
# read(m): it writes validated metrics into the dict m, or raises SensorError
# naming the problem ("timeout", "checksum", "crc", "absent", ...), which the
# main loop reports in status as "<sensor>:<problem>" while the others go on.
# The factory that makes a driver from a config.json entry is start.make (boot only).


class SensorError(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
