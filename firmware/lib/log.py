# One line per event on the serial console: "<level> <uptime_ms> <message>".
# Tests read these lines from the unix port's stdout.
import hal


def log(level: str, msg: str) -> None:
    print(level, hal.ticks_ms(), msg)


def info(msg: str) -> None:
    log("I", msg)


def warn(msg: str) -> None:
    log("W", msg)


def error(msg: str) -> None:
    log("E", msg)
